"""Score-function combinators: classifier guidance and classifier-free guidance (docs/methods.md
section 3).

Each returns a plain score_fn(x, sigma) for the samplers, which never know guidance exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainables.config import GUIDANCE_PRECISIONS
from trainables.losses import CondScoreFn, LogitsFn, ScoreFn


def classifier_log_posterior_grad(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    sigma: torch.Tensor,
    y: torch.Tensor,
    precision: str = "fp32",
) -> torch.Tensor:
    """grad_x log softmax(f(x, sigma))[y], on a detached x, without create_graph. precision
    "bf16": the classifier's forward and backward under bf16 autocast (the softmax in fp32, the
    gradient returned in x's dtype); docs/benchmarks.md has its error on the toy."""
    if precision not in GUIDANCE_PRECISIONS:
        raise ValueError(f"unknown guidance precision {precision!r}; valid: {GUIDANCE_PRECISIONS}")
    autocast = torch.autocast(
        device_type=x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"
    )
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        with autocast:
            logits = logits_fn(x, sigma)
        if logits.dtype in (torch.bfloat16, torch.float16):
            logits = logits.float()  # the softmax in fp32; fp32 / fp64 logits stay as they are
        log_post = F.log_softmax(logits, dim=1).gather(1, y[:, None]).sum()
        (grad,) = torch.autograd.grad(log_post, x)
    return grad


Scale = float | torch.Tensor  # one scale, or one per row ([N]: a batch carrying several scales)


def _per_row(scale: Scale, x: torch.Tensor) -> Scale:
    """A per-row scale [N] shaped to broadcast over x's rows; a float as it is."""
    if isinstance(scale, torch.Tensor):
        return scale.to(x.device, x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return scale


def classifier_guidance(
    score_fn: ScoreFn,
    logits_fn: LogitsFn,
    y: torch.Tensor,
    scale: Scale = 1.0,
    precision: str = "fp32",
) -> ScoreFn:
    """s(x, t) + lambda_CG grad_x log p_phi(y | x, t) (Dhariwal & Nichol; paper 001 eq. 1); scale
    a float or one per row."""

    def guided_score_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        grad = classifier_log_posterior_grad(logits_fn, x, sigma, y, precision)
        return score_fn(x, sigma) + _per_row(scale, grad) * grad

    return guided_score_fn


def classifier_free_guidance(
    cond_score_fn: CondScoreFn, y: torch.Tensor, null_label: int, w: Scale = 0.0
) -> ScoreFn:
    """(1 + w) s(x, t, y) - w s(x, t, null) (Ho & Salimans); w = 0 is the plain conditional
    model; w a float or one per row (the unconditional pass is skipped only when every w is 0)."""
    unguided = bool((w == 0).all()) if isinstance(w, torch.Tensor) else w == 0

    def guided_score_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if unguided:
            return cond_score_fn(x, sigma, y)
        both = cond_score_fn(
            torch.cat([x, x]),
            torch.cat([sigma, sigma]),
            torch.cat([y, torch.full_like(y, null_label)]),
        )
        cond, uncond = both.chunk(2)
        weight = _per_row(w, cond)
        return (1 + weight) * cond - weight * uncond

    return guided_score_fn
