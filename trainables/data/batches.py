"""Batches, caller-drawn noise, the stratified labeled subset and half-labeled batch sampling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainables.sde import VESDE

UNLABELED = -1  # y of rows whose label is hidden


@dataclass
class Batch:
    """Rows x with labels y; y == UNLABELED marks a row whose label is hidden."""

    x: torch.Tensor
    y: torch.Tensor

    def rows(self, subset: str) -> torch.Tensor:
        """Indices of the labeled, unlabeled or all rows."""
        if subset == "all":
            return torch.arange(len(self.y), device=self.y.device)
        if subset == "labeled":
            return torch.nonzero(self.y >= 0).flatten()
        if subset == "unlabeled":
            return torch.nonzero(self.y < 0).flatten()
        raise ValueError(f"unknown row subset {subset!r}; valid: ['all', 'labeled', 'unlabeled']")

    def take(self, idx: torch.Tensor) -> Batch:
        """The rows at idx."""
        return Batch(self.x[idx], self.y[idx])


@dataclass
class Noise:
    """Randomness every loss needs, drawn once per batch by the caller."""

    sigma: torch.Tensor  # [B] noise level sigma(t)
    z: torch.Tensor  # like x, N(0, I)
    u: torch.Tensor  # [B] U(0, 1): CFG label dropout
    v: torch.Tensor  # like x, Rademacher: QC Hutchinson probe

    @classmethod
    def draw(cls, x: torch.Tensor, sde: VESDE, generator: torch.Generator | None = None) -> Noise:
        """Draw t ~ U(eps, 1) (as sigma), z, u and v for a batch x."""
        t = sde.sample_t(x.shape[0], generator=generator).to(x)
        z = torch.randn(x.shape, generator=generator).to(x)
        u = torch.rand(x.shape[0], generator=generator).to(x)
        v = (torch.randint(0, 2, x.shape, generator=generator) * 2 - 1).to(x)
        return cls(sde.sigma(t), z, u, v)

    def take(self, idx: torch.Tensor) -> Noise:
        """The rows at idx."""
        return Noise(self.sigma[idx], self.z[idx], self.u[idx], self.v[idx])


def check_label_percent(label_percent: float) -> float:
    """Label percentage must lie in (0, 100]."""
    if not 0.0 < float(label_percent) <= 100.0:
        raise ValueError(f"label percentage must be in (0, 100], got {label_percent}")
    return float(label_percent)


def labeled_subset(y: np.ndarray | torch.Tensor, label_percent: float, seed: int) -> np.ndarray:
    """Stratified, seeded labeled indices: round(n_k p / 100) per class (at least one), sorted."""
    check_label_percent(label_percent)
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    chosen = []
    for k in np.unique(y):
        members = np.flatnonzero(y == k)
        n = max(1, int(round(len(members) * label_percent / 100.0)))
        chosen.append(rng.permutation(members)[:n])
    return np.sort(np.concatenate(chosen))


def hide_labels(y: torch.Tensor, labeled_idx: np.ndarray) -> torch.Tensor:
    """Copy of y with every row outside labeled_idx set to UNLABELED."""
    out = torch.full_like(y, UNLABELED)
    idx = torch.as_tensor(labeled_idx, dtype=torch.long)
    out[idx] = y[idx]
    return out


class BatchSampler:
    """Index batches; "half" keeps half of every batch labeled (paper 001 Sec. 3.4).

    usage: "labeled" (labeled rows only), "all" (every row), or "half" (batch_size // 2 labeled
    rows,
    the rest unlabeled; all labeled when there are no unlabeled rows). The batch of step k depends
    only
    on (seed, k), so a resumed run draws exactly the batches an uninterrupted one would.
    """

    def __init__(
        self, labeled_idx: np.ndarray, num_rows: int, batch_size: int, usage: str, seed: int
    ):
        if usage not in ("labeled", "all", "half"):
            raise ValueError(f"unknown batch usage {usage!r}; valid: ['all', 'half', 'labeled']")
        labeled = np.asarray(labeled_idx, dtype=np.int64)
        unlabeled = np.setdiff1d(np.arange(num_rows), labeled)
        self.seed = seed
        if usage == "labeled" or (usage == "half" and len(unlabeled) == 0):
            self.pools = [(labeled, batch_size)]
        elif usage == "all":
            self.pools = [(np.arange(num_rows), batch_size)]
        else:
            self.pools = [(labeled, batch_size // 2), (unlabeled, batch_size - batch_size // 2)]

    def batch(self, step: int) -> np.ndarray:
        """Row indices of the batch at a step (without replacement when the pool is large
        enough)."""
        rng = np.random.default_rng([self.seed, step])
        return np.concatenate(
            [rng.choice(pool, size=n, replace=len(pool) < n) for pool, n in self.pools]
        )
