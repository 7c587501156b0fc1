"""ASHA as the platform configures it: the first trial of every cell is never stopped."""

from types import SimpleNamespace

import pytest

from study.search import CellAwareASHA, make_scheduler
from study.spec import SpecError, validate


def _trial(trial_id, method, pct=20.0):
    return SimpleNamespace(trial_id=trial_id, config={"method": method, "data.label_percent": pct})


def _asha():
    return CellAwareASHA(
        time_attr="eval_epoch",
        metric="m",
        mode="max",
        max_t=4,
        grace_period=1,
        reduction_factor=2,
        stop_last_trials=False,
    )


def test_asha_stops_a_bad_search_trial_but_not_a_cells_first_trial():
    from ray.tune.schedulers import TrialScheduler

    asha = _asha()
    trials = [_trial("a", "CG"), _trial("b", "CG"), _trial("c", "CG"), _trial("d", "CFG-all")]
    for t in trials:
        asha.on_trial_add(None, t)
    # The bracket is drawn at random per trial: pin every trial to one bracket so the rungs are
    # shared.
    bracket = asha._trial_info["a"]
    for t in trials:
        asha._trial_info[t.trial_id] = bracket
    assert (
        asha.on_trial_result(None, trials[0], {"eval_epoch": 1, "m": 0.9})
        == TrialScheduler.CONTINUE
    )
    assert asha.on_trial_result(None, trials[1], {"eval_epoch": 1, "m": 0.8}) == TrialScheduler.STOP
    # The first CFG-all trial is far worse, but it is its cell's only guaranteed trial.
    assert (
        asha.on_trial_result(None, trials[3], {"eval_epoch": 1, "m": 0.1})
        == TrialScheduler.CONTINUE
    )
    # Results without the time attribute or the metric (per-epoch training losses) are ignored.
    assert (
        asha.on_trial_result(None, trials[2], {"epoch": 1, "score/loss": 1.0})
        == TrialScheduler.CONTINUE
    )


def _spec(**kw):
    return {"methods": ["CG"], "label_percents": [50], "num_trials": 2, **kw}


def test_asha_spec_defaults_to_the_first_objective_and_the_epoch_count():
    spec = validate(
        _spec(
            scheduler="asha",
            objectives=[
                {"metric": "gen_accuracy", "mode": "max"},
                {"metric": "energy_distance", "mode": "min"},
            ],
            config={"train.steps": 100, "train.steps_per_epoch": 30},
        )
    )
    assert spec.scheduler.metric == "gen_accuracy" and spec.to_dict()["scheduler"]["type"] == "asha"
    asha = make_scheduler(spec)
    assert (
        asha._max_t == 4 and asha._metric == "val/gen_accuracy" and asha._time_attr == "eval_epoch"
    )
    assert make_scheduler(validate(_spec())) is None


@pytest.mark.parametrize(
    "scheduler, needle",
    [
        ({"type": "asha", "metric": "fid"}, "not one of the objectives"),
        ({"type": "asha", "grace_period": 0}, "grace_period"),
        ({"type": "asha", "reduction_factor": 1}, "reduction_factor: must be greater than 1"),
        ({"type": "asha", "reduction_factor": float("nan")}, "must be a finite number"),
        ({"type": "asha", "rungs": 3}, "scheduler.rungs: unknown key"),
        ("pbt", "scheduler.type: must be 'fifo' or 'asha', got 'pbt'"),
    ],
)
def test_bad_scheduler_specs_are_refused(scheduler, needle):
    with pytest.raises(SpecError, match=needle):
        validate(_spec(scheduler=scheduler))
