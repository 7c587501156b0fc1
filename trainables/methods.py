"""The method registry: name -> networks trained, loss terms with their row subsets and weights, guidance.

One dict literal of frozen records; `artifact_loss` sums any artifact's terms. Names are exactly the
papers' labels and are used as MLflow tags, table rows and CLI choices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from trainables import losses
from trainables.data.batches import Batch, Noise

ROW_SUBSETS = ("labeled", "unlabeled", "all")


@dataclass(frozen=True)
class LossTerm:
    """One loss term: which function, on which rows, weighted by which flat config key (None = 1)."""

    fn: str  # key of TERM_FNS
    rows: str  # labeled | unlabeled | all
    weight_key: str | None = None  # e.g. "loss.lambda_sc"

    def weight(self, loss_config) -> float:  # noqa: ANN001 - LossConfig
        """The term's weight under a LossConfig."""
        return (
            1.0
            if self.weight_key is None
            else float(getattr(loss_config, self.weight_key.split(".", 1)[1]))
        )


@dataclass(frozen=True)
class Artifact:
    """A trained network: its kind, its loss terms, and the artifacts it reads frozen."""

    name: str  # cache identity within a study: score, classifier, joint, conditional
    network: str  # score | classifier | joint | conditional
    terms: tuple[LossTerm, ...]
    needs: tuple[str, ...] = ()  # artifacts trained first and frozen (EMA weights)

    @property
    def uses_labels(self) -> bool:
        """Whether any term reads labels (then the artifact depends on the label split)."""
        return any(t.rows != "all" or t.fn in LABEL_TERMS for t in self.terms)

    @property
    def row_usage(self) -> str:
        """Which rows its batches need: labeled only, all rows, or half labeled / half unlabeled."""
        subsets = {t.rows for t in self.terms}
        if subsets == {"labeled"}:
            return "labeled"
        if subsets <= {"all"} and not self.uses_labels:
            return "all"
        return "half"


@dataclass(frozen=True)
class Method:
    """A conditional generation method as the papers define it."""

    name: str
    artifacts: tuple[Artifact, ...]  # trained in this order
    guidance: str  # classifier | cfg
    search_keys: tuple[str, ...] = field(default=())  # loss weights its search space tunes

    @property
    def shares_score_model(self) -> bool:
        """True when it uses the study-wide unconditional score model."""
        return SCORE_MODEL in self.artifacts


@dataclass(frozen=True)
class ModelFns:
    """The callables loss terms and guidance read, built from trained networks."""

    score_fn: losses.ScoreFn | None = None
    logits_fn: losses.LogitsFn | None = None
    cond_score_fn: losses.CondScoreFn | None = None
    frozen_score_fn: losses.ScoreFn | None = None
    num_classes: int = 0


def _need(fn, what: str):  # noqa: ANN001, ANN202
    if fn is None:
        raise ValueError(f"this loss term needs a {what}, which the artifact does not provide")
    return fn


TERM_FNS: dict[str, Callable[[ModelFns, Batch, Noise, object], torch.Tensor]] = {
    "dsm": lambda f, b, n, c: losses.dsm_loss(_need(f.score_fn, "score model"), b.x, n.sigma, n.z),
    "ce": lambda f, b, n, c: losses.ce_loss(
        _need(f.logits_fn, "classifier"), b.x, n.sigma, n.z, b.y
    ),
    "sc": lambda f, b, n, c: losses.sc_loss(
        _need(f.logits_fn, "classifier"), b.x, n.sigma, n.z, weighting=c.sc_weighting
    ),
    "dlsm": lambda f, b, n, c: losses.dlsm_loss(
        _need(f.logits_fn, "classifier"),
        _need(f.frozen_score_fn, "frozen score model"),
        b.x,
        n.sigma,
        n.z,
        b.y,
        power=c.dlsm_power,
    ),
    "cond_dsm": lambda f, b, n, c: losses.cond_dsm_loss(
        _need(f.cond_score_fn, "conditional score model"), b.x, n.sigma, n.z, b.y
    ),
    "cfg_dsm": lambda f, b, n, c: losses.cfg_dsm_loss(
        _need(f.cond_score_fn, "conditional score model"),
        b.x,
        n.sigma,
        n.z,
        b.y,
        n.u,
        p_uncond=c.p_uncond,
        null_label=f.num_classes,
    ),
    "qc": lambda f, b, n, c: losses.qc_loss(
        _need(f.score_fn, "score model"), b.x, n.sigma, n.z, n.v
    ),
}
LABEL_TERMS = frozenset({"ce", "dlsm", "cond_dsm", "cfg_dsm"})

QC = LossTerm("qc", "all", "loss.lambda_qc")  # optional: weight 0 by default skips it
SCORE_MODEL = Artifact("score", "score", (LossTerm("dsm", "all"), QC))

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "CG",
            (SCORE_MODEL, Artifact("classifier", "classifier", (LossTerm("ce", "labeled"),))),
            "classifier",
        ),
        Method(
            "CG-SC-labeled",
            (
                SCORE_MODEL,
                Artifact(
                    "classifier",
                    "classifier",
                    (LossTerm("ce", "labeled"), LossTerm("sc", "labeled", "loss.lambda_sc")),
                ),
            ),
            "classifier",
            ("loss.lambda_sc",),
        ),
        Method(
            "CG-SC-all",
            (
                SCORE_MODEL,
                Artifact(
                    "classifier",
                    "classifier",
                    (LossTerm("ce", "labeled"), LossTerm("sc", "all", "loss.lambda_sc")),
                ),
            ),
            "classifier",
            ("loss.lambda_sc",),
        ),
        Method(
            "CG-DLSM",
            (
                SCORE_MODEL,
                Artifact(
                    "classifier",
                    "classifier",
                    (LossTerm("dlsm", "labeled"), LossTerm("ce", "labeled", "loss.lambda_ce")),
                    needs=("score",),
                ),
            ),
            "classifier",
        ),
        Method(
            "Joint-SC",
            (
                Artifact(
                    "joint",
                    "joint",
                    (
                        LossTerm("dsm", "all"),
                        QC,
                        LossTerm("ce", "labeled", "loss.lambda_joint"),
                        LossTerm("sc", "all", "loss.lambda_joint"),
                    ),
                ),
            ),
            "classifier",
            ("loss.lambda_joint",),
        ),
        Method(
            "Cond",
            (Artifact("conditional", "conditional", (LossTerm("cond_dsm", "labeled"),)),),
            "conditional",
        ),
        Method(
            "CFG-labeled",
            (Artifact("conditional", "conditional", (LossTerm("cfg_dsm", "labeled"),)),),
            "cfg",
        ),
        Method(
            "CFG-all",
            (Artifact("conditional", "conditional", (LossTerm("cfg_dsm", "all"),)),),
            "cfg",
        ),
    )
}


def get_method(name: str) -> Method:
    """Look up a method; ValueError naming the valid choices."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {list(METHODS)}")
    return METHODS[name]


def model_fns(
    networks: dict[str, nn.Module], *, num_classes: int, frozen: dict[str, nn.Module] | None = None
) -> ModelFns:
    """Build the callables from networks keyed by kind (score, classifier, joint, conditional)."""
    kw: dict = {"num_classes": num_classes}
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
    ce = next((t for t in terms if t.fn == "ce" and t.rows == "labeled"), None)
    sc = next((t for t in terms if t.fn == "sc" and t.rows in ("labeled", "all")), None)
    return (ce, sc) if ce is not None and sc is not None else None


def artifact_loss(
    artifact: Artifact, fns: ModelFns, batch: Batch, noise: Noise, loss_config
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # noqa: ANN001
    """Sum an artifact's terms: total = sum_k w_k mean_{rows_k} term_k; also the per-example terms."""
    total = torch.zeros((), dtype=batch.x.dtype, device=batch.x.device)
    per_example: dict[str, torch.Tensor] = {}
    active = [t for t in artifact.terms if t.weight(loss_config) != 0]
    shared = _shared_classifier_forward(active)
    if shared is not None:
        ce_term, sc_term = shared
        rows = batch.rows(sc_term.rows)
        if rows.numel():
            part, nz = batch.take(rows), noise.take(rows)
            ce, sc = losses.ce_and_sc_losses(
                _need(fns.logits_fn, "classifier"),
                part.x,
                nz.sigma,
                nz.z,
                part.y,
                weighting=loss_config.sc_weighting,
            )
            if ce.numel():
                per_example["ce_labeled"] = ce
                total = total + ce_term.weight(loss_config) * ce.mean()
            per_example[f"sc_{sc_term.rows}"] = sc
            total = total + sc_term.weight(loss_config) * sc.mean()
    for term in active:
        weight = term.weight(loss_config)
        if shared is not None and term in shared:
            continue
        rows = batch.rows(term.rows)
        if rows.numel() == 0:
            continue
        values = TERM_FNS[term.fn](fns, batch.take(rows), noise.take(rows), loss_config)
        per_example[f"{term.fn}_{term.rows}"] = values
        total = total + weight * values.mean()
    return total, per_example


GUIDANCE_BUILDERS: dict[str, Callable[[ModelFns, torch.Tensor, float], losses.ScoreFn]] = {
    "classifier": lambda f, y, scale: _guidance().classifier_guidance(
        _need(f.score_fn, "score model"), _need(f.logits_fn, "classifier"), y, scale
    ),
    "cfg": lambda f, y, scale: _guidance().classifier_free_guidance(
        _need(f.cond_score_fn, "conditional score model"), y, f.num_classes, scale
    ),
    "conditional": lambda f, y, scale: _guidance().classifier_free_guidance(
        _need(f.cond_score_fn, "conditional score model"), y, f.num_classes, 0.0
    ),
}


def _guidance():  # noqa: ANN202
    from trainables import guidance

    return guidance


def guided_score_fn(method: Method, fns: ModelFns, y: torch.Tensor, scale: float) -> losses.ScoreFn:
    """The score function a method samples class y with (guidance scale = lambda_CG, or w for CFG)."""
    return GUIDANCE_BUILDERS[method.guidance](fns, y, scale)
