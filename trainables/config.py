"""Frozen config dataclasses with one flat dotted key space ("loss.lambda_sc") and named presets.

The dataclasses are the schema: each field's type carries its range (the aliases below), pydantic
checks and casts every value against it (`check_sections`), and docs/spec.md is generated from it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, replace
from typing import Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError

from trainables.names import check_method


def _not_a_boolean(value: Any) -> Any:
    """YAML's true is not a number (Python says it is 1)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


def _split(value: Any) -> Any:
    """'0.1,0.5' or '(0.1, 0.5)' (a command-line override) as a list."""
    if isinstance(value, str):
        return [v for v in value.strip("()[] ").split(",") if v.strip()]
    return value


_NUMBER = BeforeValidator(_not_a_boolean)
MAX_COUNT = 10**9  # steps, examples: beyond it a value is a typo (or an allocation that fails)
MAX_PER_CLASS = 100_000  # samples per class (CIFAR-10's 50k FID samples are 5,000 per class)
Count = Annotated[int, _NUMBER, Field(ge=1, le=MAX_COUNT)]  # >= 1
OptionalCount = Annotated[int, _NUMBER, Field(ge=0, le=MAX_COUNT)]  # >= 0 (0 = a default)
Size = Annotated[int, _NUMBER, Field(ge=1, le=65_536)]  # widths, resolutions, sampler steps
EvenSize = Annotated[int, _NUMBER, Field(ge=2, le=65_536, multiple_of=2)]
Points = Annotated[int, _NUMBER, Field(ge=2, le=MAX_COUNT)]  # a metric of one point is none
PerClass = Annotated[int, _NUMBER, Field(ge=1, le=MAX_PER_CLASS)]
Seed = Annotated[int, _NUMBER, Field(ge=0, le=2**32 - 1)]
Real = Annotated[float, _NUMBER, Field(allow_inf_nan=False)]  # finite
Positive = Annotated[float, _NUMBER, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, _NUMBER, Field(ge=0, allow_inf_nan=False)]
Probability = Annotated[float, _NUMBER, Field(ge=0, lt=1, allow_inf_nan=False)]  # [0, 1)
Percent = Annotated[float, _NUMBER, Field(gt=0, le=100, allow_inf_nan=False)]  # (0, 100]
Positives = Annotated[tuple[Positive, ...], BeforeValidator(_split)]
NonNegatives = Annotated[tuple[NonNegative, ...], BeforeValidator(_split)]
Sizes = Annotated[tuple[Size, ...], BeforeValidator(_split)]
SomePositives = Annotated[Positives, Field(min_length=1)]  # at least one
SomeSizes = Annotated[Sizes, Field(min_length=1)]
Edges = Annotated[Positives, Field(min_length=2)]  # band edges: at least one band
Reduction = Literal["sum", "mean"]
Precision = Literal["fp32", "bf16"]
# model.classifier_head: networks/energy.py ("gaussian", "energy"); "scaled" divides the logits
# by sigma (networks.SigmaScaledClassifier); "denoiser": per-class denoiser energies as the logits
# (networks.DenoiserClassifier)
ClassifierHead = Literal["plain", "gaussian", "energy", "scaled", "denoiser"]
Sampler = Literal["pc", "em", "ode"]  # trainables.samplers.SAMPLERS (a test keeps them equal)


@dataclass(frozen=True)
class SDEConfig:
    """VE-SDE (Song et al. 2021); docs/methods.md section 1."""

    sigma_min: Positive = 0.01  # smallest noise level sigma(t) of the VE-SDE
    sigma_max: Positive = 50.0  # largest noise level (the prior's standard deviation)
    num_scales: Size = 1000  # N, discretisation steps of the papers' PC sampler
    eps: Probability = 1e-5  # training t ~ U(eps, 1)


@dataclass(frozen=True)
class DataConfig:
    """Dataset and label split."""

    name: str = (
        "gmm2"  # toy: gmm2, gmm3, overlap2, moons; images: cifar10, cifar100, tiny-images, folder
    )
    # toy sets and tiny-images: examples drawn for training (folder: every image but a held-out
    # tenth of each class)
    num_train: Count = 4000
    num_test: Count = 2000  # toy sets and tiny-images: held-out examples for metrics
    label_percent: Percent = 100.0  # in (0, 100]
    seed: Seed = 0  # toy sets: draws of the training and test points
    split_seed: Seed = 0  # the labeled subset depends on this seed only
    root: str = ""  # images: dataset root (CIFAR) or the class-per-folder directory ("folder")
    download: bool = False  # CIFAR: download into root when missing (off: a clear error instead)
    image_size: Size = 16  # tiny-images, shapes: side length in pixels (folder images keep theirs)
    # shapes: within-class variation, distractors, clutter and noise, 0 (clean) to 1
    difficulty: Annotated[float, _NUMBER, Field(ge=0, le=1, allow_inf_nan=False)] = 0.5
    num_classes: Annotated[int, _NUMBER, Field(ge=2, le=10)] = 10  # shapes: the first N classes
    flip: bool = True  # images: random horizontal flips (as the papers)
    # twin (trainables.data.twin): the image set its Gaussian mixture is fitted to (shapes and
    # tiny-images with the keys above; folder: data.root), and how many of its images
    twin_source: Literal["shapes", "tiny-images", "folder"] = "shapes"
    twin_source_images: Count = 5000  # shapes, tiny-images: images drawn for the fit
    # PPCA components per class (and as many common to all classes)
    twin_components: Annotated[int, _NUMBER, Field(ge=1, le=64)] = 4
    twin_rank: OptionalCount = 16  # rank of each component's covariance beyond its noise floor
    # the share of each class's mass on the common components: the classes' overlap (Bayes
    # accuracy about 1 - share (1 - 1/K)); 0.15: 0.87 on shapes' 10 classes (docs/science.md)
    twin_shared: Probability = 0.15


@dataclass(frozen=True)
class ModelConfig:
    """Network sizes: toy MLPs (arch mlp) or NCSN++ image networks (arch ncsnpp)."""

    arch: Literal["mlp", "ncsnpp"] = "mlp"  # mlp (2-D toy data) | ncsnpp (images)
    hidden: Size = 128  # mlp: width of each hidden layer
    depth: Size = 3  # hidden layers; every one sees the noise embedding
    embed_dim: EvenSize = 32  # Gaussian Fourier features of log sigma
    fourier_scale: Positive = 16.0  # scale of the Fourier features' random frequencies
    nf: Size = 128  # ncsnpp: base channels
    ch_mult: SomeSizes = (1, 2, 2, 2)  # ncsnpp: channel multiplier per resolution
    num_res_blocks: Size = 4  # ncsnpp: residual blocks per resolution (deep: 8)
    attn_resolutions: Sizes = (16,)  # ncsnpp: self-attention at these resolutions
    dropout: Probability = 0.1  # ncsnpp
    center_input: bool = True  # ncsnpp: maps [0, 1] images to [-1, 1] inside, as score_sde
    # Guidance classifier's output: "plain" (the papers' encoder + linear head), "gaussian" (plus a
    # class-conditional Gaussian energy whose LogSumExp can carry a score; networks/energy.py),
    # "energy" (one Gaussian shared by every class), "scaled" (the logits divided by sigma) or
    # "denoiser" (per-class denoiser energies from one network with K outputs; networks/).
    classifier_head: ClassifierHead = "plain"
    # gaussian / energy heads: rank of the shared covariance's low-rank part
    energy_rank: OptionalCount = 16


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and knobs; docs/methods.md section 2."""

    lambda_sc: NonNegative = 1.0  # weight of L_SC in L_CE + lambda_sc L_SC
    lambda_joint: NonNegative = 1.0  # L_DSM + lambda_joint (L_CE + L_SC)
    lambda_ce: NonNegative = 1.0  # DLSM: L_DLSM + lambda_ce L_CE
    lambda_qc: NonNegative = 0.0  # quasi-conservative regulariser; 0 disables it
    sc_weighting: Literal["sigma2", "none"] = "sigma2"  # "sigma2" (lambda(t) = sigma^2) or "none"
    dlsm_power: Real = 0.0  # w in sigma^(2w); 0 on CIFAR, 1 in the toy / tiny-images bases
    p_uncond: Probability = 0.1  # CFG label dropout probability
    # Reduction over data dimensions, per loss family: "sum" (score_sde's VE losses) or "mean".
    # The classifier-side terms default to the mean, so lambda_SC, lambda_joint and lambda_CE weigh
    # terms of order one, as the papers' grid {0.01, 0.1, 1, 10} assumes.
    dsm_reduction: Reduction = "sum"  # score models: DSM, Cond, CFG
    sc_reduction: Reduction = "mean"  # the SC term of CG-SC classifiers
    dlsm_reduction: Reduction = "mean"  # DLSM (the reference code averages)
    joint_reduction: Reduction = "mean"  # Joint-SC's DSM and SC terms


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of one artifact."""

    steps: Count = 2000  # optimiser steps per network
    steps_per_epoch: Count = 250  # metrics are reported once per epoch
    batch_size: Count = 256  # examples per step
    # The CG family's guidance classifier trains on its own schedule when these are set (the
    # papers: 60k iterations at batch 150 against the score model's 1.3 M at 128); 0 = as above.
    classifier_steps: OptionalCount = 0
    # the guidance classifier's batch; 0 = train.batch_size
    classifier_batch_size: OptionalCount = 0
    lr: Positive = 2e-3  # Adam learning rate
    warmup: OptionalCount = 100  # steps of linear learning-rate warm-up
    grad_clip: Positive = 1.0  # gradient-norm clipping
    ema_decay: Probability = 0.99  # decay of the weights' exponential moving average (evaluated)
    seed: Seed = 0  # initialisation and batch order
    precision: Precision = "fp32"  # fp32 | bf16 (autocast; meant for GPUs)
    channels_last: bool = False  # images on GPU: channels-last memory format
    # Dense peak TFLOP/s the per-epoch MFU is measured against; 0 = the device's listed peak
    # (trainables.flops.GPU_PEAK_TFLOPS), no MFU on CPUs and unlisted GPUs.
    peak_tflops: NonNegative = 0.0
    # torch.compile the network for its loss (not for an artifact whose loss differentiates an
    # input gradient: SC, QC, DLSM, Joint-SC; compiled graphs have no double backward).
    compile: bool = False
    checkpoint_every: OptionalCount = (
        0  # steps between checkpoints besides every epoch end; 0 = epoch ends only
    )


@dataclass(frozen=True)
class SampleConfig:
    """Sampling and guidance."""

    sampler: Sampler = "pc"  # pc, em, ode
    num_steps: Size = 200  # sampler steps from the prior to sigma_min
    snr: Positive = 0.16  # Langevin corrector signal-to-noise ratio
    # gamma: lambda_CG for CG, 1 + w for CFG; 1 = plain conditional
    guidance_scale: NonNegative = 1.0
    # Scales swept at sampling time inside a trial, scored on the validation split; the best one
    # (by the first objective) is evaluated in full. Empty: guidance_scale only.
    guidance_grid: NonNegatives = ()
    # When the validation optimum is the grid's largest scale, the sweep goes on geometrically
    # (x the grid's last ratio, at least 2) up to this cap, until the curve turns; likewise down
    # (halving, at most 3 times) from its smallest scale above 0. 0 or the grid's largest scale:
    # the grid only.
    guidance_cap: NonNegative = 0.0
    # CG's classifier gradient: "fp32", or "bf16" (autocast; on GPUs, about half the classifier's
    # cost; its error on the toy's exact scores is in docs/benchmarks.md)
    guidance_precision: Precision = "fp32"
    # torch.compile the networks the sampler calls (the score model's forward, the classifier's
    # forward and input gradient): one compile per network and process, then every step reuses it
    compile: bool = False
    num_per_class: PerClass = 500  # samples per class of the test evaluation
    seed: Seed = 0  # the prior draws and the sampler's noise
    batch_size: Count = 1000  # samples drawn together (classes mixed); chunks are seeded from seed


@dataclass(frozen=True)
class EvalConfig:
    """Toy metrics: noise levels and points (paper 001 App. C)."""

    sigmas: SomePositives = (0.05, 0.1, 0.2, 0.5, 1.0)  # toy: noise levels of the metrics
    num_points: Points = 1000  # toy: points per noise level; images: held-out images
    seed: Seed = 1234  # the evaluation points and noise draws
    # Validation split (selection of the guidance scale and of the lambdas; never the reported
    # numbers): samples per class per swept scale, 0 = a quarter of sample.num_per_class (>= 8).
    val_num_per_class: Annotated[int, _NUMBER, Field(ge=0, le=MAX_PER_CLASS)] = 0
    # Images: successive halving over the swept scales (trainables.sweep): a quarter of
    # val_num_per_class (>= 4) per class for every scale, twice as many for the better half, ...,
    # val_num_per_class for the survivors. false: every scale sampled in full.
    val_halving: bool = True
    # Sampler steps of validation sampling; 0 = sample.num_steps, and never more than it. Fewer
    # only where they rank the scales as the full sampler does (docs/benchmarks.md, "Validation
    # sampler steps").
    val_num_steps: OptionalCount = 0
    # Noise bands of the SC diagnostics (sc_ratio_band<i>: sigma in [edge_i, edge_i+1)), clipped to
    # [sde.sigma_min, sde.sigma_max].
    sc_bands: Edges = (0.01, 0.1, 1.0, 5.0, 20.0)
    # Images (docs/methods.md section 5): FID / IS / intra-FID / generation accuracy of
    # sample.num_per_class
    # samples per class against cached training-set statistics.
    fid: bool = True
    feature_extractor: Literal["inception", "eval_classifier"] = (
        "inception"  # inception (clean-fid) | eval_classifier (CPU / tiny images)
    )
    inception_weights: str = ""  # a local inception-2015-12-05.pt; default clean-fid's /tmp copy
    cache_dir: str = (
        ""  # the yardstick (reference stats, eval classifier); a study's evaluation/ folder
    )
    # The store a study's yardstick is seeded from and published to (the artifact store's
    # evaluation/: studies share what they trained); "" = none.
    shared_cache_dir: str = ""
    num_reference: OptionalCount = 0  # training images for the reference statistics; 0 = all
    # Images per feature-extractor call, halved on out-of-device-memory until a batch fits; 0 = 256
    # on a CPU, 1024 on a GPU.
    feature_batch_size: OptionalCount = 0
    classifier_checkpoint: str = (
        ""  # state dict of an evaluation classifier (same model config); else trained
    )
    classifier_steps: Count = 2000  # training steps of the platform's evaluation classifier
    # precision / recall / density / coverage (Naeem et al. 2020) from the FID features: the
    # nearest neighbours k (the paper's 5), at most sample.num_per_class - 2; 0: not measured
    prdc_k: Annotated[int, _NUMBER, Field(ge=0, le=1000)] = 5
    classifier_sigma_max: Positive = (
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
        # The guidance sweep's validation samples with PC-25: on tiny-images and shapes (CG, 20 %,
        # 2 seeds each) PC-50 and PC-25 alike rank the scales as PC-100 does within PC-100's own
        # seed-to-seed agreement (Spearman 1.00 / 0.94 and 0.83 / 1.00 against 0.94 and 0.83) and
        # chose the same scale in 3 of 4 curves, the fourth within PC-100's noise
        # (bench/val_steps_agreement.py, docs/benchmarks.md "Validation sampler steps").
        "eval.val_num_steps": 25,
        "eval.sigmas": (0.05, 0.2, 1.0),
        "eval.num_points": 256,
        "eval.feature_extractor": "eval_classifier",
        "eval.classifier_steps": 300,
        "sample.num_per_class": 32,
    },
}
# The image twin (trainables.data.twin) of shapes at 16x16, with the tiny-images networks: no
# flips (a flipped sample is not one of the mixture), and the twin's images are not in [0, 1].
BASE_CONFIGS["twin"] = {
    **BASE_CONFIGS["tiny-images"],
    "data.name": "twin",
    "data.flip": False,
    "data.num_classes": 10,
    "eval.val_num_steps": 0,  # the full sampler: fewer steps were not measured on the twin
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


# Each section's validator (and JSON schema, for docs/spec.md), from its dataclass.
SECTION_ADAPTERS = {s: TypeAdapter(type(getattr(TrialConfig(), s))) for s in SECTIONS}


def shown(value: Any, limit: int = 60) -> str:
    """repr(value), at most `limit` characters (a 50 MB value is not echoed whole)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"


def _problem(section: str, error: dict) -> str:
    """One pydantic error as 'train.lr must be greater than 0, got -1'."""
    loc = [str(part) for part in error["loc"]]
    key = f"{section}.{loc[0]}" + "".join(f"[{i}]" for i in loc[1:])
    text = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    text = text.replace("Value should", "must").replace(" after validation", "")
    return f"{key} {text}, got {shown(error.get('input'))}"


def check_sections(config: TrialConfig, updates: dict[str, dict[str, Any]] | None = None):
    """The config with every section checked against its schema and cast to its types (and
    `updates` {section: {field: value}} applied first); ValueError naming every bad value."""
    problems: list[str] = []
    checked: dict[str, Any] = {}
    for name, adapter in SECTION_ADAPTERS.items():
        current = getattr(config, name)
        data = {f.name: getattr(current, f.name) for f in fields(current)}
        data.update((updates or {}).get(name, {}))
        try:
            checked[name] = adapter.validate_python(data)
        except ValidationError as exc:
            problems += [_problem(name, e) for e in exc.errors(include_url=False)]
    if problems:
        raise ValueError("; ".join(problems))
    return replace(config, **checked)


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
        sections.setdefault(section, {})[name] = value
    return validate(replace(config, method=method), sections)


def from_flat(flat: dict[str, Any], base: str | None = None) -> TrialConfig:
    """Build a config from a base config (optional) and flat overrides."""
    config = TrialConfig()
    if base is not None:
        if base not in BASE_CONFIGS:
            raise ValueError(f"unknown base config {base!r}; valid: {sorted(BASE_CONFIGS)}")
        config = override(config, BASE_CONFIGS[base])
    return override(config, flat)


ENERGY_HEADS = ("gaussian", "energy")  # the heads model.energy_rank shapes
GUIDANCE_PRECISIONS = get_args(Precision)  # sample.guidance_precision; trainables.guidance


def validate(config: TrialConfig, updates: dict[str, dict[str, Any]] | None = None) -> TrialConfig:
    """Check every value (after `updates`, {section: {field: value}}) against the schema and the
    relations between values; ValueError naming the bad value. Returns the config cast to the
    schema's types."""
    check_method(config.method)
    config = check_sections(config, updates)
    images = config.model.arch == "ncsnpp" and config.eval.fid  # where PRDC is measured
    if images and config.eval.prdc_k and config.eval.prdc_k > config.sample.num_per_class - 2:
        raise ValueError(
            f"eval.prdc_k must be at most sample.num_per_class - 2 "
            f"({config.sample.num_per_class - 2}: a class's samples are its neighbourhoods), got "
            f"{config.eval.prdc_k}; lower it, or 0 for no precision / recall"
        )
    if config.data.name == "twin" and config.data.flip:
        raise ValueError(
            "data.flip must be false for the twin (a flipped sample is not one of its mixture); "
            "set data.flip: false or use base_config: twin"
        )
    if config.sde.sigma_min >= config.sde.sigma_max:
        raise ValueError(
            "need sde.sigma_min < sde.sigma_max, "
            f"got {config.sde.sigma_min}, {config.sde.sigma_max}"
        )
    return config
