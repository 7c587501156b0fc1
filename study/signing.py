"""Authenticated Tune state: what `study resume` unpickles was written by this user's `study`.

Resuming a study restores Ray Tune's saved state (tuner.pkl, the experiment state with its
cloudpickled trials, the searcher's pickle), and unpickling runs code. Every time Tune saves that
state the driver signs each file with HMAC-SHA256 under a per-user key (a 0600 file), into
<study>/tune/signatures.json; a resume verifies every such file before any is unpickled and
refuses a file that is unsigned or changed (`study resume --trust` signs them as they are).

How the driver learns that Tune saved: Tune writes the experiment state, then the searcher's
checkpoint (CellSearcher.save notes the folder), then asks every callback for its state
(tracking.StateSigner.get_state, which signs). A driver killed between the first and the last of
those steps leaves an unsigned state; resume then refuses it with the `--trust` fix.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

KEY_FILE = Path("~/.config/sc-guidance/signing.key")
RECORD = "signatures.json"  # in <study>/tune/: "<experiment>/<file>" -> hex HMAC
# The files of a Tune experiment folder that a restore unpickles (Ray 2.x).
SIGNED = (
    "tuner.pkl",
    "experiment_state-*.json",
    "searcher-state-*.pkl",
    "search_gen_state-*.json",
    "callback-states-*.pkl",
)
_STAGING: dict[str, Path] = {}  # experiment name -> the folder Tune saved its state in last


def user_key() -> bytes:
    """This user's signing key: 32 random bytes in a file only the user can read, made once."""
    path = KEY_FILE.expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(32))
    return path.read_bytes()


def digest(path: Path, key: bytes) -> str:
    """HMAC-SHA256 of a file's bytes."""
    return hmac.new(key, path.read_bytes(), hashlib.sha256).hexdigest()


def state_files(folder: Path) -> list[Path]:
    """The files of an experiment folder that a restore unpickles."""
    return sorted({p for pattern in SIGNED for p in folder.glob(pattern) if p.is_file()})


def _update(tune_dir: Path, entries: dict[str, str]) -> None:
    """Merge entries into the record (a temporary file, then a rename)."""
    record = tune_dir / RECORD
    known = json.loads(record.read_text()) if record.exists() else {}
    known.update(entries)
    tune_dir.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f"{RECORD}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
    os.replace(tmp, record)


def sign(tune_dir: Path, experiment: str, folder: Path | None = None) -> None:
    """Sign the state files of one experiment, as found in folder (default its folder under
    tune_dir; Tune's staging folder holds the same bytes before they are copied there)."""
    folder = folder or tune_dir / experiment
    key = user_key()
    _update(tune_dir, {f"{experiment}/{p.name}": digest(p, key) for p in state_files(folder)})


def sign_all(tune_dir: Path) -> None:
    """Sign every experiment's state as it is (`study resume --trust`)."""
    for folder in sorted(p for p in tune_dir.glob("*") if p.is_dir()):
        sign(tune_dir, folder.name)


def unsigned(tune_dir: Path) -> list[str]:
    """'<experiment>/<file>' of every state file that is unsigned or whose bytes changed."""
    if not tune_dir.is_dir():
        return []
    record = tune_dir / RECORD
    known = json.loads(record.read_text()) if record.exists() else {}
    key = user_key()
    bad = []
    for folder in sorted(p for p in tune_dir.glob("*") if p.is_dir()):
        for path in state_files(folder):
            name = f"{folder.name}/{path.name}"
            if not hmac.compare_digest(known.get(name, ""), digest(path, key)):
                bad.append(name)
    return bad


def note_staging(folder: Path) -> None:
    """Called by the searcher's save: Tune is saving the experiment whose state is in folder
    (<...>/<experiment>/driver_artifacts, or the experiment folder itself)."""
    experiment = folder.parent.name if folder.name == "driver_artifacts" else folder.name
    _STAGING[experiment] = folder


def staging_folder(experiment: str) -> Path | None:
    """Where Tune last saved this experiment's state in this process (None if it has not)."""
    folder = _STAGING.get(experiment)
    return folder if folder is not None and folder.is_dir() else None
