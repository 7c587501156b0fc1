"""kill -9 of the driver at several points, then `study resume`: the ledger (optuna.db) holds each
cell's exact budget of finished trials, MLflow one run per trial with none left RUNNING."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cli_helpers import (
    TOY_FAST,
    TRIAL_END,
    assert_runs_follow_the_ledger,
    assert_the_ledger_reads_as_the_runs,
    cli_env,
    table_methods,
)

from trainables.names import FINAL_RECORD, SPENT_RECORD

pytestmark = pytest.mark.slow

SPEC = {
    "name": "killed",
    "dataset": "gmm2",
    "methods": ["CG-SC-all", "CFG-all"],
    "label_percents": [20],
    "num_trials": 5,
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "resources": {"max_concurrent_trials": 2},
    "config": {**TOY_FAST, "train.steps": 80},
}


@pytest.fixture(autouse=True)
def _own_artifact_store(tmp_path, monkeypatch):
    # Each test's own store: with the user-level default a network trained by an earlier test
    # would be reused, and the studies here would train (and stage) nothing shared.
    monkeypatch.setenv("SC_GUIDANCE_ARTIFACT_STORE", str(tmp_path / "artifact-store"))


def _env():
    return {**cli_env(), "MLFLOW_DISABLE_TELEMETRY": "true"}


def _runs(study_dir):
    from analysis.runs import load_runs

    return load_runs(f"sqlite:///{study_dir / 'mlflow.db'}", "killed")


def test_kill_then_resume_keeps_one_run_per_trial(tmp_path):
    spec = {**SPEC, "storage": str(tmp_path / "studies")}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    study_dir = tmp_path / "studies" / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "study", "run", "spec.yaml", "--verbose"],  # every epoch's line
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    seen_end = False
    try:
        # Kill the driver once one trial has ended and another has reported an epoch since.
        for line in proc.stdout:
            assert time.monotonic() < deadline, "study did not progress"
            if TRIAL_END.search(line):
                seen_end = True
            elif seen_end and "epoch" in line:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert seen_end, "the study ended before it could be interrupted"
    before = _runs(study_dir)
    assert (before["status"] == "RUNNING").any(), before[["trial_id", "status"]]
    interrupted = set(before.loc[before["status"] == "RUNNING", "trial_id"])

    resumed = subprocess.run(
        [sys.executable, "-m", "study", "resume", str(study_dir)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert {"CG-SC-all", "CFG-all"} <= set(table_methods(resumed.stdout))

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    every = _runs(study_dir)
    assert every["trial_id"].is_unique and interrupted <= set(every["trial_id"])
    # A trial that started after Tune's last experiment checkpoint is unknown to the restored study:
    # its run is kept, ended KILLED and tagged orphaned; every other run is one of the study's
    # trials.
    # The runs of the trials the kill took down are kept, ended KILLED and tagged orphaned (the
    # resume ran their configurations again as new trials); every other run finished.
    orphaned = {r for r in every["run_id"] if client.get_run(r).data.tags.get("orphaned") == "true"}
    assert (every.loc[every["run_id"].isin(orphaned), "status"] == "KILLED").all()
    for run_id in every.loc[every["trial_id"].isin(interrupted), "run_id"]:
        tags = client.get_run(run_id).data.tags  # taken down, or finished as the driver died
        assert run_id in orphaned or tags.get("finished_before_the_driver_was_killed") == "true"
    after = every[~every["run_id"].isin(orphaned)]
    # Exactly the budget: a configuration the kill lost ran again within it.
    assert len(after) == 5, every[["trial_id", "status"]]
    assert (after["status"] == "FINISHED").all(), every[["trial_id", "status"]]
    # A run is either stopped early (no final evaluation) or carries the final metrics.
    assert (after["early_stopped"] == after["final"].isna()).all()
    # Every (method, label %) cell keeps a completed trial (the first trial of a cell to reach a
    # rung always goes on).
    completed = after[~after["early_stopped"]]
    assert set(completed["method"]) == {"CG-SC-all", "CFG-all"}
    assert "RUNNING" not in _optuna_states(study_dir, 2)


FIFO_SPEC = {
    "name": "killed3",
    "dataset": "gmm2",
    "methods": ["CG-SC-all", "Cond"],  # 2 trials per CG-SC-all cell, Cond trains once
    "label_percents": [20, 100],
    "num_trials": 6,
    "resources": {"max_concurrent_trials": 2},
    "config": {**TOY_FAST, "train.steps": 60},
}


def _cell_trials(study_dir, cells):
    import optuna

    storage = f"sqlite:///{study_dir / 'optuna.db'}"
    names = optuna.get_all_study_names(storage)  # one study per (method, label %) cell
    assert len(names) == cells
    return {n: optuna.load_study(study_name=n, storage=storage).get_trials() for n in names}


def _optuna_states(study_dir, cells=4):
    return [t.state.name for ts in _cell_trials(study_dir, cells).values() for t in ts]


def _training_steps(stdout):
    found = re.search(r"compute: ([\d,]+) training steps", stdout)
    assert found is not None, stdout[-1500:]
    return int(found.group(1).replace(",", ""))


def _session(sid):
    """The pids of a session's processes (the driver's, which Ray's workers share)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state ppid pgrp session ...
        except (OSError, IndexError):
            continue  # ended meanwhile
        if int(fields[3]) == sid:
            pids.append(int(stat.parent.name))
    return pids


def _signal(pids, sig):
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _kill_once_the_last_trial_stored_a_network_and_evaluates(records, sid, ended, seconds=90.0):
    """SIGKILL the whole session at the moment the last trial's records hold its spent training (a
    network in the cache) but no final result, and every other trial (`ended` of them) has its
    final result: killed there, its network is kept and reused, not retrained. Checked on the
    frozen session (SIGSTOP, then the records, then SIGKILL or SIGCONT), so the trial cannot write
    its final result between the check and the kill (seen: a trial that finished during the kill
    made the study whole, and the scenario was lost). Watched from before the second-to-last
    trial's end line: the two slots' last trials run together, and the console's line for one may
    come after the other's window (seen under load: the kill point never came)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frozen = _session(sid)
        _signal(frozen, signal.SIGSTOP)
        frozen += [pid for pid in _session(sid) if pid not in frozen]  # started meanwhile
        _signal(frozen, signal.SIGSTOP)
        folders = list(records.glob("*"))
        final = [(f / FINAL_RECORD).exists() for f in folders]
        if sum(final) == ended and any(
            (f / SPENT_RECORD).exists() and not done for f, done in zip(folders, final)
        ):
            _signal(frozen, signal.SIGKILL)
            return
        _signal(frozen, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError(
        f"the last trial under {records} did not store a network, then go on, in {seconds} s"
    )


# The training steps of FIFO_SPEC run once without a kill: every network trains train.steps once:
# CG-SC-all's unconditional score network, shared by its two label % (the stage trial), one
# classifier per CG-SC-all trial (2 per cell, no lambda_SC twice), and Cond's conditional score
# network per label % (no knob: one trial per cell).
CLEAN_RUN_STEPS = FIFO_SPEC["config"]["train.steps"] * (1 + 2 * 2 + 1 * 2)


@pytest.mark.parametrize(
    "kill_after",
    [
        "first epoch",  # the first trials are training; nothing has ended
        3,  # trials ended (test_kill_then_resume_keeps_one_run_per_trial kills after 1)
        6,  # of 7 (6 search trials and the shared score network's stage): the last one runs,
        # killed once it has stored its network (its rerun reuses it) when the kill can see that
    ],
    ids=["first epoch", "3 trials ended", "during the last trial"],
)
def test_a_killed_driver_resumes_to_every_cell_with_nothing_left_running(tmp_path, kill_after):
    from mlflow.tracking import MlflowClient

    (tmp_path / "spec.yaml").write_text(
        yaml.safe_dump({**FIFO_SPEC, "storage": str(tmp_path / "studies")})
    )
    study_dir = tmp_path / "studies" / "killed3"
    proc = subprocess.Popen(
        [sys.executable, "-m", "study", "run", "spec.yaml", "--verbose"],  # every epoch's line
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    ended = 0
    try:
        watch = kill_after - 1 if kill_after == 6 else kill_after  # (the last trial: below)
        for line in proc.stdout:
            ended += bool(TRIAL_END.search(line))
            if (kill_after == "first epoch" and ": epoch " in line) or ended == watch:
                break
        if kill_after == 6:  # the machine lost: driver and trials (own process groups) at once
            _kill_once_the_last_trial_stored_a_network_and_evaluates(
                study_dir / "trials", proc.pid, ended=kill_after
            )
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, mid-study
        proc.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):  # gone already after a session kill
            os.killpg(proc.pid, signal.SIGKILL)  # then the Ray processes it leaves behind
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # Right after the kill, before any resume: no driver holds the study, so nothing is shown
    # running, no time left is claimed, and the resume command is named.
    killed = subprocess.run(
        [sys.executable, "-m", "study", "status", str(study_dir)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert killed.returncode == 0, killed.stderr[-2000:]  # each kill point follows a trial start
    head = killed.stdout.splitlines()[0]
    assert " 0 running" in head and "left" not in head, head
    assert f"not running now (resume it: study resume {study_dir})" in head, head
    assert "running" not in "".join(killed.stdout.splitlines()[1:]), killed.stdout
    resume_began = time.time() * 1000
    resumed = subprocess.run(
        [sys.executable, "-m", "study", "resume", str(study_dir)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    # The resumed session's live status counts the study's trials, the killed session's
    # finished ones too: its last trial's end line has every cell's budget ended.
    budget = FIFO_SPEC["num_trials"]
    assert f"search {budget}/{budget}, stage 1/1 ended" in resumed.stdout, resumed.stdout[-3000:]
    client = MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("killed3")
    runs = client.search_runs([exp.experiment_id], "tags.role != 'study'")  # every trial
    ids = [r.data.tags["trial_id"] for r in runs]
    assert len(ids) == len(set(ids))  # one run per trial
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert all(r.data.tags.get("orphaned") == "true" for r in killed)  # and it says why
    # Taken down with the killed session, they end within it (not when the resume settled them).
    assert all(r.info.end_time < resume_began for r in killed), killed
    finished = [r for r in runs if r.info.status == "FINISHED"]
    # The shared score model's stage trial (the first to start) finished once the study resumed.
    stages = [r for r in finished if r.data.tags.get("stage") == "shared"]
    # (finished before the kill, resumed by Tune, or lost after the last save and handed out again)
    assert [r.data.tags["shared_artifact"] for r in stages] == ["score"]
    assert len(list((tmp_path / "artifact-store").glob("score-*"))) == 1  # trained once
    finished = [r for r in finished if r.data.tags.get("stage") == "search"]
    assert len(finished) == FIFO_SPEC["num_trials"]  # the budget, lost configurations included
    # Every (method, label %) cell has a finished trial, so the table has every cell.
    cells = {(r.data.tags["method"], float(r.data.tags["label_percent"])) for r in finished}
    assert cells == {(m, p) for m in ("CG-SC-all", "Cond") for p in (20.0, 100.0)}
    for method in ("CG-SC-all", "Cond"):
        assert method in table_methods(resumed.stdout)
    assert "RUNNING" not in _optuna_states(study_dir)
    # In the ledger: every cell holds exactly its budget of COMPLETE trials, no configuration
    # twice (a lost configuration ran again, as a new trial linked to the lost one).
    for name, trials in _cell_trials(study_dir, 4).items():
        done = [t for t in trials if t.state.name == "COMPLETE"]
        assert len(done) == (1 if "Cond" in name else 2), (name, [t.state for t in trials])
        assert len({tuple(sorted(t.params.items())) for t in done}) == len(done)
        assert all(t.state.name in ("COMPLETE", "FAIL") for t in trials)
    assert_runs_follow_the_ledger(study_dir, runs, cells=4)
    assert_the_ledger_reads_as_the_runs(study_dir, "killed3")
    status = subprocess.run(
        [sys.executable, "-m", "study", "status", str(study_dir)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert status.returncode == 0 and "all ended" in status.stdout, status.stdout[-1500:]
    assert "pending" not in status.stdout.split("\n", 1)[1], status.stdout
    # Read from the ledger: a trial taken down with the killed driver is no failure, and the one
    # that ran its configuration again stands for it (the cells' budgets, not one more).
    head = status.stdout.splitlines()[0]
    assert " failed" not in head, status.stdout
    assert head.startswith(f"search trials {FIFO_SPEC['num_trials']}/{FIFO_SPEC['num_trials']}, ")
    # The compute accounting counts the finished trials of every session: the training steps
    # are a clean run's (a network the kill interrupted continued from its checkpoint, and the
    # trials it took down are not counted), and useful work stays within the slots' time.
    assert _training_steps(resumed.stdout) == CLEAN_RUN_STEPS
    useful = re.search(r"(\d+)% useful work", resumed.stdout)
    assert useful is not None and 0 < int(useful.group(1)) <= 100, resumed.stdout[-1500:]
