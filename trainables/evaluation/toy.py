"""Toy evaluation against the exact ground truth (paper 001 App. C) and sample-quality measures."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from trainables.config import TrialConfig
from trainables.data.toy import GaussianMixture, ToyData
from trainables.evaluation.calibration import accuracy, expected_calibration_error, sc_ratios
from trainables.evaluation.sampling import sample_classes
from trainables.guidance import classifier_log_posterior_grad
from trainables.losses import LogitsFn, ScoreFn
from trainables.methods import Method, ModelFns, get_method, guided_score_fn, model_fns


def evaluation_points(
    dist: GaussianMixture, sigmas: Sequence[float], num_points: int, seed: int
) -> list[tuple[float, torch.Tensor, torch.Tensor]]:
    """The stated evaluation set: for each sigma, num_points draws (x, y) of p_sigma(x, y)."""
    gen = torch.Generator().manual_seed(seed)
    return [(float(s), *dist.sample_perturbed(num_points, float(s), generator=gen)) for s in sigmas]


Points = list[tuple[float | torch.Tensor, torch.Tensor, torch.Tensor]]  # (sigma, x, y) blocks


def _sigmas(sigma: float | torch.Tensor, n: int) -> torch.Tensor:
    """A block's noise levels [n]: one sigma for every point, or one per point."""
    return sigma if torch.is_tensor(sigma) else torch.full((n,), float(sigma))


def _cosine(estimate: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Per-point cosine of flattened vectors; points whose exact vector vanishes (norm < 1e-8,
    cosine undefined) are dropped."""
    estimate, exact = estimate.flatten(1).double(), exact.flatten(1).double()
    keep = exact.norm(dim=1) >= 1e-8
    return torch.nn.functional.cosine_similarity(estimate[keep], exact[keep], dim=1, eps=1e-30)


def gradient_metrics(
    logits_fn: LogitsFn,
    dist: GaussianMixture,
    points: Points,
    *,
    scale: float = 1.0,
    score_fn: ScoreFn | None = None,
    precision: str = "fp32",
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Classifier-gradient MSE / cosine vs grad log p_sigma(y|x), and guided conditional-score
    cosine.

    grad_mse: mean over points of ||scale g_phi - g||^2 (squared Euclidean error, summed over dims).
    grad_cos: mean cosine of g_phi and g (over points where g does not vanish). cond_score_cos: mean
    cosine of s + scale g_phi and the exact
    grad log p_sigma(x|y), where s is the exact unconditional score (as in App. C) unless score_fn
    is given. dist: any mixture with exact scores (the 2-D toys', or an image twin's on image-shaped
    points); device: where the networks run (the exact side stays on the CPU).
    """
    mse, cos, cond_cos = [], [], []
    for sigma, x, y in points:
        s = _sigmas(sigma, len(x))
        xd, sd, yd = x.to(device), s.to(device), y.to(device)
        g_hat = scale * classifier_log_posterior_grad(logits_fn, xd, sd, yd, precision).cpu()
        g_hat = g_hat.double()
        g = dist.posterior_score(x, s, y)
        uncond = dist.score(x, s) if score_fn is None else score_fn(xd, sd).detach().cpu().double()
        mse.append((g_hat - g).flatten(1).pow(2).sum(1))
        cos.append(_cosine(g_hat, g))
        cond_cos.append(_cosine(uncond + g_hat, dist.cond_score(x, s, y)))
    return {
        "grad_mse": torch.cat(mse).mean().item(),
        "grad_cos": torch.cat(cos).mean().item(),
        "cond_score_cos": torch.cat(cond_cos).mean().item(),
    }


def score_metrics(
    score_fn: ScoreFn,
    dist: GaussianMixture,
    points: Points,
    *,
    y_given: bool = False,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Cosine of a (possibly conditional) score estimate against the exact one; y_given selects
    conditional."""
    cos = []
    for sigma, x, y in points:
        s = _sigmas(sigma, len(x))
        xd, sd, yd = x.to(device), s.to(device), y.to(device)
        with torch.no_grad():
            est = (score_fn(xd, sd, yd) if y_given else score_fn(xd, sd)).cpu()
        exact = dist.cond_score(x, s, y) if y_given else dist.score(x, s)
        cos.append(_cosine(est, exact))
    return {"cond_score_cos" if y_given else "score_cos": torch.cat(cos).mean().item()}


def guided_score_cos(
    method: Method,
    fns: ModelFns,
    dist: GaussianMixture,
    points: Points,
    scale: float,
    precision: str = "fp32",
    device: torch.device | str = "cpu",
) -> float:
    """Mean cosine of the method's guided score at scale with the exact conditional score."""
    cos = []
    for sigma, x, y in points:
        s = _sigmas(sigma, len(x))
        guided = guided_score_fn(method, fns, y.to(device), scale, precision)
        est = guided(x.to(device), s.to(device)).detach().cpu().double()
        cos.append(_cosine(est, dist.cond_score(x, s, y)))
    return torch.cat(cos).mean().item()


def generation_accuracy(
    samples: torch.Tensor, y_target: torch.Tensor, dist: GaussianMixture, sigma: float
) -> float:
    """Fraction of samples whose exact Bayes posterior argmax (at a small sigma) is the target
    class."""
    post = dist.posterior(samples, torch.full((len(samples),), sigma))
    return (post.argmax(1) == y_target).double().mean().item()


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Energy distance 2 E||a - b|| - E||a - a'|| - E||b - b'|| (0 iff same distribution),
    unbiased: the within-sample means skip the zero self-distances (U-statistics)."""
    a, b = a.double(), b.double()

    def within(x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        return torch.cdist(x, x).sum() / (n * (n - 1))

    return (2 * torch.cdist(a, b).mean() - within(a) - within(b)).item()


def evaluate_toy(
    config: TrialConfig,
    networks: dict[str, nn.Module],
    data: ToyData,
    *,
    held_out: tuple[torch.Tensor, torch.Tensor] | None = None,
    fixed: bool = True,
    scaled: bool = True,
) -> dict[str, float]:
    """Every toy metric that applies to the method's networks (paper 001 App. C plus samples).

    held_out: the (x, y) rows that classifier accuracy and energy distance use (default the test
    set). fixed: the metrics that do not depend on the guidance scale; scaled: those that do, at
    config.sample.guidance_scale (a guidance sweep computes the fixed part once).
    """
    method = get_method(config.method)
    dist = data.dist
    test_x, test_y = held_out if held_out is not None else (data.test_x, data.test_y)
    fns = model_fns(networks, num_classes=data.num_classes)
    points = evaluation_points(dist, config.eval.sigmas, config.eval.num_points, config.eval.seed)
    metrics: dict[str, float] = {}
    if fns.logits_fn is not None and fixed:
        # Classifier gradients vs the exact posterior score; conditional score with the exact score.
        metrics.update(gradient_metrics(fns.logits_fn, dist, points, scale=1.0))
        with torch.no_grad():
            sigma = torch.full((len(test_x),), config.sde.sigma_min)
            logits = fns.logits_fn(test_x, sigma)
        metrics["clf_accuracy"] = accuracy(logits, test_y)
        metrics["clf_ece"] = expected_calibration_error(logits, test_y)
        # How much of the SC target the classifier's LSE score reaches, per noise band.
        gen = torch.Generator().manual_seed(config.eval.seed + 1)
        sigma_range = (config.sde.sigma_min, config.sde.sigma_max)
        metrics.update(
            sc_ratios(fns.logits_fn, test_x[: config.eval.num_points], config.eval.sc_bands,
                      sigma_range, gen)
        )  # fmt: skip
    if fns.score_fn is not None and fixed:
        metrics.update(score_metrics(fns.score_fn, dist, points))
    if fixed:
        # The ceiling: exact conditional samples scored as the guided ones are (overlapping
        # classes keep it < 1).
        y = torch.arange(data.num_classes).repeat_interleave(config.sample.num_per_class)
        gen = torch.Generator().manual_seed(config.eval.seed)
        exact, _ = dist.sample(len(y), y=y, generator=gen)
        metrics["gen_accuracy_exact"] = generation_accuracy(exact, y, dist, config.sde.sigma_min)
    if scaled:
        metrics.update(_scaled_metrics(config, method, fns, networks, data, points, test_x, test_y))
    return metrics


def _scaled_metrics(
    config: TrialConfig,
    method: Method,
    fns: ModelFns,
    networks: dict[str, nn.Module],
    data: ToyData,
    points: list[tuple[float, torch.Tensor, torch.Tensor]],
    test_x: torch.Tensor,
    test_y: torch.Tensor,
) -> dict[str, float]:
    """The toy metrics that depend on the guidance scale: guided-score cosines and samples."""
    dist, scale = data.dist, config.sample.guidance_scale
    metrics: dict[str, float] = {}
    if fns.logits_fn is not None:
        metrics["cond_score_cos_scaled"] = gradient_metrics(
            fns.logits_fn, dist, points, scale=scale, precision=config.sample.guidance_precision
        )["cond_score_cos"]
    # The method's own guided score vs the exact conditional score.
    metrics["guided_score_cos"] = guided_score_cos(
        method, fns, dist, points, scale, config.sample.guidance_precision
    )
    # Guided samples: accuracy under the exact Bayes posterior, per-class energy distance to the
    # held-out points.
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
            energy_distance(mine, test_x[test_y == k]) if len(mine) > 1 else float("nan")
        )
        metrics[f"energy_distance_class{k}"] = per_class[-1]
    metrics["energy_distance"] = float(torch.tensor(per_class).mean())
    return metrics


def plot_toy_samples(config: TrialConfig, networks: dict[str, nn.Module], data: ToyData, path):
    """A 2-D toy trial's picture: exact conditional samples of the mixture (left) beside the
    trial's guided samples at its scale (right), one colour per class, on the same axes. The
    guided samples are the evaluation's own (sample_classes is deterministic for sample.seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, y = sample_classes(config, networks, data.num_classes, data.dim)
    gen = torch.Generator().manual_seed(config.eval.seed)
    exact, _ = data.dist.sample(len(y), y=y, generator=gen)
    finite = torch.isfinite(samples).all(1)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    panels = ((exact, torch.ones_like(finite), "exact mixture"), (samples, finite, "guided"))
    for ax, (points, keep, title) in zip(axes, panels):
        for k in range(data.num_classes):
            rows = points[keep & (y == k)].numpy()
            ax.scatter(rows[:, 0], rows[:, 1], s=4, alpha=0.5, color=plt.get_cmap("tab10")(k),
                       label=f"class {k}")  # fmt: skip
        ax.set_title(title)
        ax.grid(alpha=0.3)
    lim = exact.abs().max().item() * 1.3
    axes[0].set_xlim(-lim, lim)
    axes[0].set_ylim(-lim, lim)
    axes[0].legend(fontsize=7, markerscale=3)
    scale = config.sample.guidance_scale
    fig.suptitle(f"{config.method}, {config.data.label_percent:g}% labels, scale {scale:g}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
