"""`study status DIR`: the live status (study.progress) of a study running anywhere (another
terminal, a Ray job), read from its ledger (analysis.ledger: the cells' Optuna trials and the
trial records) and its saved spec's plan. The MLflow store is not read: the status of a study
whose store is lost, or whose tracking server is down, reads the same."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from analysis.ledger import ledger_runs, progress_records, running_now
from analysis.results import StudyNotReady, objectives_of, read_spec
from study.cell_studies import selection_metric
from study.progress import Progress, from_records
from study.runner import load_study_spec, plan_stage_trials, study_progress

if TYPE_CHECKING:
    from study.spec import StudySpec


def _classes_without_data(spec: StudySpec, runs: pd.DataFrame) -> int:
    """An image-folder study's class count when its folder is not on this machine (a copy): the
    classes its finished trials measured generation accuracy of (their gen_accuracy_class<k>
    results); 0 otherwise (the plan counts the class folders, or names the folder)."""
    if spec.dataset != "folder":
        return 0
    if Path(spec.trial_config({"method": spec.methods[0]}).data.root).expanduser().is_dir():
        return 0
    per_class = [c for c in runs.columns if re.fullmatch(r"gen_accuracy_class\d+", c)]
    return sum(bool(runs[c].notna().any()) for c in per_class)


def load_progress(study_dir: str | Path) -> tuple[Progress, str]:
    """(the study's progress from its ledger, the first objective's metric). StudyNotReady when
    the folder is not a study or no trial has started."""

    folder, raw = read_spec(study_dir)
    _, spec = load_study_spec(folder, store=False, view=True)
    metric, _ = objectives_of(raw)[0]
    runs = ledger_runs(spec.study_place(folder), spec.name)
    if runs.empty:
        raise StudyNotReady(
            f"{folder}: no trial has started yet; start it with 'study resume {folder}'"
        )
    progress = study_progress(spec, classes=_classes_without_data(spec, runs))
    if (runs["stage"] == "final").any() and not (runs["stage"] == "search").any():
        progress.main_kind = "final"
    rows = progress_records(runs[~runs["run_again"].astype(bool)], selection_metric(metric))
    stopped = []
    if not running_now(spec.study_place(folder)):
        # No driver runs the study (it ended, or was killed before it could settle its trials):
        # a trial still running was stopped with it and spent nothing; the next session runs
        # its configuration again, so its cell counts it as still to run.
        stopped = [r for r in rows if r["status"] == "RUNNING"]
        rows = [r for r in rows if r["status"] != "RUNNING"]
    from_records(progress, rows)
    plan_stage_trials(progress, spec, folder)
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
