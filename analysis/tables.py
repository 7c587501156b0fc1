"""Comparison tables (rows = methods in registry order, column groups = label %), Pareto sets,
export."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from trainables.names import (
    CHOSEN_SCALE,
    CURVE_METRICS,
    METHODS,
    TUNED_KEYS,
    VALIDATION_PREFIX,
    parse_curve_key,
)

# Shown when present, after the study's objectives: the papers' image metrics, then toy metrics
# (exact scores), then the held-out score-matching and classifier diagnostics.
DEFAULT_METRICS = (
    "fid",
    "inception_score",
    "intra_fid",
    "gen_accuracy",
    "gen_accuracy_exact",  # toy: exact conditional samples, the ceiling of gen_accuracy
    "clf_ece",
    "sc_ratio",  # 1.0 = the SC term learned nothing (trainables.evaluation.calibration)
    "guided_score_cos",
    "energy_distance",
    "grad_mse",
    "grad_cos",
    "guided_dsm",
    "score_dsm",
    "clf_accuracy",
)
# The knobs a cell chose (shown for the methods that tune them): the guidance scale the trial chose
# on its validation split (guided methods), the lambdas its cell's search chose.
KNOB_COLUMNS = (CHOSEN_SCALE, "loss.lambda_sc", "loss.lambda_joint")
FID_METRICS = ("fid", "intra_fid")  # flagged in tables when computed from too few samples


def completed(runs: pd.DataFrame, stage: str = "search") -> pd.DataFrame:
    """Trials of one stage (search: the cells' searches; final: the seeds of `study final`) that
    finished their whole training and final evaluation (not stopped early by ASHA)."""
    if not len(runs):
        return runs
    early = runs["early_stopped"].fillna(False).astype(bool) if "early_stopped" in runs else False
    of_stage = runs["stage"].fillna("search") == stage if "stage" in runs else stage == "search"
    return runs[(runs["status"] == "FINISHED") & ~early & of_stage]


def selection_column(runs: pd.DataFrame, metric: str) -> str:
    """The column an objective selects by: its validation value val/<metric> (studies before the
    validation split have only the metric itself)."""
    validation = f"{VALIDATION_PREFIX}{metric}"
    return validation if validation in runs.columns else metric


def best_per_cell(runs: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """The best completed trial of each (method, label %) by one objective's validation value."""
    done = completed(runs)
    metric = selection_column(done, metric)
    if metric not in done.columns or done.empty:
        return done.iloc[0:0]
    done = done.dropna(subset=[metric])
    ordered = done.sort_values(metric, ascending=(mode == "min"), kind="stable")
    return ordered.groupby(["method", "label_percent"], sort=False).head(1)


def comparison_table(
    runs: pd.DataFrame, objective: tuple[str, str], metrics: Sequence[str] = DEFAULT_METRICS
) -> pd.DataFrame:
    """Methods x (label %, metric): each cell from the best trial by the objective."""
    best = best_per_cell(runs, *objective)
    methods = [m for m in METHODS if m in set(best["method"])] if len(best) else []
    percents = sorted(set(best["label_percent"])) if len(best) else []
    metrics = [m for m in metrics if m in best.columns]
    columns = pd.MultiIndex.from_product([percents, metrics], names=["label %", "metric"])
    table = pd.DataFrame(index=pd.Index(methods, name="method"), columns=columns, dtype=float)
    for _, row in best.iterrows():
        for metric in metrics:
            if metric in KNOB_COLUMNS[1:] and metric not in TUNED_KEYS[row["method"]]:
                continue  # a knob this method does not tune: left blank
            table.loc[row["method"], (row["label_percent"], metric)] = row[metric]
    return table


def pareto_set(runs: pd.DataFrame, objectives: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """Completed trials no other trial dominates on every objective (by their validation values
    where the trials report them)."""
    done = completed(runs)
    columns = [selection_column(done, m) for m, _ in objectives]
    done = done.dropna(subset=columns) if len(done) else done
    if done.empty:
        return done
    signs = [1 if mode == "max" else -1 for _, mode in objectives]
    values = done[columns].to_numpy() * signs
    keep = [not any((other >= v).all() and (other > v).any() for other in values) for v in values]
    return done[keep]


def warning_flags(
    runs: pd.DataFrame, objective: tuple[str, str], table: pd.DataFrame
) -> pd.DataFrame:
    """True where a table cell is an FID / intra-FID from fewer samples than feature dimensions."""
    flags = pd.DataFrame(False, index=table.index, columns=table.columns)
    if "fid_warning" not in runs.columns:
        return flags
    for _, row in best_per_cell(runs, *objective).iterrows():
        if row.get("fid_warning") == 1:
            for metric in FID_METRICS:
                if (row["label_percent"], metric) in flags.columns:
                    flags.loc[row["method"], (row["label_percent"], metric)] = True
    return flags


def to_markdown(table: pd.DataFrame, digits: int = 4, flags: pd.DataFrame | None = None) -> str:
    """A Markdown table; column headers read '<label %>% <metric>'; flagged cells get a '*' and a
    note."""
    if table.empty:
        return "(no finished trials)\n"
    heads = [table.index.name or "method"] + [f"{p:g}% {m}" for p, m in table.columns]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for key, row in table.iterrows():
        marks = flags.loc[key].to_numpy() if flags is not None else [False] * len(row)
        cells = [
            "" if pd.isna(v) else f"{v:.{digits}g}" + ("*" if mark else "")
            for v, mark in zip(row.to_numpy(), marks)
        ]
        lines.append(
            "| "
            + " | ".join(
                [" / ".join(map(str, key)) if isinstance(key, tuple) else str(key), *cells]
            )
            + " |"
        )
    if flags is not None and flags.to_numpy().any():
        lines.append(
            "\n\\* FID / intra-FID from fewer samples than feature dimensions: biased high; "
            "raise sample.num_per_class."
        )
    return "\n".join(lines) + "\n"


def write_tables(
    runs: pd.DataFrame, objectives: Sequence[tuple[str, str]], out_dir: Path
) -> pd.DataFrame:
    """Write comparison.md / comparison.csv (and pareto.csv for several objectives); return the
    table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    objective_columns = [c for m, _ in objectives for c in (m, f"{VALIDATION_PREFIX}{m}")]
    shown = objective_columns + list(DEFAULT_METRICS) + list(KNOB_COLUMNS)
    table = comparison_table(runs, objectives[0], list(dict.fromkeys(shown)))
    (out_dir / "comparison.md").write_text(
        to_markdown(table, flags=warning_flags(runs, objectives[0], table))
    )
    flat = table.copy()
    flat.columns = [f"{p:g}%/{m}" for p, m in table.columns]
    flat.to_csv(out_dir / "comparison.csv")
    if len(objectives) > 1:
        write_pareto(runs, objectives, out_dir)
    return table


def pareto_fronts(runs: pd.DataFrame, objectives: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """Per label %, the trials on the Pareto front of the objectives (validation values decide;
    the test values are shown beside them), every method competing."""
    done = completed(runs)
    if done.empty:
        return done
    fronts = [pareto_set(group, objectives) for _, group in done.groupby("label_percent")]
    fronts = [f for f in fronts if len(f)]
    return pd.concat(fronts) if fronts else done.iloc[0:0]


def write_pareto(
    runs: pd.DataFrame, objectives: Sequence[tuple[str, str]], out_dir: Path
) -> list[Path]:
    """pareto.{md,csv} (the front per label %) and pareto_<pct>.png (every finished trial, the
    front joined); a front point is exported with `study export-best DIR --trial ID`."""
    front = pareto_fronts(runs, objectives)
    if front.empty:
        return []
    shown = [c for m, _ in objectives for c in (f"{VALIDATION_PREFIX}{m}", m) if c in front]
    knobs = [k for k in KNOB_COLUMNS if k in front.columns]
    cols = ["label_percent", "method", "trial_id", *shown, *knobs]
    front = front.sort_values(["label_percent", shown[0]])[cols]
    front.to_csv(out_dir / "pareto.csv", index=False)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in front.iterrows():
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.to_numpy()]
        lines.append("| " + " | ".join("" if c == "nan" else c for c in cells) + " |")
    (out_dir / "pareto.md").write_text("\n".join(lines) + "\n")
    return [
        out_dir / "pareto.md",
        out_dir / "pareto.csv",
        *_pareto_plots(runs, objectives, out_dir),
    ]


def _pareto_plots(
    runs: pd.DataFrame, objectives: Sequence[tuple[str, str]], out_dir: Path
) -> list[Path]:
    """One scatter per label % of the first two objectives' validation values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = completed(runs)
    (mx, _), (my, _) = objectives[0], objectives[1]
    cx, cy = selection_column(done, mx), selection_column(done, my)
    written = []
    for pct, group in done.dropna(subset=[cx, cy]).groupby("label_percent"):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for method, trials in group.groupby("method", sort=False):
            color = plt.get_cmap("tab10")(METHODS.index(method) % 10)
            ax.scatter(trials[cx], trials[cy], color=color, label=method, s=25)
        front = pareto_set(group, objectives).sort_values(cx)
        ax.plot(front[cx], front[cy], "k--", lw=1, label="Pareto front")
        ax.set_xlabel(cx)
        ax.set_ylabel(cy)
        ax.set_title(f"{pct:g}% labels: every finished trial")
        written.append(_save_figure(fig, ax, out_dir / f"pareto_{pct:g}.png", dpi=110))
    return written


def _save_figure(fig: Any, ax: Any, path: Path, dpi: int, legend_columns: int = 1) -> Path:
    """Grid, legend, tight layout; write the PNG and close the figure."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=legend_columns)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def export_best(
    runs: pd.DataFrame,
    spec: dict,
    objective: tuple[str, str],
    out_dir: Path,
    trial_id: str | None = None,
) -> list[Path]:
    """One final-run spec per (method, label %): its best trial's params fixed, one trial each;
    or, given trial_id, the spec of that finished trial (e.g. a point of the Pareto front)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    chosen = best_per_cell(runs, *objective)
    if trial_id is not None:
        done = completed(runs)
        chosen = done[done["trial_id"] == trial_id]
    for _, row in chosen.iterrows():
        search = {
            key: {"choices": [float(row[key])]}
            for key in TUNED_KEYS[row["method"]]
            if key in row and pd.notna(row[key])
        }
        guidance = dict(spec.get("guidance") or {})
        if pd.notna(row.get(CHOSEN_SCALE, float("nan"))):
            guidance["scales"] = [float(row[CHOSEN_SCALE])]  # the scale the trial chose
        final = {
            **{k: v for k, v in spec.items() if k not in ("storage", "tracking_uri", "study_id")},
            "name": f"{spec['name']}-best-{row['method']}-{row['label_percent']:g}",
            "methods": [row["method"]],
            "label_percents": [float(row["label_percent"])],
            "num_trials": 1,
            "trials_per_cell": 1,
            "search": search,
            **({"guidance": guidance} if guidance else {}),
        }
        suffix = f"_{trial_id}" if trial_id is not None else ""
        path = out_dir / f"{row['method']}_{row['label_percent']:g}{suffix}.yaml"
        path.write_text(yaml.safe_dump(final, sort_keys=False))
        written.append(path)
    return written


def per_class_table(
    runs: pd.DataFrame,
    objective: tuple[str, str],
    metrics: Sequence[str] = ("intra_fid", "gen_accuracy"),
) -> pd.DataFrame:
    """Paper 001 App. A layout: rows = (method, class), column groups = label %, columns = per-class
    intra-FID and generation accuracy of the cell's best trial."""
    best = best_per_cell(runs, *objective)
    present = [m for m in metrics if any(c.startswith(f"{m}_class") for c in best.columns)]
    if best.empty or not present:
        return pd.DataFrame()
    classes = sorted(
        {
            int(c.rsplit("class", 1)[1])
            for c in best.columns
            for m in present
            if c.startswith(f"{m}_class")
        }
    )
    methods = [m for m in METHODS if m in set(best["method"])]
    index = pd.MultiIndex.from_product([methods, classes], names=["method", "class"])
    columns = pd.MultiIndex.from_product(
        [sorted(set(best["label_percent"])), present], names=["label %", "metric"]
    )
    table = pd.DataFrame(index=index, columns=columns, dtype=float)
    for _, row in best.iterrows():
        for k in classes:
            for m in present:
                table.loc[(row["method"], k), (row["label_percent"], m)] = row.get(f"{m}_class{k}")
    return table


def curve_points(row: pd.Series, metric: str) -> list[tuple[float, float]]:
    """(scale, validation value) of one trial's guidance sweep for metric, by scale."""
    points = []
    for key, value in row.items():
        parsed = parse_curve_key(str(key))
        if parsed and parsed[0] == metric and pd.notna(value):
            points.append((parsed[1], float(value)))
    return sorted(points)


def guidance_curves(
    runs: pd.DataFrame,
    objective: tuple[str, str],
    out_dir: Path,
    metrics: Sequence[str] = CURVE_METRICS,
) -> list[Path]:
    """Validation metric vs guidance scale (paper 001 App. D) of every cell's best trial (its
    lambdas fixed, one trained model swept at sampling time): one PNG per metric, a line per
    (method, label %), the chosen scale marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = best_per_cell(runs, *objective)
    written = []
    for metric in metrics:
        lines = [(row, curve_points(row, metric)) for _, row in best.iterrows()]
        lines = [(row, pts) for row, pts in lines if len(pts) > 1]
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        percents = sorted({row["label_percent"] for row, _ in lines})
        for row, pts in lines:
            scales, values = zip(*pts)
            label = f"{row['method']} {row['label_percent']:g}%"
            # Colour by method (registry order), line style by label %.
            color = plt.get_cmap("tab10")(METHODS.index(row["method"]) % 10)
            style = ("-", "--", ":", "-.")[percents.index(row["label_percent"]) % 4]
            (line,) = ax.plot(scales, values, marker="o", color=color, ls=style, label=label)
            chosen = row.get(CHOSEN_SCALE)
            if pd.notna(chosen) and chosen in scales:
                ax.plot(
                    [chosen], [values[scales.index(chosen)]], "*", ms=12, color=line.get_color()
                )
        ax.set_xscale("log")
        ax.set_xlabel("guidance scale gamma (lambda_CG; 1 + w for CFG)")
        ax.set_ylabel(f"validation {metric}")
        ax.set_title(f"{metric} vs guidance scale (star: chosen)")
        path = out_dir / f"guidance_{metric}.png"
        written.append(_save_figure(fig, ax, path, dpi=120, legend_columns=2))
    return written


def write_report(
    runs: pd.DataFrame, objectives: Sequence[tuple[str, str]], out_dir: Path
) -> tuple[pd.DataFrame, list[Path]]:
    """Comparison table, per-class table and guidance curves in out_dir; returns (table, files)."""
    table = write_tables(runs, objectives, out_dir)
    files = [out_dir / "comparison.md", out_dir / "comparison.csv"]
    per_class = per_class_table(runs, objectives[0])
    if not per_class.empty:
        (out_dir / "per_class.md").write_text(to_markdown(per_class))
        flat = per_class.copy()
        flat.columns = [f"{p:g}%/{m}" for p, m in per_class.columns]
        flat.to_csv(out_dir / "per_class.csv")
        files += [out_dir / "per_class.md", out_dir / "per_class.csv"]
    if len(objectives) > 1:
        files += [p for p in (out_dir / "pareto.md", out_dir / "pareto.csv") if p.exists()]
        files += sorted(out_dir.glob("pareto_*.png"))
    files += guidance_curves(runs, objectives[0], out_dir)
    from analysis.final import write_final  # imports this module

    files += write_final(runs, objectives, out_dir)
    return table, files
