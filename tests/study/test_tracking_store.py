"""The MLflow tracking store: a new SQLite store opened by several studies at the same moment,
and tracking URIs saved absolute."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import write_spec

from study.spec import validate

OPEN_AND_WRITE = """
import sys, time
from study.tracking import open_tracking_store
uri, start, name = sys.argv[1], float(sys.argv[2]), sys.argv[3]
while time.time() < start:
    time.sleep(0.001)
open_tracking_store(uri).create_experiment(name)
"""


@pytest.mark.slow  # over 10 s: `make test` only
def test_studies_starting_together_on_a_new_sqlite_store_all_open_it(tmp_path):
    # Without the lock, 3 of 4 processes failed ("table ... already exists", alembic errors).
    uri = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    start = time.time() + 8  # every process has imported MLflow by then
    repo = Path(__file__).parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AND_WRITE, uri, str(start), f"study-{i}"],
            cwd=repo,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in results), [err[-500:] for _, err in results]
    from mlflow.tracking import MlflowClient

    names = {e.name for e in MlflowClient(uri).search_experiments()}
    assert {f"study-{i}" for i in range(4)} <= names


def test_a_relative_sqlite_uri_is_saved_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = validate({"methods": ["CG"], "tracking_uri": "sqlite:///rel.db"})
    assert spec.tracking_uri == f"sqlite:///{tmp_path / 'rel.db'}"
    assert validate(spec.to_dict()).tracking_uri == spec.tracking_uri
    absolute = f"sqlite:///{tmp_path / 'abs.db'}"
    assert validate({"methods": ["CG"], "tracking_uri": absolute}).tracking_uri == absolute


@pytest.mark.slow
def test_two_studies_created_at_the_same_moment_on_a_new_store_both_complete(tmp_path):
    # Before the lock, the second crashed with MLflow's "table ... already exists" after writing
    # its spec.yaml, and a re-run was then refused as "already holds a study".
    from cli_helpers import TOY_FAST, cli_env

    from analysis import load_study

    store = tmp_path / "shared" / "mlflow.db"
    procs = []
    for name in ("first", "second"):
        spec = write_spec(
            tmp_path,
            filename=name,
            name=name,
            dataset="gmm2",
            methods=["Cond"],
            label_percents=[50],
            num_trials=1,
            tracking_uri=f"sqlite:///{store}",
            config=TOY_FAST,
        )
        env = {**cli_env(), "SC_GUIDANCE_ARTIFACT_STORE": str(tmp_path / f"store-{name}")}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "study", "run", str(spec), "--quiet"],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    # communicate, not wait: a child that fills its pipe would otherwise never end
    results = [(p.communicate(timeout=400)[1], p.returncode)[::-1] for p in procs]
    assert [code for code, _ in results] == [0, 0], [err[-1500:] for _, err in results]
    for name in ("first", "second"):
        trials = load_study(tmp_path / "studies" / name).trials
        assert len(trials) == 1 and (trials["status"] == "FINISHED").all()


def test_a_new_sqlite_store_is_a_copy_of_the_empty_one_the_first_left(tmp_path, monkeypatch):
    import sqlite3

    import mlflow.store.db.utils as db_utils

    from study.tracking import open_tracking_store, store_template

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    open_tracking_store(f"sqlite:///{tmp_path / 'first' / 'mlflow.db'}").create_experiment("a")
    template = store_template()
    with sqlite3.connect(template) as conn:  # migrated, and no experiment of the first store's
        assert conn.execute("SELECT count(*) FROM experiments").fetchone() == (0,)

    def no_migrations(engine):
        raise AssertionError("a new store ran MLflow's migrations instead of copying the template")

    monkeypatch.setattr(db_utils, "_initialize_tables", no_migrations)
    client = open_tracking_store(f"sqlite:///{tmp_path / 'second' / 'mlflow.db'}")
    # MLflow's own Default experiment, located as in a store it made here; the study's is 1.
    (default,) = client.search_experiments()
    assert default.name == "Default" and default.artifact_location == str(tmp_path / "mlruns" / "0")
    assert client.create_experiment("b") == "1"
    assert [p.name for p in (tmp_path / "second").iterdir() if "partial" in p.name] == []
