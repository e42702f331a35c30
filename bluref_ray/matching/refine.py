"""Dense flow in PyTorch: the GPU path's building blocks besides DIS.

DIS (:mod:`bluref_ray.matching.classical`) runs on the CPU, one pair at a time. On a GPU actor
that leaves the GPU idle twice per reference: when DIS refines the learned matcher's flow, and
when the ``reblur`` strategy matches the blurry frame to each blurred reference. The GPU path
does both with :class:`~bluref_ray.matching.torch_dis.TorchDIS`, batched on the tensors'
device; this module holds what it is made of and what goes with it:

* :class:`TVL1`: TV-L1 optical flow, coarse to fine from an initial flow; one level of it is
  TorchDIS's smoothing step (where OpenCV's DIS runs its variational refinement);
* :func:`gray`, :func:`gaussian_blur`: the images DIS sees;
* :func:`fb_confidence` turns a forward and a backward flow into a confidence, as DIS's
  forward–backward check does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bluref_ray.matching.kernel import forward_differences
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


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences, one-sided at the borders."""
    gx = torch.cat([x[..., :, 1:2] - x[..., :, :1],
                    (x[..., :, 2:] - x[..., :, :-2]) / 2,
                    x[..., :, -1:] - x[..., :, -2:-1]], -1)
    gy = torch.cat([x[..., 1:2, :] - x[..., :1, :],
                    (x[..., 2:, :] - x[..., :-2, :]) / 2,
                    x[..., -1:, :] - x[..., -2:-1, :]], -2)
    return gx, gy


def fb_confidence(fwd: torch.Tensor, bwd: torch.Tensor, sigma_px: float = 1.0) -> torch.Tensor:
    """``exp(-e² / 2σ²)`` of the forward–backward error ``e = |f(x) + b(x + f(x))|``; 0 where
    ``x + f(x)`` leaves the frame.

    Shape:
        fwd, bwd ``[B, 2, H, W]`` → ``[B, 1, H, W]``.
    """
    back, inside = warp(bwd, fwd)
    err2 = (fwd + back).square().sum(1, keepdim=True)
    return torch.exp(-err2 / (2 * sigma_px ** 2)) * inside


def _divergence(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Backward-difference divergence, the negative adjoint of :func:`forward_differences`."""
    dx = torch.cat([px[..., :, :1], px[..., :, 1:-1] - px[..., :, :-2], -px[..., :, -2:-1]], -1)
    dy = torch.cat([py[..., :1, :], py[..., 1:-1, :] - py[..., :-2, :], -py[..., -2:-1, :]], -2)
    return dx + dy


def _median3(x: torch.Tensor) -> torch.Tensor:
    """3×3 median, edges replicated, by a 19-exchange sorting network on shifted views (cheaper
    than sorting unfolded patches, on a CPU and on a GPU)."""
    h, w = x.shape[-2:]
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    v = [p[..., i:i + h, j:j + w] for i in range(3) for j in range(3)]

    def sort2(a: int, b: int) -> None:
        v[a], v[b] = torch.minimum(v[a], v[b]), torch.maximum(v[a], v[b])

    for a, b in ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8),
                 (0, 3), (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4),
                 (4, 2)):
        sort2(a, b)
    return v[4]


class TVL1:
    """TV-L1 optical flow (Zach, Pock and Bischof 2007), coarse to fine from an initial flow.

    The flow minimises ``λ·|I1(x + u) − I0(x)| + |∇u|`` (total variation of each component)
    by the primal–dual scheme of Sánchez, Meinhardt-Llopis and Facciolo (IPOL 2013): at each of
    ``scales`` pyramid levels (factor 2), ``warps`` linearisations of the data term, each solved
    by ``iters`` iterations of a point-wise thresholding step and a dual projection step; a 3×3
    median filter of the flow before each warp (Wedel et al. 2009). All of it is element-wise
    work and small convolutions on the tensors' device, batched over pairs.

    Args:
        scales: pyramid levels (the initial flow is brought to the coarsest).
        warps: linearisations per level.
        iters: inner iterations per linearisation.
        lam: weight of the data term (intensities in 0…255).
        theta: coupling of the two variables.
        tau: dual step.
        ref_blur: Gaussian σ (pixels) applied to the reference first, as DIS's ``ref_blur``.
    """

    def __init__(self, scales: int = 3, warps: int = 3, iters: int = 10, lam: float = 0.15,
                 theta: float = 0.3, tau: float = 0.25, ref_blur: float = 1.5) -> None:
        self.scales, self.warps, self.iters = scales, warps, iters
        self.lam, self.theta, self.tau, self.ref_blur = lam, theta, tau, ref_blur

    def level(self, i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``warps`` linearisations of ``iters`` iterations on one pyramid level, from ``u``
        (intensities in 0…255, flow in the level's pixels)."""
        lt = self.lam * self.theta
        gx1, gy1 = _gradients(i1)
        grads = torch.cat([gx1, gy1], 1)
        px = torch.zeros_like(u)
        py = torch.zeros_like(u)
        for _ in range(self.warps):
            u = _median3(u)
            i1w, _ = warp(i1, u)
            gw, _ = warp(grads, u)
            gx, gy = gw[:, :1], gw[:, 1:]
            g2 = (gx * gx + gy * gy).clamp_min(1e-6)
            rho_c = i1w - gx * u[:, :1] - gy * u[:, 1:] - i0
            g = torch.cat([gx, gy], 1)
            for _ in range(self.iters):
                rho = rho_c + gx * u[:, :1] + gy * u[:, 1:]
                v = u - g * (rho / g2).clamp(-lt, lt)
                u = v + self.theta * _divergence(px, py)
                ux, uy = forward_differences(u)
                norm = 1 + (self.tau / self.theta) * torch.sqrt(ux * ux + uy * uy)
                px = (px + (self.tau / self.theta) * ux) / norm
                py = (py + (self.tau / self.theta) * uy) / norm
        return u

    def refine_gray(self, q: torch.Tensor, r: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """Refine ``flow`` from gray query ``q`` to gray reference ``r`` (in [0, 1]).

        Shape:
            q, r ``[B, 1, H, W]``, flow ``[B, 2, H, W]`` → ``[B, 2, H, W]`` (float32).
        """
        q, r = q.float() * 255, r.float() * 255
        h, w = q.shape[-2:]
        pyr = [(q, r, (h, w))]
        for _ in range(self.scales - 1):
            a, b, (hh, ww) = pyr[-1]
            if min(hh, ww) < 32:
                break
            size = ((hh + 1) // 2, (ww + 1) // 2)
            pyr.append((F.interpolate(gaussian_blur(a, 0.8), size=size, mode="bilinear",
                                      align_corners=False),
                        F.interpolate(gaussian_blur(b, 0.8), size=size, mode="bilinear",
                                      align_corners=False), size))
        u = None
        for a, b, size in reversed(pyr):
            prev = (h, w) if u is None else u.shape[-2:]
            u = F.interpolate(flow.float() if u is None else u, size=size, mode="bilinear",
                              align_corners=False)
            u = torch.cat([u[:, :1] * (size[1] / prev[1]), u[:, 1:] * (size[0] / prev[0])], 1)
            u = self.level(a, b, u)
        return u

    def refine(self, query: torch.Tensor, reference: torch.Tensor,
               flow: torch.Tensor) -> torch.Tensor:
        """Refine ``flow`` (query → reference) on RGB images in [0, 1].

        Shape:
            ``[B, 3, H, W]`` twice and flow ``[B, 2, H, W]`` → refined flow ``[B, 2, H, W]``.
        """
        q, r = gray(query), gaussian_blur(gray(reference), self.ref_blur)
        return self.refine_gray(q, r, flow).to(flow.dtype)
