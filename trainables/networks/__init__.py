"""Networks: noise-conditioned toy MLPs (2-D data) and NCSN++-style image networks."""

from __future__ import annotations

import math

import torch
from torch import nn

from trainables.config import ModelConfig
from trainables.networks.energy import GaussianEnergy
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


def build_network(
    kind: str, *, dim: int | tuple[int, ...], num_classes: int, model_config: ModelConfig
) -> nn.Module:
    """A network of a registry kind: toy MLP for arch "mlp" (dim: int), NCSN++ for "ncsnpp" (dim: C,
    H, W); a classifier with model.classifier_head 'gaussian' gets the energy head."""
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
        from trainables.networks.ncsnpp import build_image_network

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
    "EnergyClassifier",
    "SigmaScaledClassifier",
    "NoiseEmbedding",
    "ToyClassifier",
    "ToyConditionalScoreNet",
    "ToyJointNet",
    "ToyScoreNet",
    "build_network",
]
