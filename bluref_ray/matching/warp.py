"""Backward warping by a dense flow, with out-of-frame pixels marked invalid."""

from __future__ import annotations

import torch
from torch import nn


def pixel_grid(flow: torch.Tensor) -> torch.Tensor:
    """Absolute sampling positions ``(x + dx, y + dy)``.

    Shape:
        ``[B, 2, H, W]`` → ``[B, 2, H, W]``.
    """
    _, _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype), indexing="ij")
    return flow + torch.stack([xs, ys])[None]


def bilinear_sample(image: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` at real positions, clamped to the border; exact at integer positions.

    Differentiable in ``image``, ``x`` and ``y`` (unlike ``grid_sample``'s normalised grid, no
    rounding error creeps in: zero flow returns the image bit for bit).

    Shape:
        image ``[B, C, H, W]``, x and y ``[B, H', W']`` → ``[B, C, H', W']``.
    """
    b, c, h, w = image.shape
    x = x.clamp(0, w - 1)
    y = y.clamp(0, h - 1)
    x0, y0 = x.detach().floor(), y.detach().floor()
    wx, wy = (x - x0).unsqueeze(1), (y - y0).unsqueeze(1)
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    flat = image.reshape(b, c, h * w)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        idx = (yy * w + xx).reshape(b, 1, -1).expand(b, c, -1)  # a view: no copy per channel
        return flat.gather(2, idx).reshape(b, c, *x.shape[1:])

    # Four corners, one at a time, so at most two image-sized temporaries are alive.
    out = at(y0, x0) * ((1 - wx) * (1 - wy))
    out = out + at(y0, x1) * (wx * (1 - wy))
    out = out + at(y1, x0) * ((1 - wx) * wy)
    return out + at(y1, x1) * (wx * wy)


def warp(image: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``image`` at each query pixel plus its flow (bilinear).

    Args:
        image: the reference.
        flow: query → reference displacement in pixels.

    Returns:
        ``(warped, valid)``: the reference in the query's frame, and 1 where the sampling
        position lies inside the reference (0 where it falls outside and the pixel is invalid).

    Shape:
        image ``[B, C, H, W]``, flow ``[B, 2, H, W]`` → ``[B, C, H, W]``, ``[B, 1, H, W]``.
    """
    _, _, h, w = image.shape
    pos = pixel_grid(flow.to(image.dtype))
    x, y = pos[:, 0], pos[:, 1]
    valid = ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)).unsqueeze(1).to(image.dtype)
    return bilinear_sample(image, x, y), valid


class Warp(nn.Module):
    """Module form of :func:`warp`."""

    def forward(self, image: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor,
                                                                        torch.Tensor]:
        return warp(image, flow)
