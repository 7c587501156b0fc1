"""The results API: a study folder (or an object-store study's URI) to pandas in one line.

    from analysis import load_study
    s = load_study("studies/toy")
    s.trials          # one row per search trial: method, label_percent, cell, params, metrics
    s.comparison      # the table tables/comparison.md shows (methods x (label %, metric))
    s.final           # `study final`'s seed statistics (empty without final runs)
    s.curves          # each cell's chosen trial's guidance curve, one row per (metric, scale)
    s.best_configs    # cell -> its chosen knobs and guidance scale

No torch, no Ray, no MLflow: it reads the study's spec.yaml and its ledger (analysis.ledger: the
cells' Optuna trials and the trial records).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from analysis.console import console_table
from analysis.final import seed_statistics
from analysis.ledger import LEDGER_FILE, StudyNotReady, ledger_runs
from analysis.tables import (
    DEFAULT_METRICS,
    best_per_cell,
    comparison_table,
    completed,
    curve_points,
    long_table,
    table_columns,
)
from trainables.names import (
    CHOSEN_SCALE,
    CURVE_METRICS,
    SHARED_STAGE,
    SPEC_FILE,
    TUNED_KEYS,
    cell_label,
)
from trainables.storage import Place, is_uri, rehomed


@dataclass
class StudyResults:
    """A finished study's runs and the frames its tables are built from."""

    study_dir: Path
    spec: dict[str, Any]
    runs: pd.DataFrame  # every trial run: search, stage (shared networks) and final
    objectives: list[tuple[str, str]] = field(default_factory=list)

    @property
    def trials(self) -> pd.DataFrame:
        """The search trials (every status), one row each, with their cell's spelling."""
        return self.runs[self.runs["stage"] == "search"].reset_index(drop=True)

    @property
    def stage_runs(self) -> pd.DataFrame:
        """The stage trials that trained shared networks (no metrics of their own)."""
        return self.runs[self.runs["stage"] == SHARED_STAGE].reset_index(drop=True)

    @property
    def final_runs(self) -> pd.DataFrame:
        """The runs of `study final` (one per cell and seed)."""
        return self.runs[self.runs["stage"] == "final"].reset_index(drop=True)

    @property
    def comparison(self) -> pd.DataFrame:
        """The comparison table (tables/comparison.{md,csv} are written from this frame)."""
        return comparison_table(self.runs, self.objectives[0], table_columns(self.objectives))

    @property
    def comparison_long(self) -> pd.DataFrame:
        """The comparison tidy: one row per cell x metric (tables/comparison_long.csv)."""
        return long_table(self.runs, self.objectives[0], table_columns(self.objectives))

    @property
    def final(self) -> pd.DataFrame:
        """`study final`'s seed statistics per cell and metric (tables/final.csv)."""
        metrics = list(dict.fromkeys([m for m, _ in self.objectives] + list(DEFAULT_METRICS)))
        return seed_statistics(self.runs, metrics)

    @property
    def curves(self) -> pd.DataFrame:
        """Each cell's chosen trial's validation guidance curve: cell, method, label_percent,
        metric, scale, value, chosen (the scale the trial chose)."""
        rows = []
        for _, row in best_per_cell(self.runs, *self.objectives[0]).iterrows():
            for metric in CURVE_METRICS:
                for scale, value in curve_points(row, metric):
                    rows.append({
                        "cell": cell_label(row["method"], row["label_percent"]),
                        "method": row["method"], "label_percent": row["label_percent"],
                        "metric": metric, "scale": scale, "value": value,
                        "chosen": scale == row.get(CHOSEN_SCALE),
                    })  # fmt: skip
        columns = ["cell", "method", "label_percent", "metric", "scale", "value", "chosen"]
        return pd.DataFrame(rows, columns=columns)

    @property
    def best_configs(self) -> dict[str, dict[str, Any]]:
        """Cell -> its chosen trial's knobs and guidance scale (what `study export-best` pins)."""
        out = {}
        for _, row in best_per_cell(self.runs, *self.objectives[0]).iterrows():
            config = {"method": row["method"], "label_percent": float(row["label_percent"])}
            config.update({k: float(row[k]) for k in TUNED_KEYS[row["method"]] if k in row})
            if pd.notna(row.get(CHOSEN_SCALE, float("nan"))):
                config[CHOSEN_SCALE] = float(row[CHOSEN_SCALE])
            config["trial_id"], config["run_id"] = row["trial_id"], row["run_id"]
            out[cell_label(row["method"], row["label_percent"])] = config
        return out

    def table(self) -> str:
        """The compact comparison the console prints."""
        return console_table(self.runs, self.objectives)


def read_spec(location: str | Path) -> tuple[Path, dict[str, Any]]:
    """(study folder on this machine, its saved spec) of a folder or an object-store study's URI
    (its spec and tables are copied into this machine's mirror first; the ledger by
    analysis.ledger.ledger_runs)."""
    place = Place(str(location))
    folder = place.local
    if place.remote:
        for name in (SPEC_FILE, "tables"):
            place.pull(folder / name)
    spec_file = folder / SPEC_FILE
    if not spec_file.is_file():
        raise StudyNotReady(
            f"{location} is not a study folder (no {SPEC_FILE}); give the folder 'study run' "
            "printed, e.g. studies/toy"
        )
    try:
        spec = yaml.safe_load(spec_file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise StudyNotReady(
            f"{spec_file} cannot be read ({str(exc).splitlines()[0]}); restore it from a backup "
            "(or the study's object-store copy); nothing was changed"
        ) from None
    if not isinstance(spec, dict) or "name" not in spec:
        raise StudyNotReady(f"{spec_file} is not a study's saved spec; is {location} a study?")
    if not ({"study_id", "tracking_uri"} & set(spec)):  # what `study run` pins when it saves one
        if (folder / LEDGER_FILE).exists() or (folder / "trials").is_dir():  # trials have run
            raise StudyNotReady(
                f"{spec_file} lacks the study_id and tracking_uri `study run` saved in it (cut "
                "short?); restore it from a backup (or the study's object-store copy); nothing "
                "was changed"
            )
        raise StudyNotReady(
            f"{location} is not a study folder: its {SPEC_FILE} is a spec no study was run from; "
            f"run it with 'study run {spec_file}'"
        )
    return folder, rehomed(spec, folder)


def study_place(folder: Path, spec: dict[str, Any]) -> Place:
    """Where the study keeps its ledger and trial records: its object store's place when its
    storage is one (folder is this machine's mirror), else the folder."""
    storage = spec.get("storage")
    return Place(storage) / spec["name"] if storage and is_uri(storage) else Place(str(folder))


def objectives_of(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """The spec's objectives as (metric, mode)."""
    raw = spec.get("objectives") or [{"metric": "guided_score_cos", "mode": "max"}]
    return [(o["metric"], o.get("mode", "max")) for o in raw]


def load_study(location: str | Path, allow_running: bool = False) -> StudyResults:
    """A study's results (see the module docstring). StudyNotReady when the folder is not a study,
    has no finished trial, or is still running (allow_running reads it anyway)."""
    folder, spec = read_spec(location)
    runs = ledger_runs(study_place(folder, spec), spec["name"])
    if "stage" in runs.columns and len(runs):
        runs["stage"] = runs["stage"].fillna("search")
        runs.insert(
            runs.columns.get_loc("label_percent") + 1,
            "cell",
            [cell_label(m, p) if pd.notna(p) else "" for m, p in zip(runs["method"],
                                                                     runs["label_percent"])],
        )  # fmt: skip
    if not allow_running and len(runs) and (runs["status"] == "RUNNING").any():
        raise StudyNotReady(
            f"{folder} is still running ({int((runs['status'] == 'RUNNING').sum())} trial runs "
            f"RUNNING); watch it with 'study status {folder}', or, if its driver died, "
            f"'study resume {folder}'"
        )
    objectives = objectives_of(spec)
    if completed(runs).empty and completed(runs, "final").empty:
        raise StudyNotReady(
            f"{folder} has no finished trial yet; run or resume it: study resume {folder}"
        )
    return StudyResults(folder, spec, runs, objectives)
