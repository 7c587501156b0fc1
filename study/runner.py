"""Launch a study: pre-flight checks, Ray, the Tuner (OptunaSearch over Ray Train trials),
MLflow."""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from filelock import FileLock, Timeout

from analysis.ledger import (
    LEASE_FILE,
    ledger_runs,
    not_run_again,
    progress_records,
    sqlite_problem,
)
from study.cluster import check_cluster, core_lender, init_ray, preflight_nodes
from study.errors import StudyError
from study.locations import check_tracking_uri, sqlite_path
from study.plan import make_plan
from study.progress import Progress, from_records
from study.spec import StudySpec, validate
from study.stages import StageGate, cell_stages, plan_stages
from study.trial import StudyContext, trial_driver
from study.views import write_views
from trainables.config import to_flat
from trainables.context import TrialContext
from trainables.names import (
    CHOSEN_SCALE,
    GUIDANCE_SCALE_KEY,
    LABEL_PERCENT_KEY,
    METHOD_KEY,
    SEED_KEYS,
    SPEC_FILE,
    STAGE_KEY,
    TUNED_KEYS,
    VALIDATION_PREFIX,
    cell_label,
)
from trainables.records import HEARTBEAT_S, TrialRecords, live_driver, mark_lost, write_session
from trainables.storage import Place

__all__ = ["StudyError", "StudyInterrupted", "load_study_spec", "run_study", "study_dir_for"]


def study_dir_for(spec: StudySpec) -> Path:
    """Absolute study directory: <storage or ./studies>/<name>, or its mirror on this machine when
    storage is an object-store URI (trainables.storage)."""
    return spec.study_place().local


def check_store(place: Place, what: str) -> None:
    """An object-store place answers: a small object written, read back and removed."""
    problem = place.problem()
    if problem is not None:
        raise StudyError(
            f"cannot write to the {what} {place.location} ({problem}); fix the URI, or the store's "
            "credentials and endpoint (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...) in this shell"
        )


def full_params(params: dict, *, spec: StudySpec) -> dict[str, Any]:
    """Every flat param of a trial: its resolved config (spec.trial_config) as flat keys."""
    config = spec.trial_config({k: v for k, v in params.items() if k != STAGE_KEY})
    flat = to_flat(config)
    return {k: (",".join(map(str, v)) if isinstance(v, tuple) else v) for k, v in flat.items()}


def check_writable(study_dir: Path, message: str | None = None) -> None:
    """The folder can be made: its nearest existing ancestor is a directory in which a folder can
    be created (probed with a temporary folder, removed at once). message replaces the study
    directory's error."""
    probe = study_dir
    while not probe.exists():
        probe = probe.parent
    fix = "set 'storage' in the spec to a writable folder"
    if study_dir.exists() and not study_dir.is_dir():
        raise StudyError(message or f"study directory {study_dir} is a file; {fix}")
    try:
        if not probe.is_dir():
            raise OSError(f"{probe} is not a directory")
        tempfile.TemporaryDirectory(dir=probe, prefix=".study-probe-").cleanup()
    except OSError:
        raise StudyError(
            message or f"study directory {study_dir} is not writable ({probe}); {fix}"
        ) from None


def prepare(spec: StudySpec, *, resume: bool) -> tuple[Path, str]:
    """Pre-flight before anything is written: directory state, writability, the tracking URI,
    and (resume, final) the driver lease; the cluster is start_cluster's. Returns (dir, uri)."""
    from study.tracking import check_study_identity, resolve_tracking_uri

    study_dir = study_dir_for(spec)
    place, store_place = spec.study_place(), spec.artifact_place(spec.study_place())
    for where, what in ((place, "storage"), (store_place, "artifact store")):
        if where.remote:
            check_store(where, what)
    if not resume and place.exists(study_dir / SPEC_FILE):
        raise StudyError(
            f"study directory {study_dir} already holds a study; "
            f"use 'study resume {study_dir}' or give the spec a new name"
        )
    check_writable(study_dir)
    if resume:  # a second driver of the study is refused before a cluster starts
        take_lease(study_dir)
        refuse_other_driver(place, study_dir)
    store = store_place.local
    check_writable(
        store, f"the artifact store {store} is not writable; set 'artifact_store' in the spec to a "
        f"writable folder (or 'study' for the study directory)"
    )  # fmt: skip
    uri = resolve_tracking_uri(spec.tracking_uri, study_dir)
    problems: list[str] = []
    check_tracking_uri(uri, problems)
    if problems:
        raise StudyError(problems[0])
    if not resume:
        check_study_identity(uri, spec.name, study_dir)
    return study_dir, uri


def start_cluster(spec: StudySpec, study_dir: Path, *, resume: bool) -> None:
    """Ray and the checks that need it (each node can run a trial, sees the study's folders and
    holds its data); a new study's driver lease once every check has passed."""
    place, store_place = spec.study_place(), spec.artifact_place(spec.study_place())
    # Local-mode trials (num_workers 0) start no TorchTrainer, the one user of the dashboard.
    init_ray(spec.address, dashboard=spec.resources.num_workers > 0)
    check_cluster(spec)
    if place.remote or store_place.remote:
        from trainables.cache import lease_actor

        lease_actor()  # the networks' leases in an object store: made here, outside any trial
    # Every node that will run trials sees the study's folders and holds its data.
    preflight_nodes(spec, [place if place.remote else study_dir.parent, store_place])
    if not resume:  # a new study's folder is made once every check has passed
        take_lease(study_dir)


_LEASES: list[FileLock] = []  # the leases this process holds (released at the command's end)


def take_lease(study_dir: Path) -> None:
    """The study's driver lease: one `study run`, `resume` or `final` of a study folder at a time
    on this machine (an OS file lock on <study>/driver.lock, released when the command ends or its
    process dies, killed or not). StudyError when another command holds it: two drivers of one
    study would hand out its trials twice."""
    study_dir.mkdir(parents=True, exist_ok=True)
    lease = FileLock(str(study_dir / LEASE_FILE), timeout=0)
    try:
        lease.acquire()
    except Timeout:
        raise StudyError(
            f"{study_dir} is being run by another study command (run, resume or final) on this "
            "machine; wait for it to end (study status shows it) or stop it, then run this again"
        ) from None
    _LEASES.append(lease)


def refuse_other_driver(place: Place, study_dir: Path) -> None:
    """StudyError when a driver on another machine runs the study (one in an object store, which
    the lease on this machine cannot see): its session record is heard of (live_driver)."""
    other = live_driver(place) if place.remote else None
    if other is None:
        return
    heard = time.time() - float(other["heard"])
    raise StudyError(
        f"{study_dir} is being run by another study command on {other['host']} (process "
        f"{other['pid']}, heard of {heard:.0f} s ago); wait for it to end (study status shows "
        f"it) or stop it; a driver killed there counts as gone {3 * HEARTBEAT_S:.0f} s after "
        "it was last heard of"
    )


def release_leases() -> None:
    """Release the driver leases this process took (the end of a command run in-process)."""
    while _LEASES:
        _LEASES.pop().release(force=True)


def _study_context(spec: StudySpec, study_dir: Path) -> Any:
    """What every trial of the study shares."""

    resources = spec.resources
    trial = TrialContext(
        config=spec.trial_config({"method": spec.methods[0]}),  # each trial's replaces it
        cache_dir=str(spec.artifact_place(spec.study_place(study_dir))),
        record_dir=str(spec.study_place(study_dir) / "trials"),
        threads=max(1, int(resources.cpus_per_trial)),  # per process: the trial's or a worker's
        local_mode=resources.num_workers == 0,
        eval_every_epoch=spec.scheduler.type == "asha",
        objectives=tuple((o.metric, o.mode) for o in spec.objectives),
        lender=core_lender(spec),
    )
    return StudyContext(
        spec=spec,
        trial=trial,
        train_dir=str(spec.study_place(study_dir) / "train"),
        num_workers=resources.num_workers,
        cpus=resources.cpus_per_trial,
        gpus=resources.gpus_per_trial,
        max_failures=resources.max_failures,
    )


def new_tuner(
    spec: StudySpec,
    study_dir: Path,
    stage: str,
    trainable: Any,
    callbacks: list,
    searcher: Any,
    samples: int,
    scheduler: Any = None,
) -> Any:
    """A new Tune experiment for one session of the study (the one place a Tuner is built): the
    searcher and scheduler, the callbacks (the MLflow tracker, the console). Tune runs the trials
    and forgets them: its experiment folder (tune/<stage>-<time>-<id>) is never read back."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    # Tune's own per-trial logs stay (progress.csv, result.json); its TensorBoard logger is off
    # (study.cluster.init_ray).
    loggers = [CSVLoggerCallback(), JsonLoggerCallback()]
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=samples,
        max_concurrent_trials=spec.resources.max_concurrent_trials,
        reuse_actors=True,
    )
    name = f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_config = tune.RunConfig(
        name=name,
        storage_path=str(spec.study_place(study_dir) / "tune"),
        callbacks=[*callbacks, *loggers],
        verbose=0,
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def _fit_search(
    spec: StudySpec, study_dir: Path, trainable: Any, callbacks: Any, searcher: Any = None
) -> bool | None:
    """One search session: a new Tuner whose searcher (made here unless given) spends what the
    cells' budgets still allow (read from optuna.db, the trials a gone driver left settled
    first); True if a Ctrl-C stopped it, None if nothing was left to run (no trial starts)."""
    from study.search import CellSearcher, make_scheduler

    searcher = CellSearcher(spec, study_dir) if searcher is None else searcher
    if not searcher.total:
        print(f"nothing left to run in {study_dir}: every cell has spent its budget")
        return None
    scheduler = make_scheduler(spec, searcher)
    tuner = new_tuner(
        spec, study_dir, "search", trainable, callbacks, searcher, searcher.total, scheduler
    )
    return _fit_noting_interrupt(tuner)[1]


EVALUATION_CACHE_KEY = "eval.cache_dir"


def with_evaluation_cache(spec: StudySpec, study_dir: Path) -> StudySpec:
    """One evaluation yardstick per study, owned by it: unless the spec names eval.cache_dir, the
    evaluation classifier and the reference statistics live in the study folder's evaluation/
    (a copied or moved study measures with the same ones), seeded from and published to the
    artifact store's evaluation/ (eval.shared_cache_dir), so no study trains one another has. A
    study in an object store keeps them in the artifact store's (every node sees it). The saved
    spec pins both."""
    if EVALUATION_CACHE_KEY in spec.config:
        return spec
    place = spec.study_place(study_dir)
    shared = str(spec.artifact_place(place) / "evaluation")
    if place.remote:
        return spec.replace(config={**spec.config, EVALUATION_CACHE_KEY: shared})
    own = {EVALUATION_CACHE_KEY: str(study_dir / "evaluation"), "eval.shared_cache_dir": shared}
    return spec.replace(config={**spec.config, **own})


def _save_spec(spec: StudySpec, study_dir: Path, uri: str) -> None:
    """The saved spec pins where results live, so resume / table / export find them from
    anywhere (written to a temporary file, then moved into place)."""
    study_dir.mkdir(parents=True, exist_ok=True)
    place = spec.study_place(study_dir)
    saved = {
        **spec.to_dict(),
        "storage": spec.storage if place.remote else str(study_dir.parent),
        "tracking_uri": uri,
        "artifact_store": str(spec.artifact_place(place)),
    }
    tmp = study_dir / f"{SPEC_FILE}.tmp"
    tmp.write_text(yaml.safe_dump(saved, sort_keys=False))
    os.replace(tmp, study_dir / SPEC_FILE)
    place.push(study_dir / SPEC_FILE)


def _session(
    spec: StudySpec,
    study_dir: Path,
    uri: str,
    verbose: int,
    stage: str = "search",
    progress: Any = None,
    begun: float = 0.0,
) -> tuple[Any, str, str, Any, Any]:
    """(MLflow client, experiment id, parent run id, Tune trainable, callbacks: the trial
    recorder, the MLflow tracker and the console's progress). verbose: 0 nothing live, 1 trial
    ends and the status, 2 every epoch too; progress: the live status's model
    (study.progress.Progress); begun: the session's start (its record's key)."""
    from ray import tune

    from study.console import ConsoleProgress
    from study.recorder import TrialRecorder
    from study.tracking import MLflowTracker, ensure_parent_run, open_tracking_store

    client = open_tracking_store(uri)
    exp_id, parent = ensure_parent_run(
        client, spec.name, spec.to_dict(), study_dir, study_id=spec.study_id
    )
    objectives = [(o.metric, o.mode) for o in spec.objectives]
    write_views(client, exp_id, objectives, spec.methods, spec.dataset, spec.study_id)
    study = _study_context(spec, study_dir)
    # Train's local mode runs in the trial's process: the trial holds the CPUs; else the workers do.
    resources = spec.resources
    if resources.num_workers == 0:
        driver = {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial}
    else:
        driver = {"cpu": 0.01}
    trainable = tune.with_resources(tune.with_parameters(trial_driver, study=study), driver)
    to_params = partial(full_params, spec=spec)
    first = spec.objectives[0]
    tracker = MLflowTracker(
        uri,
        exp_id,
        parent,
        str(spec.study_place(study_dir) / "trials"),
        to_params,
        study_id=spec.study_id,
        stage=stage,
        experiment_name=spec.name,
    )
    console = ConsoleProgress(progress, verbose, stage, f"{VALIDATION_PREFIX}{first.metric}")
    place = spec.study_place(study_dir)
    recorder = TrialRecorder(str(place / "trials"), partial(write_session, place, stage, begun))
    return client, exp_id, parent, trainable, [recorder, tracker, console]


def settle_records(
    spec: StudySpec, study_dir: Path, uri: str, exp_id: str | None, ledger: bool
) -> None:
    """After a session, or before a resume with nothing to run: the stage and final trials a
    stopped session cut short marked lost, its MLflow runs reconciled with the records (one per
    trial, none left RUNNING), and (ledger: a search session's) the trials it left RUNNING
    settled in the ledger."""
    from study.search import settle_study
    from study.tracking import reconcile

    (spec.study_place(study_dir) / "trials").pull()  # an object store's records, mirrored
    mark_lost(spec.study_place(study_dir) / "trials")
    if exp_id is not None:
        reconcile(uri, exp_id, study_id=spec.study_id, record_root=study_dir / "trials")
    if ledger:  # trials a Ctrl-C stopped: FAIL in the ledger, run again on resume
        settle_study(spec, study_dir)


def _run_session(
    spec: StudySpec,
    study_dir: Path,
    uri: str,
    verbose: int,
    stage: str,
    fit: Any,
    progress: Any = None,
) -> None:
    """Run fit(trainable, callbacks) -> interrupted? (None: it had nothing to run), then reconcile
    MLflow with the records: exactly one run per trial, none left RUNNING; the parent run says how
    it ended. A session with nothing to run counts no wall time in the accounting."""
    start = time.perf_counter()
    # Each session's start and wall in the study's session records (and on the parent run, under
    # its own step, for the UI), so the accounting sums the study's whole life; a session killed
    # (kill -9, the machine lost) before it writes its wall is bounded by its trials' ends
    # (analysis.accounting.study_wall).
    # The recorder writes it again every HEARTBEAT_S while the session runs.
    begun = time.time()
    session = _session(spec, study_dir, uri, verbose, stage, progress, begun)
    client, exp_id, parent, trainable, callbacks = session
    step = int(begun * 1000)
    write_session(spec.study_place(study_dir), stage, begun)
    client.log_metric(parent, f"study/{stage}_session_start", begun, step=step)
    outcome = "FAILED"  # the parent run's status unless the work completes or is interrupted
    ran = True
    try:
        interrupted = fit(trainable, callbacks)
        ran = interrupted is not None
        if interrupted:
            raise StudyInterrupted(study_dir)
        outcome = "FINISHED"
    except KeyboardInterrupt:
        outcome = "KILLED"
        raise
    finally:
        settle_records(spec, study_dir, uri, exp_id, ledger=stage == "search")
        client.set_terminated(parent, outcome)
        # Its wall, also when interrupted or failed: the session ended (only a kill skips this).
        wall = time.perf_counter() - start if ran else 0.0
        write_session(spec.study_place(study_dir), stage, begun, wall)
        client.log_metric(parent, f"study/{stage}_wall_seconds", wall, step=step)


def back_up_to_store(spec: StudySpec, study_dir: Path) -> str | None:
    """With an object store: copy the driver's own files (spec, tables, the Optuna and the MLflow
    SQLite databases, which the driver has closed) into the study's place in the store, so that
    losing the driver machine loses no result; the URI written to, or None for a folder."""
    place = spec.study_place(study_dir)
    if not place.remote:
        return None
    for name in (SPEC_FILE, "tables", "figures", "optuna.db", "mlflow.db"):
        if (study_dir / name).exists():
            place.push(study_dir / name)
    return place.location


def run_study(
    spec: StudySpec, *, resume: bool = False, verbose: int = 1, add_trials: int = 0
) -> Path:
    """Run (or resume) a study to completion; returns the study directory. add_trials (with
    resume) raises every cell's budget by that many trials and spends them in a new experiment."""
    from study.tracking import open_tracking_store

    study_dir, uri = prepare(spec, resume=resume)
    searcher = None
    if resume and not add_trials:
        searcher = _resume_searcher(spec, study_dir, uri)
        if searcher is None:
            return study_dir
    start_cluster(spec, study_dir, resume=resume)
    open_tracking_store(uri)  # before the spec is saved: a store that cannot open leaves nothing
    if not resume:
        spec = spec.replace(study_id=uuid.uuid4().hex[:16])
        spec = with_evaluation_cache(spec, study_dir)
        _save_spec(spec, study_dir, uri)
    if add_trials:
        per_cell = max(spec.cell_budgets().values()) + add_trials
        spec = spec.replace(trials_per_cell=per_cell)
        spec = spec.replace(num_trials=sum(spec.cell_budgets().values()))
        _save_spec(spec, study_dir, uri)

    def fit(trainable: Any, callbacks: Any) -> bool | None:
        return _fit_search(spec, study_dir, trainable, callbacks, searcher)

    progress = _resumed_progress(spec, study_dir) if resume else study_progress(spec)
    plan_stage_trials(progress, spec, study_dir)
    _run_session(spec, study_dir, uri, verbose, "search", fit, progress)
    return study_dir


def _resume_searcher(spec: StudySpec, study_dir: Path, uri: str) -> Any:
    """A resume's searcher (the ledger settled as it is made), or None when it has nothing to
    run: then the bookkeeping a stopped session left is done (settle_records) and neither a
    cluster nor a session starts."""
    from study.search import CellSearcher
    from study.tracking import open_tracking_store

    searcher = CellSearcher(spec, study_dir)
    if searcher.total:
        return searcher
    experiment = open_tracking_store(uri).get_experiment_by_name(spec.name)
    exp_id = experiment.experiment_id if experiment is not None else None
    settle_records(spec, study_dir, uri, exp_id, ledger=False)  # the searcher settled it
    print(f"nothing left to run in {study_dir}: every cell has spent its budget")
    return None


def _resumed_progress(spec: StudySpec, study_dir: Path) -> Progress:
    """The live status of a resumed study: its plan and the trials its ledger holds that this
    session will not run again (analysis.ledger.not_run_again: they count toward their cells'
    budgets, and the finished ones' throughput prices the time left from the session's first
    minute). The elapsed time counts from the session's start."""
    progress = study_progress(spec)
    runs = ledger_runs(spec.study_place(study_dir), spec.name)
    if not runs.empty:
        selection = f"{VALIDATION_PREFIX}{spec.objectives[0].metric}"
        from_records(progress, progress_records(not_run_again(runs), selection))
    progress.start = time.time()
    return progress


def study_progress(spec: StudySpec, seeds: int = 0, classes: int = 0) -> Any:
    """The live status's model: the cells' budgets (or seeds final runs per cell) and the plan's
    work per trial (study.plan, study.progress; classes: make_plan's)."""

    plan = make_plan(spec, classes=classes)
    budgets = spec.cell_budgets() if not seeds else dict.fromkeys(spec.cell_budgets(), seeds)
    return Progress(
        budgets=budgets,
        work=plan.work,
        shared_work=[] if seeds else plan.shared_work,
        main_kind="final" if seeds else "search",
        mode=spec.objectives[0].mode,
        slots=spec.resources.max_concurrent_trials,
        start=time.time(),
    )


def plan_stage_trials(progress: Progress, spec: StudySpec, study_dir: Path) -> None:
    """Count, as the progress's stage trials, those its trials show ended and those its open cells
    (a budget left) still need whose network the artifact store lacks (study.stages.cell_stages:
    what the next session runs). A shared network another study stored is reused, and no trial of
    this one trains it: the plan's stage trials without the store's networks would stay pending,
    and `study status` of a finished study said to resume it."""
    seen = Counter(t.cell for t in progress.of_kind(progress.main_kind))
    open_cells = [cell for cell, budget in progress.budgets.items() if seen[cell] < budget]
    stages, _ = cell_stages(spec, study_dir, open_cells)
    ended = [t for t in progress.of_kind("shared") if t.status != "RUNNING"]
    units = sum(progress.shared_work) / max(1, len(progress.shared_work))
    progress.shared_work = [units] * (len(ended) + len(stages))


def final_points(
    study_dir: Path,
    spec: StudySpec,
    seeds: int,
    overrides: dict[str, Any],
    allow_missing: bool = False,
) -> list[dict[str, Any]]:
    """Every cell's chosen configuration (its best search trial by the first objective's
    validation value: knobs and chosen guidance scale) once per seed spec.seed, spec.seed + 1, ...;
    StudyError when seeds < 1, the study has no finished trial, an override is invalid, or (unless
    allow_missing) some cell of the spec has no finished search trial to take a choice from."""
    from analysis.tables import best_per_cell

    if seeds < 1:
        raise StudyError(f"--seeds must be an integer >= 1 (seeds per cell), got {seeds}")
    runs = ledger_runs(spec.study_place(study_dir), spec.name)
    best = best_per_cell(runs, spec.objectives[0].metric, spec.objectives[0].mode)
    if best.empty:
        raise StudyError(
            f"no finished trial in {study_dir} to take configurations from; "
            f"run or resume the study first (study resume {study_dir})"
        )
    chosen = {(str(m), float(p)) for m, p in zip(best["method"], best["label_percent"])}
    missing = [cell_label(*c) for c in spec.cell_budgets() if c not in chosen]
    if missing and not allow_missing:
        raise StudyError(
            f"cells without a finished search trial: {', '.join(missing)}; finish them first "
            f"(study resume {study_dir}) or pass --allow-missing to leave them out of final.md"
        )
    seed_keys = [k for k in SEED_KEYS if k not in spec.config]
    points = []
    for seed in range(spec.seed, spec.seed + seeds):
        for _, row in best.iterrows():
            method = row["method"]
            point: dict[str, Any] = {METHOD_KEY: method, LABEL_PERCENT_KEY: row["label_percent"]}
            point.update({k: float(row[k]) for k in TUNED_KEYS[method] if k in row})
            scale = row.get(CHOSEN_SCALE, row.get(GUIDANCE_SCALE_KEY))
            if scale is not None and math.isfinite(scale):  # the scale the trial chose
                point["sample.guidance_grid"] = (float(scale),)
            point.update({**dict.fromkeys(seed_keys, seed), **overrides})
            points.append(point)
    try:
        for point in points[: len(best)]:
            spec.trial_config(point)
    except ValueError as exc:
        raise StudyError(f"--set: {exc}") from None
    return points


def run_final(
    study_dir: Path,
    spec: StudySpec,
    *,
    seeds: int,
    overrides: dict[str, Any] | None = None,
    verbose: int = 1,
    points: list[dict[str, Any]] | None = None,
) -> int:
    """`study final`: each cell's chosen configuration over seeds, in the study directory (its
    artifact cache: nothing already trained for a seed is trained again); a configuration whose
    final run already finished (its record holds the result) is not run again. Returns the number
    of runs made."""
    from study.search import PointSearcher

    if points is None:
        points = final_points(study_dir, spec, seeds, dict(overrides or {}))
    study_dir, uri = prepare(spec, resume=True)
    finished = finished_points(spec, study_dir)
    left = [p for p in points if _point_key(p) not in finished]
    if len(left) < len(points):  # an interrupted `final` goes on; a repeated one runs nothing
        print(f"{len(points) - len(left)} of {len(points)} final runs already finished (kept)")
    points = left
    if not points:
        return 0
    start_cluster(spec, study_dir, resume=True)
    store = spec.artifact_place(spec.study_place(study_dir))
    stages, needs = plan_stages(points, spec.trial_config, store)

    def fit(trainable: Any, callbacks: Any) -> bool:
        searcher = PointSearcher(points, StageGate(stages), needs)
        samples = len(points) + len(stages)
        tuner = new_tuner(spec, study_dir, "final", trainable, callbacks, searcher, samples)
        return _fit_noting_interrupt(tuner)[1]

    progress = study_progress(spec, seeds=seeds)
    progress.budgets = dict(Counter(_cell(p) for p in points))
    _run_session(spec, study_dir, uri, verbose, "final", fit, progress)
    return len(points)


def _point_key(point: dict[str, Any]) -> str:
    """A trial's configuration (its Tune params) as a comparable string."""
    return json.dumps(point, sort_keys=True, default=str)


def finished_points(spec: StudySpec, study_dir: Path) -> set[str]:
    """The configurations (_point_key) of the study's trials whose records hold a final result."""
    root = spec.study_place(study_dir) / "trials"
    root.pull()  # an object store's records into this machine's mirror
    folders = sorted(root.local.iterdir()) if root.local.is_dir() else []
    done = set()
    for folder in folders:
        records = TrialRecords.of(root.local, folder.name)
        params = records.params()
        if params is not None and records.final() is not None:
            done.add(_point_key(params))
    return done


def _cell(point: dict[str, Any]) -> tuple[str, float]:

    return str(point[METHOD_KEY]), float(point[LABEL_PERCENT_KEY])


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the study; `study resume DIR` runs what its cells have not finished."""

    def __init__(self, study_dir: Path) -> None:
        super().__init__(str(study_dir))
        self.study_dir = study_dir


def _fit_noting_interrupt(tuner: Any) -> tuple[Any, bool]:
    """tuner.fit(), and whether a Ctrl-C stopped it.

    Tune catches the first Ctrl-C itself (it stops the trials, saves the experiment and returns as
    if it had finished); its handler then puts back the handler it replaced. So a sentinel handler
    installed here is back in place after fit exactly when Tune caught a Ctrl-C. A second Ctrl-C
    reaches the sentinel, which raises KeyboardInterrupt at once.
    """

    def sentinel(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return tuner.fit(), False  # Tune installs no handler off the main thread
    previous = signal.signal(signal.SIGINT, sentinel)
    try:
        results = tuner.fit()
        tune_handled = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") in ("0", "")
        return results, tune_handled and signal.getsignal(signal.SIGINT) is sentinel
    finally:
        signal.signal(signal.SIGINT, previous)


def rebuild_runs(spec: StudySpec, study_dir: Path) -> int:
    """Write again, from the trial records, every trial run the study's MLflow store lacks (a
    lost or replaced store): through the tracker's own logging, each with its params, its final
    metrics and diagnostics (or its error), its artifacts' folders, tags and pictures, tagged
    rebuilt_from_records (and each epoch's numbers); the experiment's views
    (study.views) written as a session writes them. Returns how many."""
    from analysis.runs import load_runs
    from study.tracking import MLflowTracker, ensure_parent_run, open_tracking_store

    client = open_tracking_store(spec.tracking_uri)
    exp_id, parent = ensure_parent_run(
        client, spec.name, spec.to_dict(), study_dir, study_id=spec.study_id
    )
    objectives = [(o.metric, o.mode) for o in spec.objectives]
    write_views(client, exp_id, objectives, spec.methods, spec.dataset, spec.study_id)
    known = set(load_runs(spec.tracking_uri, spec.name, spec.study_id)["trial_id"])
    root = spec.study_place(study_dir) / "trials"
    root.pull()
    folders = sorted(root.local.iterdir()) if root.local.is_dir() else []
    trackers = {
        session: MLflowTracker(
            spec.tracking_uri,
            exp_id,
            parent,
            str(root),
            partial(full_params, spec=spec),
            study_id=spec.study_id,
            stage=session,
            experiment_name=spec.name,
        )  # fmt: skip
        for session in ("search", "final")
    }
    missing = [f for f in folders if f.name not in known]
    return sum(_rebuild_run(client, trackers, TrialRecords.of(root.local, f.name)) for f in missing)


def _rebuild_run(client: Any, trackers: dict[str, Any], records: TrialRecords) -> int:
    """One trial's run written again from its records (1), or nothing without them (0)."""
    from study.tracking import mark_orphaned

    params, final = records.params(), records.final()
    times = records.times()  # the run's start and end: its records' (cp -a keeps them)
    if params is None or times is None:
        return 0
    start, end = (int(t * 1000) for t in times)
    # `study final` points carry the seed keys; search and stage trials do not.
    tracker = trackers["final" if any(k in params for k in SEED_KEYS) else "search"]
    trial = SimpleNamespace(
        trial_id=records.folder.name, config=params, last_result=final or {}, start_time=start
    )
    tracker.on_trial_start(0, [], trial)
    epochs = records.history()  # the learning curves, at the steps the run had
    for step, numbers in enumerate(epochs, 1):
        tracker.on_trial_result(0, [], trial, {**numbers, "training_iteration": step})
    if final is not None:
        tracker.on_trial_result(0, [], trial, {**final, "training_iteration": len(epochs) + 1})
    run_id = tracker.run_for(trial)
    client.set_tag(run_id, "rebuilt_from_records", "true")
    if final is not None:
        tracker.on_trial_complete(0, [], trial)
    elif records.error() is not None:
        tracker.on_trial_error(0, [], trial)
    else:  # taken down by a stopped driver: as reconcile settles it, with the training it spent
        mark_orphaned(client, client.get_run(run_id), records)
        return 1
    client.set_terminated(run_id, client.get_run(run_id).info.status, end_time=end)
    return 1


def load_study_spec(
    study_dir: str | Path, store: bool = True, view: bool = False
) -> tuple[Path, StudySpec]:
    """Read back a study directory's spec; a study whose SQLite MLflow store is lost is refused,
    unless store is False (`study table`, which writes its runs again from the trial records;
    `study status`, which reads the ledger and the records only). view: for a command that only
    reads what the study wrote (status, table, export-best, ui, dashboard): the data set is not
    checked again (an image folder's every image was read through; `study status` counts its
    class folders for the plan, or where the folder is not, the classes its trials measured)."""
    from analysis.results import read_spec

    # A copied or moved study reads and writes only itself (read_spec: trainables.storage.rehomed).
    path, raw = read_spec(Path(study_dir).resolve())
    spec = validate(raw, check_data=not view)
    if store:
        check_tracking_store(spec, path)
    return path, spec


def check_tracking_store(spec: StudySpec, study_dir: Path, missing_ok: bool = False) -> None:
    """Refuse a study whose SQLite tracking store cannot be read, or (unless missing_ok: `study
    table`, which writes its runs again from the trial records, rebuild_runs) is gone: reading it
    would create an empty one and every table built from it would be empty."""
    uri = spec.tracking_uri or ""
    path = sqlite_path(uri) if uri.startswith("sqlite") else None
    if path is None or spec.study_place(study_dir).remote:
        return
    problem = sqlite_problem(path, "experiments") if path.exists() else None
    if problem is not None:
        raise StudyError(
            f"the study's MLflow store {path} cannot be read ({problem}); move it aside (keep it "
            f"as a backup), then 'study table {study_dir}' writes its runs again from the trial "
            "records; nothing was changed"
        )
    if path.exists() or missing_ok:
        return
    raise StudyError(
        f"the study's MLflow store {path} is missing; restore it (a backup, the study's "
        f"object-store copy), or write its runs again from the trial records with "
        f"'study table {study_dir}'; nothing was changed"
    )
