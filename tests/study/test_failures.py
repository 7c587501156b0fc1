"""A diverging trial through the CLI: its MLflow run ends FAILED and says why."""

import pytest
from cli_helpers import TOY_FAST, run_cli, write_spec

pytestmark = pytest.mark.slow


def test_a_diverging_trial_run_holds_the_exception_and_the_step(tmp_path):
    spec = write_spec(
        tmp_path,
        name="diverging",
        dataset="gmm2",
        methods=["Cond"],
        label_percents=[50],
        num_trials=1,
        resources={"max_failures": 0},
        config={**TOY_FAST, "train.lr": 1e30, "train.warmup": 1},
    )
    result = run_cli("run", str(spec), cwd=tmp_path, timeout=400)
    # A study with a cell that has no finished trial fails, one line per such cell, no traceback.
    assert result.returncode == 1, result.stderr[-3000:]
    assert (
        "1 failed" in result.stdout and "0 with guided_score_cos reach the table" in result.stdout
    )
    errors = result.stderr.strip().splitlines()
    assert errors[0] == "study: 1 of 1 cells have no finished trial:", result.stderr[-3000:]
    assert errors[1].startswith("  Cond@50%: no finished trial; first error: FloatingPointError")
    assert "Traceback" not in result.stderr and len(errors) == 3

    from mlflow.tracking import MlflowClient

    study_dir = tmp_path / "studies" / "diverging"
    client = MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("diverging")
    (run,) = client.search_runs([exp.experiment_id], "tags.role = 'trial'")
    assert run.info.status == "FAILED"
    assert run.data.tags["error_type"] == "FloatingPointError"
    assert "loss is" in run.data.tags["error_message"]
    assert int(run.data.tags["failed_at_step"]) >= 1


def _immutable(folder, on):
    import subprocess

    return subprocess.run(["chattr", "+i" if on else "-i", str(folder)], capture_output=True)


def test_trials_that_failed_on_a_read_only_folder_finish_on_resume_and_every_store_agrees(
    tmp_path,
):
    import optuna

    from analysis import load_study

    study_dir = tmp_path / "studies" / "readonly"
    (study_dir / "trials").mkdir(parents=True)
    if _immutable(study_dir / "trials", True).returncode != 0:
        pytest.skip("chattr +i is not available here (needs root on ext4 / xfs)")
    spec = write_spec(
        tmp_path,
        name="readonly",
        dataset="gmm2",
        methods=["CG", "CG-SC-all"],
        label_percents=[20],
        trials_per_cell=2,
        resources={"max_failures": 0},
        config=TOY_FAST,
    )
    try:
        first = run_cli("run", str(spec), cwd=tmp_path, timeout=400)
    finally:
        _immutable(study_dir / "trials", False)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "2 of 2 cells have no finished trial" in first.stderr
    assert "PermissionError" in first.stderr and "Traceback" not in first.stderr
    again = run_cli("resume", str(study_dir), cwd=tmp_path, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = load_study(study_dir).trials
    # The failed runs are kept (FAILED, with their reason); the resume ran each configuration
    # once more as a new trial: CG once, CG-SC-all twice.
    assert sorted(trials["status"]) == ["FAILED"] * 3 + ["FINISHED"] * 3, trials["status"]
    storage = f"sqlite:///{study_dir / 'optuna.db'}"
    ledger = [
        t
        for name in ("readonly/CG@20%", "readonly/CG-SC-all@20%")
        for t in optuna.load_study(study_name=name, storage=storage).get_trials()
    ]
    states = sorted(t.state.name for t in ledger)
    assert states == ["COMPLETE"] * 3 + ["FAIL"] * 3, states  # the same story as MLflow's
    reruns = [t.user_attrs.get("rerun_of") for t in ledger if t.state.name == "COMPLETE"]
    assert sorted(reruns) == [0, 0, 1], reruns  # each COMPLETE names the FAIL it ran again
