import pytest
import torch

from trainables.samplers import SAMPLERS, get_sampler
from trainables.sde import VESDE

MEAN = torch.tensor([1.5, -0.5], dtype=torch.float64)
STD = 0.5


def gaussian_score(x, sigma):
    # Exact score of N(MEAN, STD^2 I) perturbed by N(0, sigma^2 I).
    return -(x - MEAN) / (STD**2 + sigma[:, None] ** 2)


@pytest.mark.parametrize("name, steps", [("pc", 300), ("em", 300), ("ode", 60)])
def test_sampler_reproduces_gaussian_target(name, steps):
    sde = VESDE(0.01, 20.0)
    gen = torch.Generator().manual_seed(0)
    x_init = sde.prior_sample((8000, 2), generator=gen).double()
    samples = get_sampler(name)(gaussian_score, x_init, sde.discretize(steps), generator=gen)
    # Stated tolerance: mean within 0.05, std within 6 % of the target (8000 samples).
    torch.testing.assert_close(samples.mean(0), MEAN, atol=0.05, rtol=0)
    assert samples.std(0).tolist() == pytest.approx([STD, STD], rel=0.06)


def test_samplers_are_deterministic_for_a_generator():
    sde = VESDE(0.01, 5.0)
    for fn in SAMPLERS.values():
        out = [
            fn(
                gaussian_score,
                sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(3)).double(),
                sde.discretize(20),
                generator=torch.Generator().manual_seed(3),
            )
            for _ in range(2)
        ]
        torch.testing.assert_close(out[0], out[1])


def test_callback_sees_every_step():
    sde = VESDE(0.01, 5.0)
    seen = []
    get_sampler("pc")(
        gaussian_score,
        torch.zeros(2, 2, dtype=torch.float64),
        sde.discretize(7),
        callback=lambda i, x: seen.append(i),
    )
    assert seen == list(range(7))


def test_unknown_sampler_names_choices():
    with pytest.raises(ValueError, match=r"unknown sampler 'ddim'.*'em'.*'ode'.*'pc'"):
        get_sampler("ddim")
