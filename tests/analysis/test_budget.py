"""The expected best validation value after k trials (Dodge et al. 2019) against its closed form."""

import itertools

import numpy as np
import pandas as pd
import pytest

from analysis.budget import budget_table, expected_best, expected_best_curve


def _by_enumeration(values, k, best):
    # Every ordered draw of k trials with replacement, equally likely: the exact expectation.
    draws = list(itertools.product(values, repeat=k))
    return sum(best(d) for d in draws) / len(draws)


def test_hand_made_values_match_the_closed_form():
    values = [1.0, 2.0, 3.0]
    assert expected_best(values, 1) == pytest.approx(2.0)  # one trial: the mean
    assert expected_best(values, 2) == pytest.approx(22 / 9)  # (1*1 + 2*3 + 3*5) / 9
    assert expected_best(values, 2, "min") == pytest.approx(14 / 9)  # (3*1 + 2*3 + 1*5) / 9


@pytest.mark.parametrize("mode, best", [("max", max), ("min", min)])
def test_every_k_equals_the_enumerated_expectation(mode, best):
    values = [0.3, 0.9, 0.5, 0.5, 0.1]
    for k in range(1, 5):
        assert expected_best(values, k, mode) == pytest.approx(_by_enumeration(values, k, best))


def test_the_curve_rises_to_the_best_value_and_ignores_non_finite():
    curve = expected_best_curve([0.2, float("nan"), 0.8, 0.5])
    assert len(curve) == 3 and curve == sorted(curve) and curve[0] == pytest.approx(0.5)
    assert expected_best([0.2, 0.8, 0.5], 10_000) == pytest.approx(0.8)
    assert np.isnan(expected_best([], 3))


def test_budget_table_gives_each_cells_last_trial_gain():
    trials = pd.DataFrame(
        {
            "method": ["CG-SC-all"] * 3 + ["Cond"],
            "label_percent": [5.0] * 4,
            "val/x": [1.0, 2.0, 3.0, 0.7],
        }
    )
    table = budget_table(trials, "val/x").set_index("method")
    assert table.loc["CG-SC-all", "trials"] == 3
    assert table.loc["CG-SC-all", "expected_best"] == pytest.approx(expected_best([1, 2, 3], 3))
    gain = expected_best([1, 2, 3], 3) - expected_best([1, 2, 3], 2)
    assert table.loc["CG-SC-all", "last_trial_gain"] == pytest.approx(gain)
    assert np.isnan(table.loc["Cond", "last_trial_gain"])  # one trial: no gain to measure


def test_the_report_writes_each_cells_budget_and_the_figure_its_curves(tmp_path):
    from analysis.budget import write_budget
    from analysis.figures import budget_figure

    base = {"status": "FINISHED", "early_stopped": False, "stage": "search", "label_percent": 5.0}
    values = [("CG-SC-all", 0.2), ("CG-SC-all", 0.6), ("CG-SC-all", 0.4), ("Cond", 0.5)]
    rows = [
        {**base, "run_id": f"r{i}", "trial_id": f"t{i}", "method": m, "val/x": v, "x": v}
        for i, (m, v) in enumerate(values)
    ]
    runs = pd.DataFrame(rows)
    written = write_budget(runs, ("x", "max"), tmp_path / "tables")
    assert [p.name for p in written] == ["budget.md", "budget.csv"]
    text = (tmp_path / "tables" / "budget.md").read_text()
    gain = expected_best([0.2, 0.6, 0.4], 3) - expected_best([0.2, 0.6, 0.4], 2)
    assert f"| CG-SC-all | 5 | 3 | {expected_best([0.2, 0.6, 0.4], 3):.4g} | {gain:+.4g} |" in text
    assert "| Cond | 5 | 1 | 0.5 |  |" in text  # one trial: no gain to report
    figures = budget_figure(runs, ("x", "max"), tmp_path / "figures")
    assert {p.name for p in figures} == {"budget.pdf", "budget.png"}
