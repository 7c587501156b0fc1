"""A Gaussian energy head a classifier can add to its logits so that its LogSumExp can carry a
score (issue 15, item 2; docs/science.md "A classifier whose SC term learns").

Every logit gets the log-density of one Gaussian per class with a shared covariance, widened by
the noise level as the data's noisy marginal is:

    g_y(x~, sigma) = -1/2 (x~ - mu_y)^T (Sigma + sigma^2 I)^{-1} (x~ - mu_y),
    Sigma = U U^T + diag(v)  (rank-r plus diagonal, Woodbury per noise level).

The covariance is shared across classes, so its log-determinant is the same for every logit and
does not move the softmax or the gradient in x; it is left out. With the network's logits c_y on
top, f_y = c_y + g_y is a class-conditional energy model whose LogSumExp gradient is a mixture of
Gaussian scores (the exact form of the toy mixtures' noisy logits) corrected by the network, and
whose softmax is the network's plus a linear-discriminant term. The means, U and v are trained by
the classifier's own losses (CE and SC); nothing is fitted to the data in closed form.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Means and log-variances are stored divided by this factor: Adam moves a parameter by about the
# learning rate per step, and at lr 1e-3 a log-variance would need ~7,000 steps to go from 1 to the
# ~1e-3 pixel variance of an image background; scaled, ~700 (a per-parameter learning rate).
PARAM_SCALE = 10.0


class GaussianEnergy(nn.Module):
    """g_y(x~, sigma) for flat inputs [B, D]: [B, K]."""

    def __init__(self, dim: int, num_classes: int, rank: int, init_var: float = 1.0):
        super().__init__()
        if rank < 0:
            raise ValueError(f"model.energy_rank must be >= 0, got {rank}")
        self.means = nn.Parameter(torch.zeros(num_classes, dim))
        self.factor = nn.Parameter(torch.randn(dim, rank) / math.sqrt(dim))
        # v = exp(PARAM_SCALE * raw): starts broad (init_var per dimension), so at first the head
        # is the radial part -||x~||^2 / (2 (init_var + sigma^2)) shared by every class.
        self.raw_log_var = nn.Parameter(torch.full((dim,), math.log(init_var) / PARAM_SCALE))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        var = torch.exp(PARAM_SCALE * self.raw_log_var)
        inv = 1.0 / (var[None, :] + sigma.reshape(-1, 1) ** 2)
        u = self.factor
        # Woodbury: P = A^-1 - A^-1 U M^-1 U^T A^-1, A = diag(v) + sigma^2 I, M = I + U^T A^-1 U.
        m = torch.eye(u.shape[1], dtype=x.dtype, device=x.device) + torch.einsum(
            "dr,bd,ds->brs", u, inv, u
        )
        mu = PARAM_SCALE * self.means
        ax = inv * x  # [B, D]
        amu = torch.einsum("bd,kd->bkd", inv, mu)  # A^-1 mu_k per example [B, K, D]
        ux = ax @ u  # U^T A^-1 x  [B, r]
        umu = torch.einsum("bkd,dr->bkr", amu, u)  # U^T A^-1 mu_k  [B, K, r]
        diff_low = ux[:, None, :] - umu  # U^T A^-1 (x - mu_k)
        solved = torch.linalg.solve(m[:, None], diff_low.unsqueeze(-1)).squeeze(-1)
        # (x - mu)^T A^-1 (x - mu) = x A x - 2 mu A x + mu A mu
        quad_diag = (ax * x).sum(1)[:, None] - 2 * (amu * x[:, None, :]).sum(2) + (amu * mu).sum(2)
        quad = quad_diag - (diff_low * solved).sum(2)
        return -0.5 * quad
