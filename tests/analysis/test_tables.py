"""analysis on hand-built run frames: no MLflow, no torch, no Ray."""

import math

import pandas as pd
import pytest
import yaml

from analysis.figures import write_figures
from analysis.report import write_report
from analysis.runs import BASE_COLUMNS, _cast
from analysis.tables import (
    KNOB_COLUMNS,
    best_per_cell,
    comparison_table,
    curve_points,
    export_best,
    pareto_set,
    per_class_table,
    to_markdown,
    warning_flags,
)

OBJ = ("gen_accuracy", "max")


def _runs(*rows):
    """A load_runs-shaped frame from dicts (missing base columns filled)."""
    base = {"run_id": "r", "trial_id": "t", "status": "FINISHED", "early_stopped": False,
            "stage": "search"}  # fmt: skip
    frame = pd.DataFrame([{**base, **row} for row in rows])
    return frame[BASE_COLUMNS + [c for c in frame.columns if c not in BASE_COLUMNS]]


def test_empty_frame_gives_an_empty_table_and_says_so():
    empty = pd.DataFrame(columns=BASE_COLUMNS)
    table = comparison_table(empty, OBJ)
    assert table.empty
    assert to_markdown(table) == "(no finished trials)\n"
    assert best_per_cell(empty, *OBJ).empty and pareto_set(empty, [OBJ]).empty


def test_best_trial_per_cell_by_mode_and_methods_in_paper_order():
    runs = _runs(
        {"method": "CG-SC-all", "label_percent": 5.0, "gen_accuracy": 0.8, "fid": 9.0},
        {"method": "CG", "label_percent": 5.0, "gen_accuracy": 0.5, "fid": 3.0},
        {"method": "CG", "label_percent": 5.0, "gen_accuracy": 0.7, "fid": 5.0},
    )
    table = comparison_table(runs, OBJ, metrics=("gen_accuracy", "fid"))
    assert list(table.index) == ["CG", "CG-SC-all"]  # registry order, not the frame's
    assert table.loc["CG", (5.0, "gen_accuracy")] == 0.7 and table.loc["CG", (5.0, "fid")] == 5.0
    by_fid = comparison_table(runs, ("fid", "min"), metrics=("fid",))
    assert by_fid.loc["CG", (5.0, "fid")] == 3.0


def test_nan_objective_and_unfinished_or_early_stopped_runs_never_win():
    runs = _runs(
        {"method": "CG", "label_percent": 5.0, "gen_accuracy": float("nan")},
        {"method": "CG", "label_percent": 5.0, "gen_accuracy": 0.9, "status": "FAILED"},
        {"method": "CG", "label_percent": 5.0, "gen_accuracy": 0.95, "early_stopped": True},
        {"method": "CG", "label_percent": 5.0, "gen_accuracy": 0.4},
    )
    assert (
        comparison_table(runs, OBJ, metrics=("gen_accuracy",)).loc["CG", (5.0, "gen_accuracy")]
        == 0.4
    )


def test_a_cell_missing_a_metric_is_blank_in_markdown():
    runs = _runs(
        {"method": "Cond", "label_percent": 100.0, "gen_accuracy": 0.9},
        {"method": "CG", "label_percent": 100.0, "gen_accuracy": 0.8, "clf_ece": 0.05},
    )
    text = to_markdown(comparison_table(runs, OBJ, metrics=("gen_accuracy", "clf_ece")))
    assert "| Cond | 0.9 |  |" in text and "| CG | 0.8 | 0.05 |" in text


def test_two_seeds_of_one_cell_keep_the_better_and_string_params_are_cast():
    assert _cast("0.5") == 0.5 and _cast("3") == 3 and _cast("True") is True and _cast("pc") == "pc"
    runs = _runs(
        {"method": "CG", "label_percent": _cast("5.0"), "train.seed": 0, "gen_accuracy": 0.6},
        {"method": "CG", "label_percent": _cast("5.0"), "train.seed": 1, "gen_accuracy": 0.7},
    )
    best = best_per_cell(runs, *OBJ)
    assert len(best) == 1 and best.iloc[0]["train.seed"] == 1


def test_pareto_set_keeps_exactly_the_undominated_runs():
    runs = _runs(
        {"method": "CG", "label_percent": 5.0, "gen_accuracy": 0.9, "fid": 10.0},
        {"method": "CG", "label_percent": 5.0, "gen_accuracy": 0.8, "fid": 5.0},
        {"method": "CG", "label_percent": 5.0, "gen_accuracy": 0.7, "fid": 11.0},  # dominated
    )
    front = pareto_set(runs, [("gen_accuracy", "max"), ("fid", "min")])
    assert sorted(front["fid"]) == [5.0, 10.0]


def test_fid_from_too_few_samples_is_starred():
    runs = _runs(
        {"method": "CG", "label_percent": 5.0, "gen_accuracy": 0.5, "fid": 3.0, "fid_warning": 1.0}
    )
    table = comparison_table(runs, OBJ, metrics=("gen_accuracy", "fid"))
    text = to_markdown(table, flags=warning_flags(runs, OBJ, table))
    assert "3*" in text and "fewer samples than feature dimensions" in text


def test_per_class_table_reads_class_columns():
    runs = _runs(
        {"method": "CG", "label_percent": 5.0, "gen_accuracy": 0.5, "gen_accuracy_class0": 0.4,
         "gen_accuracy_class1": 0.6, "intra_fid_class0": 1.0, "intra_fid_class1": 2.0},
    )  # fmt: skip
    table = per_class_table(runs, OBJ)
    assert table.loc[("CG", 1), (5.0, "gen_accuracy")] == 0.6
    assert table.loc[("CG", 0), (5.0, "intra_fid")] == 1.0


def test_export_best_writes_the_cells_in_the_tables_order(tmp_path):
    # The best trials rank CFG-all over Cond over CG; the files come out as the table's rows.
    runs = _runs(
        {"method": "CFG-all", "label_percent": 100.0, "gen_accuracy": 0.9},
        {"method": "Cond", "label_percent": 5.0, "gen_accuracy": 0.8},
        {"method": "CG", "label_percent": 100.0, "gen_accuracy": 0.7},
        {"method": "CG", "label_percent": 5.0, "gen_accuracy": 0.6},
    )  # fmt: skip
    spec = {"name": "s", "methods": ["CG", "Cond", "CFG-all"], "label_percents": [5, 100]}
    written = export_best(runs, spec, OBJ, tmp_path)
    assert [p.stem for p in written] == ["CG@5%", "CG@100%", "Cond@5%", "CFG-all@100%"]


def test_export_best_writes_a_runnable_spec_with_the_winning_knobs_and_chosen_scale(tmp_path):
    runs = _runs(
        {"method": "CG-SC-all", "label_percent": 5.0, "gen_accuracy": 0.5, "loss.lambda_sc": 0.1,
         "guidance_scale": 2.0},
        {"method": "CG-SC-all", "label_percent": 5.0, "gen_accuracy": 0.6, "loss.lambda_sc": 3.0,
         "guidance_scale": 1.5},
    )  # fmt: skip
    spec = {"name": "s", "methods": ["CG-SC-all"], "label_percents": [5], "num_trials": 9,
            "guidance": {"scales": [0.5, 1, 2], "val_num_per_class": 7}}  # fmt: skip
    (path,) = export_best(runs, spec, OBJ, tmp_path)
    written = yaml.safe_load(path.read_text())
    assert written["search"] == {"loss.lambda_sc": {"choices": [3.0]}}
    # the chosen scale only: the cap at it stops any extension past the edge
    assert written["guidance"] == {"scales": [1.5], "val_num_per_class": 7, "max_scale": 1.5}
    assert written["num_trials"] == 1 and written["trials_per_cell"] == 1
    assert written["methods"] == ["CG-SC-all"]
    from study.spec import validate

    assert validate(written).guidance.scales == [1.5]  # runnable as written


def test_selection_reads_the_validation_value_and_the_table_reports_the_test_value():
    runs = _runs(
        {"method": "CG", "label_percent": 5.0, "gen_accuracy": 0.9, "val/gen_accuracy": 0.5},
        {"method": "CG", "label_percent": 5.0, "gen_accuracy": 0.6, "val/gen_accuracy": 0.7},
    )
    table = comparison_table(runs, OBJ, metrics=("gen_accuracy", "val/gen_accuracy"))
    assert table.loc["CG", (5.0, "gen_accuracy")] == 0.6  # the test value of the val-best trial
    assert table.loc["CG", (5.0, "val/gen_accuracy")] == 0.7


def test_write_report_plots_the_best_trials_validation_guidance_curve(tmp_path):
    runs = _runs(
        {"method": "CG", "label_percent": 5.0, "gen_accuracy": 0.5, "val/gen_accuracy": 0.6,
         "guidance_scale": 2.0, "curve/gen_accuracy/g1": 0.5, "curve/gen_accuracy/g2": 0.6},
    )  # fmt: skip
    table, files = write_report(runs, [OBJ], tmp_path)
    figures = write_figures(runs, [OBJ], tmp_path)
    names = {p.name for p in files + figures}
    assert {"comparison.md", "comparison.csv", "comparison_long.csv"} <= names
    assert {"guidance_gen_accuracy.png", "guidance_gen_accuracy.pdf"} <= names
    assert all(p.exists() for p in files + figures)
    assert not math.isnan(table.loc["CG", (5.0, "gen_accuracy")])
    assert curve_points(runs.iloc[0], "gen_accuracy") == [(1.0, 0.5), (2.0, 0.6)]


@pytest.mark.parametrize("status", ["FAILED", "KILLED", "RUNNING"])
def test_only_finished_runs_reach_the_table(status):
    runs = _runs({"method": "CG", "label_percent": 5.0, "gen_accuracy": 0.5, "status": status})
    assert comparison_table(runs, OBJ).empty


def test_the_table_shows_each_cells_chosen_knobs_only_where_the_method_tunes_them():
    runs = _runs(
        {"method": "CG-SC-all", "label_percent": 5.0, "gen_accuracy": 0.6, "loss.lambda_sc": 0.1,
         "loss.lambda_joint": 1.0, "guidance_scale": 2.0},
        {"method": "Cond", "label_percent": 5.0, "gen_accuracy": 0.9, "loss.lambda_sc": 1.0,
         "loss.lambda_joint": 1.0},
    )  # fmt: skip
    table = comparison_table(runs, OBJ, metrics=("gen_accuracy", *KNOB_COLUMNS))
    assert table.loc["CG-SC-all", (5.0, "loss.lambda_sc")] == 0.1
    assert table.loc["CG-SC-all", (5.0, "guidance_scale")] == 2.0
    assert pd.isna(table.loc["CG-SC-all", (5.0, "loss.lambda_joint")])  # not its knob
    assert pd.isna(table.loc["Cond", (5.0, "guidance_scale")])  # Cond does not guide


def test_pareto_fronts_per_label_percent_by_validation_values_and_a_point_exports(tmp_path):
    two = [("gen_accuracy", "max"), ("fid", "min")]
    runs = _runs(
        {"trial_id": "a", "method": "CG", "label_percent": 5.0, "val/gen_accuracy": 0.9,
         "val/fid": 10.0, "gen_accuracy": 0.1, "fid": 99.0},
        {"trial_id": "b", "method": "Cond", "label_percent": 5.0, "val/gen_accuracy": 0.8,
         "val/fid": 5.0, "gen_accuracy": 0.9, "fid": 1.0},
        # Dominated on validation (its test numbers would dominate: they must not count).
        {"trial_id": "c", "method": "CG", "label_percent": 5.0, "val/gen_accuracy": 0.7,
         "val/fid": 11.0, "gen_accuracy": 1.0, "fid": 0.5},
        {"trial_id": "d", "method": "CG", "label_percent": 100.0, "val/gen_accuracy": 0.5,
         "val/fid": 20.0, "gen_accuracy": 0.5, "fid": 20.0},
    )  # fmt: skip
    table, files = write_report(runs, two, tmp_path)
    front = pd.read_csv(tmp_path / "pareto.csv")
    assert sorted(front["trial_id"]) == ["a", "b", "d"]  # c dominated; 100 % has its own front
    names = {p.name for p in files + write_figures(runs, two, tmp_path)}
    assert {"pareto.md", "pareto.csv", "pareto.pdf", "pareto.png"} <= names
    spec = {"name": "s", "methods": ["CG", "Cond"], "label_percents": [5, 100]}
    (path,) = export_best(runs, spec, two[0], tmp_path / "best", trial_id="b")
    assert path.name == "Cond@5%_b.yaml" and yaml.safe_load(path.read_text())["methods"] == ["Cond"]
