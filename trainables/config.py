"""Frozen config dataclasses with one flat dotted key space ("loss.lambda_sc") and named presets."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, replace
from typing import Any

from trainables.names import check_method


@dataclass(frozen=True)
class SDEConfig:
    """VE-SDE (Song et al. 2021); docs/methods.md section 1."""

    sigma_min: float = 0.01  # smallest noise level sigma(t) of the VE-SDE
    sigma_max: float = 50.0  # largest noise level (the prior's standard deviation)
    num_scales: int = 1000  # N, discretisation steps of the papers' PC sampler
    eps: float = 1e-5  # training t ~ U(eps, 1)


@dataclass(frozen=True)
class DataConfig:
    """Dataset and label split."""

    name: str = (
        "gmm2"  # toy: gmm2, gmm3, overlap2, moons; images: cifar10, cifar100, tiny-images, folder
    )
    # toy sets and tiny-images: examples drawn for training (folder: every image but a held-out
    # tenth of each class)
    num_train: int = 4000
    num_test: int = 2000  # toy sets and tiny-images: held-out examples for metrics
    label_percent: float = 100.0  # in (0, 100]
    seed: int = 0  # toy sets: draws of the training and test points
    split_seed: int = 0  # the labeled subset depends on this seed only
    root: str = ""  # images: dataset root (CIFAR) or the class-per-folder directory ("folder")
    download: bool = False  # CIFAR: download into root when missing (off: a clear error instead)
    image_size: int = 16  # tiny-images: side length in pixels (folder images keep their size)
    flip: bool = True  # images: random horizontal flips (as the papers)


@dataclass(frozen=True)
class ModelConfig:
    """Network sizes: toy MLPs (arch mlp) or NCSN++ image networks (arch ncsnpp)."""

    arch: str = "mlp"  # mlp (2-D toy data) | ncsnpp (images)
    hidden: int = 128  # mlp: width of each hidden layer
    depth: int = 3  # hidden layers; every one sees the noise embedding
    embed_dim: int = 32  # Gaussian Fourier features of log sigma
    fourier_scale: float = 16.0  # scale of the Fourier features' random frequencies
    nf: int = 128  # ncsnpp: base channels
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)  # ncsnpp: channel multiplier per resolution
    num_res_blocks: int = 4  # ncsnpp: residual blocks per resolution (deep: 8)
    attn_resolutions: tuple[int, ...] = (16,)  # ncsnpp: self-attention at these resolutions
    dropout: float = 0.1  # ncsnpp
    center_input: bool = True  # ncsnpp: maps [0, 1] images to [-1, 1] inside, as score_sde
    # Guidance classifier's output: "plain" (the papers' encoder + linear head), "gaussian" (plus a
    # class-conditional Gaussian energy whose LogSumExp can carry a score; networks/energy.py),
    # "energy" (one Gaussian shared by every class), "scaled" (the logits divided by sigma) or
    # "denoiser" (per-class denoiser energies from one network with K outputs; networks/).
    classifier_head: str = "plain"
    energy_rank: int = 16  # gaussian / energy heads: rank of the shared covariance's low-rank part


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and knobs; docs/methods.md section 2."""

    lambda_sc: float = 1.0  # weight of L_SC in L_CE + lambda_sc L_SC
    lambda_joint: float = 1.0  # L_DSM + lambda_joint (L_CE + L_SC)
    lambda_ce: float = 1.0  # DLSM: L_DLSM + lambda_ce L_CE
    lambda_qc: float = 0.0  # quasi-conservative regulariser; 0 disables it
    sc_weighting: str = "sigma2"  # "sigma2" (lambda(t) = sigma^2) or "none"
    dlsm_power: float = 0.0  # w in sigma^(2w); 0 on CIFAR, 1 in the toy / tiny-images bases
    p_uncond: float = 0.1  # CFG label dropout probability
    # Reduction over data dimensions, per loss family: "sum" (score_sde's VE losses) or "mean".
    # The classifier-side terms default to the mean, so lambda_SC, lambda_joint and lambda_CE weigh
    # terms of order one, as the papers' grid {0.01, 0.1, 1, 10} assumes.
    dsm_reduction: str = "sum"  # score models: DSM, Cond, CFG
    sc_reduction: str = "mean"  # the SC term of CG-SC classifiers
    dlsm_reduction: str = "mean"  # DLSM (the reference code averages)
    joint_reduction: str = "mean"  # Joint-SC's DSM and SC terms


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of one artifact."""

    steps: int = 2000  # optimiser steps per network
    steps_per_epoch: int = 250  # metrics are reported once per epoch
    batch_size: int = 256  # examples per step
    # The CG family's guidance classifier trains on its own schedule when these are set (the
    # papers: 60k iterations at batch 150 against the score model's 1.3 M at 128); 0 = as above.
    classifier_steps: int = 0
    classifier_batch_size: int = 0  # the guidance classifier's batch; 0 = train.batch_size
    lr: float = 2e-3  # Adam learning rate
    warmup: int = 100  # steps of linear learning-rate warm-up
    grad_clip: float = 1.0  # gradient-norm clipping
    ema_decay: float = 0.99  # decay of the weights' exponential moving average (evaluated)
    seed: int = 0  # initialisation and batch order
    precision: str = "fp32"  # fp32 | bf16 (autocast; meant for GPUs)
    channels_last: bool = False  # images on GPU: channels-last memory format
    # Dense peak TFLOP/s the per-epoch MFU is measured against; 0 = the device's listed peak
    # (trainables.flops.GPU_PEAK_TFLOPS), no MFU on CPUs and unlisted GPUs.
    peak_tflops: float = 0.0
    # torch.compile the network for its loss (not for an artifact whose loss differentiates an
    # input gradient: SC, QC, DLSM, Joint-SC; compiled graphs have no double backward).
    compile: bool = False
    checkpoint_every: int = (
        0  # steps between checkpoints besides every epoch end; 0 = epoch ends only
    )


@dataclass(frozen=True)
class SampleConfig:
    """Sampling and guidance."""

    sampler: str = "pc"  # pc, em, ode
    num_steps: int = 200  # sampler steps from the prior to sigma_min
    snr: float = 0.16  # Langevin corrector signal-to-noise ratio
    guidance_scale: float = 1.0  # gamma: lambda_CG for CG, 1 + w for CFG; 1 = plain conditional
    # Scales swept at sampling time inside a trial, scored on the validation split; the best one
    # (by the first objective) is evaluated in full. Empty: guidance_scale only.
    guidance_grid: tuple[float, ...] = ()
    # CG's classifier gradient: "fp32", or "bf16" (autocast; on GPUs, about half the classifier's
    # cost; its error on the toy's exact scores is in docs/benchmarks.md)
    guidance_precision: str = "fp32"
    # torch.compile the networks the sampler calls (the score model's forward, the classifier's
    # forward and input gradient): one compile per network and process, then every step reuses it
    compile: bool = False
    num_per_class: int = 500  # samples per class of the test evaluation
    seed: int = 0  # the prior draws and the sampler's noise
    batch_size: int = 1000  # samples drawn together (classes mixed); chunks are seeded from seed


@dataclass(frozen=True)
class EvalConfig:
    """Toy metrics: noise levels and points (paper 001 App. C)."""

    sigmas: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0)  # toy: noise levels of the metrics
    num_points: int = 1000  # toy: points per noise level; images: held-out images
    seed: int = 1234  # the evaluation points and noise draws
    # Validation split (selection of the guidance scale and of the lambdas; never the reported
    # numbers): samples per class per swept scale, 0 = a quarter of sample.num_per_class (>= 8).
    val_num_per_class: int = 0
    # Noise bands of the SC diagnostics (sc_ratio_band<i>: sigma in [edge_i, edge_i+1)), clipped to
    # [sde.sigma_min, sde.sigma_max].
    sc_bands: tuple[float, ...] = (0.01, 0.1, 1.0, 5.0, 20.0)
    # Images (docs/methods.md section 5): FID / IS / intra-FID / generation accuracy of
    # sample.num_per_class
    # samples per class against cached training-set statistics.
    fid: bool = True
    feature_extractor: str = (
        "inception"  # inception (clean-fid) | eval_classifier (CPU / tiny images)
    )
    inception_weights: str = ""  # a local inception-2015-12-05.pt; default clean-fid's /tmp copy
    cache_dir: str = (
        ""  # shared across studies (reference stats, eval classifiers); ~/.cache/sc-guidance
    )
    num_reference: int = 0  # training images for the reference statistics; 0 = all
    # Images per feature-extractor call, halved on out-of-device-memory until a batch fits; 0 = 256
    # on a CPU, 1024 on a GPU.
    feature_batch_size: int = 0
    classifier_checkpoint: str = (
        ""  # state dict of an evaluation classifier (same model config); else trained
    )
    classifier_steps: int = 2000  # training steps of the platform's evaluation classifier
    classifier_sigma_max: float = (
        0.5  # its training noise range is [sde.sigma_min, this]: near-clean images
    )


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs; flat keys are "<section>.<field>" plus "method"."""

    method: str = "CG"
    sde: SDEConfig = field(default_factory=SDEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# NCSN++ sizes; tests/trainables/test_ncsnpp.py checks their parameter counts.
NCSNPP_SIZES: dict[str, dict[str, Any]] = {
    "paper": {"nf": 128, "ch_mult": (1, 2, 2, 2), "num_res_blocks": 4, "attn_resolutions": (16,)},
    "deep": {"nf": 128, "ch_mult": (1, 2, 2, 2), "num_res_blocks": 8, "attn_resolutions": (16,)},
    "small": {"nf": 64, "ch_mult": (1, 2, 2), "num_res_blocks": 2, "attn_resolutions": (16,)},
    "tiny": {"nf": 16, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (8,)},
}

SECTIONS = ("sde", "data", "model", "loss", "train", "sample", "eval")

# Base configs a study's trials start from (the spec's `base_config`); a study preset
# (study/presets/*.yaml) names one of them and overrides its keys.
BASE_CONFIGS: dict[str, dict[str, Any]] = {
    # Toy 2-D studies: small noise range suited to data of unit scale.
    "toy": {
        "sde.sigma_max": 10.0,
        "sde.sigma_min": 0.01,
        "sde.eps": 1e-3,
        # DLSM weighted by sigma^2 (power 1): at 0 the irreducible sigma^-2 part is 99.5 % of it.
        "loss.dlsm_power": 1.0,
        # In 2-D the summed SC term is of order one already (D / 2 = 1), and it is what reproduces
        # paper 001 App. C at lambda_SC = 1 (lower gradient MSE and higher cosine than CE in 3 of
        # 3 seeds; the mean, i.e. half the weight, raised the cosine in 1 of 3).
        "loss.sc_reduction": "sum",
        "loss.joint_reduction": "sum",
    },
    # CIFAR-10/100 reference values (docs/methods.md, protocol): NCSN++ (cont.), 62.8 M parameters.
    "cifar10": {
        "data.name": "cifar10",
        "model.arch": "ncsnpp",
        **{f"model.{k}": v for k, v in NCSNPP_SIZES["paper"].items()},
        "sde.sigma_max": 50.0,
        "sde.sigma_min": 0.01,
        "train.lr": 2e-4,
        "train.warmup": 5000,
        "train.batch_size": 128,
        "train.ema_decay": 0.999,
        "train.steps": 1_300_000,
        "train.steps_per_epoch": 5000,
        "train.precision": "bf16",
        "train.channels_last": True,
        "sample.num_steps": 1000,
    },
    # Tiny synthetic images (trainables.data.images.tiny_images) with a tiny NCSN++: CPU tests.
    "tiny-images": {
        "data.name": "tiny-images",
        "loss.dlsm_power": 1.0,
        # score_sde's [-1, 1] input centring hurt at this size and budget (600 steps): held-out
        # DSM of the score model 53.39 -> 54.78, Cond's generation accuracy 0.96 -> 0.80 (preset
        # study, seed 0). Kept for the CIFAR bases, which follow score_sde.
        "model.center_input": False,
        "data.num_train": 512,
        "data.num_test": 512,  # 256 test rows, 256 validation rows (evaluation.images)
        "data.image_size": 16,
        "model.arch": "ncsnpp",
        **{f"model.{k}": v for k, v in NCSNPP_SIZES["tiny"].items()},
        "model.dropout": 0.0,
        "sde.sigma_max": 20.0,
        "sde.sigma_min": 0.01,
        "train.lr": 1e-3,
        "train.warmup": 50,
        "train.batch_size": 32,
        "train.steps": 600,
        "train.steps_per_epoch": 150,
        "train.ema_decay": 0.99,
        # PC, not the ODE: with a briefly trained score the probability-flow ODE leaves visible
        # noise
        # (sample std 0.56 after 1200 steps vs 0.16 with PC-100; data 0.3), PC-100 matches the data.
        "sample.sampler": "pc",
        "sample.num_steps": 100,
        "eval.sigmas": (0.05, 0.2, 1.0),
        "eval.num_points": 256,
        "eval.feature_extractor": "eval_classifier",
        "eval.classifier_steps": 300,
        "sample.num_per_class": 32,
    },
}
BASE_CONFIGS["cifar100"] = {**BASE_CONFIGS["cifar10"], "data.name": "cifar100"}
BASE_CONFIGS["cifar10-small"] = {
    **BASE_CONFIGS["cifar10"],
    **{f"model.{k}": v for k, v in NCSNPP_SIZES["small"].items()},
    "train.steps": 200_000,
}


def flat_keys() -> list[str]:
    """Every valid flat key."""
    base = TrialConfig()
    keys = ["method"]
    for section in SECTIONS:
        keys += [f"{section}.{f.name}" for f in fields(getattr(base, section))]
    return keys


def to_flat(config: TrialConfig) -> dict[str, Any]:
    """The config as a flat {dotted key: value} dict."""
    out: dict[str, Any] = {"method": config.method}
    for section in SECTIONS:
        for f in fields(getattr(config, section)):
            out[f"{section}.{f.name}"] = getattr(getattr(config, section), f.name)
    return out


def _coerce(value: Any, current: Any, key: str) -> Any:
    """Cast an override to the type of the current value."""
    if isinstance(current, bool):
        if isinstance(value, str):
            if value.lower() in ("true", "1", "yes"):
                return True
            if value.lower() in ("false", "0", "no"):
                return False
            raise ValueError(f"{key}: expected a boolean, got {value!r}")
        return bool(value)
    if isinstance(current, tuple):
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        return tuple(_coerce(v, current[0] if current else 0.0, key) for v in value)
    try:
        if isinstance(current, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(current, float):
            return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}: expected {type(current).__name__}, got {value!r}") from None
    return str(value) if isinstance(current, str) else value


def override(config: TrialConfig, updates: dict[str, Any]) -> TrialConfig:
    """Return a copy with dotted-key updates, checked against the schema (close matches
    suggested)."""
    valid = flat_keys()
    sections: dict[str, dict[str, Any]] = {}
    method = config.method
    for key, value in updates.items():
        if key not in valid:
            hint = difflib.get_close_matches(key, valid, n=1)
            raise ValueError(
                f"unknown config key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
            )
        if key == "method":
            method = str(value)
            continue
        section, name = key.split(".", 1)
        current = getattr(getattr(config, section), name)
        sections.setdefault(section, {})[name] = _coerce(value, current, key)
    new = {s: replace(getattr(config, s), **kw) for s, kw in sections.items()}
    return validate(replace(config, method=method, **new))


def from_flat(flat: dict[str, Any], base: str | None = None) -> TrialConfig:
    """Build a config from a base config (optional) and flat overrides."""
    config = TrialConfig()
    if base is not None:
        if base not in BASE_CONFIGS:
            raise ValueError(f"unknown base config {base!r}; valid: {sorted(BASE_CONFIGS)}")
        config = override(config, BASE_CONFIGS[base])
    return override(config, flat)


# model.classifier_head: networks/energy.py ("gaussian", "energy"); "scaled" divides the logits
# by sigma (networks.SigmaScaledClassifier); "denoiser": per-class denoiser energies as the logits
# (networks.DenoiserClassifier)
CLASSIFIER_HEADS = ("plain", "gaussian", "energy", "scaled", "denoiser")
ENERGY_HEADS = ("gaussian", "energy")  # the heads model.energy_rank shapes
GUIDANCE_PRECISIONS = ("fp32", "bf16")  # sample.guidance_precision; trainables.guidance


def _check_heads(config: TrialConfig) -> None:
    """The guidance classifier's head and the precision of its guidance gradient."""
    if config.model.classifier_head not in CLASSIFIER_HEADS:
        raise ValueError(
            "model.classifier_head must be 'plain', 'gaussian', 'energy', 'scaled' or 'denoiser', "
            f"got {config.model.classifier_head!r}"
        )
    if config.model.energy_rank < 0:
        raise ValueError(f"model.energy_rank must be >= 0, got {config.model.energy_rank}")
    if config.sample.guidance_precision not in GUIDANCE_PRECISIONS:
        raise ValueError(
            "sample.guidance_precision must be 'fp32' or 'bf16', "
            f"got {config.sample.guidance_precision!r}"
        )


def validate(config: TrialConfig) -> TrialConfig:
    """Check values the math needs; raise ValueError naming the bad value."""
    check_method(config.method)
    if not 0.0 < config.data.label_percent <= 100.0:
        raise ValueError(f"data.label_percent must be in (0, 100], got {config.data.label_percent}")
    for name in ("lambda_sc", "lambda_joint", "lambda_ce", "lambda_qc"):
        value = getattr(config.loss, name)
        if value < 0:
            raise ValueError(f"loss.{name} must be >= 0, got {value}")
    for name in ("dsm_reduction", "sc_reduction", "dlsm_reduction", "joint_reduction"):
        if getattr(config.loss, name) not in ("sum", "mean"):
            raise ValueError(
                f"loss.{name} must be 'sum' or 'mean', got {getattr(config.loss, name)!r}"
            )
    _check_heads(config)
    if config.loss.sc_weighting not in ("sigma2", "none"):
        raise ValueError(
            f"loss.sc_weighting must be 'sigma2' or 'none', got {config.loss.sc_weighting!r}"
        )
    if not 0.0 <= config.loss.p_uncond < 1.0:
        raise ValueError(f"loss.p_uncond must be in [0, 1), got {config.loss.p_uncond}")
    if not 0 < config.sde.sigma_min < config.sde.sigma_max:
        raise ValueError(
            "need 0 < sde.sigma_min < sde.sigma_max, "
            f"got {config.sde.sigma_min}, {config.sde.sigma_max}"
        )
    if config.sample.guidance_scale < 0:
        raise ValueError(f"sample.guidance_scale must be >= 0, got {config.sample.guidance_scale}")
    if any(s < 0 for s in config.sample.guidance_grid):
        raise ValueError(
            f"sample.guidance_grid scales must be >= 0, got {list(config.sample.guidance_grid)}"
        )
    if config.eval.val_num_per_class < 0:
        raise ValueError(
            f"eval.val_num_per_class must be >= 0, got {config.eval.val_num_per_class}"
        )
    from trainables.samplers import SAMPLERS

    if config.sample.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {config.sample.sampler!r}; valid: {sorted(SAMPLERS)}")
    if config.model.arch not in ("mlp", "ncsnpp"):
        raise ValueError(f"model.arch must be 'mlp' or 'ncsnpp', got {config.model.arch!r}")
    if config.eval.feature_extractor not in ("inception", "eval_classifier"):
        raise ValueError(
            "eval.feature_extractor must be 'inception' or 'eval_classifier', "
            f"got {config.eval.feature_extractor!r}"
        )
    if config.sample.batch_size <= 0 or config.sample.num_per_class <= 0:
        raise ValueError("sample.batch_size and sample.num_per_class must be > 0")
    if config.eval.feature_batch_size < 0:
        raise ValueError(
            "eval.feature_batch_size must be >= 0 (0 = 256 on a CPU, 1024 on a GPU), "
            f"got {config.eval.feature_batch_size}"
        )
    _check_train(config.train)
    return config


def _check_train(train: TrainConfig) -> None:
    """The training schedule's values; ValueError naming the bad one."""
    if train.precision not in ("fp32", "bf16"):
        raise ValueError(f"train.precision must be 'fp32' or 'bf16', got {train.precision!r}")
    if train.peak_tflops < 0:
        raise ValueError(
            "train.peak_tflops must be >= 0 (0 = the device's listed peak), "
            f"got {train.peak_tflops}"
        )
    if train.checkpoint_every < 0:
        raise ValueError(f"train.checkpoint_every must be >= 0, got {train.checkpoint_every}")
    for name in ("steps", "steps_per_epoch", "batch_size"):
        if getattr(train, name) <= 0:
            raise ValueError(f"train.{name} must be > 0, got {getattr(train, name)}")
    for name in ("classifier_steps", "classifier_batch_size"):
        if getattr(train, name) < 0:
            raise ValueError(
                f"train.{name} must be >= 0 (0 = as train.{name.split('_', 1)[1]}), "
                f"got {getattr(train, name)}"
            )
