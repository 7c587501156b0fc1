"""Everything a trial measures, in one package.

- toy.py: metrics against the exact scores of the toy mixtures (paper 001 App. C) and samples.
- images.py: held-out image metrics (guided DSM, classifier accuracy per noise level) and samples.
- generation.py + fid.py: FID, IS, intra-FID and generation accuracy of image samples, with the
  evaluation classifier (an artifact like any other) and cached reference statistics.
- twin.py: exact metrics per noise band on the image twin (data.name twin), beside the proxies.
- sampling.py: class-conditional sampling with a method's guided score (every scale of a sweep in
  one batch; the validation sweep of the guidance scale, successive halving: trainables.sweep);
  calibration.py: accuracy, ECE.

`TrialEvaluator` is what the Ray worker calls: one object per trial, the image evaluator built once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

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
from trainables.evaluation.images import evaluate_images, finished_samples
from trainables.evaluation.sampling import sample_scales
from trainables.evaluation.toy import evaluate_toy
from trainables.evaluation.twin import evaluate_twin
from trainables.fit import Distributed
from trainables.names import SAMPLER_SCORE_EVALS
from trainables.sweep import Curve, Sweep, first_round, race, validation_size

VAL_SEED_OFFSET = 7919  # validation draws (samples, evaluation points) use their own seeds
SAMPLE_FREE = ("guided_dsm",)  # scale-dependent image metrics measured without samples
BLOCK_SEED_STRIDE = 104_729  # a sweep's block of samples from index i per class: seed + stride * i
Objectives = Sequence[tuple[str, str]]  # (metric, "min" | "max"), the first one selects


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
        """Sweep the scales on the validation split and choose by the first objective
        (trainables.sweep.race; image trials race the scales by successive halving
        unless eval.val_halving is off). distributed: as in __call__; every rank follows rank 0's
        decisions and gets its chosen scale."""
        config = self.validation_config()
        fixed = {}
        if _leads(distributed) or not self.images:
            fixed = self._evaluate(config, networks, fixed=True, scaled=False)
        n_final = config.sample.num_per_class
        if self.images:
            metric = objectives[0][0] if objectives else ""
            measure = self._image_measure(config, networks, distributed, metric)
            n_first = first_round(n_final, config.eval.val_halving)
        else:
            measure, n_first = self._toy_measure(config, networks), n_final
        sweep = race(
            scales,
            measure,
            objectives[0] if objectives else ("", "max"),
            self.config.sample.guidance_cap,
            n_final,
            n_first,
            agree=distributed.broadcast if distributed is not None else lambda decision: decision,
        )
        sweep.metrics = {**fixed, **sweep.metrics}
        return sweep

    def _toy_measure(self, config: TrialConfig, networks: dict[str, nn.Module]):
        """The toy's sweep measure: every scale on its own, in full (toy sampling is cheap)."""

        def measure(scales: tuple[float, ...], n: int) -> Curve:
            self.val_sampling_score_evals += len(scales) * self.sampling_score_evals(config)
            return {s: self._evaluate(self._at(config, s), networks, fixed=False) for s in scales}

        return measure

    def _image_measure(
        self,
        config: TrialConfig,
        networks: dict[str, nn.Module],
        distributed: Distributed | None,
        metric: str,
    ):
        """The image sweep's measure: draws the samples per class the scales lack (every scale of
        the call in one batch, the block's seed from its position: common random numbers) and
        measures each scale on all of its samples. The metrics that need no samples (guided_dsm)
        are measured once per scale, at every scale when they select, else only at the scales
        that reach the full samples (the others are dropped on the samples' metrics)."""
        drawn: dict[float, list[torch.Tensor]] = {}
        unsampled: dict[float, dict[str, float]] = {}  # guided_dsm: no samples, once per scale
        n_final = config.sample.num_per_class
        shape = tuple(self.data.test_x.shape[1:])
        k = self.data.num_classes

        def measure(scales: tuple[float, ...], n: int) -> Curve:
            start = sum(block.shape[1] for block in drawn.get(scales[0], []))
            block = replace(
                config,
                sample=replace(
                    config.sample,
                    num_per_class=n - start,
                    seed=config.sample.seed + BLOCK_SEED_STRIDE * start,
                ),
            )
            samples, _ = sample_scales(block, networks, k, shape, scales, self.device, distributed)
            self.val_sampling_score_evals += len(scales) * self.sampling_score_evals(block)
            curve, upto_n = {}, replace(config, sample=replace(config.sample, num_per_class=n))
            for scale, new in zip(scales, samples):
                drawn.setdefault(scale, []).append(new.reshape(k, n - start, *shape))
                at = self._at(upto_n, scale)
                if scale not in unsampled and (n == n_final or metric in SAMPLE_FREE):
                    unsampled[scale] = self._evaluate(
                        at, networks, fixed=False, distributed=distributed, draw=False
                    )
                everything = torch.cat(drawn[scale], dim=1).reshape(k * n, *shape)
                curve[scale] = {**unsampled.get(scale, {}),
                                **self._sampled(at, networks, everything, distributed)}  # fmt: skip
            return curve

        return measure

    def _sampled(
        self,
        config: TrialConfig,
        networks: dict[str, nn.Module],
        samples: torch.Tensor,
        distributed: Distributed | None,
    ) -> dict[str, float]:
        """The validation metrics of class-ordered samples (config.sample.num_per_class per
        class) at config's scale: finite fraction, FID / IS / intra-FID / accuracy, the twin's."""
        samples, finite = finished_samples(samples, self.data)
        metrics = {"sample_finite_fraction": finite} if _leads(distributed) else {}
        if config.eval.fid:
            metrics.update(self._generation(samples, config.sample.num_per_class, distributed))
        if self.exact and _leads(distributed):
            metrics.update(
                evaluate_twin(config, networks, self.data, samples, fixed=False, scaled=True,
                              device=self.device)
            )  # fmt: skip
        return metrics

    def validation_config(self) -> TrialConfig:
        """The config of validation evaluations: other seeds, eval.val_num_per_class samples,
        eval.val_num_steps sampler steps."""
        config = self.config
        per_class, steps = validation_size(config)
        return replace(
            config,
            sample=replace(
                config.sample,
                seed=config.sample.seed + VAL_SEED_OFFSET,
                num_per_class=per_class,
                num_steps=steps,
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
        draw: bool = True,
    ) -> dict[str, float]:
        """Validation metrics (the fixed or the scale-dependent part) under config; draw=False:
        guided_dsm only (the sweep measures the rest on its own samples: _sampled)."""
        if not self.images:
            return evaluate_toy(
                config, networks, self.data, held_out=self._toy_val_rows(), fixed=fixed,
                scaled=scaled,
            )  # fmt: skip
        metrics, samples = evaluate_images(
            config, networks, self.data, device=self.device, split="val", fixed=fixed,
            scaled=scaled, distributed=distributed, draw=draw,
        )  # fmt: skip
        if samples is not None and config.eval.fid:
            metrics.update(self._generation(samples, config.sample.num_per_class, distributed))
        if self.exact and _leads(distributed) and (draw or not scaled):
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
