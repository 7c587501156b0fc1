"""`study server`: the team's MLflow server, and studies logging to it over HTTP."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from cli_helpers import TOY_FAST, cli_env, run_cli, write_spec

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    env = {**cli_env(), "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "study", "server", "--store", str(tmp_path / "server"),
         "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240  # a loaded machine (pytest-xdist)
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
    else:
        raise AssertionError("study server did not answer within 240 s")
    yield url, port
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_four_concurrent_trials_log_over_http_with_no_run_lost_or_duplicated(tmp_path, server):
    from mlflow.tracking import MlflowClient

    url, port = server
    # A second server on the same port is refused before it starts.
    busy = run_cli("server", "--store", str(tmp_path / "other"), "--port", str(port), cwd=tmp_path)
    assert busy.returncode == 2 and "cannot listen" in busy.stderr
    spec = write_spec(
        tmp_path,
        name="http",
        dataset="gmm2",
        methods=["CG-SC-all", "Cond", "CFG-all"],
        label_percents=[20],
        trials_per_cell=2,
        guidance={"scales": [1, 2]},
        tracking_uri=url,
        resources={"cpus_per_trial": 0.5, "max_concurrent_trials": 4},
        config=TOY_FAST,
    )
    result = run_cli("run", str(spec), "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    client = MlflowClient(url)
    exp = client.get_experiment_by_name("http")
    runs = client.search_runs([exp.experiment_id], "tags.role = 'trial'", max_results=1000)
    ids = [r.data.tags["trial_id"] for r in runs]
    assert len(ids) == len(set(ids))  # none duplicated
    search = [r for r in runs if r.data.tags["stage"] == "search"]
    # CG-SC-all x 2 trials, Cond and CFG-all x 1 (4 slots, the score model's stage trial first):
    # none lost.
    assert len(search) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert all("guided_score_cos" in r.data.metrics for r in search)
    # Artifacts travel over HTTP into the server's store (the guidance curve of a guided trial).
    guided = next(r for r in search if r.data.tags["method"] == "CG-SC-all")
    plots = [a.path for a in client.list_artifacts(guided.info.run_id, "plots")]
    assert plots == ["plots/guidance_curve.png"]
    assert list((tmp_path / "server" / "artifacts").rglob("guidance_curve.png"))
