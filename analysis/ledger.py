"""A study's trials read from its ledger, the frame every view is built from (study status, the
tables and figures, export-best, `study final`'s choices, load_study): the cells' Optuna studies
(optuna.db: which search trials exist and how each ended: COMPLETE, FAIL, PRUNED for a trial the
scheduler stopped early, RUNNING) and the trial records (trainables.records: what each trial is,
its final result, its error, the training it spent, its MLflow run, when it started and ended).

The MLflow store is written from the same two (study.tracking) and not read here: a study whose
store is lost, or whose tracking server is down, reads the same (the per-epoch history is in
the records too: history.json). No torch, no Ray, no MLflow."""

from __future__ import annotations

import contextlib
import math
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from trainables.names import (
    ERROR_RECORD,
    FINAL_RECORD,
    LABEL_PERCENT_KEY,
    LOST_RECORD,
    METHOD_KEY,
    SEED_KEYS,
    SHARED_STAGE,
    STAGE_KEY,
    is_diagnostic,
)
from trainables.records import COST, ObjectiveError, TrialRecords, live_driver
from trainables.storage import Place

if TYPE_CHECKING:
    import optuna
    import pandas as pd

LEDGER_FILE = "optuna.db"
LEASE_FILE = "driver.lock"  # the driver lease (study.runner.take_lease)
LOST = "lost_with_driver"  # a FAIL trial's user attribute: its driver stopped before it ended
SO_FAR = (COST.STEPS_SO_FAR, COST.TRAIN_SECONDS_SO_FAR)  # an early stop's training: user attrs


class StudyNotReady(ValueError):
    """The folder is not a study, the study has nothing to read yet, or its ledger cannot be read
    (the message says why and what to do)."""


# A killed writer's journal that a read-only connection may not roll back (rollback journal, WAL)
DEAD_WRITER = {"SQLITE_READONLY_ROLLBACK", "SQLITE_READONLY_RECOVERY"}


def sqlite_problem(db: Path, table: str) -> str | None:
    """Why the SQLite file db cannot be read as a database holding table (truncated, overwritten),
    or None. Read only, except that the journal of a writer killed mid-transaction (a kill -9 of
    the driver) is rolled back first, as the next Optuna or MLflow connection would do anyway."""
    try:
        return _sqlite_problem(f"file:{db}?mode=ro", table)
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorname", "") not in DEAD_WRITER:
            return str(exc)
    try:
        return _sqlite_problem(f"file:{db}?mode=rw", table)
    except sqlite3.Error as exc:
        return str(exc)


def _sqlite_problem(uri: str, table: str) -> str | None:
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            return "quick_check failed"
        conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return None


def check_ledger_file(db: Path) -> None:
    """StudyNotReady naming db when it is there but not a readable Optuna database: every view
    and a resume would otherwise read a broken ledger."""
    problem = sqlite_problem(db, "studies") if db.is_file() else None
    if problem is not None:
        raise StudyNotReady(
            f"{db} cannot be read ({problem}); restore it from a backup (it holds the cells' "
            "searches); nothing was changed"
        )


BASE_COLUMNS = [
    "run_id", "trial_id", "status", "early_stopped", "run_again", "stage", "method",
    "label_percent",
]  # fmt: skip


def driven(study_dir: Path) -> bool:
    """Whether a `study run`, `resume` or `final` holds the study's driver lease now (the lease is
    free once its holder ended or died; a folder that never held one is not driven)."""
    path = Path(study_dir) / LEASE_FILE
    if not path.exists():
        return False
    lease = FileLock(str(path), timeout=0)
    try:
        lease.acquire()
    except Timeout:
        return True
    lease.release()
    return False


def running_now(place: Place) -> bool:
    """Whether a driver runs the study now: one on this machine holds its lease, or (a study in
    an object store, which a driver on any machine may run) one of its sessions was heard of
    lately (trainables.records.live_driver)."""
    return driven(place.local) or (place.remote and live_driver(place) is not None)


def ledger_trials(db: Path, study_name: str) -> dict[str, tuple[optuna.trial.FrozenTrial, bool]]:
    """Every cell's trials in the study's ledger by their Tune trial id (a repeat the sampler
    proposed ran no trial and has none), each with whether a later trial ran its configuration
    again (study.cell_studies.CellStudies.retries); read only, {} without a ledger."""
    import optuna

    if not db.is_file():
        return {}
    check_ledger_file(db)
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    trials = {}
    for study in storage.get_all_studies():
        if study.study_name.startswith(f"{study_name}/"):
            cell = storage.get_all_trials(study._study_id, deepcopy=False)
            rerun = {t.user_attrs.get("rerun_of") for t in cell}
            for trial in cell:
                if trial.user_attrs.get("tune_trial_id"):
                    trials[str(trial.user_attrs["tune_trial_id"])] = (trial, trial.number in rerun)
    return trials


def _status(records: TrialRecords, final: dict | None, trial: Any, live: bool) -> str:
    """FINISHED | FAILED | KILLED | RUNNING: by its final or error record, else (a search trial)
    by its state in the ledger: PRUNED stopped early by the scheduler, FAIL failed or (marked
    LOST) taken down with a stopped driver; a stage trial or `study final` trial without either
    record was taken down with its session when marked lost (trainables.records.mark_lost) or no
    driver holds the study (not live), and runs otherwise."""
    if final is not None:
        return "FINISHED"
    if records.written(ERROR_RECORD) is not None:
        return "FAILED"
    if trial is None:
        return "KILLED" if records.written(LOST_RECORD) or not live else "RUNNING"
    if trial.state.name == "FAIL":
        return "KILLED" if trial.user_attrs.get(LOST) else "FAILED"
    return "FINISHED" if trial.state.name in ("PRUNED", "COMPLETE") else "RUNNING"


def _end(records: TrialRecords, status: str, trial: Any, last: float) -> float | None:
    """When the trial ended (seconds): its final or error record's time, else when the ledger was
    told (an early stop, a failure outside the worker), else (taken down with its driver) when
    it was last heard of: its last record."""
    if status == "RUNNING":
        return None
    written = records.written(FINAL_RECORD) or records.written(ERROR_RECORD)
    if written is None and status != "KILLED" and trial is not None and trial.datetime_complete:
        written = trial.datetime_complete.timestamp()
    return written or last


def _numbers(final: dict) -> dict[str, float]:
    """A final result's numbers as its MLflow run's metrics are named (study.tracking: a
    headline metric's '@' as '_', a diagnostic as it is); non-finite values left out."""
    out: dict[str, float] = {}
    for key, value in final.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[key if is_diagnostic(key) else key.replace("@", "_")] = float(value)
    return out


def _param(value: Any) -> Any:
    """A param as a flat key holds it (study.runner.full_params, the MLflow param): a list as its
    comma-joined items, a single number as the number."""
    if not isinstance(value, list):
        return value
    text = ",".join(map(str, value))
    try:
        return float(text)
    except ValueError:
        return text


def _row(records: TrialRecords, trial: Any, rerun: bool, live: bool) -> dict | None:
    """One trial's row (None before its params are written: its first seconds)."""
    params, times = records.params(), records.times()
    if params is None or times is None:
        return None
    final = records.final()
    status = _status(records, final, trial, live)
    seeded = any(key in params for key in SEED_KEYS)
    end = _end(records, status, trial, times[1])
    error = records.error()
    early = final is None and trial is not None and trial.state.name == "PRUNED"
    row = {
        "run_id": records.run_id(),
        "trial_id": records.folder.name,
        "status": status,
        "early_stopped": early,
        "stage": SHARED_STAGE if params.get(STAGE_KEY) else ("final" if seeded else "search"),
        "method": str(params[METHOD_KEY]),
        "label_percent": float(params[LABEL_PERCENT_KEY]),
        "session": "final" if seeded else "search",  # the command that ran it
        "start_time": round(times[0] * 1000),  # ms since the epoch (as MLflow's)
        "end_time": None if end is None else round(end * 1000),
        "error": None if error is None else f"{error['type']}: {_first(error)}".strip()[:200],
        # taken down with its driver, its configuration run again by a later trial of its cell
        "run_again": status == "KILLED" and rerun,
        **{
            k: _param(v)
            for k, v in params.items()
            if k not in (METHOD_KEY, LABEL_PERCENT_KEY, STAGE_KEY)
        },
    }
    if final is not None:
        row.update(_numbers(final))
    elif status == "KILLED":
        row.update(records.spent())  # the networks it stored, which its rerun reuses
    elif early:
        row.update({k: trial.user_attrs[k] for k in SO_FAR if k in trial.user_attrs})
    return row


def _unrecorded(tune_id: str, trial: Any, rerun: bool) -> dict:
    """The row of a search trial the ledger holds but whose records were never written (its
    records folder could not be written): its cell, knobs, state, times and error (why it failed,
    from Tune's error: study.search.NotesErrors) from the ledger alone."""
    method, _, percent = str(trial.user_attrs.get("cell", "")).rpartition("@")
    state = trial.state.name
    lost = state == "FAIL" and trial.user_attrs.get(LOST)
    status = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}.get(state, "RUNNING")
    times = [t.timestamp() * 1000 for t in (trial.datetime_start, trial.datetime_complete) if t]
    return {
        "run_id": trial.user_attrs.get("mlflow_run_id"),
        "trial_id": tune_id,
        "status": "KILLED" if lost else status,
        "early_stopped": state == "PRUNED",
        "run_again": bool(lost and rerun),
        "stage": "search",
        "method": method,
        "label_percent": float(percent.rstrip("%")),
        "session": "search",
        "start_time": round(times[0]) if times else None,
        "end_time": round(times[1]) if len(times) > 1 else None,
        "error": trial.user_attrs.get("error"),
        **{k: _param(v) for k, v in trial.params.items()},
    }


def _first(error: dict) -> str:
    lines = (error.get("message") or "").strip().splitlines()
    return lines[0] if lines else ""


def _number(value: Any) -> float | None:
    """A frame cell as a number, None where it is missing (None or NaN)."""
    return None if value is None or value != value else float(value)


def progress_records(runs: pd.DataFrame, selection: str) -> list[dict]:
    """The trials of a ledger frame as the live status's records (study.progress.from_records):
    trial_id, cell, kind (search | shared | final: a `study final` trial, its networks' too),
    status, start and end (seconds), and the validation objective (selection) when finished."""
    return [
        {
            "trial_id": run["trial_id"],
            "cell": (str(run["method"]), float(run["label_percent"])),
            "kind": "final" if run["session"] == "final" else str(run["stage"]),
            "status": run["status"],
            "start": float(run["start_time"]) / 1000,
            "end": None if _number(run.get("end_time")) is None else float(run["end_time"]) / 1000,
            "value": _number(run.get(selection)),
        }
        for _, run in runs.iterrows()
    ]


def not_run_again(runs: pd.DataFrame) -> pd.DataFrame:
    """The search trials of a ledger frame that the next session will not run again: finished
    (stopped early included), or failed on their objective (it would fail again: the ledger
    marks them diverged). Taken down with a driver, or failed otherwise: run again."""
    if runs.empty:
        return runs
    search = runs["session"] == "search"
    diverged = runs["error"].fillna("").str.startswith(f"{ObjectiveError.__name__}:")
    failed = (runs["status"] == "FAILED") & diverged
    return runs[search & ((runs["status"] == "FINISHED") | failed)]


def ledger_runs(place: Place | str | Path, study_name: str) -> pd.DataFrame:
    """One row per trial of the study (search, stage and `study final` trials): run_id, trial_id,
    status (FINISHED, FAILED, KILLED, RUNNING), early_stopped, stage, method, label_percent,
    session, start_time and end_time (ms), error, the trial's params (its knobs; a final run's
    seeds) and its final result's numbers (a trial taken down: the training it spent; one
    stopped early: its training so far); run_again: a trial taken down with a stopped driver
    whose configuration a later trial ran again (the later one stands for it in the counts)."""
    import pandas as pd

    place = place if isinstance(place, Place) else Place(str(place))
    folder = place.local
    here = driven(folder)  # a driver on this machine holds the study
    live = here or running_now(place)  # or one on another machine does
    if place.remote and not here:  # not this machine's live ledger: the store's backup
        place.pull(folder / LEDGER_FILE, fresh=True)
    ledger = ledger_trials(folder / LEDGER_FILE, study_name)
    root = place / "trials"
    root.pull()
    rows = []
    for path in sorted(root.local.iterdir()) if root.local.is_dir() else []:
        trial, rerun = ledger.get(path.name, (None, False))
        row = _row(TrialRecords.of(root, path.name), trial, rerun, live)
        if row is not None:
            rows.append(row)
    recorded = {row["trial_id"] for row in rows}
    lost = [i for i, (t, _) in ledger.items() if i not in recorded and t.state.name == "COMPLETE"]
    if lost:  # a finished trial's records are written before the ledger is told: they were lost
        more = f" and {len(lost) - 3} more" if len(lost) > 3 else ""
        raise StudyNotReady(
            f"the ledger's finished trial(s) {', '.join(lost[:3])}{more} lack their records "
            f"(params.json, final.json) under {root.location}; restore them from a backup (or "
            "the study's object-store copy); nothing was changed"
        )
    rows += [_unrecorded(i, t, rerun) for i, (t, rerun) in ledger.items() if i not in recorded]
    if not rows:
        return pd.DataFrame(columns=BASE_COLUMNS)
    # Newest first, as MLflow lists runs: a tie between trials is broken as it always was.
    frame = pd.DataFrame(rows).sort_values("start_time", ascending=False, kind="stable")
    frame = frame.reset_index(drop=True)
    return frame[BASE_COLUMNS + [c for c in frame.columns if c not in BASE_COLUMNS]]
