"""The comparison as the console prints it, in the papers' layout: methods as rows, label % as
column groups, the objective plus at most three headline metrics and each cell's chosen knobs; the
seed mean +- std where `study final` runs exist. A metric with one value in every cell (the toy's
exact-sample ceiling) is a footnote, not a column. Label % groups that would pass the width are
printed as further blocks below. The full table is tables/comparison.md."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from analysis import style
from analysis.final import seed_statistics
from analysis.tables import DEFAULT_METRICS, best_per_cell
from trainables.names import (
    CHOSEN_SCALE,
    GUIDANCE_CAP,
    LAMBDA_JOINT_KEY,
    LAMBDA_SC_KEY,
    TUNED_KEYS,
    cell_label,
)

# The headline metrics, by preference: the twin's exact accuracy, images (the papers' table), then
# the toy's.
HEADLINE = (
    "bayes_gen_accuracy_matched",  # the image twin: generation accuracy, exact posterior
    "fid",
    "intra_fid",
    "gen_accuracy",
    "inception_score",
    "energy_distance",
    "grad_cos",
)
KNOB_SYMBOLS = {CHOSEN_SCALE: "γ", LAMBDA_SC_KEY: "λSC", LAMBDA_JOINT_KEY: "λJ"}
WIDTH = 120


def constant_metrics(best: pd.DataFrame, metrics: Sequence[str]) -> dict[str, float]:
    """Metrics holding one value in every cell of two or more (e.g. gen_accuracy_exact)."""
    out = {}
    for metric in metrics:
        if metric in best.columns and len(best) > 1:
            values = best[metric].dropna()
            if len(values) == len(best) and values.nunique() == 1:
                out[metric] = float(values.iloc[0])
    return out


def headline_metrics(
    best: pd.DataFrame, objective: str, constant: Sequence[str], count: int = 3
) -> list[str]:
    """The objective and up to count headline metrics the study's trials report."""
    others = [
        m for m in HEADLINE
        if m != objective and m in best.columns and m not in constant and best[m].notna().any()
    ]  # fmt: skip
    return [objective, *others[:count]]


def _knobs(row: pd.Series) -> str:
    """'γ=2 λSC=0.1' (the scale the trial chose, the lambdas its cell's search chose)."""
    parts = []
    for key in (CHOSEN_SCALE, *TUNED_KEYS.get(row["method"], ())):
        value = row.get(key)
        if value is not None and pd.notna(value):
            parts.append(f"{KNOB_SYMBOLS.get(key, key)}={float(value):.3g}")
            if key == CHOSEN_SCALE and at_cap(row):
                parts[-1] += "(cap)"
    return " ".join(parts)


def at_cap(row: pd.Series) -> bool:
    """Whether the trial chose the largest scale its sweep could reach (its GUIDANCE_CAP result):
    its optimum may lie beyond; raise guidance.max_scale."""
    cap, chosen = row.get(GUIDANCE_CAP), row.get(CHOSEN_SCALE)
    if cap is None or chosen is None or pd.isna(cap) or pd.isna(chosen) or float(cap) <= 0:
        return False
    return float(chosen) >= float(cap)


def _value(row: pd.Series, metric: str, statistics: pd.DataFrame) -> str:
    """'0.842 ± 0.011' from the final runs (n >= 2), else the chosen trial's value."""
    if not statistics.empty:
        match = statistics[
            (statistics["method"] == row["method"])
            & (statistics["label_percent"] == row["label_percent"])
            & (statistics["metric"] == metric)
        ]
        if len(match) and math.isfinite(match.iloc[0]["std"]):
            return f"{match.iloc[0]['mean']:.3g} ± {match.iloc[0]['std']:.2g}"
        if len(match):
            return f"{match.iloc[0]['mean']:.4g}"
    value = row.get(metric)
    return "" if value is None or pd.isna(value) else f"{float(value):.4g}"


def _render(rows: list[list[str]], groups: list[tuple[str, int]]) -> list[str]:
    """Aligned text: a group header line over the column header and the rows."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    head, col = [" " * widths[0]], 1
    for name, span in groups:
        width = sum(widths[col : col + span]) + 2 * (span - 1)
        head.append(f" {name} ".center(width, "─"))
        col += span
    out = ["  ".join(head), line(rows[0]), "  ".join("─" * w for w in widths)]
    return out + [line(r) for r in rows[1:]]


def console_table(
    runs: pd.DataFrame, objectives: Sequence[tuple[str, str]], width: int = WIDTH
) -> str:
    """The compact comparison for the terminal (see the module docstring)."""
    metric, mode = objectives[0]
    best = best_per_cell(runs, metric, mode)
    if best.empty:
        return "(no finished trials)\n"
    constant = constant_metrics(best, [m for m in DEFAULT_METRICS if m != metric])
    methods = style.method_order(best["method"])
    percents = sorted(set(best["label_percent"]))
    for count in (3, 2, 1):  # fewer headline metrics before splitting the label % groups
        metrics = headline_metrics(best, metric, list(constant), count)
        statistics = seed_statistics(runs, metrics)
        header = [style.short(m) for m in metrics] + ["chosen"]
        lines = _block_text(best, methods, percents, metrics, header, statistics)
        if max(len(line) for line in lines) <= width:
            break
    blocks, block = [], []
    for pct in percents:  # as many label % groups per block as fit the width
        trial = _block_text(best, methods, [*block, pct], metrics, header, statistics)
        if block and max(len(line) for line in trial) > width:
            blocks.append(block)
            block = []
        block.append(pct)
    blocks.append(block)
    out = []
    for block in blocks:
        out += _block_text(best, methods, block, metrics, header, statistics) + [""]
    seeds = ""
    if not statistics.empty:  # the claim only for the cells that have final runs
        finals = set(zip(statistics["method"], statistics["label_percent"]))
        search_only = [
            cell_label(m, p) for m, p in zip(best["method"], best["label_percent"])
            if (m, p) not in finals
        ]  # fmt: skip
        seeds = "; mean ± std over the seeds of `study final`"
        if search_only:
            seeds += f" (search trial only, no final runs: {', '.join(search_only)})"
    out.append(f"best trial per cell by validation {metric} ({mode}){seeds}; full table: "
               "tables/comparison.md")  # fmt: skip
    out += [f"{style.short(m)} = {v:.4g} in every cell ({m})" for m, v in constant.items()]
    if any(at_cap(row) for _, row in best.iterrows()):
        out.append(
            "(cap): chosen at the sweep's cap, guidance.max_scale; the optimum may lie beyond"
        )
    return "\n".join(out) + "\n"


def _block_text(
    best: pd.DataFrame,
    methods: list[str],
    percents: list[float],
    metrics: list[str],
    header: list[str],
    statistics: pd.DataFrame,
) -> list[str]:
    rows = [["method"] + header * len(percents)]
    for method in methods:
        cells = [method]
        for pct in percents:
            match = best[(best["method"] == method) & (best["label_percent"] == pct)]
            if match.empty:
                cells += [""] * len(header)
                continue
            row = match.iloc[0]
            cells += [_value(row, m, statistics) for m in metrics] + [_knobs(row)]
        rows.append(cells)
    groups = [(f"{pct:g}% labels", len(header)) for pct in percents]
    return _render(rows, groups)
