"""Noise-conditioned MLPs for 2-D toy data: every hidden layer sees the noise embedding."""

from __future__ import annotations

import math

import torch
from torch import nn

from trainables.config import ModelConfig


class NoiseEmbedding(nn.Module):
    """Gaussian Fourier features of log sigma (scale 16, as NCSN++), then an MLP."""

    def __init__(self, embed_dim: int = 32, scale: float = 16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(embed_dim // 2) * scale)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        """Embed per-example noise levels [B] -> [B, embed_dim]."""
        proj = torch.log(sigma)[:, None] * self.freqs[None, :] * 2 * math.pi
        return self.mlp(torch.cat([torch.sin(proj), torch.cos(proj)], dim=1))


class ConditionedMLP(nn.Module):
    """MLP trunk whose every hidden layer adds a projection of the conditioning embedding."""

    def __init__(self, in_dim: int, hidden: int, depth: int, embed_dim: int):
        super().__init__()
        self.inp = nn.Linear(in_dim, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.cond = nn.ModuleList(nn.Linear(embed_dim, hidden) for _ in range(depth + 1))
        self.act = nn.SiLU()  # smooth: SC and QC differentiate through grad_x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Features [B, hidden] of x given the embedding."""
        h = self.act(self.inp(x) + self.cond[0](emb))
        for layer, cond in zip(self.layers, self.cond[1:]):
            h = self.act(layer(h) + cond(emb))
        return h


class ToyScoreNet(nn.Module):
    """Unconditional score model s(x, sigma); output divided by sigma (scale_by_sigma)."""

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        embed_dim: int = 32,
        fourier_scale: float = 16.0,
    ):
        super().__init__()
        self.embed = NoiseEmbedding(embed_dim, fourier_scale)
        self.trunk = ConditionedMLP(dim, hidden, depth, embed_dim)
        self.head = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Score estimate [B, dim]."""
        return self.head(self.trunk(x, self.embed(sigma))) / sigma[:, None]


class ToyClassifier(nn.Module):
    """Noise-conditional classifier f(x, sigma) -> logits [B, K]."""

    def __init__(
        self,
        dim: int = 2,
        num_classes: int = 2,
        hidden: int = 128,
        depth: int = 3,
        embed_dim: int = 32,
        fourier_scale: float = 16.0,
    ):
        super().__init__()
        self.embed = NoiseEmbedding(embed_dim, fourier_scale)
        self.trunk = ConditionedMLP(dim, hidden, depth, embed_dim)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Logits [B, K]."""
        return self.head(self.trunk(x, self.embed(sigma)))


class ToyJointNet(nn.Module):
    """Joint-SC network (paper 000): one shared encoder, a score head and a classifier head."""

    def __init__(
        self,
        dim: int = 2,
        num_classes: int = 2,
        hidden: int = 128,
        depth: int = 3,
        embed_dim: int = 32,
        fourier_scale: float = 16.0,
    ):
        super().__init__()
        self.embed = NoiseEmbedding(embed_dim, fourier_scale)
        self.encoder = ConditionedMLP(dim, hidden, depth, embed_dim)
        self.score_head = nn.Linear(hidden, dim)
        self.class_head = nn.Linear(hidden, num_classes)

    def score(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Score head [B, dim], divided by sigma."""
        return self.score_head(self.encoder(x, self.embed(sigma))) / sigma[:, None]

    def logits(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Classifier head [B, K]."""
        return self.class_head(self.encoder(x, self.embed(sigma)))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score and logits from one encoder pass."""
        h = self.encoder(x, self.embed(sigma))
        return self.score_head(h) / sigma[:, None], self.class_head(h)


class ToyConditionalScoreNet(nn.Module):
    """Class-conditional score model s(x, sigma, y); label index K is the null label (CFG)."""

    def __init__(
        self,
        dim: int = 2,
        num_classes: int = 2,
        hidden: int = 128,
        depth: int = 3,
        embed_dim: int = 32,
        fourier_scale: float = 16.0,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.embed = NoiseEmbedding(embed_dim, fourier_scale)
        self.label_embed = nn.Embedding(
            num_classes + 1, embed_dim
        )  # class embedding added to noise embedding
        self.trunk = ConditionedMLP(dim, hidden, depth, embed_dim)
        self.head = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Conditional score [B, dim]; y in [0, K], K = null."""
        emb = self.embed(sigma) + self.label_embed(y)
        return self.head(self.trunk(x, emb)) / sigma[:, None]


NETWORKS = {
    "score": ToyScoreNet,
    "classifier": ToyClassifier,
    "joint": ToyJointNet,
    "conditional": ToyConditionalScoreNet,
}


def build_network(kind: str, *, dim: int, num_classes: int, model_config: ModelConfig) -> nn.Module:
    """Build a toy network of a registry kind from a ModelConfig."""
    if kind not in NETWORKS:
        raise ValueError(f"unknown network kind {kind!r}; valid: {sorted(NETWORKS)}")
    kw = dict(
        hidden=model_config.hidden,
        depth=model_config.depth,
        embed_dim=model_config.embed_dim,
        fourier_scale=model_config.fourier_scale,
    )
    if kind == "score":
        return ToyScoreNet(dim=dim, **kw)
    return NETWORKS[kind](dim=dim, num_classes=num_classes, **kw)
