import math

import pytest
import torch

from trainables.sde import VESDE


def test_sigma_endpoints_and_geometric_schedule():
    sde = VESDE(0.01, 50.0)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    s = sde.sigma(t)
    assert s[0].item() == pytest.approx(0.01)
    assert s[2].item() == pytest.approx(50.0)
    # Geometric: sigma(0.5) is the geometric mean of the endpoints.
    assert s[1].item() == pytest.approx(math.sqrt(0.01 * 50.0))


def test_diffusion_squared_is_derivative_of_variance():
    sde = VESDE(0.01, 50.0)
    t = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    h = 1e-6
    dvar = (sde.sigma(t + h) ** 2 - sde.sigma(t - h) ** 2) / (2 * h)
    torch.testing.assert_close(sde.diffusion(t) ** 2, dvar, rtol=1e-5, atol=0)


def test_discretize_decreasing_from_sigma_max_to_sigma_at_eps():
    sde = VESDE(0.01, 50.0, num_scales=1000, eps=1e-5)
    sig = sde.discretize()
    assert len(sig) == 1000
    assert (sig[1:] < sig[:-1]).all()
    assert sig[0].item() == pytest.approx(50.0)
    assert sig[-1].item() == pytest.approx(0.01 * (5000.0**1e-5))


def test_training_times_lie_in_eps_one():
    sde = VESDE(eps=1e-3)
    t = sde.sample_t(10000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 1e-3 and t.max() <= 1.0


def test_prior_has_sigma_max_std():
    sde = VESDE(0.01, 5.0)
    x = sde.prior_sample((20000, 2), generator=torch.Generator().manual_seed(0))
    assert x.std().item() == pytest.approx(5.0, rel=0.03)


def test_bad_sigmas_raise():
    with pytest.raises(ValueError, match="sigma_min"):
        VESDE(1.0, 0.5)
