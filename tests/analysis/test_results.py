"""load_study: a finished study loads; not a study, nothing finished or still running is refused
with one line, nothing written."""

import re

import pytest
import yaml
from filelock import FileLock

from analysis import StudyNotReady, load_study
from analysis.ledger import LEASE_FILE, ledger_runs


def _files(folder):
    return sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def _study(tmp_path, status=None):
    """A study folder whose ledger holds one search trial (its records) that ended with the given
    status (RUNNING: while a driver holds the study), or none."""
    from trainables.records import TrialRecords

    folder = tmp_path / "studies" / "s"
    folder.mkdir(parents=True)
    spec = {"name": "s", "study_id": "0123456789abcdef",
            "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
            "objectives": [{"metric": "gen_accuracy", "mode": "max"}]}  # fmt: skip
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    if status is not None:
        records = TrialRecords.of(folder / "trials", "t1")
        records.write_run_id("run1")
        records.write_params({"method": "CG", "data.label_percent": 5.0})
        if status == "FINISHED":
            records.write_final({"gen_accuracy": 0.7, "val/gen_accuracy": 0.7, "final": 1.0})
        if status == "FAILED":
            records.write_error(FloatingPointError("loss is nan"))
    return folder


@pytest.mark.parametrize(
    ("status", "needle"),
    [(None, "no finished trial yet"), ("FAILED", "no finished trial yet"),
     ("RUNNING", "is still running (1 trial runs RUNNING)")],
)  # fmt: skip
def test_load_study_refuses_with_one_line_and_writes_nothing(tmp_path, status, needle):
    folder = _study(tmp_path, status)
    lease = FileLock(str(folder / LEASE_FILE), timeout=0)
    if status == "RUNNING":
        lease.acquire()  # a driver runs it (another process's lease: flock is per open file)
    try:
        before = _files(folder)
        with pytest.raises(StudyNotReady, match=re.escape(needle)) as info:
            load_study(folder)
        assert "\n" not in str(info.value)
        assert f"study resume {folder}" in str(info.value)
        assert _files(folder) == before
    finally:
        lease.release()


def test_a_trial_left_running_by_a_dead_driver_is_no_longer_running(tmp_path):
    # The same record without a driver holding the study: taken down with its driver.
    folder = _study(tmp_path, "RUNNING")
    with pytest.raises(StudyNotReady, match="no finished trial yet"):
        load_study(folder)
    assert ledger_runs(folder, "s")["status"].tolist() == ["KILLED"]


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
