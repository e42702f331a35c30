"""Dense flow in PyTorch: the GPU path's building blocks besides the patch search.

DIS (:mod:`bluref_ray.matching.classical`) runs on the CPU, one pair at a time. On a GPU actor
that leaves the GPU idle twice per reference: when DIS refines the learned matcher's flow, and
when the ``reblur`` strategy matches the blurry frame to each blurred reference. The GPU path
does both with :class:`~bluref_ray.matching.torch_dis.TorchDIS`, batched on the tensors'
device; this module holds what it is made of and what goes with it:

* :class:`Variational`: the variational refinement that DIS runs after each pyramid level
  (brightness and gradient constancy, robust smoothness; red-black over-relaxation);
* :func:`gray`, :func:`gaussian_blur`: the images DIS sees;
* :func:`fb_confidence` turns a forward and a backward flow into a confidence, as DIS's
  forward–backward check does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bluref_ray.matching.warp import warp

#: luma weights of OpenCV's RGB → gray (what DIS sees)
_GRAY = (0.299, 0.587, 0.114)


def gray(image: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images in [0, 1], as float32.

    Shape:
        ``[B, 3, H, W]`` → ``[B, 1, H, W]``.
    """
    w = torch.tensor(_GRAY, device=image.device, dtype=torch.float32).view(1, 3, 1, 1)
    return (image.float() * w).sum(1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of each channel, edges replicated (σ in pixels; 0: none)."""
    if sigma <= 0:
        return x
    r = max(1, int(3 * sigma))
    g = torch.exp(-torch.arange(-r, r + 1, device=x.device, dtype=x.dtype) ** 2
                  / (2 * sigma ** 2))
    g = g / g.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def fb_confidence(fwd: torch.Tensor, bwd: torch.Tensor, sigma_px: float = 1.0) -> torch.Tensor:
    """``exp(-e² / 2σ²)`` of the forward–backward error ``e = |f(x) + b(x + f(x))|``; 0 where
    ``x + f(x)`` leaves the frame.

    Shape:
        fwd, bwd ``[B, 2, H, W]`` → ``[B, 1, H, W]``.
    """
    back, inside = warp(bwd, fwd)
    err2 = (fwd + back).square().sum(1, keepdim=True)
    return torch.exp(-err2 / (2 * sigma_px ** 2)) * inside


def _central(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x(p + 1) − x(p − 1)`` along x and along y (not halved), edges replicated."""
    px = F.pad(x, (1, 1, 0, 0), mode="replicate")
    py = F.pad(x, (0, 0, 1, 1), mode="replicate")
    return px[..., 2:] - px[..., :-2], py[..., 2:, :] - py[..., :-2, :]


def _forward_pad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x(p + 1) − x(p)`` along x and y, 0 in the last column / row."""
    return (F.pad(x[..., 1:] - x[..., :-1], (0, 1)),
            F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1)))


def _shift_in(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x(p − 1)`` along ``dim`` (-1: x, -2: y), 0 at the first column / row."""
    pad = (1, 0) if dim == -1 else (0, 0, 1, 0)
    return F.pad(x.narrow(dim, 0, x.shape[dim] - 1), pad)


def _neighbours(x: torch.Tensor, ex: torch.Tensor, exl: torch.Tensor, ey: torch.Tensor,
                eyu: torch.Tensor) -> torch.Tensor:
    """Σ of the four neighbours of each pixel of ``x`` (0 outside), each weighted by its edge:
    ``ex``·right + ``exl``·left + ``ey``·below + ``eyu``·above."""
    p = F.pad(x, (1, 1, 1, 1))
    out = ex * p[..., 1:-1, 2:]
    out = torch.addcmul(out, exl, p[..., 1:-1, :-2])
    out = torch.addcmul(out, ey, p[..., 2:, 1:-1])
    return torch.addcmul(out, eyu, p[..., :-2, 1:-1])


class Variational:
    """The variational refinement of DIS (Kroeger et al. 2016, after Brox et al. 2004), as OpenCV
    runs it after each pyramid level; written here from the energy, on tensors, batched.

    From the flow ``w`` it finds an increment ``dw`` that minimises, with the robust penalty
    ``Ψ(s²) = sqrt(s² + ε²)``, ``δ·Ψ(brightness) + γ·Ψ(gradient constancy) + α·Ψ(|∇(w + dw)|²)``;
    both data terms are linearised once around ``I1`` warped by ``w``, taken on the mean of
    ``I0`` and the warped ``I1``, and normalised by their gradients' magnitude (+ ζ²). Each of
    ``iters`` fixed-point iterations freezes the robust weights and solves the linear system by
    ``sor`` red-black over-relaxation sweeps (relaxation ``omega``). On the same inputs it gives
    OpenCV's ``VariationalRefinement`` to 0.002 px (a test).

    Args:
        iters: fixed-point iterations (0: none, the flow is returned unchanged).
        sor: over-relaxation sweeps per fixed-point iteration.
        alpha, delta, gamma: weights of smoothness, brightness and gradient constancy (OpenCV's
            DIS defaults; intensities in 0…255).
        omega: relaxation factor.
        zeta, eps: normalisation and robust-penalty constants.
    """

    def __init__(self, iters: int = 5, sor: int = 5, alpha: float = 20.0, delta: float = 5.0,
                 gamma: float = 10.0, omega: float = 1.6, zeta: float = 0.1,
                 eps: float = 0.001) -> None:
        self.iters, self.sor, self.omega = iters, sor, omega
        self.alpha, self.delta, self.gamma, self.zeta, self.eps = alpha, delta, gamma, zeta, eps

    def level(self, i0: torch.Tensor, i1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Refine ``w`` (``[B, 2, H, W]``, the level's pixels) from ``i0`` to ``i1``
        (``[B, 1, H, W]``, intensities in 0…255)."""
        if self.iters <= 0:
            return w
        z2, e2 = self.zeta ** 2, self.eps ** 2
        i1w = warp(i1, w)[0]  # sampled positions clamped to the border
        it = i1w - i0
        ix, iy = _central((i0 + i1w) / 2)
        ixt, iyt = _central(it)
        ixx, ixy = _central(ix)
        iyy = _central(iy)[1]
        n0 = ix * ix + iy * iy + z2
        nx, ny = ixx * ixx + ixy * ixy + z2, iyy * iyy + ixy * ixy + z2
        h, wd = i0.shape[-2:]
        idx = torch.arange(h, device=w.device)[:, None] + torch.arange(wd, device=w.device)
        masks = [(idx % 2 == c).to(w.dtype) for c in (0, 1)]  # red, black
        wx, wy = _forward_pad(w)  # the flow's own differences along each edge
        dw = torch.zeros_like(w)
        for _ in range(self.iters):
            du, dv = dw[:, :1], dw[:, 1:]
            # data terms, the robust weights frozen at the current increment
            r = it + ix * du + iy * dv
            k = self.delta / 2 / torch.sqrt(r * r / n0 + e2) / n0
            a11, a12, a22 = k * ix * ix + z2, k * ix * iy, k * iy * iy + z2
            b1, b2 = -k * it * ix, -k * it * iy
            rx, ry = ixt + ixx * du + ixy * dv, iyt + ixy * du + iyy * dv
            k = self.gamma / 2 / torch.sqrt(rx * rx / nx + ry * ry / ny + e2)
            a11 = a11 + k * (ixx * ixx / nx + ixy * ixy / ny)
            a12 = a12 + k * (ixx * ixy / nx + ixy * iyy / ny)
            a22 = a22 + k * (ixy * ixy / nx + iyy * iyy / ny)
            b1 = b1 - k * (ixx * ixt / nx + ixy * iyt / ny)
            b2 = b2 - k * (ixy * ixt / nx + iyy * iyt / ny)
            # smoothness: one weight per pixel for its edges to the right and below
            cx, cy = _forward_pad(w + dw)
            s = self.alpha / 2 / torch.sqrt((cx * cx + cy * cy).sum(1, keepdim=True) + e2)
            ex, ey = F.pad(s[..., :-1], (0, 1)), F.pad(s[..., :-1, :], (0, 0, 0, 1))
            exl, eyu = _shift_in(ex, -1), _shift_in(ey, -2)
            diag = ex + exl + ey + eyu
            fx, fy = ex * wx, ey * wy
            bs = fx - _shift_in(fx, -1) + fy - _shift_in(fy, -2)
            a11, a22 = a11 + diag, a22 + diag
            b1, b2 = b1 + bs[:, :1], b2 + bs[:, 1:]
            # an over-relaxed Gauss–Seidel update of the pixels of one colour (m = 1 there, 0
            # elsewhere): du ← (1 − mω)·du + mω/a11·(neighbours + b1 − a12·dv), then dv with the
            # new du; the factors are taken once, so a sweep is a few fused multiply-adds.
            colours = [(1 - self.omega * m, self.omega * m / a11, self.omega * m / a22)
                       for m in masks]
            du, dv = dw[:, :1], dw[:, 1:]
            for _ in range(self.sor):
                for keep, gu, gv in colours:
                    t = torch.addcmul(b1, a12, dv, value=-1) + _neighbours(du, ex, exl, ey, eyu)
                    du = torch.addcmul(du * keep, t, gu)
                    t = torch.addcmul(b2, a12, du, value=-1) + _neighbours(dv, ex, exl, ey, eyu)
                    dv = torch.addcmul(dv * keep, t, gv)
            dw = torch.cat([du, dv], 1)
        return w + dw
