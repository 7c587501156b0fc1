"""NCSN++-style image networks (Song et al. 2021, continuous VE; docs/methods.md section 6).

One module holds the encoder (input conv, BigGAN residual blocks with GroupNorm and swish, FIR
down-sampling, the "residual" input pyramid, self-attention at the attention resolutions, the middle
blocks) and, when asked, the decoder (residual blocks over the encoder's skips, FIR up-sampling) and
a classifier head (GroupNorm, swish, global average pool, linear). The four registry kinds are views
of
it: score (encoder + decoder), classifier (encoder + head; the papers' "encoder half of NCSN++"),
joint (one encoder shared by decoder and head), conditional (score with a class embedding added to
the
noise embedding; label K is the null label for CFG). Scores are divided by sigma (scale_by_sigma).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainables.config import ModelConfig

# Sizes live in trainables.config.NCSNPP_SIZES: "paper" is the CIFAR-10 NCSN++ (cont.), "deep" its
# 8-block variant, "small" fits a one-GPU study, "tiny" runs CPU tests in seconds.


def _groups(channels: int) -> int:
    return min(channels // 4, 32)


def _fir_kernel(channels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], device=device, dtype=dtype)
    k = torch.outer(k, k)
    return (k / k.sum()).expand(channels, 1, 4, 4)


def fir_down(x: torch.Tensor) -> torch.Tensor:
    """Anti-aliased 2x down-sampling with the [1, 3, 3, 1] FIR filter (no parameters)."""
    return F.conv2d(
        x, _fir_kernel(x.shape[1], x.device, x.dtype), stride=2, padding=1, groups=x.shape[1]
    )


def fir_up(x: torch.Tensor) -> torch.Tensor:
    """2x up-sampling with the [1, 3, 3, 1] FIR filter (no parameters)."""
    return F.conv_transpose2d(
        x, 4 * _fir_kernel(x.shape[1], x.device, x.dtype), stride=2, padding=1, groups=x.shape[1]
    )


def _conv(cin: int, cout: int, k: int = 3, init_scale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, padding=k // 2)
    if init_scale != 1.0:
        with torch.no_grad():
            conv.weight.mul_(init_scale)
    return conv


class ResBlock(nn.Module):
    """BigGAN residual block: GN, swish, (up/down), conv, + dense(temb), GN, swish, dropout,
    conv."""

    def __init__(
        self,
        cin: int,
        cout: int,
        temb_dim: int,
        dropout: float,
        *,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        self.up, self.down = up, down
        self.norm0 = nn.GroupNorm(_groups(cin), cin, eps=1e-6)
        self.conv0 = _conv(cin, cout)
        self.dense = nn.Linear(temb_dim, cout)
        self.norm1 = nn.GroupNorm(_groups(cout), cout, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = _conv(cout, cout, init_scale=1e-5)  # near-zero residual at init (init_scale 0)
        self.skip = nn.Conv2d(cin, cout, 1) if (cin != cout or up or down) else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm0(x))
        if self.up:
            h, x = fir_up(h), fir_up(x)
        elif self.down:
            h, x = fir_down(h), fir_down(x)
        h = self.conv0(h) + self.dense(F.silu(temb))[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) / math.sqrt(2.0)


class AttnBlock(nn.Module):
    """Single-head self-attention over positions (NIN q, k, v, out), skip-rescaled."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels, eps=1e-6)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, hgt * wid).transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        h = self.out(h.transpose(-1, -2).reshape(b, c, hgt, wid))
        return (x + h) / math.sqrt(2.0)


class FourierEmbedding(nn.Module):
    """Gaussian Fourier projection of log sigma (fixed random frequencies, scale 16)."""

    def __init__(self, size: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("W", torch.randn(size) * scale)

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        proj = torch.log(sigma)[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class NCSNpp(nn.Module):
    """NCSN++ encoder with an optional decoder (score), classifier head and class embedding."""

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        nf: int = 128,
        ch_mult: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 4,
        attn_resolutions: tuple[int, ...] = (16,),
        dropout: float = 0.1,
        fourier_scale: float = 16.0,
        decoder: bool = True,
        head_classes: int | None = None,
        label_classes: int | None = None,
        center_input: bool = True,
        out_channels: int | None = None,
    ):
        super().__init__()
        channels, res, _ = image_shape
        # Images arrive in [0, 1]; like score_sde's NCSN++ (data.centered = False) the network maps
        # its input to [-1, 1] first.
        self.center_input = center_input
        self.image_shape = tuple(image_shape)
        temb = 4 * nf
        self.fourier = FourierEmbedding(nf, fourier_scale)
        self.temb = nn.Sequential(nn.Linear(2 * nf, temb), nn.SiLU(), nn.Linear(temb, temb))
        # Class embedding for Cond / CFG: K classes plus the null label K.
        self.label_embed = (
            nn.Embedding(label_classes + 1, temb) if label_classes is not None else None
        )
        self.num_classes = label_classes
        self.conv_in = _conv(channels, nf)
        # Encoder: (kind, module) steps; skip channels recorded for the decoder.
        self.down = nn.ModuleList()
        self.down_kinds: list[str] = []
        skips, cin, pyramid_ch = [nf], nf, channels
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                cout = nf * mult
                self.down.append(ResBlock(cin, cout, temb, dropout))
                self.down_kinds.append("res")
                cin = cout
                if res in attn_resolutions:
                    self.down.append(AttnBlock(cin))
                    self.down_kinds.append("attn")
                skips.append(cin)
            if level != len(ch_mult) - 1:
                self.down.append(ResBlock(cin, cin, temb, dropout, down=True))
                self.down_kinds.append("down")
                self.down.append(_conv(pyramid_ch, cin))  # input pyramid: FIR down then conv 3x3
                self.down_kinds.append("pyramid")
                pyramid_ch = cin
                res //= 2
                skips.append(cin)
        self.mid = nn.ModuleList(
            [ResBlock(cin, cin, temb, dropout), AttnBlock(cin), ResBlock(cin, cin, temb, dropout)]
        )
        self.encoder_channels = cin
        self.up: nn.ModuleList | None = None
        if decoder:
            self.up = nn.ModuleList()
            self.up_kinds: list[str] = []
            for level in reversed(range(len(ch_mult))):
                for _ in range(num_res_blocks + 1):
                    cout = nf * ch_mult[level]
                    self.up.append(ResBlock(cin + skips.pop(), cout, temb, dropout))
                    self.up_kinds.append("res")
                    cin = cout
                if res in attn_resolutions:
                    self.up.append(AttnBlock(cin))
                    self.up_kinds.append("attn")
                if level != 0:
                    self.up.append(ResBlock(cin, cin, temb, dropout, up=True))
                    self.up_kinds.append("upres")
                    res *= 2
            self.norm_out = nn.GroupNorm(_groups(cin), cin, eps=1e-6)
            self.conv_out = _conv(cin, out_channels or channels, init_scale=1e-5)
        self.head: nn.Sequential | None = None
        if head_classes is not None:
            c = self.encoder_channels
            self.head = nn.Sequential(
                nn.GroupNorm(_groups(c), c, eps=1e-6),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(c, head_classes),
            )

    def embed(self, sigma: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Noise embedding (plus class embedding when the network has one)."""
        temb = self.temb(self.fourier(sigma))
        if self.label_embed is not None:
            if y is None:
                raise ValueError("a class-conditional network needs labels y (K = null label)")
            temb = temb + self.label_embed(y)
        return temb

    def encode(
        self, x: torch.Tensor, temb: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder features at the lowest resolution and the skips for the decoder."""
        if self.center_input:
            x = 2 * x - 1
        pyramid = x
        hs = [self.conv_in(x)]
        h = hs[-1]
        for kind, module in zip(self.down_kinds, self.down):
            if kind == "res":
                h = module(h, temb)
                hs.append(h)
            elif kind == "attn":
                h = module(h)
                hs[-1] = h
            elif kind == "down":
                h = module(h, temb)
            else:  # pyramid: residual input pyramid, combined with the down-sampled features
                pyramid = module(fir_down(pyramid))
                pyramid = (pyramid + h) / math.sqrt(2.0)
                h = pyramid
                hs.append(h)
        h = self.mid[0](h, temb)
        h = self.mid[1](h)
        h = self.mid[2](h, temb)
        return h, hs

    def decode(self, h: torch.Tensor, hs: list[torch.Tensor], temb: torch.Tensor) -> torch.Tensor:
        """Decoder over the encoder's skips: the un-scaled output (channels of the image)."""
        assert self.up is not None, "this network has no decoder"
        hs = list(hs)
        for kind, module in zip(self.up_kinds, self.up):
            if kind == "res":
                h = module(torch.cat([h, hs.pop()], dim=1), temb)
            elif kind == "attn":
                h = module(h)
            else:
                h = module(h, temb)
        return self.conv_out(F.silu(self.norm_out(h)))

    def score(
        self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Score estimate (decoder output divided by sigma)."""
        temb = self.embed(sigma, y)
        h, hs = self.encode(x, temb)
        return self.decode(h, hs, temb) / sigma.reshape(-1, 1, 1, 1)

    def logits(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Classifier logits from the pooled encoder features."""
        assert self.head is not None, "this network has no classifier head"
        h, _ = self.encode(x, self.embed(sigma))
        return self.head(h)


class ImageScoreNet(NCSNpp):
    """Unconditional score model s(x, sigma)."""

    def __init__(self, **kw):
        super().__init__(decoder=True, **kw)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.score(x, sigma)


class ImageDenoiserNet(NCSNpp):
    """K images per input, F_y(x, sigma) (the decoder's output, not divided by sigma): the
    per-class denoisers of the 'denoiser' classifier head (networks.DenoiserClassifier)."""

    def __init__(self, num_classes: int, **kw):
        super().__init__(decoder=True, out_channels=num_classes * kw["image_shape"][0], **kw)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        temb = self.embed(sigma)
        h, hs = self.encode(x, temb)
        return self.decode(h, hs, temb)


class ImageClassifier(NCSNpp):
    """Noise-conditional classifier: the encoder half and a pooled linear head."""

    def __init__(self, num_classes: int, **kw):
        super().__init__(decoder=False, head_classes=num_classes, **kw)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.logits(x, sigma)


class ImageJointNet(NCSNpp):
    """Joint-SC: one encoder shared by the decoder (score) and the classifier head."""

    def __init__(self, num_classes: int, **kw):
        super().__init__(decoder=True, head_classes=num_classes, **kw)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score and logits from one encoder pass."""
        temb = self.embed(sigma)
        h, hs = self.encode(x, temb)
        return self.decode(h, hs, temb) / sigma.reshape(-1, 1, 1, 1), self.head(h)


class ImageConditionalScoreNet(NCSNpp):
    """Class-conditional score s(x, sigma, y), y in [0, K] with K the null label (Cond, CFG)."""

    def __init__(self, num_classes: int, **kw):
        super().__init__(decoder=True, label_classes=num_classes, **kw)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.score(x, sigma, y)


IMAGE_NETWORKS = {
    "score": ImageScoreNet,
    "classifier": ImageClassifier,
    "joint": ImageJointNet,
    "conditional": ImageConditionalScoreNet,
    "denoiser": ImageDenoiserNet,
}


def build_image_network(
    kind: str, *, image_shape: tuple[int, int, int], num_classes: int, model_config: ModelConfig
) -> nn.Module:
    """An NCSN++ network of a registry kind, sized by the ModelConfig."""
    if kind not in IMAGE_NETWORKS:
        raise ValueError(f"unknown network kind {kind!r}; valid: {sorted(IMAGE_NETWORKS)}")
    kw = dict(
        image_shape=tuple(image_shape),
        nf=model_config.nf,
        ch_mult=tuple(model_config.ch_mult),
        num_res_blocks=model_config.num_res_blocks,
        attn_resolutions=tuple(model_config.attn_resolutions),
        dropout=model_config.dropout,
        fourier_scale=model_config.fourier_scale,
        center_input=model_config.center_input,
    )
    if kind == "score":
        return ImageScoreNet(**kw)
    return IMAGE_NETWORKS[kind](num_classes=num_classes, **kw)
