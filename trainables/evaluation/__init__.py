"""Everything a trial measures, in one package.

- toy.py: metrics against the exact scores of the toy mixtures (paper 001 App. C) and samples.
- images.py: held-out image metrics (guided DSM, classifier accuracy per noise level) and samples.
- generation.py + fid.py: FID, IS, intra-FID and generation accuracy of image samples, with the
  evaluation classifier (an artifact like any other) and cached reference statistics.
- sampling.py: class-conditional sampling with a method's guided score; calibration.py: accuracy,
ECE.

`TrialEvaluator` is what the Ray worker calls: one object per trial, the image evaluator built once.
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.config import TrialConfig
from trainables.data.images import ImageData
from trainables.data.toy import ToyData
from trainables.evaluation.generation import Evaluator, build_evaluator, evaluate_generation
from trainables.evaluation.images import evaluate_images
from trainables.evaluation.toy import evaluate_toy

SAMPLER_SCORE_EVALS = {"pc": 2, "em": 1, "ode": 2}  # score evaluations per sampler step


class TrialEvaluator:
    """Measures a trial's networks: toy metrics, or image metrics plus FID / IS / accuracy."""

    def __init__(
        self, config: TrialConfig, data: ToyData | ImageData, device: torch.device | str = "cpu"
    ) -> None:
        self.config, self.data, self.device = config, data, device
        self.images = data.x.dim() == 4
        self.tags: dict[str, str] = {}  # feature extractor, evaluation classifier, warnings
        self._evaluator: Evaluator | None = None  # built on first use (it may train a classifier)

    def __call__(
        self, networks: dict[str, nn.Module]
    ) -> tuple[dict[str, float], torch.Tensor | None]:
        """(metrics, image samples or None) for networks keyed by kind."""
        if not self.images:
            return evaluate_toy(self.config, networks, self.data), None
        metrics, samples = evaluate_images(self.config, networks, self.data, device=self.device)
        if self.config.eval.fid:
            metrics.update(self._generation(samples))
        return metrics, samples

    def _generation(self, samples: torch.Tensor) -> dict[str, float]:
        """FID, IS, intra-FID and generation accuracy of the class-ordered samples."""
        if self._evaluator is None:
            self._evaluator = build_evaluator(self.config, self.data, self.device)
        num_classes = self.data.num_classes
        labels = torch.arange(num_classes).repeat_interleave(self.config.sample.num_per_class)
        metrics, warnings = evaluate_generation(samples, labels, num_classes, self._evaluator)
        self.tags["fid_feature_extractor"] = self._evaluator.extractor.name
        self.tags["eval_classifier"] = self._evaluator.classifier_key
        if warnings:
            self.tags["warnings"] = "; ".join(warnings)
        return metrics

    def sampling_score_evals(self) -> float:
        """Score-network evaluations one full sampling run costs."""
        sample = self.config.sample
        per_step = SAMPLER_SCORE_EVALS[sample.sampler]
        return float(per_step * sample.num_steps * sample.num_per_class * self.data.num_classes)
