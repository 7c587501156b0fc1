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
    assert result.returncode == 0, result.stderr[-3000:]  # a failed trial is not a failed study
    assert (
        "1 failed" in result.stdout and "0 with guided_score_cos reach the table" in result.stdout
    )

    from mlflow.tracking import MlflowClient

    study_dir = tmp_path / "studies" / "diverging"
    client = MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("diverging")
    (run,) = client.search_runs([exp.experiment_id], "tags.role = 'trial'")
    assert run.info.status == "FAILED"
    assert run.data.tags["error_type"] == "FloatingPointError"
    assert "loss is" in run.data.tags["error_message"]
    assert int(run.data.tags["failed_at_step"]) >= 1
