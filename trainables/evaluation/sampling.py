"""Class-conditional sampling with a method's guided score: every class in one batch, seeded."""

from __future__ import annotations

import weakref

import torch
from torch import nn

from trainables import threads
from trainables.config import TrialConfig
from trainables.fit import Distributed
from trainables.methods import Method, ModelFns, get_method, guided_score_fn, model_fns
from trainables.samplers import get_sampler, sampler_options
from trainables.sde import VESDE

Dim = int | tuple[int, ...]  # features (flat data) or (C, H, W)
# One torch.compile wrapper per network: every scale of a sweep and every chunk reuses its graphs.
_COMPILED: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


def _compiled(networks: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """The networks behind torch.compile (sample.compile), wrapped once per network."""
    for net in networks.values():
        if net not in _COMPILED:
            _COMPILED[net] = torch.compile(net)
    return {name: _COMPILED[net] for name, net in networks.items()}


def sample_classes(
    config: TrialConfig,
    networks: dict[str, nn.Module],
    num_classes: int,
    dim: Dim,
    device: torch.device | str = "cpu",
    distributed: Distributed | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Guided samples at sample.guidance_scale, num_per_class for every class, class-ordered;
    deterministic for sample.seed (sample_scales with one scale)."""
    samples, y = sample_scales(
        config, networks, num_classes, dim, (config.sample.guidance_scale,), device, distributed
    )
    return samples[0], y


MAX_SCALES_PER_CALL = 8  # a chunk carries at most this many scales per network call (memory)


def sample_scales(
    config: TrialConfig,
    networks: dict[str, nn.Module],
    num_classes: int,
    dim: Dim,
    scales: tuple[float, ...],
    device: torch.device | str = "cpu",
    distributed: Distributed | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Guided samples [len(scales), K * num_per_class, *dim] at every scale from the same initial
    noise and noise sequence (common random numbers), and their labels; deterministic for
    sample.seed. Each chunk of samples carries its scales as one batch (one network call per step
    for all of them, the sampler's replicas), so scale g's samples are the ones sample_classes gives
    at g alone.

    dim: features or (C, H, W). The prior is drawn on the CPU (samples do not depend on the
    device). Under data parallelism rank r samples the chunks i with i % world_size == r and every
    rank ends with all: a chunk's noise depends on i only (the samples one process draws).
    """
    dist, sde = distributed or Distributed(), VESDE.from_config(config.sde)
    method = get_method(config.method)
    nets = _compiled(networks) if config.sample.compile else networks
    fns = model_fns(nets, num_classes=num_classes)
    y = torch.arange(num_classes).repeat_interleave(config.sample.num_per_class).to(device)
    gen = torch.Generator().manual_seed(config.sample.seed)
    shape = (len(y), dim) if isinstance(dim, int) else (len(y), *dim)
    x_init = sde.prior_sample(shape, generator=gen).to(device)
    after_prior = gen.get_state()  # chunk 0's noise continues the prior's stream
    sigmas = sde.discretize(config.sample.num_steps)
    size = config.sample.batch_size
    # Classes are interleaved across chunks so a chunk mixes classes; chunk i > 0 has its own seed.
    order = (
        torch.arange(len(y)).reshape(num_classes, -1).t().reshape(-1)
        if len(y) > size
        else torch.arange(len(y))
    )
    out = x_init.new_empty((len(scales), *x_init.shape))
    mine: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i, start in enumerate(range(0, len(y), size)):
        if i % dist.world_size != dist.rank:
            continue
        idx = order[start : start + size].to(device)
        for first in range(0, len(scales), MAX_SCALES_PER_CALL):
            group = scales[first : first + MAX_SCALES_PER_CALL]
            chunk_gen = (  # the chunk's noise: the same for every group of scales
                torch.Generator().set_state(after_prior)
                if i == 0
                else torch.Generator().manual_seed(config.sample.seed + 1_000_003 * i)
            )
            drawn = _sample_group(
                config, method, fns, sigmas, x_init[idx], y[idx], group, chunk_gen
            )
            out[first : first + len(group), idx] = drawn
        mine.append((idx.cpu(), out[:, idx].cpu()))
    if dist.world_size > 1:
        for part in dist.gather(mine):
            for idx, values in part:
                out[:, idx.to(device)] = values.to(device)
    return out, y


def _sample_group(
    config: TrialConfig,
    method: Method,
    fns: ModelFns,
    sigmas: torch.Tensor,
    x_init: torch.Tensor,
    y: torch.Tensor,
    scales: tuple[float, ...],
    generator: torch.Generator,
) -> torch.Tensor:
    """One sampler run of a chunk at every scale of the group: [len(scales), B, ...]."""
    copies = len(scales)
    scale = (
        float(scales[0])
        if copies == 1
        else torch.tensor(scales, dtype=x_init.dtype).repeat_interleave(len(y)).to(y.device)
    )
    guided = guided_score_fn(method, fns, y.repeat(copies), scale, config.sample.guidance_precision)

    def score_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        threads.refresh()  # borrow idle CPUs (or give them back) between sampler steps
        return guided(x, sigma)

    drawn = get_sampler(config.sample.sampler)(
        score_fn,
        x_init.repeat(copies, *([1] * (x_init.dim() - 1))),
        sigmas,
        generator=generator,
        replicas=copies,
        **sampler_options(config.sample.sampler, config.sample),
    )
    return drawn.detach().reshape(copies, len(y), *x_init.shape[1:])
