"""The classifier's energy heads (model.classifier_head): analytic checks and what they learn."""

import pytest
import torch
import torch.nn.functional as F

from trainables.config import from_flat
from trainables.evaluation.calibration import sc_ratios
from trainables.evaluation.generation import eval_classifier_config
from trainables.identity import artifact_identity, artifact_key
from trainables.losses import classifier_score
from trainables.methods import EVAL_CLASSIFIER, get_method
from trainables.networks import SIGMA_DATA, DenoiserClassifier, EnergyClassifier, build_network
from trainables.networks.energy import PARAM_SCALE, GaussianEnergy


def _set(head: GaussianEnergy, means, factor, var) -> None:
    with torch.no_grad():
        head.means.copy_(means / PARAM_SCALE)
        head.factor.copy_(factor)
        head.raw_log_var.copy_(torch.log(var) / PARAM_SCALE)


def test_gaussian_head_is_the_noisy_class_gaussians_log_density_up_to_a_shared_constant():
    torch.manual_seed(0)
    dim, k, rank = 12, 3, 4
    head = GaussianEnergy(dim, k, rank).double()
    means, factor = torch.randn(k, dim).double(), torch.randn(dim, rank).double()
    var = torch.rand(dim).double() + 0.1
    _set(head, means, factor, var)
    x, sigma = torch.randn(5, dim).double(), torch.rand(5).double() + 0.1
    out = head(x, sigma)
    for b in range(5):
        cov = factor @ factor.T + torch.diag(var) + sigma[b] ** 2 * torch.eye(dim).double()
        # log N(x; mu_k, cov) without the log-determinant and 2 pi terms (the same for every k)
        diff = x[b] - means
        expected = -0.5 * torch.einsum("kd,de,ke->k", diff, torch.linalg.inv(cov), diff)
        torch.testing.assert_close(out[b], expected)


class _Zero(torch.nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x, sigma):
        return torch.zeros(len(x), self.k, dtype=x.dtype)


def test_energy_head_set_to_the_data_gaussian_gives_the_exact_noisy_score():
    """Data N(mu, Sigma): the noisy marginal's score is -(Sigma + sigma^2 I)^-1 (x~ - mu); the
    classifier's LogSumExp score equals it when the head holds mu and Sigma."""
    torch.manual_seed(1)
    mu = torch.tensor([1.0, -2.0]).double()
    chol = torch.tensor([[1.0, 0.0], [0.8, 0.5]]).double()
    clf = EnergyClassifier(_Zero(3), dim=2, num_classes=1, rank=2).double()
    _set(clf.energy, mu[None], chol, torch.full((2,), 1e-12).double())
    x, sigma = torch.randn(64, 2).double() * 3, torch.rand(64).double() * 2 + 0.05
    score = classifier_score(clf, x, sigma, create_graph=False)
    cov = chol @ chol.T
    for b in (0, 17, 63):
        exact = -torch.linalg.solve(cov + sigma[b] ** 2 * torch.eye(2).double(), x[b] - mu)
        torch.testing.assert_close(score[b], exact, rtol=1e-6, atol=1e-8)


class _PosteriorMeans(torch.nn.Module):
    """F_y such that D_y(x~) = v_y / (v_y + sigma^2) x~: the posterior mean of class y's data
    N(0, v_y I), written in the head's EDM preconditioning."""

    def __init__(self, variances):
        super().__init__()
        self.v = variances

    def forward(self, x, sigma):
        s2 = sigma[:, None] ** 2
        c_skip = SIGMA_DATA**2 / (s2 + SIGMA_DATA**2)
        c_out = sigma[:, None] * SIGMA_DATA / (s2 + SIGMA_DATA**2).sqrt()
        gain = (self.v[None, :] / (self.v[None, :] + s2) - c_skip) / c_out  # [B, K]
        return (gain[:, :, None] * x[:, None, :]).flatten(1)


def test_denoiser_head_with_the_posterior_means_is_the_exact_mixture_posterior_and_score():
    """Classes y ~ uniform, x | y ~ N(0, v_y I): with D_y the exact posterior means and
    b_y = -(D/2) log(v_y + sigma^2), the softmax is p(y | x~) and the LogSumExp gradient is the
    noisy mixture's score."""
    torch.manual_seed(2)
    dim, sigma0 = 3, 0.3
    v = torch.tensor([0.05, 0.5, 2.0]).double()
    clf = DenoiserClassifier(_PosteriorMeans(v), num_classes=3).double()
    with torch.no_grad():
        clf.bias.copy_(-dim / 2 * torch.log(v + sigma0**2))
    x = torch.randn(32, dim).double() * 1.2
    sigma = torch.full((32,), sigma0).double()

    def log_joint(points):  # log p(x~, y) up to the shared log K, per class: [B, K]
        cov = [(vy + sigma0**2) * torch.eye(dim).double() for vy in v]
        normals = [
            torch.distributions.MultivariateNormal(torch.zeros(dim).double(), c) for c in cov
        ]
        return torch.stack([n.log_prob(points) for n in normals], 1)

    torch.testing.assert_close(F.softmax(clf(x, sigma), 1), F.softmax(log_joint(x), 1))
    xr = x.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad(torch.logsumexp(log_joint(xr), 1).sum(), xr)
    torch.testing.assert_close(classifier_score(clf, x, sigma, create_graph=False), exact)


def test_the_shared_energy_head_never_moves_the_softmax():
    config = from_flat({"method": "CG-SC-all", "model.classifier_head": "energy"}, base="toy")
    torch.manual_seed(0)
    net = build_network("classifier", dim=2, num_classes=3, model_config=config.model)
    assert isinstance(net, EnergyClassifier)
    with torch.no_grad():
        net.energy.means.normal_()
        net.energy.raw_log_var.fill_(-0.2)
    x, sigma = torch.randn(16, 2), torch.rand(16) + 0.01
    torch.testing.assert_close(F.log_softmax(net(x, sigma), 1), F.log_softmax(net.net(x, sigma), 1))
    assert (net(x, sigma) - net.net(x, sigma)).abs().min() > 0.1  # but the LogSumExp moves


def test_the_head_shapes_only_the_guidance_classifier():
    def keys(**flat):
        config = from_flat({"method": "CG-SC-all", **flat}, base="toy")
        score, clf = get_method("CG-SC-all").artifacts
        ev = eval_classifier_config(config)
        return [artifact_key(artifact_identity(a, c)) for a, c in
                ((score, config), (clf, config), (EVAL_CLASSIFIER, ev))]  # fmt: skip

    plain = keys()
    energy = keys(**{"model.classifier_head": "energy"})
    assert energy[0] == plain[0] and energy[2] == plain[2]
    assert energy[1] != plain[1]
    assert keys(**{"model.energy_rank": 3}) == plain  # the rank means nothing to a plain head
    assert keys(**{"model.classifier_head": "energy", "model.energy_rank": 3})[1] != energy[1]
    denoiser = keys(**{"model.classifier_head": "denoiser"})
    assert denoiser[0] == plain[0] and denoiser[2] == plain[2]
    assert denoiser[1] not in (plain[1], energy[1])


def test_an_unknown_head_is_refused_with_the_choices():
    with pytest.raises(
        ValueError,
        match="must be 'plain', 'gaussian', 'energy', 'scaled' or 'denoiser', got 'gauss'",
    ):
        from_flat({"model.classifier_head": "gauss"}, base="toy")
    with pytest.raises(ValueError, match="model.energy_rank must be greater than or equal to 0"):
        from_flat({"model.energy_rank": -1}, base="toy")


def _on_tiny_images(method: str, head: str, steps: int = 200, **flat) -> tuple[dict, float]:
    """A guidance classifier trained `steps` steps on tiny-images at 20 % labels: its SC ratios
    (held-out, per band) and its clean accuracy (at sigma_min = 0.01)."""
    from trainables.data.images import make_images
    from trainables.fit import TrainingSet, train_artifact

    # One thread (conftest's): two made it 1.4x faster alone, but up to 4x slower beside the other
    # pytest-xdist worker's Ray study on 2 cores (190 s instead of 43 s in CI), and stayed set for
    # every later test of the worker.
    flat = {"method": method, "model.classifier_head": head, "data.label_percent": 20.0,
            "train.steps": steps, "train.steps_per_epoch": steps, **flat}  # fmt: skip
    config = from_flat(flat, base="tiny-images")
    data = make_images(config.data)
    training = TrainingSet.split(data.x, data.y, data.num_classes, 20.0, 0)
    net = train_artifact(get_method(method).artifacts[1], config, training)
    x, y = data.test_x[:128], data.test_y[:128]
    gen = torch.Generator().manual_seed(0)
    ratios = sc_ratios(net, x, config.eval.sc_bands, (0.01, 20.0), gen)
    with torch.no_grad():
        noisy = x + 0.01 * torch.randn(x.shape, generator=gen)
        acc = (net(noisy, torch.full((len(x),), 0.01)).argmax(1) == y).float().mean().item()
    return ratios, acc


@pytest.fixture(scope="module")
def ce_only_on_tiny_images():
    return _on_tiny_images("CG", "plain")


@pytest.mark.slow
def test_on_tiny_images_the_energy_head_lets_sc_learn_without_losing_the_classes(
    ce_only_on_tiny_images,
):
    """What the shared energy head achieves in 200 steps (docs/science.md has 600 and 1,500): its SC
    term far below the class-independent radial baseline in band 2 and well below 1 in band 1,
    clean accuracy within 5 points of a CE-only classifier trained alike."""
    plain, plain_acc = ce_only_on_tiny_images
    energy, acc = _on_tiny_images("CG-SC-all", "energy")
    assert plain["sc_ratio_band1"] > 0.95  # cross-entropy alone learns nothing of the score
    assert energy["sc_ratio_band2"] < energy["sc_ratio_radial_band2"] / 2
    assert energy["sc_ratio_band1"] < 0.8
    assert energy["sc_ratio"] < 0.6
    assert acc >= plain_acc - 0.05


@pytest.mark.slow
def test_on_tiny_images_the_denoiser_head_learns_sc_in_the_lowest_band_and_keeps_its_classes(
    ce_only_on_tiny_images,
):
    """Issue 15's target: the class-conditional denoiser energies, trained with CE and the summed
    SC term, bring the SC term below the class-independent baseline in every band, to <= 0.8 in
    the lowest (0.69 at 200 steps, 0.55 at 600; a DSM score network reaches 0.52), with clean
    accuracy within 5 points of a CE-only classifier trained alike (docs/science.md)."""
    plain, plain_acc = ce_only_on_tiny_images
    ratios, acc = _on_tiny_images("CG-SC-all", "denoiser", **{"loss.sc_reduction": "sum"})
    assert plain["sc_ratio_band0"] > 0.95
    assert ratios["sc_ratio_band0"] <= 0.8
    for band in range(4):
        assert ratios[f"sc_ratio_band{band}"] < ratios[f"sc_ratio_radial_band{band}"], band
    assert acc >= plain_acc - 0.05


def test_scaled_head_divides_the_plain_logits_by_sigma_and_keys_only_the_guidance_classifier():
    flat = {"method": "CG-SC-all", "model.hidden": 16, "model.depth": 1}
    plain = from_flat(flat, base="toy")
    scaled = from_flat({**flat, "model.classifier_head": "scaled"}, base="toy")
    torch.manual_seed(0)
    net = build_network("classifier", dim=2, num_classes=2, model_config=plain.model)
    torch.manual_seed(0)
    head = build_network("classifier", dim=2, num_classes=2, model_config=scaled.model)
    head.net.load_state_dict(net.state_dict())
    x, sigma = torch.randn(6, 2), torch.rand(6) + 0.05
    torch.testing.assert_close(head(x, sigma), net(x, sigma) / sigma[:, None])
    score, classifier = get_method("CG-SC-all").artifacts
    assert artifact_key(artifact_identity(score, scaled)) == artifact_key(
        artifact_identity(score, plain)
    )
    assert artifact_key(artifact_identity(classifier, scaled)) != artifact_key(
        artifact_identity(classifier, plain)
    )


def test_denoiser_head_builds_k_outputs_of_the_data_shape_for_toy_and_images():
    toy = from_flat({"method": "CG-SC-all", "model.classifier_head": "denoiser"}, base="toy")
    net = build_network("classifier", dim=2, num_classes=3, model_config=toy.model)
    assert isinstance(net, DenoiserClassifier)
    x, sigma = torch.randn(5, 2), torch.rand(5) + 0.1
    assert net.net(x, sigma).shape == (5, 6) and net(x, sigma).shape == (5, 3)
    images = from_flat(
        {"method": "CG-SC-all", "model.classifier_head": "denoiser"}, base="tiny-images"
    )
    net = build_network("classifier", dim=(3, 8, 8), num_classes=4, model_config=images.model)
    x, sigma = torch.rand(2, 3, 8, 8), torch.rand(2) + 0.1
    assert net.net(x, sigma).shape == (2, 12, 8, 8) and net(x, sigma).shape == (2, 4)
