"""The training loop, Ray-agnostic: trains what a method needs and reports metrics through a callback."""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainables.config import TrialConfig
from trainables.data.batches import Batch, BatchSampler, Noise, hide_labels, labeled_subset
from trainables.methods import Artifact, artifact_loss, get_method, model_fns
from trainables.networks import build_network
from trainables.sde import VESDE

Callback = Callable[[dict], None]
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainingSet:
    """Training rows with hidden labels (y = -1 outside the labeled subset)."""

    x: torch.Tensor
    y: torch.Tensor  # hidden labels
    labeled_idx: np.ndarray
    num_classes: int

    @classmethod
    def split(cls, x: torch.Tensor, y: torch.Tensor, num_classes: int, label_percent: float, seed: int) -> TrainingSet:
        """Hide every label outside the stratified labeled subset."""
        idx = labeled_subset(y, label_percent, seed)
        return cls(x, hide_labels(y, idx), idx, num_classes)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a checkpoint atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint with weights_only=True."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _lr_at(step: int, config: TrialConfig) -> float:
    """Linear warmup to the base learning rate."""
    return config.train.lr * min(1.0, (step + 1) / max(1, config.train.warmup))


def build(artifact: Artifact, config: TrialConfig, dim: int, num_classes: int) -> nn.Module:
    """The artifact's network, initialised from the training seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        return build_network(artifact.network, dim=dim, num_classes=num_classes, model_config=config.model)


def train_artifact(
    artifact: Artifact,
    config: TrialConfig,
    data: TrainingSet,
    *,
    frozen: dict[str, nn.Module] | None = None,
    callback: Callback | None = None,
    checkpoint_dir: str | Path | None = None,
    stop_after: int | None = None,
    evaluate: Callable[[nn.Module, int], dict] | None = None,
) -> nn.Module:
    """Train one artifact; return its EMA network (eval mode, frozen). Resumes from checkpoint_dir.

    evaluate(ema, epoch), when given, runs at every epoch end and its metrics join that epoch's report
    (schedulers such as ASHA need the objective while a trial trains).
    """
    sde = VESDE.from_config(config.sde)
    net = build(artifact, config, data.x.shape[1], data.num_classes)
    ema = copy.deepcopy(net).requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.train.lr)
    generator = torch.Generator().manual_seed(config.train.seed + 1)
    sampler = BatchSampler(data.labeled_idx, len(data.x), config.train.batch_size, artifact.row_usage, config.train.seed)
    fns = model_fns({artifact.network: net}, num_classes=data.num_classes, frozen=frozen)
    ckpt = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    start = 0
    if ckpt is not None and ckpt.exists():
        # Resume: weights, EMA, optimizer, step and RNG state.
        state = load_checkpoint(ckpt)
        net.load_state_dict(state["network"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["rng"])
        start = int(state["step"])
    sums: dict[str, float] = {}
    epoch_start = time.perf_counter()
    for step in range(start, config.train.steps):
        # One optimisation step on caller-drawn noise.
        idx = torch.from_numpy(sampler.batch(step))
        batch = Batch(data.x[idx], data.y[idx])
        noise = Noise.draw(batch.x, sde, generator)
        loss, terms = artifact_loss(artifact, fns, batch, noise, config.loss)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{artifact.name}: loss is {loss.item()} at step {step}")
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(net.parameters(), config.train.grad_clip)
        optimizer.step()
        # Update EMA.
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), net.parameters()):
                p_ema.lerp_(p, 1 - config.train.ema_decay)
        for name, values in {"loss": loss, **{k: v.mean() for k, v in terms.items()}}.items():
            sums[name] = sums.get(name, 0.0) + float(values.detach())
        sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm)
        done = step + 1
        if done % config.train.steps_per_epoch == 0 or done == config.train.steps:
            count = done - (math.ceil(done / config.train.steps_per_epoch) - 1) * config.train.steps_per_epoch
            metrics = {f"{artifact.name}/{k}": v / count for k, v in sums.items()}
            metrics.update({"artifact": artifact.name, "step": done, "epoch": math.ceil(done / config.train.steps_per_epoch)})
            metrics[f"{artifact.name}/steps_per_s"] = count / (time.perf_counter() - epoch_start)
            if evaluate is not None:
                metrics.update(evaluate(ema.eval(), metrics["epoch"]))
                ema.train()
            if ckpt is not None:
                save_checkpoint(ckpt, {"network": net.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(), "step": done, "rng": generator.get_state()})
            if callback is not None:
                callback(metrics)
            sums, epoch_start = {}, time.perf_counter()
            if stop_after is not None and done >= stop_after:
                break
    return ema.eval()


ArtifactProvider = Callable[[Artifact, dict[str, nn.Module]], nn.Module]


def train_method(
    config: TrialConfig,
    data: TrainingSet,
    *,
    provider: ArtifactProvider | None = None,
    callback: Callback | None = None,
) -> dict[str, nn.Module]:
    """Train (or fetch through provider) every artifact a method needs, in order; keyed by network kind."""
    method = get_method(config.method)
    trained: dict[str, nn.Module] = {}
    by_name: dict[str, nn.Module] = {}
    for artifact in method.artifacts:
        frozen = {name: by_name[name] for name in artifact.needs}
        if provider is not None:
            net = provider(artifact, frozen)
        else:
            net = train_artifact(artifact, config, data, frozen=frozen, callback=callback)
        by_name[artifact.name] = net
        trained[artifact.network] = net
    return trained
