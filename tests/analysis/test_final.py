"""The final table's seed statistics on hand-built runs (analytic values, no MLflow)."""

import math

import pandas as pd

from analysis.final import final_markdown, final_runs, seed_statistics, write_final

T_975_2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom


def _final(method, seed, value, **extra):
    return {"run_id": f"{method}{seed}", "trial_id": "t", "status": "FINISHED",
            "early_stopped": False, "stage": "final", "method": method, "label_percent": 5.0,
            "train.seed": seed, "gen_accuracy": value, **extra}  # fmt: skip


def test_mean_std_and_t_interval_match_the_formula():
    runs = pd.DataFrame([_final("CG", s, v) for s, v in enumerate([1.0, 2.0, 3.0])])
    row = seed_statistics(runs, ["gen_accuracy"]).iloc[0]
    assert row["n"] == 3 and row["mean"] == 2.0 and row["std"] == 1.0
    half = T_975_2 / math.sqrt(3)
    assert math.isclose(row["ci_low"], 2 - half) and math.isclose(row["ci_high"], 2 + half)


def test_a_method_is_marked_only_when_its_seed_paired_difference_excludes_zero():
    cg = [0.50, 0.70, 0.60]
    # SC: CG + 0.1 (+- 0.01) on every seed: a small, consistent gain the unpaired spread hides.
    sc = [v + d for v, d in zip(cg, (0.10, 0.11, 0.09))]
    # Joint: CG + noise of both signs.
    joint = [v + d for v, d in zip(cg, (0.05, -0.05, 0.01))]
    runs = pd.DataFrame(
        [_final("CG", s, v) for s, v in enumerate(cg)]
        + [_final("CG-SC-all", s, v) for s, v in enumerate(sc)]
        + [_final("Joint-SC", s, v) for s, v in enumerate(joint)]
    )
    table = seed_statistics(runs, ["gen_accuracy"]).set_index("method")
    assert table.loc["CG-SC-all", "differs_from_cg"]
    assert math.isclose(table.loc["CG-SC-all", "diff_vs_cg"], 0.1)
    assert not table.loc["Joint-SC", "differs_from_cg"]
    # Unpaired, SC's interval overlaps CG's: only the pairing by seed reveals the gain.
    assert table.loc["CG-SC-all", "ci_low"] < table.loc["CG", "ci_high"]
    text = final_markdown(seed_statistics(runs, ["gen_accuracy"]), ["gen_accuracy"])
    assert "| CG-SC-all | 0.7 ± 0.1" in text and text.count("†") == 2  # one cell + the legend


def test_a_repeated_seed_keeps_the_latest_run_and_search_runs_are_ignored(tmp_path):
    runs = pd.DataFrame(
        [
            {**_final("CG", 0, 0.1), "start_time": 1},
            {**_final("CG", 0, 0.3), "start_time": 2},  # `study final` run again: replaces
            {**_final("CG", 1, 0.5), "stage": "search"},  # a search trial: not a final run
        ]
    )
    assert list(final_runs(runs)["gen_accuracy"]) == [0.3]
    row = seed_statistics(runs, ["gen_accuracy"]).iloc[0]
    assert row["n"] == 1 and math.isnan(row["std"])  # one seed: no spread, nothing marked
    files = write_final(runs, [("gen_accuracy", "max")], tmp_path)
    assert [p.name for p in files] == ["final.md", "final.csv"]
    assert "n=1" in (tmp_path / "final.md").read_text()
    assert write_final(runs[runs["stage"] == "search"], [("gen_accuracy", "max")], tmp_path) == []


def test_final_md_names_the_cells_left_out(tmp_path):
    runs = pd.DataFrame([_final("CG", 0, 0.1), _final("CG", 1, 0.3)])
    write_final(runs, [("gen_accuracy", "max")], tmp_path, cells=["CG@5%", "CG-SC-all@5%"])
    text = (tmp_path / "final.md").read_text()
    assert "Left out" in text and "CG-SC-all@5%" in text.split("Left out")[1]
    write_final(runs, [("gen_accuracy", "max")], tmp_path, cells=["CG@5%"])
    assert "Left out" not in (tmp_path / "final.md").read_text()
