"""Toy evaluation of a trained method: gradient metrics vs exact scores, guided samples, calibration."""

from __future__ import annotations

import torch
from torch import nn

from trainables.config import TrialConfig
from trainables.data.toy import ToyData
from trainables.methods import get_method, guided_score_fn, model_fns
from trainables.metrics.calibration import accuracy, expected_calibration_error
from trainables.metrics.toy import energy_distance, evaluation_points, generation_accuracy, gradient_metrics, score_metrics
from trainables.samplers import get_sampler, sampler_options
from trainables.sde import VESDE


def sample_classes(config: TrialConfig, networks: dict[str, nn.Module], num_classes: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Guided samples, num_per_class for every class in one batch; deterministic for sample.seed."""
    method = get_method(config.method)
    sde = VESDE.from_config(config.sde)
    fns = model_fns(networks, num_classes=num_classes)
    y = torch.arange(num_classes).repeat_interleave(config.sample.num_per_class)
    gen = torch.Generator().manual_seed(config.sample.seed)
    x_init = sde.prior_sample((len(y), dim), generator=gen)
    score_fn = guided_score_fn(method, fns, y, config.sample.guidance_scale)
    sampler = get_sampler(config.sample.sampler)
    sigmas = sde.discretize(config.sample.num_steps)
    return sampler(score_fn, x_init, sigmas, generator=gen, **sampler_options(config.sample.sampler, config.sample)), y


def evaluate_toy(config: TrialConfig, networks: dict[str, nn.Module], data: ToyData) -> dict[str, float]:
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
        metrics["cond_score_cos_scaled"] = gradient_metrics(fns.logits_fn, dist, points, scale=scale)["cond_score_cos"]
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
    metrics["gen_accuracy"] = generation_accuracy(samples[finite], y[finite], dist, config.sde.sigma_min)
    per_class = []
    for k in range(data.num_classes):
        mine = samples[finite & (y == k)]
        per_class.append(energy_distance(mine, data.test_x[data.test_y == k]) if len(mine) else float("nan"))
        metrics[f"energy_distance_class{k}"] = per_class[-1]
    metrics["energy_distance"] = float(torch.tensor(per_class).mean())
    return metrics
