"""The MLflow tracking store: a new SQLite store opened by several studies at the same moment,
and tracking URIs saved absolute."""

import subprocess
import sys
import time
from pathlib import Path

from study.spec import validate

OPEN_AND_WRITE = """
import sys, time
from study.tracking import open_tracking_store
uri, start, name = sys.argv[1], float(sys.argv[2]), sys.argv[3]
while time.time() < start:
    time.sleep(0.001)
open_tracking_store(uri).create_experiment(name)
"""


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
