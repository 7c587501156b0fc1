"""Comparison tables (rows = methods in registry order, column groups = label %), Pareto sets, export."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from search_spaces import METHOD_KEYS

# Shown when present, after the study's objectives: toy metrics (exact scores), then image metrics.
DEFAULT_METRICS = ("guided_score_cos", "gen_accuracy", "energy_distance", "grad_mse", "grad_cos", "guided_dsm", "score_dsm", "clf_accuracy", "clf_ece")


def completed(runs: pd.DataFrame) -> pd.DataFrame:
    """Trials that finished their whole training and final evaluation (not stopped early by ASHA)."""
    if not len(runs):
        return runs
    early = runs["early_stopped"].fillna(False).astype(bool) if "early_stopped" in runs else False
    return runs[(runs["status"] == "FINISHED") & ~early]


def best_per_cell(runs: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """The best completed trial of each (method, label %) by one objective."""
    done = completed(runs)
    if metric not in done.columns or done.empty:
        return done.iloc[0:0]
    done = done.dropna(subset=[metric])
    ordered = done.sort_values(metric, ascending=(mode == "min"), kind="stable")
    return ordered.groupby(["method", "label_percent"], sort=False).head(1)


def comparison_table(runs: pd.DataFrame, objective: tuple[str, str], metrics: Sequence[str] = DEFAULT_METRICS) -> pd.DataFrame:
    """Methods x (label %, metric): each cell from the best trial by the objective."""
    best = best_per_cell(runs, *objective)
    methods = [m for m in METHOD_KEYS if m in set(best["method"])] if len(best) else []
    percents = sorted(set(best["label_percent"])) if len(best) else []
    metrics = [m for m in metrics if m in best.columns]
    columns = pd.MultiIndex.from_product([percents, metrics], names=["label %", "metric"])
    table = pd.DataFrame(index=pd.Index(methods, name="method"), columns=columns, dtype=float)
    for _, row in best.iterrows():
        for metric in metrics:
            table.loc[row["method"], (row["label_percent"], metric)] = row[metric]
    return table


def pareto_set(runs: pd.DataFrame, objectives: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """Completed trials no other trial dominates on every objective."""
    done = completed(runs)
    done = done.dropna(subset=[m for m, _ in objectives]) if len(done) else done
    if done.empty:
        return done
    signs = [1 if mode == "max" else -1 for _, mode in objectives]
    values = done[[m for m, _ in objectives]].to_numpy() * signs
    keep = [not any((other >= v).all() and (other > v).any() for other in values) for v in values]
    return done[keep]


def to_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """A Markdown table; column headers read '<label %>% <metric>'."""
    if table.empty:
        return "(no finished trials)\n"
    heads = ["method"] + [f"{p:g}% {m}" for p, m in table.columns]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for method, row in table.iterrows():
        cells = ["" if pd.isna(v) else f"{v:.{digits}g}" for v in row.to_numpy()]
        lines.append("| " + " | ".join([str(method), *cells]) + " |")
    return "\n".join(lines) + "\n"


def write_tables(runs: pd.DataFrame, objectives: Sequence[tuple[str, str]], out_dir: Path) -> pd.DataFrame:
    """Write comparison.md / comparison.csv (and pareto.csv for several objectives); return the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = list(dict.fromkeys([m for m, _ in objectives] + list(DEFAULT_METRICS)))
    table = comparison_table(runs, objectives[0], metrics)
    (out_dir / "comparison.md").write_text(to_markdown(table))
    flat = table.copy()
    flat.columns = [f"{p:g}%/{m}" for p, m in table.columns]
    flat.to_csv(out_dir / "comparison.csv")
    if len(objectives) > 1:
        cols = ["trial_id", "method", "label_percent", *[m for m, _ in objectives]]
        pareto_set(runs, objectives)[cols].to_csv(out_dir / "pareto.csv", index=False)
    return table


def export_best(runs: pd.DataFrame, spec: dict, objective: tuple[str, str], out_dir: Path) -> list[Path]:
    """One final-run spec per (method, label %): its best trial's params fixed, one trial each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for _, row in best_per_cell(runs, *objective).iterrows():
        search = {key: {"choices": [float(row[key])]} for key in METHOD_KEYS[row["method"]] if key in row and pd.notna(row[key])}
        final = {
            **{k: v for k, v in spec.items() if k not in ("storage", "tracking_uri")},
            "name": f"{spec['name']}-best-{row['method']}-{row['label_percent']:g}",
            "methods": [row["method"]],
            "label_percents": [float(row["label_percent"])],
            "num_trials": 1,
            "search": search,
        }
        path = out_dir / f"{row['method']}_{row['label_percent']:g}.yaml"
        path.write_text(yaml.safe_dump(final, sort_keys=False))
        written.append(path)
    return written
