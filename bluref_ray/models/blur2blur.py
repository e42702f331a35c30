"""The networks of Blur2Blur (Pham et al., CVPR 2024), written here from the paper.

- :class:`KernelWizard`: the blur-kernel extractor. An encoder F reads a blur code from a
  (sharp, blurry) pair; a generator G applies a code to another sharp image. The code is a
  vector (no spatial layout, so it cannot carry the pair's content): it gives an explicit blur
  kernel, applied in linear light, and conditions a small residual U-Net for what one kernel
  does not explain (blur that varies across the frame, noise, the camera's response).
- :class:`MIMOUNet`: the blur translator, a U-Net with an input and an output at 1, 1/2 and
  1/4 scale (MIMO-UNet without its cross-scale fusion blocks); each output is a residual added
  to the input at its scale, and the output convolutions start at zero, so an untrained
  translator is the identity.
- :class:`PatchDiscriminator`: a PatchGAN (strided 4×4 convolutions, instance norm or none)
  whose one set of weights judges each output scale of the translator.

Shapes: images ``[B, 3, H, W]`` in [0, 1], any H, W (the U-Nets pad to a multiple of 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: gamma of the cameras: the kernel is applied in linear light, as blur forms
GAMMA = 2.2


class ResBlock(nn.Module):
    """conv-ReLU-conv plus the input."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(c, c, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _blocks(c: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[ResBlock(c) for _ in range(n)])


def _pad4(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % 4, (-w) % 4
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, h, w


def pyramid(x: torch.Tensor, levels: int = 3) -> list[torch.Tensor]:
    """``x`` at 1/4, 1/2 and full scale (coarse to fine), by area averaging."""
    out = [x]
    for _ in range(levels - 1):
        out.insert(0, F.avg_pool2d(out[0], 2, ceil_mode=True))
    return out


def apply_kernel(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Blur each image by its own kernel in linear light.

    Shape:
        ``[B, 3, H, W]``, ``[B, K, K]`` (each summing to 1) → ``[B, 3, H, W]``.
    """
    b, c, h, w = image.shape
    k = kernel.shape[-1]
    lin = image.clamp(0, 1).pow(GAMMA).reshape(1, b * c, h, w)
    mode = "reflect" if min(h, w) > k // 2 else "replicate"
    lin = F.pad(lin, (k // 2,) * 4, mode=mode)
    weight = kernel.to(lin.dtype).repeat_interleave(c, 0)[:, None]
    out = F.conv2d(lin, weight, groups=b * c).reshape(b, c, h, w)
    return out.clamp_min(1e-8).pow(1.0 / GAMMA)


class KernelWizard(nn.Module):
    """Blur-kernel extractor: F (:meth:`encode`) and G (:meth:`apply`), trained together.

    Args:
        width: channels of the shared feature extractor (F and G use 2× and 4× deeper down).
        code: length of the blur code.
        kernel_size: side of the explicit kernel (odd; at least the longest blur streak).
        blocks: residual blocks per stage.
    """

    def __init__(self, width: int = 16, code: int = 64, kernel_size: int = 21,
                 blocks: int = 1) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        w = width
        self.features = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1), nn.ReLU(inplace=True),
                                      _blocks(w, blocks))
        self.encoder = nn.Sequential(
            nn.Conv2d(2 * w, 2 * w, 3, 2, 1), nn.ReLU(inplace=True), _blocks(2 * w, blocks),
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.ReLU(inplace=True), _blocks(4 * w, blocks))
        self.to_code = nn.Linear(8 * w, code)  # mean and max over the frame
        self.to_kernel = nn.Linear(code, kernel_size * kernel_size)
        # starts as a narrow Gaussian: an untrained G barely blurs
        r = torch.arange(kernel_size, dtype=torch.float32) - kernel_size // 2
        d2 = (r[:, None] ** 2 + r[None] ** 2).flatten()
        with torch.no_grad():
            self.to_kernel.weight.mul_(0.1)
            self.to_kernel.bias.copy_(-d2 / 2.0)
        # G's residual U-Net, conditioned on the code at every level
        self.g_in = nn.Conv2d(w + code, w, 3, 1, 1)
        self.g_enc1 = _blocks(w, blocks)
        self.g_down = nn.Conv2d(w, 2 * w, 3, 2, 1)
        self.g_enc2 = _blocks(2 * w, blocks)
        self.g_film = nn.Linear(code, 4 * w)
        self.g_up = nn.ConvTranspose2d(2 * w, w, 2, 2)
        self.g_dec = _blocks(w, blocks)
        self.g_out = nn.Conv2d(w, 3, 3, 1, 1)
        nn.init.zeros_(self.g_out.weight)
        nn.init.zeros_(self.g_out.bias)

    def encode(self, sharp: torch.Tensor, blurry: torch.Tensor) -> torch.Tensor:
        """F: the blur code of a pair. Shape: ``[B,3,H,W]`` ×2 → ``[B, code]``."""
        f = self.encoder(torch.cat([self.features(sharp), self.features(blurry)], 1))
        return self.to_code(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1))

    def kernel(self, code: torch.Tensor) -> torch.Tensor:
        """The explicit kernel of a code. Shape: ``[B, code]`` → ``[B, K, K]`` summing to 1."""
        k = self.kernel_size
        return torch.softmax(self.to_kernel(code), -1).reshape(-1, k, k)

    def apply(self, sharp: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """G: ``sharp`` blurred by ``code``. Shape: ``[B,3,H,W]``, ``[B, code]`` → ``[B,3,H,W]``."""
        base = apply_kernel(sharp, self.kernel(code).float())
        x, h, w = _pad4(base)
        cmap = code[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        e1 = self.g_enc1(F.relu(self.g_in(torch.cat([self.features(x), cmap], 1))))
        e2 = self.g_enc2(F.relu(self.g_down(e1)))
        gain, shift = self.g_film(code)[:, :, None, None].chunk(2, 1)
        e2 = e2 * (1 + gain) + shift
        d = self.g_dec(self.g_up(e2)[..., :e1.shape[-2], :e1.shape[-1]] + e1)
        return (base + self.g_out(d)[..., :h, :w]).clamp(0, 1)

    def forward(self, sharp: torch.Tensor, blurry: torch.Tensor) -> torch.Tensor:
        """The pair's blurry image remade from its sharp one: ``G(sharp, F(sharp, blurry))``."""
        return self.apply(sharp, self.encode(sharp, blurry))


class MIMOUNet(nn.Module):
    """The blur translator: three input and output scales.

    Args:
        width: channels at full scale (2× at 1/2, 4× at 1/4).
        blocks: residual blocks per encoder and decoder stage.
    """

    def __init__(self, width: int = 32, blocks: int = 8) -> None:
        super().__init__()
        w = width
        self.head = nn.Conv2d(3, w, 3, 1, 1)
        self.enc1 = _blocks(w, blocks)
        self.down2, self.inject2 = nn.Conv2d(w, 2 * w, 3, 2, 1), nn.Conv2d(3, 2 * w, 3, 1, 1)
        self.merge2 = nn.Conv2d(4 * w, 2 * w, 1)
        self.enc2 = _blocks(2 * w, blocks)
        self.down3, self.inject3 = nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.Conv2d(3, 4 * w, 3, 1, 1)
        self.merge3 = nn.Conv2d(8 * w, 4 * w, 1)
        self.enc3 = _blocks(4 * w, blocks)
        self.dec3 = _blocks(4 * w, blocks)
        self.up3 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2)
        self.skip2 = nn.Conv2d(4 * w, 2 * w, 1)
        self.dec2 = _blocks(2 * w, blocks)
        self.up2 = nn.ConvTranspose2d(2 * w, w, 2, 2)
        self.skip1 = nn.Conv2d(2 * w, w, 1)
        self.dec1 = _blocks(w, blocks)
        self.outs = nn.ModuleList([nn.Conv2d(c, 3, 3, 1, 1) for c in (4 * w, 2 * w, w)])
        for conv in self.outs:  # an untrained translator is the identity
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def scales(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs at 1/4, 1/2 and full scale (coarse to fine), each the residual plus the input
        at that scale (``pyramid(x)``), cropped to ``ceil(H/s) × ceil(W/s)``."""
        inputs = pyramid(x)
        xp, h, w = _pad4(x)
        x2, x3 = F.avg_pool2d(xp, 2), F.avg_pool2d(xp, 4)
        act = nn.functional.relu
        e1 = self.enc1(act(self.head(xp)))
        e2 = self.enc2(act(self.merge2(torch.cat([self.down2(e1), self.inject2(x2)], 1))))
        e3 = self.enc3(act(self.merge3(torch.cat([self.down3(e2), self.inject3(x3)], 1))))
        d3 = self.dec3(e3)
        d2 = self.dec2(act(self.skip2(torch.cat([self.up3(d3), e2], 1))))
        d1 = self.dec1(act(self.skip1(torch.cat([self.up2(d2), e1], 1))))
        outs = []
        for conv, d, inp in zip(self.outs, (d3, d2, d1), inputs):
            outs.append(conv(d)[..., :inp.shape[-2], :inp.shape[-1]] + inp)
        return outs

    def forward(self, x: torch.Tensor, return_scales: bool = False
                ) -> torch.Tensor | list[torch.Tensor]:
        """The translated image at full scale (every scale with ``return_scales``)."""
        outs = self.scales(x)
        return outs if return_scales else outs[-1]


class PatchDiscriminator(nn.Module):
    """PatchGAN: a map of real/fake logits, one per overlapping patch.

    Args:
        width: channels of the first layer (doubled per stride-2 layer, at most 8×).
        layers: stride-2 layers (each halves the size, rounding down; the input should be at
            least ``2**layers * 2`` pixels on a side).
        norm: ``instance`` (the paper's PatchGAN) or ``none``. Instance norm divides each
            patch map by its own spread, so it cannot see how strong the detail of an image is
            (how much noise, how sharp): without it, the gradient penalty keeps D smooth.
    """

    def __init__(self, width: int = 64, layers: int = 3, norm: str = "instance") -> None:
        super().__init__()
        if norm not in ("instance", "none"):
            raise ValueError(f"PatchDiscriminator norm={norm!r}: use instance or none")

        def normed(c: int) -> list[nn.Module]:
            return [nn.InstanceNorm2d(c, affine=True)] if norm == "instance" else []

        mods: list[nn.Module] = [nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        c = width
        for i in range(1, layers):
            nxt = width * min(2 ** i, 8)
            mods += [nn.Conv2d(c, nxt, 4, 2, 1), *normed(nxt), nn.LeakyReLU(0.2, inplace=True)]
            c = nxt
        nxt = width * min(2 ** layers, 8)
        mods += [nn.Conv2d(c, nxt, 3, 1, 1), *normed(nxt), nn.LeakyReLU(0.2, inplace=True),
                 nn.Conv2d(nxt, 1, 3, 1, 1)]
        self.net = nn.Sequential(*mods)
        self.min_size = 2 ** layers * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: ``[B, 3, H, W]`` → ``[B, 1, H // 2**layers, W // 2**layers]``."""
        return self.net(x)
