"""A Ray Train worker of an image trial killed mid-training: the worker group restarts and resumes
from its checkpoint (its own file: pytest-xdist runs it beside the other image e2e tests)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from cli_helpers import DDP_SPEC as SPEC
from cli_helpers import cli_env

pytestmark = pytest.mark.slow


def _parent(pid: int) -> int:
    """The parent pid of a process (0 once it is gone)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except FileNotFoundError:
        return 0
    return int(stat.rpartition(")")[2].split()[1])


def _train_workers_of(root: int) -> list[int]:
    """Ray Train worker processes descended from `root` (the study's driver started its own local
    Ray): never another test's cluster running beside it."""
    found = subprocess.run(
        ["pgrep", "-f", "ray::RayTrainWorker"], capture_output=True, text=True
    ).stdout.split()
    mine = []
    for pid in map(int, found):
        ancestor = pid
        while ancestor > 1 and ancestor != root:
            ancestor = _parent(ancestor)
        if ancestor == root:
            mine.append(pid)
    return mine


def test_a_killed_train_worker_is_restarted_and_resumes_from_its_checkpoint(tmp_path):
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
    # Its own artifact store: a network another test left in the session's default store would be
    # reused, and nothing would train.
    env = {
        **cli_env(),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "SC_GUIDANCE_ARTIFACT_STORE": str(tmp_path / "artifact-store"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "study", "run", "spec.yaml", "--verbose"],
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
            out = _train_workers_of(proc.pid)
            assert out, "no Train worker process of this study found"
            killed = int(out[0])
            os.kill(killed, signal.SIGKILL)
    assert proc.wait(timeout=120) == 0, "".join(lines[-40:])
    assert killed is not None, "".join(lines[-40:])
    uri = f"sqlite:///{tmp_path / 'studies' / 'failover' / 'mlflow.db'}"
    runs = load_runs(uri, "failover")
    runs = runs[runs["stage"] == "search"]  # after the evaluation classifier's stage trial
    assert len(runs) == 1 and runs["status"].iloc[0] == "FINISHED" and runs["fid"].notna().all()
    steps = [m.value for m in MlflowClient(uri).get_metric_history(runs["run_id"].iloc[0], "step")]
    # The restarted worker group resumed from the latest checkpoint: steps never go back to the
    # start.
    assert steps == sorted(steps) and len(set(steps)) == len(steps) and steps[-1] == 160, steps
