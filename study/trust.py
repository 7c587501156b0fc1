"""Whose study folder this is: nothing this user's `study` did not write is unpickled.

A study folder is trusted when this user's `study run` created it with the spec it still holds (a
registry of study folders and their spec's sha256 in ~/.cache/sc-guidance/studies.json), and its
Tune state is the one this user's driver signed (study.signing). In an object store, Tune's state
files are fetched afresh into this machine's mirror before they are signed or checked, so that the
signatures cover the bytes Tune reads. `study resume --trust` records and signs a folder as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from study import signing
from study.errors import StudyError
from study.spec import StudySpec
from trainables.names import SPEC_FILE


def pull_state(spec: StudySpec, study_dir: Path, experiment: str | None = None) -> None:
    """In an object store, fetch Tune's state files (of one experiment, or all) afresh into this
    machine's mirror, so that what is signed and checked are the bytes Tune unpickles."""
    place = spec.study_place(study_dir) / "tune"
    if not place.remote:
        return
    place.pull(place.local / experiment if experiment else None)
    for folder in [place.local / experiment] if experiment else place.local.glob("*"):
        for path in signing.state_files(folder) if folder.is_dir() else []:
            place.pull(path, fresh=True)


def sign_experiment(spec: StudySpec, study_dir: Path, experiment: str) -> None:
    """Sign one experiment's Tune state as it is in the study's storage."""
    pull_state(spec, study_dir, experiment)
    signing.sign(study_dir / "tune", experiment)


def _registry() -> Path:
    """This user's record of the studies it created: study directory -> sha256 of its spec.yaml."""
    return Path("~/.cache/sc-guidance/studies.json").expanduser()


def _spec_digest(study_dir: Path) -> str:
    return hashlib.sha256((study_dir / SPEC_FILE).read_bytes()).hexdigest()


def trust_study(study_dir: Path, spec: StudySpec | None = None) -> None:
    """Record the study directory and its spec as this user's, and sign its Tune state as it is
    (study run, or resume --trust; given the spec, as it is in its storage)."""
    if spec is not None:
        pull_state(spec, study_dir)
    signing.sign_all(study_dir / "tune")
    path = _registry()
    path.parent.mkdir(parents=True, exist_ok=True)
    known = json.loads(path.read_text()) if path.exists() else {}
    known[str(study_dir)] = _spec_digest(study_dir)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
    os.replace(tmp, path)


def check_trusted(study_dir: Path, spec: StudySpec | None = None) -> None:
    """Refuse to resume a folder this user's `study run` did not create, whose spec changed, or
    whose Tune state is not the one this user's driver signed: resuming unpickles it, which runs
    code."""
    path = _registry()
    known = json.loads(path.read_text()) if path.exists() else {}
    if known.get(str(study_dir)) != _spec_digest(study_dir):
        raise StudyError(
            f"{study_dir} was not created by 'study run' as this user, or its {SPEC_FILE} changed "
            "since; resuming loads its pickled Tune state, which can run code. If you trust the "
            f"folder: study resume {study_dir} --trust"
        )
    check_signed(study_dir, spec)


def check_signed(study_dir: Path, spec: StudySpec | None = None) -> None:
    """Refuse Tune state files this user's driver did not sign (study.signing); given the spec,
    as they are in its storage (an object store's, fetched first)."""
    if spec is not None:
        pull_state(spec, study_dir)
    bad = signing.unsigned(study_dir / "tune")
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise StudyError(
            f"{study_dir / 'tune' / bad[0]}{more} is not the Tune state this user's 'study' "
            "saved (changed, or never signed); resuming would unpickle it, which can run code. "
            f"If you trust the folder: study resume {study_dir} --trust"
        )
