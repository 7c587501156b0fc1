"""MLflow: one experiment per study, a parent run, exactly one child run per trial (the platform
owns it)."""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from filelock import FileLock
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service import utils as tracking_service_utils
from ray import tune
from ray.tune.experiment import Trial

from study.errors import StudyError
from study.locations import absolute_tracking_uri, sqlite_path
from study.views import ROLES
from trainables.names import (
    CURVE_IMAGE,
    DIAGNOSTICS_FILE,
    LABEL_PERCENT_KEY,
    METHOD_KEY,
    SHARED_STAGE,
    SPEC_FILE,
    STAGE_KEY,
    VALIDATION_PREFIX,
    cell_label,
    is_diagnostic,
    knob_text,
    parse_curve_key,
)
from trainables.records import (
    FINAL_KEY,
    TrialRecords,
    evaluated_epochs,
    is_final,
    result_numbers,
    tune_error,
)
from trainables.registry import shaping_keys
from trainables.storage import Place

TERMINAL = {"FINISHED", "FAILED", "KILLED"}
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3's model-training experiment view
STEP_METRIC = "tracker/step"  # the run's result counter (its timestamps: when it was last heard of)


def default_tracking_uri(study_dir: Path) -> str:
    """Embedded SQLite store at an absolute path in the study directory."""
    return f"sqlite:///{(study_dir / 'mlflow.db').resolve()}"


def resolve_tracking_uri(spec_uri: str | None, study_dir: Path) -> str:
    """The spec's URI, else MLFLOW_TRACKING_URI, else the study's own SQLite store; a relative
    SQLite path made absolute (the saved spec must open the same file from any folder)."""

    uri = spec_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(study_dir)
    return absolute_tracking_uri(uri)


def open_tracking_store(uri: str) -> MlflowClient:
    """A client of the store with its tables made: a new SQLite store's migrations run under a
    file lock beside it (<db>.lock), so studies starting together on one new store create its
    tables once (without it the second failed: "table ... already exists"). A new SQLite store
    starts as a copy of this MLflow version's empty store (store_template), made by the first."""
    if not uri.startswith("sqlite:///"):
        return MlflowClient(uri)

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock", timeout=600):
        new = not db.exists()
        template = store_template()
        if new and template.is_file():
            _copy_atomically(template, db)
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # creates and migrates the tables (or checks)
        if new and not template.is_file():
            _keep_as_template(db, template)
    return client


def store_template() -> Path:
    """Where this MLflow version's empty SQLite store is kept (~/.cache/sc-guidance): migrated,
    with no experiment; MLflow adds its Default experiment when it opens a copy, as in a store it
    made itself. Alembic's migrations took 2.3 s of a new store's 3.7 s (1.4 s opening a copy)."""
    version = metadata.version("mlflow")
    return Path.home() / ".cache" / "sc-guidance" / "mlflow-stores" / f"empty-{version}.db"


def _copy_atomically(source: Path, target: Path) -> None:
    """target becomes a whole copy of source or stays as it was (a copy made beside it, renamed)."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _keep_as_template(db: Path, template: Path) -> None:
    """Keep a copy of the store db MLflow has just made, its Default experiment removed, as the
    template; only a speed-up, so a failure to write it is ignored (the next new store migrates)."""
    partial = template.with_name(f".{template.name}.{os.getpid()}.partial")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(db, partial)
        with contextlib.closing(sqlite3.connect(partial)) as conn, conn:
            conn.execute("DELETE FROM experiments WHERE experiment_id = 0")
            left = conn.execute("SELECT count(*) FROM experiments").fetchone()[0]
        if left == 0:  # a store that held nothing else
            os.replace(partial, template)
    except (OSError, sqlite3.Error):
        pass
    finally:
        partial.unlink(missing_ok=True)


def environment_tags() -> dict[str, str]:
    """Git commit and package versions."""
    tags = {}
    try:
        tags["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=5,
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.TimeoutExpired):
        tags["git_commit"] = "unknown"
    for pkg in ("torch", "ray", "optuna", "mlflow"):
        try:
            tags[f"version.{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return tags


def trial_runs_filter(study_id: str | None) -> str:
    """MLflow filter for every trial run of a study (search, stage and final: every role but the
    parent's; study.views names the roles)."""
    return runs_filter("study", study_id).replace("tags.role =", "tags.role !=", 1)


def runs_filter(role: str, study_id: str | None) -> str:
    """MLflow filter for a study's runs of one role (study | trial); a study without an id (made
    before ids existed) is its whole experiment."""
    scope = f" and tags.study_id = '{study_id}'" if study_id else ""
    return f"tags.role = '{role}'{scope}"


def check_study_identity(uri: str, name: str, study_dir: Path) -> None:
    """Refuse a new study whose name another study already uses on the same tracking store."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return  # a new SQLite store holds no study yet (and must not be created here)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return
    parents = client.search_runs([exp.experiment_id], runs_filter("study", None), max_results=10)
    others = {p.data.tags.get("study_dir") for p in parents} - {str(study_dir)}
    if others:
        raise StudyError(
            f"the tracking store {uri} already holds a study named {name!r} "
            f"(in {sorted(others)[0]}); give this study another name or another tracking_uri"
        )


def rehome_artifacts(uri: str) -> int:
    """A study folder's own SQLite store (mlflow.db beside its spec) whose run artifacts live in
    another folder's mlartifacts (the study was copied or moved there): point its experiments and
    runs at the artifacts beside it, so the copy reads and writes only itself (MLflow has no API
    that moves an experiment's artifact location: SQL on the store). Returns the rows changed."""
    path = sqlite_path(uri) if uri.startswith("sqlite:///") else None
    if path is None or path.name != "mlflow.db" or not path.exists():
        return 0
    if not (path.parent / SPEC_FILE).exists():
        return 0  # a store of its own (shared by studies), not a study folder's
    new = (path.parent / "mlartifacts").resolve().as_uri()
    changed = 0
    with contextlib.closing(sqlite3.connect(path, timeout=60)) as conn, conn:
        olds = [
            old
            for (old,) in conn.execute("SELECT artifact_location FROM experiments")
            if old and old.startswith("file://") and old.endswith("/mlartifacts") and old != new
        ]
        for old in olds:
            changed += conn.execute(
                "UPDATE experiments SET artifact_location = ? WHERE artifact_location = ?",
                (new, old),
            ).rowcount
            changed += conn.execute(
                "UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                "WHERE substr(artifact_uri, 1, ?) = ?",
                (new, len(old) + 1, len(old) + 1, old + "/"),
            ).rowcount
    if changed:
        # MLflow keeps each run's artifact repository for the life of the process (keyed by run
        # id, private): one made before the move would go on writing to the old folder.
        getattr(tracking_service_utils, "_artifact_repos_cache", {}).clear()
    return changed


def ensure_parent_run(
    client: MlflowClient,
    experiment_name: str,
    spec_dict: dict,
    study_dir: Path,
    study_id: str | None = None,
) -> tuple[str, str]:
    """Create (or find) the experiment and the study's parent run; return (experiment_id,
    run_id)."""
    rehome_artifacts(str(client.tracking_uri))
    exp = client.get_experiment_by_name(experiment_name)
    # Artifacts (sample grids, tables, curves) live in the study directory, not in the caller's
    # cwd; with a tracking server, in the server's store (it serves them to every UI user).
    served = str(client.tracking_uri).startswith(("http://", "https://"))
    location = None if served else (study_dir / "mlartifacts").resolve().as_uri()
    exp_id = (
        exp.experiment_id
        if exp
        else client.create_experiment(experiment_name, artifact_location=location)
    )
    # The experiment's kind in MLflow 3's own terms ("Machine learning" in its kind selector). The
    # 3.17 UI chooses its layout from a URL parameter instead, which `study ui` prints (study.cli).
    client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    existing = client.search_runs([exp_id], runs_filter("study", study_id), max_results=1)
    if existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return exp_id, run_id
    run = client.create_run(
        exp_id,
        run_name=f"study:{experiment_name}",
        tags={
            "role": "study",
            "study_dir": str(study_dir),
            **({"study_id": study_id} if study_id else {}),
            **environment_tags(),
        },
    )
    client.log_dict(run.info.run_id, spec_dict, "spec.json")
    return exp_id, run.info.run_id


class MLflowTracker(tune.Callback):
    """Tune callback on the driver: one MLflow run per trial (found again by trial id when Tune
    restarts a failed trial). It writes MLflow and nothing else (the console's progress:
    study.progress.ConsoleProgress)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        record_root: Path | str,  # a folder or an object-store URI (trainables.storage)
        full_params: Callable[[dict], dict],
        study_id: str | None = None,
        stage: str = "search",
        experiment_name: str | None = None,
    ) -> None:
        self.study_id = study_id
        self.experiment_name = experiment_name
        self.stage = stage  # search (the cells' searches) | final (study final: seeds)
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.records = Place(str(record_root))
        self.record_root = self.records.local
        self.full_params = full_params  # picklable: trial params -> every flat param
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}

    def __getstate__(self) -> dict:
        """Pickle without the client (Tune saves callbacks with the experiment)."""
        return {**self.__dict__, "_client": None, "_runs": {}}

    @property
    def client(self) -> MlflowClient:
        """The MLflow client, made on first use (it is not pickled with the callback)."""
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def run_for(self, trial: Trial) -> str:
        """The trial's run, a new one at its first call. A trial id is new in every session (Tune
        restarts no trial: a failed one's configuration runs again as a new trial, and Ray Train
        restarts a worker group inside its trial)."""
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        params = trial.config
        flat = self.full_params(params)
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name(params, flat, self.stage),
            tags=self._tags(trial),
            start_time=getattr(trial, "start_time", None),  # a rebuilt run's (rebuild_runs)
        )
        run_id = run.info.run_id
        shaping = shaping_keys(str(params.get(METHOD_KEY)), flat)
        self.client.log_batch(run_id, params=[Param(k, str(flat[k])) for k in sorted(shaping)])
        self._runs[trial.trial_id] = run_id
        self._record_run(trial.trial_id, run_id)
        return run_id

    def _record_run(self, trial_id: str, run_id: str) -> None:
        """trials/<id>/mlflow_run_id.txt: the searcher links the cell's Optuna trial to the run.
        A folder that cannot be written fails the trial (its worker writes there too), never the
        driver: the run is tagged with why."""
        try:
            TrialRecords.of(self.records, trial_id).write_run_id(run_id)
        except OSError as exc:
            self.client.set_tag(run_id, "record_error", f"{type(exc).__name__}: {exc}"[:5000])

    def _tags(self, trial: Trial) -> dict[str, str]:
        """A trial run's tags. Runs are flat, not nested under the study's run: MLflow's runs
        view collapses children under their parent (every trial hidden behind one row) and its
        charts plot only the parent; study_run_id links them instead."""
        params = trial.config
        method, pct = str(params.get(METHOD_KEY)), params.get(LABEL_PERCENT_KEY)
        tags = {
            "study": self.experiment_name or "",
            "study_run_id": self.parent_run_id,
            "trial_id": trial.trial_id,
            "role": ROLES["shared" if params.get(STAGE_KEY) else self.stage],
            **({"study_id": self.study_id} if self.study_id else {}),
            "method": method,
            "label_percent": str(pct),
            "cell": cell_label(method, float(pct)),
            "stage": SHARED_STAGE if params.get(STAGE_KEY) else self.stage,
            "session": self.stage,  # the command that ran it: search (run / resume) or final
            **environment_tags(),
        }
        if params.get(STAGE_KEY):
            tags["shared_artifact"] = str(params[STAGE_KEY])
        return tags

    def on_trial_start(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        """Create (or find) the trial's run."""
        self.run_for(trial)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Trial, result: dict, **info: Any
    ) -> None:
        """Log a result's numbers at the run's own step counter."""
        run_id = self.run_for(trial)
        step = int(result.get("training_iteration", 0))
        now = int(time.time() * 1000)
        numbers = result_numbers(result)
        metrics = [
            Metric(k.replace("@", "_"), v, now, step)
            for k, v in numbers.items()
            if not is_diagnostic(k)
        ]
        metrics.append(Metric(STEP_METRIC, float(step), now, step))
        if is_final(result):
            log_diagnostics(self.client, run_id, numbers)
            # The validation guidance curve as a metric history the MLflow UI charts:
            # guidance_curve/<metric> at step = round(100 x scale).
            for key, value in result.items():
                parsed = parse_curve_key(str(key))
                if parsed and math.isfinite(float(value)):
                    name = f"guidance_curve/{parsed[0]}"
                    metrics.append(Metric(name, float(value), now, round(100 * parsed[1])))
        self.client.log_batch(run_id, metrics=metrics)

    def _end(self, trial: Trial, status: str) -> None:
        """Tag the run with the trial's records, log its samples, and end it."""
        run_id = self.run_for(trial)
        records = TrialRecords.of(self.records, trial.trial_id)
        records.place.pull()  # an object store's records into the mirror
        for name, path in records.artifacts().items():
            self.client.set_tag(run_id, f"artifact.{name}", path)
        for name, value in records.tags().items():
            self.client.set_tag(run_id, name, str(value)[:5000])
        if status == "FAILED":
            # Why it failed, where users look: tags on the run.
            for name, value in _failure_tags(records, trial).items():
                self.client.set_tag(run_id, name, value)
        for picture in sorted(records.folder.glob("*.png")):
            folder = "plots" if picture.name == CURVE_IMAGE else "samples"
            self.client.log_artifact(run_id, str(picture), folder)
        if status == "FINISHED" and not is_final(trial.last_result):
            # Stopped by the scheduler (ASHA) before its final evaluation.
            self.client.set_tag(run_id, "early_stopped", "true")
            self.client.set_tag(
                run_id, "stopped_at_epoch", str(evaluated_epochs(trial.last_result))
            )
        self.client.set_terminated(run_id, status)

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        """End the run FINISHED."""
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        """End the run FAILED."""
        self._end(trial, "FAILED")


def log_diagnostics(client: MlflowClient, run_id: str, numbers: dict[str, float]) -> None:
    """A final result's diagnostics (trainables.names.is_diagnostic) as the run's table artifact
    DIAGNOSTICS_FILE: one row per key with its split (val / test), metric and index (the guidance
    scale, class or band), which the UI shows as a table and analysis.runs reads back."""
    rows = [diagnostic_row(k, v) for k, v in sorted(numbers.items()) if is_diagnostic(k)]
    if rows:
        columns = ["key", "split", "metric", "per", "index", "value"]
        table = {"columns": columns, "data": [[row[c] for c in columns] for row in rows]}
        client.log_dict(run_id, table, DIAGNOSTICS_FILE)
        client.set_tag(run_id, "diagnostics", DIAGNOSTICS_FILE)


def diagnostic_row(key: str, value: float) -> dict[str, Any]:
    """{key, split, metric, per, index, value} of one diagnostic key."""
    split = "val" if key.startswith(VALIDATION_PREFIX) else "test"
    name = key.removeprefix(VALIDATION_PREFIX)
    curve = parse_curve_key(name)
    if curve is not None:
        return {"key": key, "split": split, "metric": curve[0], "per": "scale",
                "index": curve[1], "value": value}  # fmt: skip
    if name.startswith("artifact_reused/"):
        return {"key": key, "split": split, "metric": "artifact_reused", "per": "network",
                "index": name.split("/", 1)[1], "value": value}  # fmt: skip
    metric, per, index = re.match(r"(.*)_(class|band)(\d+)$", name).groups()
    return {"key": key, "split": split, "metric": metric, "per": per, "index": int(index),
            "value": value}  # fmt: skip


def run_name(params: dict, flat: dict, stage: str) -> str:
    """A trial run's name as it reads in the UI: 'CG-SC-all@5% · lambda_SC=0.1' (a final run adds
    its seed; a stage trial names the network it trains)."""
    method, pct = str(params.get(METHOD_KEY)), float(params.get(LABEL_PERCENT_KEY))
    cell = cell_label(method, pct)
    if params.get(STAGE_KEY):
        return f"shared {params[STAGE_KEY]} network (for {cell})"
    parts = [cell, knob_text(method, flat)]
    if stage == "final":
        parts.append(f"seed {flat.get('train.seed')}")
    return " · ".join(p for p in parts if p)


def _failure_tags(records: TrialRecords, trial: Trial) -> dict[str, str]:
    """error_type, error_message and failed_at_step from the worker's error record, else the last
    line of Tune's error file (an error outside the worker)."""
    reason = records.error()
    if reason is not None:
        tags = {"error_type": reason["type"], "error_message": reason["message"][:5000]}
        if reason.get("step") is not None:
            tags["failed_at_step"] = str(reason["step"])
        return tags
    outside = tune_error(getattr(trial, "error_file", None))
    if outside is not None:
        return {"error_type": outside["type"], "error_message": outside["message"]}
    return {"error_type": "unknown", "error_message": "the trial failed without an error record"}


def last_heard(client: MlflowClient, run: Any, records: TrialRecords | None) -> int:
    """When a trial a stopped driver left RUNNING was last heard of (ms since the epoch): its
    latest result logged to MLflow or record written, else its start. Its run ends then, not
    when the next session settles it, so the dead session's wall (analysis.accounting.study_wall)
    ends where its trials did."""
    heard = [int(run.info.start_time or 0)]
    heard += [m.timestamp for m in client.get_metric_history(run.info.run_id, STEP_METRIC)]
    times = records.times() if records is not None else None
    return max(heard + [int(t * 1000) for t in times or ()])


def _finish_from_record(
    client: MlflowClient, run: Any, final: dict, records: TrialRecords | None = None
) -> int:
    """A trial that finished (its final record written) just before the driver was killed: end its
    run FINISHED when it was last heard of (its final record), logging the final result if the
    driver never did. Returns 1 if the run changed."""
    if run.info.status in TERMINAL:
        return 0
    end = last_heard(client, run, records)
    if FINAL_KEY not in run.data.metrics:
        step = int(run.data.metrics.get(STEP_METRIC, 0)) + 1
        values = [
            Metric(k.replace("@", "_"), v, end, step)
            for k, v in final.items()
            if not is_diagnostic(k)
        ]
        client.log_batch(run.info.run_id, metrics=values)
        log_diagnostics(client, run.info.run_id, final)
    client.set_terminated(run.info.run_id, "FINISHED", end_time=end)
    client.set_tag(run.info.run_id, "finished_before_the_driver_was_killed", "true")
    return 1


def mark_orphaned(client: MlflowClient, run: Any, records: TrialRecords | None) -> None:
    """A run whose trial a stopped driver took down: kept, ended KILLED when it was last heard of,
    tagged with the reason, with the training it spent (its spent record: the networks it stored,
    which the trial running its configuration again reuses) for the compute accounting."""
    end = last_heard(client, run, records)
    spent = records.spent() if records is not None else {}
    if spent:
        metrics = [Metric(k, float(v), end, 0) for k, v in spent.items()]
        client.log_batch(run.info.run_id, metrics=metrics)
    client.set_tag(run.info.run_id, "orphaned", "true")
    reason = (
        "the study's driver stopped (killed or interrupted) before this trial ended; "
        "the next session runs its configuration again as a new trial"
    )
    client.set_tag(run.info.run_id, "orphaned_reason", reason)
    if run.info.status not in TERMINAL or run.info.status == "FINISHED":
        client.set_terminated(run.info.run_id, "KILLED", end_time=end)


def reconcile(
    tracking_uri: str,
    experiment_id: str,
    study_id: str | None = None,
    record_root: Path | None = None,
) -> int:
    """After a session (every trial of it ended): one run per trial id, and no run left RUNNING.
    A RUNNING run whose trial's final record exists is ended FINISHED from the record (the trial
    finished as its driver died); any other belongs to a trial a stopped driver took down: kept
    (nothing is deleted that holds a history), ended KILLED and tagged with the reason (the ledger
    runs its configuration again). Returns how many runs changed."""
    client = MlflowClient(tracking_uri)
    fixed = 0
    seen: dict[str, str] = {}
    for run in client.search_runs(
        [experiment_id],
        filter_string=trial_runs_filter(study_id),
        max_results=50000,
        order_by=["attributes.start_time ASC"],
    ):
        trial_id = run.data.tags.get("trial_id")
        if trial_id in seen:
            # A duplicate for the same trial: merge nothing, delete it (first run keeps the
            # history).
            client.delete_run(run.info.run_id)
            fixed += 1
            continue
        seen[trial_id] = run.info.run_id
        if run.info.status in TERMINAL:
            continue
        records = TrialRecords.of(record_root, trial_id) if record_root else None
        final = records.final() if records else None
        if final is not None:
            fixed += _finish_from_record(client, run, final, records)
        else:
            mark_orphaned(client, run, records)
            fixed += 1
    return fixed


def log_report(
    tracking_uri: str, experiment_name: str, files: list[Path], study_id: str | None = None
) -> None:
    """Log the study's tables and curves to its parent run (artifact folder "report")."""
    rehome_artifacts(tracking_uri)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        return
    parents = client.search_runs([exp.experiment_id], runs_filter("study", study_id), max_results=1)
    if not parents:
        return
    for path in files:
        if Path(path).exists():
            client.log_artifact(parents[0].info.run_id, str(path), "report")
