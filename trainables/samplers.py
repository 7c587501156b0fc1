"""Samplers as free functions sharing one signature (k-diffusion style), docs/methods.md section 3:

    sample_x(score_fn, x_init, sigmas, *, generator=None, callback=None, replicas=1, **options) -> x

sigmas is the decreasing sequence of noise levels (VESDE.discretize); x_init is drawn by the caller
from the prior N(0, sigma_max^2 I). Every sampler returns the noise-free mean at its last step.

replicas = R: x_init is R copies of one batch of B rows (R * B rows, copy r in rows r*B..(r+1)*B),
each sampled with its own score (e.g. one guidance scale per copy). Every copy gets the same noise
sequence (common random numbers: the noise is drawn for B rows and repeated) and the PC corrector's
step is computed per copy, so copy r is the batch that one sampler run with replicas=1 gives.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from trainables.config import SampleConfig
from trainables.devices import to_device
from trainables.losses import ScoreFn

Callback = Callable[[int, torch.Tensor], None]


def _sig(sigma: float, x: torch.Tensor) -> torch.Tensor:
    """Per-example noise level tensor [B] in x's dtype."""
    return torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)


def _randn(x: torch.Tensor, generator: torch.Generator | None, replicas: int = 1) -> torch.Tensor:
    """Standard normal noise shaped like x; with replicas R, drawn for the first of R equal parts
    and repeated (every copy gets the same numbers)."""
    shape = (x.shape[0] // replicas, *x.shape[1:])
    if generator is not None and generator.device != x.device:
        # A CPU generator for samples on a GPU: draw on the CPU (same numbers on every device).
        noise = to_device(torch.randn(shape, generator=generator, dtype=x.dtype), x.device)
    else:
        noise = torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)
    return noise if replicas == 1 else noise.repeat(replicas, *([1] * (x.dim() - 1)))


def _batch_norm_mean(v: torch.Tensor, replicas: int = 1) -> torch.Tensor:
    """Mean over each copy's rows of per-example L2 norms, one value per row ([N, 1, ...])."""
    norms = v.flatten(1).norm(dim=1).reshape(replicas, -1).mean(dim=1)
    return norms.repeat_interleave(v.shape[0] // replicas).reshape(-1, *([1] * (v.dim() - 1)))


@torch.no_grad()
def pc_sampler(
    score_fn: ScoreFn,
    x_init: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    snr: float = 0.16,
    corrector_steps: int = 1,
    replicas: int = 1,
) -> torch.Tensor:
    """Predictor-corrector (Song et al. 2021): Langevin corrector, then reverse-diffusion
    predictor."""
    x, x_mean = x_init, x_init
    next_sigmas = torch.cat([sigmas[1:], sigmas.new_zeros(1)])
    for i, (sigma, sigma_next) in enumerate(zip(sigmas.tolist(), next_sigmas.tolist())):
        s = _sig(sigma, x)
        # Langevin corrector: step 2 (snr ||z|| / ||score||)^2, norms averaged over the batch.
        for _ in range(corrector_steps):
            score = score_fn(x, s)
            noise = _randn(x, generator, replicas)
            ratio = _batch_norm_mean(noise, replicas) / _batch_norm_mean(score, replicas)
            step = 2 * (snr * ratio) ** 2
            x_mean = x + step * score
            x = x_mean + torch.sqrt(2 * step) * noise
        # Reverse-diffusion predictor: variance sigma_i^2 - sigma_{i+1}^2.
        var = sigma**2 - sigma_next**2
        x_mean = x + var * score_fn(x, s)
        x = x_mean + var**0.5 * _randn(x, generator, replicas)
        if callback is not None:
            callback(i, x_mean)
    return x_mean


@torch.no_grad()
def euler_maruyama(
    score_fn: ScoreFn,
    x_init: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    replicas: int = 1,
) -> torch.Tensor:
    """Euler-Maruyama on the reverse VE-SDE, in sigma: dx = d(sigma^2) score + sqrt(d(sigma^2))
    z."""
    x, x_mean = x_init, x_init
    next_sigmas = torch.cat([sigmas[1:], sigmas.new_zeros(1)])
    for i, (sigma, sigma_next) in enumerate(zip(sigmas.tolist(), next_sigmas.tolist())):
        # Euler step of g^2 dt = d(sigma^2) = 2 sigma d(sigma).
        var = 2 * sigma * (sigma - sigma_next)
        x_mean = x + var * score_fn(x, _sig(sigma, x))
        x = x_mean + var**0.5 * _randn(x, generator, replicas)
        if callback is not None:
            callback(i, x_mean)
    return x_mean


@torch.no_grad()
def probability_flow_ode(
    score_fn: ScoreFn,
    x_init: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    replicas: int = 1,
) -> torch.Tensor:
    """Probability-flow ODE dx/dsigma = -sigma score (Heun), then a final denoising step at
    sigma_min."""
    del generator, replicas  # deterministic, each row on its own; kept for the shared signature
    x = x_init
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        d = -sig[i] * score_fn(x, _sig(sig[i], x))
        x_euler = x + (sig[i + 1] - sig[i]) * d
        d_next = -sig[i + 1] * score_fn(x_euler, _sig(sig[i + 1], x))
        x = x + (sig[i + 1] - sig[i]) * 0.5 * (d + d_next)
        if callback is not None:
            callback(i, x)
    # Denoise: Tweedie's mean E[x_0 | x] = x + sigma^2 score at the last level.
    return x + sig[-1] ** 2 * score_fn(x, _sig(sig[-1], x))


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "pc": pc_sampler,
    "em": euler_maruyama,
    "ode": probability_flow_ode,
}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """Look up a sampler by name; ValueError naming the valid choices."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid: {sorted(SAMPLERS)}")
    return SAMPLERS[name]


def sampler_options(name: str, sample_config: SampleConfig) -> dict:
    """Keyword options a sampler takes from a SampleConfig."""
    return {"snr": sample_config.snr} if name == "pc" else {}
