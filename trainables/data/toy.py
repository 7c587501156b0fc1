"""Toy 2-D data with exact ground truth at every noise level (docs/methods.md section 4).

A Gaussian mixture p(x | y) = sum_c w_yc N(mu_yc, S_yc) perturbed by N(0, sigma^2 I) is the same
mixture
with S_yc + sigma^2 I, so log p_sigma(x, y), grad log p_sigma(x), grad log p_sigma(x | y) and
grad log p_sigma(y | x) are closed form. An empirical set (two moons) is the mixture with one
zero-covariance component per point: the Parzen oracle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from trainables import names

ArrayLike = Any  # nested lists, numpy arrays or tensors (torch.as_tensor takes them)


class GaussianMixture:
    """Class-conditional Gaussian mixture with exact perturbed scores; float64 inside."""

    def __init__(
        self,
        means: ArrayLike,
        covs: ArrayLike | None = None,
        weights: ArrayLike | None = None,
        priors: ArrayLike | None = None,
    ) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() != 3:
            raise ValueError(
                f"means must have shape [classes, components, dim], got {tuple(means.shape)}"
            )
        k, c, d = means.shape
        covs = (
            torch.zeros(k, c, d, d, dtype=torch.float64)
            if covs is None
            else torch.as_tensor(covs, dtype=torch.float64)
        )
        weights = (
            torch.full((k, c), 1.0 / c, dtype=torch.float64)
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float64)
        )
        priors = (
            torch.full((k,), 1.0 / k, dtype=torch.float64)
            if priors is None
            else torch.as_tensor(priors, dtype=torch.float64)
        )
        if covs.shape != (k, c, d, d):
            raise ValueError(
                f"covs must have shape {(k, c, d, d)} to match means {(k, c, d)}, "
                f"got {tuple(covs.shape)}"
            )
        if weights.shape != (k, c):
            raise ValueError(
                f"weights must have shape {(k, c)} to match means {(k, c, d)}, "
                f"got {tuple(weights.shape)}"
            )
        if priors.shape != (k,):
            raise ValueError(
                f"priors must have shape {(k,)} to match means {(k, c, d)}, "
                f"got {tuple(priors.shape)}"
            )
        if (weights < 0).any() or not torch.allclose(
            weights.sum(1), torch.ones(k, dtype=torch.float64)
        ):
            raise ValueError("weights must be non-negative and sum to 1 within each class")
        if (priors <= 0).any() or not math.isclose(float(priors.sum()), 1.0, rel_tol=1e-9):
            raise ValueError("priors must be positive and sum to 1")
        self.means, self.covs, self.weights, self.priors = means, covs, weights, priors
        self.num_classes, self.num_components, self.dim = k, c, d
        eye = torch.eye(d, dtype=torch.float64)
        diag = torch.diagonal(covs, dim1=-2, dim2=-1)
        self._iso_var = diag[..., 0] if torch.allclose(covs, diag[..., :1, None] * eye) else None
        self._chol = torch.linalg.cholesky(covs + 1e-12 * eye)

    @classmethod
    def from_points(
        cls, x: torch.Tensor, y: torch.Tensor, num_classes: int | None = None
    ) -> GaussianMixture:
        """Parzen oracle: the empirical distribution of labeled points (one delta component per
        point)."""
        x = torch.as_tensor(x, dtype=torch.float64)
        y = torch.as_tensor(y, dtype=torch.long)
        k = int(num_classes if num_classes is not None else y.max() + 1)
        counts = torch.bincount(y, minlength=k)
        if (counts == 0).any():
            raise ValueError(
                f"every class needs at least one point; counts per class: {counts.tolist()}"
            )
        c = int(counts.max())
        means = torch.zeros(k, c, x.shape[1], dtype=torch.float64)
        weights = torch.zeros(k, c, dtype=torch.float64)
        for j in range(k):
            pts = x[y == j]
            means[j, : len(pts)] = pts
            weights[j, : len(pts)] = 1.0 / len(pts)
        return cls(means, None, weights, counts.double() / counts.sum())

    def _components(
        self, x: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi_y w_yc N(x; mu_yc, S_yc + sigma^2 I) [B, K, C] and component scores [B, K, C,
        D]."""
        x = x.to(torch.float64)
        var = sigma.to(torch.float64).reshape(-1, 1, 1) ** 2
        diff = x[:, None, None, :] - self.means[None]
        if self._iso_var is not None:
            total = self._iso_var[None] + var  # [B, K, C]
            solved = diff / total[..., None]
            logdet = self.dim * torch.log(total)
        else:
            cov = self.covs[None] + var[..., None, None] * torch.eye(self.dim, dtype=torch.float64)
            solved = torch.linalg.solve(cov, diff.unsqueeze(-1)).squeeze(-1)
            logdet = torch.logdet(cov)
        log_normal = (
            -0.5 * (diff * solved).sum(-1) - 0.5 * logdet - 0.5 * self.dim * math.log(2 * math.pi)
        )
        log_r = torch.log(self.priors)[None, :, None] + torch.log(self.weights)[None] + log_normal
        return log_r, -solved

    def log_joint(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log p_sigma(x, y) for every class [B, K]."""
        return torch.logsumexp(self._components(x, sigma)[0], dim=2)

    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log p_sigma(x) [B]."""
        return torch.logsumexp(self.log_joint(x, sigma), dim=1)

    def posterior(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Exact Bayes posterior p_sigma(y | x) [B, K]."""
        return torch.softmax(self.log_joint(x, sigma), dim=1)

    def score(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """grad_x log p_sigma(x) [B, D]: responsibility-weighted component scores."""
        log_r, comp = self._components(x, sigma)
        resp = torch.softmax(log_r.flatten(1), dim=1).reshape(log_r.shape)
        return (resp[..., None] * comp).sum((1, 2))

    def cond_score(self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """grad_x log p_sigma(x | y) [B, D]."""
        log_r, comp = self._components(x, sigma)
        idx = torch.arange(len(x))
        resp = torch.softmax(log_r[idx, y], dim=1)
        return (resp[..., None] * comp[idx, y]).sum(1)

    def posterior_score(
        self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """grad_x log p_sigma(y | x) = grad log p_sigma(x | y) - grad log p_sigma(x) [B, D]."""
        return self.cond_score(x, sigma, y) - self.score(x, sigma)

    def sample(
        self, n: int, *, generator: torch.Generator | None = None, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw n clean points (x float32 [n, D], y long [n]); y may be given to sample each
        class."""
        if y is None:
            y = torch.multinomial(self.priors, n, replacement=True, generator=generator)
        c = torch.multinomial(self.weights[y], 1, generator=generator).squeeze(1)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[y, c] + (self._chol[y, c] @ eps[..., None]).squeeze(-1)
        return x.float(), y

    def sample_perturbed(
        self, n: int, sigma: float, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw n points of p_sigma(x, y) = p(x, y) convolved with N(0, sigma^2 I)."""
        x, y = self.sample(n, generator=generator)
        return x + sigma * torch.randn(x.shape, generator=generator), y


def gmm2() -> GaussianMixture:
    """Two interleaved classes, two isotropic components each (an XOR layout)."""
    means = [[[-2.0, -2.0], [2.0, 2.0]], [[-2.0, 2.0], [2.0, -2.0]]]
    return GaussianMixture(means, 0.36 * torch.eye(2).expand(2, 2, 2, 2))


def gmm3() -> GaussianMixture:
    """Three classes of three anisotropic components placed around a ring."""
    angles = torch.arange(9) * 2 * math.pi / 9
    centres = 3.0 * torch.stack([angles.cos(), angles.sin()], 1)
    means = torch.stack([centres[k::3] for k in range(3)])
    covs = torch.tensor([[0.3, 0.1], [0.1, 0.15]]).expand(3, 3, 2, 2)
    return GaussianMixture(means, covs)


def overlap2() -> GaussianMixture:
    """Two overlapping classes (soft Bayes posterior), each a pair of elongated components."""
    means = [[[-1.0, 0.0], [0.5, 1.5]], [[1.0, 0.0], [-0.5, -1.5]]]
    covs = torch.tensor([[[0.6, 0.0], [0.0, 0.2]], [[0.2, 0.0], [0.0, 0.6]]]).expand(2, 2, 2, 2)
    return GaussianMixture(means, covs)


def two_moons(
    n: int, *, noise: float = 0.1, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inter-twinning moons (paper 003's toy), n points, labels 0 / 1."""
    y = torch.randint(0, 2, (n,), generator=generator)
    angle = torch.rand(n, generator=generator) * math.pi
    upper = torch.stack([angle.cos(), angle.sin()], 1)
    lower = torch.stack([1 - angle.cos(), 0.5 - angle.sin()], 1)
    x = torch.where(y[:, None] == 0, upper, lower) + noise * torch.randn(n, 2, generator=generator)
    return x.float(), y


@dataclass
class ToyData:
    """A toy dataset with its exact distribution (or Parzen oracle)."""

    name: str
    x: torch.Tensor  # training points [N, D]
    y: torch.Tensor  # true training labels [N] (the split hides some of them)
    test_x: torch.Tensor
    test_y: torch.Tensor
    dist: GaussianMixture

    @property
    def num_classes(self) -> int:
        return self.dist.num_classes

    @property
    def dim(self) -> int:
        return self.dist.dim


TOY_MIXTURES = {"gmm2": gmm2, "gmm3": gmm3, "overlap2": overlap2}
TOY_DATASETS = names.TOY_DATASETS  # the mixtures and moons (a test keeps them equal)


def make_toy(name: str, num_train: int, num_test: int, seed: int = 0) -> ToyData:
    """Draw a toy dataset by name (gmm2, gmm3, moons) with a seed."""
    gen = torch.Generator().manual_seed(seed)
    if name in TOY_MIXTURES:
        dist = TOY_MIXTURES[name]()
        x, y = dist.sample(num_train, generator=gen)
        tx, ty = dist.sample(num_test, generator=gen)
        return ToyData(name, x, y, tx, ty, dist)
    if name == "moons":
        x, y = two_moons(num_train, generator=gen)
        tx, ty = two_moons(num_test, generator=gen)
        return ToyData(name, x, y, tx, ty, GaussianMixture.from_points(x, y, 2))
    raise ValueError(f"unknown toy dataset {name!r}; valid: {list(TOY_DATASETS)}")
