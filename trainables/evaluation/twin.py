"""Exact metrics on the image twin (trainables.data.twin): every method's networks measured against
the true scores at image dimension, per noise band, beside the proxies (FID, intra-FID, the
evaluation classifier's accuracy) the image evaluation computes on the same samples.

Per band i of eval.sc_bands (sigma log-uniform inside it, eval.num_points draws of p_sigma(x, y)):
- grad_cos_band<i>: cosine of the classifier's guidance gradient grad log p_phi(y | x) with the
  exact grad log p_sigma(y | x) (methods with a classifier); grad_mse_band<i> its squared error;
- score_cos_band<i>: the unconditional score model's cosine with the exact score;
- guided_score_cos_band<i>: the method's guided score (at the scale) against the exact
  conditional score grad log p_sigma(x | y);
each also pooled over the bands (grad_cos, grad_mse, score_cos, guided_score_cos).
Of the guided samples (raw, not clipped): bayes_gen_accuracy (the exact posterior's argmax at
sigma_min is the target class), bayes_gen_accuracy_matched (the same at the noise level the
samples' own excess spread implies, matched_sigma; see sample_metrics), cond_log_likelihood (mean
exact log p(x | y) per dimension, nats) and sample_var_ratio (each class's total sample variance
over the twin's, averaged: 1 is right, near 0 a collapse onto the means). The same for exact
samples of the twin give the ceilings gen_accuracy_exact and cond_log_likelihood_exact, and
gen_accuracy_exact_matched (exact samples with that much noise added).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trainables.config import TrialConfig
from trainables.data.images import ImageData
from trainables.evaluation.toy import (
    Points,
    generation_accuracy,
    gradient_metrics,
    guided_score_cos,
    score_metrics,
)
from trainables.methods import get_method, model_fns

BLOCK = 128  # points per network call


def noise_bands(config: TrialConfig) -> list[tuple[float, float]]:
    """eval.sc_bands clipped to [sde.sigma_min, sde.sigma_max] (as the SC diagnostics' bands)."""
    low, high = config.sde.sigma_min, config.sde.sigma_max
    edges = config.eval.sc_bands
    return [(max(a, low), min(b, high)) for a, b in zip(edges, edges[1:]) if a < high and b > low]


def band_points(dist, bands: list[tuple[float, float]], num_points: int, seed: int) -> list[Points]:
    """For each band, num_points draws (sigma, x + sigma z, y) of the twin, sigma log-uniform in the
    band, in blocks of BLOCK points; deterministic for the seed."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for a, b in bands:
        x, y = dist.sample(num_points, generator=gen)
        u = torch.rand(num_points, generator=gen, dtype=torch.float64)
        sigma = torch.exp(math.log(a) + u * (math.log(b) - math.log(a))).float()
        noisy = x + sigma.reshape(-1, *([1] * (x.dim() - 1))) * torch.randn(x.shape, generator=gen)
        out.append(
            [(sigma[i : i + BLOCK], noisy[i : i + BLOCK], y[i : i + BLOCK])
             for i in range(0, num_points, BLOCK)]
        )  # fmt: skip
    return out


def _per_band(values: list[dict[str, float]], names: tuple[str, ...]) -> dict[str, float]:
    """name_band<i> for each band and name pooled: the mean of the bands that have a value (equal
    points per band; a cosine is NaN in a band where the exact vector vanishes at every point, as
    the exact posterior's gradient does at small sigma far from the class boundaries)."""
    out: dict[str, float] = {}
    for name in names:
        series = [v[name] for v in values]
        out.update({f"{name}_band{i}": value for i, value in enumerate(series)})
        finite = [v for v in series if math.isfinite(v)]
        out[name] = sum(finite) / len(finite) if finite else math.nan
    return out


SAMPLE_METRICS = ("bayes_gen_accuracy", "bayes_gen_accuracy_matched", "matched_sigma",
                  "cond_log_likelihood", "sample_var_ratio")  # fmt: skip


def sample_metrics(samples: torch.Tensor, y: torch.Tensor, dist, sigma: float) -> dict[str, float]:
    """Of samples of classes y: bayes_gen_accuracy (the exact posterior at sigma), its matched
    form, cond_log_likelihood (per dimension, at sigma) and sample_var_ratio.

    The exact posterior at a small sigma judges a sample mostly by how well its fine detail fits
    each class's noise floor psi, so samples that carry a little excess noise (a score learned
    imprecisely at small sigma) all fall to the class with the widest floor. The matched form
    reads the posterior at matched_sigma = sqrt(sigma^2 + v), v the samples' excess variance per
    dimension over the twin's (0 when they have none): the noise level their own spread says they
    are at. Its ceiling is the twin's Bayes accuracy at that noise level (evaluate_twin)."""
    finite = torch.isfinite(samples.flatten(1)).all(1)
    samples, y = samples[finite], y[finite]
    if not len(samples):
        return dict.fromkeys(SAMPLE_METRICS, math.nan)
    sigmas = torch.full((len(samples),), float(sigma))
    loglik = dist.cond_log_prob(samples, sigmas, y) / dist.dim
    flat = samples.flatten(1).double()
    exact_var = dist.class_total_variance()
    classes = [k for k in range(dist.num_classes) if (y == k).sum() > 1]
    totals = {k: flat[y == k].var(0).sum().item() for k in classes}
    ratios = [totals[k] / exact_var[k].item() for k in classes]
    excess = 0.0
    if classes:
        excess = max(0.0, sum(totals[k] - exact_var[k].item() for k in classes) / len(classes))
    matched = math.sqrt(sigma**2 + excess / dist.dim)
    return {
        "bayes_gen_accuracy": generation_accuracy(samples, y, dist, sigma),
        "bayes_gen_accuracy_matched": generation_accuracy(samples, y, dist, matched),
        "matched_sigma": matched,
        "cond_log_likelihood": loglik.mean().item(),
        "sample_var_ratio": sum(ratios) / len(ratios) if ratios else math.nan,
    }


def evaluate_twin(
    config: TrialConfig,
    networks: dict[str, nn.Module],
    data: ImageData,
    samples: torch.Tensor | None = None,
    *,
    fixed: bool = True,
    scaled: bool = True,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """The exact metrics of the module docstring that apply to the method's networks (fixed: those
    that do not depend on the guidance scale; scaled: those that do, at
    config.sample.guidance_scale; samples: the trial's guided samples, class-ordered,
    sample.num_per_class per class)."""
    dist = data.dist
    method = get_method(config.method)
    fns = model_fns(networks, num_classes=data.num_classes)
    bands = band_points(dist, noise_bands(config), config.eval.num_points, config.eval.seed + 3)
    metrics: dict[str, float] = {}
    precision = config.sample.guidance_precision
    if fixed:
        if fns.logits_fn is not None:
            values = [gradient_metrics(fns.logits_fn, dist, pts, device=device) for pts in bands]
            metrics.update(_per_band(values, ("grad_cos", "grad_mse")))
        if fns.score_fn is not None:
            values = [score_metrics(fns.score_fn, dist, pts, device=device) for pts in bands]
            metrics.update(_per_band(values, ("score_cos",)))
        per_class = config.sample.num_per_class
        y = torch.arange(data.num_classes).repeat_interleave(per_class)
        exact, _ = dist.sample(
            len(y), y=y, generator=torch.Generator().manual_seed(config.eval.seed)
        )
        ceiling = sample_metrics(exact, y, dist, config.sde.sigma_min)
        metrics["gen_accuracy_exact"] = ceiling["bayes_gen_accuracy"]
        metrics["cond_log_likelihood_exact"] = ceiling["cond_log_likelihood"]
    if scaled:
        scale = config.sample.guidance_scale
        values = [
            {"guided_score_cos": guided_score_cos(method, fns, dist, pts, scale, precision, device)}
            for pts in bands
        ]
        metrics.update(_per_band(values, ("guided_score_cos",)))
        if samples is not None:
            y = torch.arange(data.num_classes).repeat_interleave(config.sample.num_per_class)
            metrics.update(sample_metrics(samples.cpu(), y, dist, config.sde.sigma_min))
            # the matched form's ceiling: exact samples at the matched noise level
            gen = torch.Generator().manual_seed(config.eval.seed + 4)
            exact, _ = dist.sample(len(y), y=y, generator=gen)
            level = metrics["matched_sigma"]
            if math.isfinite(level):
                extra = math.sqrt(max(level**2 - config.sde.sigma_min**2, 0.0))
                noisy = exact + extra * torch.randn(exact.shape, generator=gen)
                metrics["gen_accuracy_exact_matched"] = generation_accuracy(noisy, y, dist, level)
    return metrics
