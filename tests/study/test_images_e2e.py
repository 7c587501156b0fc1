"""Image trials through Ray Train with 2 CPU workers (gloo), one per method family, via the CLI."""

import os
import subprocess
import sys

import pytest
import yaml
from cli_helpers import cli_env, run_cli

pytestmark = pytest.mark.slow

SPEC = {
    "name": "ddp",
    "base_config": "tiny-images",
    "dataset": "tiny-images",
    "methods": ["CG-SC-all", "Joint-SC", "CFG-all"],
    "label_percents": [50],
    "num_trials": 3,
    "objectives": [{"metric": "guided_dsm", "mode": "min"}],
    "resources": {"cpus_per_trial": 0.95, "num_workers": 2, "max_concurrent_trials": 1},
    "config": {
        "data.num_train": 128,
        "data.num_test": 64,
        "train.steps": 20,
        "train.steps_per_epoch": 10,
        "train.batch_size": 16,
        "sample.num_steps": 6,
        "sample.num_per_class": 2,
        "sample.batch_size": 4,  # 2 chunks of samples: one per Train worker (sharded evaluation)
        "eval.num_points": 32,
        "eval.sigmas": [0.2],
        "eval.classifier_steps": 30,
    },
}


def _cli(*args, cwd, timeout=600):
    return run_cli(*args, cwd=cwd, timeout=timeout)


def test_each_family_trains_on_two_train_workers(tmp_path):
    (tmp_path / "spec.yaml").write_text(
        yaml.safe_dump({**SPEC, "storage": str(tmp_path / "studies")})
    )
    result = _cli("run", "spec.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "guided_dsm" in result.stdout and "| Joint-SC |" in result.stdout
    study_dir = tmp_path / "studies" / "ddp"
    from mlflow.tracking import MlflowClient

    from analysis.runs import load_runs

    uri = f"sqlite:///{study_dir / 'mlflow.db'}"
    runs = load_runs(uri, "ddp")
    assert (runs["stage"] == "shared").sum() == 1  # the evaluation classifier's stage trial
    runs = runs[runs["stage"] == "search"]
    assert len(runs) == 3 and (runs["status"] == "FINISHED").all()
    assert set(runs["method"]) == {"CG-SC-all", "Joint-SC", "CFG-all"}
    assert runs["guided_dsm"].notna().all()
    client = MlflowClient(uri)
    for run_id in runs["run_id"]:
        assert [a.path for a in client.list_artifacts(run_id, "samples")] == ["samples/samples.png"]
    # Rank 0 handed its checkpoints to Ray Train (the latest one is kept per trial).
    kept = list((study_dir / "train").glob("train-*/checkpoint_*/checkpoint.pt"))
    assert len(kept) == 3
    # Every artifact the workers trained is in the cache once: score, classifier, joint,
    # conditional.
    store = tmp_path / "artifact-store"  # run_cli's per-test store
    # (and the study's evaluation classifier and reference statistics, in store/evaluation)
    assert (store / "evaluation" / "eval-classifiers").is_dir()
    assert sorted(p.name.split("-")[0] for p in store.iterdir() if p.name != "evaluation") == [
        "classifier",
        "conditional",
        "joint",
        "score",
    ]


def test_more_workers_than_the_cluster_has_is_refused_before_anything_is_written(tmp_path):
    spec = {
        **SPEC,
        "storage": str(tmp_path / "studies"),
        "resources": {"cpus_per_trial": 1, "num_workers": 64},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = _cli("run", "spec.yaml", cwd=tmp_path, timeout=180)
    assert result.returncode == 2
    assert "Train worker(s)" in result.stderr and "lower resources.num_workers" in result.stderr
    assert not (tmp_path / "studies").exists()


def test_a_killed_train_worker_is_restarted_and_resumes_from_its_checkpoint(tmp_path):
    import signal
    import time

    from mlflow.tracking import MlflowClient

    from analysis.runs import load_runs

    spec = {
        **SPEC,
        "name": "failover",
        "methods": ["Cond"],
        "num_trials": 1,
        "storage": str(tmp_path / "studies"),
        "resources": {
            "cpus_per_trial": 0.95,
            "num_workers": 2,
            "max_concurrent_trials": 1,
            "max_failures": 2,
        },
        "config": {**SPEC["config"], "train.steps": 160, "train.steps_per_epoch": 20},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {**cli_env(), "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "study", "run", "spec.yaml"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killed = None
    lines = []
    deadline = time.monotonic() + 500
    for line in proc.stdout:
        lines.append(line)
        assert time.monotonic() < deadline, "".join(lines[-30:])
        if killed is None and "epoch 2 " in line:
            # A real failure: SIGKILL one Ray Train worker process in the middle of training.
            out = subprocess.run(
                ["pgrep", "-f", "ray::RayTrainWorker"], capture_output=True, text=True
            ).stdout.split()
            assert out, "no Train worker process found"
            killed = int(out[0])
            os.kill(killed, signal.SIGKILL)
    assert proc.wait(timeout=120) == 0, "".join(lines[-40:])
    assert killed is not None
    uri = f"sqlite:///{tmp_path / 'studies' / 'failover' / 'mlflow.db'}"
    runs = load_runs(uri, "failover")
    runs = runs[runs["stage"] == "search"]  # after the evaluation classifier's stage trial
    assert len(runs) == 1 and runs["status"].iloc[0] == "FINISHED" and runs["fid"].notna().all()
    steps = [m.value for m in MlflowClient(uri).get_metric_history(runs["run_id"].iloc[0], "step")]
    # The restarted worker group resumed from the latest checkpoint: steps never go back to the
    # start.
    assert steps == sorted(steps) and len(set(steps)) == len(steps) and steps[-1] == 160, steps
