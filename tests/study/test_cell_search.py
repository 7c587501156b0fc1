"""The per-cell searcher driven directly (no Ray): a fair search in every cell."""

import math

from study.cell_studies import cell_study_name, fail_orphaned_trials
from study.search import CellSearcher
from study.spec import load_spec, validate
from trainables.names import TUNED_KEYS


def _objective(config):
    # A smooth synthetic objective: best at lambda_SC 0.5 and lambda_joint 1.
    value = -abs(math.log(config.get("loss.lambda_sc", 0.5) / 0.5))
    return value - abs(math.log(config.get("loss.lambda_joint", 1.0)))


def _result(value):
    # A finished trial's result: the validation objective is what the searcher reads.
    return {"val/guided_score_cos": value, "guided_score_cos": 0.0, "final": 1.0}


def _drive(searcher, n, fail=(), stages=None):
    # n search trials, each ending at once; stage trials (shared networks) are collected apart.
    configs = []
    for i in range(10 * n):
        if len(configs) == n:
            break
        config = searcher.suggest(f"t{i}")
        if not isinstance(config, dict):
            break
        if config.get("stage"):
            (stages if stages is not None else []).append(config)
            searcher.on_trial_complete(f"t{i}", {"final": 1.0, "stage_trial": 1.0})
            continue
        value = float("nan") if len(configs) in fail else _objective(config)
        configs.append(config)
        searcher.on_trial_complete(f"t{i}", _result(value))
    return configs


def test_the_default_toy_study_searches_every_cell_fairly(tmp_path):
    spec = load_spec(None)
    searcher = CellSearcher(spec, tmp_path)
    configs = _drive(searcher, 1000)
    assert searcher.suggest("more") == "FINISHED" and len(configs) == spec.num_trials
    cells = {}
    for c in configs:
        cells.setdefault((c["method"], c["data.label_percent"]), []).append(c)
    assert len(cells) == 16
    for (method, _), runs in cells.items():
        knobs = [
            tuple(sorted((k, v) for k, v in c.items() if k in TUNED_KEYS[method])) for c in runs
        ]
        assert len(set(knobs)) == len(knobs)  # no configuration twice
        if TUNED_KEYS[method]:
            assert len(runs) == 2  # every cell with a knob: 2 distinct configurations
            # Its first trial is the paper's point: every knob at 1.
            assert all(runs[0][k] == 1.0 for k in TUNED_KEYS[method])
        else:
            assert len(runs) == 1  # Cond: nothing to tune, trains once


def test_trials_are_interleaved_so_an_early_stop_covers_every_cell(tmp_path):
    spec = validate(
        {"methods": ["CG", "CG-SC-all"], "label_percents": [5, 100], "trials_per_cell": 3}
    )
    configs = _drive(CellSearcher(spec, tmp_path), 4)
    assert {(c["method"], c["data.label_percent"]) for c in configs} == {
        ("CG", 5.0),
        ("CG", 100.0),
        ("CG-SC-all", 5.0),
        ("CG-SC-all", 100.0),
    }


def test_results_reach_the_cell_study_and_a_nan_objective_fails_its_trial(tmp_path):
    import optuna

    spec = validate({"methods": ["CG-SC-all"], "label_percents": [5], "trials_per_cell": 3})
    _drive(CellSearcher(spec, tmp_path), 3, fail={1})
    study = optuna.load_study(
        study_name=cell_study_name(spec.name, ("CG-SC-all", 5.0)),
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
    )
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]


def test_a_restored_searcher_runs_a_lost_configuration_again_within_the_budget(tmp_path):
    spec = validate(
        {"methods": ["CG-SC-all", "Joint-SC"], "label_percents": [20], "trials_per_cell": 3}
    )
    first = CellSearcher(spec, tmp_path)
    _drive(first, 2)
    first.save(str(tmp_path / "searcher.pkl"))
    lost = first.suggest("lost")  # handed out after the checkpoint: Tune never records it
    second = CellSearcher(spec, tmp_path)
    second.restore(str(tmp_path / "searcher.pkl"))
    rest = [second.suggest(f"r{i}") for i in range(5)]
    assert rest[-1] == "FINISHED"  # 2 before + 4 after = the budget of 2 cells x 3
    assert lost in rest[:-1]  # the lost configuration ran again, within the budget
    for i, config in enumerate(rest[:-1]):
        second.on_trial_complete(f"r{i}", _result(_objective(config)))
    assert fail_orphaned_trials(spec, tmp_path) == []  # no Optuna trial left RUNNING


def test_optuna_is_told_the_validation_value_and_a_trial_without_final_is_pruned(tmp_path):
    import optuna

    spec = validate({"methods": ["CG-SC-all"], "label_percents": [5], "trials_per_cell": 2})
    searcher = CellSearcher(spec, tmp_path)
    searcher.suggest("a")
    searcher.on_trial_complete("a", {"val/guided_score_cos": 0.25, "guided_score_cos": 0.9,
                                     "final": 1.0})  # fmt: skip
    searcher.suggest("b")  # stopped by ASHA: its last result is an epoch's, not the final one
    searcher.on_trial_complete("b", {"val/guided_score_cos": 0.99, "eval_epoch": 1.0})
    study = optuna.load_study(
        study_name=cell_study_name(spec.name, ("CG-SC-all", 5.0)),
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
    )
    a, b = study.get_trials()
    assert a.value == 0.25  # never the reported (test) 0.9
    assert b.state.name == "PRUNED"


def test_a_lost_trial_that_finished_before_the_kill_is_told_its_result_not_run_again(tmp_path):
    import json

    import optuna

    spec = validate({"methods": ["CG-SC-all"], "label_percents": [20], "trials_per_cell": 3})
    first = CellSearcher(spec, tmp_path)
    _drive(first, 1)
    first.save(str(tmp_path / "searcher.pkl"))
    lost = first.suggest("lost")  # handed out after the checkpoint ...
    record = tmp_path / "trials" / "lost"  # ... and finished before the driver was killed
    record.mkdir(parents=True)
    (record / "params.json").write_text(json.dumps(lost))
    (record / "final.json").write_text(json.dumps(_result(0.42)))
    second = CellSearcher(spec, tmp_path)
    second.restore(str(tmp_path / "searcher.pkl"))
    rest = [second.suggest(f"r{i}") for i in range(3)]
    assert rest[-1] == "FINISHED" and lost not in rest[:-1]  # 1 + lost + 1 more = the budget 3
    study = optuna.load_study(
        study_name=cell_study_name(spec.name, ("CG-SC-all", 20.0)),
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
    )
    assert [t.value for t in study.get_trials() if t.number == 1] == [0.42]


def test_a_failed_trial_that_a_resume_finishes_is_recorded_finished_once(tmp_path):
    import json

    import optuna

    from study.cell_studies import heal_failed_trials

    spec = validate({"methods": ["CG-SC-all"], "label_percents": [20], "trials_per_cell": 2})
    searcher = CellSearcher(spec, tmp_path)
    config = searcher.suggest("t0")
    searcher.suggest("t1")
    searcher.on_trial_complete("t0", error=True)  # e.g. trials/ was read-only
    searcher.on_trial_complete("t1", error=True)
    # A resume ran t0 again to its end (Tune holds it TERMINATED, its final record is written);
    # t1 failed again and has no final record.
    (tmp_path / "trials" / "t0").mkdir(parents=True)
    (tmp_path / "trials" / "t0" / "final.json").write_text(json.dumps(_result(0.25)))
    assert heal_failed_trials(spec, tmp_path, {"t0"}) == 1
    study = optuna.load_study(
        study_name="study/CG-SC-all@20%", storage=f"sqlite:///{tmp_path / 'optuna.db'}"
    )
    first, second = study.get_trials()
    assert first.state.name == "COMPLETE" and first.value == 0.25
    assert first.params["loss.lambda_sc"] == config["loss.lambda_sc"]
    assert second.state.name == "FAIL"
    assert heal_failed_trials(spec, tmp_path, {"t0"}) == 0  # told once


def _older_layout(searcher):
    # The state the searcher pickled before its budgets and Optuna side were objects of their own.
    state = {k: v for k, v in searcher.__dict__.items() if k not in ("budgets", "optuna")}
    studies = searcher.optuna
    state.update(
        budget=dict(searcher.budgets.budget),
        asked=dict(searcher.budgets.asked),
        storage_url=studies.storage_url,
        study_name=studies.study_name,
        seed=studies.seed,
        ranges=studies.ranges,
        points=None,
        point_needs=[],
        _studies={},
    )
    return state


def test_a_searcher_saved_in_the_older_layout_restores_and_spends_the_rest_of_its_budget(
    tmp_path,
):
    import pickle

    spec = validate(
        {"methods": ["CG-SC-all", "Joint-SC"], "label_percents": [20], "trials_per_cell": 3}
    )
    first = CellSearcher(spec, tmp_path)
    done = _drive(first, 2)
    (tmp_path / "searcher.pkl").write_bytes(pickle.dumps(_older_layout(first)))
    # Tune unpickles the searcher of its experiment state (tuner.pkl), then restores its
    # checkpoint: both in the older layout.
    older = CellSearcher.__new__(CellSearcher)
    older.__dict__.update(_older_layout(first))
    second = pickle.loads(pickle.dumps(older))
    second.restore(str(tmp_path / "searcher.pkl"))
    assert second.budgets.asked == first.budgets.asked and second.remaining == 4
    rest = _drive(second, 10)
    assert second.suggest("more") == "FINISHED" and len(done) + len(rest) == 6
    knobs = [tuple(sorted(c.items())) for c in done + rest]
    assert len(set(knobs)) == 6  # no configuration twice across the restore


def test_configurations_lost_with_the_driver_run_again_as_trials_of_their_cells(tmp_path):
    import optuna

    from study.search import make_searcher

    spec = validate({"methods": ["CG-SC-all"], "label_percents": [20], "trials_per_cell": 2})
    first = CellSearcher(spec, tmp_path)
    _drive(first, 1)
    lost = first.suggest("lost")  # the driver is killed: Tune never records this trial
    orphans = fail_orphaned_trials(spec, tmp_path)
    assert orphans == [lost]
    rerun = make_searcher(spec, tmp_path, points=orphans)
    assert rerun.total == 1 + rerun.gate.count
    assert _drive(rerun, 5) == [lost] and rerun.suggest("more") == "FINISHED"
    study = optuna.load_study(
        study_name=cell_study_name(spec.name, ("CG-SC-all", 20.0)),
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
    )
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[2].value == _objective(lost) and trials[2].params == trials[1].params
