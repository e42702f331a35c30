"""A blurry frame's blur kernel, estimated from its aligned sharp references.

A dense matcher that compares a blurry frame with a sharp reference has to guess where the
smeared content "is"; its flow is off by a pixel or so, differently from place to place, and the
fused pseudo-sharp image comes out soft. Two images blurred alike match far more precisely. So
the ``reblur`` fusion strategy (:mod:`bluref_ray.fusion`) estimates the frame's blur kernel
``k`` from the first, rough alignment (``blurry ≈ k ⊛ aligned``, least squares on image
gradients in linear light, over all references at once), blurs every reference by ``k``, matches
the blurry frame to those blurred references and warps the *sharp* references by the new flows.

Camera shake blurs the whole frame by about one kernel, so one kernel per frame is estimated
for matching. Real footage also blurs unevenly (a person who moves before a still background,
depth, forward motion): the physical check of fusion measures each reference against kernels
estimated per tile (:func:`estimate_local_kernels`, :func:`reblur_local`).
The kernel is moved so that its origin is the *middle of the exposure*: the point that the
path reaches after half its time, taken as half the kernel's mass along its main direction
(:func:`midpoint`). That is where the GoPro protocol puts the ground truth, the middle frame of
the exposure; the blur's centroid, where a plain match lands, lies off it on a curved path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bluref_ray.matching.warp import warp

#: Gamma that maps 8-bit sRGB-like values to linear light, where blur is an average.
GAMMA = 2.2


def linear_luma(image: torch.Tensor) -> torch.Tensor:
    """Luma in linear light.

    Shape:
        ``[..., 3, H, W]`` in [0, 1] → ``[..., H, W]``.
    """
    lin = image.clamp(0, 1) ** GAMMA
    return 0.299 * lin[..., 0, :, :] + 0.587 * lin[..., 1, :, :] + 0.114 * lin[..., 2, :, :]


def forward_differences(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x[i+1] − x[i]`` along width and height, 0 at the last column and row."""
    gx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
    gy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    return gx, gy


def estimate_kernel(sharp: torch.Tensor, blurry: torch.Tensor, size: int = 41,
                    weight: torch.Tensor | None = None, reg: float = 3e-3,
                    floor: float = 0.1) -> torch.Tensor:
    """Blur kernel ``k`` with ``blurry ≈ k ⊛ sharp``, from N sharp views of each frame.

    Least squares on the gradients of both images, solved per frequency by FFT with Tikhonov
    regularisation (``reg`` times the mean spectral power), both images tapered by a Hann window.
    The ``size × size`` centre of the solution is kept, values under ``floor`` times its peak are
    dropped, and the rest sums to 1. A frame without any usable view gets the identity kernel.

    Args:
        sharp: the references aligned to each frame, linear-light luma ``[B, N, H, W]``.
        blurry: the frames, linear-light luma ``[B, H, W]``.
        size: odd kernel side in pixels; the largest blur it can describe.
        weight: ``[B, N]``, 0 for a reference slot that is empty.

    Shape:
        → ``[B, size, size]``, ``k[r + dy, r + dx]`` for ``r = size // 2``.
    """
    b, n, h, w = sharp.shape
    if size % 2 == 0 or size > min(h, w):
        raise ValueError(f"kernel size {size} must be odd and fit in the {h}x{w} frame")
    dev, dt = sharp.device, torch.float32
    window = (torch.hann_window(h, periodic=False, device=dev, dtype=dt)[:, None]
              * torch.hann_window(w, periodic=False, device=dev, dtype=dt)[None])
    wt = torch.ones(b, n, device=dev, dtype=dt) if weight is None else weight.to(dt)
    num = torch.zeros(b, h, w // 2 + 1, device=dev, dtype=torch.complex64)
    den = torch.zeros(b, h, w // 2 + 1, device=dev, dtype=dt)
    for gs, gb in zip(forward_differences(sharp.to(dt)), forward_differences(blurry.to(dt))):
        fs = torch.fft.rfft2(gs * window)  # [B, N, h, w']
        fb = torch.fft.rfft2(gb * window)[:, None]
        num += (wt[..., None, None] * fs.conj() * fb).sum(1)
        den += (wt[..., None, None] * fs.abs().square()).sum(1)
    den = den + reg * den.mean((-1, -2), keepdim=True).clamp_min(1e-12)
    k = torch.fft.fftshift(torch.fft.irfft2(num / den, s=(h, w)), dim=(-2, -1))
    r = size // 2
    k = k[:, h // 2 - r:h // 2 + r + 1, w // 2 - r:w // 2 + r + 1]
    k = (k - floor * k.amax((-1, -2), keepdim=True)).clamp_min(0)
    total = k.sum((-1, -2), keepdim=True)
    identity = torch.zeros_like(k)
    identity[:, r, r] = 1.0
    usable = (total > 1e-12) & (wt.sum(1) > 0)[:, None, None]
    return torch.where(usable, k / total.clamp_min(1e-12), identity)


def midpoint(kernel: torch.Tensor) -> torch.Tensor:
    """Where the exposure's middle lies in each kernel, ``(x, y)`` pixels from its centre.

    A kernel is the camera path weighted by the time spent at each point. Along the kernel's
    main direction (from its second moments) the middle of the exposure is where half the mass
    lies on either side; across it, the mass-weighted mean of a 3-px slab there.

    Shape:
        ``[B, S, S]`` → ``[B, 2]``.
    """
    b, s, _ = kernel.shape
    r = s // 2
    g = torch.arange(-r, r + 1, device=kernel.device, dtype=kernel.dtype)
    xs, ys = g[None, None, :].expand(b, s, s), g[None, :, None].expand(b, s, s)
    cx, cy = (kernel * xs).sum((1, 2)), (kernel * ys).sum((1, 2))
    dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
    angle = 0.5 * torch.atan2(2 * (kernel * dx * dy).sum((1, 2)),
                              (kernel * (dx * dx - dy * dy)).sum((1, 2)))
    vx, vy = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    along = (dx * vx + dy * vy).flatten(1)
    across = (dy * vx - dx * vy).flatten(1)
    mass = kernel.flatten(1)
    order = along.argsort(1)
    cum = mass.gather(1, order).cumsum(1)
    half = torch.searchsorted(cum, 0.5 * cum[:, -1:]).clamp(max=s * s - 1)
    m = along.gather(1, order).gather(1, half)  # [B, 1]
    slab = mass * ((along - m).abs() <= 1.5)
    n = (slab * across).sum(1, keepdim=True) / slab.sum(1, keepdim=True).clamp_min(1e-12)
    vx, vy = vx.flatten(1), vy.flatten(1)
    return torch.cat([cx[:, None] + m * vx - n * vy, cy[:, None] + m * vy + n * vx], 1)


def centre_on(kernel: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """Move each kernel so that ``point`` (``[B, 2]``, pixels from the centre) is its centre.

    Shape:
        ``[B, S, S]`` → ``[B, S, S]``, each still summing to 1.
    """
    b, s, _ = kernel.shape
    flow = point.to(kernel.dtype)[:, :, None, None].expand(b, 2, s, s)
    moved, valid = warp(kernel[:, None], flow)
    moved = moved[:, 0] * valid[:, 0]
    return moved / moved.sum((-1, -2), keepdim=True).clamp_min(1e-12)


def reblur(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Blur each image by its kernel, in linear light (edges replicated).

    Shape:
        image ``[B, 3, H, W]`` in [0, 1], kernel ``[B, S, S]`` → ``[B, 3, H, W]``.
    """
    b, c, h, w = image.shape
    r = kernel.shape[-1] // 2
    lin = F.pad((image.clamp(0, 1) ** GAMMA).reshape(1, b * c, h, w), (r, r, r, r),
                mode="replicate")
    weight = kernel.flip(-1, -2).to(image.dtype).repeat_interleave(c, 0)[:, None]
    out = F.conv2d(lin, weight, groups=b * c).reshape(b, c, h, w)
    return out.clamp(0, 1) ** (1.0 / GAMMA)


@dataclass(frozen=True)
class LocalKernels:
    """Blur kernels per tile of a frame: a regular grid of ``tile × tile`` tiles at half a tile's
    stride over the frame (its bottom and right edges replicated to fit the grid).

    Attributes:
        kernels: ``[B, L, S, S]``, the L tiles in row-major order, each centred on the middle of
            its exposure (:func:`midpoint`).
        tile: tile side, pixels.
        height, width: the frame's size.
    """

    kernels: torch.Tensor
    tile: int
    height: int
    width: int

    @property
    def stride(self) -> int:
        return max(1, self.tile // 2)


def _grid_side(length: int, tile: int, stride: int) -> int:
    """The padded length that a grid of tiles at ``stride`` covers exactly."""
    return tile + stride * math.ceil(max(0, length - tile) / stride)


def _tiles(x: torch.Tensor, tile: int, stride: int, margin: int = 0) -> torch.Tensor:
    """Cut ``[B, C, H, W]`` into the grid's tiles, each with ``margin`` pixels of context.

    Shape:
        → ``[B, L, C, tile + 2·margin, tile + 2·margin]``.
    """
    b, c, h, w = x.shape
    hp, wp = _grid_side(h, tile, stride), _grid_side(w, tile, stride)
    padded = F.pad(x, (margin, wp - w + margin, margin, hp - h + margin), mode="replicate")
    side = tile + 2 * margin
    cols = F.unfold(padded, side, stride=stride)  # [B, C·side², L]
    return cols.view(b, c, side, side, -1).permute(0, 4, 1, 2, 3)


def estimate_local_kernels(sharp: torch.Tensor, blurry: torch.Tensor, tile: int = 64,
                           size: int = 41, weight: torch.Tensor | None = None,
                           matched: torch.Tensor | None = None) -> LocalKernels:
    """One blur kernel per tile (:func:`estimate_kernel` on each), centred on its exposure's
    middle. A tile larger than the frame shrinks to it; the kernel side is at most a third of
    the tile (a tile must hold several blur lengths for the fit to be posed). With ``matched``,
    a reference counts in each tile by the square of the share of the tile it is matched on,
    so that a reference that is wrong there (occluded, another object) does not bend the fit.

    Args:
        sharp: the references aligned to each frame, linear-light luma ``[B, N, H, W]``.
        blurry: the frames, linear-light luma ``[B, H, W]``.
        tile: tile side, pixels.
        size: the largest kernel side (odd).
        weight: ``[B, N]``, 0 for a reference slot that is empty.
        matched: ``[B, N, H, W]``, 1 (or True) where a reference is matched.
    """
    b, n, h, w = sharp.shape
    tile = min(tile, h, w)
    side = min(size, max(3, (tile // 3 - 1) // 2 * 2 + 1))
    stride = max(1, tile // 2)
    views = _tiles(sharp, tile, stride)  # [B, L, N, t, t]
    frames = _tiles(blurry[:, None], tile, stride)[:, :, 0]  # [B, L, t, t]
    count = views.shape[1]
    wt = torch.ones(b, n, device=sharp.device) if weight is None else weight.float()
    wt = wt[:, None].expand(b, count, n)
    if matched is not None:
        wt = wt * _tiles(matched.float(), tile, stride).mean((-1, -2)).square()
    k = estimate_kernel(views.flatten(0, 1), frames.flatten(0, 1), side, wt.flatten(0, 1))
    k = centre_on(k, midpoint(k))
    return LocalKernels(k.view(b, count, side, side), tile, h, w)


def reblur_local(image: torch.Tensor, local: LocalKernels) -> torch.Tensor:
    """Blur each image by its frame's kernels, each tile by its own (in linear light, edges
    replicated, as :func:`reblur`), blended across the tiles' overlap by Hann weights. The blend
    is of the blurred tiles as :func:`reblur` returns them (gamma-encoded), not in linear light:
    where two tiles' blurs differ, the blend is a little darker than a linear-light one (an
    arithmetic mean is at most the power mean of exponent γ).

    Shape:
        image ``[B, C, H, W]`` in [0, 1] → ``[B, C, H, W]``.
    """
    b, c, h, w = image.shape
    if (h, w) != (local.height, local.width):
        raise ValueError(f"kernels for {local.height}x{local.width} frames, image {h}x{w}")
    t, s, r = local.tile, local.stride, local.kernels.shape[-1] // 2
    crops = _tiles(image, t, s, margin=r)  # [B, L, C, t+2r, t+2r]
    count = crops.shape[1]
    blurred = reblur(crops.flatten(0, 1), local.kernels.flatten(0, 1))[..., r:r + t, r:r + t]
    ramp = torch.hann_window(t + 2, periodic=False, device=image.device, dtype=image.dtype)[1:-1]
    window = ramp[:, None] * ramp[None]
    cols = (blurred.view(b, count, c, t, t) * window).permute(0, 2, 3, 4, 1)
    hp, wp = _grid_side(h, t, s), _grid_side(w, t, s)
    total = F.fold(cols.reshape(b, c * t * t, count), (hp, wp), t, stride=s)
    norm = F.fold(window.reshape(1, t * t, 1).expand(1, -1, count), (hp, wp), t, stride=s)
    return (total / norm)[..., :h, :w]
