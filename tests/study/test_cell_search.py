"""The per-cell searcher driven directly (no Ray): a fair search in every cell."""

import math

from study.cell_studies import cell_study_name
from study.search import CellSearcher
from study.spec import load_spec, validate
from trainables.names import TUNED_KEYS
from trainables.records import ObjectiveError, TrialRecords


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


def _states(spec, tmp_path, cell):
    import optuna

    study = optuna.load_study(
        study_name=cell_study_name(spec.name, cell), storage=f"sqlite:///{tmp_path / 'optuna.db'}"
    )
    return study.get_trials()


def test_a_new_searcher_reads_the_ledger_and_runs_a_lost_configuration_again_in_budget(
    tmp_path,
):
    spec = validate(
        {"methods": ["CG-SC-all", "Joint-SC"], "label_percents": [20], "trials_per_cell": 3}
    )
    first = CellSearcher(spec, tmp_path)
    done = _drive(first, 2)
    lost = first.suggest("lost")  # the driver is killed while this trial runs
    # The next session: a new searcher, nothing of the first restored; only optuna.db is read.
    second = CellSearcher(spec, tmp_path)
    assert second.remaining == 4  # 2 finished; the lost one is not spent
    rest = _drive(second, 10)
    assert second.suggest("more") == "FINISHED" and len(done) + len(rest) == 6
    assert rest[0] == lost  # the lost configuration runs again first, within the budget
    knobs = [tuple(sorted(c.items())) for c in done + rest]
    assert len(set(knobs)) == 6  # no configuration twice across the sessions
    trials = _states(spec, tmp_path, (lost["method"], 20.0))
    assert "RUNNING" not in [t.state.name for t in trials]
    rerun = [t for t in trials if t.user_attrs.get("rerun_of") is not None]
    assert len(rerun) == 1 and trials[rerun[0].user_attrs["rerun_of"]].state.name == "FAIL"
    # A third session has nothing left to run.
    assert CellSearcher(spec, tmp_path).total == 0


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

    spec = validate({"methods": ["CG-SC-all"], "label_percents": [20], "trials_per_cell": 3})
    first = CellSearcher(spec, tmp_path)
    _drive(first, 1)
    lost = first.suggest("lost")  # handed out ...
    record = tmp_path / "trials" / "lost"  # ... and finished before the driver was killed
    record.mkdir(parents=True)
    (record / "params.json").write_text(json.dumps(lost))
    (record / "final.json").write_text(json.dumps(_result(0.42)))
    second = CellSearcher(spec, tmp_path)
    rest = [second.suggest(f"r{i}") for i in range(3)]
    assert rest[1:] == ["FINISHED", "FINISHED"] and isinstance(rest[0], dict)
    assert lost != rest[0] and second.remaining == 0  # 1 + lost + 1 more = the budget 3
    assert [t.value for t in _states(spec, tmp_path, ("CG-SC-all", 20.0)) if t.number == 1] == [
        0.42
    ]


def test_failed_trials_run_once_more_in_the_next_session_and_count_once(tmp_path):
    spec = validate({"methods": ["CG-SC-all"], "label_percents": [20], "trials_per_cell": 2})
    searcher = CellSearcher(spec, tmp_path)
    config = searcher.suggest("t0")
    searcher.suggest("t1")
    searcher.on_trial_complete("t0", error=True)  # e.g. trials/ was read-only
    searcher.on_trial_complete("t1", _result(float("nan")))  # diverged: never retried
    assert searcher.suggest("t2") == "FINISHED"  # within a session a failure is spent
    resumed = CellSearcher(spec, tmp_path)
    assert resumed.remaining == 1
    again = resumed.suggest("r0")
    assert again == config  # the errored configuration, once more
    resumed.on_trial_complete("r0", _result(0.25))
    assert resumed.suggest("r1") == "FINISHED"
    first, second, third = _states(spec, tmp_path, ("CG-SC-all", 20.0))
    assert (first.state.name, second.state.name, third.state.name) == ("FAIL", "FAIL", "COMPLETE")
    assert third.user_attrs["rerun_of"] == 0 and third.value == 0.25
    assert CellSearcher(spec, tmp_path).total == 0  # the diverged one is spent, not retried


def _fail_on_objective(tmp_path, trial_id):
    """The error record the worker writes when a trial's objective is not finite."""
    TrialRecords.of(tmp_path / "trials", trial_id).write_error(
        ObjectiveError("objective(s) not finite: {'val/guided_score_cos': nan}")
    )


def test_a_trial_whose_objective_failed_is_not_run_again_another_error_is(tmp_path):
    """The worker fails a trial whose objective is NaN (ObjectiveError): its networks trained and
    are cached, so run again it would measure the same NaN. The next session retries the other
    error, not it; also when a killed driver left it RUNNING and the next session settles it."""
    spec = validate({"methods": ["CG-SC-all"], "label_percents": [20], "trials_per_cell": 3})
    searcher = CellSearcher(spec, tmp_path)
    configs = [searcher.suggest(f"t{i}") for i in range(3)]
    _fail_on_objective(tmp_path, "t0")
    searcher.on_trial_complete("t0", error=True)  # its objective failed
    searcher.on_trial_complete("t1", error=True)  # something else (no error record)
    _fail_on_objective(tmp_path, "t2")  # then the driver is killed: t2 stays RUNNING
    resumed = CellSearcher(spec, tmp_path)  # settles t2 from its record
    assert resumed.remaining == 1
    assert resumed.suggest("r0") == configs[1]  # the other error's configuration, once more
    resumed.on_trial_complete("r0", _result(0.25))
    assert resumed.suggest("r1") == "FINISHED"
    states = [(t.state.name, t.user_attrs.get("diverged")) for t in
              _states(spec, tmp_path, ("CG-SC-all", 20.0))]  # fmt: skip
    assert states == [("FAIL", True), ("FAIL", None), ("FAIL", True), ("COMPLETE", None)]
    assert CellSearcher(spec, tmp_path).total == 0
