import pytest
import torch

from trainables.data.toy import gmm2
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
