"""Load a study's trial runs from MLflow into a tidy DataFrame (params cast once)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd

from trainables.names import DIAGNOSTICS_FILE

BASE_COLUMNS = [
    "run_id", "trial_id", "status", "early_stopped", "stage", "method", "label_percent",
]  # fmt: skip


def _cast(value: Any) -> Any:
    """MLflow params are strings: cast numbers and booleans once."""
    if not isinstance(value, str):
        return value
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(value, value)


def _error_of(tags: dict) -> str | None:
    """'FloatingPointError: loss is nan at step 3' from a failed run's tags (None if none)."""
    if "error_type" not in tags:
        return None
    message = (tags.get("error_message") or "").strip().splitlines()
    return f"{tags['error_type']}: {message[0] if message else ''}".strip()[:200]


def load_runs(tracking_uri: str, experiment_name: str, study_id: str | None = None) -> pd.DataFrame:
    """One row per trial run of the study: run_id, trial_id, status, early_stopped, method,
    label_percent, params, metrics."""

    from mlflow.tracking import MlflowClient

    if (
        tracking_uri.startswith("sqlite:///")
        and not Path(tracking_uri[len("sqlite:///") :]).exists()
    ):
        return pd.DataFrame(columns=BASE_COLUMNS)  # no store yet: reading must not create one
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        return pd.DataFrame(columns=BASE_COLUMNS)
    rows = []
    # Every trial run (role trial / shared / final: study.views), not the study's parent run; a
    # study's own runs: its study_id when it has one (several studies may share a store).
    scope = f" and tags.study_id = '{study_id}'" if study_id else ""
    for run in client.search_runs(
        [exp.experiment_id], filter_string=f"tags.role != 'study'{scope}", max_results=50000
    ):
        row = {
            "run_id": run.info.run_id,
            "trial_id": run.data.tags.get("trial_id"),
            "status": run.info.status,
            "early_stopped": run.data.tags.get("early_stopped") == "true",
            # search: a cell's search trial; final: a seed of `study final` (tables/final.md)
            "stage": run.data.tags.get("stage", "search"),
            # the command that ran it (a `study final` trains its seeds' shared networks too)
            "session": run.data.tags.get("session"),
            "start_time": run.info.start_time,  # ms since the epoch (MLflow's)
            "end_time": run.info.end_time,
            "error": _error_of(run.data.tags),  # a failed run's first line of why
            **{k: _cast(v) for k, v in run.data.params.items()},
            **run.data.metrics,
        }
        if run.data.tags.get("diagnostics") == DIAGNOSTICS_FILE:
            diagnostics = _diagnostics(client, run, tracking_uri)
            row.update({k: v for k, v in diagnostics.items() if k not in row})
        row["label_percent"] = _cast(
            run.data.params.get("data.label_percent", run.data.tags.get("label_percent"))
        )
        row["method"] = run.data.params.get("method", run.data.tags.get("method"))
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=BASE_COLUMNS)
    frame = pd.DataFrame(rows)
    return frame[BASE_COLUMNS + [c for c in frame.columns if c not in BASE_COLUMNS]]


def _diagnostics(client: Any, run: Any, tracking_uri: str) -> dict[str, float]:
    """A run's diagnostics table (study.tracking.log_diagnostics) as {key: value}; {} if it
    cannot be read. A local store's artifacts are read in place, also after the study's folder
    moved (found again beside its SQLite database); a server's are downloaded."""
    from mlflow.exceptions import MlflowException

    uri = run.info.artifact_uri or ""
    text = None
    if uri.startswith("file:"):
        path = Path(unquote(urlparse(uri).path)) / DIAGNOSTICS_FILE
        moved = _beside_store(path, tracking_uri)
        for candidate in (path, moved):
            if candidate is not None and candidate.is_file():
                text = candidate.read_text()
                break
    else:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                text = Path(client.download_artifacts(run.info.run_id, DIAGNOSTICS_FILE, tmp))
                text = text.read_text()
            except (MlflowException, OSError):  # the server lost it: the columns stay empty
                text = None
    if text is None:
        return {}
    table = json.loads(text)
    at = {name: i for i, name in enumerate(table["columns"])}
    return {row[at["key"]]: float(row[at["value"]]) for row in table["data"]}


def _beside_store(path: Path, tracking_uri: str) -> Path | None:
    """path's place under the mlartifacts folder beside a SQLite store (where a study keeps its
    run artifacts), None for other stores or paths."""
    if not tracking_uri.startswith("sqlite:///") or "mlartifacts" not in path.parts:
        return None
    parts = path.parts
    rest = parts[len(parts) - parts[::-1].index("mlartifacts") :]
    return Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts" / Path(*rest)
