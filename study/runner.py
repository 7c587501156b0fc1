"""Launch a study: pre-flight checks, Ray, the Tuner (OptunaSearch over Ray Train trials), MLflow."""

from __future__ import annotations

import json
import os
import socket
import time
from functools import partial
from pathlib import Path

import yaml

from study.spec import StudySpec, validate


class StudyError(RuntimeError):
    """A study that cannot start; the message names the fix."""


SPEC_FILE = "spec.yaml"
FINAL_FILE = "final.json"  # a trial's final result, written by the worker before it reports it


def study_dir_for(spec: StudySpec) -> Path:
    """Absolute study directory: <storage or ./studies>/<name>."""
    return (Path(spec.storage or "studies") / spec.name).resolve()


def base_params(spec: StudySpec) -> dict:
    """Flat params shared by every trial: the spec's config, dataset and seeds."""
    seeds = {
        "train.seed": spec.seed,
        "data.seed": spec.seed,
        "data.split_seed": spec.seed,
        "sample.seed": spec.seed,
    }
    return {**seeds, **spec.config, "data.name": spec.dataset}


def full_params(params: dict, *, base: dict, preset: str) -> dict:
    """Every flat param of a trial (its sampled params over the study's base)."""
    from trainables.config import from_flat, to_flat

    flat = to_flat(from_flat({**base, **params}, preset=preset))
    return {k: (",".join(map(str, v)) if isinstance(v, tuple) else v) for k, v in flat.items()}


def check_writable(study_dir: Path) -> None:
    """The nearest existing ancestor must be a writable directory."""
    probe = study_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise StudyError(
            f"study directory {study_dir} is not writable ({probe} is read-only); set 'storage' in the spec to a writable folder"
        )


def init_ray(address: str | None) -> None:
    """Connect to the spec's / RAY_ADDRESS cluster, else start a local Ray."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Per-epoch training reports carry losses; the objective arrives with the final evaluation.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    if ray.is_initialized():
        return
    if address and address != "auto":
        # ray.init retries an unreachable GCS for minutes: check the port first.
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError):
            raise StudyError(
                f"cannot reach the Ray cluster at {address!r}; start it with 'ray start --head' or fix 'address' / RAY_ADDRESS"
            ) from None
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(
                num_cpus=os.cpu_count(),
                include_dashboard=True,
                log_to_driver=False,
                configure_logging=False,
            )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise StudyError(
            f"cannot reach the Ray cluster at {address!r} ({str(exc).splitlines()[0][:120]}); start it with 'ray start --head' or fix 'address' / RAY_ADDRESS"
        ) from None


def worker_resources(cpus: float, gpus: float) -> dict:
    """Ray resources of one Train worker (cpus_per_trial / gpus_per_trial apply per worker)."""
    return {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}


def check_cluster(spec: StudySpec) -> None:
    """Refuse a trial that needs more CPUs / GPUs than the whole cluster has (it would wait forever)."""
    import ray

    have = ray.cluster_resources()
    workers = max(1, spec.resources.num_workers)
    need = {
        "CPU": spec.resources.cpus_per_trial * workers,
        "GPU": spec.resources.gpus_per_trial * workers,
    }
    if spec.resources.num_workers > 0:
        need["CPU"] += 0.01  # the trial's driver beside its Train workers
    for name, amount in need.items():
        if amount > have.get(name, 0.0) + 1e-9:
            raise StudyError(
                f"one trial needs {amount:g} {name} ({workers} Train worker(s); a trial's driver takes 0.01 CPU beside its workers) but the Ray cluster has {have.get(name, 0.0):g}; "
                "lower resources.num_workers / cpus_per_trial / gpus_per_trial or add nodes"
            )


def trial_driver(params: dict, *, study: dict) -> None:
    """The Tune trial: a TorchTrainer (Train V2) over the per-worker function, reporting to Tune."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from trainables.ray_worker import train_fn_per_worker

    trial_id = tune.get_context().get_trial_id()
    record_dir = Path(study["record_root"]) / trial_id
    if (record_dir / FINAL_FILE).exists():
        # A restored study re-runs trials that ended after its last experiment checkpoint: report the
        # stored final result instead of training again.
        tune.report({**json.loads((record_dir / FINAL_FILE).read_text()), "replayed": 1.0})
        return
    loop_config = {
        "params": {**study["base"], **params},
        "preset": study["preset"],
        "cache_dir": study["cache_dir"],
        "record_dir": str(record_dir),
        "threads": max(
            1, int(study["cpus"])
        ),  # per process: the trial's (local mode) or a worker's
        "local_mode_in_tune": study["num_workers"] == 0,
        "eval_every_epoch": study["eval_every_epoch"],
    }
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=study["num_workers"],
            use_gpu=study["gpus"] > 0,
            resources_per_worker=worker_resources(study["cpus"], study["gpus"]),
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",
            storage_path=study["train_dir"],
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=study["max_failures"]),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1
            ),  # the artifact cache keeps its own
        ),
    )
    trainer.fit()


def _final_result_searcher():  # noqa: ANN202
    """OptunaSearch that ignores per-epoch results without the objective (told only at the end)."""
    from ray.tune.search.optuna import OptunaSearch

    class FinalResultOptunaSearch(OptunaSearch):
        def _finished_in_storage(self, trial_id: str) -> bool:
            # After a restore, Tune may re-run a trial the SQLite study already holds as finished.
            ot_trial = self._ot_trials.get(trial_id)
            return (
                ot_trial is not None
                and ot_trial.storage.get_trial(ot_trial._trial_id).state.is_finished()
            )

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            if all(m in result for m in metrics) and not self._finished_in_storage(trial_id):
                super().on_trial_result(trial_id, result)

    return FinalResultOptunaSearch


def _searcher(spec: StudySpec, study_dir: Path):  # noqa: ANN202
    import optuna

    from search_spaces import cell_points, make_space

    metrics = [o.metric for o in spec.objectives]
    modes = [o.mode for o in spec.objectives]
    sampler = (
        optuna.samplers.TPESampler(seed=spec.seed, multivariate=True)
        if len(metrics) == 1
        else optuna.samplers.NSGAIISampler(seed=spec.seed)
    )
    # Cover every (method, label %) cell once, at the default settings, before searching freely.
    cells = cell_points(spec.methods, spec.label_percents, spec.search)[: spec.num_trials]
    return _final_result_searcher()(
        space=make_space(spec.methods, spec.label_percents, spec.search),
        metric=metrics if len(metrics) > 1 else metrics[0],
        mode=modes if len(modes) > 1 else modes[0],
        points_to_evaluate=cells,
        sampler=sampler,
        study_name=spec.name,
        storage=optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.db'}"),
    )


def _cell_aware_asha():  # noqa: ANN202
    """ASHA that never stops the first trial of a (method, label %) cell.

    ASHA compares every trial with every other; without this, a method that is weak early would lose
    all its trials at the first rung and its cell in the comparison table would hold an undertrained
    model. Protected trials still feed the rungs, so they set the bar for the others.
    """
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class CellAwareASHA(ASHAScheduler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._cells: dict[tuple, str] = {}

        def on_trial_add(self, tune_controller, trial) -> None:  # noqa: ANN001
            super().on_trial_add(tune_controller, trial)
            self._cells.setdefault(
                (trial.config.get("method"), trial.config.get("data.label_percent")), trial.trial_id
            )

        def on_trial_result(self, tune_controller, trial, result: dict) -> str:  # noqa: ANN001
            action = super().on_trial_result(tune_controller, trial, result)
            cell = (trial.config.get("method"), trial.config.get("data.label_percent"))
            if action == TrialScheduler.STOP and self._cells.get(cell) == trial.trial_id:
                self._num_stopped -= 1
                return TrialScheduler.CONTINUE
            return action

    return CellAwareASHA


def _scheduler(spec: StudySpec):  # noqa: ANN202
    """None (FIFO) or ASHA on the guard objective, in epochs of the trial's last artifact."""
    if spec.scheduler.type != "asha":
        return None
    import math

    from trainables.config import from_flat

    train = from_flat({**base_params(spec), "method": spec.methods[0]}, preset=spec.preset).train
    mode = next(o.mode for o in spec.objectives if o.metric == spec.scheduler.metric)
    return _cell_aware_asha()(
        time_attr="eval_epoch",
        metric=spec.scheduler.metric,
        mode=mode,
        max_t=math.ceil(train.steps / train.steps_per_epoch),
        grace_period=spec.scheduler.grace_period,
        reduction_factor=spec.scheduler.reduction_factor,
        stop_last_trials=False,  # the last epoch is followed by the final evaluation
    )


def prepare(spec: StudySpec, *, resume: bool) -> tuple[Path, str]:
    """Pre-flight before anything is written: directory state, writability, Ray. Returns (dir, uri)."""
    from study.tracking import resolve_tracking_uri

    study_dir = study_dir_for(spec)
    if not resume and (study_dir / SPEC_FILE).exists():
        raise StudyError(
            f"study directory {study_dir} already holds a study; use 'study resume {study_dir}' or give the spec a new name"
        )
    check_writable(study_dir)
    init_ray(spec.address)
    check_cluster(spec)
    return study_dir, resolve_tracking_uri(spec.tracking_uri, study_dir)


def run_study(spec: StudySpec, *, resume: bool = False, verbose: bool = True) -> Path:
    """Run (or resume) a study to completion; returns the study directory."""
    from mlflow.tracking import MlflowClient
    from ray import tune

    from study.tracking import MLflowTracker, ensure_parent_run, reconcile

    study_dir, uri = prepare(spec, resume=resume)
    timings = {"start": time.perf_counter()}
    study_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        # The saved spec pins where results live, so resume / table / export find them from anywhere.
        saved = {**spec.to_dict(), "storage": str(study_dir.parent), "tracking_uri": uri}
        (study_dir / SPEC_FILE).write_text(yaml.safe_dump(saved, sort_keys=False))
    client = MlflowClient(uri)
    exp_id, parent = ensure_parent_run(client, spec.name, spec.to_dict(), study_dir)
    base = base_params(spec)
    study = {
        "base": base,
        "preset": spec.preset,
        "cache_dir": str(study_dir / "artifacts"),
        "record_root": str(study_dir / "trials"),
        "train_dir": str(study_dir / "train"),
        "num_workers": spec.resources.num_workers,
        "cpus": spec.resources.cpus_per_trial,
        "gpus": spec.resources.gpus_per_trial,
        "eval_every_epoch": spec.scheduler.type == "asha",
        "max_failures": spec.resources.max_failures,
    }
    # Train's local mode runs in the trial's process: the trial holds the CPUs; else the workers do.
    driver_resources = (
        {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial}
        if spec.resources.num_workers == 0
        else {"cpu": 0.01}
    )
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, study=study), driver_resources
    )
    tracker = MLflowTracker(
        uri,
        exp_id,
        parent,
        study_dir / "trials",
        partial(full_params, base=base, preset=spec.preset),
        verbose,
    )
    tune_dir = study_dir / "tune"
    known: set[str] | None = None  # the Tune experiment's trial ids, once it has run
    try:
        if resume and tune.Tuner.can_restore(str(tune_dir / spec.name)):
            tuner = tune.Tuner.restore(str(tune_dir / spec.name), trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=_searcher(spec, study_dir),
                    scheduler=_scheduler(spec),
                    num_samples=spec.num_trials,
                    max_concurrent_trials=spec.resources.max_concurrent_trials,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=spec.name, storage_path=str(tune_dir), callbacks=[tracker], verbose=0
                ),
            )
        timings["tuner_start"] = time.perf_counter()
        results = tuner.fit()
        timings["end"] = time.perf_counter()
        # ResultGrid keeps no public list of trial ids; its ExperimentAnalysis does.
        known = {t.trial_id for t in results._experiment_analysis.trials}
    finally:
        # Exactly one run per trial, none left RUNNING.
        reconcile(uri, exp_id, known_trials=known)
        client.set_terminated(parent, "FINISHED")
    client.log_metric(parent, "study/wall_seconds", timings["end"] - timings["start"])
    return study_dir


def load_study_spec(study_dir: str | Path) -> tuple[Path, StudySpec]:
    """Read back a study directory's spec."""
    path = Path(study_dir).resolve()
    if not (path / SPEC_FILE).exists():
        raise StudyError(
            f"{path} is not a study directory (no {SPEC_FILE}); give the folder 'study run' printed"
        )
    return path, validate(yaml.safe_load((path / SPEC_FILE).read_text()))
