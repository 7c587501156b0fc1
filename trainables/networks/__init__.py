"""Networks: noise-conditioned toy MLPs (image networks arrive with the image-scale issue)."""

from trainables.networks.toy import (
    NoiseEmbedding,
    ToyClassifier,
    ToyConditionalScoreNet,
    ToyJointNet,
    ToyScoreNet,
    build_network,
)

__all__ = [
    "NoiseEmbedding",
    "ToyClassifier",
    "ToyConditionalScoreNet",
    "ToyJointNet",
    "ToyScoreNet",
    "build_network",
]
