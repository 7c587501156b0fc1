"""Image trials through Ray Train with 2 CPU workers (gloo), one per method family, via the CLI."""

import pytest
import yaml
from cli_helpers import DDP_SPEC, run_cli, table_methods

pytestmark = pytest.mark.slow

SPEC = DDP_SPEC


def _cli(*args, cwd, timeout=900):
    # 270 s alone, 360-420 s beside another study; over 600 s once in CI beside the Ray tests.
    return run_cli(*args, cwd=cwd, timeout=timeout)


def test_each_family_trains_on_two_train_workers(tmp_path):
    (tmp_path / "spec.yaml").write_text(
        yaml.safe_dump({**SPEC, "storage": str(tmp_path / "studies")})
    )
    result = _cli("run", "spec.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "guided DSM" in result.stdout and "Joint-SC" in table_methods(result.stdout)
    study_dir = tmp_path / "studies" / "ddp"
    from mlflow.tracking import MlflowClient

    from analysis.runs import load_runs

    uri = f"sqlite:///{study_dir / 'mlflow.db'}"
    runs = load_runs(uri, "ddp")
    assert (runs["stage"] == "shared").sum() == 1  # the evaluation classifier's stage trial
    runs = runs[runs["stage"] == "search"]
    assert len(runs) == 3 and (runs["status"] == "FINISHED").all()
    assert set(runs["method"]) == {"CG-SC-all", "Joint-SC", "CFG-all"}
    assert runs["guided_dsm"].notna().all()
    # The guided trials' sweeps went on past the grid {1, 4} on both Train workers (the next
    # scale is rank 0's: a worker deciding alone hung the trial).
    curves = [c for c in runs.columns if c.startswith("curve/guided_dsm/g")]
    swept = {float(c.rsplit("/g", 1)[1]) for c in curves if runs[c].notna().any()}
    assert {1.0, 4.0} < swept, swept
    client = MlflowClient(uri)
    for run_id in runs["run_id"]:
        assert [a.path for a in client.list_artifacts(run_id, "samples")] == ["samples/samples.png"]
    # Rank 0 handed its checkpoints to Ray Train (the latest one is kept per trial).
    kept = list((study_dir / "train").glob("train-*/checkpoint_*/checkpoint.pt"))
    assert len(kept) == 3
    # Every artifact the workers trained is in the cache once: score, classifier, joint,
    # conditional.
    store = tmp_path / "artifact-store"  # run_cli's per-test store
    # The study's evaluation classifier and reference statistics: its own, in its folder, and
    # published to store/evaluation for the next study.
    for owner in (study_dir, store):
        assert len(list(owner.glob("evaluation/eval-classifiers/*/model.pt"))) == 1, owner
        assert len(list(owner.glob("evaluation/fid-stats/*.npz"))) == 1, owner
    assert sorted(p.name.split("-")[0] for p in store.iterdir() if p.name != "evaluation") == [
        "classifier",
        "conditional",
        "joint",
        "score",
    ]


def test_more_workers_than_the_cluster_has_is_refused_before_anything_is_written(tmp_path):
    spec = {
        **SPEC,
        "storage": str(tmp_path / "studies"),
        "resources": {"cpus_per_trial": 1, "num_workers": 64},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = _cli("run", "spec.yaml", cwd=tmp_path, timeout=180)
    assert result.returncode == 2
    assert "Train worker(s)" in result.stderr and "lower resources.num_workers" in result.stderr
    assert not (tmp_path / "studies").exists()
