"""The study's views in the MLflow UI: one shared view state per kind of run on the study's
experiment, and the experiment's description linking them.

MLflow 3's runs page loads a view state (its filter, sort and visible columns) from the experiment
tag `mlflow.sharedViewState.<key>` when its URL carries `?viewStateShareKey=<key>`: what the UI's
own "Share" button writes. The study writes one per kind of run when its experiment is created (and
again at each session, so a changed objective shows): the search trials (what `study ui` opens), the
stage trials that trained the shared networks, the seeds of `study final`, and the study's parent
run. The runs' `role` tag tells them apart (study.tracking). What a URL cannot set: docs/guide.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from trainables.names import (
    CHOSEN_SCALE,
    IMAGE_DATASETS,
    LAMBDA_JOINT_KEY,
    LAMBDA_SC_KEY,
    TUNED_KEYS,
    VALIDATION_PREFIX,
)

VIEW_TAG = "mlflow.sharedViewState."
DESCRIPTION_TAG = "mlflow.note.content"  # the experiment's description (Markdown) in the UI
# The UI's layout for model training, not its GenAI one (study.cli prints every link with it).
MODEL_TRAINING_VIEW = "workflowType=machine_learning"

# The role tag of each kind of run: the study's parent run, a cell's search trial, a stage trial
# training a shared network, a seed of `study final`.
ROLES = {"study": "study", "search": "trial", "shared": "shared", "final": "final"}
VIEW_TITLES = {
    "search": "search trials (the cells' searches)",
    "shared": "stage trials (the shared networks)",
    "final": "final runs (the seeds of `study final`)",
    "study": "the study's parent run",
}
# Three headline metrics beside the objective, by kind of data: the papers' image metrics; on a toy
# mixture the generation accuracy and the exact-score cosines; on the image twin its exact ones.
HEADLINES = {
    "toy": ("gen_accuracy", "guided_score_cos", "score_cos"),
    "images": ("fid", "intra_fid", "gen_accuracy"),
    "twin": ("bayes_gen_accuracy_matched", "intra_fid", "fid"),
}


def column(kind: str, key: str) -> str:
    """A runs-table column as the UI names it: metrics.`val/fid`, params.`loss.lambda_sc`."""
    return f"{kind}.`{key}`"


def headline_metrics(dataset: str, objectives: Sequence[str]) -> list[str]:
    """The three metrics shown beside the objectives (none of them repeated)."""
    kind = "twin" if dataset == "twin" else "images" if dataset in IMAGE_DATASETS else "toy"
    return [m for m in HEADLINES[kind] if m not in objectives][:3]


def view_states(
    objectives: Sequence[tuple[str, str]],
    methods: Sequence[str],
    dataset: str,
    study_id: str | None = None,
) -> dict[str, dict]:
    """Each view's state: {key: {searchFilter, orderByKey, orderByAsc, selectedColumns}}. Sorted by
    the first objective's validation value (the value the search selects by), best first."""
    metric, mode = objectives[0]
    metrics = [m for m, _ in objectives]
    scope = f" and tags.study_id = '{study_id}'" if study_id else ""
    tuned = {k for m in methods for k in TUNED_KEYS[m]}
    knobs = [k for k in (LAMBDA_SC_KEY, LAMBDA_JOINT_KEY) if k in tuned]
    measured = [
        *(column("metrics", f"{VALIDATION_PREFIX}{m}") for m in metrics),
        *(column("metrics", m) for m in metrics + headline_metrics(dataset, metrics)),
        column("metrics", CHOSEN_SCALE),
    ]
    cell = [column("tags", "cell"), *(column("params", k) for k in knobs)]
    by_objective = {"orderByKey": measured[0], "orderByAsc": mode == "min"}
    columns = {
        "search": measured + cell,
        "final": measured[len(metrics) :] + cell + [column("params", "train.seed")],
        "shared": [column("tags", "shared_artifact"), column("tags", "cell")],
        "study": [column("tags", "study_id")],
    }
    newest = {"orderByKey": "attributes.start_time", "orderByAsc": False}
    return {
        key: {
            "searchFilter": f"tags.role = '{ROLES[key]}'{scope}",
            **(by_objective if key in ("search", "final") else newest),
            "selectedColumns": columns[key],
            "columnOrder": columns[key],
        }
        for key in ROLES
    }


def view_path(experiment_id: str, key: str = "search") -> str:
    """'#/experiments/<id>/runs?viewStateShareKey=<key>&workflowType=machine_learning'."""
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={key}&{MODEL_TRAINING_VIEW}"


def write_views(
    client: Any,  # an mlflow.tracking.MlflowClient
    experiment_id: str,
    objectives: Sequence[tuple[str, str]],
    methods: Sequence[str],
    dataset: str,
    study_id: str | None = None,
) -> None:
    """Write every view's state as an experiment tag, and the experiment's description with a link
    to each (the UI renders it as Markdown above the runs)."""
    states = view_states(objectives, methods, dataset, study_id)
    for key, state in states.items():
        client.set_experiment_tag(experiment_id, f"{VIEW_TAG}{key}", json.dumps(state))
    metric, mode = objectives[0]
    best = "lowest" if mode == "min" else "highest"
    lines = [f"Views of this study (sorted by validation {metric}, {best} first):", ""]
    lines += [f"- [{VIEW_TITLES[k]}]({view_path(experiment_id, k)})" for k in states]
    client.set_experiment_tag(experiment_id, DESCRIPTION_TAG, "\n".join(lines))
