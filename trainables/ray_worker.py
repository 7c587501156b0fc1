"""The per-worker function Ray Train's TorchTrainer runs; the only trainables module importing ray.

Toy trials run in Train's local mode (one process); image trials run on N workers, data parallel:
every worker trains on its shard of each global batch and gradients are averaged (trainables.fit).
Rank 0 writes checkpoints into the artifact cache, reports them to Ray Train, evaluates, and writes the
trial's records; a restarted worker group (FailureConfig) resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import ray.train
import ray.tune
import torch

from trainables.cache import ArtifactCache
from trainables.config import from_flat
from trainables.evaluate import evaluate_images, evaluate_toy
from trainables.fit import CHECKPOINT_FILE, Distributed, TrainingSet, data_dim, train_artifact
from trainables.methods import get_method


def load_data(config):  # noqa: ANN001, ANN201 - TrialConfig -> ToyData | ImageData
    """The trial's dataset: a toy mixture (exact scores) or an image set."""
    from trainables.data.images import IMAGE_DATASETS, make_images
    from trainables.data.toy import make_toy

    if config.data.name in IMAGE_DATASETS:
        return make_images(config.data)
    return make_toy(config.data.name, config.data.num_train, config.data.num_test, config.data.seed)


def _device(local: bool) -> torch.device:
    if not local:
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _restore_from_train_checkpoint(folder: Path) -> None:
    """After a worker-group restart on another node the cache folder may lack the checkpoint Ray Train
    kept: copy it back so training resumes from it."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None or (folder / CHECKPOINT_FILE).exists():
        return
    with checkpoint.as_directory() as d:
        if (Path(d) / CHECKPOINT_FILE).exists() and (
            Path(d) / "artifact_folder"
        ).read_text() == folder.name:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(d) / CHECKPOINT_FILE, folder / CHECKPOINT_FILE)


def train_fn_per_worker(loop_config: dict) -> None:
    """Train (or reuse) every artifact the trial's method needs, report per epoch, then evaluate."""
    torch.set_num_threads(int(loop_config.get("threads", 1)))
    local = bool(loop_config.get("local_mode_in_tune"))
    config = from_flat(loop_config["params"], preset=loop_config["preset"])
    cache = ArtifactCache(Path(loop_config["cache_dir"]))
    data = load_data(config)
    images = data.x.dim() == 4
    split = TrainingSet.split(
        data.x, data.y, data.num_classes, config.data.label_percent, config.data.split_seed
    )
    method = get_method(config.method)
    dist = Distributed() if local else Distributed.from_torch()
    device = _device(local)
    cost = {"cost/steps_trained": 0.0, "cost/steps_reused": 0.0, "cost/examples_trained": 0.0}
    keys: dict[str, str] = {}
    reused_flags: dict[str, float] = {}
    trained: dict[str, torch.nn.Module] = {}
    by_name: dict[str, torch.nn.Module] = {}

    # Train's local mode (no workers) runs inside the Tune trial's process, where Ray 2.60 refuses
    # ray.train.report; there the metrics go to Tune directly, which is what TuneReportCallback does.
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

    epochs = math.ceil(config.train.steps / config.train.steps_per_epoch)

    tags: dict[str, str] = {}
    evaluator = []  # built once (evaluation classifier, extractor, reference statistics), on rank 0

    def evaluate_all(nets: dict) -> tuple[dict, torch.Tensor | None]:
        if not images:
            return evaluate_toy(config, nets, data), None
        metrics, samples = evaluate_images(config, nets, data, device=device)
        if config.eval.fid:
            from trainables.image_eval import build_evaluator, evaluate_generation

            if not evaluator:
                evaluator.append(build_evaluator(config, data, device))
            labels = torch.arange(data.num_classes).repeat_interleave(config.sample.num_per_class)
            generation, warnings = evaluate_generation(
                samples, labels, data.num_classes, evaluator[0]
            )
            metrics.update(generation)
            tags["fid_feature_extractor"] = evaluator[0].extractor.name
            tags["eval_classifier"] = evaluator[0].classifier_key
            if warnings:
                tags["warnings"] = "; ".join(warnings)
        return metrics, samples

    for position, artifact in enumerate(method.artifacts):
        frozen = {name: by_name[name] for name in artifact.needs}
        evaluate = None
        if (
            loop_config.get("eval_every_epoch")
            and position == len(method.artifacts) - 1
            and dist.rank == 0
        ):
            # ASHA compares trials by the objective at each epoch of the method's last artifact.
            def evaluate(ema: torch.nn.Module, epoch: int, artifact=artifact) -> dict:  # noqa: ANN001
                return {**evaluate_all({**trained, artifact.network: ema})[0], "eval_epoch": epoch}

        def train(folder: Path, artifact=artifact, frozen=frozen, evaluate=evaluate):  # noqa: ANN001, ANN202
            if not local:
                _restore_from_train_checkpoint(folder)
            return train_artifact(
                artifact,
                config,
                split,
                frozen=frozen,
                callback=report,
                checkpoint_dir=folder,
                evaluate=evaluate,
                device=device,
                distributed=dist,
            )

        net, key, reused = cache.get_or_train(
            artifact,
            config,
            train,
            dim=data_dim(data.x),
            num_classes=data.num_classes,
            needs={n: keys[n] for n in artifact.needs},
            distributed=dist,
        )
        net = net.to(device)
        keys[artifact.name] = key
        reused_flags[f"artifact_reused/{artifact.name}"] = float(reused)
        cost["cost/steps_reused" if reused else "cost/steps_trained"] += config.train.steps
        if not reused:
            cost["cost/examples_trained"] += config.train.steps * config.train.batch_size
        by_name[artifact.name] = net
        trained[artifact.network] = net
    if dist.rank != 0:
        report({"final": 1.0})  # ray.train.report is a barrier: every rank reports as often
        return
    start = time.perf_counter()
    metrics, samples = evaluate_all(trained)
    evals_per_step = {"pc": 2, "em": 1, "ode": 2}[config.sample.sampler]
    cost["cost/sampling_score_evals"] = float(
        evals_per_step * config.sample.num_steps * config.sample.num_per_class * data.num_classes
    )
    cost["cost/eval_seconds"] = time.perf_counter() - start
    # The trial's records: artifacts' location, sample grid, final result (replayed after a restore).
    record = Path(loop_config["record_dir"])
    record.mkdir(parents=True, exist_ok=True)
    (record / "artifacts.json").write_text(
        json.dumps({name: str(cache.root / key) for name, key in keys.items()})
    )
    (record / "tags.json").write_text(json.dumps(tags))
    if samples is not None:
        from torchvision.utils import save_image

        save_image(samples, record / "samples.png", nrow=config.sample.num_per_class)
    final = {
        k: float(v)
        for k, v in {**metrics, **cost, **reused_flags, "eval_epoch": epochs, "final": 1.0}.items()
    }
    tmp = record / "final.json.tmp"
    tmp.write_text(json.dumps(final))
    os.replace(tmp, record / "final.json")
    report(final)
