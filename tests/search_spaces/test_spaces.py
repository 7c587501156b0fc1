import optuna
import pytest

from search_spaces import PAPER_GRID, Range, define_space, make_space
from trainables.names import TUNED_KEYS


def _fixed(params):
    return optuna.trial.FixedTrial(params)


def test_sc_methods_search_lambda_sc_only():
    trial = _fixed({"method": "CG-SC-all", "data.label_percent": 5, "loss.lambda_sc": 0.3})
    define_space(trial, ["CG-SC-all"], [5], {})
    # The guidance scale is swept inside every trial at sampling time, never searched.
    assert set(trial.params) == {"method", "data.label_percent", "loss.lambda_sc"}


def test_joint_searches_lambda_joint_not_lambda_sc():
    trial = _fixed(
        {
            "method": "Joint-SC",
            "data.label_percent": 100,
            "loss.lambda_joint": 1.0,
            "sample.guidance_scale": 1.0,
        }
    )
    define_space(trial, ["Joint-SC"], [100], {})
    assert "loss.lambda_joint" in trial.params and "loss.lambda_sc" not in trial.params


@pytest.mark.parametrize("method", ["CG", "CG-DLSM", "CFG-labeled", "CFG-all"])
def test_guided_methods_without_weights_search_nothing(method):
    trial = _fixed({"method": method, "data.label_percent": 20})
    define_space(trial, [method], [20], {})
    assert set(trial.params) == {"method", "data.label_percent"}


def test_cond_searches_no_weight_and_no_scale():
    trial = _fixed({"method": "Cond", "data.label_percent": 20})
    define_space(trial, ["Cond"], [20], {})
    assert set(trial.params) == {"method", "data.label_percent"}


def test_value_outside_range_is_flagged_by_fixed_trial():
    trial = _fixed(
        {
            "method": "CG-SC-labeled",
            "data.label_percent": 5,
            "loss.lambda_sc": 50.0,
            "sample.guidance_scale": 1.0,
        }
    )
    # lambda_SC is searched in [0.01, 10]; optuna flags 50 as out of range.
    with pytest.warns(UserWarning, match="out of the range"):
        define_space(trial, ["CG-SC-labeled"], [5], {})


def test_paper_grid_preset_is_categorical():
    trial = _fixed(
        {
            "method": "CG-SC-all",
            "data.label_percent": 5,
            "loss.lambda_sc": 0.1,
            "sample.guidance_scale": 1.0,
        }
    )
    define_space(trial, ["CG-SC-all"], [5], {"loss.lambda_sc": Range(choices=PAPER_GRID)})
    assert trial.params["loss.lambda_sc"] == 0.1


def test_space_samples_in_a_real_study_within_ranges():
    space = make_space(list(TUNED_KEYS), [5, 100], {"loss.lambda_joint": Range(1.0, 2.0)})
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        space(trial)
        assert 1.0 <= trial.params.get("loss.lambda_joint", 1.5) <= 2.0
        assert 0.01 <= trial.params.get("loss.lambda_sc", 1.0) <= 10
        study.tell(trial, 0.0)


def test_ranges_report_empty_and_negative():
    assert "empty range" in Range(2.0, 1.0).check("loss.lambda_sc")[0]
    assert any("low > 0" in e for e in Range(0.0, 1.0).check("loss.lambda_sc"))
    assert any(">= 0" in e for e in Range(-1.0, 1.0, log=False).check("sample.guidance_scale"))


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
