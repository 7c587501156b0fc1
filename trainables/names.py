"""Names every package shares, torch-free: methods, the keys each tunes, metrics, trial record
files.

search_spaces, analysis and the spec validator read the names here; the records behind them (terms,
artifacts, methods) are the registry's (trainables.registry, which is built on these names).
tests/trainables/test_names.py fails when the registry, the loaders or the evaluation code stop
agreeing with what is written here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

# ---- methods -----------------------------------------------------------------------------------
# One place per fact about a method: its record in the registry (trainables.registry.Method: name,
# artifacts and loss terms, guidance, colour). The registry registers every record here (the
# package's __init__ imports it), and the tables below are live views of the records, so a method
# registered later (a ninth method in a test fixture) reaches every table, figure, search space and
# spec check that reads them.
METHOD_RECORDS: dict[str, Any] = {}  # name -> trainables.registry.Method, in table order


class _MethodNames(Sequence[str]):
    """The methods' names, exactly the papers' labels, in table order (MLflow tags, table rows,
    CLI choices)."""

    def __getitem__(self, index):  # noqa: ANN001, ANN204 - Sequence's own signature
        return tuple(METHOD_RECORDS)[index]

    def __len__(self) -> int:
        return len(METHOD_RECORDS)

    def __repr__(self) -> str:
        return repr(tuple(METHOD_RECORDS))


class _TunedKeys(Mapping[str, tuple[str, ...]]):
    """The keys each method's search tunes inside its cell: its tuned loss weights. The guidance
    scale is not one of them: it only changes sampling, so every trial sweeps
    sample.guidance_grid on the validation split (trainables.evaluation) and reports its choice."""

    def __getitem__(self, method: str) -> tuple[str, ...]:
        return METHOD_RECORDS[method].tuned_keys

    def __iter__(self) -> Iterator[str]:
        return iter(METHOD_RECORDS)

    def __len__(self) -> int:
        return len(METHOD_RECORDS)


class _MethodsWhere(AbstractSet[str]):
    """The methods whose record satisfies a predicate."""

    def __init__(self, predicate: Callable[[Any], bool]) -> None:
        self.predicate = predicate

    def __contains__(self, method: object) -> bool:
        record = METHOD_RECORDS.get(method) if isinstance(method, str) else None
        return record is not None and self.predicate(record)

    def __iter__(self) -> Iterator[str]:
        return iter([m for m, r in METHOD_RECORDS.items() if self.predicate(r)])

    def __len__(self) -> int:
        return sum(1 for _ in self)


METHODS = _MethodNames()
TUNED_KEYS = _TunedKeys()
# Methods that sample with guidance (Cond samples its conditional model as it is).
GUIDED = _MethodsWhere(lambda record: record.guidance != "none")
# Methods whose networks give a classifier (logits) and an unconditional score.
WITH_CLASSIFIER = _MethodsWhere(lambda record: record.gives_classifier)
WITH_SCORE = WITH_CLASSIFIER

METHOD_KEY = "method"
LABEL_PERCENT_KEY = (
    "data.label_percent"  # the spec's label_percents list sets it, one value per cell
)
GUIDANCE_SCALE_KEY = "sample.guidance_scale"
# A stage trial (study.stages) trains a network other trials share, then stops: its params carry
# STAGE_KEY = the artifact to stop after, or EVALUATION_STAGE (the image evaluator). Its MLflow run
# is tagged stage = SHARED_STAGE and stays out of every table.
STAGE_KEY = "stage"
# The seeds a `study final` trial is given (each of its seeds; its params carry them, a search
# trial's do not).
SEED_KEYS = ("train.seed", "data.seed", "data.split_seed", "sample.seed")
EVALUATION_STAGE = "evaluation"
SHARED_STAGE = "shared"
STAGE_METRIC = "stage_trial"  # 1.0 in a stage trial's final result
LAMBDA_SC_KEY = "loss.lambda_sc"
LAMBDA_JOINT_KEY = "loss.lambda_joint"


def check_method(name: str) -> str:
    """The name if it is a method; ValueError naming the valid choices otherwise."""
    if name not in METHOD_RECORDS:
        raise ValueError(f"unknown method {name!r}; valid: {list(METHODS)}")
    return name


# ---- metrics -----------------------------------------------------------------------------------
# Scalar metrics a finished trial reports (per-class values "<metric>_class<k>" come beside them).
TOY_METRICS = frozenset(
    {
        "guided_score_cos",
        "gen_accuracy",
        "gen_accuracy_exact",  # exact conditional samples: the ceiling of gen_accuracy
        "energy_distance",
        "sample_finite_fraction",
    }
)
TOY_CLASSIFIER_METRICS = frozenset(
    {
        "grad_mse",
        "grad_cos",
        "cond_score_cos",
        "cond_score_cos_scaled",
        "clf_accuracy",
        "clf_ece",
        "sc_ratio",  # + sc_ratio_band<i>, sc_ratio_radial_band<i> (eval.sc_bands)
    }
)
TOY_SCORE_METRICS = frozenset({"score_cos"})
IMAGE_METRICS = frozenset({"guided_dsm", "sample_finite_fraction"})
IMAGE_CLASSIFIER_METRICS = frozenset({"clf_accuracy", "clf_ece", "sc_ratio"})  # + per sigma / band
IMAGE_SCORE_METRICS = frozenset({"score_dsm"})
# The image twin's exact metrics (trainables.evaluation.twin; + <metric>_band<i> per noise band).
TWIN_METRICS = frozenset(
    {
        "guided_score_cos",
        "bayes_gen_accuracy",  # the exact posterior's accuracy on the samples
        "bayes_gen_accuracy_matched",  # the same at the samples' own noise level
        "gen_accuracy_exact_matched",  # its ceiling
        "matched_sigma",
        "gen_accuracy_exact",  # exact samples of the twin: the ceiling (its Bayes accuracy)
        "cond_log_likelihood",
        "cond_log_likelihood_exact",
        "sample_var_ratio",
    }
)
TWIN_CLASSIFIER_METRICS = frozenset({"grad_cos", "grad_mse"})
TWIN_SCORE_METRICS = frozenset({"score_cos"})
GENERATION_METRICS = frozenset(
    {
        "fid",
        "intra_fid",
        "inception_score",
        "inception_score_std",
        "gen_accuracy",
        "fid_num_samples",
        "feature_dim",
        "intra_fid_num_samples_per_class",
        "fid_warning",
        "eval_classifier_test_accuracy",
        "reference_stats_reused",
        # precision / recall / density / coverage (eval.prdc_k), overall and their class means
        "precision",
        "recall",
        "density",
        "coverage",
        "intra_precision",
        "intra_recall",
        "intra_density",
        "intra_coverage",
    }
)


def reported_metrics(
    method: str, *, images: bool, generation: bool = True, exact: bool = False
) -> frozenset[str]:
    """The scalar metrics a finished trial of this method reports (images: with FID etc. if
    generation, and the exact metrics on the twin if exact)."""
    check_method(method)
    if not images:
        out = set(TOY_METRICS)
        out |= TOY_CLASSIFIER_METRICS if method in WITH_CLASSIFIER else set()
        out |= TOY_SCORE_METRICS if method in WITH_SCORE else set()
        return frozenset(out)
    out = set(IMAGE_METRICS) | (GENERATION_METRICS if generation else set())
    out |= IMAGE_CLASSIFIER_METRICS if method in WITH_CLASSIFIER else set()
    out |= IMAGE_SCORE_METRICS if method in WITH_SCORE else set()
    if exact:
        out |= TWIN_METRICS
        out |= TWIN_CLASSIFIER_METRICS if method in WITH_CLASSIFIER else set()
        out |= TWIN_SCORE_METRICS if method in WITH_SCORE else set()
    return frozenset(out)


# ---- selection: validation split and the guidance sweep ---------------------------------------
VALIDATION_PREFIX = "val/"  # val/<metric>: the validation split's value (the searcher reads it)
CHOSEN_SCALE = "guidance_scale"  # the metric holding the scale a trial chose on validation
GUIDANCE_CAP = "guidance_cap"  # the metric holding the largest scale its sweep could reach
# Validation metrics kept per swept scale (beside the objectives): paper 001 App. D's curves.
CURVE_METRICS = (
    "fid",
    "intra_fid",
    "inception_score",
    "gen_accuracy",
    "bayes_gen_accuracy",
    "bayes_gen_accuracy_matched",
    "guided_dsm",
    "guided_score_cos",
    "energy_distance",
)
CURVE_PREFIX = "curve/"


# The samples per class a swept scale was measured on (the guidance sweep's race drops scales
# early: trainables.sweep), a curve entry beside the metrics.
CURVE_SAMPLES = "val_samples_per_class"


def curve_key(metric: str, scale: float) -> str:
    """The flat metric holding metric's validation value at one swept scale, e.g.
    curve/gen_accuracy/g1.5."""
    return f"{CURVE_PREFIX}{metric}/g{scale:g}"


def parse_curve_key(key: str) -> tuple[str, float] | None:
    """(metric, scale) of a curve_key; None for any other key."""
    if not key.startswith(CURVE_PREFIX) or "/g" not in key:
        return None
    metric, _, scale = key.removeprefix(CURVE_PREFIX).rpartition("/g")
    try:
        return metric, float(scale)
    except ValueError:
        return None


# A trial's diagnostics: per guidance scale (curve/...), per class (..._class<k>), per noise band
# (..._band<k>) and which networks it reused (artifact_reused/...), validation ones included. MLflow
# gets them as one table artifact of the final result (DIAGNOSTICS_FILE), not as metrics, so that a
# run's metric list holds what a researcher compares (study.tracking; analysis.runs reads both).
DIAGNOSTICS_FILE = "diagnostics.json"
_DIAGNOSTIC = re.compile(r"^(?:val/)?(?:curve/|artifact_reused/|.*_(?:class|band)\d+$)")


def is_diagnostic(key: str) -> bool:
    """Whether a result key is a diagnostic (see DIAGNOSTICS_FILE), not a headline metric."""
    return _DIAGNOSTIC.match(key) is not None


# ---- dataset names (the loaders in trainables.data check that they draw exactly these) ----------
TOY_DATASETS = ("gmm2", "gmm3", "overlap2", "moons")  # trainables.data.toy
TOY_CLASSES = {"gmm2": 2, "gmm3": 3, "overlap2": 2, "moons": 2}  # each toy set's class count
IMAGE_DATASETS = (
    "cifar10",
    "cifar100",
    "tiny-images",
    "shapes",
    "folder",
    "twin",  # the Gaussian-mixture twin of an image set, exact scores (trainables.data.twin)
)  # trainables.data.images


# ---- trial records: what the worker writes for the driver, under <study>/trials/<trial id>/
# -------
FINAL_RECORD = "final.json"  # the final result (present: the trial finished)
TAGS_RECORD = "tags.json"  # MLflow tags (feature extractor, evaluation classifier, warnings)
ARTIFACTS_RECORD = "artifacts.json"  # artifact name -> its folder in the artifact cache
SAMPLES_IMAGE = "samples.png"  # grid of guided samples (images)
CURVE_IMAGE = "guidance_curve.png"  # the trial's validation guidance curve
ERROR_RECORD = "error.json"  # why a trial failed: exception type, message, step
SPENT_RECORD = "spent.json"  # the training cost so far, after each network trained into the cache
LOST_RECORD = "lost.json"  # written by the driver when its session ended and the trial had not
RUN_RECORD = "mlflow_run_id.txt"  # the trial's MLflow run id, written by the driver at its start
HISTORY_RECORD = "history.json"  # each epoch's numbers (the learning curves), by the driver
PARAMS_RECORD = "params.json"  # the trial's sampled params (method, label %, knobs), at its start
SPEC_FILE = "spec.yaml"  # a study directory's validated spec


# ---- how a table cell is spelled wherever a user sees it ---------------------------------------
# MLflow run names and tags, Optuna study names, the console, exported specs and the tidy CSV all
# spell a (method, label %) cell the same way: "CG-SC-all@5%" (no spaces: it is also a file name).
KNOB_LABELS = {LAMBDA_SC_KEY: "lambda_SC", LAMBDA_JOINT_KEY: "lambda_joint"}


def knob_label(key: str) -> str:
    """A tuned key's short label ('lambda_SC'); a knob without one: its name in the loss section."""
    return KNOB_LABELS.get(key, key.removeprefix("loss."))


def cell_label(method: str, label_percent: float) -> str:
    """The one spelling of a cell, e.g. 'CG-SC-all@5%'."""
    return f"{method}@{float(label_percent):g}%"


def knob_text(method: str, values: dict) -> str:
    """The cell's tuned knobs as 'lambda_SC=0.1' ('' for a method without knobs)."""
    shown = [
        f"{knob_label(k)}={float(values[k]):.3g}"
        for k in TUNED_KEYS.get(method, ())
        if k in values and values[k] is not None
    ]
    return ", ".join(shown)


# ---- sampling cost -------------------------------------------------------------------------------
SAMPLER_SCORE_EVALS = {
    "pc": 2,
    "em": 1,
    "ode": 2,
}  # score evaluations per step (trainables.samplers)
