"""Networks: noise-conditioned toy MLPs (2-D data) and NCSN++-style image networks."""

from __future__ import annotations

from torch import nn

from trainables.config import ModelConfig
from trainables.networks.toy import (
    NoiseEmbedding,
    ToyClassifier,
    ToyConditionalScoreNet,
    ToyJointNet,
    ToyScoreNet,
)
from trainables.networks.toy import build_network as build_toy_network


def build_network(
    kind: str, *, dim: int | tuple[int, ...], num_classes: int, model_config: ModelConfig
) -> nn.Module:
    """A network of a registry kind: toy MLP for arch "mlp" (dim: int), NCSN++ for "ncsnpp" (dim: C,
    H, W)."""
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
    "NoiseEmbedding",
    "ToyClassifier",
    "ToyConditionalScoreNet",
    "ToyJointNet",
    "ToyScoreNet",
    "build_network",
]
