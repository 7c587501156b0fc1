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
    def split(
        cls, x: torch.Tensor, y: torch.Tensor, num_classes: int, label_percent: float, seed: int
    ) -> TrainingSet:
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


def data_dim(x: torch.Tensor) -> int | tuple[int, ...]:
    """What build_network takes as dim: features for flat data, (C, H, W) for images."""
    return x.shape[1] if x.dim() == 2 else tuple(x.shape[1:])


def build(artifact: Artifact, config: TrialConfig, dim, num_classes: int) -> nn.Module:  # noqa: ANN001
    """The artifact's network, initialised from the training seed (identical on every DDP rank)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        return build_network(
            artifact.network, dim=dim, num_classes=num_classes, model_config=config.model
        )


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel group (torch.distributed, set up by Ray Train).

    Gradients are averaged with one flat all-reduce after backward instead of wrapping the network in
    DistributedDataParallel: DDP's hooks do not support the double backward of the SC, DLSM and QC
    losses (autograd.grad with create_graph), and Joint-SC calls the network's score / logits methods,
    which bypass DDP's forward.
    """

    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_torch(cls) -> Distributed:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch: every drawn row goes to exactly one rank."""
        return idx[self.rank :: self.world_size]

    def average_gradients(self, params: list[nn.Parameter]) -> None:
        if self.world_size == 1:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(g)
            offset += g.numel()

    def broadcast(self, obj):  # noqa: ANN001, ANN201
        """rank 0's obj on every rank."""
        if self.world_size == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Horizontal flips of half the images on average (drawn for the global batch)."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


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
    device: torch.device | str = "cpu",
    distributed: Distributed | None = None,
) -> nn.Module:
    """Train one artifact; return its EMA network (eval mode, frozen). Resumes from checkpoint_dir.

    evaluate(ema, epoch), when given, runs at every epoch end and its metrics join that epoch's report
    (schedulers such as ASHA need the objective while a trial trains). Under data parallelism every
    rank draws the same global batch and noise (so one RNG state resumes them all), trains on its shard
    and averages gradients; rank 0 writes the checkpoints (a reported metrics dict then carries the
    checkpoint folder under "checkpoint_dir").
    """
    dist = distributed or Distributed()
    device = torch.device(device)
    sde = VESDE.from_config(config.sde)
    images = data.x.dim() == 4
    net = build(artifact, config, data_dim(data.x), data.num_classes)
    memory = (
        torch.channels_last
        if (images and config.train.channels_last and device.type == "cuda")
        else torch.contiguous_format
    )
    net = net.to(device, memory_format=memory)
    ema = copy.deepcopy(net).requires_grad_(False)
    params = list(net.parameters())
    optimizer = torch.optim.Adam(params, lr=config.train.lr)
    generator = torch.Generator().manual_seed(config.train.seed + 1)
    sampler = BatchSampler(
        data.labeled_idx,
        len(data.x),
        config.train.batch_size,
        artifact.row_usage,
        config.train.seed,
    )
    fns = model_fns({artifact.network: net}, num_classes=data.num_classes, frozen=frozen)
    ckpt = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    autocast = torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=config.train.precision == "bf16"
    )
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
        # One optimisation step on caller-drawn noise; the global batch first, then this rank's shard.
        idx = torch.from_numpy(sampler.batch(step))
        x = data.x[idx]
        if images and config.data.flip:
            x = _random_flip(x, generator)
        noise = Noise.draw(x, sde, generator)
        mine = dist.shard(torch.arange(len(idx)))
        batch = Batch(x[mine].to(device, memory_format=memory), data.y[idx][mine].to(device))
        noise = Noise(*(t[mine].to(device) for t in (noise.sigma, noise.z, noise.u, noise.v)))
        with autocast:
            loss, terms = artifact_loss(artifact, fns, batch, noise, config.loss)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{artifact.name}: loss is {loss.item()} at step {step}")
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        dist.average_gradients(params)
        grad_norm = nn.utils.clip_grad_norm_(params, config.train.grad_clip)
        optimizer.step()
        # Update EMA.
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), params):
                p_ema.lerp_(p, 1 - config.train.ema_decay)
        for name, values in {"loss": loss, **{k: v.mean() for k, v in terms.items()}}.items():
            sums[name] = sums.get(name, 0.0) + float(values.detach())
        sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm)
        done = step + 1
        epoch_end = done % config.train.steps_per_epoch == 0 or done == config.train.steps
        if (
            ckpt is not None
            and dist.rank == 0
            and (
                epoch_end
                or (config.train.checkpoint_every and done % config.train.checkpoint_every == 0)
            )
        ):
            save_checkpoint(
                ckpt,
                {
                    "network": net.state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": done,
                    "rng": generator.get_state(),
                },
            )
        if epoch_end:
            count = (
                done
                - (math.ceil(done / config.train.steps_per_epoch) - 1)
                * config.train.steps_per_epoch
            )
            metrics = {f"{artifact.name}/{k}": v / count for k, v in sums.items()}
            metrics.update(
                {
                    "artifact": artifact.name,
                    "step": done,
                    "epoch": math.ceil(done / config.train.steps_per_epoch),
                }
            )
            seconds = time.perf_counter() - epoch_start
            metrics[f"{artifact.name}/steps_per_s"] = count / seconds
            metrics[f"{artifact.name}/examples_per_s"] = count * config.train.batch_size / seconds
            if evaluate is not None:
                metrics.update(evaluate(ema.eval(), metrics["epoch"]))
                ema.train()
            if ckpt is not None and dist.rank == 0:
                metrics["checkpoint_dir"] = str(ckpt.parent)
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
