"""The method registry: loss terms, the artifacts (trained networks) they make, and the methods.

Three tables of frozen records, each the single source of its facts:

- TERMS: one record per loss term: its per-example function, the loss knobs it reads besides its
  weight (they enter the artifact cache key) and whether it reads labels (half-labeled batches).
- Artifacts: a network kind plus the terms (with their row subset and weight key) it is trained on,
  and the artifacts it reads frozen.
- METHODS: one record per method, named exactly as the papers, with its artifacts and guidance.

`artifact_loss` sums any artifact's terms; `guided_score_fn` builds any method's sampling score.
The names and tuned keys other packages read without torch are in trainables.names (a test keeps
them equal to this registry).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainables import guidance, losses, names
from trainables.config import ENERGY_HEADS, LossConfig
from trainables.data.batches import Batch, Noise


@dataclass(frozen=True)
class ModelFns:
    """The callables loss terms and guidance read, built from trained networks."""

    score_fn: losses.ScoreFn | None = None
    logits_fn: losses.LogitsFn | None = None
    cond_score_fn: losses.CondScoreFn | None = None
    frozen_score_fn: losses.ScoreFn | None = None
    num_classes: int = 0


def _need(fn: Callable | None, what: str) -> Callable:
    """fn, or a ValueError saying the artifact lacks it."""
    if fn is None:
        raise ValueError(f"this loss term needs a {what}, which the artifact does not provide")
    return fn


# ---- loss terms ---------------------------------------------------------------------------------
TermFn = Callable[[ModelFns, Batch, Noise, LossConfig], torch.Tensor]


@dataclass(frozen=True)
class Term:
    """A loss term: per-example values from (networks, rows, their noise, loss config)."""

    fn: TermFn
    knobs: tuple[str, ...] = ()  # flat loss keys fn reads besides the weight: part of the cache key
    reads_labels: bool = False  # reads y: its artifact depends on the label split
    # A score-side term (DSM, QC): in a batch with a labeled half it reads only the rows drawn
    # uniformly from all data (paper 001 prescribes half-labeled batches for the classifier only).
    uniform_rows: bool = False
    # Differentiates an input gradient with respect to the parameters (create_graph): compiled
    # graphs have no double backward, so train.compile leaves such an artifact eager.
    double_backward: bool = False


def _dsm(f: ModelFns, b: Batch, n: Noise, c: LossConfig) -> torch.Tensor:
    score_fn = _need(f.score_fn, "score model")
    return losses.dsm_loss(score_fn, b.x, n.sigma, n.z, reduction=c.dsm_reduction)


def _ce(f: ModelFns, b: Batch, n: Noise, c: LossConfig) -> torch.Tensor:
    return losses.ce_loss(_need(f.logits_fn, "classifier"), b.x, n.sigma, n.z, b.y)


def _sc(f: ModelFns, b: Batch, n: Noise, c: LossConfig) -> torch.Tensor:
    logits_fn = _need(f.logits_fn, "classifier")
    weighting, reduction = c.sc_weighting, c.sc_reduction
    return losses.sc_loss(logits_fn, b.x, n.sigma, n.z, weighting=weighting, reduction=reduction)


def _joint_dsm(f: ModelFns, b: Batch, n: Noise, c: LossConfig) -> torch.Tensor:
    score_fn = _need(f.score_fn, "score model")
    return losses.dsm_loss(score_fn, b.x, n.sigma, n.z, reduction=c.joint_reduction)


def _joint_sc(f: ModelFns, b: Batch, n: Noise, c: LossConfig) -> torch.Tensor:
    logits_fn = _need(f.logits_fn, "classifier")
    weighting, reduction = c.sc_weighting, c.joint_reduction
    return losses.sc_loss(logits_fn, b.x, n.sigma, n.z, weighting=weighting, reduction=reduction)


def _dlsm(f: ModelFns, b: Batch, n: Noise, c: LossConfig) -> torch.Tensor:
    logits_fn = _need(f.logits_fn, "classifier")
    frozen = _need(f.frozen_score_fn, "frozen score model")
    power, reduction = c.dlsm_power, c.dlsm_reduction
    return losses.dlsm_loss(
        logits_fn, frozen, b.x, n.sigma, n.z, b.y, power=power, reduction=reduction
    )


def _cond_dsm(f: ModelFns, b: Batch, n: Noise, c: LossConfig) -> torch.Tensor:
    cond_score_fn = _need(f.cond_score_fn, "conditional score model")
    return losses.cond_dsm_loss(cond_score_fn, b.x, n.sigma, n.z, b.y, reduction=c.dsm_reduction)


def _cfg_dsm(f: ModelFns, b: Batch, n: Noise, c: LossConfig) -> torch.Tensor:
    cond_score_fn = _need(f.cond_score_fn, "conditional score model")
    return losses.cfg_dsm_loss(
        cond_score_fn, b.x, n.sigma, n.z, b.y, n.u,
        p_uncond=c.p_uncond, null_label=f.num_classes, reduction=c.dsm_reduction,
    )  # fmt: skip


def _qc(f: ModelFns, b: Batch, n: Noise, c: LossConfig) -> torch.Tensor:
    return losses.qc_loss(_need(f.score_fn, "score model"), b.x, n.sigma, n.z, n.v)


TERMS: dict[str, Term] = {
    "dsm": Term(_dsm, knobs=("loss.dsm_reduction",), uniform_rows=True),
    "ce": Term(_ce, reads_labels=True),
    "sc": Term(_sc, knobs=("loss.sc_weighting", "loss.sc_reduction"), double_backward=True),
    "dlsm": Term(
        _dlsm,
        knobs=("loss.dlsm_power", "loss.dlsm_reduction"),
        reads_labels=True,
        double_backward=True,
    ),
    "cond_dsm": Term(_cond_dsm, knobs=("loss.dsm_reduction",), reads_labels=True),
    "cfg_dsm": Term(_cfg_dsm, knobs=("loss.p_uncond", "loss.dsm_reduction"), reads_labels=True),
    "qc": Term(_qc, uniform_rows=True, double_backward=True),
    # Joint-SC's own DSM and SC: the same losses under the joint family's reduction.
    "joint_dsm": Term(_joint_dsm, knobs=("loss.joint_reduction",), uniform_rows=True),
    "joint_sc": Term(
        _joint_sc, knobs=("loss.sc_weighting", "loss.joint_reduction"), double_backward=True
    ),
}
SC_TERMS = {"sc": "sc_reduction", "joint_sc": "joint_reduction"}  # term -> its reduction field
ROWS = ("labeled", "unlabeled", "all")


@dataclass(frozen=True)
class LossTerm:
    """One term of an artifact's loss: which term, on which rows, weighted by which flat key."""

    term: str  # key of TERMS
    rows: str = "all"  # labeled | unlabeled | all
    weight_key: str | None = None  # e.g. "loss.lambda_sc"; None = weight 1
    tuned: bool = False  # the weight is one of the method's searched knobs

    def __post_init__(self) -> None:
        if self.term not in TERMS or self.rows not in ROWS:
            raise ValueError(
                f"loss term {self.term!r} on rows {self.rows!r} is not in the registry"
            )

    def weight(self, loss_config: LossConfig) -> float:
        """The term's weight under a LossConfig."""
        if self.weight_key is None:
            return 1.0
        return float(getattr(loss_config, self.weight_key.split(".", 1)[1]))

    def knobs(self) -> tuple[str, ...]:
        """Every flat key this term's value depends on (its weight key and its term's knobs)."""
        weight = (self.weight_key,) if self.weight_key is not None else ()
        return weight + TERMS[self.term].knobs


# ---- artifacts ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Artifact:
    """A trained network: its kind, its loss terms, and the artifacts it reads frozen."""

    name: str  # cache identity: score, classifier, joint, conditional, eval_classifier
    network: str  # network kind built by trainables.networks: score|classifier|joint|conditional
    terms: tuple[LossTerm, ...]
    needs: tuple[str, ...] = ()  # artifact names trained first and frozen (their EMA weights)

    @property
    def uses_labels(self) -> bool:
        """Whether any term reads labels (then the artifact depends on the label split)."""
        return any(t.rows != "all" or TERMS[t.term].reads_labels for t in self.terms)

    @property
    def row_usage(self) -> str:
        """Which rows its batches need (trainables.data.batches.BatchSampler):

        - labeled: every term reads labeled rows only (Cond, CFG-labeled, CG-DLSM's classifier);
        - all: no term reads labels (the score model): uniform over all rows;
        - half: a classifier's CE / SC: half labeled, half unlabeled rows (paper 001 Sec. 3.4);
        - mixed: label-reading terms beside score-side ones (Joint-SC), or a conditional model on
          all rows (CFG-all): half the batch from the labeled rows, half uniformly from all rows;
          the score-side terms (DSM, QC) read only the uniform half, so their rows are not
          oversampled from the labeled ones.
        """
        subsets = {t.rows for t in self.terms}
        if subsets == {"labeled"}:
            return "labeled"
        if not self.uses_labels:
            return "all"
        score_side = any(TERMS[t.term].uniform_rows for t in self.terms)
        conditional_on_all = any(
            TERMS[t.term].reads_labels and t.rows == "all" and self.network == "conditional"
            for t in self.terms
        )
        return "mixed" if score_side or conditional_on_all else "half"


def artifact_config(artifact: Artifact, config: Any) -> Any:
    """The config an artifact trains with. The CG family's guidance classifier takes
    train.classifier_steps / classifier_batch_size where they are set, and model.classifier_head /
    energy_rank shape only it; every other artifact's config holds their defaults (the schedule
    knobs as 0), so they shape (and key) only that classifier."""
    import dataclasses

    train, model = config.train, config.model
    if artifact.name == "classifier":
        steps = train.classifier_steps or train.steps
        batch = train.classifier_batch_size or train.batch_size
        head = model.classifier_head
    else:
        steps, batch, head = train.steps, train.batch_size, "plain"
    rank = model.energy_rank if head in ENERGY_HEADS else type(model).energy_rank
    if (head, rank) != (model.classifier_head, model.energy_rank):
        model = dataclasses.replace(model, classifier_head=head, energy_rank=rank)
        config = dataclasses.replace(config, model=model)
    if (steps, batch, train.classifier_steps, train.classifier_batch_size) == (
        train.steps, train.batch_size, 0, 0,
    ):  # fmt: skip
        return config
    train = dataclasses.replace(
        train, steps=steps, batch_size=batch, classifier_steps=0, classifier_batch_size=0
    )
    return dataclasses.replace(config, train=train)


CE = LossTerm("ce", rows="labeled")
QC = LossTerm(
    "qc", weight_key="loss.lambda_qc"
)  # optional regulariser: weight 0 (default) skips it
SCORE_MODEL = Artifact(name="score", network="score", terms=(LossTerm("dsm"), QC))
# The evaluation classifier (image metrics): CE on the fully labeled training set, never guidance.
EVAL_CLASSIFIER = Artifact(name="eval_classifier", network="classifier", terms=(CE,))


def classifier(*terms: LossTerm, needs: tuple[str, ...] = ()) -> Artifact:
    """A guidance classifier artifact trained on the given terms."""
    return Artifact(name="classifier", network="classifier", terms=terms, needs=needs)


def conditional(*terms: LossTerm) -> Artifact:
    """A class-conditional score model (null label = num_classes)."""
    return Artifact(name="conditional", network="conditional", terms=terms)


# ---- methods ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """A conditional generation method as the papers define it."""

    name: str
    artifacts: tuple[Artifact, ...]  # trained in this order
    guidance: str  # cg (score + classifier gradient) | cfg | none (plain conditional model)

    @property
    def shares_score_model(self) -> bool:
        """True when it uses the study-wide unconditional score model."""
        return SCORE_MODEL in self.artifacts

    @property
    def tuned_keys(self) -> tuple[str, ...]:
        """The keys its search tunes: its tuned loss weights (the guidance scale is swept inside
        every trial instead; trainables.evaluation)."""
        weights = [t.weight_key for a in self.artifacts for t in a.terms if t.tuned]
        return tuple(dict.fromkeys(weights))


SC = names.LAMBDA_SC_KEY
JOINT = names.LAMBDA_JOINT_KEY
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("CG", artifacts=(SCORE_MODEL, classifier(CE)), guidance="cg"),
        Method(
            "CG-SC-labeled",
            artifacts=(
                SCORE_MODEL,
                classifier(CE, LossTerm("sc", rows="labeled", weight_key=SC, tuned=True)),
            ),
            guidance="cg",
        ),
        Method(
            "CG-SC-all",
            artifacts=(
                SCORE_MODEL,
                classifier(CE, LossTerm("sc", rows="all", weight_key=SC, tuned=True)),
            ),
            guidance="cg",
        ),
        Method(
            "CG-DLSM",
            artifacts=(
                SCORE_MODEL,
                classifier(
                    LossTerm("dlsm", rows="labeled"),
                    LossTerm("ce", rows="labeled", weight_key="loss.lambda_ce"),
                    needs=("score",),
                ),
            ),
            guidance="cg",
        ),
        Method(
            "Joint-SC",
            artifacts=(
                Artifact(
                    name="joint",
                    network="joint",
                    terms=(
                        LossTerm("joint_dsm"),
                        QC,
                        LossTerm("ce", rows="labeled", weight_key=JOINT, tuned=True),
                        LossTerm("joint_sc", rows="all", weight_key=JOINT, tuned=True),
                    ),
                ),
            ),
            guidance="cg",
        ),
        Method(
            "Cond", artifacts=(conditional(LossTerm("cond_dsm", rows="labeled")),), guidance="none"
        ),
        Method(
            "CFG-labeled",
            artifacts=(conditional(LossTerm("cfg_dsm", rows="labeled")),),
            guidance="cfg",
        ),
        Method(
            "CFG-all", artifacts=(conditional(LossTerm("cfg_dsm", rows="all")),), guidance="cfg"
        ),
    )
}


def get_method(name: str) -> Method:
    """Look up a method; ValueError naming the valid choices."""
    return METHODS[names.check_method(name)]


# ---- summing terms ------------------------------------------------------------------------------
def model_fns(
    networks: dict[str, nn.Module], *, num_classes: int, frozen: dict[str, nn.Module] | None = None
) -> ModelFns:
    """Build the callables from networks keyed by kind (score, classifier, joint, conditional)."""
    kw: dict[str, Any] = {"num_classes": num_classes}
    for kind, net in networks.items():
        if kind == "score":
            kw["score_fn"] = net
        elif kind == "classifier":
            kw["logits_fn"] = net
        elif kind == "joint":
            kw["score_fn"], kw["logits_fn"] = net.score, net.logits
        elif kind == "conditional":
            kw["cond_score_fn"] = net
        else:
            raise ValueError(f"unknown network kind {kind!r}")
    if frozen and "score" in frozen:
        kw["frozen_score_fn"] = frozen["score"]
    return ModelFns(**kw)


def _shared_classifier_forward(terms: list[LossTerm]) -> tuple[LossTerm, LossTerm] | None:
    """(ce, sc) when CE's rows lie inside SC's: both then come from one classifier forward."""
    ce = next((t for t in terms if t.term == "ce" and t.rows == "labeled"), None)
    sc = next((t for t in terms if t.term in SC_TERMS and t.rows in ("labeled", "all")), None)
    return (ce, sc) if ce is not None and sc is not None else None


def artifact_loss(
    artifact: Artifact, fns: ModelFns, batch: Batch, noise: Noise, loss_config: LossConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum an artifact's terms: total = sum_k w_k mean_{rows_k} term_k; also the per-example terms.

    Per-example values are keyed "<term>_<rows>". CE and SC share one classifier forward when CE's
    rows lie inside SC's (losses.ce_and_sc_losses: equal values, one forward instead of two).
    """
    total = torch.zeros((), dtype=batch.x.dtype, device=batch.x.device)
    per_example: dict[str, torch.Tensor] = {}
    active = [t for t in artifact.terms if t.weight(loss_config) != 0]
    shared = _shared_classifier_forward(active)
    if shared is not None:
        # CE and SC from one forward on SC's rows.
        ce_term, sc_term = shared
        rows = batch.rows(sc_term.rows)
        if rows.numel():
            part, nz = batch.take(rows), noise.take(rows)
            logits_fn = _need(fns.logits_fn, "classifier")
            weighting = loss_config.sc_weighting
            reduction = getattr(loss_config, SC_TERMS[sc_term.term])
            # CE's rows within SC's, by index (a mask on y would wait for a GPU)
            labeled = (
                batch.rows("labeled")
                if sc_term.rows == "all"
                else torch.arange(rows.numel(), device=rows.device)
            )
            ce, sc = losses.ce_and_sc_losses(
                logits_fn, part.x, nz.sigma, nz.z, part.y, weighting=weighting,
                reduction=reduction, labeled=labeled,
            )  # fmt: skip
            if ce.numel():
                per_example["ce_labeled"] = ce
                total = total + ce_term.weight(loss_config) * ce.mean()
            per_example[f"{sc_term.term}_{sc_term.rows}"] = sc
            total = total + sc_term.weight(loss_config) * sc.mean()
    for term in active:
        # Every other term on its own rows (a score-side term on the uniformly drawn ones).
        if shared is not None and term in shared:
            continue
        uniform = TERMS[term.term].uniform_rows and term.rows == "all"
        rows = batch.rows("uniform" if uniform else term.rows)
        if rows.numel() == 0:
            continue
        values = TERMS[term.term].fn(fns, batch.take(rows), noise.take(rows), loss_config)
        per_example[f"{term.term}_{term.rows}"] = values
        total = total + term.weight(loss_config) * values.mean()
    return total, per_example


# ---- guidance -----------------------------------------------------------------------------------
def guided_score_fn(
    method: Method, fns: ModelFns, y: torch.Tensor, scale: float, precision: str = "fp32"
) -> losses.ScoreFn:
    """The score function a method samples class y with, at guidance scale gamma (one meaning for
    every family): CG s + gamma grad log p(y|x); CFG (1 + w) s(y) - w s(null) with w = gamma - 1,
    which is classifier guidance at scale gamma with the implicit classifier. gamma = 1 is the plain
    conditional (the exact posterior for CG, the conditional model for CFG); Cond ignores gamma.
    precision: of CG's classifier gradient (sample.guidance_precision)."""
    if method.guidance == "cg":
        score_fn = _need(fns.score_fn, "score model")
        logits_fn = _need(fns.logits_fn, "classifier")
        return guidance.classifier_guidance(score_fn, logits_fn, y, scale, precision)
    cond_score_fn = _need(fns.cond_score_fn, "conditional score model")
    w = scale - 1.0 if method.guidance == "cfg" else 0.0
    return guidance.classifier_free_guidance(cond_score_fn, y, fns.num_classes, w)


# ---- which flat keys shape a trial --------------------------------------------------------------
_LOSS_SECTION = "loss."
# Keys of one data kind only: toy runs (model.arch mlp) never read the image keys, nor images the
# toy keys.
_IMAGE_ONLY = (
    "model.nf", "model.ch_mult", "model.num_res_blocks", "model.attn_resolutions",
    "model.dropout", "model.center_input", "data.root", "data.download", "data.image_size",
    "data.flip", "train.channels_last", "train.peak_tflops", "eval.fid", "eval.feature_extractor",
    "eval.inception_weights", "eval.cache_dir", "eval.num_reference", "eval.feature_batch_size",
    "eval.classifier_checkpoint", "eval.classifier_steps", "eval.classifier_sigma_max",
)  # fmt: skip
_TOY_ONLY = ("model.hidden", "model.depth", "model.embed_dim", "eval.sigmas")
_CLASSIFIER_ONLY = (
    "model.classifier_head", "model.energy_rank", "eval.sc_bands", "train.classifier_steps",
    "train.classifier_batch_size", "sample.guidance_precision",
)  # fmt: skip
_GUIDED_ONLY = (
    "sample.guidance_scale", "sample.guidance_grid", "sample.guidance_cap", "eval.val_num_per_class"
)  # fmt: skip


def shaping_keys(method_name: str, flat: dict[str, Any]) -> list[str]:
    """The flat keys of a trial config that shape a trial of this method: its own loss knobs (from
    the registry's terms), the keys of its data kind (toy or images), classifier and guidance keys
    only where it has them. What MLflow logs as the trial's params."""
    method = get_method(method_name)
    loss_keys = {k for a in method.artifacts for t in a.terms for k in t.knobs()}
    images = flat.get("model.arch") == "ncsnpp"
    dropped = set(_TOY_ONLY if images else _IMAGE_ONLY)
    if not any(a.network in ("classifier", "joint") for a in method.artifacts):
        dropped |= set(_CLASSIFIER_ONLY)
    if method.guidance == "none":
        dropped |= set(_GUIDED_ONLY)
    if flat.get("model.classifier_head") not in ENERGY_HEADS:
        dropped.add("model.energy_rank")
    return [
        key
        for key in flat
        if key not in dropped and (not key.startswith(_LOSS_SECTION) or key in loss_keys)
    ]
