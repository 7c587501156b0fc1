"""The Gaussian-mixture twin of an image set: image-shaped data whose every score is exact.

Per class, a mixture of probabilistic PCA components (Tipping & Bishop 1999) is fitted to a source
image set (`shapes`, `tiny-images` or a class-per-folder set) on the images' own shape C x H x W:
each component is N(mu, U diag(lam) U^T + psi I) with U [D, r] orthonormal. Every class also puts a
share (`data.twin_shared`) of its mass on components common to all classes, fitted to the pooled
images: a sample drawn from them carries no information about its class, so the twin's Bayes
accuracy is about (1 - share) + share / K, the overlap knob.

Perturbed by N(0, sigma^2 I) a component stays one of the same form with psi + sigma^2, so the
noisy log-density, score, class-conditional score and posterior are closed form at every sigma:
S^-1 v = v / a - U diag(lam / (a (a + lam))) U^T v and log det S = (D - r) log a + sum log(a + lam),
a = psi + sigma^2 (the Woodbury identity and the matrix determinant lemma; O(D r) per component and
point, float64 inside). The methods take image-shaped [B, C, H, W] or flat [B, D] points and return
scores of the same shape, so the toy's exact metrics (trainables.evaluation.toy) apply unchanged.

The fit is an artifact stored by content (source, its classes and settings, components, rank, share,
seed and this module's code) under <eval.cache_dir>/twins, like the evaluation's other yardsticks.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

PSI_FLOOR = 1e-4  # smallest isotropic variance of a component (pixel std 0.01): keeps S invertible
KMEANS_ITERS = 30
FIT_VERSION = 1  # bump when the fit changes what it produces (the store's key carries it)
BLOCK_VALUES = 4_000_000  # doubles per block of the exact computations (points x K x C x D)


class LowRankMixture:
    """Class-conditional mixture of PPCA components with exact perturbed scores; float64 inside.

    means [K, C, D], basis [K, C, D, r] (orthonormal columns), lam [K, C, r] >= 0, psi [K, C] > 0,
    weights [K, C] (each class's sum 1), priors [K]; shape: the points' shape (default (D,)).
    """

    def __init__(
        self,
        means: torch.Tensor,
        basis: torch.Tensor,
        lam: torch.Tensor,
        psi: torch.Tensor,
        weights: torch.Tensor,
        priors: torch.Tensor | None = None,
        shape: tuple[int, ...] | None = None,
    ) -> None:
        f64 = torch.float64
        self.means, self.basis = means.to(f64), basis.to(f64)
        self.lam, self.psi, self.weights = lam.to(f64), psi.to(f64), weights.to(f64)
        k, c, d = self.means.shape
        self.rank = self.basis.shape[-1]
        self.priors = torch.full((k,), 1.0 / k, dtype=f64) if priors is None else priors.to(f64)
        if self.basis.shape != (k, c, d, self.rank) or self.lam.shape != (k, c, self.rank):
            raise ValueError(
                f"basis {tuple(self.basis.shape)} / lam {tuple(self.lam.shape)} do not match "
                f"means {(k, c, d)}"
            )
        if self.psi.shape != (k, c) or self.weights.shape != (k, c):
            raise ValueError(f"psi and weights must have shape {(k, c)}")
        if (self.psi <= 0).any() or (self.lam < 0).any():
            raise ValueError("psi must be positive and lam non-negative")
        if not torch.allclose(self.weights.sum(1), torch.ones(k, dtype=f64)):
            raise ValueError("weights must sum to 1 within each class")
        self.num_classes, self.num_components, self.dim = k, c, d
        self.shape = tuple(shape) if shape is not None else (d,)
        if math.prod(self.shape) != d:
            raise ValueError(f"shape {self.shape} does not hold {d} values")
        with torch.no_grad():
            self._log_w = torch.log(self.weights)  # -inf for an unused component

    # ---- exact computations ------------------------------------------------------------------
    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), self.dim).to(torch.float64)

    def _components(
        self, x: torch.Tensor, sigma: torch.Tensor, scores: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """log pi_y w_yc N(x; mu_yc, S_yc + sigma^2 I) [B, K, C] and component scores
        [B, K, C, D] (None unless scores) for flat float64 x [B, D]."""
        diff = x[:, None, None, :] - self.means[None]  # [B, K, C, D]
        proj = torch.einsum("bkcd,kcdr->bkcr", diff, self.basis)
        a = self.psi[None] + sigma.to(torch.float64).reshape(-1, 1, 1) ** 2  # [B, K, C]
        coef = self.lam[None] / (a[..., None] * (a[..., None] + self.lam[None]))  # [B, K, C, r]
        quad = diff.pow(2).sum(-1) / a - (proj.pow(2) * coef).sum(-1)
        logdet = (self.dim - self.rank) * torch.log(a) + torch.log(
            a[..., None] + self.lam[None]
        ).sum(-1)
        log_normal = -0.5 * (quad + logdet + self.dim * math.log(2 * math.pi))
        log_r = torch.log(self.priors)[None, :, None] + self._log_w[None] + log_normal
        if not scores:
            return log_r, None
        solved = diff / a[..., None] - torch.einsum("bkcr,kcdr->bkcd", proj * coef, self.basis)
        return log_r, -solved

    def _blocks(self, x: torch.Tensor, sigma: torch.Tensor, fn) -> torch.Tensor:
        """fn(flat x block, sigma block, rows) over blocks of points (about BLOCK_VALUES doubles
        of differences each: 32 MB, whatever the classes, components and dimension)."""
        flat = self._flat(x)
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(len(flat))
        rows = torch.arange(len(flat))
        size = max(1, BLOCK_VALUES // (self.num_classes * self.num_components * self.dim))
        return torch.cat(
            [fn(flat[i : i + size], sigma[i : i + size], rows[i : i + size])
             for i in range(0, len(flat), size)]
        ) if len(flat) else torch.empty(0, dtype=torch.float64)  # fmt: skip

    def log_joint(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log p_sigma(x, y) for every class [B, K]."""
        return self._blocks(
            x, sigma, lambda f, s, _: torch.logsumexp(self._components(f, s, False)[0], dim=2)
        ).reshape(len(x), self.num_classes)

    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log p_sigma(x) [B]."""
        return torch.logsumexp(self.log_joint(x, sigma), dim=1)

    def cond_log_prob(self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p_sigma(x | y) [B]."""
        joint = self.log_joint(x, sigma)
        return joint[torch.arange(len(x)), y] - torch.log(self.priors)[y]

    def posterior(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Exact Bayes posterior p_sigma(y | x) [B, K]."""
        return torch.softmax(self.log_joint(x, sigma), dim=1)

    def score(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """grad_x log p_sigma(x), shaped like x."""

        def block(f, s, _):
            log_r, comp = self._components(f, s)
            resp = torch.softmax(log_r.flatten(1), dim=1).reshape(log_r.shape)
            return (resp[..., None] * comp).sum((1, 2))

        return self._blocks(x, sigma, block).reshape(x.shape)

    def cond_score(self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """grad_x log p_sigma(x | y), shaped like x."""

        def block(f, s, rows):
            log_r, comp = self._components(f, s)
            idx = torch.arange(len(f))
            resp = torch.softmax(log_r[idx, y[rows]], dim=1)
            return (resp[..., None] * comp[idx, y[rows]]).sum(1)

        return self._blocks(x, sigma, block).reshape(x.shape)

    def posterior_score(
        self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """grad_x log p_sigma(y | x) = grad log p_sigma(x | y) - grad log p_sigma(x)."""
        return self.cond_score(x, sigma, y) - self.score(x, sigma)

    def class_total_variance(self) -> torch.Tensor:
        """trace Cov(x | y) of every class [K] (the collapse check's reference)."""
        within = self.lam.sum(-1) + self.dim * self.psi  # [K, C]
        mean = (self.weights[..., None] * self.means).sum(1, keepdim=True)  # [K, 1, D]
        spread = (self.means - mean).pow(2).sum(-1)
        return (self.weights * (within + spread)).sum(1)

    # ---- sampling ------------------------------------------------------------------------------
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """n clean points (x float32 in the mixture's shape, y long [n]); y may be given."""
        if y is None:
            y = torch.multinomial(self.priors, n, replacement=True, generator=generator)
        c = torch.multinomial(self.weights[y], 1, generator=generator).squeeze(1)
        low = torch.randn(n, self.rank, generator=generator, dtype=torch.float64)
        iso = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = (
            self.means[y, c]
            + torch.einsum("ndr,nr->nd", self.basis[y, c], low * self.lam[y, c].sqrt())
            + iso * self.psi[y, c].sqrt()[:, None]
        )
        return x.float().reshape(n, *self.shape), y

    def sample_perturbed(
        self, n: int, sigma: float, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """n points of p_sigma(x, y)."""
        x, y = self.sample(n, generator=generator)
        return x + sigma * torch.randn(x.shape, generator=generator), y

    def bayes_accuracy(
        self, n: int, sigma: float = 0.0, *, generator: torch.Generator | None = None
    ) -> float:
        """Accuracy of the exact posterior on n of the twin's own samples at noise sigma: the
        ceiling of any classifier (and of generation accuracy at sigma 0)."""
        x, y = self.sample_perturbed(n, sigma, generator=generator)
        post = self.posterior(x, torch.full((n,), float(sigma)))
        return (post.argmax(1) == y).double().mean().item()

    # ---- storage -------------------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        return {
            "means": self.means, "basis": self.basis, "lam": self.lam, "psi": self.psi,
            "weights": self.weights, "priors": self.priors,
            "shape": torch.tensor(self.shape, dtype=torch.long),
        }  # fmt: skip

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> LowRankMixture:
        shape = tuple(int(v) for v in state["shape"])
        return cls(
            state["means"], state["basis"], state["lam"], state["psi"], state["weights"],
            state["priors"], shape,
        )  # fmt: skip

    @classmethod
    def from_gaussian(cls, means, covs, weights=None, priors=None, shape=None) -> LowRankMixture:
        """A full-covariance mixture (e.g. a 2-D toy's) in this form, exactly: each covariance's
        smallest eigenvalue is psi, the others minus it are lam on their eigenvectors (rank D-1)."""
        means = torch.as_tensor(means, dtype=torch.float64)
        k, c, d = means.shape
        covs = torch.as_tensor(covs, dtype=torch.float64).expand(k, c, d, d)
        evals, evecs = torch.linalg.eigh(covs)  # ascending
        psi = evals[..., 0].clamp_min(PSI_FLOOR)
        lam = (evals[..., 1:] - psi[..., None]).clamp_min(0)
        weights = torch.full((k, c), 1.0 / c, dtype=torch.float64) if weights is None else weights
        weights = torch.as_tensor(weights, dtype=torch.float64)
        priors = None if priors is None else torch.as_tensor(priors, dtype=torch.float64)
        return cls(means, evecs[..., 1:], lam, psi, weights, priors, shape)


# ---- fitting -------------------------------------------------------------------------------------
def kmeans(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Cluster labels [N] of x [N, D] into k clusters (k-means++ seeding, Lloyd iterations; an
    emptied cluster is re-seeded at the point farthest from its centre)."""
    n = len(x)
    k = min(k, n)
    centres = x[torch.randint(n, (1,), generator=generator)]
    for _ in range(1, k):
        d2 = torch.cdist(x, centres).pow(2).min(1).values
        p = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / n)
        centres = torch.cat([centres, x[torch.multinomial(p, 1, generator=generator)]])
    labels = torch.cdist(x, centres).argmin(1)
    for _ in range(KMEANS_ITERS):
        for j in range(k):
            members = x[labels == j]
            if len(members):
                centres[j] = members.mean(0)
            else:
                far = torch.cdist(x, centres).min(1).values.argmax()
                centres[j] = x[far]
        new = torch.cdist(x, centres).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def ppca(x: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Maximum-likelihood PPCA of rows x [n, D]: (mean [D], basis [D, r], lam [r], psi)."""
    n, d = x.shape
    mean = x.mean(0)
    centred = x - mean
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    evals = s.pow(2) / n  # the sample covariance's non-zero eigenvalues (at most min(n, D))
    top = evals[:rank]
    total = centred.pow(2).sum() / n
    psi = max(float((total - top.sum()) / (d - rank)), PSI_FLOOR)
    basis = torch.zeros(d, rank, dtype=x.dtype)
    lam = torch.zeros(rank, dtype=x.dtype)
    basis[:, : len(top)] = vh[: len(top)].t()
    lam[: len(top)] = (top - psi).clamp_min(0)
    if len(top) < rank:  # fewer points than directions: complete the basis (lam 0 there)
        q, _ = torch.linalg.qr(
            torch.cat([basis[:, : len(top)], torch.eye(d, rank, dtype=x.dtype)], 1)
        )
        basis[:, len(top) :] = q[:, len(top) : rank]
    return mean, basis, lam, psi


def _fit_group(
    x: torch.Tensor, components: int, rank: int, generator: torch.Generator
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]]:
    """(mean, basis, lam, psi, weight) of each PPCA component of one group of rows."""
    labels = kmeans(x, components, generator)
    out = []
    for j in range(int(labels.max()) + 1):
        members = x[labels == j]
        if len(members) == 0:
            continue
        mean, basis, lam, psi = ppca(members, rank)
        out.append((mean, basis, lam, psi, len(members) / len(x)))
    return out


def fit_twin(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    components: int,
    rank: int,
    shared: float,
    seed: int = 0,
) -> LowRankMixture:
    """Fit the twin to images x [N, ...] with labels y: per class `components` PPCA components of
    rank `rank` on its own images, and (when shared > 0) `components` common components fitted to
    all images, on which every class puts `shared` of its mass."""
    shape = tuple(x.shape[1:])
    flat = x.reshape(len(x), -1).to(torch.float64)
    d = flat.shape[1]
    if not 0 <= rank < d:
        raise ValueError(f"data.twin_rank must be in [0, {d - 1}] for {d}-dimensional images")
    gen = torch.Generator().manual_seed(seed)
    groups = [_fit_group(flat[y == k], components, rank, gen) for k in range(num_classes)]
    common = _fit_group(flat, components, rank, gen) if shared > 0 else []
    slots = components + len(common)
    means = torch.zeros(num_classes, slots, d, dtype=torch.float64)
    basis = torch.zeros(num_classes, slots, d, rank, dtype=torch.float64)
    basis[..., :, :] = torch.eye(d, rank, dtype=torch.float64)  # unused slots: any orthonormal
    lam = torch.zeros(num_classes, slots, rank, dtype=torch.float64)
    psi = torch.ones(num_classes, slots, dtype=torch.float64)
    weights = torch.zeros(num_classes, slots, dtype=torch.float64)
    for k, own in enumerate(groups):
        parts = [(c, (1 - shared) * c[4]) for c in own] + [(c, shared * c[4]) for c in common]
        slot_of = list(range(len(own))) + list(range(components, components + len(common)))
        for slot, ((mean, b, lm, ps, _), weight) in zip(slot_of, parts):
            means[k, slot], basis[k, slot], lam[k, slot] = mean, b, lm
            psi[k, slot], weights[k, slot] = ps, weight
    return LowRankMixture(means, basis, lam, psi, weights, shape=shape)


@dataclass(frozen=True)
class TwinSpec:
    """What determines a fit (its key in the store)."""

    source: dict  # the source set's name and settings (images drawn, size, classes, root, ...)
    components: int
    rank: int
    shared: float
    seed: int

    def key(self) -> str:
        code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
        blob = json.dumps({**self.__dict__, "fit_version": FIT_VERSION, "code": code},
                          sort_keys=True)  # fmt: skip
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_or_fit(spec: TwinSpec, folder, fit, log=lambda _: None) -> tuple[LowRankMixture, bool]:
    """The stored fit of spec under folder (a trainables.storage.Place), else fit() stored there
    (atomically; concurrent fitters write the same content); (mixture, reused?)."""
    file = folder.local / f"{spec.key()}.pt"
    if file.exists() or folder.pull(file):
        return LowRankMixture.from_state(torch.load(file, weights_only=True)), True
    log(f"fitting the twin ({spec.components} components of rank {spec.rank}) into {file}")
    mixture = fit()
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}-{uuid.uuid4().hex}.part")
    torch.save(mixture.state(), tmp)
    os.replace(tmp, file)
    file.with_suffix(".json").write_text(json.dumps(spec.__dict__, indent=2, sort_keys=True))
    folder.push(file)
    folder.push(file.with_suffix(".json"))
    return mixture, False
