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
