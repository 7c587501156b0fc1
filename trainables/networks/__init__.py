"""Networks: noise-conditioned toy MLPs (2-D data) and NCSN++-style image networks."""

from __future__ import annotations

import math

import torch
from torch import nn

from trainables.config import ModelConfig
from trainables.networks.energy import GaussianEnergy
from trainables.networks.ncsnpp import build_image_network
from trainables.networks.toy import (
    NoiseEmbedding,
    ToyClassifier,
    ToyConditionalScoreNet,
    ToyJointNet,
    ToyScoreNet,
)
from trainables.networks.toy import build_network as build_toy_network


class EnergyClassifier(nn.Module):
    """A classifier's logits plus a class-conditional Gaussian energy (model.classifier_head
    'gaussian'): f_y(x, sigma) = c_y(x, sigma) + g_y(x, sigma), networks/energy.py."""

    def __init__(self, net: nn.Module, dim: int, num_classes: int, rank: int):
        super().__init__()
        self.net = net
        self.energy = GaussianEnergy(dim, num_classes, rank)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        logits = self.net(x, sigma)
        # The head's Woodbury solve runs in fp32 outside autocast (bf16 has no linalg.solve).
        with torch.autocast(device_type=x.device.type, enabled=False):
            energy = self.energy(x.float(), sigma.float())
        return logits + energy.to(logits.dtype)


class SigmaScaledClassifier(nn.Module):
    """A classifier's logits divided by the noise level (model.classifier_head 'scaled'):
    f_y(x, sigma) = c_y(x, sigma) / sigma, so sigma grad_x LSE f = grad_x LSE c is of the size
    SC's target -z asks for at every sigma (docs/science.md, the variants of issue 15)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        logits = self.net(x, sigma)
        return logits / sigma.reshape(-1, 1).to(logits.dtype)


# EDM's data scale (Karras et al. 2022) for the 'denoiser' head's preconditioning.
SIGMA_DATA = 0.5


class DenoiserClassifier(nn.Module):
    """A class-conditional denoiser energy as the logits (model.classifier_head 'denoiser'):

        f_y(x~, sigma) = -<x~ - D_y(x~, sigma), x~> / (2 sigma^2) + b_y,
        D_y = c_skip x~ + c_out F_y(x~, sigma),   (EDM: c_skip = s_d^2 / (sigma^2 + s_d^2),
                                                   c_out = sigma s_d / sqrt(sigma^2 + s_d^2))

    with F one network giving K outputs of the data's shape (an NCSN++ U-Net with K*C channels for
    images, an MLP with K*dim outputs for the toy). For a linear D_y = A x~ the energy is the
    quadratic -x~^T (I - A) x~ / (2 sigma^2), whose gradient -(I - A) x~ / sigma^2 is Tweedie's
    score of a zero-mean Gaussian; a trained D_y is a denoiser per class. There are no separate
    class logits: CE tells the classes apart through which class's denoiser explains x~, and SC
    trains the same energies' LogSumExp (docs/science.md, the variants of issue 15)."""

    def __init__(self, net: nn.Module, num_classes: int):
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = self.net(x, sigma)
        # The energy is a sum over the data's dimensions of products of O(1) terms divided by
        # sigma^2: fp32 outside autocast.
        dtype = torch.promote_types(out.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            f = out.to(dtype).reshape(len(x), self.num_classes, -1)
            xf = x.to(dtype).flatten(1)[:, None, :]
            s2 = sigma.to(dtype).reshape(-1, 1, 1) ** 2
            c_skip = SIGMA_DATA**2 / (s2 + SIGMA_DATA**2)
            c_out = (s2 * SIGMA_DATA**2 / (s2 + SIGMA_DATA**2)).sqrt()
            residual = (1 - c_skip) * xf - c_out * f  # x~ - D_y
            energy = -(residual * xf).sum(2) / (2 * s2[:, :, 0])
            logits = energy + self.bias.to(dtype)
        return logits.to(out.dtype)


def build_network(
    kind: str, *, dim: int | tuple[int, ...], num_classes: int, model_config: ModelConfig
) -> nn.Module:
    """A network of a registry kind: toy MLP for arch "mlp" (dim: int), NCSN++ for "ncsnpp" (dim: C,
    H, W); model.classifier_head shapes the classifier ("plain" as built, the others wrap it or, for
    "denoiser", replace it)."""
    if kind == "classifier" and model_config.classifier_head == "denoiser":
        if isinstance(dim, int):  # the toy's MLP classifier, with K * dim outputs
            net = _build_network(
                kind, dim=dim, num_classes=num_classes * dim, model_config=model_config
            )
        else:
            net = _build_network(
                "denoiser", dim=dim, num_classes=num_classes, model_config=model_config
            )
        return DenoiserClassifier(net, num_classes)
    net = _build_network(kind, dim=dim, num_classes=num_classes, model_config=model_config)
    if kind == "classifier" and model_config.classifier_head == "scaled":
        return SigmaScaledClassifier(net)
    if kind == "classifier" and model_config.classifier_head != "plain":
        flat = dim if isinstance(dim, int) else math.prod(dim)
        # "gaussian": one Gaussian per class; "energy": one shared by every class (CE cannot see it)
        heads = num_classes if model_config.classifier_head == "gaussian" else 1
        net = EnergyClassifier(net, flat, heads, model_config.energy_rank)
    return net


def _build_network(
    kind: str, *, dim: int | tuple[int, ...], num_classes: int, model_config: ModelConfig
) -> nn.Module:
    if model_config.arch == "ncsnpp":
        if isinstance(dim, int):
            raise ValueError(
                "model.arch 'ncsnpp' needs image data (C, H, W); use 'mlp' for 2-D toy sets"
            )
        return build_image_network(
            kind, image_shape=tuple(dim), num_classes=num_classes, model_config=model_config
        )
    if not isinstance(dim, int):
        raise ValueError(
            f"model.arch 'mlp' needs flat data; got shape {tuple(dim)}: "
            "set model.arch to 'ncsnpp' for images"
        )
    return build_toy_network(kind, dim=dim, num_classes=num_classes, model_config=model_config)


__all__ = [
    "DenoiserClassifier",
    "EnergyClassifier",
    "SigmaScaledClassifier",
    "NoiseEmbedding",
    "ToyClassifier",
    "ToyConditionalScoreNet",
    "ToyJointNet",
    "ToyScoreNet",
    "build_network",
]
