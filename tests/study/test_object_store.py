"""A study whose storage and artifact store are an S3-compatible object store (moto's server on
127.0.0.1), through the CLI: everything the trials write lands in the bucket, the driver's own
files in this machine's mirror; a second machine (another mirror) finds the study and the networks
in the bucket alone."""

import json
import time

import pytest
import yaml
from cli_helpers import TOY_FAST, S3Server, run_cli, run_main, table_methods

from analysis.runs import load_runs
from trainables.records import HEARTBEAT_S

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


def _spec(folder, s3, **fields):
    spec = {
        "name": "s3toy",
        "dataset": "gmm2",
        "methods": ["CG", "CG-SC-all"],
        "label_percents": [20],
        "num_trials": 3,
        "storage": f"s3://{s3.bucket}/team",
        "artifact_store": f"s3://{s3.bucket}/artifacts",
        "resources": {"max_concurrent_trials": 2},
        "config": TOY_FAST,
        **fields,
    }
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    return "spec.yaml"


def _machine(s3, tmp_path, name):
    """The environment of a `study` process on one machine: the store's, a mirror of its own."""
    return {**s3.env, "SC_GUIDANCE_MIRROR": str(tmp_path / name)}


def test_a_study_on_an_object_store_keeps_everything_in_the_bucket(s3, tmp_path):
    result = run_cli("run", _spec(tmp_path, s3), "--quiet", cwd=tmp_path,
                     env=_machine(s3, tmp_path, "machine-a"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"CG", "CG-SC-all"} <= set(table_methods(result.stdout))  # the table
    files = s3.files()
    assert "team/s3toy/spec.yaml" in files
    # Every trial's records, the networks, Tune's experiment folder (written, never read): in the
    # bucket.
    finals = [f for f in files if f.startswith("team/s3toy/trials/") and f.endswith("final.json")]
    assert len(finals) == 4  # 3 search trials and the score model's stage trial
    # Each search trial's picture of its samples too (a driver on another node logs it).
    pictures = [f for f in files if f.startswith("team/s3toy/trials/") and f.endswith(".png")]
    assert len([f for f in pictures if f.endswith("/samples.png")]) == 3, pictures
    # model, identity, checksum and the training checkpoint (a trainer on any node continues it)
    assert len([f for f in files if f.startswith("artifacts/score-")]) == 4
    assert any(f.startswith("team/s3toy/tune/search-") and "/experiment_state" in f for f in files)
    # The driver's own files (MLflow, Optuna, the tables) in this machine's mirror of the study.
    mirrors = list((tmp_path / "machine-a").glob("s3-studies-*/team/s3toy"))
    assert len(mirrors) == 1 and (mirrors[0] / "tables" / "comparison.md").exists()
    runs = load_runs(f"sqlite:///{mirrors[0] / 'mlflow.db'}", "s3toy")
    assert len(runs) == 4 and (runs["status"] == "FINISHED").all()
    search = runs[runs["stage"] == "search"]
    assert len(search) == 3 and (search["artifact_reused/score"] == 1).all()
    assert search["energy_distance"].notna().all()
    # The driver's databases and tables are backed up in the bucket.
    for name in ("mlflow.db", "optuna.db", "tables/comparison.md"):
        assert f"team/s3toy/{name}" in s3.files(), name
    # Resuming the finished study on its machine reads its ledger: nothing runs again, no run is
    # added.
    resumed = run_cli("resume", str(mirrors[0]), "--quiet", cwd=tmp_path,
                      env=_machine(s3, tmp_path, "machine-a"))  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(load_runs(f"sqlite:///{mirrors[0] / 'mlflow.db'}", "s3toy")) == 4
    _a_stage_trial_runs_while_its_driver_is_heard_of(s3, tmp_path)
    # Another machine (an empty mirror) sees the study in the bucket: the same name is refused.
    other = _machine(s3, tmp_path, "machine-b")
    again = run_main("run", "spec.yaml", cwd=tmp_path, env=other)
    assert again.returncode == 2 and "already holds a study" in again.stderr, again.stderr
    # ... and a new study there reuses the score model from the bucket: none is trained.
    name = _spec(tmp_path, s3, name="s3more", methods=["CG-SC-all"], num_trials=1,
                 search={"loss.lambda_sc": {"low": 20, "high": 50}})  # fmt: skip
    more = run_cli("run", name, "--quiet", cwd=tmp_path, env=other)
    assert more.returncode == 0, more.stderr[-3000:]
    mirror = next((tmp_path / "machine-b").glob("s3-studies-*/team/s3more"))
    runs = load_runs(f"sqlite:///{mirror / 'mlflow.db'}", "s3more")
    assert len(runs) == 1 and (runs["artifact_reused/score"] == 1).all()
    assert len([f for f in s3.files() if f.startswith("artifacts/score-")]) == 4


def test_an_object_store_that_does_not_answer_exits_2_and_writes_nothing(s3, tmp_path):
    env = {**_machine(s3, tmp_path, "machine-c"), "AWS_ENDPOINT_URL": "http://127.0.0.1:1"}
    spec = _spec(tmp_path, s3, name="unreachable")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_main("run", spec, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"cannot write to the storage s3://{s3.bucket}/team/unreachable" in lines[0]
    assert "AWS_ENDPOINT_URL" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no mirror, nothing written


def _a_stage_trial_runs_while_its_driver_is_heard_of(s3, tmp_path):
    """Read on a machine that does not drive it, a study in the bucket whose driver went on
    another: a stage trial without an end runs while the driver's session beats, and was taken
    down with it once the session is no longer heard of."""
    fs, base = s3.filesystem(), f"{s3.bucket}/team/s3toy"
    stage = next(f for f in s3.files("team/s3toy/trials/") if f.endswith("/params.json") and
                 '"stage"' in fs.open_input_stream(f"{s3.bucket}/{f}").read().decode())  # fmt: skip
    with fs.open_output_stream(f"{base}/trials/planted_stage/params.json") as out:
        out.write(fs.open_input_stream(f"{s3.bucket}/{stage}").read())
    machine_c, uri = _machine(s3, tmp_path, "machine-c"), f"s3://{s3.bucket}/team/s3toy"
    for ago, running in ((0, True), (3 * HEARTBEAT_S + 60, False)):
        heard = time.time() - ago
        record = {"stage": "search", "start": heard - 5, "wall": None, "heard": heard,
                  "host": "machine-a.example", "pid": 4242}  # fmt: skip
        with fs.open_output_stream(f"{base}/sessions/search-9999999999999.json") as out:
            out.write(json.dumps(record).encode())
        shown = run_main("status", uri, cwd=tmp_path, env=machine_c)
        assert shown.returncode == 0, shown.stderr
        assert ("not running now" not in shown.stdout) is running, (ago, shown.stdout)
        if running:  # a second driver on this machine is refused: the lease here cannot see it
            mirror = next((tmp_path / "machine-c").glob("s3-studies-*/team/s3toy"))
            again = run_main("resume", str(mirror), cwd=tmp_path, env=machine_c)
            assert again.returncode == 2, again.stderr[-2000:]
            assert "run by another study command on machine-a.example" in again.stderr
            assert len(again.stderr.strip().splitlines()) == 1, again.stderr
    fs.delete_dir(f"{base}/trials/planted_stage")  # the study as it was
    fs.delete_file(f"{base}/sessions/search-9999999999999.json")
