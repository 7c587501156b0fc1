"""load_study: a finished study loads; not a study, nothing finished or still running is refused
with one line, nothing written."""

import re

import pytest
import yaml

from analysis import StudyNotReady, load_study


def _files(folder):
    return sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def _study(tmp_path, status=None):
    """A study folder whose MLflow store holds one trial run with the given status (or none)."""
    from study.tracking import open_tracking_store

    folder = tmp_path / "studies" / "s"
    folder.mkdir(parents=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    spec = {"name": "s", "study_id": "0123456789abcdef", "tracking_uri": uri,
            "objectives": [{"metric": "gen_accuracy", "mode": "max"}]}  # fmt: skip
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    if status is not None:
        client = open_tracking_store(uri)  # as a study opens its store
        exp = client.create_experiment("s", artifact_location=(folder / "art").as_uri())
        tags = {"role": "trial", "study_id": spec["study_id"], "trial_id": "t1", "stage": "search",
                "method": "CG", "label_percent": "5.0"}  # fmt: skip
        run = client.create_run(exp, tags=tags)
        client.log_param(run.info.run_id, "data.label_percent", "5.0")
        client.log_metric(run.info.run_id, "gen_accuracy", 0.7)
        client.log_metric(run.info.run_id, "val/gen_accuracy", 0.7)
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status)
    return folder


@pytest.mark.parametrize(
    ("status", "needle"),
    [(None, "MLflow store"), ("FAILED", "no finished trial yet"),
     ("RUNNING", "is still running (1 trial runs RUNNING)")],
)  # fmt: skip
def test_load_study_refuses_with_one_line_and_writes_nothing(tmp_path, status, needle):
    folder = _study(tmp_path, status)
    before = _files(folder)
    with pytest.raises(StudyNotReady, match=re.escape(needle)) as info:
        load_study(folder)
    assert "\n" not in str(info.value)
    if status is None:  # no store at all: restore it, nothing to resume from
        assert "is missing; restore it" in str(info.value)
    else:
        assert f"study resume {folder}" in str(info.value)
    assert _files(folder) == before


def test_not_a_study_folder(tmp_path):
    with pytest.raises(StudyNotReady, match="is not a study folder"):
        load_study(tmp_path)
    (tmp_path / "spec.yaml").write_text("- a list\n")
    with pytest.raises(StudyNotReady, match="is not a study's saved spec"):
        load_study(tmp_path)


def test_a_finished_run_loads_with_its_cell(tmp_path):
    s = load_study(_study(tmp_path, "FINISHED"))
    assert s.trials["cell"].tolist() == ["CG@5%"]
    assert s.comparison.loc["CG", (5.0, "gen_accuracy")] == 0.7
    assert s.best_configs["CG@5%"]["trial_id"] == "t1"
