"""NAFNet (Chen et al., "Simple Baselines for Image Restoration", ECCV 2022).

A U-Net of nonlinear-activation-free blocks: LayerNorm, 1×1 expand, 3×3 depthwise conv,
SimpleGate (split channels in two and multiply), simplified channel attention, 1×1 project, and
a feed-forward branch of the same kind; each branch joins the skip with a learned scale that
starts at zero. The network predicts a residual added to its input. Inputs of any size are padded
to a multiple of the total downsampling inside the model and cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the bottom and right of an image to a multiple of ``multiple`` (reflection, or
    replication where the image is too small to reflect); crop the output back with
    ``[..., :h, :w]``.

    Shape:
        ``[B, C, H, W]`` → ``[B, C, H', W']`` with H', W' the next multiples.
    """
    h, w = image.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(image, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else
                 "replicate")


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel.

    Shape:
        ``[B, C, H, W]`` → ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        x = (x - mu) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class SimpleGate(nn.Module):
    """Split the channels in halves and multiply them: ``[B, 2C, H, W]`` → ``[B, C, H, W]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock(nn.Module):
    """One NAFNet block (spatial branch with channel attention, then feed-forward branch)."""

    def __init__(self, c: int, dw_expand: int = 2, ffn_expand: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        dw = c * dw_expand
        self.norm1 = LayerNorm2d(c)
        self.expand = nn.Conv2d(c, dw, 1)
        self.depthwise = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.gate = SimpleGate()
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))
        self.project = nn.Conv2d(dw // 2, c, 1)
        self.norm2 = LayerNorm2d(c)
        self.ffn_in = nn.Conv2d(c, c * ffn_expand, 1)
        self.ffn_out = nn.Conv2d(c * ffn_expand // 2, c, 1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gate(self.depthwise(self.expand(self.norm1(x))))
        y = self.drop(self.project(y * self.attention(y)))
        x = x + y * self.beta
        y = self.drop(self.ffn_out(self.gate(self.ffn_in(self.norm2(x)))))
        return x + y * self.gamma


class NAFNet(nn.Module):
    """NAFNet deblurrer.

    Args:
        width: channels at full resolution (32 and 64 in the paper's GoPro models).
        enc_blocks: blocks per encoder level (each level halves the resolution).
        middle_blocks: blocks at the lowest resolution.
        dec_blocks: blocks per decoder level (same count of levels as ``enc_blocks``).
        in_channels: image channels.

    Shape:
        ``[B, 3, H, W]`` in [0, 1] → ``[B, 3, H, W]`` (any H, W).
    """

    def __init__(self, width: int = 32, enc_blocks: tuple[int, ...] = (1, 1, 1, 28),
                 middle_blocks: int = 1, dec_blocks: tuple[int, ...] = (1, 1, 1, 1),
                 in_channels: int = 3) -> None:
        super().__init__()
        if len(enc_blocks) != len(dec_blocks):
            raise ValueError("enc_blocks and dec_blocks need the same number of levels")
        self.intro = nn.Conv2d(in_channels, width, 3, padding=1)
        self.ending = nn.Conv2d(width, in_channels, 3, padding=1)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        self.decoders, self.ups = nn.ModuleList(), nn.ModuleList()
        c = width
        for n in enc_blocks:
            self.encoders.append(nn.Sequential(*[NAFBlock(c) for _ in range(n)]))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.middle = nn.Sequential(*[NAFBlock(c) for _ in range(middle_blocks)])
        for n in dec_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(c) for _ in range(n)]))
        self.multiple = 2 ** len(enc_blocks)

    def encode(self, padded: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The encoder and middle blocks: ``(lowest-resolution features, skips, finest
        first)`` of an input padded to ``self.multiple``."""
        x = self.intro(padded)
        skips = []
        for enc, down in zip(self.encoders, self.downs):
            x = enc(x)
            skips.append(x)
            x = down(x)
        return self.middle(x), skips

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        inp = pad_to_multiple(image, self.multiple)
        x, skips = self.encode(inp)
        for dec, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            x = dec(up(x) + skip)
        x = self.ending(x) + inp
        return x[..., :h, :w]
