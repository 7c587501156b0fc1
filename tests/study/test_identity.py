"""Two studies with one name on one tracking store: the second is refused, the first intact."""

import pytest
from cli_helpers import TOY_FAST, run_cli, run_main, write_spec

pytestmark = pytest.mark.slow


def _trial_runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("same")
    return client.search_runs([exp.experiment_id], "tags.role = 'trial'")


def test_a_second_study_with_a_name_in_use_on_the_store_is_refused(tmp_path):
    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    fields = dict(
        name="same",
        dataset="gmm2",
        methods=["CG", "Cond"],
        label_percents=[50],
        num_trials=2,
        tracking_uri=uri,
        config=TOY_FAST,
    )
    (tmp_path / "a").mkdir()
    first = run_cli("run", str(write_spec(tmp_path / "a", **fields)), cwd=tmp_path, timeout=400)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {(r.info.run_id, r.info.status, r.data.tags.get("study_id")) for r in _trial_runs(uri)}
    assert len(before) == 2 and {s for _, s, _ in before} == {"FINISHED"}
    table = (tmp_path / "a" / "studies" / "same" / "tables" / "comparison.md").read_text()

    (tmp_path / "b").mkdir()
    # Refused before any work: study.cli.main in this process (no new interpreter to start).
    second = run_main("run", str(write_spec(tmp_path / "b", **fields)), cwd=tmp_path)
    assert second.returncode == 2
    assert "already holds a study named 'same'" in second.stderr
    assert not (tmp_path / "b" / "studies").exists()  # nothing written for the refused study
    after = {(r.info.run_id, r.info.status, r.data.tags.get("study_id")) for r in _trial_runs(uri)}
    assert after == before
    again = run_main("table", str(tmp_path / "a" / "studies" / "same"), cwd=tmp_path)
    assert again.returncode == 0
    assert (tmp_path / "a" / "studies" / "same" / "tables" / "comparison.md").read_text() == table
