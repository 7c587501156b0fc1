"""Compute accounting of a study's search: what it spent next to what a naive plan would spend.

Spent, from every finished search trial's `cost/*` metrics: training steps actually run (an
artifact reused from the cache costs none), score-network evaluations of sampling (the validation
sweep over the guidance grid at its reduced sample count, plus the one full evaluation), and
device-seconds (training + evaluation). Naive: every trial retrains every network it uses, and
every guidance scale is its own trial (trained again, sampled in full). The useful-work fraction is
device-seconds / (wall-clock seconds x concurrent trial slots): the rest is start-up, waiting on
another trial's artifact lock, and idle slots. Stage trials (study.stages: the shared networks,
trained once before the trials that need them) count in what was spent, not in the naive plan
(which has no stages: its trials retrain them); so does the training of trials a stopped driver
took down (KILLED runs: the networks they stored, which the trials running their configurations
again reuse), and of trials the scheduler (ASHA) stopped early: their training up to their last
epoch (`cost/steps_trained_so_far`, `cost/train_seconds_so_far`, reported with every epoch).
"""

from __future__ import annotations

import pandas as pd

from analysis.tables import completed, stopped_early
from trainables.names import SHARED_STAGE, parse_curve_key
from trainables.records import COST


def _scales(row: pd.Series) -> int:
    """How many guidance scales the trial swept (1 when it swept none)."""
    swept = {
        parsed[1]
        for key, value in row.items()
        if (parsed := parse_curve_key(str(key))) is not None and pd.notna(value)
    }
    return max(1, len(swept))


def _cost(done: pd.DataFrame, key: str) -> pd.Series:
    return done[key].fillna(0.0) if key in done.columns else pd.Series(0.0, index=done.index)


def compute_report(runs: pd.DataFrame, wall_seconds: float | None, slots: int) -> dict[str, float]:
    """Spent vs naive training steps and score evaluations, device-seconds and the useful-work
    fraction (NaN without a wall-clock time) of the finished search trials."""
    done = completed(runs)
    if done.empty:
        return {}
    scales = done.apply(_scales, axis=1) if len(done.columns) else pd.Series(dtype=float)
    trained, reused = _cost(done, COST.STEPS_TRAINED), _cost(done, COST.STEPS_REUSED)
    full, val = (
        _cost(done, COST.SAMPLING_SCORE_EVALS),
        _cost(done, COST.VAL_SAMPLING_SCORE_EVALS),
    )
    seconds = _cost(done, COST.TRAIN_SECONDS) + _cost(done, COST.EVAL_SECONDS)
    shared = completed(runs, stage=SHARED_STAGE)
    of_search = (
        runs["stage"].fillna("search").isin(["search", SHARED_STAGE]) if "stage" in runs else True
    )
    lost = runs[(runs["status"] == "KILLED") & of_search]  # not a `study final` run taken down
    stopped = runs[(runs["status"] == "FINISHED") & stopped_early(runs) & of_search]
    report = {
        "trials": float(len(done)),
        "stage_trials": float(len(shared)),
        "train_steps": float(
            trained.sum()
            + _cost(shared, COST.STEPS_TRAINED).sum()
            + _cost(lost, COST.STEPS_TRAINED).sum()
            + _cost(stopped, COST.STEPS_SO_FAR).sum()
        ),
        "train_steps_naive": float(((trained + reused) * scales).sum()),
        "score_evals": float((full + val).sum()),
        "score_evals_naive": float((full * scales).sum()),
        "device_seconds": float(
            seconds.sum()
            + _cost(shared, COST.TRAIN_SECONDS).sum()
            + _cost(lost, COST.TRAIN_SECONDS).sum()
            + _cost(stopped, COST.TRAIN_SECONDS_SO_FAR).sum()
        ),
        "wait_seconds": float(
            _cost(done, COST.WAIT_SECONDS).sum() + _cost(shared, COST.WAIT_SECONDS).sum()
        ),
    }
    if wall_seconds:
        report["wall_seconds"] = float(wall_seconds)
        report["useful_work_fraction"] = report["device_seconds"] / (wall_seconds * slots)
    span = _trial_span(pd.concat([done, shared]))
    if span:
        report["trial_span_seconds"] = span
        report["useful_work_fraction_trials"] = report["device_seconds"] / (span * slots)
    return report


def study_wall(
    starts: dict[int, float], walls: dict[int, float], runs: pd.DataFrame
) -> float | None:
    """Wall-clock seconds of every session of a study (run, each resume): the walls the sessions
    logged, keyed by session; a session that logged its start but not its wall (killed) counts
    from its start to the last end of a run that started within it (0 when none did). None when
    no session logged anything."""
    if not starts and not walls:
        return None
    total = sum(walls.values())
    order = sorted(starts.items(), key=lambda item: item[1])
    ends = runs["end_time"] if "end_time" in runs.columns else pd.Series(dtype=float)
    began = runs["start_time"] if "start_time" in runs.columns else pd.Series(dtype=float)
    for i, (step, start) in enumerate(order):
        if step in walls:
            continue
        until = order[i + 1][1] if i + 1 < len(order) else float("inf")
        inside = (began / 1000.0 >= start) & (began / 1000.0 < until)
        last = ends[inside].dropna()
        total += max(0.0, float(last.max()) / 1000.0 - start) if len(last) else 0.0
    return total


def _trial_span(runs: pd.DataFrame) -> float | None:
    """Seconds from the first trial's start to the last trial's end (the time trial slots were
    in use; the study's wall adds MLflow and Tune set-up and the closing bookkeeping). Over
    several sessions (resume) it includes the time between them."""
    if not {"start_time", "end_time"} <= set(runs.columns):
        return None
    start, end = runs["start_time"].dropna(), runs["end_time"].dropna()
    if start.empty or end.empty:
        return None
    span = (float(end.max()) - float(start.min())) / 1000.0
    return span if span > 0 else None


def to_markdown(report: dict[str, float], slots: int) -> str:
    """The report as a short Markdown table (spent, naive, ratio)."""
    if not report:
        return "(no finished search trials)\n"

    def ratio(naive: float, spent: float) -> str:
        return f"{naive / spent:.1f}x" if spent else "-"

    lines = [
        f"Compute of the search ({int(report['trials'])} finished trials, "
        f"{int(report.get('stage_trials', 0))} stage trials of shared networks)\n",
        "| quantity | spent | naive plan | naive / spent |",
        "|---|---|---|---|",
        f"| training steps | {report['train_steps']:.0f} | {report['train_steps_naive']:.0f} | "
        f"{ratio(report['train_steps_naive'], report['train_steps'])} |",
        f"| sampling score evaluations | {report['score_evals']:.3g} | "
        f"{report['score_evals_naive']:.3g} | "
        f"{ratio(report['score_evals_naive'], report['score_evals'])} |",
        f"| device-seconds (train + eval) | {report['device_seconds']:.0f} | | |",
        f"| seconds waiting on another trial's artifact | {report['wait_seconds']:.1f} | | |",
    ]
    if "useful_work_fraction" in report:
        lines.append(
            f"\nuseful-work fraction: {report['useful_work_fraction']:.0%} "
            f"(device-seconds / ({report['wall_seconds']:.0f} s wall x {slots} slots))"
        )
    if "useful_work_fraction_trials" in report:
        lines.append(
            f"useful-work fraction of the trial slots: "
            f"{report['useful_work_fraction_trials']:.0%} (device-seconds / "
            f"({report['trial_span_seconds']:.0f} s from the first trial's start to the last "
            f"one's end x {slots} slots); the wall adds MLflow / Tune set-up and bookkeeping"
        )
    lines.append(
        "\nnaive plan: every trial retrains every network it uses and every guidance scale is its "
        "own trial (analysis/accounting.py)."
    )
    return "\n".join(lines) + "\n"
