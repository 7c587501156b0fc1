"""Generation metrics of image samples (docs/methods.md, evaluation): the evaluation classifier, the
feature extractor, cached reference statistics, and FID / IS / intra-FID / generation accuracy.

The evaluation classifier is never a guidance classifier: its own artifact ("eval_classifier", CE on
the full labeled training set, noise range [sigma_min, eval.classifier_sigma_max]), cached across
studies under eval.cache_dir, or loaded from eval.classifier_checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainables.cache import ArtifactCache
from trainables.config import TrialConfig
from trainables.data.images import ImageData
from trainables.evaluation.fid import (
    EvalError,
    FeatureExtractor,
    Measured,
    Stats,
    batched,
    check_inception,
    classifier_extractor,
    generation_metrics,
    inception_extractor,
    reference_key,
    reference_stats,
)
from trainables.fit import Distributed, TrainingSet, build, data_dim, train_artifact
from trainables.identity import (
    adopt,
    artifact_identity,
    artifact_key,
    cache_root,
    eval_classifier_config,
    publish,
)
from trainables.methods import EVAL_CLASSIFIER


def preflight(config: TrialConfig) -> None:
    """Raise EvalError before any training or sampling if the evaluation cannot run."""
    if not config.eval.fid:
        return
    if config.eval.feature_extractor == "inception":
        check_inception(config.eval.inception_weights or None)
    if (
        config.eval.classifier_checkpoint
        and not Path(config.eval.classifier_checkpoint).expanduser().is_file()
    ):
        raise EvalError(
            f"eval.classifier_checkpoint {config.eval.classifier_checkpoint!r} does not exist; "
            "fix the path or leave it empty to train one"
        )


@dataclass
class Evaluator:
    """What every image trial of a study measures its samples with."""

    classifier: torch.nn.Module
    classifier_key: str
    classifier_test_accuracy: float
    extractor: FeatureExtractor
    reference: dict[str, Stats]
    reference_cached: bool
    sigma: float
    samples_read: int = 0  # samples whose features, probabilities and labels this process read
    nearest_k: int = 5  # eval.prdc_k: neighbours of precision / recall / density / coverage

    def classify(self, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """The evaluation classifier's labels at sigma_min, in batches (fid.batched)."""
        device = next(self.classifier.parameters()).device

        def read(batch: torch.Tensor) -> np.ndarray:
            x = batch.to(device)
            with torch.no_grad():
                logits = self.classifier(x, torch.full((len(x),), self.sigma, device=device))
            return logits.argmax(1).cpu().numpy()

        return batched(read, images, batch_size)


def _eval_classifier(
    config: TrialConfig, data: ImageData, device: torch.device | str, log: Callable[[str], None]
) -> tuple[nn.Module, str]:
    """(network, key): loaded from eval.classifier_checkpoint, else from the study's evaluation
    cache (copied from the shared store when that has it), trained there once (CE on every label
    of the training set) and published to the shared store."""
    clf_config = eval_classifier_config(config)
    dim = data_dim(data.x)
    if config.eval.classifier_checkpoint:
        path = Path(config.eval.classifier_checkpoint).expanduser()
        net = build(EVAL_CLASSIFIER, clf_config, dim, data.num_classes)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return net.eval().requires_grad_(False), f"file-{path.name}"
    split = TrainingSet.split(data.x, data.y, data.num_classes, 100.0, config.data.split_seed)
    cache = ArtifactCache(cache_root(config) / "eval-classifiers")

    def train(folder: Path) -> nn.Module:
        log(f"training the evaluation classifier ({clf_config.train.steps} steps) into {folder}")
        return train_artifact(
            EVAL_CLASSIFIER,
            clf_config,
            split,
            checkpoint_dir=folder,
            device=device,
            saved=cache.checkpoint_saved,
        )

    # The study's own copy (its yardstick travels with its folder), seeded from the shared store.
    key = artifact_key(artifact_identity(EVAL_CLASSIFIER, clf_config))
    folder = cache.root / f"{EVAL_CLASSIFIER.name}-{key}"
    files = [folder / name for name in ("identity.json", "model.pt.sha256", "model.pt")]
    for file in files:  # model.pt last: its presence means a finished network
        adopt(file, config)
    net, key, _ = cache.get_or_train(
        EVAL_CLASSIFIER, clf_config, train, dim=dim, num_classes=data.num_classes
    )
    for file in files:
        publish(file, config)
    return net, key


def build_evaluator(
    config: TrialConfig,
    data: ImageData,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
) -> Evaluator:
    """Train or load the evaluation classifier, build the extractor, load or compute reference
    statistics."""
    preflight(config)
    net, key = _eval_classifier(config, data, device, log)
    net = net.to(device)
    sigma = config.sde.sigma_min
    batch = config.eval.feature_batch_size or (1024 if torch.device(device).type == "cuda" else 256)
    if config.eval.feature_extractor == "inception":
        extractor = inception_extractor(config.eval.inception_weights or None, device, batch)
    else:
        extractor = classifier_extractor(net, sigma, key, device, batch)
    n = config.eval.num_reference or len(data.x)
    identity = {
        k: getattr(config.data, k) for k in ("name", "root", "num_train", "seed", "image_size")
    } | {"num_reference": n}
    if config.data.name == "shapes":  # what draws its images (older statistics keep their keys)
        identity |= {"difficulty": config.data.difficulty, "num_classes": config.data.num_classes}
    if config.data.name == "twin":  # the fitted mixture its images are drawn from
        identity |= {
            k: getattr(config.data, k)
            for k in ("difficulty", "num_classes", "twin_source", "twin_source_images",
                      "twin_components", "twin_rank", "twin_shared")
        }  # fmt: skip
    place = cache_root(config) / "fid-stats"
    place.pull()  # an object store's statistics into this node's mirror (a folder: nothing)
    file = place.local / f"{reference_key(identity, extractor)}.npz"
    adopt(file, config)
    reference, cached = reference_stats(
        data.x[:n], data.y[:n], data.num_classes, extractor, identity, place.local
    )
    if not cached:
        place.push()
        publish(file, config)
    evaluator = Evaluator(net, key, float("nan"), extractor, reference, cached, sigma)
    evaluator.nearest_k = config.eval.prdc_k
    predicted = evaluator.classify(data.test_x)
    evaluator.classifier_test_accuracy = float((predicted == data.test_y.numpy()).mean())
    return evaluator


def evaluate_generation(
    samples: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    evaluator: Evaluator,
    distributed: Distributed | None = None,
) -> tuple[dict[str, float], list[str]]:
    """FID, IS, intra-FID, generation accuracy (overall and per class) of class-conditional
    samples. distributed: every rank of the trial holds all the samples and reads features,
    probabilities and predictions of its own consecutive share; rank 0 gathers them and measures
    (the other ranks get no metrics)."""
    dist = distributed or Distributed()
    if dist.world_size > 1:
        mine = shard_range(len(samples), dist)
        read = None  # a rank with no share (fewer samples than ranks) reads nothing
        if mine.stop > mine.start:
            read = Measured.of(samples[mine], evaluator.extractor, evaluator.classify)
            evaluator.samples_read += len(read.feats)
        parts = [p for p in dist.gather(read) if p is not None]
        if dist.rank != 0:
            return {}, []
        measured = Measured.concat(parts)
    else:
        measured = Measured.of(samples, evaluator.extractor, evaluator.classify)
        evaluator.samples_read += len(samples)
    metrics, warnings = generation_metrics(
        samples,
        labels,
        num_classes,
        evaluator.extractor,
        evaluator.reference,
        evaluator.classify,
        measured,
        nearest_k=evaluator.nearest_k,
    )
    metrics["eval_classifier_test_accuracy"] = evaluator.classifier_test_accuracy
    metrics["reference_stats_reused"] = float(evaluator.reference_cached)
    return metrics, warnings


def shard_range(n: int, dist: Distributed) -> slice:
    """This rank's consecutive share of n items (the shares of ranks 0, 1, ... in order)."""
    bounds = np.linspace(0, n, dist.world_size + 1).astype(int)
    return slice(int(bounds[dist.rank]), int(bounds[dist.rank + 1]))
