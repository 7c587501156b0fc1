"""NCSN++ networks: sizes of the paper presets, forward / backward of every kind, the loss paths."""

import pytest
import torch

from trainables.config import NCSNPP_SIZES, ModelConfig, from_flat
from trainables.losses import dsm_loss, qc_loss, sc_loss
from trainables.networks import build_network
from trainables.networks.ncsnpp import ImageClassifier, ImageScoreNet, fir_down, fir_up


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("size, expected", [("paper", 62.8e6), ("deep", 107.6e6)])
def test_paper_sizes_match_the_papers_parameter_counts(size, expected):
    # On the meta device: no memory is allocated for 100 M parameters.
    with torch.device("meta"):
        net = ImageScoreNet(image_shape=(3, 32, 32), **NCSNPP_SIZES[size])
    assert abs(_count(net) - expected) / expected < 0.05, _count(net)


def test_paper_classifier_is_the_encoder_half():
    with torch.device("meta"):
        clf = ImageClassifier(10, image_shape=(3, 32, 32), **NCSNPP_SIZES["paper"])
        deep = ImageClassifier(10, image_shape=(3, 32, 32), **NCSNPP_SIZES["deep"])
    # The encoder half of NCSN++ plus a pooled linear head: about 25-44 M parameters (paper 001).
    assert 24e6 < _count(clf) < 27e6 and 42e6 < _count(deep) < 45e6
    assert clf.up is None


def test_fir_resampling_halves_and_doubles_and_keeps_constants():
    x = torch.ones(2, 3, 8, 8)
    down, up = fir_down(x), fir_up(x)
    assert down.shape == (2, 3, 4, 4) and up.shape == (2, 3, 16, 16)
    # Interior values of a constant image are unchanged (the filter sums to one).
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.ones_like(down[..., 1:-1, 1:-1]))
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.ones_like(up[..., 2:-2, 2:-2]))


def _tiny(kind, k=4):
    torch.manual_seed(0)
    cfg = from_flat({"model.dropout": 0.0}, base="tiny-images").model
    return build_network(kind, dim=(3, 16, 16), num_classes=k, model_config=cfg)


def test_every_kind_has_its_shapes_and_every_parameter_learns_at_tiny_size():
    x, sigma, y = torch.rand(3, 3, 16, 16), torch.tensor([0.05, 1.0, 10.0]), torch.tensor([0, 1, 4])
    nets = {kind: _tiny(kind) for kind in ("score", "classifier", "joint", "conditional")}
    score = nets["score"](x, sigma)
    logits = nets["classifier"](x, sigma)
    joint_score, joint_logits = nets["joint"](x, sigma)
    cond = nets["conditional"](x, sigma, y)  # label 4 = K is the null label
    assert score.shape == joint_score.shape == cond.shape == x.shape
    assert logits.shape == joint_logits.shape == (3, 4)
    # Squared outputs: a plain sum would leave the last layer's bias without a gradient signal.
    outputs = (score, logits, joint_score, joint_logits, cond)
    sum(o.square().sum() for o in outputs).backward()
    # Every parameter is on the path from input to output (no layer built and left unused).
    dead = [
        f"{kind}.{name}"
        for kind, net in nets.items()
        for name, p in net.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert dead == []


def test_score_is_divided_by_sigma():
    net = _tiny("score").eval()
    x = torch.rand(1, 3, 16, 16)
    a = net.decode(*net.encode(x, net.embed(torch.tensor([0.5]))), net.embed(torch.tensor([0.5])))
    torch.testing.assert_close(net(x, torch.tensor([0.5])), a / 0.5)


def test_joint_heads_share_one_encoder():
    net = _tiny("joint")
    x, sigma = torch.rand(2, 3, 16, 16), torch.tensor([0.1, 1.0])
    net.logits(x, sigma).sum().backward()
    # The classifier loss reaches the shared encoder but not the decoder.
    assert net.conv_in.weight.grad is not None and net.conv_in.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.up.parameters())


def test_sc_and_qc_losses_differentiate_through_the_image_networks():
    clf, score = _tiny("classifier"), _tiny("score")
    x, sigma, z = torch.rand(2, 3, 16, 16), torch.tensor([0.1, 1.0]), torch.randn(2, 3, 16, 16)
    sc = sc_loss(clf, x, sigma, z)
    sc.sum().backward()
    assert sc.shape == (2,) and clf.head[-1].weight.grad.abs().sum() > 0
    v = torch.randint(0, 2, x.shape).float() * 2 - 1
    qc = qc_loss(score, x, sigma, z, v)
    (dsm_loss(score, x, sigma, z) + qc).sum().backward()
    assert torch.isfinite(qc).all() and score.conv_in.weight.grad is not None


def test_arch_and_data_shape_must_agree():
    with pytest.raises(ValueError, match="needs image data"):
        build_network("score", dim=2, num_classes=2, model_config=ModelConfig(arch="ncsnpp"))
    with pytest.raises(ValueError, match="set model.arch to 'ncsnpp'"):
        build_network("score", dim=(3, 8, 8), num_classes=2, model_config=ModelConfig())


def test_images_in_unit_range_are_centred_to_minus_one_one_inside_the_network():
    from trainables.networks.ncsnpp import ImageScoreNet

    sizes = dict(
        image_shape=(3, 8, 8),
        nf=16,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(4,),
        dropout=0.0,
    )
    torch.manual_seed(0)
    centred = ImageScoreNet(**sizes).eval()
    raw = ImageScoreNet(**sizes, center_input=False).eval()
    raw.load_state_dict(centred.state_dict())
    x, sigma = torch.rand(2, 3, 8, 8), torch.tensor([0.1, 1.0])
    with torch.no_grad():
        torch.testing.assert_close(centred(x, sigma), raw(2 * x - 1, sigma))
        assert not torch.allclose(centred(x, sigma), raw(x, sigma))
