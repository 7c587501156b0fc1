"""End to end through the CLI: a small Ray Tune study, its MLflow runs, the table, export-best round
trip."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import TOY_FAST, run_cli

pytestmark = pytest.mark.slow

FAST_CONFIG = TOY_FAST


def _cli(*args, cwd, timeout=400):
    return run_cli(*args, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    spec = {
        "name": "e2e",
        "dataset": "gmm2",
        "methods": ["CG", "CG-SC-all", "CFG-all"],
        "label_percents": [20],
        "num_trials": 4,
        "storage": str(root / "studies"),
        "resources": {"max_concurrent_trials": 2},
        "config": FAST_CONFIG,
    }
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = _cli("run", "spec.yaml", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, root / "studies" / "e2e", result


def test_run_prints_table_and_ui_command(finished_study):
    _, study_dir, result = finished_study
    assert (
        "| CG |" in result.stdout
        and "| CG-SC-all |" in result.stdout
        and "| CFG-all |" in result.stdout
    )
    assert f"study ui {study_dir}" in result.stdout
    assert "useful-work fraction:" in result.stdout  # the compute report (tables/compute.md)
    assert (study_dir / "tables" / "compute.md").exists()
    assert (study_dir / "tables" / "comparison.md").exists() and (
        study_dir / "tables" / "comparison.csv"
    ).exists()


def test_mlflow_holds_one_parent_and_one_finished_child_per_trial(finished_study):
    _, study_dir, _ = finished_study
    # Read from another process, as a researcher would.
    code = f"""
import mlflow
mlflow.set_tracking_uri("sqlite:///{study_dir / "mlflow.db"}")
runs = mlflow.search_runs(experiment_names=["e2e"])
parent = runs[runs["tags.role"] == "study"]
trials = runs[runs["tags.role"] == "trial"]
children = trials[trials["tags.stage"] == "search"]
stage = trials[trials["tags.stage"] == "shared"]
assert len(parent) == 1, runs
assert len(children) == 4 and trials["tags.trial_id"].is_unique
# The shared score model is a stage trial of its own, and every CG-family trial started after it.
assert stage["tags.shared_artifact"].tolist() == ["score"], stage
assert (stage["status"] == "FINISHED").all() and (stage["metrics.cost/steps_trained"] == 40).all()
cg = children[children["tags.method"].isin(["CG", "CG-SC-all"])]
assert len(cg) == 3 and (cg["start_time"] >= stage["end_time"].iloc[0]).all()
assert (children["status"] == "FINISHED").all(), children["status"].tolist()
assert (children["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]).all()
assert children["metrics.guided_score_cos"].notna().all()
assert children["params.train.steps"].eq("40").all()
assert children["tags.artifact.score"].dropna().str.startswith("{study_dir.parent.parent}").all()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_score_model_trained_once_and_reused(finished_study):
    _, study_dir, _ = finished_study
    from analysis.runs import load_runs

    runs = load_runs(f"sqlite:///{study_dir / 'mlflow.db'}", "e2e")
    cg = runs[runs["method"].isin(["CG", "CG-SC-all"])]
    # The stage trial trains the score model; every CG-family trial of the search reuses it.
    shared = cg[cg["stage"] == "shared"]
    search = cg[cg["stage"] == "search"]
    assert len(shared) == 1 and (shared["artifact_reused/score"] == 0).all()
    assert len(search) == 3 and (search["artifact_reused/score"] == 1).all()
    # The study's networks live in its artifact store (this test's: run_cli points it there).
    store = yaml.safe_load((study_dir / "spec.yaml").read_text())["artifact_store"]
    assert store == str(study_dir.parent.parent / "artifact-store")
    assert len(list(Path(store).glob("score-*"))) == 1


def test_table_command_rebuilds_the_table(finished_study):
    root, study_dir, _ = finished_study
    result = _cli("table", str(study_dir), cwd=root, timeout=120)
    assert result.returncode == 0 and "| CG-SC-all |" in result.stdout


def test_export_best_round_trip(finished_study):
    root, study_dir, _ = finished_study
    result = _cli("export-best", str(study_dir), cwd=root, timeout=120)
    assert result.returncode == 0, result.stderr
    exported = sorted((study_dir / "best").glob("*.yaml"))
    assert {p.name for p in exported} == {"CG_20.yaml", "CG-SC-all_20.yaml", "CFG-all_20.yaml"}
    spec = yaml.safe_load((study_dir / "best" / "CG-SC-all_20.yaml").read_text())
    assert spec["methods"] == ["CG-SC-all"] and spec["num_trials"] == 1
    assert len(spec["search"]["loss.lambda_sc"]["choices"]) == 1
    rerun = _cli("run", str(study_dir / "best" / "CG-SC-all_20.yaml"), "--quiet", cwd=root)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "| CG-SC-all |" in rerun.stdout


def test_rerun_into_existing_study_is_refused_and_changes_nothing(finished_study):
    root, study_dir, _ = finished_study
    before = (study_dir / "mlflow.db").stat().st_mtime_ns, (study_dir / "spec.yaml").read_text()
    result = _cli("run", "spec.yaml", cwd=root, timeout=120)
    assert result.returncode == 2
    assert "already holds a study; use 'study resume" in result.stderr
    assert (
        (study_dir / "mlflow.db").stat().st_mtime_ns,
        (study_dir / "spec.yaml").read_text(),
    ) == before


def test_ui_serves_the_study_store_on_localhost(finished_study):
    import signal
    import socket
    import time
    import urllib.request

    root, study_dir, _ = finished_study
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = open(root / "ui.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "study", "ui", str(study_dir), "--port", str(port)],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240  # about 15 s on an idle 2-core machine
        body = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                # The UI's REST API answers with the study's experiment from its SQLite store.
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=e2e",
                    timeout=5,
                ) as response:
                    body = response.read().decode()
                break
            except OSError:
                time.sleep(1)
        assert body is not None and '"name": "e2e"' in body.replace('":"', '": "'), (
            root / "ui.log"
        ).read_text()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def test_plan_predicts_what_the_search_spent_and_runs_nothing(finished_study):
    import re

    root, study_dir, _ = finished_study
    spent = (study_dir / "tables" / "compute.md").read_text()

    def files():  # the studies and the artifact store (the UI test's log may still grow)
        found = [*(root / "studies").rglob("*"), *(root / "artifact-store").rglob("*")]
        return sorted((p, p.stat().st_mtime_ns) for p in found if p.is_file())

    before = files()
    result = _cli("plan", "spec.yaml", cwd=root, timeout=120)
    assert result.returncode == 0, result.stderr
    planned = re.search(r"\| training steps \| ([\d,]+) \| ([\d,]+) \|", result.stdout)
    measured = re.search(r"\| training steps \| (\d+) \| (\d+) \|", spent)
    as_int = [int(g.replace(",", "")) for g in planned.groups()]
    assert as_int == [int(g) for g in measured.groups()]  # planned = spent, naive = naive
    assert "stage 1 (shared" in result.stdout and "score x1" in result.stdout
    # It ran nothing: no study file or trained network was created or touched.
    assert files() == before


# ---- study final: runs after the tests above, which count the search's runs and artifacts ----
def _final_runs(study_dir):
    from analysis.runs import load_runs

    runs = load_runs(f"sqlite:///{study_dir / 'mlflow.db'}", "e2e")
    return runs[runs["stage"] == "final"], runs[runs["stage"] == "search"]


def test_final_bad_input_exits_2_and_writes_nothing(finished_study, tmp_path):
    root, study_dir, _ = finished_study
    before = (study_dir / "mlflow.db").stat().st_mtime_ns
    for args, needle in (
        (["--seeds", "0"], "--seeds must be an integer >= 1"),
        (["--set", "sample.num_per_clas=5"], "--set: "),
        (["--set", "novalue"], "expected key=value"),
    ):
        result = _cli("final", str(study_dir), *args, cwd=root, timeout=120)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (study_dir / "mlflow.db").stat().st_mtime_ns == before
    assert not (study_dir / "tune" / "e2e-final0").exists()
    # A study with no finished trial: nothing to take a configuration from.
    empty = tmp_path / "studies" / "empty"
    empty.mkdir(parents=True)
    spec = yaml.safe_load((study_dir / "spec.yaml").read_text())
    spec.update(name="empty", tracking_uri=f"sqlite:///{empty / 'mlflow.db'}")
    (empty / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = _cli("final", str(empty), cwd=root, timeout=120)
    assert result.returncode == 2 and "no finished trial" in result.stderr
    assert sorted(p.name for p in empty.iterdir()) == ["spec.yaml"]


def test_final_runs_each_cells_choice_over_seeds_reusing_what_is_trained(finished_study):
    root, study_dir, _ = finished_study
    table_before = (study_dir / "tables" / "comparison.md").read_text()
    result = _cli("final", str(study_dir), "--seeds", "2", "--quiet", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    final, search = _final_runs(study_dir)
    assert len(final) == 2 * 3 and (final["status"] == "FINISHED").all()  # 3 cells x 2 seeds
    assert sorted(final["train.seed"].unique()) == [0, 1]
    # Seed 0 is the search's seed: every network is already trained, none is trained again.
    seed0 = final[final["train.seed"] == 0]
    assert (seed0["cost/steps_trained"] == 0).all()
    # Each final run evaluates its cell's chosen scale (and lambda) only.
    from analysis.tables import best_per_cell

    for _, best in best_per_cell(search, "guided_score_cos", "max").iterrows():
        mine = final[final["method"] == best["method"]]
        if best["method"] != "Cond":
            assert (mine["guidance_scale"] == best["guidance_scale"]).all()
        if best["method"] == "CG-SC-all":
            assert (mine["loss.lambda_sc"] == best["loss.lambda_sc"]).all()
    text = (study_dir / "tables" / "final.md").read_text()
    for method in ("CG", "CG-SC-all", "CFG-all"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {method} |"))
        assert " ± " in row and "n=2" in row
    assert (study_dir / "tables" / "final.csv").exists()
    # The comparison table still holds the search's trials only.
    assert (study_dir / "tables" / "comparison.md").read_text() == table_before
    assert "6 final runs" in result.stdout


def test_a_second_study_with_another_lambda_range_trains_no_score_model(finished_study):
    root, study_dir, _ = finished_study
    spec = yaml.safe_load((root / "spec.yaml").read_text())
    spec.update(name="e2e-wider", methods=["CG-SC-all"], num_trials=2,
                search={"loss.lambda_sc": {"low": 20, "high": 50}})  # fmt: skip
    (root / "wider.yaml").write_text(yaml.safe_dump(spec))
    store = Path(yaml.safe_load((study_dir / "spec.yaml").read_text())["artifact_store"])
    score_models = sorted(store.glob("score-*"))
    result = _cli("run", "wider.yaml", "--quiet", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    from analysis.runs import load_runs

    runs = load_runs(f"sqlite:///{root / 'studies' / 'e2e-wider' / 'mlflow.db'}", "e2e-wider")
    assert len(runs) == 2 and (runs["artifact_reused/score"] == 1).all()  # the first study's
    assert (runs["artifact_reused/classifier"] == 0).all()  # new lambdas: new classifiers
    assert sorted(store.glob("score-*")) == score_models  # none trained


def test_resume_add_trials_extends_every_cell_with_a_knob_and_repeats_nothing(finished_study):
    root, study_dir, _ = finished_study
    bad = _cli("resume", str(study_dir), "--add-trials", "0", cwd=root, timeout=120)
    assert bad.returncode == 2 and "--add-trials must be an integer >= 1" in bad.stderr
    result = _cli("resume", str(study_dir), "--add-trials", "1", "--quiet", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    _, search = _final_runs(study_dir)
    per_cell = search.groupby("method").size().to_dict()
    # CG-SC-all had 2 trials and gets a third; CG and CFG-all have nothing to tune: still 1.
    assert per_cell == {"CG": 1, "CG-SC-all": 3, "CFG-all": 1}
    lambdas = search[search["method"] == "CG-SC-all"]["loss.lambda_sc"]
    assert lambdas.is_unique and (search["status"] == "FINISHED").all()
    assert yaml.safe_load((study_dir / "spec.yaml").read_text())["trials_per_cell"] == 3
