"""Figures for a paper (`study plot DIR`, and the end of `study run` / `study final`), each as PDF
and PNG in DIR/figures:

- label_percent_<metric>: the papers' main figure, each metric against the label % per method; with
  `study final` runs, the seed mean and its 95 % t interval (analysis.final), else each cell's
  chosen trial;
- guidance_<metric>: validation metric against the guidance scale of every cell's chosen trial, one
  panel per label %, the chosen scale starred;
- pareto: with several objectives, every finished trial's validation values per label %, the front
  joined;
- budget: each cell's expected best validation value after k trials (analysis.budget).

Methods keep their registry order and their colour (analysis.style) in every figure; legends sit
outside the data; log-scale axes are ticked at the values swept, in plain numbers.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import style
from analysis.budget import expected_best_curve
from analysis.console import HEADLINE
from analysis.final import seed_statistics
from analysis.tables import (
    best_per_cell,
    completed,
    curve_points,
    pareto_set,
    selection_column,
)
from trainables.names import (
    CHOSEN_SCALE,
    CURVE_METRICS,
    CURVE_SAMPLES,
    METHODS,
    SAMPLES_IMAGE,
    cell_label,
)

FIGURES_DIR = "figures"
FORMATS = ("pdf", "png")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _save(fig: Any, out_dir: Path, stem: str) -> list[Path]:
    """Write stem.pdf and stem.png (300 dpi) and close the figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    paths = [out_dir / f"{stem}.{fmt}" for fmt in FORMATS]
    for path in paths:
        fig.savefig(path, dpi=300, bbox_inches="tight")
    _pyplot().close(fig)
    return paths


def _plain_ticks(ax: Any, axis: str, values: Sequence[float]) -> None:
    """Ticks at exactly the given values, labelled as plain numbers (0.5, 1, 2, not 2x10^0)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ticks = sorted(set(float(v) for v in values))
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator(ticks))
    target.set_minor_locator(NullLocator())
    target.set_major_formatter(_plain_formatter())


def _plain_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v:g}")


def _legend_outside(fig: Any, axes: Sequence[Any]) -> None:
    """One legend for the figure, right of the panels, methods in registry order."""
    handles, labels = {}, []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    ordered = style.method_order([lab for lab in labels if lab in METHODS])
    ordered += [lab for lab in labels if lab not in ordered]
    if ordered:
        fig.legend([handles[lab] for lab in ordered], ordered, loc="center left",
                   bbox_to_anchor=(1.0, 0.5), frameon=False)  # fmt: skip


def label_percent_points(
    runs: pd.DataFrame, objective: tuple[str, str], metric: str
) -> dict[str, list[tuple[float, float, float, float]]]:
    """Per method, (label %, value, low, high) sorted by label %: the final runs' seed mean and its
    interval where the study has final runs, else the cell's chosen trial (no interval)."""
    statistics = seed_statistics(runs, [metric])
    out: dict[str, list[tuple[float, float, float, float]]] = {}
    if not statistics.empty:
        for _, row in statistics.iterrows():
            out.setdefault(row["method"], []).append(
                (float(row["label_percent"]), row["mean"], row["ci_low"], row["ci_high"])
            )
    else:
        best = best_per_cell(runs, *objective)
        if metric in best.columns:
            for _, row in best.dropna(subset=[metric]).iterrows():
                value = float(row[metric])
                out.setdefault(row["method"], []).append(
                    (float(row["label_percent"]), value, math.nan, math.nan)
                )
    return {m: sorted(out[m]) for m in style.method_order(out)}


def label_percent_figure(
    runs: pd.DataFrame, objectives: Sequence[tuple[str, str]], out_dir: Path
) -> list[Path]:
    """label_percent_<metric>.{pdf,png} for the objectives and the headline metrics present (the
    console table's: analysis.console.HEADLINE). Each method is nudged sideways by a few percent
    of the log axis, so methods whose values coincide (CFG-labeled and CFG-all at 100 %) all show;
    a metric's exact ceiling (style.CEILINGS) is a dashed line; with one label % the methods are
    dots side by side."""
    plt = _pyplot()
    metrics = list(dict.fromkeys([m for m, _ in objectives] + list(HEADLINE)))
    written = []
    for metric in metrics:
        lines = label_percent_points(runs, objectives[0], metric)
        if not any(len(points) > 0 for points in lines.values()):
            continue
        fig, ax = plt.subplots(figsize=(4.2, 3.0))
        percents = sorted({p for points in lines.values() for p, *_ in points})
        if len(percents) == 1:
            _dots(ax, lines)
            ax.set_xlabel(f"method ({percents[0]:g} % labeled data)")
        else:
            _lines(ax, lines, percents)
            ax.set_xlabel("labeled data (%)")
        _ceiling(ax, runs, metric)
        ax.set_ylabel(style.axis_label(metric))
        ax.grid(alpha=0.3)
        _legend_outside(fig, [ax])
        written += _save(fig, out_dir, f"label_percent_{metric}")
    return written


def _lines(ax: Any, lines: dict, percents: list[float]) -> None:
    """A line per method over the label %, nudged apart on the x axis (a log axis: a factor)."""
    log = min(percents) > 0
    for i, (method, points) in enumerate(lines.items()):
        x, y, low, high = (list(v) for v in zip(*points))
        nudge = 1.0 + 0.025 * (i - (len(lines) - 1) / 2) if log else 1.0
        x = [v * nudge for v in x]
        ax.errorbar(x, y, yerr=_spread(y, low, high), marker=style.marker(method),
                    color=style.color(method), label=method, lw=1.4, ms=4, capsize=2,
                    elinewidth=0.8)  # fmt: skip
    if log:
        ax.set_xscale("log")
    _plain_ticks(ax, "x", percents)


def _dots(ax: Any, lines: dict) -> None:
    """One label %: a dot (and its seed interval) per method, side by side."""
    for i, (method, points) in enumerate(lines.items()):
        _, y, low, high = (list(v) for v in zip(*points))
        ax.errorbar([i], y, yerr=_spread(y, low, high), marker=style.marker(method),
                    color=style.color(method), label=method, ls="none", ms=6,
                    capsize=3)  # fmt: skip
    ax.set_xticks(range(len(lines)), list(lines), rotation=30, ha="right", fontsize=7)
    ax.set_xlim(-0.6, len(lines) - 0.4)


def _spread(y: list[float], low: list[float], high: list[float]) -> Any:
    """errorbar's [below, above] from an interval; None without one."""
    if not any(math.isfinite(v) for v in low):
        return None
    below = [v - lo if math.isfinite(lo) else 0.0 for v, lo in zip(y, low)]
    above = [hi - v if math.isfinite(hi) else 0.0 for v, hi in zip(y, high)]
    return [below, above]


def _ceiling(ax: Any, runs: pd.DataFrame, metric: str) -> None:
    """The metric's exact ceiling (exact samples scored alike) as a dashed line, when the runs
    report one value of it."""
    key = style.CEILINGS.get(metric)
    if key is None or key not in runs.columns:
        return
    values = completed(runs)[key].dropna() if len(completed(runs)) else pd.Series(dtype=float)
    if values.empty:
        return
    ax.axhline(float(values.mean()), color="0.4", ls="--", lw=1,
               label=f"ceiling: exact samples ({float(values.mean()):.3g})")  # fmt: skip


def _mark_dropped(ax: Any, row: pd.Series, points: list[tuple[float, float]]) -> bool:
    """Draw hollow the scales of a trial's curve that the race dropped early (measured on fewer
    validation samples per class than the survivors: trainables.sweep); True if there were any."""
    reached = dict(curve_points(row, CURVE_SAMPLES))
    full = max(reached.values(), default=0.0)
    dropped = [(s, v) for s, v in points if reached.get(s, full) < full]
    if dropped:
        method = row["method"]
        ax.plot(*zip(*dropped), ls="none", marker=style.marker(method), ms=4.5, mfc="white",
                mec=style.color(method), mew=1.0, zorder=3)  # fmt: skip
    return bool(dropped)


def guidance_figure(
    runs: pd.DataFrame,
    objective: tuple[str, str],
    out_dir: Path,
    metrics: Sequence[str] = CURVE_METRICS,
) -> list[Path]:
    """guidance_<metric>.{pdf,png}: one panel per label %, a line per method (its chosen trial's
    validation sweep), the chosen scale starred, the scales the race dropped early hollow."""
    plt = _pyplot()
    best = best_per_cell(runs, *objective)
    written = []
    for metric in metrics:
        rows = [(row, curve_points(row, metric)) for _, row in best.iterrows()]
        rows = [(row, pts) for row, pts in rows if len(pts) > 1]
        if not rows:
            continue
        percents = sorted({float(row["label_percent"]) for row, _ in rows})
        fig, axes = plt.subplots(1, len(percents), figsize=(3.4 * len(percents), 2.9),
                                 sharey=True, squeeze=False)  # fmt: skip
        dropped = False
        for ax, pct in zip(axes[0], percents):
            mine = [(r, p) for r, p in rows if float(r["label_percent"]) == pct]
            order = style.method_order(r["method"] for r, _ in mine)
            mine.sort(key=lambda item: order.index(item[0]["method"]))
            scales: set[float] = set()
            for row, pts in mine:
                x, y = zip(*pts)
                scales |= set(x)
                method = row["method"]
                ax.plot(x, y, marker=style.marker(method), color=style.color(method),
                        label=method, lw=1.3, ms=3.5)  # fmt: skip
                dropped |= _mark_dropped(ax, row, pts)
                chosen = row.get(CHOSEN_SCALE)
                if pd.notna(chosen) and float(chosen) in x:
                    ax.plot([chosen], [y[x.index(float(chosen))]], "*", ms=11,
                            color=style.color(method), mec="white", mew=0.6)  # fmt: skip
            ax.set_xscale("log")
            _plain_ticks(ax, "x", scales)
            ax.set_title(f"{pct:g}% labels")
            ax.set_xlabel("guidance scale γ")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(style.axis_label(metric, "validation "))
        _legend_outside(fig, axes[0])
        note = "; hollow: dropped early by the race, on fewer samples" if dropped else ""
        fig.suptitle(f"star: the scale each trial chose on validation{note}", fontsize=8, y=1.02)
        written += _save(fig, out_dir, f"guidance_{metric}")
    return written


def pareto_figure(
    runs: pd.DataFrame, objectives: Sequence[tuple[str, str]], out_dir: Path
) -> list[Path]:
    """pareto.{pdf,png}: with two or more objectives, the first two's validation values of every
    finished trial, one panel per label %, the front joined; [] with one objective."""
    if len(objectives) < 2:
        return []
    plt = _pyplot()
    done = completed(runs)
    (mx, _), (my, _) = objectives[0], objectives[1]
    cx, cy = selection_column(done, mx), selection_column(done, my)
    if done.empty or cx not in done or cy not in done:
        return []
    done = done.dropna(subset=[cx, cy])
    percents = sorted(set(done["label_percent"]))
    if not percents:
        return []
    fig, axes = plt.subplots(1, len(percents), figsize=(3.6 * len(percents), 3.0), squeeze=False)
    for ax, pct in zip(axes[0], percents):
        group = done[done["label_percent"] == pct]
        for method in style.method_order(group["method"]):
            trials = group[group["method"] == method]
            ax.scatter(trials[cx], trials[cy], color=style.color(method),
                       marker=style.marker(method), label=method, s=18)  # fmt: skip
        front = pareto_set(group, objectives).sort_values(cx)
        ax.plot(front[cx], front[cy], "k--", lw=1, label="Pareto front")
        ax.set_title(f"{pct:g}% labels")
        ax.set_xlabel(style.axis_label(mx, "validation "))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(style.axis_label(my, "validation "))
    _legend_outside(fig, axes[0])
    return _save(fig, out_dir, "pareto")


def budget_figure(runs: pd.DataFrame, objective: tuple[str, str], out_dir: Path) -> list[Path]:
    """budget.{pdf,png}: each cell's expected best validation value after k trials (Dodge et al.
    2019), one panel per label %, a line per method with more than one trial."""

    done = completed(runs)
    if done.empty:
        return []
    column = selection_column(done, objective[0])
    cells = [
        (method, float(pct), expected_best_curve(group[column].dropna().tolist(), objective[1]))
        for (method, pct), group in done.groupby(["method", "label_percent"])
    ]
    cells = [c for c in cells if len(c[2]) > 1]
    if not cells:
        return []
    plt = _pyplot()
    percents = sorted({pct for _, pct, _ in cells})
    fig, axes = plt.subplots(1, len(percents), figsize=(3.4 * len(percents), 2.9),
                             sharey=True, squeeze=False)  # fmt: skip
    for ax, pct in zip(axes[0], percents):
        mine = [c for c in cells if c[1] == pct]
        order = style.method_order(m for m, _, _ in mine)
        for method, _, curve in sorted(mine, key=lambda c: order.index(c[0])):
            ax.plot(range(1, len(curve) + 1), curve, marker=style.marker(method),
                    color=style.color(method), label=method, lw=1.3, ms=3.5)  # fmt: skip
        ax.set_title(f"{pct:g}% labels")
        ax.set_xlabel("trials k")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(style.axis_label(objective[0], "expected best validation "))
    _legend_outside(fig, axes[0])
    return _save(fig, out_dir, "budget")


def sample_grids(
    runs: pd.DataFrame, objective: tuple[str, str], study_dir: Path, out_dir: Path
) -> list[Path]:
    """samples_<cell>.png: each cell's chosen trial's samples (images: one labelled row per
    class; the toy: beside the exact mixture), copied from its trial records."""
    written = []
    for _, row in best_per_cell(runs, *objective).iterrows():
        picture = Path(study_dir) / "trials" / str(row["trial_id"]) / SAMPLES_IMAGE
        if picture.exists():
            out_dir.mkdir(parents=True, exist_ok=True)
            target = out_dir / f"samples_{cell_label(row['method'], row['label_percent'])}.png"
            shutil.copyfile(picture, target)
            written.append(target)
    return written


def write_figures(
    runs: pd.DataFrame, objectives: Sequence[tuple[str, str]], study_dir: Path
) -> list[Path]:
    """Every figure of the study into study_dir/figures; the paths written."""
    out = Path(study_dir) / FIGURES_DIR
    written = label_percent_figure(runs, objectives, out)
    written += sample_grids(runs, objectives[0], study_dir, out)
    written += guidance_figure(runs, objectives[0], out)
    written += pareto_figure(runs, objectives, out)
    written += budget_figure(runs, objectives[0], out)
    return written
