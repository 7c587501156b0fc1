"""Classifier accuracy, expected calibration error, and how much the SC term has learned."""

from __future__ import annotations

import math

import torch

from trainables.losses import LogitsFn, classifier_score


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows whose argmax logit is the label."""
    return (logits.argmax(1) == y).double().mean().item()


def expected_calibration_error(logits: torch.Tensor, y: torch.Tensor, num_bins: int = 15) -> float:
    """ECE (Guo et al. 2017): sum over equal-width confidence bins of |acc - conf| weighted by bin
    mass."""
    probs = torch.softmax(logits.double(), dim=1)
    conf, pred = probs.max(1)
    correct = (pred == y).double()
    bins = torch.clamp((conf * num_bins).long(), max=num_bins - 1)
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(num_bins):
        mask = bins == b
        if mask.any():
            ece += mask.double().mean() * (correct[mask].mean() - conf[mask].mean()).abs()
    return ece.item()


def sc_ratios(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    edges: tuple[float, ...],
    sigma_range: tuple[float, float],
    generator: torch.Generator,
) -> dict[str, float]:
    """How much of the SC target a classifier's LogSumExp score reaches, per noise band.

    sc_ratio_band<i> = E ||sigma grad_x LSE f(x~) + z||^2 / E ||z||^2 over held-out x, sigma
    log-uniform in band i, z ~ N(0, I): the held-out SC term over what a classifier whose LSE has
    zero gradient gets (D / 2 under the sum, 1 / 2 under the mean), so 1.0 = nothing learned.
    sc_ratio_radial_band<i>: the same for the best class-independent quadratic energy
    -beta ||x~||^2 / (2 sigma) in that band (closed form: beta = E[z . x~] / E ||x~||^2), which a
    classifier can absorb into every logit without calibrating anything. sc_ratio pools the bands.
    """
    low, high = sigma_range
    bands = [(max(a, low), min(b, high)) for a, b in zip(edges, edges[1:]) if a < high and b > low]
    metrics: dict[str, float] = {}
    residual, baseline = 0.0, 0.0
    for i, (a, b) in enumerate(bands):
        u = torch.rand(len(x), generator=generator, dtype=torch.float64)
        sigma = torch.exp(math.log(a) + u * (math.log(b) - math.log(a))).to(x)
        z = torch.randn(x.shape, generator=generator).to(x)
        s = sigma.reshape(-1, *([1] * (x.dim() - 1)))
        noisy = x + s * z
        score = classifier_score(logits_fn, noisy, sigma, create_graph=False).detach()
        r = (s * score + z).flatten(1).double().pow(2).sum(1)
        zz = z.flatten(1).double().pow(2).sum(1)
        flat_x, flat_z = noisy.flatten(1).double(), z.flatten(1).double()
        beta = (flat_z * flat_x).sum() / flat_x.pow(2).sum()
        radial = (flat_z - beta * flat_x).pow(2).sum(1)
        metrics[f"sc_ratio_band{i}"] = (r.mean() / zz.mean()).item()
        metrics[f"sc_ratio_radial_band{i}"] = (radial.mean() / zz.mean()).item()
        residual, baseline = residual + r.sum().item(), baseline + zz.sum().item()
    metrics["sc_ratio"] = residual / baseline if baseline else float("nan")
    return metrics
