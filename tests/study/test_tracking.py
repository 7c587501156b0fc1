"""The MLflow tracker and reconcile against a temporary SQLite store (no Ray cluster)."""

import json
import os
from types import SimpleNamespace

import pytest

from study.tracking import (
    STEP_METRIC,
    MLflowTracker,
    ensure_parent_run,
    open_tracking_store,
    reconcile,
)
from trainables.names import (
    ARTIFACTS_RECORD,
    ERROR_RECORD,
    FINAL_RECORD,
    SPENT_RECORD,
    TAGS_RECORD,
)


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = open_tracking_store(uri)  # as a study opens its store
    exp_id, parent = ensure_parent_run(client, "s", {"name": "s"}, tmp_path)
    return SimpleNamespace(uri=uri, client=client, exp_id=exp_id, parent=parent, root=tmp_path)


def _trial(trial_id, last_result=None):
    config = {"method": "CG", "data.label_percent": 5.0, "sample.guidance_scale": 2.0}
    return SimpleNamespace(trial_id=trial_id, config=config, last_result=last_result)


def _tracker(store):
    def full(params):
        return {**params, "train.steps": 10}

    return MLflowTracker(store.uri, store.exp_id, store.parent, store.root / "trials", full)


def _runs(store):
    return store.client.search_runs([store.exp_id], "tags.role = 'trial'")


def test_parent_run_is_created_once(store):
    again = ensure_parent_run(store.client, "s", {"name": "s"}, store.root)
    assert again == (store.exp_id, store.parent)


def test_one_run_per_trial_with_params_metrics_records_and_status(store):
    tracker = _tracker(store)
    trial = _trial("t1", last_result={"final": 1.0})
    record = store.root / "trials" / "t1"
    record.mkdir(parents=True)
    (record / ARTIFACTS_RECORD).write_text(json.dumps({"score": "/cache/score-abc"}))
    (record / TAGS_RECORD).write_text(json.dumps({"eval_classifier": "eval-1"}))
    tracker.on_trial_start(0, [], trial)
    tracker.on_trial_result(0, [], trial, {"training_iteration": 1, "score/loss": 2.0, "pid": 7})
    tracker.on_trial_result(
        0, [], trial, {"training_iteration": 2, "gen_accuracy": 0.5, "bad": float("nan")}
    )
    tracker.on_trial_complete(0, [], trial)
    (run,) = _runs(store)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.steps"] == "10" and run.data.params["method"] == "CG"
    assert run.data.tags["trial_id"] == "t1" and run.data.tags["study_run_id"] == store.parent
    assert (
        run.data.tags["artifact.score"] == "/cache/score-abc"
        and run.data.tags["eval_classifier"] == "eval-1"
    )
    assert (
        run.data.metrics["gen_accuracy"] == 0.5
        and "bad" not in run.data.metrics
        and "pid" not in run.data.metrics
    )
    assert run.data.metrics[STEP_METRIC] == 2


def test_a_trial_ending_without_its_final_result_is_tagged_early_stopped(store):
    tracker = _tracker(store)
    trial = _trial("t2", last_result={"eval_epoch": 1})
    tracker.on_trial_start(0, [], trial)
    tracker.on_trial_complete(0, [], trial)
    (run,) = _runs(store)
    assert run.data.tags["early_stopped"] == "true" and run.data.tags["stopped_at_epoch"] == "1"


def test_reconcile_keeps_one_run_per_trial_and_ends_running_ones_killed_with_the_reason(store):
    tracker = _tracker(store)
    for trial_id in ("a", "b"):
        tracker.run_for(_trial(trial_id))
    tracker.on_trial_complete(0, [], _trial("b"))  # b ended; a was running when the driver died
    duplicate = store.client.create_run(store.exp_id, tags={"role": "trial", "trial_id": "a"})
    fixed = reconcile(store.uri, store.exp_id)
    runs = {r.data.tags["trial_id"]: r for r in _runs(store)}
    assert fixed == 2 and len(_runs(store)) == 2
    assert store.client.get_run(duplicate.info.run_id).info.lifecycle_stage == "deleted"
    assert runs["a"].info.status == "KILLED" and runs["a"].data.tags["orphaned"] == "true"
    assert "runs its configuration again" in runs["a"].data.tags["orphaned_reason"]
    assert runs["b"].info.status == "FINISHED" and "orphaned" not in runs["b"].data.tags


def test_a_failed_trial_run_holds_the_reason_and_step(store):
    tracker = _tracker(store)
    trial = _trial("t4")
    record = store.root / "trials" / "t4"
    record.mkdir(parents=True)
    reason = {"type": "FloatingPointError", "message": "score: loss is inf at step 1", "step": 1}
    (record / ERROR_RECORD).write_text(json.dumps(reason))
    tracker.on_trial_start(0, [], trial)
    tracker.on_trial_error(0, [], trial)
    (run,) = _runs(store)
    assert run.info.status == "FAILED"
    assert run.data.tags["error_type"] == "FloatingPointError"
    assert run.data.tags["error_message"] == "score: loss is inf at step 1"
    assert run.data.tags["failed_at_step"] == "1"


def test_a_failure_outside_the_worker_is_read_from_tunes_error_file(store, tmp_path):
    tracker = _tracker(store)
    error_file = tmp_path / "error.txt"
    error_file.write_text("Traceback ...\nray.exceptions.RayActorError: the actor died")
    trial = SimpleNamespace(**vars(_trial("t5")), error_file=str(error_file))
    tracker.on_trial_error(0, [], trial)
    (run,) = _runs(store)
    assert run.data.tags["error_type"] == "RayActorError"
    assert run.data.tags["error_message"] == "the actor died"


def test_runs_of_another_study_in_the_same_experiment_are_never_touched(store):
    from analysis.runs import load_runs

    mine = MLflowTracker(store.uri, store.exp_id, store.parent, store.root, dict, "aaaa1111")
    other = MLflowTracker(store.uri, store.exp_id, store.parent, store.root, dict, "bbbb2222")
    mine.run_for(_trial("same-id"))  # both studies happen to have a trial with the same id
    other.run_for(_trial("same-id"))
    fixed = reconcile(store.uri, store.exp_id, study_id="aaaa1111")
    runs = {r.data.tags["study_id"]: r for r in _runs(store)}
    assert fixed == 1 and len(runs) == 2  # no "duplicate" deleted across studies
    assert runs["aaaa1111"].data.tags["orphaned"] == "true"
    assert (
        runs["bbbb2222"].info.status == "RUNNING" and "orphaned" not in runs["bbbb2222"].data.tags
    )
    assert list(load_runs(store.uri, "s", "bbbb2222")["run_id"]) == [runs["bbbb2222"].info.run_id]


def test_a_trial_that_finished_just_before_the_kill_is_finished_not_orphaned(store):
    tracker = _tracker(store)
    tracker.run_for(_trial("done"))  # the worker finished it; the driver died before hearing so
    record = store.root / "trials" / "done"
    record.mkdir(parents=True, exist_ok=True)  # the tracker wrote the run id there
    (record / FINAL_RECORD).write_text(json.dumps({"gen_accuracy": 0.7, "final": 1.0}))
    reconcile(store.uri, store.exp_id, record_root=store.root / "trials")
    (run,) = _runs(store)
    assert run.info.status == "FINISHED" and "orphaned" not in run.data.tags
    assert run.data.metrics["gen_accuracy"] == 0.7  # the final result, logged from its record


def test_a_trial_taken_down_after_storing_a_network_keeps_its_training_cost(store):
    """Its network stays in the cache (the rerun of its configuration reuses it, training
    nothing): the orphaned run carries the training its spent record holds."""
    tracker = _tracker(store)
    tracker.run_for(_trial("lost"))
    record = store.root / "trials" / "lost"
    spent = {"cost/steps_trained": 60.0, "cost/examples_trained": 3840.0,
             "cost/train_seconds": 4.5}  # fmt: skip
    (record / SPENT_RECORD).write_text(json.dumps(spent))
    tracker.run_for(_trial("early"))  # taken down before it stored anything
    start = {r.data.tags["trial_id"]: r.info.start_time for r in _runs(store)}
    heard = start["lost"] + 4000  # its last record, 4 s after its start; settled much later
    for path in record.iterdir():
        os.utime(path, ns=(heard * 1_000_000, heard * 1_000_000))
    early = store.root / "trials" / "early"
    for path in early.iterdir():
        os.utime(path, ns=(start["early"] * 1_000_000,) * 2)
    reconcile(store.uri, store.exp_id, record_root=store.root / "trials")
    runs = {r.data.tags["trial_id"]: r for r in _runs(store)}
    assert {r.info.status for r in runs.values()} == {"KILLED"}
    assert {k: runs["lost"].data.metrics[k] for k in spent} == spent
    assert not any(k.startswith("cost/") for k in runs["early"].data.metrics)
    # Each ends when it was last heard of, not when the next session settled it (the dead
    # session's wall in the compute accounting ends with its trials).
    assert runs["lost"].info.end_time == heard
    assert runs["early"].info.end_time == start["early"]


def test_a_trial_that_finished_as_its_driver_died_ends_when_its_record_was_written(store):
    tracker = _tracker(store)
    run_id = tracker.run_for(_trial("done"))
    start = store.client.get_run(run_id).info.start_time
    record = store.root / "trials" / "done"
    (record / FINAL_RECORD).write_text(json.dumps({"gen_accuracy": 0.7, "final": 1.0}))
    for path in record.iterdir():
        os.utime(path, ns=((start + 2500) * 1_000_000,) * 2)
    reconcile(store.uri, store.exp_id, record_root=store.root / "trials")
    assert store.client.get_run(run_id).info.end_time == start + 2500


def test_diagnostics_go_to_a_table_artifact_and_load_runs_reads_them_back(store, tmp_path):
    """A final result's per-scale, per-class, per-band and reuse numbers are one table artifact,
    not metrics; load_runs gives them back as columns, also after the study's folder moved."""
    import shutil

    from analysis.runs import load_runs

    tracker = _tracker(store)
    trial = _trial("t9", last_result={"final": 1.0})
    final = {
        "training_iteration": 1, "final": 1.0, "gen_accuracy": 0.5, "val/gen_accuracy": 0.6,
        "curve/gen_accuracy/g2": 0.55, "val/curve/gen_accuracy/g2": 0.65,
        "gen_accuracy_class1": 0.4, "sc_ratio_band3": 1.1, "artifact_reused/score": 1.0,
    }  # fmt: skip
    tracker.on_trial_start(0, [], trial)
    tracker.on_trial_result(0, [], trial, final)
    tracker.on_trial_complete(0, [], trial)
    (run,) = _runs(store)
    diagnostics = {"curve/gen_accuracy/g2", "val/curve/gen_accuracy/g2", "gen_accuracy_class1",
                   "sc_ratio_band3", "artifact_reused/score"}  # fmt: skip
    assert not diagnostics & set(run.data.metrics)
    assert {"gen_accuracy", "val/gen_accuracy"} <= set(run.data.metrics)
    table = json.loads(
        (store.root / "mlartifacts").joinpath(*_artifact_parts(run), "diagnostics.json").read_text()
    )
    rows = {r[0]: r for r in table["data"]}
    assert table["columns"] == ["key", "split", "metric", "per", "index", "value"]
    assert rows["val/curve/gen_accuracy/g2"][1:] == ["val", "gen_accuracy", "scale", 2.0, 0.65]
    assert rows["gen_accuracy_class1"][1:] == ["test", "gen_accuracy", "class", 1, 0.4]
    assert rows["artifact_reused/score"][1:] == ["test", "artifact_reused", "network", "score", 1]
    loaded = load_runs(store.uri, "s").iloc[0]
    assert loaded["curve/gen_accuracy/g2"] == 0.55 and loaded["sc_ratio_band3"] == 1.1
    assert loaded["gen_accuracy"] == 0.5
    # The study's folder moved: its artifacts are found beside its SQLite store.
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    shutil.move(tmp_path, moved)
    try:
        again = load_runs(f"sqlite:///{moved / 'mlflow.db'}", "s").iloc[0]
        assert again["gen_accuracy_class1"] == 0.4
    finally:
        shutil.move(moved, tmp_path)


def _artifact_parts(run):
    """The run's artifact folder below its store's mlartifacts folder."""
    parts = run.info.artifact_uri.split("/mlartifacts/", 1)[1].split("/")
    return parts


def test_a_taken_down_trial_written_again_from_its_records_keeps_its_training_cost(tmp_path):
    """`study table` on a lost store: a trial with params and spent records but no final or error
    record gets its run back as reconcile left it: KILLED, orphaned, with the training it spent,
    ending at its last record."""
    from analysis.runs import load_runs
    from study.runner import rebuild_runs
    from study.spec import validate

    study_dir = tmp_path / "rb"
    record = study_dir / "trials" / "lost"
    record.mkdir(parents=True)
    raw = {"name": "rb", "dataset": "gmm2", "methods": ["CG"], "label_percents": [20],
           "storage": str(tmp_path)}  # fmt: skip
    spec = validate(raw).replace(tracking_uri=f"sqlite:///{study_dir / 'mlflow.db'}")
    (record / "params.json").write_text(json.dumps({"method": "CG", "data.label_percent": 20.0}))
    (record / SPENT_RECORD).write_text(json.dumps({"cost/steps_trained": 60.0}))
    os.utime(record / SPENT_RECORD, ns=(1_700_000_004_000_000_000,) * 2)
    os.utime(record / "params.json", ns=(1_700_000_000_000_000_000,) * 2)
    assert rebuild_runs(spec, study_dir) == 1
    (run,) = load_runs(spec.tracking_uri, "rb").to_dict("records")
    assert run["status"] == "KILLED" and run["cost/steps_trained"] == 60.0
    assert (run["start_time"], run["end_time"]) == (1_700_000_000_000, 1_700_000_004_000)
    from mlflow.tracking import MlflowClient

    assert MlflowClient(spec.tracking_uri).get_run(run["run_id"]).data.tags["orphaned"] == "true"
