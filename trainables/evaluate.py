"""Toy evaluation of a trained method: gradient metrics vs exact scores, guided samples, calibration."""

from __future__ import annotations

import torch
from torch import nn

from trainables.config import TrialConfig
from trainables.data.toy import ToyData
from trainables.losses import score_matching_residual
from trainables.methods import get_method, guided_score_fn, model_fns
from trainables.metrics.calibration import accuracy, expected_calibration_error
from trainables.metrics.toy import (
    energy_distance,
    evaluation_points,
    generation_accuracy,
    gradient_metrics,
    score_metrics,
)
from trainables.samplers import get_sampler, sampler_options
from trainables.sde import VESDE


def sample_classes(
    config: TrialConfig,
    networks: dict[str, nn.Module],
    num_classes: int,
    dim,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """Guided samples, num_per_class for every class in one batch; deterministic for sample.seed.

    dim: features (flat data) or (C, H, W). The prior draw is made on the CPU, so samples do not depend
    on the device.
    """
    method = get_method(config.method)
    sde = VESDE.from_config(config.sde)
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
    for i, start in enumerate(range(0, len(y), size)):
        idx = order[start : start + size].to(device)
        chunk_gen = (
            gen if i == 0 else torch.Generator().manual_seed(config.sample.seed + 1_000_003 * i)
        )
        score_fn = guided_score_fn(method, fns, y[idx], config.sample.guidance_scale)
        out[idx] = sampler(
            score_fn,
            x_init[idx],
            sigmas,
            generator=chunk_gen,
            **sampler_options(config.sample.sampler, config.sample),
        ).detach()
    return out, y


def evaluate_toy(
    config: TrialConfig, networks: dict[str, nn.Module], data: ToyData
) -> dict[str, float]:
    """Every toy metric that applies to the method's networks (paper 001 App. C plus samples)."""
    method = get_method(config.method)
    dist = data.dist
    fns = model_fns(networks, num_classes=data.num_classes)
    points = evaluation_points(dist, config.eval.sigmas, config.eval.num_points, config.eval.seed)
    scale = config.sample.guidance_scale
    metrics: dict[str, float] = {}
    if fns.logits_fn is not None:
        # Classifier gradients vs the exact posterior score; conditional score with the exact score.
        metrics.update(gradient_metrics(fns.logits_fn, dist, points, scale=1.0))
        metrics["cond_score_cos_scaled"] = gradient_metrics(
            fns.logits_fn, dist, points, scale=scale
        )["cond_score_cos"]
        with torch.no_grad():
            sigma = torch.full((len(data.test_x),), config.sde.sigma_min)
            logits = fns.logits_fn(data.test_x, sigma)
        metrics["clf_accuracy"] = accuracy(logits, data.test_y)
        metrics["clf_ece"] = expected_calibration_error(logits, data.test_y)
    if fns.score_fn is not None:
        metrics.update(score_metrics(fns.score_fn, dist, points))
    # The method's own guided score vs the exact conditional score.
    cos = []
    for sigma, x, y in points:
        s = torch.full((len(x),), sigma)
        est = guided_score_fn(method, fns, y, scale)(x, s).detach().double()
        cos.append(torch.nn.functional.cosine_similarity(est, dist.cond_score(x, s, y), dim=1))
    metrics["guided_score_cos"] = torch.cat(cos).mean().item()
    # Guided samples: accuracy under the exact Bayes posterior, per-class energy distance to test points.
    samples, y = sample_classes(config, networks, data.num_classes, data.dim)
    finite = torch.isfinite(samples).all(1)
    metrics["sample_finite_fraction"] = finite.double().mean().item()
    metrics["gen_accuracy"] = generation_accuracy(
        samples[finite], y[finite], dist, config.sde.sigma_min
    )
    per_class = []
    for k in range(data.num_classes):
        mine = samples[finite & (y == k)]
        per_class.append(
            energy_distance(mine, data.test_x[data.test_y == k]) if len(mine) else float("nan")
        )
        metrics[f"energy_distance_class{k}"] = per_class[-1]
    metrics["energy_distance"] = float(torch.tensor(per_class).mean())
    return metrics


def _batches(n: int, size: int):  # noqa: ANN202
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def evaluate_images(
    config: TrialConfig,
    networks: dict[str, nn.Module],
    data,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> tuple[dict[str, float], torch.Tensor]:  # noqa: ANN001
    """Image metrics on held-out data that need no Inception network, and a grid of guided samples.

    guided_dsm: held-out conditional denoising score matching of the method's guided score at the true
    labels, 0.5 E ||sigma s(x + sigma z, sigma, y) + z||^2 over eval.sigmas; the true conditional score
    minimises it, so it compares the methods' conditional scores (and guidance scales) directly.
    score_dsm: the same for the unconditional score where the method has one. Classifier: clean
    accuracy and ECE at sigma_min, and accuracy at each eval sigma. FID / IS arrive with image evaluation.
    """
    method = get_method(config.method)
    fns = model_fns(networks, num_classes=data.num_classes)
    n = min(len(data.test_x), config.eval.num_points)
    x_all, y_all = data.test_x[:n], data.test_y[:n]
    gen = torch.Generator().manual_seed(config.eval.seed)
    metrics: dict[str, float] = {}
    guided, uncond = [], []
    for sigma_value in config.eval.sigmas:
        z_all = torch.randn(x_all.shape, generator=gen)
        for sl in _batches(n, batch_size):
            x, y, z = x_all[sl].to(device), y_all[sl].to(device), z_all[sl].to(device)
            sigma = torch.full((len(x),), float(sigma_value), device=device)
            noisy = x + sigma_value * z
            score = guided_score_fn(method, fns, y, config.sample.guidance_scale)(
                noisy, sigma
            ).detach()
            guided.append(score_matching_residual(score, sigma, z).cpu())
            if fns.score_fn is not None:
                with torch.no_grad():
                    s = fns.score_fn(noisy, sigma)
                uncond.append(score_matching_residual(s, sigma, z).cpu())
    metrics["guided_dsm"] = torch.cat(guided).mean().item()
    if uncond:
        metrics["score_dsm"] = torch.cat(uncond).mean().item()
    if fns.logits_fn is not None:
        for sigma_value in (config.sde.sigma_min, *config.eval.sigmas):
            logits = []
            with torch.no_grad():
                for sl in _batches(n, batch_size):
                    x = x_all[sl].to(device)
                    noisy = x + sigma_value * torch.randn(x.shape, generator=gen).to(device)
                    logits.append(
                        fns.logits_fn(
                            noisy, torch.full((len(x),), float(sigma_value), device=device)
                        )
                        .float()
                        .cpu()
                    )
            logits_t = torch.cat(logits)
            if sigma_value == config.sde.sigma_min:
                metrics["clf_accuracy"] = accuracy(logits_t, y_all)
                metrics["clf_ece"] = expected_calibration_error(logits_t, y_all)
            else:
                metrics[f"clf_accuracy_sigma{sigma_value:g}"] = accuracy(logits_t, y_all)
    samples, _ = sample_classes(
        config, networks, data.num_classes, tuple(data.test_x.shape[1:]), device
    )
    samples = samples.detach().cpu()
    metrics["sample_finite_fraction"] = (
        torch.isfinite(samples.flatten(1)).all(1).double().mean().item()
    )
    return metrics, samples.clamp(0, 1)
