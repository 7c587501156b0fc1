"""Ctrl-C during a study: exit 130, the resume command printed, the parent run KILLED, and
`study resume` finishes the study."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from cli_helpers import (
    TOY_FAST,
    assert_runs_follow_the_ledger,
    assert_the_ledger_reads_as_the_runs,
    cli_env,
    run_cli,
    write_spec,
)

pytestmark = pytest.mark.slow


def _runs(study_dir, role):
    """The study's runs of one role (study), or every trial run (trial: search, shared, final)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(study_dir.name)
    where = "tags.role != 'study'" if role == "trial" else f"tags.role = '{role}'"
    return client.search_runs([exp.experiment_id], where)


def test_ctrl_c_exits_130_and_the_study_resumes(tmp_path):
    spec = write_spec(
        tmp_path,
        name="interrupted",
        dataset="gmm2",
        methods=["CG", "CFG-all"],
        label_percents=[20],
        num_trials=6,
        resources={"max_concurrent_trials": 1},
        config={**TOY_FAST, "train.steps": 200, "train.steps_per_epoch": 20},
    )
    env = {  # its own artifact store: networks other tests trained would not train again
        **cli_env(),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "SC_GUIDANCE_ARTIFACT_STORE": str(tmp_path / "artifact-store"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "study", "run", str(spec), "--verbose"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Wait for the first epoch report, then press Ctrl-C once.
    deadline = time.time() + 240
    for line in proc.stdout:
        if ": epoch " in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=240)
    study_dir = tmp_path / "studies" / "interrupted"
    assert proc.returncode == 130, stderr[-2000:]
    assert f"study resume {study_dir}" in stderr
    (parent,) = _runs(study_dir, "study")
    assert parent.info.status == "KILLED"
    assert all(r.info.status != "RUNNING" for r in _runs(study_dir, "trial"))
    # The interrupted session ended: its record holds its wall (a killed one's would not).
    (session,) = (study_dir / "sessions").glob("search-*.json")
    assert json.loads(session.read_text())["wall"] > 0, session.read_text()

    resumed = run_cli("resume", str(study_dir), cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (parent,) = _runs(study_dir, "study")
    trials = _runs(study_dir, "trial")
    assert parent.info.status == "FINISHED"
    assert sorted({r.data.tags["method"] for r in trials if r.info.status == "FINISHED"}) == [
        "CFG-all",
        "CG",
    ]
    assert len({r.data.tags["trial_id"] for r in trials}) == len(trials)  # one run per trial
    assert_runs_follow_the_ledger(study_dir, trials, cells=2)  # the interrupted trial: FAIL, KILLED
    assert_the_ledger_reads_as_the_runs(study_dir, "interrupted")
    # FIFO: an interrupted trial is resumed, never mistaken for one ASHA stopped.
    assert not any(r.data.tags.get("early_stopped") for r in trials)
    # One trial at a time on a local cluster: each evaluation borrowed every CPU no trial held
    # (resources.lend_idle_cpus, trainables.threads), and training did not.
    searched = [
        r for r in trials if r.info.status == "FINISHED" and r.data.tags["stage"] == "search"
    ]
    assert searched and {r.data.metrics["cost/eval_threads"] for r in searched} == {os.cpu_count()}
