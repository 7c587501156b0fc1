"""Batches, caller-drawn noise, the stratified labeled subset and half-labeled batch sampling."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from trainables.sde import VESDE

UNLABELED = -1  # y of rows whose label is hidden


SUBSETS = ("all", "labeled", "uniform", "unlabeled")


def row_indices(y: torch.Tensor, uniform: torch.Tensor | None, subset: str) -> torch.Tensor:
    """Indices of the labeled, unlabeled, all, or uniformly drawn rows (all rows unless uniform
    marks some)."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown row subset {subset!r}; valid: {sorted(SUBSETS)}")
    if subset == "uniform" and uniform is not None:
        return torch.nonzero(uniform).flatten()
    if subset in ("all", "uniform"):
        return torch.arange(len(y), device=y.device)
    return torch.nonzero(y >= 0 if subset == "labeled" else y < 0).flatten()


@dataclass
class Batch:
    """Rows x with labels y; y == UNLABELED marks a row whose label is hidden."""

    x: torch.Tensor
    y: torch.Tensor
    uniform: torch.Tensor | None = None  # bool [B]: rows drawn uniformly from all data ("mixed")
    # Every subset's row indices, found where the batch was drawn (the host): found from y on a
    # GPU, torch.nonzero would wait for the GPU in every training step.
    subsets: dict[str, torch.Tensor] | None = None

    def rows(self, subset: str) -> torch.Tensor:
        """Indices of the rows of a subset (row_indices)."""
        if self.subsets is not None and subset in self.subsets:
            return self.subsets[subset]
        return row_indices(self.y, self.uniform, subset)

    def indexed(self) -> Batch:
        """This batch with every subset's row indices found now."""
        return replace(self, subsets={s: row_indices(self.y, self.uniform, s) for s in SUBSETS})

    def take(self, idx: torch.Tensor) -> Batch:
        """The rows at idx."""
        return Batch(self.x[idx], self.y[idx], None if self.uniform is None else self.uniform[idx])


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


USAGES = ("labeled", "all", "half", "mixed")


class BatchSampler:
    """Index batches; "half" keeps half of every batch labeled (paper 001 Sec. 3.4).

    usage: "labeled" (labeled rows only), "all" (every row), "half" (batch_size // 2 labeled
    rows, the rest unlabeled; all labeled when there are no unlabeled rows), or "mixed"
    (batch_size // 2 labeled rows, the rest drawn uniformly from every row and marked by
    uniform_mask, for score-side terms; all rows uniform when every row is labeled). The batch of
    step k depends only on (seed, k), so a resumed run draws exactly the batches an uninterrupted
    one would.
    """

    def __init__(
        self, labeled_idx: np.ndarray, num_rows: int, batch_size: int, usage: str, seed: int
    ):
        if usage not in USAGES:
            raise ValueError(f"unknown batch usage {usage!r}; valid: {sorted(USAGES)}")
        labeled = np.asarray(labeled_idx, dtype=np.int64)
        unlabeled = np.setdiff1d(np.arange(num_rows), labeled)
        everything = np.arange(num_rows)
        self.seed = seed
        self.uniform_from: int | None = None  # "mixed": batch rows from here on are uniform
        if usage == "labeled" or (usage == "half" and len(unlabeled) == 0):
            self.pools = [(labeled, batch_size)]
        elif usage == "all" or (usage == "mixed" and len(unlabeled) == 0):
            self.pools = [(everything, batch_size)]
            self.uniform_from = 0 if usage == "mixed" else None
        elif usage == "mixed":
            self.pools = [(labeled, batch_size // 2), (everything, batch_size - batch_size // 2)]
            self.uniform_from = batch_size // 2
        else:
            self.pools = [(labeled, batch_size // 2), (unlabeled, batch_size - batch_size // 2)]

    def uniform_mask(self, size: int) -> torch.Tensor | None:
        """bool [size]: the rows of a batch drawn uniformly from all data ("mixed"), else None."""
        if self.uniform_from is None:
            return None
        return torch.arange(size) >= self.uniform_from

    def batch(self, step: int) -> np.ndarray:
        """Row indices of the batch at a step (without replacement when the pool is large
        enough)."""
        rng = np.random.default_rng([self.seed, step])
        return np.concatenate(
            [rng.choice(pool, size=n, replace=len(pool) < n) for pool, n in self.pools]
        )
