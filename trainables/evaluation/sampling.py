"""Class-conditional sampling with a method's guided score: every class in one batch, seeded."""

from __future__ import annotations

import weakref

import torch
from torch import nn

from trainables.config import TrialConfig
from trainables.fit import Distributed
from trainables.methods import get_method, guided_score_fn, model_fns
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
    """Guided samples, num_per_class for every class in one batch; deterministic for sample.seed.

    dim: features (flat data) or (C, H, W). The prior draw is made on the CPU, so samples do not
    depend
    on the device. Under data parallelism (distributed) rank r samples the chunks i with
    i % world_size == r and every rank ends with all of them: each chunk's noise depends on i only,
    so the samples are the ones a single process draws.
    """
    dist = distributed or Distributed()
    method = get_method(config.method)
    sde = VESDE.from_config(config.sde)
    if config.sample.compile:
        networks = _compiled(networks)
    fns = model_fns(networks, num_classes=num_classes)
    y = torch.arange(num_classes).repeat_interleave(config.sample.num_per_class).to(device)
    gen = torch.Generator().manual_seed(config.sample.seed)
    shape = (len(y), dim) if isinstance(dim, int) else (len(y), *dim)
    x_init = sde.prior_sample(shape, generator=gen).to(device)
    sampler = get_sampler(config.sample.sampler)
    sigmas = sde.discretize(config.sample.num_steps)
    size = config.sample.batch_size
    # Classes are interleaved across chunks so a chunk mixes classes; chunk i > 0 has its own seed.
    order = (
        torch.arange(len(y)).reshape(num_classes, -1).t().reshape(-1)
        if len(y) > size
        else torch.arange(len(y))
    )
    out = torch.empty_like(x_init)
    mine: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i, start in enumerate(range(0, len(y), size)):
        if i % dist.world_size != dist.rank:
            continue
        idx = order[start : start + size].to(device)
        chunk_gen = (
            gen if i == 0 else torch.Generator().manual_seed(config.sample.seed + 1_000_003 * i)
        )
        score_fn = guided_score_fn(
            method, fns, y[idx], config.sample.guidance_scale, config.sample.guidance_precision
        )
        out[idx] = sampler(
            score_fn,
            x_init[idx],
            sigmas,
            generator=chunk_gen,
            **sampler_options(config.sample.sampler, config.sample),
        ).detach()
        mine.append((idx.cpu(), out[idx].cpu()))
    if dist.world_size > 1:
        for part in dist.gather(mine):
            for idx, values in part:
                out[idx.to(device)] = values.to(device)
    return out, y
