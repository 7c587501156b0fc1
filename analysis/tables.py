"""Comparison tables (rows = methods in registry order, column groups = label %), Pareto sets,
export."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from trainables.names import (
    CHOSEN_SCALE,
    METHODS,
    TUNED_KEYS,
    VALIDATION_PREFIX,
    cell_label,
    parse_curve_key,
)

# Shown when present, after the study's objectives: the papers' image metrics, then toy metrics
# (exact scores), then the held-out score-matching and classifier diagnostics.
DEFAULT_METRICS = (
    "fid",
    "inception_score",
    "intra_fid",
    "gen_accuracy",
    "precision",  # fidelity and diversity apart (Naeem et al. 2020), from the FID features
    "recall",
    "density",
    "coverage",
    "gen_accuracy_exact",  # toy: exact conditional samples, the ceiling of gen_accuracy
    # the image twin's exact metrics (trainables.evaluation.twin)
    "bayes_gen_accuracy_matched",
    "bayes_gen_accuracy",
    "sample_var_ratio",
    "cond_log_likelihood",
    "score_cos",
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
class _KnobColumns(Sequence[str]):
    """The chosen guidance scale, then every key a registered method tunes (live: a method
    registered later adds its knobs' columns)."""

    def _columns(self) -> tuple[str, ...]:
        tuned = [k for m in METHODS for k in TUNED_KEYS[m]]
        return (CHOSEN_SCALE, *dict.fromkeys(tuned))

    def __getitem__(self, index):  # noqa: ANN001, ANN204 - Sequence's own signature
        return self._columns()[index]

    def __len__(self) -> int:
        return len(self._columns())


KNOB_COLUMNS = _KnobColumns()
FID_METRICS = ("fid", "intra_fid")  # flagged in tables when computed from too few samples


def stopped_early(runs: pd.DataFrame) -> pd.Series:
    """Per run, whether the scheduler (ASHA) stopped it before its final evaluation."""
    if "early_stopped" not in runs:
        return pd.Series(False, index=runs.index)
    return runs["early_stopped"].fillna(False).astype(bool)


def completed(runs: pd.DataFrame, stage: str = "search") -> pd.DataFrame:
    """Trials of one stage (search: the cells' searches; final: the seeds of `study final`) that
    finished their whole training and final evaluation (not stopped early by ASHA)."""
    if not len(runs):
        return runs
    early = stopped_early(runs)
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


def table_columns(objectives: Sequence[tuple[str, str]]) -> list[str]:
    """The comparison's columns: each objective (test and validation value), the papers' metrics,
    the chosen knobs."""
    objective_columns = [c for m, _ in objectives for c in (m, f"{VALIDATION_PREFIX}{m}")]
    return list(dict.fromkeys(objective_columns + list(DEFAULT_METRICS) + list(KNOB_COLUMNS)))


def write_tables(
    runs: pd.DataFrame, objectives: Sequence[tuple[str, str]], out_dir: Path
) -> pd.DataFrame:
    """Write comparison.md, comparison.csv (wide: '<label %>%/<metric>' columns), the tidy
    comparison_long.csv (long_table) and, for several objectives, pareto.{md,csv}; return the
    table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = table_columns(objectives)
    table = comparison_table(runs, objectives[0], shown)
    (out_dir / "comparison.md").write_text(
        to_markdown(table, flags=warning_flags(runs, objectives[0], table))
    )
    flat = table.copy()
    flat.columns = [f"{p:g}%/{m}" for p, m in table.columns]
    flat.to_csv(out_dir / "comparison.csv")
    long_table(runs, objectives[0], shown).to_csv(out_dir / "comparison_long.csv", index=False)
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
    """pareto.{md,csv}: the front per label % (the figure is analysis.figures.pareto_figure); a
    front point is exported with `study export-best DIR --trial ID`."""
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
    return [out_dir / "pareto.md", out_dir / "pareto.csv"]


EXPORT_HEADER = (
    "# Exported by `study export-best`: run it with `study run <this file>`.\n"
    "# artifact_store and config.eval.cache_dir are the source study's, so this run reuses its\n"
    "# trained networks and measures with its evaluation classifier; they override\n"
    "# $SC_GUIDANCE_ARTIFACT_STORE. Delete both lines to train and measure afresh.\n"
)


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
    for _, row in in_cell_order(chosen).iterrows():
        search = {
            key: {"choices": [float(row[key])]}
            for key in TUNED_KEYS[row["method"]]
            if key in row and pd.notna(row[key])
        }
        guidance = dict(spec.get("guidance") or {})
        if pd.notna(row.get(CHOSEN_SCALE, float("nan"))):
            # the scale the trial chose, and only it: the cap at that scale stops the sweep's
            # extension past an edge (a re-run measures exactly the chosen configuration)
            guidance["scales"] = [float(row[CHOSEN_SCALE])]
            guidance["max_scale"] = float(row[CHOSEN_SCALE])
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
        path = out_dir / f"{cell_label(row['method'], row['label_percent'])}{suffix}.yaml"
        path.write_text(EXPORT_HEADER + yaml.safe_dump(final, sort_keys=False))
        written.append(path)
    return written


def per_class_table(
    runs: pd.DataFrame,
    objective: tuple[str, str],
    metrics: Sequence[str] = ("intra_fid", "gen_accuracy", "precision", "recall"),
) -> pd.DataFrame:
    """Paper 001 App. A layout: rows = (method, class), column groups = label %, columns = per-class
    intra-FID, generation accuracy, precision and recall of the cell's best trial."""
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


def long_table(
    runs: pd.DataFrame, objective: tuple[str, str], metrics: Sequence[str]
) -> pd.DataFrame:
    """The comparison as a tidy frame, one row per cell x metric: cell, method, label_percent,
    metric, value, trial_id, run_id (pandas and plotting tools read it without parsing names)."""
    best = best_per_cell(runs, *objective)
    rows = []
    for _, row in best.iterrows():
        for metric in metrics:
            if metric not in row or pd.isna(row[metric]):
                continue
            if metric in KNOB_COLUMNS[1:] and metric not in TUNED_KEYS[row["method"]]:
                continue
            rows.append({
                "cell": cell_label(row["method"], row["label_percent"]),
                "method": row["method"],
                "label_percent": float(row["label_percent"]),
                "metric": metric,
                "value": float(row[metric]),
                "trial_id": row.get("trial_id"),
                "run_id": row.get("run_id"),
            })  # fmt: skip
    columns = ["cell", "method", "label_percent", "metric", "value", "trial_id", "run_id"]
    frame = pd.DataFrame(rows, columns=columns)
    return in_cell_order(frame).reset_index(drop=True)


def in_cell_order(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows in the tables' order: methods in registry order (others last), then label %."""
    order = {m: i for i, m in enumerate(METHODS)}
    return frame.sort_values(["method", "label_percent"], key=lambda c: c.map(order)
                             if c.name == "method" else c, kind="stable")  # fmt: skip
