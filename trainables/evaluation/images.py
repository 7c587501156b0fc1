"""Held-out image metrics that need no feature extractor, and the trial's grid of guided samples."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from trainables.config import TrialConfig
from trainables.data.images import ImageData
from trainables.evaluation.calibration import accuracy, expected_calibration_error, sc_ratios
from trainables.evaluation.sampling import sample_classes
from trainables.fit import Distributed
from trainables.losses import LogitsFn, score_matching_residual
from trainables.methods import ModelFns, get_method, guided_score_fn, model_fns


def _batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most size rows covering n rows."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _held_out_dsm(
    config: TrialConfig,
    fns: ModelFns,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    gen: torch.Generator,
    device: torch.device | str,
    batch_size: int,
    guided_too: bool = True,
    score_too: bool = True,
) -> dict[str, float]:
    """guided_dsm (the method's guided score at the true labels; unless guided_too is False) and
    score_dsm (the unconditional score, where the method has one; unless score_too is False) over
    eval.sigmas, on the same noise."""
    method = get_method(config.method)
    guided, uncond = [], []
    for sigma_value in config.eval.sigmas:
        z_all = torch.randn(x_all.shape, generator=gen)
        for sl in _batches(len(x_all), batch_size):
            x, y, z = x_all[sl].to(device), y_all[sl].to(device), z_all[sl].to(device)
            sigma = torch.full((len(x),), float(sigma_value), device=device)
            noisy = x + sigma_value * z
            if guided_too:
                score_fn = guided_score_fn(
                    method, fns, y, config.sample.guidance_scale, config.sample.guidance_precision
                )
                residual = score_matching_residual(score_fn(noisy, sigma).detach(), sigma, z)
                guided.append(residual.cpu())
            if score_too and fns.score_fn is not None:
                with torch.no_grad():
                    s = fns.score_fn(noisy, sigma)
                uncond.append(score_matching_residual(s, sigma, z).cpu())
    metrics = {"guided_dsm": torch.cat(guided).mean().item()} if guided else {}
    if uncond:
        metrics["score_dsm"] = torch.cat(uncond).mean().item()
    return metrics


def _classifier_metrics(
    config: TrialConfig,
    logits_fn: LogitsFn,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    gen: torch.Generator,
    device: torch.device | str,
    batch_size: int,
) -> dict[str, float]:
    """Clean accuracy and ECE at sigma_min; accuracy at every eval sigma."""
    metrics: dict[str, float] = {}
    for sigma_value in (config.sde.sigma_min, *config.eval.sigmas):
        logits = []
        with torch.no_grad():
            for sl in _batches(len(x_all), batch_size):
                x = x_all[sl].to(device)
                noisy = x + sigma_value * torch.randn(x.shape, generator=gen).to(device)
                sigma = torch.full((len(x),), float(sigma_value), device=device)
                logits.append(logits_fn(noisy, sigma).float().cpu())
        logits_t = torch.cat(logits)
        if sigma_value == config.sde.sigma_min:
            metrics["clf_accuracy"] = accuracy(logits_t, y_all)
            metrics["clf_ece"] = expected_calibration_error(logits_t, y_all)
        else:
            metrics[f"clf_accuracy_sigma{sigma_value:g}"] = accuracy(logits_t, y_all)
    return metrics


def held_out_rows(data: ImageData, num_points: int, split: str) -> slice:
    """The held-out rows of a split: the first min(num_points, half the held-out set) rows are the
    test split (reported), the next as many the validation split (selection)."""
    n = min(num_points, len(data.test_x) // 2)
    return slice(0, n) if split == "test" else slice(n, 2 * n)


def evaluate_images(
    config: TrialConfig,
    networks: dict[str, nn.Module],
    data: ImageData,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    split: str = "test",
    fixed: bool = True,
    scaled: bool = True,
    distributed: Distributed | None = None,
    draw: bool = True,
) -> tuple[dict[str, float], torch.Tensor | None]:
    """Image metrics on held-out data that need no feature extractor, and guided samples in [0, 1].

    guided_dsm: held-out conditional denoising score matching of the method's guided score at the
    true labels, 0.5 E ||sigma s(x + sigma z, sigma, y) + z||^2 over eval.sigmas; the true
    conditional score minimises it, so it compares the methods' conditional scores (and guidance
    scales) directly. score_dsm: the same for the unconditional score where the method has one.
    Classifier: clean accuracy and ECE at sigma_min, and accuracy at each eval sigma. FID, IS,
    intra-FID and generation accuracy of the samples: trainables.evaluation.generation.

    split: "test" or "val" rows (held_out_rows). fixed: the metrics that do not depend on the
    guidance scale; scaled: guided_dsm and the samples (None when not scaled). distributed: the
    trial's data-parallel group; the samples are drawn in shares by every rank (sample_classes),
    the other metrics by rank 0 alone (the other ranks return none). draw: False leaves the
    samples out (the guidance sweep draws its own: trainables.sweep).
    """
    if distributed is not None and distributed.rank != 0:  # a share of the samples, no metric
        drawn = scaled and draw
        return {}, _samples(config, networks, data, device, distributed)[0] if drawn else None
    fns = model_fns(networks, num_classes=data.num_classes)
    rows = held_out_rows(data, config.eval.num_points, split)
    x_all, y_all = data.test_x[rows], data.test_y[rows]
    metrics: dict[str, float] = {}
    if scaled or (fixed and fns.score_fn is not None):
        gen = torch.Generator().manual_seed(config.eval.seed)
        dsm = _held_out_dsm(
            config, fns, x_all, y_all, gen, device, batch_size, guided_too=scaled, score_too=fixed
        )
        if scaled:
            metrics["guided_dsm"] = dsm["guided_dsm"]
        if fixed and "score_dsm" in dsm:
            metrics["score_dsm"] = dsm["score_dsm"]
    if fns.logits_fn is not None and fixed:
        metrics.update(_classifier_block(config, fns.logits_fn, x_all, y_all, device, batch_size))
    if not scaled or not draw:
        return metrics, None
    samples, metrics["sample_finite_fraction"] = _samples(
        config, networks, data, device, distributed
    )
    return metrics, samples


def _classifier_block(
    config: TrialConfig,
    logits_fn: LogitsFn,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device | str,
    batch_size: int,
) -> dict[str, float]:
    """The classifier's held-out accuracy, ECE and per-sigma accuracy, and its SC ratios."""
    gen = torch.Generator().manual_seed(config.eval.seed + 2)
    metrics = _classifier_metrics(config, logits_fn, x, y, gen, device, batch_size)
    sigma_range = (config.sde.sigma_min, config.sde.sigma_max)
    sc_gen = torch.Generator().manual_seed(config.eval.seed + 1)
    metrics.update(sc_ratios(logits_fn, x.to(device), config.eval.sc_bands, sigma_range, sc_gen))
    return metrics


def _samples(
    config: TrialConfig,
    networks: dict[str, nn.Module],
    data: ImageData,
    device: torch.device | str,
    distributed: Distributed | None,
) -> tuple[torch.Tensor, float]:
    """The guided samples of every class in [0, 1] (under data parallelism, what sample_classes
    returns to this rank), and the fraction of them that was finite before clamping. The twin's
    samples are not clamped: its images are the mixture's own, unbounded."""
    shape = tuple(data.test_x.shape[1:])
    samples, _ = sample_classes(
        config, networks, data.num_classes, shape, device, distributed=distributed
    )
    return finished_samples(samples, data)


def finished_samples(samples: torch.Tensor, data: ImageData) -> tuple[torch.Tensor, float]:
    """Drawn samples on the CPU, clamped to [0, 1] (not the twin's: its images are the mixture's
    own, unbounded), and the fraction of them that was finite before clamping."""
    samples = samples.detach().cpu()
    finite = torch.isfinite(samples.flatten(1)).all(1).double().mean().item()
    return (samples if data.dist is not None else samples.clamp(0, 1)), finite


MAX_SHOWN_PER_CLASS = 16  # samples per class in the labelled grid (the evaluation uses them all)


def save_sample_grid(
    samples: torch.Tensor, class_names: tuple[str, ...], path, title: str = ""
) -> None:
    """The class-ordered samples [K * n, C, H, W] as a labelled grid: one row per class, its name
    on the left, at most MAX_SHOWN_PER_CLASS samples each (clipped to [0, 1] for display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    k = len(class_names)
    rows = samples.detach().cpu().float().clamp(0, 1).reshape(k, -1, *samples.shape[1:])
    shown = rows[:, :MAX_SHOWN_PER_CLASS]
    n, (_, h, w) = shown.shape[1], shown.shape[2:]
    fig, axes = plt.subplots(k, 1, figsize=(0.45 * n + 1.6, 0.45 * k * h / w + 0.5),
                             squeeze=False)  # fmt: skip
    for ax, name, row in zip(axes[:, 0], class_names, shown):
        strip = make_grid(row, nrow=n, padding=1, pad_value=1.0).permute(1, 2, 0).numpy()
        ax.imshow(strip, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
        for spine in ax.spines.values():
            spine.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=120)
    plt.close(fig)
