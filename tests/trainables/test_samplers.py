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


@pytest.mark.parametrize("name", ["pc", "em", "ode"])
def test_replicas_give_each_copy_the_run_it_gets_alone(name):
    """Three copies of a batch, each with its own score (a scale per copy), in one run: copy r is
    what a run of that score alone gives (same noise: common random numbers; the PC corrector's
    step per copy, not over the whole batch)."""
    sde = VESDE(0.01, 5.0)
    x_init = sde.prior_sample((6, 2), generator=torch.Generator().manual_seed(2)).double()
    weights = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    sigmas = sde.discretize(25)
    alone = [
        get_sampler(name)(
            lambda x, s, w=w: w * gaussian_score(x, s), x_init, sigmas,
            generator=torch.Generator().manual_seed(5),
        )
        for w in weights
    ]  # fmt: skip
    per_row = weights.repeat_interleave(6)[:, None]
    batch = get_sampler(name)(
        lambda x, s: per_row * gaussian_score(x, s), x_init.repeat(3, 1), sigmas,
        generator=torch.Generator().manual_seed(5), replicas=3,
    )  # fmt: skip
    torch.testing.assert_close(batch.reshape(3, 6, 2), torch.stack(alone), rtol=1e-10, atol=1e-10)


def _toy_guided(method):
    from trainables.config import from_flat
    from trainables.data.toy import make_toy
    from trainables.fit import TrainingSet, train_method

    data = make_toy("gmm2", 200, 100, seed=0)
    flat = {
        "method": method, "data.label_percent": 20, "train.steps": 10, "train.steps_per_epoch": 10,
        "train.batch_size": 32, "model.hidden": 16, "model.depth": 1, "sample.num_steps": 6,
        "sample.num_per_class": 5, "sample.batch_size": 4,
    }  # fmt: skip
    config = from_flat(flat, base="toy")
    return config, train_method(config, TrainingSet.split(data.x, data.y, 2, 20, 0))


@pytest.mark.parametrize("method", ["CG", "CFG-all"])
def test_a_batch_of_scales_gives_the_samples_each_scale_gives_alone(method):
    """sample_scales: every scale of the batch (chunks of 4 samples, 3 chunks, classes mixed) is
    what sample_classes draws at that scale alone; equal scales give identical samples (common
    random numbers), other scales other samples."""
    from dataclasses import replace

    from trainables.evaluation.sampling import sample_classes, sample_scales

    config, nets = _toy_guided(method)
    scales = (0.5, 2.0, 2.0, 4.0)
    batch, y = sample_scales(config, nets, 2, 2, scales)
    assert batch.shape == (4, 10, 2)
    for scale, drawn in zip(scales, batch):
        at = replace(config, sample=replace(config.sample, guidance_scale=scale))
        alone, y_alone = sample_classes(at, nets, 2, 2)
        assert torch.equal(y, y_alone)
        torch.testing.assert_close(drawn, alone, rtol=1e-5, atol=1e-5)
    assert torch.equal(batch[1], batch[2])
    assert not torch.allclose(batch[0], batch[3])
