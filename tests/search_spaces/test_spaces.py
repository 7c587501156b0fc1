import optuna
import pytest

from search_spaces import PAPER_GRID, Range, suggest_knobs
from trainables.names import TUNED_KEYS


def _fixed(params):
    return optuna.trial.FixedTrial(params)


def test_sc_methods_search_lambda_sc_only():
    trial = _fixed({"loss.lambda_sc": 0.3})
    # The guidance scale is swept inside every trial at sampling time, never searched; method and
    # label % are the cell's, never suggested.
    assert suggest_knobs(trial, "CG-SC-all", {}) == {"loss.lambda_sc": 0.3}
    assert set(trial.params) == {"loss.lambda_sc"}


def test_joint_searches_lambda_joint_not_lambda_sc():
    trial = _fixed({"loss.lambda_joint": 1.0, "loss.lambda_sc": 0.5})
    assert suggest_knobs(trial, "Joint-SC", {}) == {"loss.lambda_joint": 1.0}


@pytest.mark.parametrize("method", ["CG", "CG-DLSM", "CFG-labeled", "CFG-all", "Cond"])
def test_methods_without_tuned_weights_search_nothing(method):
    trial = _fixed({})
    assert suggest_knobs(trial, method, {}) == {} and trial.params == {}


def test_value_outside_range_is_flagged_by_fixed_trial():
    trial = _fixed({"loss.lambda_sc": 50.0})
    # lambda_SC is searched in [0.01, 10]; optuna flags 50 as out of range.
    with pytest.warns(UserWarning, match="out of the range"):
        suggest_knobs(trial, "CG-SC-labeled", {})


def test_paper_grid_preset_is_categorical():
    trial = _fixed({"loss.lambda_sc": 0.1})
    assert suggest_knobs(trial, "CG-SC-all", {"loss.lambda_sc": Range(choices=PAPER_GRID)}) == {
        "loss.lambda_sc": 0.1
    }
    with pytest.raises(ValueError):  # 0.3 is not one of the grid's choices
        suggest_knobs(_fixed({"loss.lambda_sc": 0.3}), "CG-SC-all",
                      {"loss.lambda_sc": Range(choices=PAPER_GRID)})  # fmt: skip


def test_knobs_sampled_in_a_real_study_stay_within_their_ranges():
    ranges = {"loss.lambda_joint": Range(1.0, 2.0)}
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for i in range(30):
        trial = study.ask()
        method = list(TUNED_KEYS)[i % len(TUNED_KEYS)]
        knobs = suggest_knobs(trial, method, ranges)
        assert set(knobs) == set(TUNED_KEYS[method])
        assert 1.0 <= knobs.get("loss.lambda_joint", 1.5) <= 2.0
        assert 0.01 <= knobs.get("loss.lambda_sc", 1.0) <= 10
        study.tell(trial, 0.0)


def test_cell_points_cover_every_cell_at_the_default_settings():
    from search_spaces import Range, cell_points

    points = cell_points(
        ["CG-SC-all", "Cond"],
        [5, 100],
        {
            "loss.lambda_sc": Range(choices=(0.01, 0.1, 1.0, 10.0)),
            "loss.lambda_joint": Range(2.0, 8.0),
        },
    )
    assert [(p["method"], p["data.label_percent"]) for p in points] == [
        ("CG-SC-all", 5),
        ("CG-SC-all", 100),
        ("Cond", 5),
        ("Cond", 100),
    ]
    # lambda_SC = 1 (the papers' choice); a range without 1 gives its geometric middle; Cond tunes
    # nothing.
    assert points[0] == {"method": "CG-SC-all", "data.label_percent": 5, "loss.lambda_sc": 1.0}
    joint = cell_points(["Joint-SC"], [5], {"loss.lambda_joint": Range(2.0, 8.0)})[0]
    assert joint["loss.lambda_joint"] == 4.0
    assert points[2] == {"method": "Cond", "data.label_percent": 5}
