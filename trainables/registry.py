"""The method registry: loss terms, the artifacts (trained networks) they make, and the methods.

Three tables of frozen records, each the single source of its facts; no torch (a spec is
validated, a study planned and its MLflow params chosen from them without it):

- TERMS: one record per loss term: the loss knobs it reads besides its weight (they enter the
  artifact cache key), whether it reads labels (half-labeled batches), which rows a score-side term
  reads and whether it needs a double backward. Its per-example function is trainables.methods'
  TERM_FNS (a test keeps the two tables' keys equal).
- Artifacts: a network kind plus the terms (with their row subset and weight key) it is trained on,
  and the artifacts it reads frozen.
- METHODS: one record per method, named exactly as the papers, with its artifacts and guidance.

The names and tuned keys other packages read are in trainables.names (a test keeps them equal to
this registry).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from trainables import names
from trainables.config import ENERGY_HEADS, LossConfig


# ---- loss terms ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Term:
    """What a loss term reads and needs (its function: trainables.methods.TERM_FNS)."""

    knobs: tuple[str, ...] = ()  # flat loss keys it reads besides the weight: part of the cache key
    reads_labels: bool = False  # reads y: its artifact depends on the label split
    # A score-side term (DSM, QC): in a batch with a labeled half it reads only the rows drawn
    # uniformly from all data (paper 001 prescribes half-labeled batches for the classifier only).
    uniform_rows: bool = False
    # Differentiates an input gradient with respect to the parameters (create_graph): compiled
    # graphs have no double backward, so train.compile leaves such an artifact eager.
    double_backward: bool = False


TERMS: dict[str, Term] = {
    "dsm": Term(knobs=("loss.dsm_reduction",), uniform_rows=True),
    "ce": Term(reads_labels=True),
    "sc": Term(knobs=("loss.sc_weighting", "loss.sc_reduction"), double_backward=True),
    "dlsm": Term(
        knobs=("loss.dlsm_power", "loss.dlsm_reduction"), reads_labels=True, double_backward=True
    ),
    "cond_dsm": Term(knobs=("loss.dsm_reduction",), reads_labels=True),
    "cfg_dsm": Term(knobs=("loss.p_uncond", "loss.dsm_reduction"), reads_labels=True),
    "qc": Term(uniform_rows=True, double_backward=True),
    # Joint-SC's own DSM and SC: the same losses under the joint family's reduction.
    "joint_dsm": Term(knobs=("loss.joint_reduction",), uniform_rows=True),
    "joint_sc": Term(knobs=("loss.sc_weighting", "loss.joint_reduction"), double_backward=True),
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
    color: str = ""  # its colour in every figure ("" = the next of EXTRA_COLORS)
    marker: str = "o"  # its marker in every figure

    @property
    def gives_classifier(self) -> bool:
        """Its networks give a classifier (logits) and an unconditional score."""
        return any(a.network in ("classifier", "joint") for a in self.artifacts)

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
# Colour-blind-safe (Okabe-Ito, plus black and two greys): the CG family in blues / greens, the
# conditional models in warm colours. A method registered without a colour takes the next of
# EXTRA_COLORS (grey stays the colour of a name outside the registry).
EXTRA_COLORS = ("#7570B3", "#1B9E77", "#E7298A", "#66A61E", "#A6761D")
METHODS: dict[str, Method] = names.METHOD_RECORDS  # the live tables of trainables.names read it


def register(method: Method) -> Method:
    """Add a method to the registry (after the papers' eight: its table order); ValueError for a
    name already taken. Every table, figure, search space and spec check reads it from here on."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    if not method.color:
        extra = sum(1 for m in METHODS.values() if m.color in EXTRA_COLORS)
        method = dataclasses.replace(method, color=EXTRA_COLORS[extra % len(EXTRA_COLORS)])
    METHODS[method.name] = method
    return method


for _method in (
    Method("CG", (SCORE_MODEL, classifier(CE)), "cg", "#000000", "o"),
    Method(
        "CG-SC-labeled",
        artifacts=(
            SCORE_MODEL,
            classifier(CE, LossTerm("sc", rows="labeled", weight_key=SC, tuned=True)),
        ),
        guidance="cg",
        color="#0072B2",
        marker="s",
    ),
    Method(
        "CG-SC-all",
        artifacts=(
            SCORE_MODEL,
            classifier(CE, LossTerm("sc", rows="all", weight_key=SC, tuned=True)),
        ),
        guidance="cg",
        color="#56B4E9",
        marker="D",
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
        color="#009E73",
        marker="^",
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
        color="#CC79A7",
        marker="v",
    ),
    Method(
        "Cond",
        artifacts=(conditional(LossTerm("cond_dsm", rows="labeled")),),
        guidance="none",
        color="#D55E00",
        marker="P",
    ),
    Method(
        "CFG-labeled",
        artifacts=(conditional(LossTerm("cfg_dsm", rows="labeled")),),
        guidance="cfg",
        color="#E69F00",
        marker="X",
    ),
    Method(
        "CFG-all",
        artifacts=(conditional(LossTerm("cfg_dsm", rows="all")),),
        guidance="cfg",
        color="#8C6D31",
        marker="*",
    ),
):
    register(_method)


def get_method(name: str) -> Method:
    """Look up a method; ValueError naming the valid choices."""
    return METHODS[names.check_method(name)]


# ---- which flat keys shape a trial --------------------------------------------------------------
_LOSS_SECTION = "loss."
# Keys of one data kind only: toy runs (model.arch mlp) never read the image keys, nor images the
# toy keys.
_IMAGE_ONLY = (
    "model.nf", "model.ch_mult", "model.num_res_blocks", "model.attn_resolutions",
    "model.dropout", "model.center_input", "data.root", "data.download", "data.image_size",
    "data.flip", "train.channels_last", "train.peak_tflops", "eval.fid", "eval.feature_extractor",
    "eval.inception_weights", "eval.cache_dir", "eval.shared_cache_dir", "eval.num_reference",
    "eval.feature_batch_size", "eval.classifier_checkpoint", "eval.classifier_steps",
    "eval.classifier_sigma_max",
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
