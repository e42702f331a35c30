"""A blurry frame's blur kernel, estimated from its aligned sharp references.

A dense matcher that compares a blurry frame with a sharp reference has to guess where the
smeared content "is"; its flow is off by a pixel or so, differently from place to place, and the
fused pseudo-sharp image comes out soft. Two images blurred alike match far more precisely. So
the ``reblur`` fusion strategy (:mod:`bluref_ray.fusion`) estimates the frame's blur kernel
``k`` from the first, rough alignment (``blurry ≈ k ⊛ aligned``, least squares on image
gradients in linear light, over all references at once), blurs every reference by ``k``, matches
the blurry frame to those blurred references and warps the *sharp* references by the new flows.

Camera shake blurs the whole frame by about one kernel, so one kernel per frame is estimated.
The kernel is moved so that its origin is the *middle of the exposure*: the point that the
path reaches after half its time, taken as half the kernel's mass along its main direction
(:func:`midpoint`). That is where the GoPro protocol puts the ground truth, the middle frame of
the exposure; the blur's centroid, where a plain match lands, lies off it on a curved path.
"""

from __future__ import annotations

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
