"""What a trial reports, declared once: the keys of the results it hands Tune, and the record
files its worker and the driver write for each other under <study>/trials/<trial id>/ (in a
folder, or an object store's mirror of it: trainables.storage), each with one writer and one
reader here. No torch: the worker, the trial driver, the tracker, the searcher and the analysis
all read and write through this module.

Results (Tune's channel, per report): the per-epoch metrics (their names: trainables.names), then
one final result carrying FINAL_KEY and the cost counters (COST: the worker's ledger in
trainables.ray_worker fills them, analysis.accounting sums them).

Records (files, per trial):
- params.json (the driver as the trial starts, else its trial driver; written once): the
  trial's sampled params;
- history.json (the driver, after each epoch's result): each epoch's numbers, in order (the
  learning curves; a lost MLflow store's runs are written again with them);
- mlflow_run_id.txt (the tracker, at the start): the trial's MLflow run;
- artifacts.json, tags.json, samples.png (the worker, at the end): the cache folders of its
  networks, MLflow tags, its sample grid;
- final.json (the worker, last and atomically: its presence means the trial finished): the final
  result (the ledger's objective values, `study final`'s finished points, a lost store's runs);
- error.json (the worker, when it fails): exception type, message and step;
- spent.json (the worker, each time it has trained a network into the cache): its training cost
  so far, which a trial taken down before its final result still counts with (study.tracking);
- lost.json (the driver, as its session ends or after it was killed, the next one's end): the
  trial neither finished nor failed; it was taken down with its session.

Records (files, per driver session, under <study>/sessions/): <stage>-<start ms>.json (the
driver, as the session starts, every HEARTBEAT_S while it runs, and as it ends): its start, when it
was last heard of and, once ended, its wall seconds, which the compute accounting sums over the
study's life (analysis.accounting.study_wall), and its driver (host, process): a session not
ended whose driver's process is gone, or that was not heard of for 3 x HEARTBEAT_S, lost its
driver (live_driver): a reader on any machine tells its trials from running ones, and a second
driver of a study in an object store is refused on any machine.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables.names import (
    ARTIFACTS_RECORD,
    ERROR_RECORD,
    FINAL_RECORD,
    HISTORY_RECORD,
    LOST_RECORD,
    PARAMS_RECORD,
    RUN_RECORD,
    SEED_KEYS,
    SPENT_RECORD,
    STAGE_KEY,
    TAGS_RECORD,
)
from trainables.storage import Place


class RecordError(ValueError):
    """A record that is there but cannot be read (the message names it and the fix): every record
    is written whole (a temporary file, then a rename), so this one was damaged."""


def _load(path: Path) -> Any:
    """A record file's content: the run id's text, the epochs' list (history.json), or a JSON
    object; RecordError when it cannot be read as that."""
    try:
        text = path.read_text()
        if path.name == RUN_RECORD:
            return text.strip()
        value = json.loads(text)
        if not isinstance(value, list if path.name == HISTORY_RECORD else dict):
            raise ValueError(f"a JSON {type(value).__name__}, not the record")
        return value
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RecordError(
            f"the record {path} cannot be read ({exc}); restore it from a backup (or the study's "
            "object-store copy); nothing was changed"
        ) from None


# ---- the keys of the results a trial reports to Tune ----------------------------------------
FINAL_KEY = "final"  # 1.0 in a final result (absent: stopped before its final evaluation)
EVAL_EPOCH_KEY = "eval_epoch"  # the epochs evaluated so far (the scheduler's time attribute)


class COST:
    """The cost counters of a trial's final result (`cost/<name>`; MLflow metrics of its run)."""

    STEPS_TRAINED = "cost/steps_trained"  # optimiser steps run for networks not in the cache
    STEPS_REUSED = "cost/steps_reused"  # steps of networks taken from the cache
    EXAMPLES_TRAINED = "cost/examples_trained"  # steps x batch size of the trained networks
    TRAIN_SECONDS = "cost/train_seconds"  # training this trial's missing networks
    FETCH_SECONDS = "cost/fetch_seconds"  # in the cache in all (the worker's, not reported)
    WAIT_SECONDS = "cost/wait_seconds"  # in the cache but not training (a lock, loading)
    SAMPLING_SCORE_EVALS = "cost/sampling_score_evals"  # score evaluations of the test samples
    VAL_SAMPLING_SCORE_EVALS = "cost/val_sampling_score_evals"  # of the validation sweep
    EVAL_SECONDS = "cost/eval_seconds"  # validation sweep and test evaluation
    EVAL_THREADS = "cost/eval_threads"  # the most torch threads it ran with (idle CPUs lent)
    # With every training epoch: the trial's training so far, the network in training included
    # (what a trial the scheduler stops early has spent: analysis.accounting).
    STEPS_SO_FAR = "cost/steps_trained_so_far"
    TRAIN_SECONDS_SO_FAR = "cost/train_seconds_so_far"


class ObjectiveError(ValueError):
    """A trial whose objective is missing, NaN or infinite: it fails instead of finishing."""


def is_final(result: dict | None) -> bool:
    """Whether a Tune result is a trial's final one."""
    return bool((result or {}).get(FINAL_KEY))


# What Tune adds to every result (not the trial's numbers).
TUNE_KEYS = frozenset({
    "training_iteration", "timestamp", "time_this_iter_s", "time_total_s", "pid",
    "iterations_since_restore", "time_since_restore", "done",
})  # fmt: skip


def result_numbers(result: dict) -> dict[str, float]:
    """A result's own finite numbers (what its MLflow run logs and history.json keeps)."""
    return {
        k: float(v)
        for k, v in result.items()
        if k not in TUNE_KEYS
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
        and math.isfinite(float(v))
    }


def evaluated_epochs(result: dict | None) -> int:
    """The epochs a trial had evaluated when it reported result."""
    return int((result or {}).get(EVAL_EPOCH_KEY, 0))


# ---- the record files ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialRecords:
    """One trial's record folder: `place` is <record root>/<trial id>."""

    place: Place

    @classmethod
    def of(cls, root: str | Place, trial_id: str) -> TrialRecords:
        """The records of trial_id under a record root (a folder or an object-store URI)."""
        return cls((root if isinstance(root, Place) else Place(str(root))) / str(trial_id))

    @property
    def folder(self) -> Path:
        """This machine's folder of the records (an object store's mirror)."""
        return self.place.local

    def path(self, name: str) -> Path:
        return self.folder / name

    def write(self, name: str, value: Any) -> None:
        """One record, atomically (a temporary file, then a rename), then into the store: JSON,
        or the text itself for a string."""
        self.folder.mkdir(parents=True, exist_ok=True)
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        tmp = self.folder / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.folder / name)
        self.place.push(self.folder / name)

    def read(self, name: str) -> Any | None:
        """A record (fetched from the store first), None when there is none; RecordError when it
        is there but cannot be read."""
        path = self.folder / name
        return _load(path) if self.place.pull(path) else None

    # -- each record: its writer, then its reader -------------------------------------------------
    def write_params(self, params: dict[str, Any]) -> None:
        self.write(PARAMS_RECORD, params)

    def params(self) -> dict | None:
        return self.read(PARAMS_RECORD)

    def write_history(self, epochs: list[dict[str, float]]) -> None:
        """Every epoch's numbers so far, in order (the whole list, atomically)."""
        self.write(HISTORY_RECORD, epochs)

    def history(self) -> list[dict[str, float]]:
        return self.read(HISTORY_RECORD) or []

    def write_run_id(self, run_id: str) -> None:
        self.write(RUN_RECORD, run_id)

    def run_id(self) -> str | None:
        return self.read(RUN_RECORD)

    def write_outputs(self, artifacts: dict[str, str], tags: dict[str, Any]) -> None:
        """The cache folders of the trial's networks and its MLflow tags."""
        self.write(ARTIFACTS_RECORD, artifacts)
        self.write(TAGS_RECORD, tags)

    def artifacts(self) -> dict[str, str]:
        return self.read(ARTIFACTS_RECORD) or {}

    def tags(self) -> dict[str, Any]:
        return self.read(TAGS_RECORD) or {}

    def write_final(self, final: dict[str, float]) -> None:
        """The final result: written last (its presence means the trial finished)."""
        self.write(FINAL_RECORD, final)

    def final(self) -> dict | None:
        return self.read(FINAL_RECORD)

    def write_error(self, error: BaseException) -> None:
        """Why the trial failed: the exception's type, message (2,000 characters at most) and the
        training step it failed at, where known."""
        step = getattr(error, "step", None)
        reason = {"type": type(error).__name__, "message": str(error)[:2000], "step": step}
        self.write(ERROR_RECORD, reason)

    def error(self) -> dict | None:
        return self.read(ERROR_RECORD)

    def failed_on_objective(self) -> bool:
        """Whether the trial failed because its objective was missing or not finite (its networks
        trained; run again, it would measure the same: the searcher does not retry it)."""
        return (self.error() or {}).get("type") == ObjectiveError.__name__

    def write_spent(self, costs: dict[str, float]) -> None:
        """The training cost so far (COST keys), after each network trained into the cache: a
        network whose trial is taken down before its final result is still stored, and reused
        (not trained again) by the trial that runs the configuration again."""
        self.write(SPENT_RECORD, costs)

    def spent(self) -> dict[str, float]:
        return self.read(SPENT_RECORD) or {}

    def write_lost(self) -> None:
        """The trial was taken down with its session (no final result, no error of its own)."""
        reason = "its driver's session ended (stopped, interrupted or killed) before it did"
        self.write(LOST_RECORD, {"reason": reason})

    def ended(self) -> bool:
        """Whether the trial ended: finished, failed, or taken down with its session."""
        return any(self.written(name) for name in (FINAL_RECORD, ERROR_RECORD, LOST_RECORD))

    def written(self, name: str) -> float | None:
        """When a record was written (seconds since the epoch; an object store's records keep
        the store's time in the mirror), None without it."""
        path = self.folder / name
        return path.stat().st_mtime if path.is_file() else None

    def times(self) -> tuple[float, float] | None:
        """(first, last) times the trial's record files were written (seconds since the epoch:
        its params are written as it starts, its final result or error as it ends); None without
        records. Neither is the run id's unless nothing else is written (the driver writes it
        again when it writes the run again: study.runner.rebuild_runs), nor the lost mark's
        (written when the next session ended: the trial was last heard of before)."""
        if not self.folder.is_dir():
            return None
        times = {p.name: p.stat().st_mtime for p in self.folder.iterdir() if p.is_file()}
        if not times:
            return None
        own = [t for name, t in times.items() if name not in (RUN_RECORD, LOST_RECORD)]
        own = own or list(times.values())
        return min(own), max(own)


def tune_error(error_file: str | Path | None) -> dict | None:
    """{"type", "message"} from the last line of Tune's error file of a trial (an error outside
    its worker's own records, e.g. a records folder it could not write); None without one."""
    if not error_file or not Path(error_file).is_file():
        return None
    last = Path(error_file).read_text().strip().splitlines()[-1:] or ["unknown error"]
    kind, _, message = last[0].partition(": ")
    return {"type": kind.rsplit(".", 1)[-1][:250], "message": message[:2000]}


def mark_lost(root: str | Place) -> int:
    """At a session's end (none of its trials runs any more): every stage trial and `study final`
    trial under root (their end is in their records alone; a search trial's is its state in the
    ledger: study.cell_studies.settle_trials) with neither a final result nor an error was taken
    down with its session or an earlier killed one: marked lost. How many."""
    root = root if isinstance(root, Place) else Place(str(root))
    lost = 0
    for folder in sorted(root.local.iterdir()) if root.local.is_dir() else []:
        records = TrialRecords.of(root, folder.name)
        params = records.params() if folder.is_dir() else None
        if params is None or records.ended():
            continue
        if params.get(STAGE_KEY) or any(key in params for key in SEED_KEYS):
            records.write_lost()
            lost += 1
    return lost


SESSIONS = "sessions"  # <study>/sessions/: one record per driver session
HEARTBEAT_S = 20.0  # a running driver writes its session record again this often


def write_session(study: Place, stage: str, start: float, wall: float | None = None) -> None:
    """A driver session's record: its stage (search, final), its start (seconds since the epoch),
    its driver (host name and process id), when it was last heard of (now) and, written again as
    it ends, its wall seconds (0 when it had nothing to run)."""
    record = {"stage": stage, "start": start, "wall": wall, "heard": time.time()}
    record |= {"host": socket.gethostname(), "pid": os.getpid()}
    TrialRecords(study / SESSIONS).write(f"{stage}-{round(start * 1000)}.json", record)


def _session_records(study: Place, stage: str = "*") -> list[dict]:
    place = study / SESSIONS
    place.pull(fresh=True)  # a record is written again as its session runs and ends
    return [_load(p) for p in sorted(place.local.glob(f"{stage}-*.json"))]


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def live_driver(study: Place, now: float | None = None) -> dict | None:
    """The session record of a driver that runs the study now, on any machine, or None: a
    session not ended, heard of within the last 3 heartbeats and, on this machine, with its
    process alive (a killed driver's session is dead at once here, and once silent elsewhere)."""
    now = time.time() if now is None else now
    here = socket.gethostname()
    for record in _session_records(study):
        if record["wall"] is not None or now - float(record["heard"]) > 3 * HEARTBEAT_S:
            continue
        if record["host"] != here or _process_alive(int(record["pid"])):
            return record
    return None


def sessions(study: Place, stage: str) -> tuple[dict[int, float], dict[int, float]]:
    """(starts, walls) of the stage's driver sessions, each keyed by its start in ms: a session
    killed before it ended has a start and no wall."""
    starts: dict[int, float] = {}
    walls: dict[int, float] = {}
    for record in _session_records(study, stage):
        key = round(record["start"] * 1000)
        starts[key] = float(record["start"])
        if record.get("wall") is not None:
            walls[key] = float(record["wall"])
    return starts, walls
