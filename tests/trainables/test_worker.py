"""The Ray worker function in Train's local mode, with Tune's report captured (no cluster)."""

import json

import pytest
import ray.tune

from trainables import names
from trainables.context import TrialContext
from trainables.ray_worker import ObjectiveError, train_fn_per_worker

TOY = {
    "method": "CG",
    "data.name": "gmm2",
    "data.num_train": 200,
    "data.num_test": 100,
    "train.steps": 20,
    "train.steps_per_epoch": 10,
    "train.batch_size": 32,
    "model.hidden": 16,
    "model.depth": 1,
    "sample.sampler": "ode",
    "sample.num_steps": 5,
    "sample.num_per_class": 20,
    "eval.num_points": 30,
}


def _run(tmp_path, monkeypatch, objectives=("gen_accuracy",), **params):
    reports = []
    monkeypatch.setattr(ray.tune, "report", lambda metrics, **kw: reports.append(metrics))
    context = TrialContext(
        params={**TOY, **params},
        base_config="toy",
        cache_dir=str(tmp_path / "artifacts"),
        record_dir=str(tmp_path / "trial"),
        objectives=objectives,
    )
    train_fn_per_worker({"context": context})
    return reports


def test_a_trial_reports_every_epoch_then_its_final_record(tmp_path, monkeypatch):
    reports = _run(tmp_path, monkeypatch)
    # Two artifacts (score model, classifier) x 2 epochs, then the final result.
    assert [r.get("epoch") for r in reports] == [1, 2, 1, 2, None]
    final = json.loads((tmp_path / "trial" / names.FINAL_RECORD).read_text())
    assert final == reports[-1] and 0 <= final["gen_accuracy"] <= 1
    assert final["cost/steps_trained"] == 40 and final["artifact_reused/score"] == 0
    artifacts = json.loads((tmp_path / "trial" / names.ARTIFACTS_RECORD).read_text())
    assert set(artifacts) == {"score", "classifier"}
    # A second trial of another label % reuses the score model and trains its classifier.
    again = _run(tmp_path, monkeypatch, **{"data.label_percent": 50})
    assert again[-1]["artifact_reused/score"] == 1 and again[-1]["artifact_reused/classifier"] == 0


def test_a_nan_objective_fails_the_trial_with_its_reason(tmp_path, monkeypatch):
    import trainables.evaluation as evaluation

    real = evaluation.evaluate_toy
    # The evaluation returns NaN for the objective (as it does when no sample is finite).
    monkeypatch.setattr(
        evaluation, "evaluate_toy", lambda *a: {**real(*a), "gen_accuracy": float("nan")}
    )
    with pytest.raises(ObjectiveError, match="gen_accuracy"):
        _run(tmp_path, monkeypatch)
    reason = json.loads((tmp_path / "trial" / names.ERROR_RECORD).read_text())
    assert reason["type"] == "ObjectiveError" and "gen_accuracy" in reason["message"]
    assert not (tmp_path / "trial" / names.FINAL_RECORD).exists()


def test_a_diverging_trial_records_the_step_it_failed_at(tmp_path, monkeypatch):
    with pytest.raises(FloatingPointError):
        _run(tmp_path, monkeypatch, **{"train.lr": 1e30, "train.warmup": 1})
    reason = json.loads((tmp_path / "trial" / names.ERROR_RECORD).read_text())
    assert reason["type"] == "FloatingPointError" and reason["step"] >= 1
    assert f"at step {reason['step']}" in reason["message"]
