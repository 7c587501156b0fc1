"""A tiny-images study with the papers' metrics: FID, IS, intra-FID, accuracy, ECE; per-class table,
guidance curves; a second study reuses the reference statistics and the evaluation classifier."""

import pytest
import yaml
from cli_helpers import TINY_IMAGES_FAST, run_cli

pytestmark = pytest.mark.slow

CONFIG = TINY_IMAGES_FAST


def _spec(name, tmp_path, **kw):
    spec = {
        "name": name,
        "base_config": "tiny-images",
        "dataset": "tiny-images",
        "methods": ["CG-SC-all", "CFG-all"],
        "label_percents": [50],
        "num_trials": 3,
        "objectives": [{"metric": "intra_fid", "mode": "min"}],
        "search": {"loss.lambda_sc": {"choices": [0.1, 1.0]}},  # 2 CG-SC-all trials, CFG-all 1
        "guidance": {"scales": [1, 2], "val_num_per_class": 4},
        "storage": str(tmp_path / "studies"),
        "resources": {"max_concurrent_trials": 2},
        "config": dict(CONFIG),  # the study's own yardstick: <study>/evaluation
        **kw,
    }
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    return f"{name}.yaml"


def _cli(*args, cwd, timeout=600):
    return run_cli(*args, cwd=cwd, timeout=timeout)


def test_tiny_images_study_reports_the_papers_metrics(tmp_path):
    from mlflow.tracking import MlflowClient

    from analysis.runs import load_runs

    result = _cli("run", _spec("first", tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    tables = tmp_path / "studies" / "first" / "tables"
    full = (tables / "comparison.md").read_text()
    for column in ("% fid", "% inception_score", "% intra_fid", "% gen_accuracy", "% clf_ece"):
        assert column in full, full
    assert {"FID", "intra-FID"} <= set(result.stdout.split()), result.stdout  # the console's
    per_class = (tables / "per_class.md").read_text()
    assert (
        "CG-SC-all / 3" in per_class
        and "50% intra_fid" in per_class
        and "50% gen_accuracy" in per_class
    )
    curves = sorted(p.name for p in (tables.parent / "figures").glob("guidance_*.png"))
    assert {"guidance_fid.png", "guidance_intra_fid.png", "guidance_gen_accuracy.png"} <= set(
        curves
    )

    uri = f"sqlite:///{tmp_path / 'studies' / 'first' / 'mlflow.db'}"
    runs = load_runs(uri, "first")
    # The evaluation classifier and its reference statistics: a stage trial before the trials.
    stage = runs[runs["stage"] == "shared"]
    assert len(stage) == 1 and stage["stage_trial"].eq(1).all() and stage["fid"].isna().all()
    runs = runs[runs["stage"] == "search"]
    assert (runs["status"] == "FINISHED").all() and len(runs) == 3
    assert runs["start_time"].min() >= stage["start_time"].iloc[0]
    assert runs["fid"].notna().all() and runs["fid_num_samples"].eq(48).all()
    client = MlflowClient(uri)
    tags = client.get_run(runs["run_id"].iloc[0]).data.tags
    assert tags["fid_feature_extractor"].startswith("eval classifier eval_classifier-")
    parent = client.search_runs(
        [client.get_experiment_by_name("first").experiment_id], "tags.role = 'study'"
    )[0]
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/comparison.md", "report/per_class.md", "report/guidance_fid.png"} <= report

    # A second study on the same data measures with the same yardstick: the evaluation classifier
    # and reference statistics the first published to the artifact store, copied into its own
    # folder (no stage trial, nothing trained for them).
    second_spec = _spec("second", tmp_path, num_trials=1, methods=["CG-SC-all"])
    again = _cli("run", second_spec, "--quiet", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    second = load_runs(f"sqlite:///{tmp_path / 'studies' / 'second' / 'mlflow.db'}", "second")
    assert set(second["stage"]) == {"search"}  # the evaluator is cached: no stage trial
    assert second["reference_stats_reused"].eq(1).all()
    shared, own = tmp_path / "artifact-store" / "evaluation", tmp_path / "studies" / "second"
    for folder in (shared, own / "evaluation"):
        assert len(list((folder / "eval-classifiers").iterdir())) == 1
        assert len(list((folder / "fid-stats").glob("*.npz"))) == 1
    _a_moved_study_measures_with_its_own_yardstick(tmp_path, own, second)


def _digests(folder):
    """{relative path: sha256} of every file under folder."""
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _a_moved_study_measures_with_its_own_yardstick(tmp_path, original, runs):
    """cp -a of the study, the original and the store's yardstick deleted: a trial added to the
    copy is measured with the copy's evaluation classifier and reference statistics, read from
    its own folder and left as they were."""
    import shutil

    from mlflow.tracking import MlflowClient

    from analysis.runs import load_runs

    copy = tmp_path / "moved" / "second"
    shutil.copytree(original, copy, symlinks=True)
    shutil.rmtree(original)
    shutil.rmtree(tmp_path / "artifact-store" / "evaluation")
    yardstick = _digests(copy / "evaluation")
    added = _cli("resume", str(copy), "--add-trials", "1", "--quiet", cwd=tmp_path)
    assert added.returncode == 0, added.stderr[-3000:]
    after = load_runs(f"sqlite:///{copy / 'mlflow.db'}", "second")
    new = after[~after["run_id"].isin(runs["run_id"])]
    assert len(new) == 1 and set(new["stage"]) == {"search"}  # no stage trial: nothing trained
    assert new["reference_stats_reused"].eq(1).all() and new["fid"].notna().all()
    client = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    extractor = {  # names the evaluation classifier by its content-addressed key
        client.get_run(run).data.tags["fid_feature_extractor"]
        for run in [*new["run_id"], *runs["run_id"]]
    }
    assert len(extractor) == 1
    assert _digests(copy / "evaluation") == yardstick
    assert not original.exists()


def test_missing_inception_weights_stop_the_spec_before_anything_runs(tmp_path):
    spec = _spec(
        "nope",
        tmp_path,
        config={
            **CONFIG,
            "eval.feature_extractor": "inception",
            "eval.inception_weights": str(tmp_path / "missing.pt"),
        },
    )
    result = _cli("run", spec, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "Inception weights not found" in result.stderr
    assert not (tmp_path / "studies").exists()
