"""`study status DIR`: the live status (study.progress) of a study running anywhere (another
terminal, a Ray job), read from its ledger: the saved spec and its plan, the cells' Optuna trials
(optuna.db: which search trials exist and how each ended) and the trial records (what each trial
is, when it started and ended, its result). The MLflow store is not read: the status of a study
whose store is lost, or whose tracking server is down, reads the same."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.results import StudyNotReady, objectives_of, read_spec
from study.cell_studies import LOST, ledger_trials, selection_metric
from study.progress import Progress, from_records
from study.runner import driven, load_study_spec, study_progress
from study.spec import SEED_KEYS
from trainables.names import ERROR_RECORD, FINAL_RECORD, LABEL_PERCENT_KEY, METHOD_KEY, STAGE_KEY
from trainables.records import TrialRecords

if TYPE_CHECKING:
    from study.spec import StudySpec


def _kind(params: dict) -> str:
    """search | shared | final: a `study final` trial (its seed keys), its shared networks' too."""
    if any(key in params for key in SEED_KEYS):
        return "final"
    return "shared" if params.get(STAGE_KEY) else "search"


def _status(records: TrialRecords, final: dict | None, trial: Any) -> str:
    """FINISHED | FAILED | KILLED | RUNNING: by its final or error record, else (a search trial)
    by its state in the ledger: PRUNED stopped early by the scheduler, FAIL failed or (marked
    LOST) taken down with a stopped driver."""
    if final is not None:
        return "FINISHED"
    if records.written(ERROR_RECORD) is not None:
        return "FAILED"
    state = trial.state.name if trial is not None else "RUNNING"
    if state == "FAIL":
        return "KILLED" if trial.user_attrs.get(LOST) else "FAILED"
    return "FINISHED" if state in ("PRUNED", "COMPLETE") else "RUNNING"


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


def ledger_rows(folder: Path, spec: StudySpec, metric: str) -> list[dict]:
    """The study's trials as progress records (trial_id, cell, kind, status, start, end in
    seconds, value: the first objective's validation value, result: the final record), from the
    trial records and the ledger. Left out: a trial taken down with a stopped driver whose
    configuration a later trial ran again (under the cell's same budget), and a trial whose
    driver has not yet written its params (its first seconds)."""
    place = spec.study_place(folder)
    if place.remote and not driven(folder):  # not this machine's live ledger: the store's backup
        place.pull(folder / "optuna.db", fresh=True)
    ledger = ledger_trials(folder / "optuna.db", spec.name)
    root = place / "trials"
    root.pull()
    rows = []
    for path in sorted(root.local.iterdir()) if root.local.is_dir() else []:
        records = TrialRecords.of(root, path.name)
        params, times = records.params(), records.times()
        if params is None or times is None:
            continue
        final, (trial, rerun) = records.final(), ledger.get(path.name, (None, False))
        status = _status(records, final, trial)
        if status == "KILLED" and rerun:
            continue  # taken down with its driver, its configuration run again: its trial counts
        value = (final or {}).get(selection_metric(metric))
        rows.append({
            "trial_id": path.name,
            "cell": (str(params[METHOD_KEY]), float(params[LABEL_PERCENT_KEY])),
            "kind": _kind(params),
            "status": status,
            "start": times[0],
            "end": _end(records, status, trial, times[1]),
            "value": None if value is None else float(value),
            "result": final,
        })  # fmt: skip
    return rows


def _classes_without_data(spec: StudySpec, rows: list[dict]) -> int:
    """An image-folder study's class count when its folder is not on this machine (a copy): the
    classes its finished trials measured generation accuracy of (their gen_accuracy_class<k>
    results); 0 otherwise (the plan counts the class folders, or names the folder)."""
    if spec.dataset != "folder":
        return 0
    if Path(spec.trial_config({"method": spec.methods[0]}).data.root).expanduser().is_dir():
        return 0
    keys = {k for row in rows for k in row["result"] or {}}
    return len([k for k in keys if re.fullmatch(r"gen_accuracy_class\d+", k)])


def load_progress(study_dir: str | Path) -> tuple[Progress, str]:
    """(the study's progress from its ledger, the first objective's metric). StudyNotReady when
    the folder is not a study or no trial has started."""

    folder, raw = read_spec(study_dir)
    _, spec = load_study_spec(folder, store=False, view=True)
    metric, _ = objectives_of(raw)[0]
    rows = ledger_rows(folder, spec, metric)
    if not rows:
        raise StudyNotReady(
            f"{folder}: no trial has started yet; start it with 'study resume {folder}'"
        )
    progress = study_progress(spec, classes=_classes_without_data(spec, rows))
    if any(r["kind"] == "final" for r in rows) and not any(r["kind"] == "search" for r in rows):
        progress.main_kind = "final"
    stopped = []
    if not spec.study_place(folder).remote and not driven(folder):
        # No driver holds the study (it ended, or was killed before it could settle its
        # trials): a trial still running was stopped with it and spent nothing; the next session
        # runs its configuration again, so its cell counts it as still to run.
        stopped = [r for r in rows if r["status"] == "RUNNING"]
        rows = [r for r in rows if r["status"] != "RUNNING"]
    from_records(progress, rows)
    progress.stopped = len(stopped)  # their cells count them as still to run
    return progress, metric


def status_text(study_dir: str | Path, now: float | None = None) -> str:
    """The status block `study run` prints, for a study read from its ledger."""
    progress, metric = load_progress(study_dir)
    now = time.time() if now is None else now
    running = [t for t in progress.trials.values() if t.status == "RUNNING"]
    if not running:
        ends = [t.end for t in progress.trials.values() if t.end is not None]
        now = max(ends) if ends else now  # a study that is not running: its span, no clock
    summary = progress.summary(now, live=bool(running))
    if not running:
        stopped = progress.stopped
        summary += f"; {stopped} trial(s) stopped with their driver" if stopped else ""
        summary += "; not running now" + (
            "" if not progress.pending() else f" (resume it: study resume {study_dir})"
        )
    return f"{summary}\n{progress.table(metric)}\n"
