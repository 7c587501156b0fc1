"""End to end through the CLI: a small Ray Tune study, its MLflow runs, the table, export-best round
trip."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import yaml
from cli_helpers import TOY_FAST, assert_the_ledger_reads_as_the_runs, cli_env, run_cli, run_main

pytestmark = pytest.mark.slow

FAST_CONFIG = TOY_FAST


def _cli(*args, cwd, timeout=400):
    return run_cli(*args, cwd=cwd, timeout=timeout)


def _cmd(*args, cwd):
    """A command that starts no Ray session (reads, refusals) through study.cli.main in this
    process: the same code path as `study ARGS` without a new interpreter's start."""
    return run_main(*args, cwd=cwd)


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
        # The grid only (no extension past an edge optimum): study plan counts the grid's scales,
        # and the plan test compares its counts with what the search spent.
        "guidance": {"max_scale": 4},
        "config": FAST_CONFIG,
    }
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    # The run's Ray session in a folder of its own (short: Ray's socket paths are bounded), so
    # that its processes can be told from other tests' clusters.
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    result = run_cli("run", "spec.yaml", cwd=root, timeout=400, env={"RAY_TMPDIR": ray_tmp})
    assert result.returncode == 0, result.stderr[-3000:]
    _RAY_LEFT[:] = _processes_under(ray_tmp, wait=3.0)
    return root, root / "studies" / "e2e", result


_RAY_LEFT: list[str] = []  # processes of the run's Ray session alive 3 s after the CLI returned


def _processes_under(folder: str, wait: float) -> list[str]:
    """Command lines naming folder that are still running after up to `wait` seconds."""
    import time

    deadline = time.monotonic() + wait
    while True:
        found = subprocess.run(["pgrep", "-af", folder], capture_output=True, text=True).stdout
        left = [line for line in found.splitlines() if "pgrep" not in line]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_no_process_of_the_runs_ray_session_outlives_the_command(finished_study):
    assert _RAY_LEFT == []


def test_tune_keeps_its_per_trial_logs_but_writes_no_tensorboard_files(finished_study):
    # MLflow holds every metric; tensorboardX would import torch into the driver (4 s a study).
    _, study_dir, _ = finished_study
    (session,) = (study_dir / "tune").iterdir()  # one Tune experiment per session
    trials = [p for p in session.iterdir() if p.is_dir()]
    assert len(trials) >= 4  # the 4 search trials and any stage trial
    for trial in trials:
        assert (trial / "progress.csv").stat().st_size > 0
        assert (trial / "result.json").stat().st_size > 0
    assert not list((study_dir / "tune").rglob("events.out.tfevents*"))


def _table_rows(stdout):
    """The methods of the compact console table (its rows start with the method)."""
    return [line.split()[0] for line in stdout.splitlines() if line.split()[:1] and
            line.split()[0] in ("CG", "CG-SC-all", "CFG-all")]  # fmt: skip


def test_run_prints_progress_and_ends_with_the_compact_table(finished_study):
    _, study_dir, result = finished_study
    lines = result.stdout.rstrip().splitlines()
    assert _table_rows(result.stdout) == ["CG", "CG-SC-all", "CFG-all"]
    assert "20% labels" in result.stdout
    assert max(len(line) for line in lines if str(study_dir.parent) not in line) <= 120
    # The output ends with the table and its footnotes, after the UI command.
    note = next(i for i, line in enumerate(lines) if line.startswith("best trial per cell by"))
    footnotes = lines[note + 1 :]
    assert all("in every cell" in line or line.startswith("(cap)") for line in footnotes)
    assert _table_rows("\n".join(lines[note - 4 : note])) == ["CG", "CG-SC-all", "CFG-all"]
    assert f"study ui {study_dir}" in result.stdout
    assert "compute: " in result.stdout and (study_dir / "tables" / "compute.md").exists()
    # One count per kind, "k of N", and the time left; no library chatter.
    assert "search 4/4, stage 1/1 ended" in result.stdout
    assert "left" in result.stdout and "A new study created" not in result.stdout + result.stderr
    assert "TensorBoard" not in result.stdout and "Creating initial MLflow" not in result.stderr
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
trials = runs[runs["tags.role"] != "study"]
children = trials[trials["tags.stage"] == "search"]
stage = trials[trials["tags.stage"] == "shared"]
# Each kind of run has its role: a search trial, a stage trial of a shared network.
assert (children["tags.role"] == "trial").all() and (stage["tags.role"] == "shared").all()
assert len(parent) == 1, runs
assert len(children) == 4 and trials["tags.trial_id"].is_unique
# The shared score model is a stage trial of its own, and every CG-family trial started after it.
assert stage["tags.shared_artifact"].tolist() == ["score"], stage
assert (stage["status"] == "FINISHED").all() and (stage["metrics.cost/steps_trained"] == 40).all()
cg = children[children["tags.method"].isin(["CG", "CG-SC-all"])]
assert len(cg) == 3 and (cg["start_time"] >= stage["end_time"].iloc[0]).all()
assert (children["status"] == "FINISHED").all(), children["status"].tolist()
# Flat runs (every trial visible in the runs view), linked to the study's run by a tag.
assert "tags.mlflow.parentRunId" not in runs.columns
assert (children["tags.study_run_id"] == parent["run_id"].iloc[0]).all()
assert (children["tags.study"] == "e2e").all() and children["tags.cell"].str.endswith("@20%").all()
names = set(children["tags.mlflow.runName"])
assert set(["CG@20%", "CFG-all@20%"]) <= names, names
assert sum(n.startswith("CG-SC-all@20% · lambda_SC=") for n in names) == 2, names
assert mlflow.get_experiment_by_name("e2e").tags["mlflow.experimentKind"] == (
    "custom_model_development")  # the model-training view, not the GenAI one
# A toy trial logs its samples' picture.
client = mlflow.MlflowClient()
for run_id in children["run_id"]:
    assert "samples/samples.png" in [a.path for a in client.list_artifacts(run_id, "samples")]
assert children["metrics.guided_score_cos"].notna().all()
assert children["params.train.steps"].eq("40").all()
assert children["tags.artifact.score"].dropna().str.startswith("{study_dir.parent.parent}").all()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_a_trials_mlflow_params_are_the_keys_that_shape_it(finished_study):
    from mlflow.tracking import MlflowClient

    from study.runner import full_params, load_study_spec
    from trainables.config import to_flat
    from trainables.methods import shaping_keys

    _, study_dir, _ = finished_study
    _, spec = load_study_spec(study_dir)
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'search'")
    assert len(runs) == 4
    for run in runs:
        params = dict(run.data.params)
        method = params["method"]
        knobs = {k: float(v) for k, v in params.items() if k == "loss.lambda_sc"}
        point = {"method": method, "data.label_percent": 20.0, **knobs}
        flat = full_params(point, spec=spec)  # the resolved config, flat (what the tracker logs)
        assert flat == {
            k: (",".join(map(str, v)) if isinstance(v, tuple) else v)
            for k, v in to_flat(spec.trial_config(point)).items()
        }
        assert set(params) == set(shaping_keys(method, flat)), method
        assert all(params[k] == str(flat[k]) for k in params), method  # keys and values
        assert ("loss.lambda_sc" in params) == (method == "CG-SC-all")
        assert "model.nf" not in params and "eval.feature_extractor" not in params


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
    result = _cmd("table", str(study_dir), cwd=root)
    assert result.returncode == 0 and "CG-SC-all" in _table_rows(result.stdout)
    assert "| CG-SC-all |" in (study_dir / "tables" / "comparison.md").read_text()


def test_export_best_round_trip(finished_study):
    root, study_dir, _ = finished_study
    result = _cmd("export-best", str(study_dir), cwd=root)
    assert result.returncode == 0, result.stderr
    exported = sorted((study_dir / "best").glob("*.yaml"))
    assert {p.name for p in exported} == {"CG@20%.yaml", "CG-SC-all@20%.yaml", "CFG-all@20%.yaml"}
    spec = yaml.safe_load((study_dir / "best" / "CG-SC-all@20%.yaml").read_text())
    assert spec["methods"] == ["CG-SC-all"] and spec["num_trials"] == 1
    assert len(spec["search"]["loss.lambda_sc"]["choices"]) == 1
    # The chosen scale only: the cap at it stops the sweep going on past an edge.
    assert spec["guidance"]["scales"] == [spec["guidance"]["max_scale"]]
    rerun = _cli("run", str(study_dir / "best" / "CG-SC-all@20%.yaml"), "--quiet", cwd=root)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _table_rows(rerun.stdout) == ["CG-SC-all"]
    # The re-run is the chosen configuration: its scale, lambda and metrics, on reused networks.
    from analysis.runs import load_runs
    from analysis.tables import best_per_cell

    searched = load_runs(f"sqlite:///{study_dir / 'mlflow.db'}", "e2e")
    original = best_per_cell(searched, "guided_score_cos", "max").set_index("method")
    original = original.loc["CG-SC-all"]
    name = spec["name"]
    again = load_runs(f"sqlite:///{root / 'studies' / name / 'mlflow.db'}", name)
    again = again[again["stage"].fillna("search") == "search"].iloc[0]
    assert again["guidance_scale"] == original["guidance_scale"]
    assert again["loss.lambda_sc"] == original["loss.lambda_sc"]
    assert again["cost/steps_trained"] == 0
    for metric in ("guided_score_cos", "gen_accuracy", "grad_cos"):
        assert again[metric] == pytest.approx(original[metric], rel=1e-6), metric


def test_rerun_into_existing_study_is_refused_and_changes_nothing(finished_study):
    root, study_dir, _ = finished_study
    before = (study_dir / "mlflow.db").stat().st_mtime_ns, (study_dir / "spec.yaml").read_text()
    result = _cmd("run", "spec.yaml", cwd=root)
    assert result.returncode == 2
    assert "already holds a study; use 'study resume" in result.stderr
    assert (
        (study_dir / "mlflow.db").stat().st_mtime_ns,
        (study_dir / "spec.yaml").read_text(),
    ) == before


def _trial_runs(uri, name):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "tags.role = 'trial'")
    return {(r.info.run_id, r.info.status, r.data.tags.get("study_id")) for r in runs}


def test_a_second_study_with_a_name_in_use_on_the_store_is_refused(finished_study, tmp_path):
    # Another folder, the same name, the first study's tracking store: refused before any work
    # (it once took over the first's parent run and marked its runs KILLED).
    root, study_dir, _ = finished_study
    uri = f"sqlite:///{study_dir / 'mlflow.db'}"
    before = _trial_runs(uri, "e2e")
    assert len(before) >= 4 and {status for _, status, _ in before} == {"FINISHED"}
    table = (study_dir / "tables" / "comparison.md").read_text()
    spec = yaml.safe_load((root / "spec.yaml").read_text())
    spec.update(storage=str(tmp_path / "studies"), tracking_uri=uri)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    second = _cmd("run", "spec.yaml", cwd=tmp_path)
    assert second.returncode == 2
    assert "already holds a study named 'e2e'" in second.stderr
    assert not (tmp_path / "studies").exists()  # nothing written for the refused study
    assert _trial_runs(uri, "e2e") == before
    again = _cmd("table", str(study_dir), cwd=root)
    assert again.returncode == 0
    assert (study_dir / "tables" / "comparison.md").read_text() == table


def _copy_study(study_dir, to):
    """A copy of the study folder whose saved spec opens the copy's own MLflow store."""
    shutil.copytree(study_dir, to)
    spec = yaml.safe_load((to / "spec.yaml").read_text())
    spec["tracking_uri"] = f"sqlite:///{to / 'mlflow.db'}"
    (to / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return to


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_lost_or_emptied_tracking_store_is_written_again_from_the_records(
    finished_study, tmp_path
):
    from analysis import load_study
    from analysis.runs import load_runs

    root, study_dir, _ = finished_study
    original = load_runs(f"sqlite:///{study_dir / 'mlflow.db'}", "e2e")
    original = original[original["stage"] == "search"].set_index("trial_id")
    # The store deleted: the views read the ledger and the records, not the store, and say
    # what they said before (status, load_study, export-best, plot); a command that writes runs
    # (resume) refuses, naming the fix, and changes nothing.
    gone = _copy_study(study_dir, tmp_path / "gone")
    status = _cmd("status", str(gone), cwd=tmp_path)
    exported = _cmd("export-best", str(gone), cwd=tmp_path)
    best = {p.name: p.read_text() for p in (gone / "best").iterdir()}
    (gone / "mlflow.db").unlink()
    before = _snapshot(gone)
    without = _cmd("status", str(gone), cwd=tmp_path)
    assert without.returncode == 0 and without.stdout == status.stdout, without.stderr[-2000:]
    assert "search trials 4/4, stage trials 1/1" in without.stdout
    result = _cmd("resume", str(gone), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "MLflow store" in lines[0] and "is missing" in lines[0], lines
    assert f"study table {gone}" in lines[0]
    assert _snapshot(gone) == before and not (gone / "mlflow.db").exists()
    assert load_study(gone).best_configs == load_study(study_dir).best_configs
    again = _cmd("export-best", str(gone), cwd=tmp_path)
    assert again.returncode == 0 and again.stdout == exported.stdout, again.stderr[-2000:]
    assert {p.name: p.read_text() for p in (gone / "best").iterdir()} == best
    assert _cmd("plot", str(gone), cwd=tmp_path).returncode == 0
    assert not (gone / "mlflow.db").exists()
    # `study table` writes every trial run again from the records, and the same tables: the
    # compute report too, its sessions' wall times from the study's session records.
    tables = (gone / "tables" / "comparison.md").read_text()
    compute = (gone / "tables" / "compute.md").read_text()
    assert "useful-work fraction: " in compute
    result = _cmd("table", str(gone), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    records = len(list((gone / "trials").iterdir()))  # the search and stage trials
    assert f"wrote {records} trial runs again" in result.stdout
    rebuilt = load_runs(f"sqlite:///{gone / 'mlflow.db'}", "e2e")
    assert (rebuilt["status"] == "FINISHED").all()
    # Its experiment has the study's views again (what `study ui` opens: study.views).
    from mlflow.tracking import MlflowClient

    from study.views import ROLES, VIEW_TAG

    tags = MlflowClient(f"sqlite:///{gone / 'mlflow.db'}").get_experiment_by_name("e2e").tags
    assert {f"{VIEW_TAG}{key}" for key in ROLES} <= set(tags), sorted(tags)
    search = rebuilt[rebuilt["stage"] == "search"].set_index("trial_id")
    assert set(search.index) == set(original.index)
    for column in ("method", "label_percent", "guided_score_cos", "val/guided_score_cos",
                   "guidance_scale", "loss.lambda_sc"):  # fmt: skip
        pd.testing.assert_series_equal(
            search[column].sort_index(), original[column].sort_index(), check_dtype=False
        )
    assert (gone / "tables" / "comparison.md").read_text() == tables
    assert (gone / "tables" / "compute.md").read_text() == compute
    # Every run's every metric at every step as the lost store had it: the per-epoch history
    # (the learning curves) from the records too, the final numbers and guidance curves.
    stores = [MlflowClient(f"sqlite:///{folder / 'mlflow.db'}") for folder in (study_dir, gone)]
    for trial_id in search.index:
        runs = [original.loc[trial_id, "run_id"], search.loc[trial_id, "run_id"]]
        keys = [set(c.get_run(r).data.metrics) for c, r in zip(stores, runs, strict=True)]
        assert keys[0] == keys[1], (trial_id, keys[0] ^ keys[1])
        for key in keys[0]:
            old, new = (
                sorted((m.step, m.value) for m in c.get_metric_history(r, key))
                for c, r in zip(stores, runs, strict=True)
            )
            assert new == old, (trial_id, key, old, new)
        assert max(m.step for m in stores[1].get_metric_history(runs[1], "epoch")) >= 2
    # Each run spans its trial's time, from its records (as written, not when rebuilt).
    for column in ("start_time", "end_time"):
        gap = (search[column] - original[column]).abs().max()
        assert gap <= 3000, (column, search[column], original[column])
    again = _cmd("table", str(gone), cwd=tmp_path)  # nothing missing now: nothing written again
    assert again.returncode == 0 and "wrote" not in again.stdout.splitlines()[0]
    # The store replaced by an empty one: the same.
    emptied = _copy_study(study_dir, tmp_path / "emptied")
    (emptied / "mlflow.db").unlink()
    from study.tracking import open_tracking_store

    open_tracking_store(f"sqlite:///{emptied / 'mlflow.db'}")
    result = _cmd("table", str(emptied), cwd=tmp_path)
    assert result.returncode == 0 and "trial runs again" in result.stdout, result.stderr[-2000:]
    assert (emptied / "tables" / "comparison.md").read_text() == tables


class _Payload:
    """Unpickled, it writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant_pickles(study_dir, marker):
    """A pickle of _Payload in every folder of the study, under the names Tune's own state files
    have; the folders planted."""
    import pickle

    names = ["tuner.pkl", "searcher-state-0.pkl", "search_gen_state-0.pkl", "state.pkl"]
    folders = [study_dir, *(p for p in study_dir.rglob("*") if p.is_dir())]
    for folder in folders:
        for name in names:
            (folder / name).write_bytes(pickle.dumps(_Payload(marker)))
    return folders


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
        # It printed the URL of the study's view of its search trials; a real browser renders it.
        url = re.search(
            r"http://127\.0\.0\.1:\d+/#/experiments/\d+/runs\?viewStateShareKey=search\S*",
            log_text(root),
        )
        assert url is not None, log_text(root)
        assert "stage trials (the shared networks): http" in log_text(root)
        if shutil.which("chromium") is None:
            pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
        dom = _render(url.group(0), root / "chromium")
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
        # The model-training layout (its sidebar: Runs, Models, Model registry), not the GenAI one
        # (Judges, Playground), on the study's runs table.
        assert "Model registry" in text and "Run Name" in text, text[:3000]
        assert "Judges" not in text and "Playground" not in text, text[:3000]
        _assert_search_trials_with_objective(study_dir, dom, text)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def _assert_search_trials_with_objective(study_dir, dom, text):
    """The rendered runs table: at least three search trials, each row showing the trial's name
    and its validation objective in visible cells, and no row of the study's parent run or of its
    stage trials (shared networks)."""
    from mlflow.tracking import MlflowClient

    from analysis.results import read_spec

    folder, raw = read_spec(study_dir)
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(raw["name"])
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    grid = GridCells()
    grid.feed(dom)
    rows = grid.rows()
    assert set(rows) <= set(runs), (set(rows), text[:2000])
    roles = {runs[r].data.tags["role"] for r in rows}
    assert roles == {"trial"}, roles  # the parent run (study) and the stage trials (shared) apart
    assert {r.data.tags["role"] for r in runs.values()} >= {"study", "shared", "trial"}
    shown = 0
    for run_id, cells in rows.items():
        run = runs[run_id]
        value = run.data.metrics.get("val/guided_score_cos")
        cell = cells.get("metrics.`val/guided_score_cos`", "")
        if value is not None and run.info.run_name in cells.get("attributes.`Run Name`", ""):
            assert float(cell) == pytest.approx(value, rel=1e-6), (cells, value)
            shown += 1
    assert shown >= 3, rows


class GridCells(HTMLParser):
    """The cells AG Grid rendered (MLflow's runs table): {row id: {column id: text}}; a row's
    pinned and scrolled parts share its row-id (the run's id)."""

    VOID = {"input", "br", "img", "meta", "link", "hr", "source", "wbr"}

    def __init__(self):
        super().__init__()
        self.cells, self.stack = {}, []

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        a, (row, cell) = dict(attrs), (self.stack[-1] if self.stack else (None, None))
        cell = a.get("col-id") if a.get("role") == "gridcell" else cell
        self.stack.append((a.get("row-id") or row, cell))

    def handle_endtag(self, tag):
        if tag not in self.VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack and all(self.stack[-1]) and data.strip():
            key = self.stack[-1]
            self.cells[key] = f"{self.cells.get(key, '')} {data.strip()}".strip()

    def rows(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for (row, column), value in self.cells.items():
            out.setdefault(row, {})[column] = value
        return out


def log_text(root):
    return (root / "ui.log").read_text()


def _render(url, profile):
    """The DOM headless Chromium renders at url (the flags the machine's closed network needs)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=30000",
             "--window-size=1500,900", "--dump-dom"]  # fmt: skip
    out = subprocess.run(["chromium", *flags, url], capture_output=True, text=True, timeout=180)
    return out.stdout


def test_dashboard_serves_the_cells_with_links_to_their_mlflow_runs(finished_study):
    import json
    import time
    import urllib.request

    from cli_helpers import free_port

    from analysis.runs import load_runs

    root, study_dir, _ = finished_study
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "study", "dashboard", str(study_dir), "--port", str(port)],
        cwd=root, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline, studies = time.monotonic() + 120, None
        while studies is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as r:
                    studies = json.load(r)["study_summaries"]
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.5)
        assert studies is not None, "the dashboard did not answer within 120 s"
        names = {s["study_name"] for s in studies}
        assert {"e2e/CG@20%", "e2e/CG-SC-all@20%", "e2e/CFG-all@20%"} <= names
        runs = load_runs(f"sqlite:///{study_dir / 'mlflow.db'}", "e2e")
        sc = next(s for s in studies if s["study_name"] == "e2e/CG-SC-all@20%")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{sc['study_id']}") as r:
            detail = json.load(r)
        note = detail["note"]["body"]
        ids = set(runs[runs["method"] == "CG-SC-all"]["run_id"])
        assert len(ids) == 2 and all(f"/runs/{run_id}?" in note for run_id in ids)
        assert detail["objective_names"] == ["val/guided_score_cos"]  # selected on validation
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_load_study_gives_the_frames_the_tables_are_built_from(finished_study):
    import pandas as pd

    from analysis import load_study

    _, study_dir, _ = finished_study
    s = load_study(study_dir)
    assert len(s.trials) == 4 and len(s.stage_runs) == 1 and s.final_runs.empty
    assert set(s.trials["cell"]) == {"CG@20%", "CG-SC-all@20%", "CFG-all@20%"}
    written = pd.read_csv(study_dir / "tables" / "comparison_long.csv")
    pd.testing.assert_frame_equal(
        s.comparison_long.drop(columns=["trial_id", "run_id"]),
        written.drop(columns=["trial_id", "run_id"]),
        check_dtype=False,
    )
    wide = pd.read_csv(study_dir / "tables" / "comparison.csv", index_col=0)
    assert wide.loc["CG-SC-all", "20%/guided_score_cos"] == pytest.approx(
        s.comparison.loc["CG-SC-all", (20.0, "guided_score_cos")]
    )
    assert set(s.best_configs) == {"CG@20%", "CG-SC-all@20%", "CFG-all@20%"}
    assert "loss.lambda_sc" in s.best_configs["CG-SC-all@20%"]
    assert set(s.curves["scale"]) >= {1.0} and s.table().startswith(" ")


def test_optuna_names_its_objective_and_links_trials_to_their_runs(finished_study):
    import optuna

    _, study_dir, _ = finished_study
    storage = f"sqlite:///{study_dir / 'optuna.db'}"
    study = optuna.load_study(study_name="e2e/CG-SC-all@20%", storage=storage)
    assert study.metric_names == ["val/guided_score_cos"]
    from analysis import load_study

    runs = load_study(study_dir).trials.set_index("trial_id")
    for trial in study.get_trials(states=[optuna.trial.TrialState.COMPLETE]):
        attrs = trial.user_attrs
        assert attrs["cell"] == "CG-SC-all@20%"
        assert runs.loc[attrs["tune_trial_id"], "run_id"] == attrs["mlflow_run_id"]


def test_status_and_plot_read_a_finished_study(finished_study):
    root, study_dir, _ = finished_study
    assert_the_ledger_reads_as_the_runs(study_dir, "e2e")
    status = _cmd("status", str(study_dir), cwd=root)
    assert status.returncode == 0, status.stderr[-2000:]
    assert status.stdout.startswith("search trials 4/4, stage trials 1/1; 0 running, 0 pending")
    assert "CG-SC-all@20%" in status.stdout and "done" in status.stdout
    plot = _cmd("plot", str(study_dir), cwd=root)
    assert plot.returncode == 0, plot.stderr[-2000:]
    figures = {p.name for p in (study_dir / "figures").iterdir()}
    assert {"label_percent_guided_score_cos.pdf", "guidance_guided_score_cos.png"} <= figures
    # A sample grid per method (each cell's chosen trial's samples).
    assert {f"samples_{m}@20%.png" for m in ("CG", "CG-SC-all", "CFG-all")} <= figures, figures
    # Not a study / nothing finished: one line, exit 2, nothing written.
    for command in ("status", "plot"):
        bad = _cmd(command, str(root), cwd=root)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert "is not a study folder" in bad.stderr
    empty = root / "empty-folder"
    empty.mkdir(exist_ok=True)
    bad = _cmd("plot", str(empty), cwd=root)
    assert bad.returncode == 2 and "no spec.yaml" in bad.stderr and not list(empty.iterdir())


def test_plan_predicts_what_the_search_spent_and_runs_nothing(finished_study, tmp_path):
    import re

    root, study_dir, _ = finished_study
    spent = (study_dir / "tables" / "compute.md").read_text()

    def files():  # the studies and the artifact store (the UI test's log may still grow)
        found = [*(root / "studies").rglob("*"), *(root / "artifact-store").rglob("*")]
        return sorted((p, p.stat().st_mtime_ns) for p in found if p.is_file())

    before = files()
    # Against the study's artifact store the networks its first trials trained are there: only
    # a further lambda's classifier (CG-SC-all's second trial) is left to train.
    again = _cmd("plan", "spec.yaml", cwd=root)
    assert again.returncode == 0, again.stderr
    assert "the artifact store holds already (they are reused)" in again.stdout
    left = re.search(r"\| training steps \| ([\d,]+) \|", again.stdout).group(1)
    # Against an empty store (run_main: <cwd>/artifact-store) the plan is the search's own.
    result = _cmd("plan", str(root / "spec.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    planned = re.search(r"\| training steps \| ([\d,]+) \| ([\d,]+) \|", result.stdout)
    measured = re.search(r"\| training steps \| (\d+) \| (\d+) \|", spent)
    as_int = [int(g.replace(",", "")) for g in planned.groups()]
    assert as_int == [int(g) for g in measured.groups()]  # planned = spent, naive = naive
    sampling = r"\| sampling score evaluations \| (\S+) \| (\S+) \|"
    assert re.search(sampling, result.stdout).groups() == re.search(sampling, spent).groups()
    assert 0 < int(left.replace(",", "")) < as_int[0]
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
        result = _cmd("final", str(study_dir), *args, cwd=root)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (study_dir / "mlflow.db").stat().st_mtime_ns == before
    assert not list((study_dir / "tune").glob("final-*"))  # no final session began
    # A study with no finished trial: nothing to take a configuration from.
    empty = tmp_path / "studies" / "empty"
    empty.mkdir(parents=True)
    spec = yaml.safe_load((study_dir / "spec.yaml").read_text())
    spec.update(name="empty", tracking_uri=f"sqlite:///{empty / 'mlflow.db'}")
    (empty / "spec.yaml").write_text(yaml.safe_dump(spec))
    from study.tracking import open_tracking_store

    open_tracking_store(spec["tracking_uri"])  # a store that holds no run of it
    listing = sorted(p.name for p in empty.iterdir())
    result = _cmd("final", str(empty), cwd=root)
    assert result.returncode == 2 and "no finished trial" in result.stderr
    assert sorted(p.name for p in empty.iterdir()) == listing


READERS = ("resume", "status", "table", "plot", "export-best", "final")
DAMAGED = {  # a study file -> the commands that read it
    "optuna.db": READERS,  # the ledger
    "trials/*/final.json": READERS,  # a trial's record
    "spec.yaml": READERS,
    "mlflow.db": ("resume", "table", "final"),  # the others read the ledger and records only
    "trials": READERS,  # every record gone, the ledger kept
}


@pytest.mark.parametrize("damaged", list(DAMAGED))
def test_a_damaged_study_file_is_refused_by_every_reader_naming_it(
    finished_study, tmp_path, damaged
):
    """Truncated (a disk that filled, a copy cut short): exit 2, one line naming the file, nothing
    written (a truncated ledger, record or store was a traceback, exit 1; a missing ledger is
    refused by resume, which would search as if nothing had run)."""
    import shutil

    root, study_dir, _ = finished_study
    copy = tmp_path / "studies" / "e2e"
    shutil.copytree(study_dir, copy)
    before = (study_dir / "mlflow.db").stat().st_mtime_ns
    path = sorted(copy.glob(damaged))[0]
    if path.is_dir():
        shutil.rmtree(path)
    else:
        text = path.read_bytes()
        path.write_bytes(text[: len(text) // 2] if len(text) < 3000 else text[:3000])
    listing = sorted(p.name for p in copy.rglob("*"))
    stamps = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()}
    for command in DAMAGED[damaged]:
        result = _cmd(command, str(copy), cwd=root)
        assert result.returncode == 2, (command, result.stderr[-2000:])
        named = f"{path} cannot be read" in result.stderr or f"{path} lacks" in result.stderr
        named |= f"lack their records (params.json, final.json) under {path};" in result.stderr
        assert named and "nothing was changed" in result.stderr, (command, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (command, result.stderr)
        assert sorted(p.name for p in copy.rglob("*")) == listing, command
        changed = [p for p, t in stamps.items() if p.stat().st_mtime_ns != t]
        assert not changed, (command, changed)
    if damaged == "optuna.db":
        path.unlink()
        result = _cmd("resume", str(copy), cwd=root)
        assert result.returncode == 2 and f"{path} is missing" in result.stderr
        assert sorted(p.name for p in copy.rglob("*")) == [n for n in listing if n != "optuna.db"]
    assert (study_dir / "mlflow.db").stat().st_mtime_ns == before


def test_final_refuses_a_study_with_an_unfinished_cell_unless_allowed(finished_study, tmp_path):
    from study.runner import final_points
    from study.spec import load_spec

    root, study_dir, _ = finished_study
    # A copy of the study's ledger, records and runs, with a fourth cell that has no finished
    # trial.
    holed = tmp_path / "studies" / "e2e"
    holed.mkdir(parents=True)
    for name in ("mlflow.db", "optuna.db"):
        shutil.copy2(study_dir / name, holed / name)
    shutil.copytree(study_dir / "trials", holed / "trials")
    spec = yaml.safe_load((study_dir / "spec.yaml").read_text())
    spec["methods"] = [*spec["methods"], "Cond"]
    (holed / "spec.yaml").write_text(yaml.safe_dump(spec))
    before = (holed / "mlflow.db").stat().st_mtime_ns
    result = _cmd("final", str(holed), "--seeds", "1", cwd=root)
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip()
    assert "cells without a finished search trial: Cond@20%" in line and "study resume" in line
    assert "--allow-missing" in line and len(line.splitlines()) == 1
    assert sorted(p.name for p in holed.iterdir()) == [
        "mlflow.db",
        "optuna.db",
        "spec.yaml",
        "trials",
    ]
    assert (holed / "mlflow.db").stat().st_mtime_ns == before
    # --allow-missing: the three finished cells' choices, the hole left out
    points = final_points(holed, load_spec(str(holed / "spec.yaml")), 1, {}, allow_missing=True)
    assert sorted(p["method"] for p in points) == ["CFG-all", "CG", "CG-SC-all"]


def test_final_runs_each_cells_choice_over_seeds_reusing_what_is_trained(
    finished_study, monkeypatch
):
    root, study_dir, _ = finished_study
    table_before = (study_dir / "tables" / "comparison.md").read_text()
    result = _cli("final", str(study_dir), "--seeds", "2", "--quiet", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    final, search = _final_runs(study_dir)
    assert len(final) == 2 * 3 and (final["status"] == "FINISHED").all()  # 3 cells x 2 seeds
    assert_the_ledger_reads_as_the_runs(study_dir, "e2e")  # the final runs and their networks
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
    # The results API after study final: the final runs apart, the seed statistics the table has.
    import pandas as pd

    from analysis import load_study

    s = load_study(study_dir)
    assert len(s.final_runs) == 6 and len(s.trials) == 4
    written = pd.read_csv(study_dir / "tables" / "final.csv")
    pd.testing.assert_frame_equal(s.final.reset_index(drop=True), written, check_dtype=False)
    # The console shows the seed means, and the label-% figure is redrawn with them.
    assert "± " in result.stdout and "mean ± std over the seeds" in result.stdout
    assert (study_dir / "figures" / "label_percent_guided_score_cos.pdf").exists()
    # The same final again (or after an interruption): what finished is kept, nothing runs twice,
    # and no cluster starts for nothing.
    monkeypatch.setattr("study.runner.init_ray", _no_ray)
    again = _cmd("final", str(study_dir), "--seeds", "2", "--quiet", cwd=root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "6 of 6 final runs already finished (kept)" in again.stdout
    assert "\n0 final runs in" in again.stdout and len(_final_runs(study_dir)[0]) == 6


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
    bad = _cmd("resume", str(study_dir), "--add-trials", "0", cwd=root)
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


def _no_ray(*args, **kwargs):
    raise AssertionError("Ray started")


def test_a_second_driver_of_one_study_is_refused(finished_study, monkeypatch):
    """While one command drives a study (its lease held), `study resume` and `study final` of
    the same folder exit 2 with one line before any cluster starts, and change nothing; once it
    ends, the lease is free."""
    from filelock import FileLock

    monkeypatch.setattr("study.runner.init_ray", _no_ray)
    root, study_dir, _ = finished_study
    watched = [study_dir / "mlflow.db", study_dir / "optuna.db", study_dir / "spec.yaml"]
    before = [p.stat().st_mtime_ns for p in watched]
    lease = FileLock(str(study_dir / "driver.lock"), timeout=0)
    lease.acquire()  # as a running `study run` / `resume` / `final` holds it
    try:
        for command in (("resume", str(study_dir)), ("final", str(study_dir), "--seeds", "1")):
            result = _cmd(*command, cwd=root)
            assert result.returncode == 2, (command, result.stderr[-2000:])
            line = result.stderr.strip()
            assert "is being run by another study command" in line and len(line.splitlines()) == 1
        assert [p.stat().st_mtime_ns for p in watched] == before
    finally:
        lease.release()
    # Free again: a resume with nothing left to do runs (and takes and gives back the lease),
    # starts no trial, no cluster (init_ray still fails) and spends nothing: the compute line
    # stays what it was.
    table = _cmd("table", str(study_dir), cwd=root)
    again = _cmd("resume", str(study_dir), cwd=root)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing left to run" in again.stdout

    def compute(stdout):
        return next(line for line in stdout.splitlines() if line.startswith("compute: "))

    assert compute(again.stdout) == compute(table.stdout)


def test_a_copied_study_reads_and_writes_only_itself_and_unpickles_nothing(
    finished_study, tmp_path
):
    """`cp -a` of a finished study, the original gone: status, table, plot, ui, load_study and
    resume --add-trials 1 work on the copy, and nothing is read from or written to the original's
    place (the shared network cache aside). A pickle planted in every folder of the copy (a
    payload that writes a file) never runs, the resume's new trial included."""
    import signal
    import time

    from cli_helpers import free_port

    from analysis import load_study

    root, study_dir, _ = finished_study
    copy = tmp_path / "elsewhere" / "e2e"
    shutil.copytree(study_dir, copy, symlinks=True)
    # The ledger (optuna.db) is the state; Tune's folders are written, never read back: no
    # command below unpickles anything in the study folder.
    marker = tmp_path / "pwned"
    planted = _plant_pickles(copy, marker)
    assert len(planted) > 10  # tune/, trials/<id>/, mlartifacts/... all planted
    gone = study_dir.with_name("e2e.gone")
    study_dir.rename(gone)

    def files():
        return {p: p.stat().st_mtime_ns for p in (root / "studies").rglob("*") if p.is_file()}

    before = files()
    try:
        for command in (("status",), ("table",), ("plot",)):
            result = _cmd(*command, str(copy), cwd=tmp_path)
            assert result.returncode == 0, (command, result.stderr[-2000:])
            if command == ("status",):
                # The final's networks are not counted against the search's planned stages.
                assert ", stage trials 1/1, final runs " in result.stdout, result.stdout
        searched = load_study(copy).trials
        assert load_study(copy).study_dir == copy
        port = free_port()
        ui = subprocess.Popen(
            [sys.executable, "-m", "study", "ui", str(copy), "--port", str(port)],
            cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
        try:
            time.sleep(3)  # it prints its URLs and rehomes the store before the server starts
        finally:
            os.killpg(ui.pid, signal.SIGTERM)
            ui.wait(timeout=30)
        # Nothing of Tune's is restored: a copy resumes from its ledger like the original.
        more = run_cli("resume", str(copy), "--add-trials", "1", cwd=tmp_path)
        assert more.returncode == 0, more.stderr[-3000:]
        assert not study_dir.exists()  # the original's place was not made again
        assert files() == before  # nothing under the original's storage read-written
        import sqlite3

        with sqlite3.connect(copy / "mlflow.db") as conn:
            uris = [u for (u,) in conn.execute("SELECT artifact_uri FROM runs")]
            (location,) = conn.execute("SELECT artifact_location FROM experiments "
                                       "WHERE name = 'e2e'").fetchone()  # fmt: skip
        assert location == (copy / "mlartifacts").resolve().as_uri()
        assert uris and all(u.startswith(location + "/") for u in uris)
        # The added trial (CG-SC-all's, the one cell with a knob) is in the copy's store.
        assert len(load_study(copy).trials) == len(searched) + 1
        saved = yaml.safe_load((copy / "spec.yaml").read_text())
        assert saved["tracking_uri"] == f"sqlite:///{copy.resolve() / 'mlflow.db'}"
        assert (copy / "tables" / "comparison.md").exists()
        assert not marker.exists()  # no payload ran
    finally:
        gone.rename(study_dir)
