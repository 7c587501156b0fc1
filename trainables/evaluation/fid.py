"""FID, intra-FID and IS as the papers measure them (docs/methods.md section 5), through clean-fid.

Features come from a FeatureExtractor: clean-fid's Inception (the StyleGAN2 TorchScript network,
images resized to 299 with clean-fid's "clean" PIL-bicubic resizer, 2048-d pool features, 1008-way
softmax for IS) or, where Inception weights cannot be had (CPU tests, tiny images), the platform's
evaluation classifier (pooled encoder features and its softmax). Every run names its extractor.
The Frechet distance itself is clean-fid's `frechet_distance`; statistics are (mu, sigma) of the
features. Reference statistics (training set, overall and per class) are cached on disk by the
identity of the data and of the extractor, so a second study reuses them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/" + INCEPTION_FILE
)


class EvalError(ValueError):
    """Evaluation cannot run as asked (missing weights, reference data); the message names the
    fix."""


@dataclass
class FeatureExtractor:
    """images [N, 3, H, W] in [0, 1] -> features [N, dim] (numpy) and class probabilities (for
    IS)."""

    name: str  # logged with every metric computed from it
    features: Callable[[torch.Tensor], np.ndarray]
    probs: Callable[[torch.Tensor], np.ndarray] | None
    identity: str  # what the features depend on (weights hash / artifact key): the stats cache key


# ---- extractors
# ------------------------------------------------------------------------------------
def default_inception_path() -> Path:
    """Where clean-fid keeps its Inception weights: its feature_extractor loads them from /tmp."""
    return Path("." if os.name == "nt" else "/tmp") / INCEPTION_FILE


def check_inception(path: str | None) -> Path:
    """The weights file to use; EvalError before any sampling when it is missing."""
    file = Path(path).expanduser() if path else default_inception_path()
    if not file.is_file():
        raise EvalError(
            f"Inception weights not found at {file}; download {INCEPTION_FILE} (clean-fid's URL: "
            f"{INCEPTION_URL}) there or name a local copy in eval.inception_weights, "
            "or use eval.feature_extractor: eval_classifier"
        )
    check_trusted(file)
    return file


def check_trusted(file: Path) -> None:
    """Refuse a weights file another user could have written: TorchScript runs code when loaded,
    and clean-fid's default place is the shared temp folder. The file must belong to this user (or
    root) and be writable by no one else."""
    info = file.stat()
    if info.st_uid not in (os.getuid(), 0) or info.st_mode & 0o022:
        raise EvalError(
            f"{file} is owned by uid {info.st_uid} or writable by others (mode "
            f"{oct(info.st_mode & 0o777)}): not loading it; copy {INCEPTION_FILE} from a source "
            "you trust into a folder of yours and name it in eval.inception_weights"
        )


def batched(
    read: Callable[[torch.Tensor], np.ndarray], images: torch.Tensor, batch_size: int
) -> np.ndarray:
    """read() over consecutive batches of images, concatenated in order. A batch that runs out of
    device memory is halved, for the rest of the call, until one fits: the largest batch that
    fits, from batch_size down (eval.feature_batch_size)."""
    out: list[np.ndarray] = []
    start, size = 0, max(1, batch_size)
    while start < len(images):
        batch = images[start : start + size]
        try:
            out.append(read(batch))
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            size //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        start += len(batch)
    return np.concatenate(out)


def inception_extractor(
    path: str | None, device: torch.device | str = "cpu", batch_size: int = 100
) -> FeatureExtractor:
    """clean-fid's Inception: clean resize to 299 (PIL bicubic), (x - 128) / 128, 2048-d
    features."""
    from cleanfid.resize import make_resizer

    file = check_inception(path)
    base = torch.jit.load(str(file), map_location=device).eval()
    resize = make_resizer("PIL", False, "bicubic", (299, 299))

    def prepare(images: torch.Tensor) -> torch.Tensor:
        arrays = (
            (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        )
        return (
            torch.from_numpy(np.stack([resize(a) for a in arrays]))
            .permute(0, 3, 1, 2)
            .float()
            .to(device)
        )

    def read_features(images: torch.Tensor) -> np.ndarray:
        from cleanfid.fid import get_batch_features

        x = prepare(images)
        return get_batch_features(
            (x - 128) / 128, lambda t: base.layers.forward(t).view(len(t), 2048), device
        )

    def read_probs(images: torch.Tensor) -> np.ndarray:
        # The StyleGAN2 detector's IS mode: softmax without the output bias (as the original IS).
        with torch.no_grad():
            return base(prepare(images), no_output_bias=True).cpu().numpy()

    def features(images: torch.Tensor) -> np.ndarray:
        return batched(read_features, images, batch_size)

    def probs(images: torch.Tensor) -> np.ndarray:
        return batched(read_probs, images, batch_size)

    digest = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    return FeatureExtractor(
        "clean-fid inception-2015-12-05 (clean resize)", features, probs, f"inception-{digest}"
    )


def classifier_extractor(
    net: torch.nn.Module,
    sigma: float,
    key: str,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> FeatureExtractor:
    """The evaluation classifier's pooled encoder features and softmax at sigma (for CPU / tiny
    images)."""
    net = net.to(device).eval()

    def read(images: torch.Tensor, head: bool) -> np.ndarray:
        with torch.no_grad():
            x = images.to(device)
            s = torch.full((len(x),), sigma, device=device)
            h, _ = net.encode(x, net.embed(s))
            pooled = net.head[:4](h)  # GroupNorm, swish, pool, flatten
            return (torch.softmax(net.head[4](pooled), 1) if head else pooled).float().cpu().numpy()

    def run(images: torch.Tensor, head: bool) -> np.ndarray:
        return batched(lambda batch: read(batch, head), images, batch_size)

    return FeatureExtractor(
        f"eval classifier {key}", lambda x: run(x, False), lambda x: run(x, True), f"evalclf-{key}"
    )


# ---- statistics and metrics
# -----------------------------------------------------------------------
@dataclass
class Stats:
    mu: np.ndarray
    sigma: np.ndarray
    count: int
    # A class's reference features themselves (at most PRDC_REFERENCE_PER_CLASS rows): precision,
    # recall, density and coverage compare sample and reference features point by point.
    feats: np.ndarray | None = None

    @classmethod
    def of(cls, feats: np.ndarray) -> Stats:
        return cls(feats.mean(0), np.cov(feats, rowvar=False), len(feats))


def fid(a: Stats, b: Stats) -> float:
    """Frechet distance between two feature statistics (clean-fid's implementation)."""
    from cleanfid.fid import frechet_distance

    return float(frechet_distance(a.mu, a.sigma, b.mu, b.sigma))


def too_few(count: int, dim: int) -> bool:
    """Fewer samples than feature dimensions: the covariance is singular and the FID is biased
    high."""
    return count < dim


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))), mean and std over splits (Salimans et al.)."""
    scores = []
    for part in np.array_split(probs, min(splits, len(probs))):
        py = part.mean(0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(py + 1e-12))).sum(1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


PRDC_REFERENCE_PER_CLASS = 1000  # reference features kept per class (CIFAR-10 Inception: 80 MB)
PRDC_METRICS = ("precision", "recall", "density", "coverage")


def class_stats(feats: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Stats]:
    """Overall statistics and per-class statistics ("all", "0", "1", ...); each class keeps its
    first PRDC_REFERENCE_PER_CLASS features."""
    out = {"all": Stats.of(feats)}
    for k in range(num_classes):
        mine = feats[labels == k]
        out[str(k)] = replace(Stats.of(mine), feats=mine[:PRDC_REFERENCE_PER_CLASS].copy())
    return out


def prdc(real: np.ndarray, fake: np.ndarray, nearest_k: int) -> dict[str, float] | None:
    """Precision, recall, density and coverage of fake against real features (Naeem et al. 2020,
    the `prdc` package, k nearest neighbours); None when either set has k + 1 points or fewer
    (the k-th neighbour's radius needs k others besides the point, and prdc's partition one
    more).

    The package asks scikit-learn for its distances with n_jobs=8: on a trial of one or two CPUs
    that is eight threads and about 50 ms of start-up for every set of a few hundred points (five
    sets per 4-class evaluation, each round of the guidance race: 3 s of a 24 s validation). Under
    joblib's sequential backend the same distances are computed in the calling thread (same
    values)."""

    from joblib import parallel_config
    from prdc import compute_prdc

    if nearest_k < 1 or min(len(real), len(fake)) < nearest_k + 2:
        return None
    # it prints the set sizes
    with contextlib.redirect_stdout(io.StringIO()), parallel_config(backend="sequential"):
        values = compute_prdc(
            real_features=real.astype(np.float32),
            fake_features=fake.astype(np.float32),
            nearest_k=nearest_k,
        )
    return {name: float(values[name]) for name in PRDC_METRICS}


# ---- cached reference statistics
# ------------------------------------------------------------------
def reference_key(data_identity: dict, extractor: FeatureExtractor) -> str:
    """The name (<key>.npz) of a data set's reference statistics under one extractor."""
    named = {"data": data_identity, "extractor": extractor.identity}
    return hashlib.sha256(json.dumps(named, sort_keys=True).encode()).hexdigest()[:16]


def reference_stats(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    extractor: FeatureExtractor,
    data_identity: dict,
    folder: Path,
) -> tuple[dict[str, Stats], bool]:
    """Training-set statistics (overall and per class), computed once per (data, extractor); (stats,
    cached?)."""
    key = reference_key(data_identity, extractor)
    file = folder / f"{key}.npz"
    if file.exists():
        with np.load(file) as z:
            names = json.loads(str(z["names"]))
            if all(f"{n}_feats" in z for n in names if n != "all"):  # else: written before PRDC
                return {
                    n: Stats(
                        z[f"{n}_mu"],
                        z[f"{n}_sigma"],
                        int(z[f"{n}_count"]),
                        z[f"{n}_feats"] if f"{n}_feats" in z else None,
                    )
                    for n in names
                }, True
    stats = class_stats(extractor.features(images), labels.numpy(), num_classes)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"names": json.dumps(list(stats))}
    for n, s in stats.items():
        arrays.update({f"{n}_mu": s.mu, f"{n}_sigma": s.sigma, f"{n}_count": np.array(s.count)})
        if s.feats is not None:
            arrays[f"{n}_feats"] = s.feats
    # Trials that start together compute the same statistics: each writes its own temporary file
    # and renames it into place (same content; the last rename wins, none fails).
    tmp = folder / f"{key}.{os.getpid()}-{uuid.uuid4().hex}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, file)
    (folder / f"{key}.json").write_text(
        json.dumps(
            {"data": data_identity, "extractor": extractor.name, "identity": extractor.identity},
            indent=2,
        )
    )
    return stats, False


@dataclass
class Measured:
    """What the feature extractor and the evaluation classifier read from samples: features,
    class probabilities for IS (None without them) and predicted labels."""

    feats: np.ndarray
    probs: np.ndarray | None
    predicted: np.ndarray

    @classmethod
    def of(
        cls,
        samples: torch.Tensor,
        extractor: FeatureExtractor,
        classify: Callable[[torch.Tensor], np.ndarray],
    ) -> Measured:
        probs = extractor.probs(samples) if extractor.probs is not None else None
        return cls(extractor.features(samples), probs, classify(samples))

    @classmethod
    def concat(cls, parts: list[Measured]) -> Measured:
        """Parts of consecutive sample ranges, in order, as one."""
        probs = None if parts[0].probs is None else np.concatenate([p.probs for p in parts])
        return cls(
            np.concatenate([p.feats for p in parts]),
            probs,
            np.concatenate([p.predicted for p in parts]),
        )


def generation_metrics(
    samples: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    extractor: FeatureExtractor,
    reference: dict[str, Stats],
    classify: Callable[[torch.Tensor], np.ndarray],
    measured: Measured | None = None,
    nearest_k: int = 0,
) -> tuple[dict[str, float], list[str]]:
    """FID, IS, intra-FID (mean of per-class FIDs), generation accuracy, and with nearest_k
    precision / recall / density / coverage (overall, per class, and their class means as
    intra_*); per-class values; warnings. measured: the samples' features, probabilities and
    predictions when already read (by the ranks of a sharded evaluation); else read here."""
    measured = measured or Measured.of(samples, extractor, classify)
    feats = measured.feats
    y = labels.cpu().numpy()
    dim = feats.shape[1]
    metrics: dict[str, float] = {"fid_num_samples": float(len(feats)), "feature_dim": float(dim)}
    warnings: list[str] = []
    metrics["fid"] = fid(Stats.of(feats), reference["all"])
    if too_few(len(feats), dim):
        warnings.append(
            f"FID from {len(feats)} samples < feature dim {dim}: biased high; "
            "raise sample.num_per_class"
        )
    per_class = []
    for k in range(num_classes):
        mine = feats[y == k]
        value = fid(Stats.of(mine), reference[str(k)])
        metrics[f"intra_fid_class{k}"] = value
        per_class.append(value)
    metrics["intra_fid"] = float(np.mean(per_class))
    metrics["intra_fid_num_samples_per_class"] = float(len(feats) / num_classes)
    if too_few(len(feats) // num_classes, dim):
        warnings.append(
            f"intra-FID from {len(feats) // num_classes} samples per class < feature dim {dim}: "
            "biased high"
        )
    if measured.probs is not None:
        metrics["inception_score"], metrics["inception_score_std"] = inception_score(measured.probs)
    predicted = measured.predicted
    metrics["gen_accuracy"] = float((predicted == y).mean())
    for k in range(num_classes):
        metrics[f"gen_accuracy_class{k}"] = float((predicted[y == k] == k).mean())
    if nearest_k and reference["0"].feats is not None:
        metrics.update(_prdc_metrics(feats, y, num_classes, reference, nearest_k))
    metrics["fid_warning"] = float(bool(warnings))
    return metrics, warnings


def _prdc_metrics(
    feats: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    reference: dict[str, Stats],
    nearest_k: int,
) -> dict[str, float]:
    """PRDC overall (every class's reference features against every sample) and per class; a
    set of nearest_k points or fewer (e.g. the validation split's few samples per class) has no
    value (not a FID warning: FID does not depend on it)."""
    out: dict[str, float] = {}
    real = np.concatenate([reference[str(k)].feats for k in range(num_classes)])
    overall = prdc(real, feats, nearest_k)
    if overall is None:
        return out
    out.update(overall)
    per_class = [
        prdc(reference[str(k)].feats, feats[y == k], nearest_k) for k in range(num_classes)
    ]
    if any(values is None for values in per_class):
        return out
    for k, values in enumerate(per_class):
        out.update({f"{name}_class{k}": v for name, v in values.items()})
    for name in PRDC_METRICS:
        out[f"intra_{name}"] = float(np.mean([values[name] for values in per_class]))
    return out
