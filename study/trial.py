"""The Tune trial: a driver that runs a TorchTrainer (Ray Train V2) over the per-worker function, or
the function itself in local mode (num_workers 0)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from study.cluster import worker_resources
from study.spec import StudySpec
from trainables.context import TrialContext
from trainables.names import STAGE_KEY
from trainables.records import TrialRecords


@dataclass(frozen=True)
class StudyContext:
    """What every Tune trial of a study shares (picklable: Tune ships it to each trial)."""

    spec: StudySpec  # the resolver of every trial's config (StudySpec.trial_config)
    trial: TrialContext  # what every trial shares; record_dir = the records' root
    train_dir: str  # Ray Train's storage_path
    num_workers: int  # Ray Train workers per trial (0 = local mode)
    cpus: float  # per worker (per trial in local mode)
    gpus: float
    max_failures: int  # Ray Train restarts of a trial's worker group


def trial_driver(params: dict[str, Any], *, study: StudyContext) -> None:
    """Run one trial's TorchTrainer (or, in local mode, its worker function)."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from trainables.ray_worker import train_fn_per_worker

    trial_id = tune.get_context().get_trial_id()
    records = TrialRecords.of(study.trial.record_dir, trial_id)  # a folder, or a store's mirror
    place = records.place
    # Which configuration this trial is (study.recorder wrote it as the trial started, unless
    # it could not): written once, its time is the trial's start (TrialRecords.times).
    if records.params() is None:
        records.write_params(params)
    context = replace(
        study.trial,
        config=study.spec.trial_config(params),  # resolved once, shipped typed to the workers
        record_dir=str(place),
        stage=str(params.get(STAGE_KEY, "")),  # a stage trial (study.stages) trains, then stops
    )
    if study.num_workers == 0:
        # Local mode: the worker function runs in this trial's process and reports to Tune
        # directly, which is all Train's local mode would do, without its per-trial start-up
        # (a Train run, its controller and storage: about 1 s per toy trial on 2 cores).
        train_fn_per_worker({"context": context})
        return
    scaling = ray.train.ScalingConfig(
        num_workers=study.num_workers,
        use_gpu=study.gpus > 0,
        resources_per_worker=worker_resources(study.cpus, study.gpus),
    )
    run_config = ray.train.RunConfig(
        name=f"train-{trial_id}",  # stable: a restarted trial resumes its Train run
        storage_path=study.train_dir,
        callbacks=[TuneReportCallback()],
        failure_config=ray.train.FailureConfig(max_failures=study.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),  # the cache keeps its own
    )
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config={"context": context},
        scaling_config=scaling,
        run_config=run_config,
    )
    trainer.fit()
