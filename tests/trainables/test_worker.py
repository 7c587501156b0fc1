"""The Ray worker function in Train's local mode, with Tune's report captured (no cluster)."""

import json

import pytest
import ray.tune

from trainables import names
from trainables.config import from_flat
from trainables.context import TrialContext
from trainables.ray_worker import ObjectiveError, train_fn_per_worker
from trainables.records import TrialRecords

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


def _run(tmp_path, monkeypatch, objectives=(("gen_accuracy", "max"),), stage="", **params):
    reports = []
    monkeypatch.setattr(ray.tune, "report", lambda metrics, **kw: reports.append(metrics))
    context = TrialContext(
        config=from_flat({**TOY, **params}, base="toy"),
        cache_dir=str(tmp_path / "artifacts"),
        record_dir=str(tmp_path / "trial"),
        objectives=objectives,
        stage=stage,
    )
    train_fn_per_worker({"context": context})
    return reports


def test_a_trial_reports_every_epoch_then_its_final_record(tmp_path, monkeypatch):
    reports = _run(tmp_path, monkeypatch)
    # Two artifacts (score model, classifier) x 2 epochs, then the final result.
    assert set(reports[-1]) >= {"val/gen_accuracy", "gen_accuracy", "guidance_scale"}
    assert [r.get("epoch") for r in reports] == [1, 2, 1, 2, None]
    final = json.loads((tmp_path / "trial" / names.FINAL_RECORD).read_text())
    assert final == reports[-1] and 0 <= final["gen_accuracy"] <= 1
    assert final["cost/steps_trained"] == 40 and final["artifact_reused/score"] == 0
    artifacts = json.loads((tmp_path / "trial" / names.ARTIFACTS_RECORD).read_text())
    assert set(artifacts) == {"score", "classifier"}
    # A second trial of another label % reuses the score model and trains its classifier.
    again = _run(tmp_path, monkeypatch, **{"data.label_percent": 50})
    assert again[-1]["artifact_reused/score"] == 1 and again[-1]["artifact_reused/classifier"] == 0


def test_a_stage_trial_trains_the_shared_network_and_nothing_else(tmp_path, monkeypatch):
    import trainables.evaluation as evaluation

    def no_evaluation(*args, **kwargs):
        raise AssertionError("a stage trial evaluates nothing")

    with monkeypatch.context() as patch:
        patch.setattr(evaluation.TrialEvaluator, "validate", no_evaluation)
        patch.setattr(evaluation.TrialEvaluator, "__call__", no_evaluation)
        reports = _run(tmp_path, monkeypatch, stage="score")
    final = reports[-1]
    assert final[names.STAGE_METRIC] == 1.0 and final["final"] == 1.0
    assert final["cost/steps_trained"] == 20 and final["artifact_reused/score"] == 0
    assert "artifact_reused/classifier" not in final and "gen_accuracy" not in final
    artifacts = json.loads((tmp_path / "trial" / names.ARTIFACTS_RECORD).read_text())
    assert set(artifacts) == {"score"}
    # The trial that follows reuses it: it trains only its classifier.
    (tmp_path / "trial" / names.FINAL_RECORD).unlink()
    after = _run(tmp_path, monkeypatch)[-1]
    assert after["artifact_reused/score"] == 1 and after["cost/steps_trained"] == 20


def test_the_guidance_classifier_trains_on_its_own_schedule(tmp_path, monkeypatch):
    # The papers train the classifier 60k steps against the score model's 1.3 M.
    reports = _run(tmp_path, monkeypatch, **{"train.classifier_steps": 10})
    assert [r.get("epoch") for r in reports] == [1, 2, 1, None]  # score 20 steps, classifier 10
    assert reports[-1]["cost/steps_trained"] == 30 and reports[-1]["eval_epoch"] == 1
    # Every epoch carries the trial's training so far (what a trial stopped early has spent).
    so_far = [r["cost/steps_trained_so_far"] for r in reports[:-1]]
    assert so_far == [10, 20, 30]
    seconds = [r["cost/train_seconds_so_far"] for r in reports[:-1]]
    assert 0 < seconds[0] < seconds[1] < seconds[2] <= reports[-1]["cost/train_seconds"]
    # The score model does not depend on the classifier's schedule: the next trial reuses it and
    # trains its (20-step) classifier anew.
    (tmp_path / "trial" / names.FINAL_RECORD).unlink()
    after = _run(tmp_path, monkeypatch)[-1]
    assert after["artifact_reused/score"] == 1 and after["artifact_reused/classifier"] == 0
    assert after["cost/steps_trained"] == 20


def test_a_nan_objective_fails_the_trial_with_its_reason(tmp_path, monkeypatch):
    import trainables.evaluation as evaluation

    real = evaluation.evaluate_toy
    # The evaluation returns NaN for the objective (as it does when no sample is finite).
    monkeypatch.setattr(
        evaluation, "evaluate_toy", lambda *a, **k: {**real(*a, **k), "gen_accuracy": float("nan")}
    )
    with pytest.raises(ObjectiveError, match="gen_accuracy"):
        _run(tmp_path, monkeypatch)
    reason = json.loads((tmp_path / "trial" / names.ERROR_RECORD).read_text())
    assert reason["type"] == "ObjectiveError" and "gen_accuracy" in reason["message"]
    assert not (tmp_path / "trial" / names.FINAL_RECORD).exists()
    # What the searcher reads to leave it out of the next session's retries (study.search).
    assert TrialRecords.of(tmp_path, "trial").failed_on_objective()


def test_a_diverging_trial_records_the_step_it_failed_at(tmp_path, monkeypatch):
    with pytest.raises(FloatingPointError):
        _run(tmp_path, monkeypatch, **{"train.lr": 1e30, "train.warmup": 1})
    reason = json.loads((tmp_path / "trial" / names.ERROR_RECORD).read_text())
    assert reason["type"] == "FloatingPointError" and reason["step"] >= 1
    assert f"at step {reason['step']}" in reason["message"]


def test_the_guidance_sweep_chooses_on_validation_and_reports_test_at_that_scale(
    tmp_path, monkeypatch
):
    import trainables.evaluation as evaluation

    real = evaluation.evaluate_toy

    # Validation (held-out rows given) peaks at scale 2, the test split at scale 0.5: a sweep
    # that looked at the reported numbers would choose 0.5.
    def rigged(config, networks, data, **kw):
        metrics = real(config, networks, data, **kw)
        if kw.get("scaled", True):
            best = 2.0 if kw.get("held_out") is not None else 0.5
            metrics["gen_accuracy"] = -abs(config.sample.guidance_scale - best)
        return metrics

    monkeypatch.setattr(evaluation, "evaluate_toy", rigged)
    grid = {"sample.guidance_grid": "0.5,1,2,4"}
    final = _run(tmp_path, monkeypatch, **grid)[-1]
    assert final["guidance_scale"] == 2.0
    assert final["val/gen_accuracy"] == 0.0 and final["gen_accuracy"] == -1.5  # test at scale 2
    curve = {s: final[names.curve_key("gen_accuracy", s)] for s in (0.5, 1.0, 2.0, 4.0)}
    assert curve == {0.5: -1.5, 1.0: -1.0, 2.0: 0.0, 4.0: -2.0}
    assert (tmp_path / "trial" / names.CURVE_IMAGE).exists()
    # The sweep's sampling cost is counted: 4 scales x 2 classes x val samples x 5 ODE steps x 2.
    assert final["cost/val_sampling_score_evals"] == 4 * 2 * 8 * 5 * 2


def test_the_sweep_on_the_real_toy_metrics_picks_the_curves_best_scale(tmp_path, monkeypatch):
    final = _run(tmp_path, monkeypatch, **{"sample.guidance_grid": "0.5,1,4"})[-1]
    curve = {s: final[names.curve_key("gen_accuracy", s)] for s in (0.5, 1.0, 4.0)}
    best = max(curve.values())
    assert final["guidance_scale"] == next(s for s, v in curve.items() if v == best)
    assert final["val/gen_accuracy"] == best


def test_cond_does_not_sweep_and_reports_no_chosen_scale(tmp_path, monkeypatch):
    final = _run(tmp_path, monkeypatch, method="Cond", **{"sample.guidance_grid": "0.5,2"})[-1]
    assert "guidance_scale" not in final and "val/gen_accuracy" in final
    assert not any(k.startswith("curve/") and "/g2" in k for k in final)


def _rigged_validation(monkeypatch, value_at):
    # The validation curve is value_at(scale); the test split's is irrelevant here.
    import trainables.evaluation as evaluation

    real = evaluation.evaluate_toy

    def rigged(config, networks, data, **kw):
        metrics = real(config, networks, data, **kw)
        if kw.get("scaled", True):
            metrics["gen_accuracy"] = value_at(config.sample.guidance_scale)
        return metrics

    monkeypatch.setattr(evaluation, "evaluate_toy", rigged)


def _curve(final):
    prefix = "curve/gen_accuracy/g"
    return sorted(float(k.removeprefix(prefix)) for k in final if k.startswith(prefix))


def test_an_optimum_at_the_grids_edge_extends_the_sweep_until_the_curve_turns(
    tmp_path, monkeypatch
):
    import math

    _rigged_validation(monkeypatch, lambda s: -abs(math.log2(s / 8.0)))  # peak at 8
    grid = {"sample.guidance_grid": "0.5,1,2,4", "sample.guidance_cap": 64.0}
    final = _run(tmp_path, monkeypatch, **grid)[-1]
    assert final["guidance_scale"] == 8.0  # found past the grid's edge
    assert _curve(final) == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]  # 16 turned the curve: no 32


def test_the_extension_stops_at_the_cap_and_goes_down_at_most_three_halvings(tmp_path, monkeypatch):
    _rigged_validation(monkeypatch, lambda s: s)  # rises for ever
    final = _run(tmp_path, monkeypatch, **{"sample.guidance_grid": "1,2,4",
                                           "sample.guidance_cap": 10.0})[-1]  # fmt: skip
    assert final["guidance_scale"] == 10.0 and _curve(final) == [1.0, 2.0, 4.0, 8.0, 10.0]
    _rigged_validation(monkeypatch, lambda s: -s)  # falls for ever: best at the smallest
    final = _run(tmp_path / "down", monkeypatch, **{"sample.guidance_grid": "1,2,4",
                                                    "sample.guidance_cap": 16.0})[-1]  # fmt: skip
    assert final["guidance_scale"] == 0.125 and _curve(final) == [0.125, 0.25, 0.5, 1, 2, 4]
    # Without a cap (0), or with the grid's largest scale as the cap, the grid alone is swept,
    # at either edge.
    for cap, rigged in ((0.0, lambda s: s), (4.0, lambda s: s), (4.0, lambda s: -s)):
        _rigged_validation(monkeypatch, rigged)
        grid = {"sample.guidance_grid": "1,2,4", "sample.guidance_cap": cap}
        final = _run(tmp_path / f"grid{cap}{rigged(2)}", monkeypatch, **grid)[-1]
        assert final["guidance_scale"] == (4.0 if rigged(2) > 0 else 1.0)
        assert _curve(final) == [1.0, 2.0, 4.0]
