"""The training loop, Ray-agnostic: trains what a method needs and reports metrics through a
callback."""

from __future__ import annotations

import copy
import functools
import math
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from trainables.config import TrialConfig
from trainables.data.batches import Batch, BatchSampler, Noise, hide_labels, labeled_subset
from trainables.devices import to_device
from trainables.flops import count_flops, peak_tflops, throughput_metrics
from trainables.methods import (
    TERMS,
    Artifact,
    ModelFns,
    artifact_config,
    artifact_loss,
    get_method,
    model_fns,
)
from trainables.networks import build_network
from trainables.sde import VESDE

Callback = Callable[[dict], None]
Dim = int | tuple[int, ...]  # features (flat data) or (C, H, W)
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
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")  # per writer
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


def build(artifact: Artifact, config: TrialConfig, dim: Dim, num_classes: int) -> nn.Module:
    """The artifact's network, initialised from the training seed (identical on every DDP rank)."""
    config = artifact_config(artifact, config)  # the guidance classifier's head
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        return build_network(
            artifact.network, dim=dim, num_classes=num_classes, model_config=config.model
        )


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel group (torch.distributed, set up by Ray Train).

    Gradients are averaged with one flat all-reduce after backward instead of wrapping the network
    in
    DistributedDataParallel: DDP's hooks do not support the double backward of the SC, DLSM and QC
    losses (autograd.grad with create_graph), and Joint-SC calls the network's score / logits
    methods,
    which bypass DDP's forward.
    """

    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_torch(cls) -> Distributed:

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch: every drawn row goes to exactly one rank."""
        return idx[self.rank :: self.world_size]

    def average_gradients(self, params: list[nn.Parameter]) -> None:
        if self.world_size == 1:
            return

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p, g in zip(params, grads):
            # Back into the gradient's own layout: fused Adam walks a weight and its gradient as
            # flat memory, so a channels-last weight needs a channels-last gradient.
            p.grad = g.copy_(flat[offset : offset + g.numel()].view(g.shape))
            offset += g.numel()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's obj, in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """rank 0's obj on every rank."""
        if self.world_size == 1:
            return obj

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Horizontal flips of half the images on average (drawn for the global batch)."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


@dataclass
class _TrainState:
    """What one artifact's training carries from step to step."""

    net: nn.Module
    ema: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # every draw of the loop (flips, noise); resumes with the checkpoint
    fns: ModelFns
    memory: torch.memory_format
    step: int = 0  # steps done
    bad_step: torch.Tensor | None = None  # first step with a non-finite loss (-1: none), on device
    bad_loss: torch.Tensor | None = None

    def check_finite(self, artifact: Artifact) -> None:
        """Raise FloatingPointError naming the first step whose loss was not finite (one sync)."""
        if self.bad_step is None or int(self.bad_step) < 0:
            return
        step = int(self.bad_step)
        loss = self.bad_loss.item()
        error = FloatingPointError(f"{artifact.name}: loss is {loss} at step {step}")
        error.step = step  # recorded with the failed trial
        raise error


def memory_format(
    config: TrialConfig, device: torch.device, *, images: bool
) -> torch.memory_format:
    """The networks' and batches' layout on a device: channels-last for images on a GPU with
    train.channels_last (on the CPU it does not pay: docs/benchmarks.md)."""
    if images and config.train.channels_last and device.type == "cuda":
        return torch.channels_last
    return torch.contiguous_format


def _setup(
    artifact: Artifact,
    config: TrialConfig,
    data: TrainingSet,
    frozen: dict[str, nn.Module] | None,
    device: torch.device,
) -> _TrainState:
    """Build the network (seeded), its EMA copy, Adam and the loop's generator."""
    net = build(artifact, config, data_dim(data.x), data.num_classes)
    memory = memory_format(config, device, images=data.x.dim() == 4)
    net = net.to(device, memory_format=memory)
    ema = copy.deepcopy(net).requires_grad_(False)
    params = list(net.parameters())
    # Fused Adam on CUDA (one kernel for every parameter); the default foreach Adam elsewhere.
    optimizer = torch.optim.Adam(params, lr=config.train.lr, fused=device.type == "cuda")
    generator = torch.Generator().manual_seed(config.train.seed + 1)
    loss_net = _compiled(net, artifact, config)
    fns = model_fns({artifact.network: loss_net}, num_classes=data.num_classes, frozen=frozen)
    return _TrainState(net, ema, params, optimizer, generator, fns, memory)


def _compiled(net: nn.Module, artifact: Artifact, config: TrialConfig) -> nn.Module:
    """torch.compile(net) for the loss when train.compile is set (the weights, EMA and
    checkpoints stay the plain module's), unless a term of the artifact has a double backward,
    which compiled graphs do not support: then the eager net, with a warning naming the term."""
    if not config.train.compile:
        return net
    active = [t.term for t in artifact.terms if t.weight(config.loss) != 0]
    eager = [t for t in active if TERMS[t].double_backward]
    if eager:
        warnings.warn(
            f"train.compile: {artifact.name} trains eagerly; its term(s) {', '.join(eager)} "
            "differentiate an input gradient, and compiled graphs have no double backward",
            stacklevel=3,
        )
        return net
    return torch.compile(net)


def _resume(state: _TrainState, checkpoint: Path | None) -> None:
    """Load weights, EMA, optimizer, step and RNG state from the checkpoint if there is one."""
    if checkpoint is None or not checkpoint.exists():
        return
    saved = load_checkpoint(checkpoint)
    state.net.load_state_dict(saved["network"])
    state.ema.load_state_dict(saved["ema"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.generator.set_state(saved["rng"])
    state.step = int(saved["step"])


def _save(state: _TrainState, checkpoint: Path, saved: Callable[[Path], None] | None) -> None:
    """Write everything _resume reads; then saved(checkpoint), when given."""
    everything = {
        "network": state.net.state_dict(),
        "ema": state.ema.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "step": state.step,
        "rng": state.generator.get_state(),
    }
    save_checkpoint(checkpoint, everything)
    if saved is not None:
        saved(checkpoint)


def _draw_batch(
    state: _TrainState,
    config: TrialConfig,
    data: TrainingSet,
    rows: np.ndarray,
    sde: VESDE,
    dist: Distributed,
    device: torch.device,
    uniform: torch.Tensor | None = None,
) -> tuple[Batch, Noise]:
    """The global batch and its noise (same on every rank), then this rank's shard on the device.
    uniform marks the rows drawn uniformly from all data (BatchSampler "mixed")."""
    idx = torch.from_numpy(rows)
    x = data.x[idx]
    if x.dim() == 4 and config.data.flip:
        x = _random_flip(x, state.generator)
    noise = Noise.draw(x, sde, state.generator)
    mine = dist.shard(torch.arange(len(idx)))
    host = Batch(x[mine], data.y[idx][mine], None if uniform is None else uniform[mine]).indexed()
    batch = Batch(
        to_device(host.x, device, state.memory),
        to_device(host.y, device),
        None if host.uniform is None else to_device(host.uniform, device),
        {subset: to_device(rows, device) for subset, rows in host.subsets.items()},
    )
    noise = Noise(*(to_device(t[mine], device) for t in (noise.sigma, noise.z, noise.u, noise.v)))
    return batch, noise


def _optimise(
    state: _TrainState,
    artifact: Artifact,
    config: TrialConfig,
    batch: Batch,
    noise: Noise,
    dist: Distributed,
) -> dict[str, torch.Tensor]:
    """One step: loss, backward, gradient average and clip, Adam, EMA; returns what to log."""
    autocast = torch.autocast(
        device_type=batch.x.device.type,
        dtype=torch.bfloat16,
        enabled=config.train.precision == "bf16",
    )
    with autocast:
        loss, terms = artifact_loss(artifact, state.fns, batch, noise, config.loss)
    # No host sync per step: the first step with a non-finite loss is kept on the device and read
    # by check_finite at epoch ends and before every checkpoint.
    bad = ~torch.isfinite(loss.detach())
    if state.bad_step is None:
        state.bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        state.bad_loss = torch.zeros((), dtype=loss.dtype, device=loss.device)
    first = bad & (state.bad_step < 0)
    state.bad_step = torch.where(first, torch.full_like(state.bad_step, state.step), state.bad_step)
    state.bad_loss = torch.where(first, loss.detach(), state.bad_loss)
    for group in state.optimizer.param_groups:
        group["lr"] = _lr_at(state.step, config)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    dist.average_gradients(state.params)
    grad_norm = nn.utils.clip_grad_norm_(state.params, config.train.grad_clip)
    state.optimizer.step()
    # Update EMA (one foreach kernel over every parameter).
    with torch.no_grad():
        torch._foreach_lerp_(list(state.ema.parameters()), state.params, 1 - config.train.ema_decay)
    state.step += 1
    return {"loss": loss, **{k: v.mean() for k, v in terms.items()}, "grad_norm": grad_norm}


def _epoch_metrics(
    artifact: Artifact,
    config: TrialConfig,
    sums: dict[str, float],
    step: int,
    seconds: float,
    flops: tuple[int, float | None],
) -> dict:
    """Means over the epoch's steps, its throughput (examples/s; TFLOP/s and MFU from the counted
    step's FLOPs and the device's peak), and where the epoch stands."""
    per_epoch = config.train.steps_per_epoch
    epoch = math.ceil(step / per_epoch)
    count = step - (epoch - 1) * per_epoch
    metrics: dict = {f"{artifact.name}/{k}": v / count for k, v in sums.items()}
    metrics.update({"artifact": artifact.name, "step": step, "epoch": epoch})
    metrics[f"{artifact.name}/steps_per_s"] = count / seconds
    metrics[f"{artifact.name}/examples_per_s"] = count * config.train.batch_size / seconds
    metrics.update(throughput_metrics(artifact.name, flops[0], count, seconds, flops[1]))
    return metrics


@dataclass
class _EpochMeter:
    """An epoch's logged sums (kept on the device), its start, and the FLOPs of a step (counted on
    this process's first) against the device's peak."""

    peak: float | None
    flops: int | None = None
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)

    def step(self, optimise: Callable[[], dict[str, torch.Tensor]]) -> None:
        """Run one step and add what it logs."""
        if self.flops is None:
            logged, self.flops = count_flops(optimise)
        else:
            logged = optimise()
        for name, value in logged.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.detach()

    def close(self, artifact: Artifact, config: TrialConfig, done: int) -> dict:
        """The epoch's metrics (its one host sync); the next epoch starts now."""
        means = {k: float(v) for k, v in self.sums.items()}  # waits for the epoch's last step
        seconds = time.perf_counter() - self.start
        metrics = _epoch_metrics(artifact, config, means, done, seconds, (self.flops, self.peak))
        self.sums, self.start = {}, time.perf_counter()
        return metrics


def _report_epoch(
    state: _TrainState,
    metrics: dict,
    evaluate: Callable[[nn.Module, int], dict] | None,
    ckpt: Path | None,
    callback: Callback | None,
) -> None:
    """Report an epoch's metrics, with the evaluation the scheduler compares (if asked) and the
    checkpoint folder (rank 0, when it checkpoints)."""
    if evaluate is not None:
        metrics.update(evaluate(state.ema.eval(), metrics["epoch"]))
        state.ema.train()
    if ckpt is not None:
        metrics["checkpoint_dir"] = str(ckpt.parent)
    if callback is not None:
        callback(metrics)


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
    saved: Callable[[Path], None] | None = None,
) -> nn.Module:
    """Train one artifact; return its EMA network (eval mode, frozen). Resumes from checkpoint_dir;
    saved(path) follows each checkpoint written (the cache copies it into an object store).
    evaluate(ema, epoch), when given, runs at every epoch end and its metrics join that epoch's
    report (schedulers such as ASHA need the objective while a trial trains). Under data
    parallelism every rank draws the same global batch and noise (so one RNG state resumes them
    all), trains on its shard and averages gradients; rank 0 writes the checkpoints (a reported
    metrics dict then carries the checkpoint folder under "checkpoint_dir"). stop_after ends
    training at the first epoch end at or after that many steps (tests use it to interrupt a run).
    """
    dist, device = distributed or Distributed(), torch.device(device)
    config = artifact_config(artifact, config)  # the guidance classifier's own schedule
    sde = VESDE.from_config(config.sde)
    state = _setup(artifact, config, data, frozen, device)
    ckpt = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    _resume(state, ckpt)
    sampler = BatchSampler(
        data.labeled_idx,
        len(data.x),
        config.train.batch_size,
        artifact.row_usage,
        config.train.seed,
    )
    every = config.train.checkpoint_every
    meter = _EpochMeter(peak_tflops(device, config.train.precision, config.train.peak_tflops))
    while state.step < config.train.steps:
        # One optimisation step on caller-drawn noise.
        rows = sampler.batch(state.step)
        uniform = sampler.uniform_mask(len(rows))
        batch, noise = _draw_batch(state, config, data, rows, sde, dist, device, uniform)
        meter.step(functools.partial(_optimise, state, artifact, config, batch, noise, dist))
        done = state.step
        epoch_end = done % config.train.steps_per_epoch == 0 or done == config.train.steps
        due = epoch_end or (every and done % every == 0)
        saving = ckpt is not None and dist.rank == 0 and due
        if epoch_end or saving:
            state.check_finite(artifact)  # never checkpoint or report a diverged network
        # Checkpoint at epoch ends and every train.checkpoint_every steps (rank 0 writes).
        if saving:
            _save(state, ckpt, saved)
        if not epoch_end:
            continue
        metrics = meter.close(artifact, config, done)
        _report_epoch(state, metrics, evaluate, ckpt if dist.rank == 0 else None, callback)
        if stop_after is not None and done >= stop_after:
            break
    return state.ema.eval()


ArtifactProvider = Callable[[Artifact, dict[str, nn.Module]], nn.Module]


def train_method(
    config: TrialConfig,
    data: TrainingSet | None = None,
    *,
    provider: ArtifactProvider | None = None,
    callback: Callback | None = None,
    upto: str | None = None,
) -> dict[str, nn.Module]:
    """Every artifact a method needs, in order, keyed by network kind; each trained on data, or
    fetched through provider(artifact, frozen) (the Ray worker's provider is the artifact cache).
    Given upto (an artifact's name), it stops after that artifact (a stage trial)."""
    if provider is None:
        if data is None:
            raise ValueError("train_method needs data or a provider")

        def provider(artifact: Artifact, frozen: dict[str, nn.Module]) -> nn.Module:
            return train_artifact(artifact, config, data, frozen=frozen, callback=callback)

    trained: dict[str, nn.Module] = {}
    by_name: dict[str, nn.Module] = {}
    for artifact in get_method(config.method).artifacts:
        by_name[artifact.name] = provider(artifact, {n: by_name[n] for n in artifact.needs})
        trained[artifact.network] = by_name[artifact.name]
        if artifact.name == upto:
            break
    return trained
