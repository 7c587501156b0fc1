"""The console's report of a study's runs: how many runs ended how, which table cells have no
finished trial and why, whether the search budget looks too small, and the compute line. Pure
arithmetic over the runs frame (analysis.runs.load_runs); the CLI prints it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis import accounting
from analysis.budget import search_budget
from analysis.tables import stopped_early
from trainables.names import SHARED_STAGE, cell_label


def run_counts(runs: pd.DataFrame, metric: str) -> str:
    """'N trial runs (F finished, ...)': every status, early stops, and how many reach the table."""
    stages = runs["stage"] if "stage" in runs and len(runs) else pd.Series(dtype=object)
    final = int((stages == "final").sum())
    shared = int((stages == SHARED_STAGE).sum())
    if final or shared:  # `study final` runs have their own table; stage trials train, no more
        runs = runs[~runs["stage"].isin(["final", SHARED_STAGE])]
    if not len(runs):
        return "0 trial runs"
    status = runs["status"].value_counts()
    parts = [f"{status.get('FINISHED', 0)} finished"]
    parts += [f"{status[s]} {s.lower()}" for s in ("FAILED", "KILLED", "RUNNING") if s in status]
    early = int(stopped_early(runs).sum())
    if early:
        parts.append(f"{early} stopped early by ASHA")
    done = runs[(runs["status"] == "FINISHED") & ~stopped_early(runs)]
    usable = int(done[metric].notna().sum()) if metric in done else 0
    counts = f"{len(runs)} trial runs ({', '.join(parts)}; {usable} with {metric} reach the table)"
    counts += f"; {shared} stage trial(s) training shared networks" if shared else ""
    return counts + (f"; {final} final runs (tables/final.md)" if final else "")


def failed_cells(
    runs: pd.DataFrame, methods: list[str], label_percents: list[float], metric: str
) -> list[str]:
    """One line per table cell with no finished search trial reporting the objective: the cell
    and the first error of its trials (the earliest failed run's)."""
    search = runs[runs["stage"] == "search"] if len(runs) else runs
    lines = []
    for method in methods:
        for percent in label_percents:
            mine = search[(search["method"] == method) & (search["label_percent"] == percent)]
            done = mine[mine["status"] == "FINISHED"]
            if metric in done and done[metric].notna().any():
                continue
            failed = mine[mine["status"] == "FAILED"].sort_values("start_time")
            errors = failed["error"].dropna() if "error" in failed else []
            why = (
                f"first error: {errors.iloc[0]}"
                if len(errors)
                else (f"{len(failed)} failed" if len(failed) else f"no trial reported {metric}")
            )
            lines.append(f"{cell_label(method, percent)}: no finished trial; {why}")
    return lines


def budget_line(runs: pd.DataFrame, objective: tuple[str, str], study_dir: Path) -> str:
    """'search budget: ...' when some cell's last trial still raised its expected best
    validation value (analysis.budget), with the remedy; '' otherwise."""
    table = search_budget(runs, objective)
    if table.empty:
        return ""
    searched = table[table["trials"] > 1]
    rising = searched[searched["last_trial_gain"].abs() > 0]
    if rising.empty:
        return ""
    return (
        f"search budget: the last trial still moved the expected best in {len(rising)} of "
        f"{len(searched)} searched cells (tables/budget.md);\n"
        f"  more trials per cell: study resume {study_dir} --add-trials N\n"
    )


def compute_line(report: dict[str, float]) -> str:
    """The console's one line of the compute report (analysis.accounting.compute_report)."""
    saved = (
        f"{report['train_steps_naive'] / report['train_steps']:.1f}x fewer than retraining"
        if report["train_steps"]
        else "every network came from the artifact store"
    )
    line = (
        f"compute: {report['train_steps']:,.0f} training steps ({saved}), "
        f"{report['device_seconds']:.0f} device-seconds"
    )
    if "useful_work_fraction" in report:
        line += f", {report['useful_work_fraction']:.0%} useful work"
    return line + " (tables/compute.md)\n"


def write_compute(
    runs: pd.DataFrame,
    sessions: tuple[dict[int, float], dict[int, float]],
    slots: int,
    tables: Path,
) -> tuple[list[Path], str]:
    """The search's compute report (analysis.accounting) written to tables/compute.md:
    ([that file], the console's line), or ([], "") before a trial has finished. sessions: the
    search sessions' (starts, walls) from the study's session records (trainables.records)."""
    search = runs[runs["stage"].isin(["search", SHARED_STAGE])] if "stage" in runs else runs
    wall = accounting.study_wall(*sessions, search)
    report = accounting.compute_report(runs, wall, slots)
    if not report:
        return [], ""
    path = tables / "compute.md"
    path.write_text(accounting.to_markdown(report, slots))
    return [path], compute_line(report)
