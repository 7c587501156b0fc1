import pytest
import torch

from trainables.config import TrialConfig
from trainables.data.batches import Batch, Noise
from trainables.methods import METHODS, artifact_loss, get_method, guided_score_fn, model_fns
from trainables.networks import build_network
from trainables.sde import VESDE

PAPER_NAMES = [
    "CG",
    "CG-SC-labeled",
    "CG-SC-all",
    "CG-DLSM",
    "Joint-SC",
    "Cond",
    "CFG-labeled",
    "CFG-all",
]
CONFIG = TrialConfig()
SDE = VESDE(0.01, 10.0, eps=1e-3)


def _networks(artifact, seed=0, frozen_requires_grad=False):
    """The artifact's network and the frozen ones it reads (requires_grad left on if asked, so a
    test sees whether the loss itself keeps gradients away from them)."""
    torch.manual_seed(seed)
    net = build_network(artifact.network, dim=2, num_classes=3, model_config=CONFIG.model)
    frozen = {
        n: build_network("score", dim=2, num_classes=3, model_config=CONFIG.model)
        for n in artifact.needs
    }
    for f in frozen.values():
        f.requires_grad_(frozen_requires_grad)
    return net, frozen


def _batch(seed=0, n=16):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    y[n // 2 :] = -1  # second half unlabeled
    return Batch(x, y), Noise.draw(x, SDE, gen)


def _loss(artifact, net, frozen, batch, noise, loss_config=None):
    fns = model_fns({artifact.network: net}, num_classes=3, frozen=frozen)
    return artifact_loss(artifact, fns, batch, noise, loss_config or CONFIG.loss)


def test_registry_holds_exactly_the_papers_methods_in_order():
    assert list(METHODS) == PAPER_NAMES


def test_cg_family_shares_one_score_model_and_dlsm_needs_it():
    shared = {m.artifacts[0] for m in METHODS.values() if m.shares_score_model}
    assert len(shared) == 1
    assert [m.name for m in METHODS.values() if m.shares_score_model] == PAPER_NAMES[:4]
    assert get_method("CG-DLSM").artifacts[1].needs == ("score",)


@pytest.mark.parametrize("name", PAPER_NAMES)
def test_every_term_is_finite_and_per_example(name):
    batch, noise = _batch()
    for artifact in get_method(name).artifacts:
        net, frozen = _networks(artifact)
        total, terms = _loss(artifact, net, frozen, batch, noise)
        assert torch.isfinite(total) and total.dim() == 0
        assert terms, f"{name}/{artifact.name} computed no term"
        for key, values in terms.items():
            expected_rows = {"labeled": 8, "all": 16, "unlabeled": 8}[key.rsplit("_", 1)[1]]
            assert values.shape == (expected_rows,), key
            assert torch.isfinite(values).all()


# Parameters a term cannot reach by construction: the joint net's other head; and the score
# output's bias for QC, which depends on the score's Jacobian only.
UNREACHED = {
    ("joint", "joint_dsm"): ("class_head.",),
    ("joint", "qc"): ("class_head.", "score_head.bias"),
    ("joint", "ce"): ("score_head.",),
    ("joint", "joint_sc"): ("score_head.",),
    ("score", "qc"): ("head.bias",),
}


@pytest.mark.parametrize("name", PAPER_NAMES)
def test_gradients_reach_exactly_the_trained_network(name):
    from dataclasses import replace

    from trainables.methods import TERM_FNS

    batch, noise = _batch()
    loss_config = replace(CONFIG.loss, lambda_qc=1.0)  # QC active too
    for artifact in get_method(name).artifacts:
        net, frozen = _networks(artifact, frozen_requires_grad=True)
        fns = model_fns({artifact.network: net}, num_classes=3, frozen=frozen)
        for term in artifact.terms:
            # Each term alone: a gradient on every parameter of the trained network, none on
            # the frozen ones (their weights must not move, nor cost a backward).
            net.zero_grad(set_to_none=True)
            rows = batch.rows(term.rows)
            values = TERM_FNS[term.term](fns, batch.take(rows), noise.take(rows), loss_config)
            values.mean().backward()
            unreached = UNREACHED.get((artifact.network, term.term), ())
            missing = [
                n
                for n, p in net.named_parameters()
                if (p.grad is None or not p.grad.any()) and not n.startswith(unreached)
            ]
            assert not missing, (name, term.term, missing[:3])
            for f in frozen.values():
                assert all(p.grad is None for p in f.parameters()), (name, term.term)


def test_joint_gradients_reach_shared_encoder_from_both_heads():
    artifact = get_method("Joint-SC").artifacts[0]
    net, _ = _networks(artifact)
    batch, noise = _batch()
    _, terms = _loss(artifact, net, {}, batch, noise)
    for key in ("joint_dsm_all", "ce_labeled", "joint_sc_all"):
        net.zero_grad()
        terms[key].mean().backward(retain_graph=True)
        assert net.encoder.inp.weight.grad.abs().sum() > 0, key
    assert set(terms) == {"joint_dsm_all", "ce_labeled", "joint_sc_all"}


def _perturb_unlabeled(batch):
    x = batch.x.clone()
    x[batch.y < 0] += 3.0
    return Batch(x, batch.y.clone())


@pytest.mark.parametrize(
    "name, term, uses_unlabeled",
    [
        ("CG", "ce_labeled", False),
        ("CG-SC-labeled", "sc_labeled", False),
        ("CG-SC-all", "sc_all", True),
        ("CG-SC-all", "ce_labeled", False),
        ("CFG-labeled", "cfg_dsm_labeled", False),
        ("CFG-all", "cfg_dsm_all", True),
        ("Cond", "cond_dsm_labeled", False),
    ],
)
def test_row_subsets(name, term, uses_unlabeled):
    artifact = get_method(name).artifacts[-1]
    net, frozen = _networks(artifact)
    batch, noise = _batch()
    _, before = _loss(artifact, net, frozen, batch, noise)
    _, after = _loss(artifact, net, frozen, _perturb_unlabeled(batch), noise)
    changed = not torch.allclose(before[term].mean(), after[term].mean())
    assert changed == uses_unlabeled


def test_ce_gradient_ignores_unlabeled_rows():
    artifact = get_method("CG").artifacts[1]
    net, _ = _networks(artifact)
    batch, noise = _batch()
    grads = []
    for b in (batch, _perturb_unlabeled(batch)):
        net.zero_grad()
        _loss(artifact, net, {}, b, noise)[0].backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_zero_weight_skips_term_and_weights_scale_it():
    from dataclasses import replace

    artifact = get_method("CG-SC-all").artifacts[1]
    net, _ = _networks(artifact)
    batch, noise = _batch()
    off, terms_off = _loss(artifact, net, {}, batch, noise, replace(CONFIG.loss, lambda_sc=0.0))
    on, terms_on = _loss(artifact, net, {}, batch, noise, replace(CONFIG.loss, lambda_sc=2.0))
    assert "sc_all" not in terms_off
    torch.testing.assert_close(on, off + 2.0 * terms_on["sc_all"].mean())


def test_qc_term_applies_only_when_weighted():
    from dataclasses import replace

    artifact = get_method("CG").artifacts[0]
    net, _ = _networks(artifact)
    batch, noise = _batch()
    assert "qc_all" not in _loss(artifact, net, {}, batch, noise)[1]
    assert (
        "qc_all" in _loss(artifact, net, {}, batch, noise, replace(CONFIG.loss, lambda_qc=0.1))[1]
    )


def test_unknown_method_names_valid_choices():
    with pytest.raises(ValueError, match=r"unknown method 'CG-SC'.*'CG-SC-labeled'.*'CFG-all'"):
        get_method("CG-SC")


def test_guidance_scale_one_is_the_plain_conditional_for_every_family():
    torch.manual_seed(0)
    x, sigma, y = torch.randn(6, 2), torch.full((6,), 0.5), torch.tensor([0, 1, 2, 0, 1, 2])
    cond = build_network("conditional", dim=2, num_classes=3, model_config=CONFIG.model)
    fns = model_fns({"conditional": cond}, num_classes=3)
    with torch.no_grad():
        conditional = cond(x, sigma, y)
        unconditional = cond(x, sigma, torch.full_like(y, 3))
        for name in ("CFG-labeled", "CFG-all", "Cond"):
            torch.testing.assert_close(
                guided_score_fn(get_method(name), fns, y, 1.0)(x, sigma), conditional
            )
        # gamma = 2 is (1 + w) s(y) - w s(null) with w = 1: classifier guidance at scale 2.
        twice = guided_score_fn(get_method("CFG-all"), fns, y, 2.0)(x, sigma)
        torch.testing.assert_close(twice, 2 * conditional - unconditional)


def test_a_trials_logged_params_are_the_keys_that_shape_it():
    from trainables.config import from_flat, to_flat
    from trainables.methods import shaping_keys

    toy = to_flat(from_flat({"method": "CG-SC-all"}, base="toy"))
    keys = set(shaping_keys("CG-SC-all", toy))
    assert {"loss.lambda_sc", "loss.sc_weighting", "model.hidden", "sample.guidance_grid"} <= keys
    other = {"loss.lambda_joint", "loss.p_uncond", "loss.lambda_ce", "model.energy_rank"}
    assert not keys & (other | {"model.nf", "eval.feature_extractor", "data.image_size"})
    cond = set(shaping_keys("Cond", to_flat(from_flat({"method": "Cond"}, base="toy"))))
    assert not cond & {"loss.lambda_sc", "loss.lambda_qc", "model.classifier_head",
                       "sample.guidance_scale", "sample.guidance_grid"}  # fmt: skip
    assert "loss.p_uncond" in shaping_keys("CFG-all", toy) and "loss.lambda_ce" in shaping_keys(
        "CG-DLSM", toy
    )
    images = to_flat(from_flat({"method": "Joint-SC"}, base="tiny-images"))
    image_keys = set(shaping_keys("Joint-SC", images))
    assert {"model.nf", "eval.feature_extractor", "loss.lambda_joint"} <= image_keys
    assert not image_keys & {"model.hidden", "eval.sigmas", "loss.lambda_sc"}
