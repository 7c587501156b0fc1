import pytest
import torch

from trainables.data.toy import GaussianMixture, gmm2, gmm3, make_toy


def _autograd_score(fn, x):
    x = x.double().requires_grad_(True)
    return torch.autograd.grad(fn(x).sum(), x)[0]


@pytest.mark.parametrize("make", [gmm2, gmm3, lambda: make_toy("moons", 300, 10).dist])
@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_closed_form_scores_match_autograd_of_exact_log_density(make, sigma):
    dist = make()
    x, y = dist.sample_perturbed(64, sigma, generator=torch.Generator().manual_seed(1))
    s = torch.full((64,), sigma)
    torch.testing.assert_close(dist.score(x, s), _autograd_score(lambda v: dist.log_prob(v, s), x))
    cond = _autograd_score(lambda v: dist.log_joint(v, s).gather(1, y[:, None]), x)
    torch.testing.assert_close(dist.cond_score(x, s, y), cond)
    post = _autograd_score(
        lambda v: torch.log_softmax(dist.log_joint(v, s), 1).gather(1, y[:, None]), x
    )
    torch.testing.assert_close(dist.posterior_score(x, s, y), post)


def test_single_gaussian_score_is_analytic():
    # One class, one component N(mu, S): score at sigma is -(S + sigma^2 I)^-1 (x - mu).
    mu = torch.tensor([1.0, -2.0], dtype=torch.float64)
    cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    dist = GaussianMixture(mu[None, None], cov[None, None])
    x = torch.randn(5, 2, dtype=torch.float64)
    sigma = torch.full((5,), 0.7)
    expected = -torch.linalg.solve(cov + 0.49 * torch.eye(2, dtype=torch.float64), (x - mu).T).T
    torch.testing.assert_close(dist.score(x, sigma), expected)


def test_sample_moments_match_mixture():
    dist = GaussianMixture(
        [[[3.0, 0.0]], [[-3.0, 0.0]]], torch.eye(2).expand(2, 1, 2, 2) * 0.25, priors=[0.25, 0.75]
    )
    x, y = dist.sample(40000, generator=torch.Generator().manual_seed(0))
    assert y.float().mean().item() == pytest.approx(0.75, abs=0.01)
    assert x[y == 0].mean(0)[0].item() == pytest.approx(3.0, abs=0.02)
    assert x[y == 1].var(0).mean().item() == pytest.approx(0.25, rel=0.05)


def test_parzen_oracle_is_mixture_of_points():
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    lab = torch.tensor([0, 0, 1])
    dist = GaussianMixture.from_points(pts, lab)
    x = torch.tensor([[0.3, 0.1]])
    sigma = torch.tensor([0.5])
    # Parzen score: sum_i w_i (x_i - x) / sigma^2 with w_i softmax of -||x - x_i||^2 / (2 sigma^2).
    w = torch.softmax(-((x - pts) ** 2).sum(1) / (2 * 0.25), 0)
    expected = (w[:, None] * (pts - x)).sum(0, keepdim=True) / 0.25
    torch.testing.assert_close(dist.score(x, sigma), expected.double())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(means=torch.zeros(2, 2)), "means must have shape"),
        (
            dict(means=torch.zeros(2, 3, 2), covs=torch.zeros(2, 2, 2, 2)),
            r"covs must have shape \(2, 3, 2, 2\)",
        ),
        (
            dict(means=torch.zeros(2, 3, 2), weights=torch.ones(3, 2) / 2),
            r"weights must have shape \(2, 3\)",
        ),
        (
            dict(means=torch.zeros(2, 3, 2), priors=torch.ones(3) / 3),
            r"priors must have shape \(2,\)",
        ),
        (dict(means=torch.zeros(1, 2, 2), weights=[[0.9, 0.9]]), "sum to 1"),
    ],
)
def test_mismatched_toy_spec_shapes_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**kwargs)


def test_unknown_toy_dataset_names_valid_choices():
    with pytest.raises(ValueError, match=r"unknown toy dataset 'spiral'.*gmm2.*moons"):
        make_toy("spiral", 10, 10)
