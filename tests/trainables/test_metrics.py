import pytest
import torch

from trainables.data.toy import gmm2, make_toy
from trainables.evaluation.calibration import accuracy, expected_calibration_error
from trainables.evaluation.toy import (
    energy_distance,
    evaluation_points,
    generation_accuracy,
    gradient_metrics,
)


def test_exact_posterior_classifier_has_zero_gradient_error():
    dist = gmm2()
    # float64 points: cosines of near-zero gradients need the precision.
    points = [(s, x.double(), y) for s, x, y in evaluation_points(dist, (0.1, 1.0), 200, seed=0)]
    m = gradient_metrics(dist.log_joint, dist, points)
    assert m["grad_mse"] == pytest.approx(0.0, abs=1e-10)
    assert m["grad_cos"] == pytest.approx(1.0, abs=1e-6)
    assert m["cond_score_cos"] == pytest.approx(1.0, abs=1e-6)


def test_gradient_metrics_detect_a_wrong_classifier():
    dist = gmm2()
    points = evaluation_points(dist, (0.5,), 200, seed=0)
    flipped = gradient_metrics(lambda x, s: -dist.log_joint(x, s), dist, points)
    assert flipped["grad_cos"] < -0.9


def test_generation_accuracy_of_true_class_samples_is_high_and_of_swapped_is_low():
    dist = gmm2()
    y = torch.arange(2).repeat_interleave(500)
    x, _ = dist.sample(1000, generator=torch.Generator().manual_seed(0), y=y)
    assert generation_accuracy(x, y, dist, 0.01) > 0.99
    assert generation_accuracy(x, 1 - y, dist, 0.01) < 0.01


def test_energy_distance_near_zero_for_same_distribution_and_grows_with_shift():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(800, 2, generator=gen), torch.randn(800, 2, generator=gen)
    same = energy_distance(a, b)
    shifted = energy_distance(a, b + 1.0)
    assert abs(same) < 0.02
    assert shifted > 0.5
    assert energy_distance(a, b + 2.0) > shifted


def test_energy_distance_is_unbiased_for_small_samples():
    # Same distribution, 10 points each, 400 repetitions: the estimator averages to 0; the
    # V-statistic (means including the zero self-distances) would average to about +0.18.
    gen = torch.Generator().manual_seed(1)
    values, biased = [], []
    for _ in range(400):
        a, b = torch.randn(10, 2, generator=gen), torch.randn(10, 2, generator=gen)
        values.append(energy_distance(a, b))
        a, b = a.double(), b.double()
        v = 2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean()
        biased.append(v.item())
    values = torch.tensor(values)
    assert abs(values.mean()) < 3 * values.std() / 20  # within 3 standard errors of 0
    assert torch.tensor(biased).mean() > 0.1


def test_ece_zero_when_confidence_matches_accuracy():
    # Confidence 0.75 on every row, 3 of 4 correct: perfectly calibrated.
    logits = torch.log(torch.tensor([[0.75, 0.25]] * 4))
    y = torch.tensor([0, 0, 0, 1])
    assert expected_calibration_error(logits, y) == pytest.approx(0.0, abs=1e-6)
    assert accuracy(logits, y) == 0.75


def test_ece_of_overconfident_classifier():
    # Confidence 0.99, accuracy 0.5: ECE = 0.49.
    logits = torch.log(torch.tensor([[0.99, 0.01]] * 4))
    y = torch.tensor([0, 1, 0, 1])
    assert expected_calibration_error(logits, y) == pytest.approx(0.49)


def _sc(logits_fn, x, seed=0):
    from trainables.evaluation.calibration import sc_ratios

    gen = torch.Generator().manual_seed(seed)
    return sc_ratios(logits_fn, x, (0.01, 0.1, 1.0, 5.0, 20.0), (0.01, 10.0), gen)


def test_sc_ratio_is_one_for_a_classifier_whose_logsumexp_ignores_its_input():
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    metrics = _sc(lambda x, s: torch.zeros(len(x), 3) + x.sum() * 0, x)
    # Bands clipped to sigma_max = 10: [0.01, 0.1), [0.1, 1), [1, 5), [5, 10).
    assert {k for k in metrics if k.startswith("sc_ratio_band")} == {
        f"sc_ratio_band{i}" for i in range(4)
    }
    for i in range(4):
        assert metrics[f"sc_ratio_band{i}"] == pytest.approx(1.0, abs=1e-12)
    assert metrics["sc_ratio"] == pytest.approx(1.0, abs=1e-12)


def test_the_exact_joint_density_as_logits_beats_the_radial_baseline_where_classes_matter():
    # Logits log p_sigma(x, y) of the toy mixture: their LSE is the exact log p_sigma(x), whose
    # score minimises the SC term; a class-independent quadratic energy cannot do as well at small
    # sigma, where the mixture is far from one Gaussian, and nearly can at large sigma.
    data = make_toy("gmm2", 10, 2000, seed=0)
    metrics = _sc(lambda x, s: data.dist.log_joint(x, s).float(), data.test_x)
    for i in range(4):
        assert metrics[f"sc_ratio_band{i}"] <= metrics[f"sc_ratio_radial_band{i}"] + 0.01
    assert metrics["sc_ratio_band1"] < metrics["sc_ratio_radial_band1"] - 0.1
    assert metrics["sc_ratio_band3"] == pytest.approx(metrics["sc_ratio_radial_band3"], abs=0.05)
    assert metrics["sc_ratio_radial_band3"] < 0.2  # at large sigma, x~ ~ sigma z: the radial part
