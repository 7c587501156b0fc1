"""VE-SDE (Song et al. 2021): sigma(t), marginal, prior and discretisation; docs/methods.md
section 1."""

from __future__ import annotations

import math

import torch

from trainables.config import SDEConfig


class VESDE:
    """Variance-exploding SDE dx = g(t) dw with sigma(t) = sigma_min (sigma_max / sigma_min)^t."""

    def __init__(
        self,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        num_scales: int = 1000,
        eps: float = 1e-5,
    ):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.num_scales, self.eps = (
            sigma_min,
            sigma_max,
            num_scales,
            eps,
        )

    @classmethod
    def from_config(cls, config: SDEConfig) -> VESDE:
        """Build from an SDEConfig."""
        return cls(config.sigma_min, config.sigma_max, config.num_scales, config.eps)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) = sigma_min (sigma_max / sigma_min)^t."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """g(t) = sigma(t) sqrt(2 ln(sigma_max / sigma_min))."""
        return self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def marginal(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of p_t(x | x0) = N(x0, sigma(t)^2 I)."""
        return x0, self.sigma(t)

    def sample_t(
        self, n: int, *, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor:
        """Training times t ~ U(eps, 1)."""
        u = torch.rand(n, generator=generator, device=device)
        return self.eps + (1 - self.eps) * u

    def prior_sample(
        self, shape, *, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor:
        """x_T ~ N(0, sigma_max^2 I)."""
        return self.sigma_max * torch.randn(shape, generator=generator, device=device)

    def discretize(self, num_steps: int | None = None) -> torch.Tensor:
        """Sampling noise levels sigma(t_i), t_i = linspace(1, eps, N): decreasing, float64 on
        CPU."""
        n = num_steps or self.num_scales
        t = torch.linspace(1.0, self.eps, n, dtype=torch.float64)
        return self.sigma(t)
