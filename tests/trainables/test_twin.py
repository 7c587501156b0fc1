"""The image twin (trainables.data.twin): exact scores, the fit, the store, the exact metrics, and
its bad input."""

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from trainables.config import DataConfig, from_flat
from trainables.data.images import DatasetError, ImageData
from trainables.data.sets import check_images
from trainables.data.toy import GaussianMixture, overlap2
from trainables.data.twin import LowRankMixture, TwinSpec, fit_twin, load_or_fit, ppca
from trainables.data.twin_images import twin_images, twin_of
from trainables.evaluation.toy import (
    evaluation_points,
    generation_accuracy,
    gradient_metrics,
    guided_score_cos,
)
from trainables.evaluation.twin import band_points, evaluate_twin, noise_bands
from trainables.fit import build
from trainables.methods import get_method, model_fns
from trainables.storage import Place


def _random_mixture(seed=0, k=3, c=2, d=6, r=2, shape=None) -> LowRankMixture:
    gen = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(k, c, d, generator=gen, dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(k, c, d, r, generator=gen, dtype=torch.float64))[0]
    lam = 2 * torch.rand(k, c, r, generator=gen, dtype=torch.float64)
    psi = 0.1 + 0.5 * torch.rand(k, c, generator=gen, dtype=torch.float64)
    weights = torch.softmax(torch.randn(k, c, generator=gen, dtype=torch.float64), 1)
    priors = torch.softmax(torch.randn(k, generator=gen, dtype=torch.float64), 0)
    return LowRankMixture(means, basis, lam, psi, weights, priors, shape)


def test_scores_are_the_gradients_of_the_exact_log_densities():
    mix = _random_mixture(shape=(1, 2, 3))
    x = 2 * torch.randn(9, 1, 2, 3, dtype=torch.float64)
    sigma = torch.linspace(0.05, 3.0, 9)
    y = torch.arange(9) % 3
    for log_density, score in (
        (lambda v: mix.log_prob(v, sigma), mix.score(x, sigma)),
        (lambda v: mix.cond_log_prob(v, sigma, y), mix.cond_score(x, sigma, y)),
        (lambda v: mix.log_joint(v, sigma)[torch.arange(9), y] - mix.log_prob(v, sigma),
         mix.posterior_score(x, sigma, y)),
    ):  # fmt: skip
        v = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_density(v).sum(), v)
        assert score.shape == x.shape
        torch.testing.assert_close(score, grad, rtol=1e-9, atol=1e-10)


def test_density_matches_a_dense_gaussian_mixture():
    """The Woodbury solve and determinant lemma against dense float64 linear algebra."""
    mix = _random_mixture(d=5, r=3)
    covs = torch.einsum("kcdr,kcr,kcer->kcde", mix.basis, mix.lam, mix.basis)
    covs = covs + mix.psi[..., None, None] * torch.eye(5, dtype=torch.float64)
    dense = GaussianMixture(mix.means, covs, mix.weights, mix.priors)
    x = 2 * torch.randn(7, 5, dtype=torch.float64)
    sigma = torch.full((7,), 0.7)
    torch.testing.assert_close(mix.log_joint(x, sigma), dense.log_joint(x, sigma))
    torch.testing.assert_close(mix.score(x, sigma), dense.score(x, sigma))


def test_noisy_score_matches_a_monte_carlo_estimate():
    """Tweedie: grad log p_sigma(x) = E[x0 - x | x] / sigma^2, estimated from 400k clean draws."""
    mix = _random_mixture(seed=1, k=2, c=2, d=3, r=1)
    gen = torch.Generator().manual_seed(5)
    x0, _ = mix.sample(400_000, generator=gen)
    x0 = x0.double()
    sigma = 1.0
    points = mix.sample_perturbed(4, sigma, generator=gen)[0].double()
    exact = mix.score(points, torch.full((4,), sigma))
    for point, want in zip(points, exact):
        logw = -((x0 - point) ** 2).sum(1) / (2 * sigma**2)
        w = torch.softmax(logw, 0)
        estimate = (w[:, None] * (x0 - point)).sum(0) / sigma**2
        assert (1.0 / w.pow(2).sum()) > 1000  # enough effective draws behind the estimate
        assert torch.nn.functional.cosine_similarity(estimate, want, dim=0) > 0.995
        assert (estimate - want).norm() < 0.06 * want.norm() + 0.02


def test_fit_recovers_the_mixture_it_was_sampled_from():
    truth = _random_mixture(seed=2, k=2, c=2, d=10, r=2)
    truth.means[:, 1] += 12.0  # separated components, so the k-means split is the true one
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(40_000) % 2
    x, y = truth.sample(len(y), generator=gen, y=y)
    fitted = fit_twin(x, y, 2, components=2, rank=2, shared=0.0, seed=0)

    def cov(m, k, c):
        low = torch.einsum("dr,r,er->de", m.basis[k, c], m.lam[k, c], m.basis[k, c])
        return low + m.psi[k, c] * torch.eye(m.dim, dtype=torch.float64)

    for k in range(2):
        for c in range(2):
            match = int((fitted.means[k] - truth.means[k, c]).norm(dim=1).argmin())
            assert (fitted.means[k, match] - truth.means[k, c]).norm() < 0.1
            want = cov(truth, k, c)
            assert (cov(fitted, k, match) - want).norm() < 0.1 * want.norm()
            assert abs(fitted.weights[k, match] - truth.weights[k, c]) < 0.02


def test_ppca_with_fewer_points_than_directions_stays_a_valid_component():
    mean, basis, lam, psi = ppca(torch.randn(3, 8, dtype=torch.float64), rank=5)
    torch.testing.assert_close(basis.t() @ basis, torch.eye(5, dtype=torch.float64))
    assert (lam >= 0).all() and psi > 0 and lam[2:].eq(0).all()


def test_shared_components_set_the_bayes_accuracy():
    """A share s of every class's mass on common components: Bayes accuracy ~ 1 - s (1 - 1/K)."""
    gen = torch.Generator().manual_seed(0)
    means = torch.tensor([[-6.0, 0.0], [6.0, 0.0], [0.0, 6.0]]).reshape(3, 1, 2)
    x, y = GaussianMixture(means, 0.1 * torch.eye(2).expand(3, 1, 2, 2)).sample(6000, generator=gen)
    for share in (0.0, 0.3):
        twin = fit_twin(x, y, 3, components=1, rank=1, shared=share, seed=0)
        accuracy = twin.bayes_accuracy(6000, generator=gen)
        assert abs(accuracy - (1 - share * (1 - 1 / 3))) < 0.03, (share, accuracy)


def test_the_fit_is_stored_by_content(tmp_path):
    data = DataConfig(name="twin", twin_source="tiny-images", twin_source_images=200, twin_rank=3,
                      twin_components=2, num_train=40, num_test=20)  # fmt: skip
    calls = []
    first, _ = twin_of(data, str(tmp_path), log=calls.append)
    again, _ = twin_of(data, str(tmp_path), log=calls.append)
    assert len(calls) == 1  # fitted once, then read back
    torch.testing.assert_close(first.means, again.means)
    twin_of(replace(data, twin_rank=4), str(tmp_path), log=calls.append)
    assert len(calls) == 2  # another rank: another fit
    images = twin_images(data, str(tmp_path))
    assert images.x.shape == (40, 3, 16, 16) and images.dist is not None
    assert torch.bincount(images.y).tolist() == [10, 10, 10, 10]


def test_load_or_fit_writes_where_the_spec_keys_it(tmp_path):
    spec = TwinSpec({"name": "x"}, 1, 1, 0.0, 0)
    mix = _random_mixture()
    _, reused = load_or_fit(spec, Place(str(tmp_path)), lambda: mix)
    loaded, reused_again = load_or_fit(spec, Place(str(tmp_path)), lambda: 1 / 0)
    assert not reused and reused_again
    assert (tmp_path / f"{spec.key()}.pt").exists()
    torch.testing.assert_close(loaded.basis, mix.basis)


class _Flat(nn.Module):
    """A toy MLP seen as an image network: [B, 1, 1, 2] in; a score comes out in the points'
    shape, logits as they are."""

    def __init__(self, net, kind):
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x, sigma, *args):
        out = self.net(x.reshape(len(x), -1), sigma, *args)
        return out if self.kind == "classifier" else out.reshape(x.shape)


def test_exact_metrics_of_a_1x1x2_twin_equal_the_toys():
    toy = overlap2()
    twin = LowRankMixture.from_gaussian(toy.means, toy.covs, shape=(1, 1, 2))
    config = from_flat({"method": "CG", "eval.num_points": 300, "sample.num_per_class": 50},
                       base="toy")  # fmt: skip
    method = get_method("CG")
    nets = {a.network: build(a, config, 2, 2) for a in method.artifacts}
    data = ImageData(torch.zeros(4, 1, 1, 2), torch.zeros(4).long(), torch.zeros(4, 1, 1, 2),
                     torch.zeros(4).long(), 2, ("a", "b"), dist=twin)  # fmt: skip
    gen = torch.Generator().manual_seed(3)
    y = torch.arange(2).repeat_interleave(50)
    samples = toy.sample(100, y=y, generator=gen)[0] + 0.3 * torch.randn(100, 2, generator=gen)
    got = evaluate_twin(config, {k: _Flat(n, k) for k, n in nets.items()}, data,
                        samples.reshape(100, 1, 1, 2))  # fmt: skip
    # The same points, flattened, through the toy's functions on the 2-D mixture.
    fns = model_fns(nets, num_classes=2)
    bands = band_points(twin, noise_bands(config), 300, config.eval.seed + 3)
    assert len(bands) == 4
    for i, blocks in enumerate(bands):
        flat = [(s, x.reshape(len(x), 2), y_) for s, x, y_ in blocks]
        want = gradient_metrics(fns.logits_fn, toy, flat)
        assert math.isclose(got[f"grad_cos_band{i}"], want["grad_cos"], rel_tol=1e-6)
        assert math.isclose(got[f"grad_mse_band{i}"], want["grad_mse"], rel_tol=1e-6)
        cos = guided_score_cos(method, fns, toy, flat, 1.0)
        assert math.isclose(got[f"guided_score_cos_band{i}"], cos, rel_tol=1e-6)
    want_acc = generation_accuracy(samples, y, toy, config.sde.sigma_min)
    assert got["bayes_gen_accuracy"] == pytest.approx(want_acc)
    # The ceiling: the twin's exact samples under its own posterior, near overlap2's 0.8975.
    assert got["gen_accuracy_exact"] == pytest.approx(0.8975, abs=0.08)
    # and the toy's own fixed-sigma points give the same cosines through either mixture
    points = evaluation_points(toy, (0.1, 1.0), 200, 0)
    image_points = [(s, x.reshape(-1, 1, 1, 2), y_) for s, x, y_ in points]
    flat_nets = model_fns({k: _Flat(n, k) for k, n in nets.items()}, num_classes=2)
    a = gradient_metrics(flat_nets.logits_fn, twin, image_points)
    b = gradient_metrics(fns.logits_fn, toy, points)
    assert a == pytest.approx(b, rel=1e-6)


def test_collapsed_samples_are_seen():
    twin = LowRankMixture.from_gaussian(overlap2().means, overlap2().covs)
    config = from_flat({"method": "Cond", "sample.num_per_class": 200}, base="toy")
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(2).repeat_interleave(200)
    exact, _ = twin.sample(400, y=y, generator=gen)
    collapsed = twin.means[y, 0].float()  # every sample on its class's first mean
    from trainables.evaluation.twin import sample_metrics

    good = sample_metrics(exact, y, twin, config.sde.sigma_min)
    bad = sample_metrics(collapsed, y, twin, config.sde.sigma_min)
    assert good["sample_var_ratio"] == pytest.approx(1.0, abs=0.15)
    assert bad["sample_var_ratio"] < 0.05


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"twin_source_images": 40, "twin_components": 4, "twin_rank": 16},
         "class 'red square' has 4 fitting images, fewer than data.twin_components x "
         "data.twin_rank = 64"),
        ({"twin_rank": 768}, "data.twin_rank must be below the images' dimension 768 (3x16x16)"),
    ],
)  # fmt: skip
def test_bad_twins_are_refused_before_any_work(keys, message):
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_images(DataConfig(name="twin", **keys))


def test_twin_needs_no_flips_and_at_least_one_component():
    with pytest.raises(ValueError, match="data.flip must be false for the twin"):
        from_flat({"data.name": "twin"}, base="tiny-images")
    with pytest.raises(ValueError, match="data.twin_components must be greater than or equal to 1"):
        from_flat({"data.twin_components": 0}, base="twin")


def test_the_matched_accuracy_reads_noisy_samples_at_their_own_noise_level():
    """Exact samples with excess isotropic noise v: the matched sigma recovers sqrt(sigma^2 + v)
    and the matched accuracy the Bayes accuracy at that noise, where the strict one (at sigma_min)
    falls far below it."""
    from trainables.evaluation.twin import sample_metrics

    gen = torch.Generator().manual_seed(0)
    k, d = 4, 256
    means = 0.05 * torch.randn(k, 1, d, generator=gen, dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(k, 1, d, 3, generator=gen, dtype=torch.float64))[0]
    psi = torch.tensor([[0.002], [0.004], [0.008], [0.016]], dtype=torch.float64)
    twin = LowRankMixture(means, basis, torch.ones(k, 1, 3, dtype=torch.float64), psi,
                          torch.ones(k, 1, dtype=torch.float64))  # fmt: skip
    y = torch.arange(k).repeat_interleave(500)
    exact, _ = twin.sample(len(y), y=y, generator=gen)
    noise = 0.1
    noisy = exact + noise * torch.randn(exact.shape, generator=gen)
    got = sample_metrics(noisy, y, twin, 0.01)
    assert got["matched_sigma"] == pytest.approx(math.sqrt(0.01**2 + noise**2), rel=0.1)
    ceiling = twin.bayes_accuracy(2000, noise, generator=gen)
    assert got["bayes_gen_accuracy_matched"] == pytest.approx(ceiling, abs=0.05)
    assert got["bayes_gen_accuracy"] < ceiling - 0.2  # the strict posterior sees the noise floor
    clean = sample_metrics(exact, y, twin, 0.01)
    assert clean["matched_sigma"] < 0.03  # (the spread estimated from 500 samples per class)


def test_sampling_with_the_exact_score_reproduces_the_twin():
    """The sampler driven by the twin's exact conditional score draws the twin: Bayes generation
    accuracy at the ceiling, variance ratio near 1, the exact samples' log-likelihood."""
    from trainables.evaluation.twin import sample_metrics
    from trainables.samplers import get_sampler
    from trainables.sde import VESDE

    twin = _random_mixture(seed=4, k=3, c=2, d=12, r=2, shape=(3, 2, 2))
    config = from_flat({}, base="twin")
    sde = VESDE.from_config(config.sde)
    y = torch.arange(3).repeat_interleave(300)
    gen = torch.Generator().manual_seed(0)
    x0 = sde.prior_sample((len(y), 3, 2, 2), generator=gen)
    drawn = get_sampler("em")(lambda x, s: twin.cond_score(x, s, y).float(), x0,
                              sde.discretize(200), generator=gen)  # fmt: skip
    exact, _ = twin.sample(len(y), y=y, generator=gen)
    got, want = sample_metrics(drawn, y, twin, 0.01), sample_metrics(exact, y, twin, 0.01)
    assert got["bayes_gen_accuracy"] == pytest.approx(want["bayes_gen_accuracy"], abs=0.05)
    assert got["sample_var_ratio"] == pytest.approx(1.0, abs=0.1)
    assert got["cond_log_likelihood"] == pytest.approx(want["cond_log_likelihood"], abs=0.1)


def test_a_twin_of_an_image_folder_fits_and_names_a_class_too_small(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for cls, count in (("cats", 20), ("dogs", 12)):
        (root / cls).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    data = DataConfig(name="twin", twin_source="folder", root=str(root), twin_components=2,
                      twin_rank=3, num_train=20, num_test=10)  # fmt: skip
    twin, names = twin_of(data, str(tmp_path / "cache"))
    assert names == ("cats", "dogs") and twin.shape == (3, 8, 8) and twin.num_classes == 2
    # dogs: 12 images, one held out -> 11 to fit, fewer than 2 x 6
    with pytest.raises(DatasetError, match="class 'dogs' has 11 fitting images.* = 12; add images"):
        check_images(replace(data, twin_rank=6))
