"""`study status DIR`: the live status (study.progress) of a study running anywhere (another
terminal, a Ray job), read from its stores: the saved spec, the plan, and the MLflow runs with their
start and end times."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from analysis.results import StudyNotReady, objectives_of, read_spec, tracking_uri
from analysis.runs import load_runs
from study.progress import Progress, from_records
from study.runner import driven, load_study_spec, study_progress
from trainables.names import SHARED_STAGE, VALIDATION_PREFIX

if TYPE_CHECKING:
    from study.spec import StudySpec


def records(runs: pd.DataFrame, selection: str) -> list[dict]:
    """The runs as progress records (times in seconds; the validation objective when finished)."""
    out = []
    for _, run in runs.iterrows():
        value = run.get(selection)
        end = run.get("end_time")
        stage = run.get("stage") or "search"
        kind = "shared" if stage == SHARED_STAGE else stage
        if kind == "shared" and run.get("session") == "final":
            kind = "final"  # a `study final` network: not one of the search's planned stages
        out.append({
            "trial_id": run["trial_id"],
            "cell": (str(run["method"]), float(run["label_percent"])),
            "kind": kind,
            "status": run["status"],
            "start": float(run["start_time"]) / 1000,
            "end": None if end is None or pd.isna(end) else float(end) / 1000,
            "value": None if value is None or pd.isna(value) else float(value),
        })  # fmt: skip
    return out


def _classes_without_data(spec: StudySpec, runs: pd.DataFrame) -> int:
    """An image-folder study's class count when its folder is not on this machine (a copy): the
    classes its finished trials measured generation accuracy of (their gen_accuracy_class<k>
    metrics); 0 otherwise (the plan counts the class folders, or names the folder)."""
    if spec.dataset != "folder":
        return 0
    if Path(spec.trial_config({"method": spec.methods[0]}).data.root).expanduser().is_dir():
        return 0
    per_class = [c for c in runs.columns if re.fullmatch(r"gen_accuracy_class\d+", c)]
    return sum(bool(runs[c].notna().any()) for c in per_class)


def load_progress(study_dir: str | Path) -> tuple[Progress, str]:
    """(the study's progress from its stores, the first objective's metric). StudyNotReady when
    the folder is not a study or no trial has started."""

    folder, raw = read_spec(study_dir)
    runs = load_runs(tracking_uri(folder, raw), raw["name"], raw.get("study_id"))
    if runs.empty:
        raise StudyNotReady(
            f"{folder}: no trial has started yet (or its tracking store is missing); "
            f"start it with 'study resume {folder}'"
        )
    _, spec = load_study_spec(folder, view=True)
    metric, _ = objectives_of(raw)[0]
    progress = study_progress(spec, classes=_classes_without_data(spec, runs))
    final = runs[runs["stage"] == "final"]
    if len(final) and not (runs["stage"] == "search").any():
        progress.main_kind = "final"
    rows = records(runs, f"{VALIDATION_PREFIX}{metric}")
    stopped = []
    if not spec.study_place(folder).remote and not driven(folder):
        # No driver holds the study (it ended, or was killed before it could end its runs): a
        # run still RUNNING was stopped with it and spent nothing; the next session runs its
        # configuration again, so its cell counts it as still to run.
        stopped = [r for r in rows if r["status"] == "RUNNING"]
        rows = [r for r in rows if r["status"] != "RUNNING"]
    from_records(progress, rows)
    progress.stopped = len(stopped)  # their cells count them as still to run
    return progress, metric


def status_text(study_dir: str | Path, now: float | None = None) -> str:
    """The status block `study run` prints, for a study read from its stores."""
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
