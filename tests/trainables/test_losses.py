import pytest
import torch

from trainables import losses
from trainables.data.toy import gmm3
from trainables.guidance import classifier_free_guidance, classifier_guidance


@pytest.fixture
def setting():
    dist = gmm3()
    gen = torch.Generator().manual_seed(0)
    x, y = dist.sample(128, generator=gen)
    x = x.double()
    sigma = torch.exp(torch.empty(128, dtype=torch.float64).uniform_(-3, 1, generator=gen))
    z = torch.randn(128, 2, generator=gen, dtype=torch.float64)
    return dist, x, y, sigma, z


def test_exact_posterior_guidance_at_scale_one_is_exact_conditional_score(setting):
    dist, x, y, sigma, _ = setting
    guided = classifier_guidance(dist.score, dist.log_joint, y, scale=1.0)
    torch.testing.assert_close(guided(x, sigma), dist.cond_score(x, sigma, y))


def test_lse_score_of_exact_joint_logits_is_exact_score(setting):
    dist, x, _, sigma, _ = setting
    score = losses.classifier_score(dist.log_joint, x, sigma, create_graph=False)
    torch.testing.assert_close(score, dist.score(x, sigma))


def test_sc_loss_of_exact_joint_logits_equals_dsm_of_exact_score(setting):
    dist, x, _, sigma, z = setting
    sc = losses.sc_loss(dist.log_joint, x, sigma, z)
    dsm = losses.dsm_loss(dist.score, x, sigma, z)
    torch.testing.assert_close(sc, dsm)
    assert sc.shape == (128,)


def test_dsm_weighting_none_divides_by_sigma_squared(setting):
    dist, x, _, sigma, z = setting
    weighted = losses.dsm_loss(dist.score, x, sigma, z)
    plain = losses.dsm_loss(dist.score, x, sigma, z, weighting="none")
    torch.testing.assert_close(plain * sigma**2, weighted)


def test_dsm_of_exact_score_is_minimal_in_expectation():
    # For one Gaussian, E[DSM] of the exact score is below that of a perturbed score.
    from trainables.data.toy import GaussianMixture

    dist = GaussianMixture([[[0.0, 0.0]]], torch.eye(2)[None, None])
    gen = torch.Generator().manual_seed(0)
    x = dist.sample(20000, generator=gen)[0].double()
    sigma = torch.full((20000,), 0.5, dtype=torch.float64)
    z = torch.randn(20000, 2, generator=gen, dtype=torch.float64)
    exact = losses.dsm_loss(dist.score, x, sigma, z).mean()
    off = losses.dsm_loss(lambda v, s: 1.2 * dist.score(v, s), x, sigma, z).mean()
    assert exact < off


def test_dlsm_of_exact_posterior_and_score_is_residual_of_exact_conditional_score(setting):
    dist, x, y, sigma, z = setting
    # grad log p(y|x) + grad log p(x) = grad log p(x|y): DLSM reduces to the conditional score
    # residual.
    dlsm = losses.dlsm_loss(dist.log_joint, dist.score, x, sigma, z, y)
    expected = losses.score_matching_residual(
        dist.cond_score(x + sigma[:, None] * z, sigma, y), sigma, z, "none"
    )
    torch.testing.assert_close(dlsm, expected)


def test_ce_rejects_unlabeled_rows(setting):
    dist, x, y, sigma, z = setting
    y = y.clone()
    y[0] = -1
    with pytest.raises(RuntimeError, match="unlabeled"):
        losses.ce_loss(dist.log_joint, x, sigma, z, y)


def test_cfg_labels_drop_to_null():
    y = torch.tensor([0, 1, -1, 2])
    u = torch.tensor([0.5, 0.05, 0.9, 0.9])
    assert losses.cfg_labels(y, u, 0.1, null_label=3).tolist() == [0, 3, 3, 2]


def test_cfg_guidance_combines_conditional_and_null():
    def cond(x, s, y):
        return x * 0 + y[:, None].double()

    y = torch.tensor([1, 2])
    out = classifier_free_guidance(cond, y, null_label=5, w=2.0)(
        torch.zeros(2, 2, dtype=torch.float64), torch.ones(2)
    )
    # (1 + w) y - w null = 3 y - 10.
    torch.testing.assert_close(out, torch.tensor([[-7.0, -7.0], [-4.0, -4.0]], dtype=torch.float64))


def _linear_score(a):
    return lambda x, s: x @ a.T


def test_qc_loss_over_all_rademacher_probes_is_half_asymmetry():
    a = torch.tensor([[1.0, 2.0], [-0.5, 3.0]], dtype=torch.float64)
    x = torch.zeros(1, 2, dtype=torch.float64)
    sigma = torch.ones(1, dtype=torch.float64)
    probes = [torch.tensor([[i, j]], dtype=torch.float64) for i in (-1, 1) for j in (-1, 1)]
    mean = torch.stack(
        [losses.qc_loss(_linear_score(a), x, sigma, torch.zeros_like(x), v) for v in probes]
    ).mean()
    # E_v[||J^T v||^2 - v^T J J v] = ||J - J^T||_F^2 / 2 exactly over Rademacher v.
    assert mean.item() == pytest.approx(0.5 * (a - a.T).pow(2).sum().item())


def test_qc_loss_is_zero_for_a_conservative_score():
    a = torch.tensor([[2.0, 0.7], [0.7, 1.0]], dtype=torch.float64)
    v = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    x = torch.zeros(1, 2, dtype=torch.float64)
    assert (
        losses.qc_loss(_linear_score(a), x, torch.ones(1), torch.zeros_like(x), v).abs().item()
        < 1e-12
    )


def test_asymmetry_metrics_of_linear_scores():
    a = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64)
    m = losses.asymmetry(_linear_score(a), x, torch.ones(4))
    assert m["asym"] == pytest.approx(8.0)
    assert m["nasym"] == pytest.approx(8.0 / (4 * 6.0))
    assert losses.asymmetry(gmm3().score, x, torch.ones(4))["asym"] == pytest.approx(0.0, abs=1e-10)


def test_unknown_weighting_names_choices(setting):
    dist, x, _, sigma, z = setting
    with pytest.raises(ValueError, match=r"unknown weighting 'l2'.*sigma2"):
        losses.dsm_loss(dist.score, x, sigma, z, weighting="l2")


def test_shared_forward_ce_and_sc_equal_the_separate_terms():
    # The platform computes CE (labeled rows) and SC (all rows) from one classifier forward; values
    # and
    # parameter gradients must equal the two separate terms on the same noise.
    from trainables.losses import ce_and_sc_losses, ce_loss, sc_loss
    from trainables.networks.toy import ToyClassifier

    torch.manual_seed(0)
    net = ToyClassifier(2, 3, hidden=16, depth=1)
    x, z = torch.randn(8, 2), torch.randn(8, 2)
    sigma = torch.rand(8) + 0.1
    y = torch.tensor([0, 1, 2, -1, -1, 0, -1, 2])
    labeled = y >= 0
    ce, sc = ce_and_sc_losses(net, x, sigma, z, y)
    torch.testing.assert_close(ce, ce_loss(net, x[labeled], sigma[labeled], z[labeled], y[labeled]))
    torch.testing.assert_close(sc, sc_loss(net, x, sigma, z))
    fused = torch.autograd.grad(ce.mean() + 0.5 * sc.mean(), list(net.parameters()))
    separate_loss = (
        ce_loss(net, x[labeled], sigma[labeled], z[labeled], y[labeled]).mean()
        + 0.5 * sc_loss(net, x, sigma, z).mean()
    )
    separate = torch.autograd.grad(separate_loss, list(net.parameters()))
    for a, b in zip(fused, separate):
        torch.testing.assert_close(a, b)


def test_mean_reduction_is_the_sum_over_the_number_of_dimensions():
    from trainables.losses import dlsm_loss, dsm_loss, sc_loss

    torch.manual_seed(0)
    x, z = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    sigma = torch.rand(5) + 0.1
    dim = 3 * 4 * 4

    def logits_fn(x, s):
        return torch.stack([x.flatten(1).sum(1), -(x.flatten(1) ** 2).sum(1)], 1)

    def score_fn(x, s):
        return -x

    for loss in (
        lambda r: dsm_loss(score_fn, x, sigma, z, reduction=r),
        lambda r: sc_loss(logits_fn, x, sigma, z, reduction=r),
        lambda r: dlsm_loss(
            logits_fn,
            score_fn,
            x,
            sigma,
            z,
            torch.ones(5, dtype=torch.long),
            power=1.0,
            reduction=r,
        ),
    ):
        torch.testing.assert_close(loss("mean"), loss("sum") / dim)
    with pytest.raises(ValueError, match="unknown reduction 'avg'"):
        dsm_loss(score_fn, x, sigma, z, reduction="avg")


def _double_backward_terms():
    """Every loss that differentiates an input gradient, on NCSN++ networks with attention."""
    from trainables.config import from_flat
    from trainables.networks import build_network

    model = from_flat({"method": "CG"}, base="tiny-images").model
    torch.manual_seed(0)
    clf = build_network("classifier", dim=(3, 16, 16), num_classes=4, model_config=model)
    score = build_network("score", dim=(3, 16, 16), num_classes=4, model_config=model)
    x, z = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    sigma, y = torch.tensor([0.05, 0.2, 1.0, 5.0]), torch.tensor([0, 1, 2, 3])
    v = torch.randint(0, 2, x.shape).float() * 2 - 1
    return {
        "sc": (clf, lambda: losses.sc_loss(clf, x, sigma, z)),
        "ce+sc": (clf, lambda: sum(t.sum() for t in losses.ce_and_sc_losses(clf, x, sigma, z, y))),
        "dlsm": (clf, lambda: losses.dlsm_loss(clf, score, x, sigma, z, y)),
        "qc": (score, lambda: losses.qc_loss(score, x, sigma, z, v)),
    }


@pytest.mark.parametrize("term", ["sc", "ce+sc", "dlsm", "qc"])
def test_double_backward_losses_train_channels_last_attention_networks(term):
    # A channels-last network makes SDPA pick its fused CPU kernel (on CUDA the fused kernels are
    # the default), which has no double backward: each such loss runs its attention on the math
    # kernel, and its parameter gradients equal the contiguous network's.
    net, loss = _double_backward_terms()[term]
    params = list(net.parameters())
    expected = torch.autograd.grad(loss().sum(), params, allow_unused=True)
    net.to(memory_format=torch.channels_last)
    got = torch.autograd.grad(loss().sum(), params, allow_unused=True)
    assert sum(g is not None for g in got) > len(params) // 2
    for a, b in zip(got, expected):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
