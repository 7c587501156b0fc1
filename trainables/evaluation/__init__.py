"""Everything a trial measures, in one package.

- toy.py: metrics against the exact scores of the toy mixtures (paper 001 App. C) and samples.
- images.py: held-out image metrics (guided DSM, classifier accuracy per noise level) and samples.
- generation.py + fid.py: FID, IS, intra-FID and generation accuracy of image samples, with the
  evaluation classifier (an artifact like any other) and cached reference statistics.
- twin.py: exact metrics per noise band on the image twin (data.name twin), beside the proxies.
- sampling.py: class-conditional sampling with a method's guided score; calibration.py: accuracy,
ECE.

`TrialEvaluator` is what the Ray worker calls: one object per trial, the image evaluator built once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from trainables.config import TrialConfig
from trainables.data.images import ImageData
from trainables.data.toy import ToyData
from trainables.evaluation.generation import (
    Evaluator,
    build_evaluator,
    evaluate_generation,
)
from trainables.evaluation.images import evaluate_images
from trainables.evaluation.toy import evaluate_toy
from trainables.evaluation.twin import evaluate_twin
from trainables.fit import Distributed
from trainables.names import SAMPLER_SCORE_EVALS

VAL_SEED_OFFSET = 7919  # validation draws (samples, evaluation points) use their own seeds
Objectives = Sequence[tuple[str, str]]  # (metric, "min" | "max"), the first one selects


@dataclass
class Sweep:
    """A guidance sweep on the validation split: the chosen scale, the validation metrics at it,
    and the curve (scale -> the scale-dependent validation metrics)."""

    scale: float
    metrics: dict[str, float]
    curve: dict[float, dict[str, float]] = field(default_factory=dict)


def choose_scale(curve: dict[float, dict[str, float]], metric: str, mode: str) -> float | None:
    """The scale whose finite validation value of metric is best (the first such in grid order);
    None when no scale has a finite value or the metric does not depend on the scale."""
    finite = [(s, m[metric]) for s, m in curve.items() if math.isfinite(m.get(metric, math.nan))]
    if not finite:
        return None
    best = min if mode == "min" else max
    return best(finite, key=lambda item: item[1])[0]


MAX_HALVINGS = 3  # how far below the grid's smallest positive scale the sweep may go


def next_scale(
    curve: dict[float, Any], chosen: float | None, cap: float, grid: tuple[float, ...]
) -> float | None:
    """The scale to measure next when the chosen one is at an edge of the measured scales: above
    the largest, the grid's last ratio (at least 2) times it, bounded by cap; below the smallest
    (above 0), half of it, at most MAX_HALVINGS times below the grid's lowest scale. None when
    the optimum is inside the curve, at the cap, or the cap is 0 or the grid's largest scale (the
    grid only)."""
    scales = sorted(curve)
    if chosen is None or cap <= max(grid) or len(scales) < 2 or chosen <= 0:
        return None
    if chosen == scales[-1]:
        ratio = scales[-1] / scales[-2] if scales[-2] > 0 else 2.0
        return min(cap, chosen * max(2.0, ratio)) if chosen < cap else None
    if chosen == scales[0] and chosen > min(grid) / 2**MAX_HALVINGS:
        return chosen / 2
    return None


def _leads(distributed: Distributed | None) -> bool:
    """Whether this process measures (rank 0, or no data-parallel group)."""
    return distributed is None or distributed.rank == 0


class TrialEvaluator:
    """Measures a trial's networks: toy metrics, or image metrics plus FID / IS / accuracy.

    validate() sweeps the guidance grid on the validation split (other seeds, fewer samples; for
    images the held-out rows after the test rows, for the toy fresh draws of the exact mixture)
    and chooses the scale; calling the evaluator measures the test split at one scale.
    """

    def __init__(
        self, config: TrialConfig, data: ToyData | ImageData, device: torch.device | str = "cpu"
    ) -> None:
        self.config, self.data, self.device = config, data, device
        self.images = data.x.dim() == 4
        self.exact = self.images and getattr(data, "dist", None) is not None  # the image twin
        self.tags: dict[str, str] = {}  # feature extractor, evaluation classifier, warnings
        self._evaluator: Evaluator | None = None  # built on first use (it may train a classifier)
        self._val_rows: tuple[torch.Tensor, torch.Tensor] | None = None
        self.val_sampling_score_evals = 0.0

    def __call__(
        self,
        networks: dict[str, nn.Module],
        scale: float | None = None,
        distributed: Distributed | None = None,
    ) -> tuple[dict[str, float], torch.Tensor | None]:
        """(test metrics, image samples or None) for networks keyed by kind, at scale (default
        sample.guidance_scale). distributed: every rank of a data-parallel trial calls this and
        draws a share of the image samples; rank 0 measures them (the others get no metrics)."""
        config = self._at(self.config, scale)
        if not self.images:
            return evaluate_toy(config, networks, self.data), None
        metrics, samples = evaluate_images(
            config, networks, self.data, device=self.device, distributed=distributed
        )
        if config.eval.fid:
            metrics.update(
                self._generation(samples, config.sample.num_per_class, distributed, tag=True)
            )
        if self.exact and _leads(distributed):
            metrics.update(evaluate_twin(config, networks, self.data, samples, device=self.device))
        return metrics, samples

    def validate(
        self,
        networks: dict[str, nn.Module],
        scales: Sequence[float],
        objectives: Objectives,
        distributed: Distributed | None = None,
    ) -> Sweep:
        """Score every scale on the validation split; choose by the first objective.
        distributed: as in __call__; every rank gets rank 0's chosen scale."""
        config = self.validation_config()
        fixed = {}
        if _leads(distributed) or not self.images:
            fixed = self._evaluate(config, networks, fixed=True, scaled=False)
        curve = {}

        def measure(scale: float) -> None:
            curve[scale] = self._evaluate(
                self._at(config, scale), networks, fixed=False, distributed=distributed
            )
            self.val_sampling_score_evals += self.sampling_score_evals(config)

        for scale in dict.fromkeys(float(s) for s in scales):
            measure(scale)
        metric, mode = objectives[0] if objectives else ("", "max")
        chosen = choose_scale(curve, metric, mode)
        while True:  # an optimum at an edge: go on past it until the curve turns (or the cap)
            beyond = next_scale(curve, chosen, self.config.sample.guidance_cap, tuple(scales))
            if distributed is not None:  # rank 0 measured the curve: every rank follows it
                beyond = distributed.broadcast(beyond)
            if beyond is None:
                break
            measure(beyond)
            chosen = choose_scale(curve, metric, mode)
        if chosen is None:  # nothing to choose on: the plain conditional if swept, else the first
            chosen = 1.0 if 1.0 in curve else next(iter(curve))
        if distributed is not None:
            chosen = distributed.broadcast(chosen)
        return Sweep(chosen, {**fixed, **curve[chosen]}, curve)

    def validation_config(self) -> TrialConfig:
        """The config of validation evaluations: other seeds, eval.val_num_per_class samples."""
        config = self.config
        per_class = config.eval.val_num_per_class or max(8, config.sample.num_per_class // 4)
        return replace(
            config,
            sample=replace(
                config.sample, seed=config.sample.seed + VAL_SEED_OFFSET, num_per_class=per_class
            ),
            eval=replace(config.eval, seed=config.eval.seed + VAL_SEED_OFFSET),
        )

    @staticmethod
    def _at(config: TrialConfig, scale: float | None) -> TrialConfig:
        if scale is None:
            return config
        return replace(config, sample=replace(config.sample, guidance_scale=float(scale)))

    def _evaluate(
        self,
        config: TrialConfig,
        networks: dict[str, nn.Module],
        *,
        fixed: bool,
        scaled: bool = True,
        distributed: Distributed | None = None,
    ) -> dict[str, float]:
        """Validation metrics (the fixed or the scale-dependent part) under config."""
        if not self.images:
            return evaluate_toy(
                config, networks, self.data, held_out=self._toy_val_rows(), fixed=fixed,
                scaled=scaled,
            )  # fmt: skip
        metrics, samples = evaluate_images(
            config, networks, self.data, device=self.device, split="val", fixed=fixed,
            scaled=scaled, distributed=distributed,
        )  # fmt: skip
        if samples is not None and config.eval.fid:
            metrics.update(self._generation(samples, config.sample.num_per_class, distributed))
        if self.exact and _leads(distributed):
            metrics.update(
                evaluate_twin(config, networks, self.data, samples, fixed=fixed, scaled=scaled,
                              device=self.device)
            )  # fmt: skip
        return metrics

    def prepare(self) -> None:
        """Build the image evaluator now (train or load its classifier, compute or load the
        reference statistics): a stage trial does this once for the trials that follow."""
        if self.images and self.config.eval.fid and self._evaluator is None:
            self._evaluator = build_evaluator(self.config, self.data, self.device)
            self.tags["eval_classifier"] = self._evaluator.classifier_key

    def _toy_val_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The toy's validation rows: fresh draws of the exact mixture, as many as the test set."""
        if self._val_rows is None:
            gen = torch.Generator().manual_seed(self.config.data.seed + VAL_SEED_OFFSET)
            self._val_rows = self.data.dist.sample(len(self.data.test_x), generator=gen)
        return self._val_rows

    def _generation(
        self,
        samples: torch.Tensor,
        num_per_class: int,
        distributed: Distributed | None = None,
        tag: bool = False,
    ) -> dict[str, float]:
        """FID, IS, intra-FID and generation accuracy of the class-ordered samples. distributed:
        every rank calls this and reads its share of the samples; rank 0 measures (the others
        get no metrics)."""
        self._ensure_evaluator(distributed)
        num_classes = self.data.num_classes
        labels = torch.arange(num_classes).repeat_interleave(num_per_class)
        metrics, warnings = evaluate_generation(
            samples, labels, num_classes, self._evaluator, distributed
        )
        if not tag or not _leads(distributed):  # validation: tags describe the test evaluation
            return metrics
        self.tags["fid_feature_extractor"] = self._evaluator.extractor.name
        self.tags["eval_classifier"] = self._evaluator.classifier_key
        if warnings:
            self.tags["warnings"] = "; ".join(warnings)
        return metrics

    def _ensure_evaluator(self, distributed: Distributed | None) -> None:
        """Build the image evaluator if this process has none. In a data-parallel group rank 0
        builds it first (it may train the evaluation classifier and compute the reference
        statistics); the other ranks then load both from the caches."""
        if self._evaluator is not None:
            return
        if _leads(distributed):
            self._evaluator = build_evaluator(self.config, self.data, self.device)
        if distributed is not None and distributed.world_size > 1:
            distributed.broadcast(None)  # wait for rank 0's evaluator
            if not _leads(distributed):
                self._evaluator = build_evaluator(
                    self.config, self.data, self.device, log=lambda _: None
                )

    @property
    def samples_read(self) -> int:
        """Samples this process read features of (its share when sharded)."""
        return 0 if self._evaluator is None else self._evaluator.samples_read

    def sampling_score_evals(self, config: TrialConfig | None = None) -> float:
        """Score-network evaluations one sampling run under config (default the trial's) costs."""
        sample = (config or self.config).sample
        per_step = SAMPLER_SCORE_EVALS[sample.sampler]
        return float(per_step * sample.num_steps * sample.num_per_class * self.data.num_classes)
