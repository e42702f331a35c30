"""Restormer (Zamir et al., "Restormer: Efficient Transformer for High-Resolution Image
Restoration", CVPR 2022).

A four-level U-Net of transformer blocks. Each block has two residual branches behind a channel
LayerNorm:

* Multi-Dconv Head Transposed Attention (MDTA): queries, keys and values come from a 1×1 conv
  followed by a 3×3 depthwise conv; attention is computed *across channels* (a ``C/h × C/h`` map
  per head, so the cost is linear in the number of pixels), with q and k L2-normalised over the
  pixels and a learnable temperature per head.
* Gated-Dconv Feed-forward Network (GDFN): 1×1 expand to two branches, 3×3 depthwise conv, the
  GELU of one branch gates the other, 1×1 project back.

Downsampling is a 3×3 conv halving the channels then pixel-unshuffle (so channels double and the
resolution halves); upsampling is a 3×3 conv doubling the channels then pixel-shuffle. Decoder
levels 3 and 2 concatenate the encoder skip and reduce the channels back with a 1×1 conv; level 1
keeps the concatenated ``2 × width`` channels for its blocks and the refinement blocks. The
network predicts a residual added to its input. Inputs of any size are padded to a multiple of 8
inside the model and cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bluref_ray.models.nafnet import LayerNorm2d, pad_to_multiple


class MDTA(nn.Module):
    """Multi-Dconv Head Transposed Attention: self-attention across channels.

    Args:
        channels: input and output channels.
        heads: attention heads; must divide ``channels``.
        bias: whether the convolutions have a bias.

    Shape:
        ``[B, C, H, W]`` → ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, heads: int, bias: bool = False) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"{heads} heads do not divide {channels} channels")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=bias)
        self.qkv_dw = nn.Conv2d(3 * channels, 3 * channels, 3, padding=1, groups=3 * channels,
                                bias=bias)
        self.project = nn.Conv2d(channels, channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # [B, 3C, H, W] -> three [B, heads, C/heads, H*W]
        qkv = self.qkv_dw(self.qkv(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.unbind(1)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature  # [B, heads, C/h, C/h]
        out = attn.softmax(dim=-1) @ v
        return self.project(out.reshape(b, c, h, w))


class GDFN(nn.Module):
    """Gated-Dconv Feed-forward Network.

    Args:
        channels: input and output channels.
        expansion: hidden channels per branch, as a multiple of ``channels``.
        bias: whether the convolutions have a bias.

    Shape:
        ``[B, C, H, W]`` → ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, expansion: float, bias: bool = False) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.expand = nn.Conv2d(channels, 2 * hidden, 1, bias=bias)
        self.depthwise = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden,
                                   bias=bias)
        self.project = nn.Conv2d(hidden, channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.depthwise(self.expand(x)).chunk(2, dim=1)
        return self.project(F.gelu(gate) * value)


class TransformerBlock(nn.Module):
    """One Restormer block: ``x + MDTA(LN(x))``, then ``x + GDFN(LN(x))``.

    Shape:
        ``[B, C, H, W]`` → ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, heads: int, ffn_expansion: float,
                 bias: bool = False) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(channels, eps=1e-5)
        self.attention = MDTA(channels, heads, bias)
        self.norm2 = LayerNorm2d(channels, eps=1e-5)
        self.ffn = GDFN(channels, ffn_expansion, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def _down(channels: int) -> nn.Module:
    """Halve the resolution and double the channels: ``[B, C, H, W]`` → ``[B, 2C, H/2, W/2]``."""
    return nn.Sequential(nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False),
                         nn.PixelUnshuffle(2))


def _up(channels: int) -> nn.Module:
    """Double the resolution and halve the channels: ``[B, C, H, W]`` → ``[B, C/2, 2H, 2W]``."""
    return nn.Sequential(nn.Conv2d(channels, 2 * channels, 3, padding=1, bias=False),
                         nn.PixelShuffle(2))


class Restormer(nn.Module):
    """Restormer deblurrer.

    Args:
        width: channels at full resolution (48 in the paper); level ``i`` has ``width * 2**i``.
        blocks: transformer blocks per level, from full resolution to the latent level (4 levels);
            decoder levels reuse the counts of the encoder levels.
        refinement_blocks: blocks at full resolution after the decoder.
        heads: attention heads per level (4 levels); each must divide that level's channels.
        ffn_expansion: hidden-channel factor of the feed-forward networks.
        in_channels: image channels.

    Shape:
        ``[B, 3, H, W]`` in [0, 1] → ``[B, 3, H, W]`` (any H, W).
    """

    def __init__(self, width: int = 48, blocks: tuple[int, ...] = (4, 6, 6, 8),
                 refinement_blocks: int = 4, heads: tuple[int, ...] = (1, 2, 4, 8),
                 ffn_expansion: float = 2.66, in_channels: int = 3) -> None:
        super().__init__()
        if len(blocks) != 4 or len(heads) != 4:
            raise ValueError("blocks and heads need one entry per level (4 levels)")
        if width % 2:
            raise ValueError(f"width must be even, got {width}")

        def stage(n: int, channels: int, level_heads: int) -> nn.Sequential:
            return nn.Sequential(*[TransformerBlock(channels, level_heads, ffn_expansion)
                                   for _ in range(n)])

        c1, c2, c3, c4 = (width * 2**i for i in range(4))
        self.embed = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.encoder1 = stage(blocks[0], c1, heads[0])
        self.down1 = _down(c1)
        self.encoder2 = stage(blocks[1], c2, heads[1])
        self.down2 = _down(c2)
        self.encoder3 = stage(blocks[2], c3, heads[2])
        self.down3 = _down(c3)
        self.latent = stage(blocks[3], c4, heads[3])
        self.up3 = _up(c4)
        self.reduce3 = nn.Conv2d(2 * c3, c3, 1, bias=False)
        self.decoder3 = stage(blocks[2], c3, heads[2])
        self.up2 = _up(c3)
        self.reduce2 = nn.Conv2d(2 * c2, c2, 1, bias=False)
        self.decoder2 = stage(blocks[1], c2, heads[1])
        self.up1 = _up(c2)
        # Level 1 works on the concatenation [upsampled, skip] without reducing it.
        self.decoder1 = stage(blocks[0], 2 * c1, heads[0])
        self.refinement = stage(refinement_blocks, 2 * c1, heads[0])
        self.output = nn.Conv2d(2 * c1, in_channels, 3, padding=1, bias=False)
        self.multiple = 8

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        x = inp = pad_to_multiple(image, self.multiple)
        e1 = self.encoder1(self.embed(x))
        e2 = self.encoder2(self.down1(e1))
        e3 = self.encoder3(self.down2(e2))
        x = self.latent(self.down3(e3))
        x = self.decoder3(self.reduce3(torch.cat([self.up3(x), e3], dim=1)))
        x = self.decoder2(self.reduce2(torch.cat([self.up2(x), e2], dim=1)))
        x = self.decoder1(torch.cat([self.up1(x), e1], dim=1))
        x = self.output(self.refinement(x)) + inp
        return x[..., :h, :w]
