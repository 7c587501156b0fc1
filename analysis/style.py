"""How methods and metrics look wherever the analysis shows them: the order (the registry's, the
papers' table order), one fixed colour and marker per method (its registry record's:
trainables.registry.Method), short metric names for the console. Every table and figure reads this
module, so a method keeps its colour from figure to figure."""

from __future__ import annotations

from collections.abc import Iterable

from trainables.names import METHOD_RECORDS, METHODS

# Console names of the metrics (the files keep the full names).
SHORT_NAMES = {
    "guided_score_cos": "score cos",
    "gen_accuracy": "gen acc",
    "gen_accuracy_exact": "gen acc (exact)",
    "energy_distance": "energy dist",
    "inception_score": "IS",
    "intra_fid": "intra-FID",
    "fid": "FID",
    "clf_accuracy": "clf acc",
    "clf_ece": "clf ECE",
    "grad_cos": "grad cos",
    "grad_mse": "grad MSE",
    "guided_dsm": "guided DSM",
    "score_dsm": "score DSM",
    "sc_ratio": "SC ratio",
    "bayes_gen_accuracy": "Bayes gen acc",
    "bayes_gen_accuracy_matched": "Bayes acc (matched)",
    "sample_var_ratio": "var ratio",
    "cond_log_likelihood": "log-lik/dim",
    "score_cos": "uncond cos",
}


def method_order(methods: Iterable[str]) -> list[str]:
    """The given methods in registry order (unknown names last, in their order)."""
    present = list(dict.fromkeys(methods))
    known = [m for m in METHODS if m in present]
    return known + [m for m in present if m not in METHODS]


def color(method: str) -> str:
    """The method's fixed colour, its registry record's (grey for a name outside the registry)."""
    record = METHOD_RECORDS.get(method)
    return record.color if record is not None else "#999999"


def marker(method: str) -> str:
    """The method's fixed marker, its registry record's (a circle outside the registry)."""
    record = METHOD_RECORDS.get(method)
    return record.marker if record is not None else "o"


# What a figure's axis says: a readable name and its direction (higher or lower is better).
READABLE = {
    "fid": ("FID", -1),
    "intra_fid": ("intra-FID", -1),
    "inception_score": ("Inception score", 1),
    "gen_accuracy": ("generation accuracy", 1),
    "gen_accuracy_exact": ("generation accuracy of exact samples", 1),
    "guided_score_cos": ("guided score cosine to the exact conditional score", 1),
    "energy_distance": ("energy distance to held-out data", -1),
    "grad_cos": ("classifier gradient cosine to the exact one", 1),
    "grad_mse": ("classifier gradient squared error", -1),
    "score_cos": ("score cosine to the exact score", 1),
    "guided_dsm": ("guided denoising score matching loss", -1),
    "score_dsm": ("denoising score matching loss", -1),
    "clf_accuracy": ("classifier accuracy", 1),
    "clf_ece": ("classifier calibration error (ECE)", -1),
    "sc_ratio": ("SC residual ratio (1 = nothing learned)", -1),
    "precision": ("precision", 1),
    "recall": ("recall", 1),
    "density": ("density", 1),
    "coverage": ("coverage", 1),
    "bayes_gen_accuracy": ("generation accuracy, exact posterior", 1),
    "bayes_gen_accuracy_matched": ("generation accuracy, exact posterior (matched)", 1),
    "cond_log_likelihood": ("exact log-likelihood per dimension", 1),
    "sample_var_ratio": ("sample variance / the twin's (1 = right)", 0),
}
# Each metric's ceiling where a run reports one (exact samples scored the same way).
CEILINGS = {
    "gen_accuracy": "gen_accuracy_exact",  # the toy: its exact conditional samples
    "bayes_gen_accuracy": "gen_accuracy_exact",
    "bayes_gen_accuracy_matched": "gen_accuracy_exact_matched",
}


def axis_label(metric: str, prefix: str = "") -> str:
    """'generation accuracy ↑': the readable name and the direction that is better (the raw key
    for a metric this table does not know)."""
    name, direction = READABLE.get(metric, (metric, 0))
    arrow = {1: " ↑", -1: " ↓"}.get(direction, "")
    return f"{prefix}{name}{arrow}"


def short(metric: str) -> str:
    """The console name of a metric."""
    return SHORT_NAMES.get(metric, metric)
