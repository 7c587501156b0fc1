"""Early stopping from the ledger: successive halving per cell over the intermediate values in
optuna.db, so a cell's first trial to reach a rung goes on, and a resumed study keeps its rungs."""

from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from study.search import CellSearcher, NotesErrors, make_scheduler
from study.spec import SpecError, validate

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def _spec(**kw):
    return {"methods": ["CG"], "label_percents": [50], "num_trials": 2, **kw}


def _asha_spec():
    return validate(
        {
            "methods": ["CG-SC-all", "CFG-all"],
            "label_percents": [20],
            "trials_per_cell": 4,
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
            "objectives": [{"metric": "gen_accuracy", "mode": "max"}],
        }
    )


def _start(searcher, trial_id, method):
    # Hand out trials until one of the method's cell (stage trials and other cells are skipped).
    for i in range(20):
        config = searcher.suggest(f"{trial_id}-{i}" if i else trial_id)
        if isinstance(config, dict) and config.get("stage"):
            searcher.on_trial_complete(f"{trial_id}-{i}" if i else trial_id, {"final": 1.0})
            continue
        if isinstance(config, dict) and config["method"] == method:
            return SimpleNamespace(trial_id=f"{trial_id}-{i}" if i else trial_id)
    raise AssertionError(f"no {method} trial handed out")


def _epoch(scheduler, trial, epoch, value):
    return scheduler.on_trial_result(None, trial, {"eval_epoch": epoch, "val/gen_accuracy": value})


def test_halving_stops_a_bad_trial_of_a_cell_but_never_its_first_at_a_rung(tmp_path):
    spec = _asha_spec()
    searcher = CellSearcher(spec, tmp_path)
    halving = make_scheduler(spec, searcher)
    a = _start(searcher, "a", "CG-SC-all")
    c = _start(searcher, "c", "CFG-all")  # CFG-all has no knob: one trial
    b = _start(searcher, "b", "CG-SC-all")
    assert _epoch(halving, a, 1, 0.9) == CONTINUE  # the cell's first at the rung
    assert _epoch(halving, b, 1, 0.8) == STOP  # worse than the cell's best half
    # Far worse than CG-SC-all, but compared only with its own cell: it goes on.
    assert _epoch(halving, c, 1, 0.1) == CONTINUE
    # Results without the epoch or the metric (per-epoch training losses), and a final result,
    # are ignored; so are stage trials (not in the ledger).
    assert halving.on_trial_result(None, a, {"epoch": 1, "score/loss": 1.0}) == CONTINUE
    final = {"eval_epoch": 4, "val/gen_accuracy": 0.0, "final": 1.0}
    assert halving.on_trial_result(None, a, final) == CONTINUE
    stage = SimpleNamespace(trial_id="no-such-trial")
    assert _epoch(halving, stage, 1, 0.0) == CONTINUE


def test_a_resumed_study_compares_new_trials_with_the_rungs_in_the_ledger(tmp_path):
    spec = _asha_spec()
    first = CellSearcher(spec, tmp_path)
    halving = make_scheduler(spec, first)
    a = _start(first, "a", "CG-SC-all")
    assert _epoch(halving, a, 1, 0.9) == CONTINUE
    first.on_trial_complete(a.trial_id, {"val/gen_accuracy": 0.95, "final": 1.0})
    # The driver is gone; the next session builds a new searcher and scheduler from optuna.db.
    second = CellSearcher(spec, tmp_path)
    again = make_scheduler(spec, second)
    b = _start(second, "b", "CG-SC-all")
    assert _epoch(again, b, 1, 0.5) == STOP  # a's 0.9 at rung 1 is read from the ledger
    c = _start(second, "c", "CG-SC-all")
    assert _epoch(again, c, 1, 0.97) == CONTINUE


def test_asha_spec_defaults_to_the_first_objective(tmp_path):
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
    halving = make_scheduler(spec, CellSearcher(spec, tmp_path))
    assert halving.guard == "val/gen_accuracy" and halving.direction.name == "MAXIMIZE"
    plain = validate(_spec())
    (tmp_path / "fifo").mkdir()
    fifo = make_scheduler(plain, CellSearcher(plain, tmp_path / "fifo"))
    assert type(fifo) is NotesErrors  # first in, first out; failed trials' errors noted


@pytest.mark.parametrize(
    "scheduler, needle",
    [
        ({"type": "asha", "metric": "fid"}, "not one of the objectives"),
        ({"type": "asha", "grace_period": 0}, "grace_period"),
        ({"type": "asha", "reduction_factor": 1}, "reduction_factor: must be greater than or eq"),
        ({"type": "asha", "reduction_factor": float("nan")}, "must be a valid integer"),
        ({"type": "asha", "reduction_factor": 2.5}, "must be a valid integer, got 2.5"),
        ({"type": "asha", "rungs": 3}, "scheduler.rungs: unknown key"),
        ("pbt", "scheduler.type: must be 'fifo' or 'asha', got 'pbt'"),
    ],
)
def test_bad_scheduler_specs_are_refused(scheduler, needle):
    with pytest.raises(SpecError, match=needle):
        validate(_spec(scheduler=scheduler))


def test_a_trial_stopped_early_keeps_its_training_in_the_ledger(tmp_path):
    # What the trial had trained when the scheduler stopped it is told to its cell's study, so
    # the views (analysis.ledger) count it without the MLflow store.
    from analysis.ledger import ledger_runs
    from trainables.records import COST, TrialRecords

    spec = _asha_spec()
    searcher = CellSearcher(spec, tmp_path)
    halving = make_scheduler(spec, searcher)
    a, b = _start(searcher, "a", "CG-SC-all"), _start(searcher, "b", "CG-SC-all")
    assert _epoch(halving, a, 1, 0.9) == CONTINUE
    assert _epoch(halving, b, 1, 0.5) == STOP
    last = {"eval_epoch": 1, "val/gen_accuracy": 0.5, COST.STEPS_SO_FAR: 20.0,
            COST.TRAIN_SECONDS_SO_FAR: 1.5}  # fmt: skip
    TrialRecords.of(tmp_path / "trials", b.trial_id).write_params(
        {"method": "CG-SC-all", "data.label_percent": 20.0}
    )
    searcher.on_trial_complete(b.trial_id, last)
    runs = ledger_runs(tmp_path, spec.name).set_index("trial_id")
    row = runs.loc[b.trial_id]
    assert row["status"] == "FINISHED" and row["early_stopped"]
    assert row[COST.STEPS_SO_FAR] == 20.0 and row[COST.TRAIN_SECONDS_SO_FAR] == 1.5
    # A trial without records yet (its first seconds) is in the ledger: running, in its cell.
    assert runs.loc[a.trial_id, "status"] == "RUNNING"
    assert runs.loc[a.trial_id, "method"] == "CG-SC-all"
