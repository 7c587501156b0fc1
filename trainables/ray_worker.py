"""The per-worker function Ray Train's TorchTrainer runs; the only trainables module importing ray."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import ray.train
import ray.tune
import torch

from trainables.cache import ArtifactCache
from trainables.config import from_flat
from trainables.data.toy import make_toy
from trainables.evaluate import evaluate_toy
from trainables.fit import TrainingSet, train_artifact
from trainables.methods import get_method


def train_fn_per_worker(loop_config: dict) -> None:
    """Train (or reuse) every artifact the trial's method needs, report per epoch, then evaluate."""
    torch.set_num_threads(int(loop_config.get("threads", 1)))
    config = from_flat(loop_config["params"], preset=loop_config["preset"])
    cache = ArtifactCache(Path(loop_config["cache_dir"]))
    data = make_toy(config.data.name, config.data.num_train, config.data.num_test, config.data.seed)
    split = TrainingSet.split(data.x, data.y, data.num_classes, config.data.label_percent, config.data.split_seed)
    method = get_method(config.method)
    cost = {"cost/steps_trained": 0.0, "cost/steps_reused": 0.0}
    keys: dict[str, str] = {}
    reused_flags: dict[str, float] = {}
    trained: dict[str, torch.nn.Module] = {}
    by_name: dict[str, torch.nn.Module] = {}

    # Train's local mode (no workers) runs inside the Tune trial's process, where Ray 2.60 refuses
    # ray.train.report; there the metrics go to Tune directly, which is what TuneReportCallback does.
    send = ray.tune.report if loop_config.get("local_mode_in_tune") else ray.train.report

    def report(metrics: dict) -> None:
        send({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})

    epochs = math.ceil(config.train.steps / config.train.steps_per_epoch)

    for position, artifact in enumerate(method.artifacts):
        frozen = {name: by_name[name] for name in artifact.needs}
        evaluate = None
        if loop_config.get("eval_every_epoch") and position == len(method.artifacts) - 1:
            # ASHA compares trials by the objective at each epoch of the method's last artifact.
            def evaluate(ema: torch.nn.Module, epoch: int, artifact=artifact) -> dict:  # noqa: ANN001
                return {**evaluate_toy(config, {**trained, artifact.network: ema}, data), "eval_epoch": epoch}

        def train(folder: Path, artifact=artifact, frozen=frozen, evaluate=evaluate):  # noqa: ANN001, ANN202
            return train_artifact(artifact, config, split, frozen=frozen, callback=report, checkpoint_dir=folder, evaluate=evaluate)

        net, key, reused = cache.get_or_train(artifact, config, train, dim=data.dim, num_classes=data.num_classes, needs={n: keys[n] for n in artifact.needs})
        keys[artifact.name] = key
        reused_flags[f"artifact_reused/{artifact.name}"] = float(reused)
        cost["cost/steps_reused" if reused else "cost/steps_trained"] += config.train.steps
        by_name[artifact.name] = net
        trained[artifact.network] = net
    start = time.perf_counter()
    metrics = evaluate_toy(config, trained, data)
    evals_per_step = {"pc": 2, "em": 1, "ode": 2}[config.sample.sampler]
    cost["cost/sampling_score_evals"] = float(evals_per_step * config.sample.num_steps * config.sample.num_per_class * data.num_classes)
    cost["cost/eval_seconds"] = time.perf_counter() - start
    # The artifacts' location, for the tracker to tag the run with.
    record = Path(loop_config["record_dir"])
    record.mkdir(parents=True, exist_ok=True)
    (record / "artifacts.json").write_text(json.dumps({name: str(cache.root / key) for name, key in keys.items()}))
    final = {k: float(v) for k, v in {**metrics, **cost, **reused_flags, "eval_epoch": epochs, "final": 1.0}.items()}
    rank = 0 if loop_config.get("local_mode_in_tune") else ray.train.get_context().get_world_rank()
    if rank != 0:
        report(final)
        return
    # Kept beside the trial's records so a restored study can replay it instead of training again.
    tmp = record / "final.json.tmp"
    tmp.write_text(json.dumps(final))
    os.replace(tmp, record / "final.json")
    report(final)
