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


@pytest.mark.slow  # over 10 s: `make test` only
def test_compiled_guided_sampling_matches_eager():
    """sample.compile: CG's guided sampler through the compiled score model and the compiled
    classifier's input gradient gives the eager samples (float rounding apart)."""
    from torch._dynamo.utils import counters

    from trainables.config import from_flat
    from trainables.data.toy import make_toy
    from trainables.evaluation.sampling import sample_classes
    from trainables.fit import TrainingSet, train_method

    data = make_toy("gmm2", 200, 100, seed=0)
    fast = {"train.steps": 10, "train.steps_per_epoch": 10, "train.batch_size": 32}
    small = {"model.hidden": 16, "model.depth": 1, "sample.num_steps": 5}
    flat = {"method": "CG", "data.label_percent": 20, **fast, **small, "sample.num_per_class": 8}
    config = from_flat(flat, base="toy")
    nets = train_method(config, TrainingSet.split(data.x, data.y, 2, 20, 0))
    eager, y = sample_classes(config, nets, 2, 2)
    counters.clear()
    compiled, y2 = sample_classes(
        from_flat({**flat, "sample.compile": True}, base="toy"), nets, 2, 2
    )
    assert counters["stats"]["unique_graphs"] >= 2  # the score model and the classifier
    assert torch.equal(y, y2)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
