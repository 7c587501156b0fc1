"""Shared by the CLI tests: run `study` as a user would (a new process), and tiny configs."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import yaml

# A toy trial that trains and evaluates in about a second.
# The driver's line for a trial's end: "  [1a2b3c4d] CG@20% finished, val/... · search 3/8 ...".
TRIAL_END = re.compile(r"^\s*\[\w+\] .* (finished|failed|stopped early)")

TOY_FAST = {
    "data.num_train": 300,
    "data.num_test": 200,
    "train.steps": 40,
    "train.steps_per_epoch": 20,
    "train.batch_size": 64,
    "model.hidden": 16,
    "model.depth": 1,
    "sample.sampler": "ode",
    "sample.num_steps": 8,
    "sample.num_per_class": 40,
    "eval.num_points": 100,
}


def cli_env() -> dict[str, str]:
    """The environment for a `study` process: the platform's own Ray defaults (token auth for a
    local cluster), not whatever the developer's shell sets."""
    return cli_env_of(os.environ)


def cli_env_of(environ: dict[str, str]) -> dict[str, str]:
    """environ without the developer's Ray settings (RAY_AUTH_MODE, RAY_ADDRESS)."""
    return {k: v for k, v in environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}


# A tiny-images study in under a minute on 2 cores (the image e2e tests): 2 epochs of 10 steps
# per network (each epoch reports), 4 sampler steps; a study of one trial took 72 s instead of the
# 94 s of 40 training, 8 sampler and 60 evaluation-classifier steps.
TINY_IMAGES_FAST = {
    "data.num_train": 192,
    "data.num_test": 96,
    "train.steps": 20,
    "train.steps_per_epoch": 10,
    "train.batch_size": 16,
    "sample.num_steps": 4,
    "sample.num_per_class": 12,
    "eval.num_points": 64,
    "eval.sigmas": [0.2],
    "eval.classifier_steps": 30,
}


def run_cli(
    *args: str, cwd: Path | str, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python -m study ARGS` in cwd; stdout and stderr captured as text."""
    # Each test's own artifact store (the user-level default would share networks across tests).
    base = {
        **cli_env(),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "SC_GUIDANCE_ARTIFACT_STORE": str(Path(cwd) / "artifact-store"),
    }
    # A session of its own: a study that overruns is stopped with everything it started (a cluster
    # left behind would slow every later test), and the test fails showing where the study was.
    proc = subprocess.Popen(
        [sys.executable, "-m", "study", *args], cwd=cwd, env={**base, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = _stop_group(proc)
        raise AssertionError(
            f"`study {' '.join(args)}` did not end within {timeout:.0f} s; the end of its output:\n"
            f"{stdout[-4000:]}\n--- stderr ---\n{stderr[-3000:]}"
        ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _stop_group(proc: subprocess.Popen) -> tuple[str, str]:
    """Ctrl-C to the study's process group (it stops its trials and Ray), then SIGKILL after 30 s;
    what it printed."""
    with contextlib.suppress(ProcessLookupError):  # (it may have ended meanwhile)
        os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()


def run_main(*args: str, cwd: Path | str, env: dict | None = None) -> subprocess.CompletedProcess:
    """study.cli.main(ARGS) in this process, as run_cli runs it in a new one (cwd, the per-test
    artifact store, stdout and stderr captured): for input refused before any work starts, where
    a new interpreter only adds its start (about 3 s). A command that started Ray stops it again
    (main's own clean-up)."""
    import contextlib
    import io

    from study.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.clear()
    os.environ.update({**cli_env_of(saved_env), **(env or {})})
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["SC_GUIDANCE_ARTIFACT_STORE"] = str(Path(cwd) / "artifact-store")
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as stop:  # argparse's own errors and --help
                code = stop.code if isinstance(stop.code, int) else 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def write_spec(folder: Path, filename: str = "spec", **fields: object) -> Path:
    """A spec file folder/<filename>.yaml whose study lives under folder/studies."""
    path = Path(folder) / f"{filename}.yaml"
    path.write_text(yaml.safe_dump({"storage": str(Path(folder) / "studies"), **fields}))
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (gloo process groups in tests)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Image trials on 2 Ray Train workers (gloo), one per method family (the image e2e tests).
DDP_SPEC = {
    "name": "ddp",
    "base_config": "tiny-images",
    "dataset": "tiny-images",
    "methods": ["CG-SC-all", "Joint-SC", "CFG-all"],
    "label_percents": [50],
    "num_trials": 3,
    "objectives": [{"metric": "guided_dsm", "mode": "min"}],
    "resources": {"cpus_per_trial": 0.95, "num_workers": 2, "max_concurrent_trials": 1},
    # Two scales and a cap of twice the largest: the sweep goes on past an edge optimum (rank 0
    # decides, every worker follows) at little cost.
    "guidance": {"scales": [1, 4], "max_scale": 8},
    "config": {
        "data.num_train": 128,
        "data.num_test": 64,
        "train.steps": 20,
        "train.steps_per_epoch": 10,
        "train.batch_size": 16,
        "sample.num_steps": 6,
        "sample.num_per_class": 2,
        "eval.prdc_k": 0,
        "sample.batch_size": 4,  # 2 chunks of samples: one per Train worker (sharded evaluation)
        "eval.num_points": 32,
        "eval.sigmas": [0.2],
        "eval.classifier_steps": 30,
    },
}


class S3Server:
    """moto's S3-compatible server on 127.0.0.1 (a real HTTP endpoint pyarrow and Ray talk to),
    with one bucket; env: what every process of a study needs to reach it."""

    def __init__(self, folder: Path, bucket: str = "studies"):
        import time

        self.port, self.bucket = free_port(), bucket
        self.env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        server = Path(sys.executable).with_name("moto_server")
        self.log = open(Path(folder) / "moto.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not self._answers():
            assert self.proc.poll() is None, (Path(folder) / "moto.log").read_text()
            assert time.monotonic() < deadline, "moto_server did not answer within 60 s"
            time.sleep(0.3)
        self.filesystem().create_dir(bucket)

    def _answers(self) -> bool:
        import socket

        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def filesystem(self):
        import pyarrow.fs

        return pyarrow.fs.S3FileSystem(
            access_key="test", secret_key="test", region="us-east-1",
            endpoint_override=f"127.0.0.1:{self.port}", scheme="http", allow_bucket_creation=True,
        )  # fmt: skip

    def files(self, prefix: str = "") -> list[str]:
        """Every object under bucket/prefix, as paths relative to the bucket."""
        import pyarrow.fs

        base = f"{self.bucket}/{prefix}".rstrip("/")
        found = self.filesystem().get_file_info(pyarrow.fs.FileSelector(base, recursive=True))
        return sorted(
            f.path[len(self.bucket) + 1 :] for f in found if f.type == pyarrow.fs.FileType.File
        )

    def stop(self) -> None:
        import signal

        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.log.close()


def assert_runs_follow_the_ledger(study_dir: Path, runs: list, cells: int) -> None:
    """The study's MLflow search runs (runs: MLflow Run objects) follow its ledger (optuna.db, one
    study per cell): one run per trial, linked both ways (the trial's tune_trial_id and
    mlflow_run_id), FINISHED exactly when the trial is COMPLETE, KILLED or FAILED when FAIL."""
    import optuna

    storage = f"sqlite:///{study_dir / 'optuna.db'}"
    names = optuna.get_all_study_names(storage)
    assert len(names) == cells, names
    ledger = [t for n in names for t in optuna.load_study(study_name=n, storage=storage).trials]
    search = {r.data.tags["trial_id"]: r for r in runs if r.data.tags.get("stage") == "search"}
    linked = {t.user_attrs.get("tune_trial_id") for t in ledger}
    assert set(search) <= linked, set(search) - linked  # no search run outside the ledger
    for trial in ledger:
        run = search.get(trial.user_attrs.get("tune_trial_id"))
        if run is None:  # a repeat never run, or asked for as the driver died: no run
            assert trial.state.name in ("FAIL", "PRUNED"), trial
            continue
        assert trial.user_attrs.get("mlflow_run_id") == run.info.run_id, (trial, run.info)
        if trial.state.name == "PRUNED":  # stopped early (ASHA): its run ended, tagged so
            assert run.data.tags.get("early_stopped") == "true", run.data.tags
        want = {"COMPLETE": {"FINISHED"}, "FAIL": {"KILLED", "FAILED"}, "PRUNED": {"FINISHED"}}
        assert run.info.status in want[trial.state.name], (trial.number, trial, run.info.status)


def table_methods(stdout: str) -> list[str]:
    """The methods of the compact console table `study run` / `table` / `resume` end with (its rows
    start with the method's name, followed by the values)."""
    from trainables.names import METHODS

    return [
        line.split()[0]
        for line in stdout.splitlines()
        if len(line.split()) > 1 and line.split()[0] in METHODS and "@" not in line
    ]


def assert_the_ledger_reads_as_the_runs(study_dir: Path, name: str) -> None:
    """The frame every view reads (analysis.ledger.ledger_runs: the ledger and the trial records)
    says what the study's MLflow runs say: every trial's status, stage, cell, run id, own params
    and numbers alike (times within 5 s: a record is written a moment after the run is made or
    ended); of its own only run_again (which trials taken down with a driver ran again) and a
    trial its driver asked for as it was killed, before it started."""
    import math

    import pandas as pd

    from analysis.ledger import ledger_runs
    from analysis.runs import load_runs

    sections = {"data", "train", "sample", "model", "loss", "eval", "sde"}  # a config's
    ledger = ledger_runs(study_dir, name).set_index("trial_id")
    runs = load_runs(f"sqlite:///{study_dir / 'mlflow.db'}", name).set_index("trial_id")
    assert ledger.index.is_unique and set(runs.index) <= set(ledger.index)
    # Of its own only a trial asked for as its driver was killed, before it could start (no run).
    unstarted = ledger.loc[sorted(set(ledger.index) - set(runs.index))]
    assert (unstarted["status"] == "KILLED").all() and unstarted["run_id"].isna().all(), unstarted
    ledger = ledger.loc[runs.index]
    again = ledger[ledger["run_again"]]
    assert (again["status"] == "KILLED").all() and (again["stage"] == "search").all()
    for column in ledger.columns.drop("run_again"):
        assert column in runs.columns or ledger[column].isna().all(), column
        for trial in ledger.index:
            mine, theirs = ledger.at[trial, column], runs.at[trial, column]
            if pd.isna(mine) and (pd.isna(theirs) or column.split(".")[0] in sections):
                continue  # a value the spec fixes: MLflow logs every resolved param, the ledger
                # holds the trial's own (its knobs; a final trial's seeds and choices)
            if column in ("start_time", "end_time"):
                if ledger.at[trial, "status"] in ("FINISHED", "FAILED"):
                    assert abs(mine - theirs) <= 5000, (trial, column, mine, theirs)
            elif isinstance(mine, float):
                assert math.isclose(mine, float(theirs), rel_tol=1e-9), (
                    trial,
                    column,
                    mine,
                    theirs,
                )
            else:
                assert mine == theirs, (trial, column, mine, theirs)
