"""The per-worker function Ray Train's TorchTrainer runs (besides it, only the artifact cache's
lease in an object store, a named Ray actor, touches Ray in trainables).

Toy trials run in Train's local mode (one process); image trials run on N workers, data parallel:
every worker trains on its shard of each global batch and gradients are averaged (trainables.fit).
Rank 0 writes checkpoints into the artifact cache, reports them to Ray Train, evaluates, and writes
the trial's records (trainables.records); a restarted worker group (FailureConfig) resumes from the
latest checkpoint.
"""

from __future__ import annotations

import math
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import ray.train
import ray.train.torch
import ray.tune
import torch
from torch import nn

from trainables import names, threads
from trainables.cache import ArtifactCache
from trainables.config import TrialConfig
from trainables.context import TrialContext
from trainables.data.images import IMAGE_DATASETS, ImageData
from trainables.data.sets import make_images
from trainables.data.toy import ToyData, make_toy
from trainables.evaluation import Sweep, TrialEvaluator
from trainables.evaluation.images import save_sample_grid
from trainables.evaluation.toy import plot_toy_samples
from trainables.fit import (
    CHECKPOINT_FILE,
    Distributed,
    TrainingSet,
    data_dim,
    memory_format,
    train_artifact,
    train_method,
)
from trainables.identity import data_cache
from trainables.methods import Artifact, artifact_config, get_method
from trainables.records import COST, EVAL_EPOCH_KEY, FINAL_KEY, ObjectiveError, TrialRecords
from trainables.storage import Place

Report = Callable[[dict], None]


def load_data(config: TrialConfig) -> ToyData | ImageData:
    """The trial's dataset: a toy mixture (exact scores) or an image set."""
    if config.data.name in IMAGE_DATASETS:
        return make_images(config.data, data_cache(config))
    data = config.data
    return make_toy(data.name, data.num_train, data.num_test, data.seed)


def _device(local: bool) -> torch.device:
    """Ray Train's device for this worker; in local mode CUDA if present, else the CPU."""
    if not local:
        return ray.train.torch.get_device()
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _restore_from_train_checkpoint(folder: Path) -> None:
    """After a worker-group restart on another node the cache folder may lack the checkpoint Ray
    Train kept: copy it back so training resumes from it."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None or (folder / CHECKPOINT_FILE).exists():
        return
    with checkpoint.as_directory() as d:
        kept = Path(d) / CHECKPOINT_FILE
        if kept.exists() and (Path(d) / "artifact_folder").read_text() == folder.name:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(kept, folder / CHECKPOINT_FILE)


def _reporter(local: bool, dist: Distributed) -> Report:
    """report(metrics): numbers to Tune (local mode) or Ray Train, with rank 0's checkpoint.

    Train's local mode runs inside the Tune trial's process, where Ray refuses ray.train.report;
    there the metrics go to Tune directly, which is what TuneReportCallback does otherwise.
    """
    send = ray.tune.report if local else ray.train.report

    def report(metrics: dict) -> None:
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        folder = metrics.get("checkpoint_dir")
        if local or folder is None or dist.rank != 0:
            send(values)
            return
        # Rank 0 hands the checkpoint to Ray Train (kept in the run's storage; restored on restart).
        staging = Path(folder) / "train-report"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        shutil.copy(Path(folder) / CHECKPOINT_FILE, staging / CHECKPOINT_FILE)
        (staging / "artifact_folder").write_text(Path(folder).name)
        send(values, checkpoint=ray.train.Checkpoint.from_directory(str(staging)))

    return report


@dataclass
class _Ledger:
    """Which cached artifacts a trial used, whether it trained or reused them, and their cost."""

    keys: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(
        default_factory=lambda: {
            COST.STEPS_TRAINED: 0.0,
            COST.STEPS_REUSED: 0.0,
            COST.EXAMPLES_TRAINED: 0.0,
            COST.TRAIN_SECONDS: 0.0,  # training this trial's missing artifacts
            COST.FETCH_SECONDS: 0.0,  # in the cache in all (training, waiting, loading)
        }
    )

    def add(self, artifact: Artifact, key: str, reused: bool, config: TrialConfig) -> None:
        """Record one artifact fetched from (or trained into) the cache."""
        self.keys[artifact.name] = key
        self.metrics[f"artifact_reused/{artifact.name}"] = float(reused)
        config = artifact_config(artifact, config)
        self.metrics[COST.STEPS_REUSED if reused else COST.STEPS_TRAINED] += config.train.steps
        if not reused:
            self.metrics[COST.EXAMPLES_TRAINED] += config.train.steps * config.train.batch_size

    def reporting(self, report: Report) -> Report:
        """report for a network that starts training now: each epoch's metrics with the trial's
        training so far (the trained networks' steps and seconds plus this one's)."""
        started = time.perf_counter()

        def epoch(metrics: dict) -> None:
            report({
                **metrics,
                COST.STEPS_SO_FAR: self.metrics[COST.STEPS_TRAINED] + int(metrics["step"]),
                COST.TRAIN_SECONDS_SO_FAR: self.metrics[COST.TRAIN_SECONDS]
                + time.perf_counter() - started,
            })  # fmt: skip

        return epoch

    def spent(self) -> dict[str, float]:
        """The training cost so far (the record a trial taken down leaves: TrialRecords.spent)."""
        keys = (COST.STEPS_TRAINED, COST.EXAMPLES_TRAINED, COST.TRAIN_SECONDS)
        return {k: self.metrics[k] for k in keys}


def _epoch_validation(
    config: TrialConfig,
    evaluator: TrialEvaluator,
    objectives: tuple[tuple[str, str], ...],
    done: dict[str, nn.Module],
    artifact: Artifact,
) -> Callable[[nn.Module, int], dict]:
    """ASHA compares trials by the objective at each epoch of the method's last artifact: on the
    validation split at the base scale, so selection never sees the test split."""

    def evaluate(ema: nn.Module, epoch: int) -> dict:
        networks = {**done, artifact.network: ema}
        sweep = evaluator.validate(networks, [config.sample.guidance_scale], objectives)
        return {**validation_metrics(sweep.metrics), EVAL_EPOCH_KEY: epoch}

    return evaluate


def _cached_provider(
    context: TrialContext,
    config: TrialConfig,
    data: ToyData | ImageData,
    evaluator: TrialEvaluator,
    report: Report,
    ledger: _Ledger,
    dist: Distributed,
    device: torch.device,
) -> Callable[[Artifact, dict[str, nn.Module]], nn.Module]:
    """fit.train_method's provider: each artifact from the cache, trained into it on a miss."""
    cache = ArtifactCache(context.cache_dir)
    split = TrainingSet.split(
        data.x, data.y, data.num_classes, config.data.label_percent, config.data.split_seed
    )
    last = get_method(config.method).artifacts[-1]
    done: dict[str, nn.Module] = {}  # networks so far, by kind (the epoch evaluation needs them)
    layout = memory_format(config, device, images=data.x.dim() == 4)  # as training leaves them

    def provide(artifact: Artifact, frozen: dict[str, nn.Module]) -> nn.Module:
        evaluate = None
        if context.eval_every_epoch and artifact is last and dist.rank == 0:
            evaluate = _epoch_validation(config, evaluator, context.objectives, done, artifact)

        def train(folder: Path) -> nn.Module:
            if not context.local_mode:
                _restore_from_train_checkpoint(folder)
            started = time.perf_counter()
            net = train_artifact(
                artifact,
                config,
                split,
                frozen=frozen,
                callback=ledger.reporting(report),
                checkpoint_dir=folder,
                evaluate=evaluate,
                device=device,
                distributed=dist,
                saved=cache.checkpoint_saved,
            )
            ledger.metrics[COST.TRAIN_SECONDS] += time.perf_counter() - started
            return net

        needs = {n: ledger.keys[n] for n in artifact.needs}
        fetched = time.perf_counter()
        net, key, reused = cache.get_or_train(
            artifact, config, train, dim=data_dim(data.x), num_classes=data.num_classes,
            needs=needs, distributed=dist,
        )  # fmt: skip
        ledger.add(artifact, key, reused, config)
        if not reused and dist.rank == 0:
            TrialRecords(Place(context.record_dir)).write_spent(ledger.spent())
        # Time in the cache that was not training: waiting on another trial's lock, loading.
        ledger.metrics[COST.FETCH_SECONDS] += time.perf_counter() - fetched
        done[artifact.network] = net.to(device, memory_format=layout)
        return done[artifact.network]

    return provide


def _write_records(
    place: Place,
    ledger: _Ledger,
    cache_dir: str,
    evaluator: TrialEvaluator,
    samples: torch.Tensor | None,
    final: dict[str, float],
) -> None:
    """The trial's records for the driver (trainables.records): artifacts' folders, tags, the
    pictures (an image trial's sample grid, and those _draw_pictures left in the folder), then the
    final result (last, atomically: its presence means the trial finished)."""
    records = TrialRecords(place)
    folders = {name: str(Place(cache_dir) / key) for name, key in ledger.keys.items()}
    records.write_outputs(folders, evaluator.tags)
    if samples is not None:  # one row per class, labelled
        config = evaluator.config
        scale = final.get(names.CHOSEN_SCALE)
        title = f"{config.method}, {config.data.label_percent:g}% labels" + (
            f", guidance scale {scale:g}" if scale is not None else ""
        )
        save_sample_grid(samples, evaluator.data.class_names, records.path(names.SAMPLES_IMAGE),
                         title)  # fmt: skip
    for picture in sorted(records.folder.glob("*.png")):  # into the object store, if any
        place.push(picture)
    records.write_final(final)


def validation_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Validation-split metrics under their reported names (the searcher reads val/<objective>)."""
    return {f"{names.VALIDATION_PREFIX}{k}": v for k, v in metrics.items()}


def _check_objectives(metrics: dict[str, float], objectives: tuple[tuple[str, str], ...]) -> None:
    """Raise ObjectiveError naming every objective (validation or test value) the final metrics
    lack or hold as NaN / inf."""
    wanted = [key for m, _ in objectives for key in (m, f"{names.VALIDATION_PREFIX}{m}")]
    bad = {m: metrics.get(m) for m in wanted if not math.isfinite(metrics.get(m, math.nan))}
    if bad:
        raise ObjectiveError(f"objective(s) not finite: {bad}")


def guidance_grid(config: TrialConfig) -> tuple[float, ...]:
    """The scales a trial sweeps: sample.guidance_grid for a guided method, else the one scale."""
    if get_method(config.method).guidance == "none" or not config.sample.guidance_grid:
        return (config.sample.guidance_scale,)
    return config.sample.guidance_grid


def _curve_metrics(sweep: Sweep, objectives: tuple[tuple[str, str], ...]) -> dict[str, float]:
    """The validation curve as flat metrics curve/<metric>/g<scale> (objectives and the papers'
    curve metrics; names.curve_key)."""
    keep = {m for m, _ in objectives} | set(names.CURVE_METRICS)
    curve = {
        names.curve_key(metric, scale): value
        for scale, metrics in sweep.curve.items()
        for metric, value in metrics.items()
        if metric in keep
    }
    for scale, reached in sweep.reached.items():  # the race: samples per class each scale got
        curve[names.curve_key(names.CURVE_SAMPLES, scale)] = float(reached)
    return curve


def _plot_curve(sweep: Sweep, objectives: tuple[tuple[str, str], ...], path: Path) -> None:
    """The trial's validation guidance curve (one panel per objective), the chosen scale marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m, _ in objectives] or sorted(next(iter(sweep.curve.values())))[:1]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.2), squeeze=False)
    scales = sorted(sweep.curve)
    full = max(sweep.reached.values(), default=0)
    early = [s for s in scales if sweep.reached.get(s, full) < full]  # dropped by the race
    for ax, metric in zip(axes[0], metrics):
        ax.plot(scales, [sweep.curve[s].get(metric, math.nan) for s in scales], marker="o")
        if early:
            ax.plot(early, [sweep.curve[s].get(metric, math.nan) for s in early], "o",
                    color="white", markeredgecolor="C0",
                    label="dropped early (fewer samples)")  # fmt: skip
        ax.axvline(sweep.scale, color="grey", linestyle="--", label=f"chosen {sweep.scale:g}")
        ax.set_xlabel("guidance scale gamma (lambda_CG; 1 + w for CFG)")
        ax.set_ylabel(f"validation {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _draw_pictures(
    folder: Path,
    sweep: Sweep,
    objectives: tuple[tuple[str, str], ...],
    evaluator: TrialEvaluator,
    networks: dict[str, nn.Module],
) -> None:
    """The trial's validation guidance curve and, for a toy trial, its guided samples at the
    chosen scale beside the exact mixture (an image trial's sample grid comes with its records)."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(sweep.curve) > 1:
        _plot_curve(sweep, objectives, folder / names.CURVE_IMAGE)
    if not evaluator.images:
        config = evaluator.config
        at_scale = replace(config, sample=replace(config.sample, guidance_scale=sweep.scale))
        plot_toy_samples(at_scale, networks, evaluator.data, folder / names.SAMPLES_IMAGE)


def train_fn_per_worker(loop_config: dict) -> None:
    """Run the trial; on failure, record why (rank 0) before Ray sees the exception."""
    context: TrialContext = loop_config["context"]
    try:
        _run_trial(context)
    except Exception as error:
        if context.local_mode or Distributed.from_torch().rank == 0:
            TrialRecords(Place(context.record_dir)).write_error(error)  # for its MLflow run
        raise


def _finish_costs(ledger: _Ledger) -> None:
    """Time in the cache that was not training (another trial's lock, loading) as wait_seconds."""
    ledger.metrics[COST.WAIT_SECONDS] = max(
        0.0, ledger.metrics.pop(COST.FETCH_SECONDS) - ledger.metrics[COST.TRAIN_SECONDS]
    )


def _run_stage(
    context: TrialContext,
    config: TrialConfig,
    provider: Callable[[Artifact, dict[str, nn.Module]], nn.Module],
    evaluator: TrialEvaluator,
    ledger: _Ledger,
    dist: Distributed,
    report: Report,
) -> None:
    """A stage trial (study.stages): train the shared network (the method's artifacts up to it),
    or prepare the image evaluator (its classifier and reference statistics); evaluate nothing."""
    if context.stage == names.EVALUATION_STAGE:
        if dist.rank == 0:
            started = time.perf_counter()
            evaluator.prepare()
            ledger.metrics[COST.TRAIN_SECONDS] += time.perf_counter() - started
    else:
        train_method(config, provider=provider, upto=context.stage)
    if dist.rank != 0:
        report({FINAL_KEY: 1.0})
        return
    _finish_costs(ledger)
    final = {**ledger.metrics, names.STAGE_METRIC: 1.0, FINAL_KEY: 1.0}
    final = {k: float(v) for k, v in final.items()}
    _write_records(Place(context.record_dir), ledger, context.cache_dir, evaluator, None, final)
    report(final)


def _draw_share(
    evaluator: TrialEvaluator,
    networks: dict[str, nn.Module],
    config: TrialConfig,
    shared: Distributed | None,
) -> None:
    """A non-zero rank's part of the evaluation: its share of every sampling run rank 0 makes
    (the validation sweep at rank 0's scales, then the test evaluation at its chosen scale)."""
    if shared is None:
        return
    sweep = evaluator.validate(networks, guidance_grid(config), (), distributed=shared)
    evaluator(networks, scale=sweep.scale, distributed=shared)


def _lent_cpus(context: TrialContext) -> tuple[Callable[[], int] | None, Callable | None]:
    """(ask, release) of the study's CoreLender for one evaluation (trainables.threads.lent),
    or (None, None) when the study lends no CPUs."""
    lender = context.lender
    if lender is None:
        return None, None
    key, own = uuid.uuid4().hex, context.threads

    def ask() -> int:
        try:
            return ray.get(lender.ask.remote(key, own), timeout=10)
        except ray.exceptions.RayError:  # the lender is gone or slow: the trial's own CPUs
            return own

    return ask, lambda: lender.release.remote(key)


def _run_trial(context: TrialContext) -> None:
    """Train (or reuse) every artifact the trial's method needs, report per epoch, then evaluate."""
    torch.set_num_threads(context.threads)
    config = context.config
    data = load_data(config)
    dist = Distributed() if context.local_mode else Distributed.from_torch()
    device = _device(context.local_mode)
    report = _reporter(context.local_mode, dist)
    evaluator = TrialEvaluator(config, data, device)
    if ray.is_initialized():  # which cluster node ran the trial (rank 0's), a tag on its run
        evaluator.tags["ray_node_id"] = ray.get_runtime_context().get_node_id()
    ledger = _Ledger()

    # Train or fetch every artifact of the method, in order.
    provider = _cached_provider(context, config, data, evaluator, report, ledger, dist, device)
    if context.stage:
        _run_stage(context, config, provider, evaluator, ledger, dist, report)
        return
    networks = train_method(config, provider=provider)
    # Image trials under data parallelism: every rank draws a share of the samples of each
    # evaluation below (rank 0 measures them); toy trials evaluate on rank 0 alone.
    shared = dist if dist.world_size > 1 and evaluator.images else None
    if dist.rank != 0:
        _draw_share(evaluator, networks, config, shared)
        report({FINAL_KEY: 1.0})  # ray.train.report is a barrier: every rank reports as often
        return
    # On rank 0: sweep the guidance grid on the validation split, choose the scale, evaluate the
    # test split at it, write the trial's records, report the final result.
    start = time.perf_counter()
    with threads.lent(*_lent_cpus(context)) as most:  # idle CPUs, if the study lends them
        sweep = evaluator.validate(
            networks, guidance_grid(config), context.objectives, distributed=shared
        )
        metrics, samples = evaluator(networks, scale=sweep.scale, distributed=shared)
    ledger.metrics[COST.EVAL_THREADS] = most()
    ledger.metrics[COST.SAMPLING_SCORE_EVALS] = evaluator.sampling_score_evals()
    ledger.metrics[COST.VAL_SAMPLING_SCORE_EVALS] = evaluator.val_sampling_score_evals
    ledger.metrics[COST.EVAL_SECONDS] = time.perf_counter() - start
    _finish_costs(ledger)
    train = artifact_config(get_method(config.method).artifacts[-1], config).train
    epochs = math.ceil(train.steps / train.steps_per_epoch)
    final = {
        **metrics,
        **validation_metrics(sweep.metrics),
        **_curve_metrics(sweep, context.objectives),
        **ledger.metrics,
        EVAL_EPOCH_KEY: epochs,
        FINAL_KEY: 1.0,
    }
    if get_method(config.method).guidance != "none":
        final[names.CHOSEN_SCALE] = sweep.scale
        final[names.GUIDANCE_CAP] = config.sample.guidance_cap  # 0: no extension past the grid
    final = {k: float(v) for k, v in final.items()}
    _check_objectives(final, context.objectives)
    record = Place(context.record_dir)
    _draw_pictures(record.local, sweep, context.objectives, evaluator, networks)
    _write_records(record, ledger, context.cache_dir, evaluator, samples, final)
    report(final)
