"""One small function per loss term; each returns per-example values. docs/methods.md section 2.

The caller draws sigma (from t), z, and any other randomness, so every loss is deterministic given
them.
Shapes: x [B, ...], sigma [B], z like x, y [B] (long).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CondScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _bcast(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-example sigma [B] to broadcast against like [B, ...]."""
    return sigma.reshape(-1, *([1] * (like.dim() - 1)))


def double_differentiable():
    """Attention on SDPA's math kernel, for a forward whose input gradient is differentiated again
    (SC, DLSM, QC). The fused kernels (flash and memory-efficient on CUDA, flash on CPU, which a
    channels-last network selects) have no double backward: "derivative for
    aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented"
    (pytorch#116350)."""
    return sdpa_kernel(SDPBackend.MATH)


REDUCTIONS = ("sum", "mean")  # over data dimensions: score_sde's VE sum, or a per-dimension mean


def _sq(v: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """0.5 x squared norm over all non-batch dimensions, summed or averaged over them."""
    squares = v.flatten(1).pow(2)
    if reduction == "sum":
        return 0.5 * squares.sum(1)
    if reduction == "mean":
        return 0.5 * squares.mean(1)
    raise ValueError(f"unknown reduction {reduction!r}; valid: {list(REDUCTIONS)}")


def score_matching_residual(
    score: torch.Tensor,
    sigma: torch.Tensor,
    z: torch.Tensor,
    weighting: str = "sigma2",
    reduction: str = "sum",
) -> torch.Tensor:
    """0.5 lambda(t) ||score + z / sigma||^2 per example; lambda = sigma^2 ("sigma2") or 1
    ("none"); the squared norm summed over data dimensions or averaged ("mean")."""
    s = _bcast(sigma, z)
    if weighting == "sigma2":
        return _sq(s * score + z, reduction)
    if weighting == "none":
        return _sq(score + z / s, reduction)
    raise ValueError(f"unknown weighting {weighting!r}; valid: ['none', 'sigma2']")


def dsm_loss(
    score_fn: ScoreFn,
    x: torch.Tensor,
    sigma: torch.Tensor,
    z: torch.Tensor,
    *,
    weighting: str = "sigma2",
    reduction: str = "sum",
) -> torch.Tensor:
    """Denoising score matching (Song et al. 2021): 0.5 ||sigma s(x + sigma z, sigma) + z||^2."""
    x_noisy = x + _bcast(sigma, x) * z
    return score_matching_residual(score_fn(x_noisy, sigma), sigma, z, weighting, reduction)


def ce_loss(
    logits_fn: LogitsFn, x: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Time-generalised cross-entropy of f(x + sigma z, sigma) against y (paper 001 Sec. 3.2)."""
    # An assertion the device checks (on a GPU, without the host waiting for it every step).
    torch._assert_async(
        (y >= 0).all(), "ce_loss got unlabeled rows (y < 0); pass labeled rows only"
    )
    x_noisy = x + _bcast(sigma, x) * z
    return F.cross_entropy(logits_fn(x_noisy, sigma), y, reduction="none")


def classifier_score(
    logits_fn: LogitsFn, x: torch.Tensor, sigma: torch.Tensor, *, create_graph: bool
) -> torch.Tensor:
    """Score of the classifier read as an EBM: grad_x LogSumExp_y f(x, sigma)[y] (paper 001 eq.
    2)."""
    with torch.enable_grad(), double_differentiable() if create_graph else nullcontext():
        x = x if x.requires_grad else x.detach().requires_grad_(True)
        lse = torch.logsumexp(logits_fn(x, sigma), dim=1)
        (grad,) = torch.autograd.grad(lse.sum(), x, create_graph=create_graph)
    return grad


def sc_loss(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    sigma: torch.Tensor,
    z: torch.Tensor,
    *,
    weighting: str = "sigma2",
    reduction: str = "sum",
) -> torch.Tensor:
    """Self-calibration (paper 001 eq. 3): DSM applied to grad_x LSE f, differentiable in the
    parameters."""
    x_noisy = (x + _bcast(sigma, x) * z).detach().requires_grad_(True)
    score = classifier_score(logits_fn, x_noisy, sigma, create_graph=True)
    return score_matching_residual(score, sigma, z, weighting, reduction)


def ce_and_sc_losses(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    sigma: torch.Tensor,
    z: torch.Tensor,
    y: torch.Tensor,
    *,
    weighting: str = "sigma2",
    reduction: str = "sum",
    labeled: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CE on the labeled rows and SC on every row from ONE classifier forward on the shared noisy
    input.

    Equal to ce_loss on the labeled rows and sc_loss on all rows with the same (sigma, z); saves the
    separate CE forward and backward (the SC step then costs about what SC alone costs). labeled:
    the labeled rows' indices when the caller knows them (else found from y >= 0).
    """
    x_noisy = (x + _bcast(sigma, x) * z).detach().requires_grad_(True)
    with double_differentiable():
        logits = logits_fn(x_noisy, sigma)
    (grad,) = torch.autograd.grad(torch.logsumexp(logits, dim=1).sum(), x_noisy, create_graph=True)
    labeled = y >= 0 if labeled is None else labeled
    ce = F.cross_entropy(logits[labeled], y[labeled], reduction="none")
    return ce, score_matching_residual(grad, sigma, z, weighting, reduction)


def dlsm_loss(
    logits_fn: LogitsFn,
    frozen_score_fn: ScoreFn,
    x: torch.Tensor,
    sigma: torch.Tensor,
    z: torch.Tensor,
    y: torch.Tensor,
    *,
    power: float = 0.0,
    reduction: str = "sum",
) -> torch.Tensor:
    """DLSM (paper 003): 0.5 sigma^(2w) ||grad_x log p(y|x) + s(x) + z / sigma||^2, s frozen (the
    reference code averages over dimensions: reduction "mean")."""
    x_noisy = (x + _bcast(sigma, x) * z).detach().requires_grad_(True)
    with double_differentiable():
        log_post = F.log_softmax(logits_fn(x_noisy, sigma), dim=1).gather(1, y[:, None]).sum()
    (grad,) = torch.autograd.grad(log_post, x_noisy, create_graph=True)
    with torch.no_grad():
        score = frozen_score_fn(x_noisy.detach(), sigma)
    s = _bcast(sigma, x)
    return s.flatten() ** (2 * power) * _sq(grad + score + z / s, reduction)


def cond_dsm_loss(
    cond_score_fn: CondScoreFn,
    x: torch.Tensor,
    sigma: torch.Tensor,
    z: torch.Tensor,
    y: torch.Tensor,
    *,
    reduction: str = "sum",
) -> torch.Tensor:
    """DSM of a class-conditional score model s(x, sigma, y) (Cond)."""
    return dsm_loss(lambda xt, st: cond_score_fn(xt, st, y), x, sigma, z, reduction=reduction)


def cfg_labels(y: torch.Tensor, u: torch.Tensor, p_uncond: float, null_label: int) -> torch.Tensor:
    """CFG training labels: unlabeled rows (y < 0) and rows with u < p_uncond get the null label."""
    return torch.where((y < 0) | (u < p_uncond), torch.full_like(y, null_label), y)


def cfg_dsm_loss(
    cond_score_fn: CondScoreFn,
    x: torch.Tensor,
    sigma: torch.Tensor,
    z: torch.Tensor,
    y: torch.Tensor,
    u: torch.Tensor,
    *,
    p_uncond: float,
    null_label: int,
    reduction: str = "sum",
) -> torch.Tensor:
    """Classifier-free guidance training (Ho & Salimans): DSM with labels dropped to the null
    label."""
    labels = cfg_labels(y, u, p_uncond, null_label)
    return cond_dsm_loss(cond_score_fn, x, sigma, z, labels, reduction=reduction)


def qc_loss(
    score_fn: ScoreFn, x: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Quasi-conservative regulariser (paper 004): sigma^2 (||J^T v||^2 - v^T J J v), Hutchinson v.

    In expectation over Rademacher v this is sigma^2 ||J - J^T||_F^2 / 2; two backward passes.
    """
    x_noisy = (x + _bcast(sigma, x) * z).detach().requires_grad_(True)
    with double_differentiable():
        score = score_fn(x_noisy, sigma)
    (vj,) = torch.autograd.grad(score, x_noisy, grad_outputs=v, create_graph=True)  # v^T J
    (vjj,) = torch.autograd.grad(score, x_noisy, grad_outputs=vj, create_graph=True)  # v^T J J
    per_example = vj.flatten(1).pow(2).sum(1) - (vjj * v).flatten(1).sum(1)
    return sigma**2 * per_example


def jacobian(score_fn: ScoreFn, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Full Jacobian d s / d x per example [B, D, D] (small D only: one backward per dimension)."""
    x = x.detach().flatten(1).requires_grad_(True)
    with torch.enable_grad():
        score = score_fn(x, sigma).flatten(1)
        rows = [
            torch.autograd.grad(score[:, i].sum(), x, retain_graph=True)[0]
            for i in range(score.shape[1])
        ]
    return torch.stack(rows, dim=1)


def asymmetry(score_fn: ScoreFn, x: torch.Tensor, sigma: torch.Tensor) -> dict[str, float]:
    """Asym = E ||J - J^T||_F^2 and NAsym = E[||J - J^T||_F^2 / (4 ||J||_F^2)] (paper 004)."""
    jac = jacobian(score_fn, x, sigma)
    asym = (jac - jac.transpose(1, 2)).pow(2).sum((1, 2))
    norm = jac.pow(2).sum((1, 2))
    return {"asym": asym.mean().item(), "nasym": (asym / (4 * norm)).mean().item()}
