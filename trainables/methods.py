"""The methods' computations: each loss term's per-example function, an artifact's summed loss,
and a method's guided sampling score, over the registry (trainables.registry: the terms, the
artifacts and the methods, re-exported here).

`artifact_loss` sums any artifact's terms; `guided_score_fn` builds any method's sampling score.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainables import guidance, losses
from trainables.config import LossConfig
from trainables.data.batches import Batch, Noise
from trainables.registry import (  # noqa: F401 - the registry, as the methods' users import it
    CE,
    EVAL_CLASSIFIER,
    METHODS,
    QC,
    ROWS,
    SC_TERMS,
    SCORE_MODEL,
    TERMS,
    Artifact,
    LossTerm,
    Method,
    Term,
    artifact_config,
    classifier,
    conditional,
    get_method,
    shaping_keys,
)


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


TERM_FNS: dict[str, TermFn] = {
    "dsm": _dsm,
    "ce": _ce,
    "sc": _sc,
    "dlsm": _dlsm,
    "cond_dsm": _cond_dsm,
    "cfg_dsm": _cfg_dsm,
    "qc": _qc,
    "joint_dsm": _joint_dsm,
    "joint_sc": _joint_sc,
}  # per-example values of each of trainables.registry.TERMS


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
        values = TERM_FNS[term.term](fns, batch.take(rows), noise.take(rows), loss_config)
        per_example[f"{term.term}_{term.rows}"] = values
        total = total + term.weight(loss_config) * values.mean()
    return total, per_example


# ---- guidance -----------------------------------------------------------------------------------
def guided_score_fn(
    method: Method,
    fns: ModelFns,
    y: torch.Tensor,
    scale: guidance.Scale,
    precision: str = "fp32",
) -> losses.ScoreFn:
    """The score function a method samples class y with, at guidance scale gamma (one meaning for
    every family): CG s + gamma grad log p(y|x); CFG (1 + w) s(y) - w s(null) with w = gamma - 1,
    which is classifier guidance at scale gamma with the implicit classifier. gamma = 1 is the plain
    conditional (the exact posterior for CG, the conditional model for CFG); Cond ignores gamma.
    precision: of CG's classifier gradient (sample.guidance_precision). scale: a float, or one per
    row of y (a batch carrying several scales)."""
    if method.guidance == "cg":
        score_fn = _need(fns.score_fn, "score model")
        logits_fn = _need(fns.logits_fn, "classifier")
        return guidance.classifier_guidance(score_fn, logits_fn, y, scale, precision)
    cond_score_fn = _need(fns.cond_score_fn, "conditional score model")
    w = scale - 1.0 if method.guidance == "cfg" else 0.0
    return guidance.classifier_free_guidance(cond_score_fn, y, fns.num_classes, w)
