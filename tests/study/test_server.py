"""`study server`: the team's MLflow server on a real PostgreSQL (Debian's, started here in a
temporary data folder on a free loopback port) with MLflow's basic-auth logins, and a study logging
to it over HTTP with credentials from the environment."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cli_helpers import TOY_FAST, cli_env, free_port, run_cli, write_spec

pytestmark = pytest.mark.slow


def _pg_bin(name: str) -> str | None:
    """Debian's PostgreSQL program (on PATH or under /usr/lib/postgresql/<version>/bin)."""
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _start_postgres(pg_ctl: list, folder: Path, tries: int = 3) -> int:
    """Start the server on a port free now; its port. A free port can be taken before the server
    binds it (the other test worker's Ray processes open connections from the same range: 'could
    not bind IPv4 address "127.0.0.1": Address already in use', seen once in the suite): then
    again on another port."""
    for attempt in range(tries):
        port = free_port()
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
        started = subprocess.run([*pg_ctl, "-o", options, "-w", "start"], capture_output=True)
        if started.returncode == 0:
            return port
        log = (folder / "log").read_text(errors="replace") if (folder / "log").exists() else ""
        if "Address already in use" not in log or attempt == tries - 1:
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr!r}\n{log[-2000:]}")
        (folder / "log").unlink()
    raise AssertionError("unreachable")


@pytest.fixture
def postgres():
    """A PostgreSQL server of its own: initdb in a temporary folder, started on a free port of
    127.0.0.1 (as the postgres user when the tests run as root: it refuses root), a database
    `mlflow`; its URI. Skips where Debian's postgresql package is not installed (.ci/run installs
    it)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("Debian's postgresql is not installed (.ci/run installs it)")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))
    if as_user:
        shutil.chown(folder, "postgres")
    data = folder / "data"
    subprocess.run([*as_user, initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)  # fmt: skip
    port = _start_postgres([*as_user, pg_ctl, "-D", data, "-l", folder / "log"], folder)
    try:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres") as conn:
            conn.autocommit = True
            conn.execute("CREATE DATABASE mlflow")
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def _start_server(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "study", "server", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def _status(url: str, auth: tuple[str, str] | None = None) -> int:
    """The HTTP status of a read of the server's experiments (with a basic-auth login or none)."""
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search?max_results=1")
    if auth is not None:
        import base64

        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        # The first authorised read opens the tracking store on PostgreSQL (its schema checked):
        # over 10 s once beside the other test worker's studies (load about 10), so 60 s.
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def server(tmp_path, postgres):
    port = free_port()
    env = {**cli_env(), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_AUTH_ADMIN_PASSWORD", None)  # the password file, written by the server
    store = tmp_path / "server"
    proc = _start_server(["--store", str(store), "--port", str(port), "--backend", postgres], env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240  # a loaded machine (pytest-xdist)
    while time.monotonic() < deadline:
        try:
            _status(url)  # any HTTP answer: it serves (the test checks which)
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
    else:
        raise AssertionError("study server did not answer within 240 s")
    yield url, port, store
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_a_study_logs_to_the_postgresql_server_with_logins(tmp_path, server, postgres):
    from mlflow.tracking import MlflowClient

    url, port, store = server
    password_file = store / "admin-password"
    assert (password_file.stat().st_mode & 0o777) == 0o600
    password = password_file.read_text().strip()
    # Without a login the server answers 401; with the admin's, 200; with a wrong one, 401.
    assert _status(url) == 401
    assert _status(url, ("admin", password)) == 200
    assert _status(url, ("admin", password + "x")) == 401
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
    # A study without the login is refused before any work, naming the fix.
    refused = run_cli("run", str(spec), "--quiet", cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "refused the login" in refused.stderr and "MLFLOW_TRACKING_PASSWORD" in refused.stderr
    assert not (tmp_path / "studies" / "http").exists()
    login = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
    result = run_cli("run", str(spec), "--quiet", cwd=tmp_path, env=login)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    os.environ.update(login)
    try:
        client = MlflowClient(url)
        exp = client.get_experiment_by_name("http")
        runs = client.search_runs([exp.experiment_id], "tags.role != 'study'", max_results=1000)
    finally:
        for key in login:
            os.environ.pop(key)
    ids = [r.data.tags["trial_id"] for r in runs]
    assert len(ids) == len(set(ids))  # none duplicated
    search = [r for r in runs if r.data.tags["stage"] == "search"]
    # CG-SC-all x 2 trials, Cond and CFG-all x 1 (4 slots, the score model's stage trial first):
    # none lost.
    assert len(search) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags["role"] == "trial" for r in search)
    assert all("guided_score_cos" in r.data.metrics for r in search)
    # The runs are in PostgreSQL, not in a SQLite file of the store.
    import psycopg

    with psycopg.connect(postgres) as conn:
        (count,) = conn.execute("SELECT count(*) FROM runs").fetchone()
    assert count == len(runs) + 1  # and the study's parent run
    assert not (store / "mlflow.db").exists()
    # Artifacts travel over HTTP into the server's store (the guidance curve of a guided trial).
    guided = next(r for r in search if r.data.tags["method"] == "CG-SC-all")
    assert list((store / "artifacts").rglob("guidance_curve.png")), guided.info.run_id


def test_bad_server_input_exits_2_before_starting(tmp_path, postgres):
    store = tmp_path / "store"
    store.mkdir()
    # A database that does not answer.
    dead = postgres.replace(postgres.split("@")[1].split("/")[0], f"127.0.0.1:{free_port()}")
    result = run_cli("server", "--store", str(store), "--backend", dead, cwd=tmp_path)
    assert result.returncode == 2 and "cannot reach the database" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # A password file others can read.
    (store / "admin-password").write_text("secret\n")
    (store / "admin-password").chmod(0o644)
    result = run_cli("server", "--store", str(store), "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 2 and "chmod 600" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (store / "mlflow.db").exists() and not (store / "basic_auth.ini").exists()
