"""DIS optical flow in PyTorch, batched on the tensors' device: the GPU path's DIS.

DIS (Kroeger, Timofte, Dai and Van Gool, ECCV 2016; :mod:`bluref_ray.matching.classical` calls
OpenCV's) is what makes the default pseudo-GT good: started from the learned matcher's flow it
does not merely polish that flow, it *chooses*, patch by patch, between the flow it finds on
its own from a coarse level and the flow it was given, whichever matches the patch better. This
module does the same scheme with tensor operations over all patches and all pairs at once:

at each pyramid level (factor 2, from the coarsest to ``finest``),

1. **patch inverse search**: ``patch``×``patch`` patches of the query on a grid of stride
   ``stride``, visited in a sweep (forward in the first pass, backward in the second). Each
   starts from the best, by mean-normalised SSD, of its flow from the coarser level, the initial
   flow (when one is given) and the flows of its two neighbours visited just before it (left
   and upper; right and lower going back), so a good flow travels along the grid in one pass,
   though not across the cuts between ``stripes`` bands of rows (OpenCV's 8); then it takes
   Gauss–Newton steps of the inverse-compositional kind (the Hessian from the query patch's
   Sobel gradients, computed once; OpenCV's step size), until its SSD stops falling. A patch
   that moved farther than its size keeps its start. OpenCV sweeps patch by patch; here the
   patches of one anti-diagonal of the grid, which depend only on the one before, are one
   batched step: tensor operations on a CPU, one Triton kernel per diagonal on a GPU
   (:mod:`~bluref_ray.matching.torch_dis_fused`).
2. **densification**: each pixel's flow is the mean of the flows of the patches that cover it,
   each weighted by ``1 / max(1, |I1(x + u) − I0(x)|)``.
3. **variational refinement** of the dense flow
   (:class:`~bluref_ray.matching.refine.Variational`, OpenCV's energy and solver).

The images are taken on the 8-bit scale and rounded, as OpenCV's DIS sees them. The rest follows
OpenCV's ``medium`` preset: 8×8 patches, stride 3, 25 steps in two passes, finest level 1 (half
resolution). The bands and the rounding matter: refining the learned matcher's flows, the mean
distance to OpenCV's flows is 1.2 px with them and 2.5 px without on the real `bikes` clip
(fast pans), 0.8 and 1.4 px on a synthetic clip. On the project's test pair (a homography of
~9 px) it lands within 0.1 px of OpenCV's DIS (mean error) from a flow 3 px off, 15 px off and
from none.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import warnings

import torch
import torch.nn.functional as F

from bluref_ray.matching.refine import Variational, gaussian_blur, gray

_EPS = 1e-3


def _sample_grid(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of a one-channel image at ``grid`` (``grid_sample``'s units, corners
    aligned), clamped to the border; faster than four gathers on a CPU.

    Shape:
        image ``[B, 1, H, W]``, grid ``[B, P, K, 2]`` → ``[B, P, K]``.
    """
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border",
                         align_corners=True)[:, 0]


def _sample(image: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`_sample_grid` at real pixel positions ``x``, ``y`` (``[B, P, K]`` each)."""
    h, w = image.shape[-2:]
    return _sample_grid(image, torch.stack([x * (2.0 / max(w - 1, 1)) - 1.0,
                                            y * (2.0 / max(h - 1, 1)) - 1.0], -1))


def _ssd(d: torch.Tensor) -> torch.Tensor:
    """The mean-normalised SSD of residuals ``d`` over the last axis: Σd² − (Σd)²/n."""
    total = d.sum(-1)
    return torch.addcmul(torch.linalg.vecdot(d, d), total, total, value=-1 / d.shape[-1])


def _sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """3×3 Sobel derivatives (unnormalised, as OpenCV's ``spatialGradient``), edges reflected."""
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device,
                     dtype=x.dtype)
    p = F.pad(x, (1, 1, 1, 1), mode="reflect")
    return F.conv2d(p, k.view(1, 1, 3, 3)), F.conv2d(p, k.t().reshape(1, 1, 3, 3))


def _sweep(row: torch.Tensor, col: torch.Tensor, hs: int, ws: int, stripes: int
           ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]], list[tuple[torch.Tensor,
                                                                             torch.Tensor]]]:
    """The order in which a pass visits the ``hs``×``ws`` patch grid: by anti-diagonal
    (row + column), as a serial sweep would reach them; a diagonal's patches depend only on the
    one before, so each diagonal is one batched step. The grid's rows are cut into ``stripes``
    bands of equal height; a flow is not taken from the row above (below, going back) across
    the cut.

    Returns:
        ``order`` (the row-major index of each patch in sweep order), ``rank`` (its inverse),
        ``runs`` (each diagonal's ``(start, end)`` in sweep order), and for a forward and a
        backward pass the sweep-order index of each patch's two neighbours visited before it
        (left and upper; right and lower), the patch itself where there is none.
    """
    p = hs * ws
    band = -(-hs // stripes)  # rows per band
    order = torch.argsort((row + col) * hs + row)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(p, device=row.device)
    ends = list(itertools.accumulate(torch.bincount(row + col).tolist()))
    r, c, me = row[order], col[order], rank[order]
    before = [(torch.where(c > 0, rank[order - 1], me),
               torch.where(r % band != 0, rank[order - ws], me)),
              (torch.where(c < ws - 1, rank[(order + 1) % p], me),
               torch.where(((r + 1) % band != 0) & (r < hs - 1), rank[(order + ws) % p], me))]
    return order, rank, list(zip([0] + ends[:-1], ends)), before


class TorchDIS:
    """DIS optical flow on tensors (see the module docstring).

    Args:
        patch: patch side (pixels).
        stride: distance between patches.
        iters: Gauss–Newton steps per patch and level, over all passes.
        passes: sweeps over the patch grid per level (alternating directions).
        finest: the finest pyramid level (0: full resolution; 1: half).
        ref_blur: Gaussian σ (pixels) applied to the reference first (:meth:`refine`, on RGB
            images).
        variational: the refinement after each level (default: DIS's variational refinement,
            :class:`~bluref_ray.matching.refine.Variational`; ``Variational(iters=0)`` for
            none).
        stripes: horizontal bands of the patch grid that a flow does not propagate across
            (OpenCV's 8; 1: the whole grid).
        early_stop: end a diagonal's steps once all its patches have stopped (the check costs
            a sync each step; None: on a CPU only). The flows are the same either way.
        fused: the patch search as one GPU kernel per diagonal
            (:mod:`~bluref_ray.matching.torch_dis_fused`, Triton) instead of tensor operations
            (None: on a CUDA device where Triton is installed, and tensor operations from then
            on, with a warning, if the kernel fails there). The flows agree to ~1e-5 px.
    """

    def __init__(self, patch: int = 8, stride: int = 3, iters: int = 25, passes: int = 2,
                 finest: int = 1, ref_blur: float = 1.5,
                 variational: Variational | None = None, stripes: int = 8,
                 early_stop: bool | None = None, fused: bool | None = None) -> None:
        self.patch, self.stride, self.iters, self.passes = patch, stride, iters, passes
        self.stripes, self.early_stop, self.fused = stripes, early_stop, fused
        self.finest, self.ref_blur = finest, ref_blur
        self.variational = variational or Variational()

    def refine(self, query: torch.Tensor, reference: torch.Tensor,
               flow: torch.Tensor) -> torch.Tensor:
        """DIS from query to reference (RGB in [0, 1]) with ``flow`` as the initial flow.

        Shape:
            ``[B, 3, H, W]`` twice and flow ``[B, 2, H, W]`` → ``[B, 2, H, W]``.
        """
        q, r = gray(query), gaussian_blur(gray(reference), self.ref_blur)
        return self.refine_gray(q, r, flow).to(flow.dtype)

    def refine_gray(self, q: torch.Tensor, r: torch.Tensor,
                    init: torch.Tensor | None = None) -> torch.Tensor:
        """Flow from gray query ``q`` to gray reference ``r`` (in [0, 1]), from ``init`` if given.

        Shape:
            q, r ``[B, 1, H, W]``, init ``[B, 2, H, W]`` → ``[B, 2, H, W]`` (float32).
        """
        q, r = torch.round(q.float() * 255), torch.round(r.float() * 255)
        h, w = q.shape[-2:]
        ps = self.patch
        coarsest = min(int(math.log2(max(h, w) / (4 * ps)) + 0.5), int(math.log2(min(h, w) / ps)))
        finest = min(self.finest, max(coarsest, 0))
        coarsest = max(coarsest, finest)
        levels = {0: (q, r)}
        for s in range(1, coarsest + 1):
            a, b = levels[s - 1]
            size = (a.shape[-2] // 2, a.shape[-1] // 2)
            levels[s] = (F.interpolate(a, size=size, mode="area"),
                         F.interpolate(b, size=size, mode="area"))
        u = None
        for s in range(coarsest, finest - 1, -1):
            i0, i1 = levels[s]
            size = i0.shape[-2:]
            start = None
            if init is not None:
                start = F.interpolate(init.float(), size=size, mode="bilinear",
                                      align_corners=False) / 2 ** s
            u = (torch.zeros(q.shape[0], 2, *size, device=q.device) if u is None else
                 F.interpolate(u, size=size, mode="bilinear", align_corners=False) * 2)
            u = self.variational.level(i0, i1, self._level(i0, i1, u, start))
        return F.interpolate(u, size=(h, w), mode="bilinear", align_corners=False) * 2 ** finest

    def _level(self, i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor,
               init: torch.Tensor | None) -> torch.Tensor:
        """One pyramid level: patch inverse search from ``u`` (and ``init``), densified."""
        b, _, h, w = i0.shape
        ps, st = self.patch, self.stride
        if h < ps or w < ps:
            return u
        hs, ws = 1 + (h - ps) // st, 1 + (w - ps) // st
        dev = i0.device
        gx, gy = _sobel(i0)
        tmpl = F.unfold(i0, ps, stride=st).transpose(1, 2)  # [B, P, ps²], row-major patches
        row = torch.arange(hs, device=dev).repeat_interleave(ws)
        col = torch.arange(ws, device=dev).repeat(hs)
        off = torch.arange(ps, device=dev, dtype=torch.float32)
        px = (col * st).float()[:, None] + off.repeat(ps)[None]  # [P, ps²]
        py = (row * st).float()[:, None] + off.repeat_interleave(ps)[None]
        at_centres = (row * st + ps // 2) * w + col * st + ps // 2  # flat pixel of each centre
        order, rank, runs, before = _sweep(row, col, hs, ws, self.stripes)
        t0 = tmpl[:, order]
        centres = at_centres[order]
        tgx = F.unfold(gx, ps, stride=st).transpose(1, 2)[:, order]  # [B, P, ps²]
        tgy = F.unfold(gy, ps, stride=st).transpose(1, 2)[:, order]
        hxx, hyy, hxy = (tgx * tgx).sum(-1), (tgy * tgy).sum(-1), (tgx * tgy).sum(-1)
        det = hxx * hyy - hxy * hxy
        det = torch.where(det.abs() < _EPS, torch.full_like(det, _EPS), det)
        # The mean-normalised SSD's gradient is Σ d·(g − mean g) with the query's Sobel g, and
        # the step its product with the inverse Hessian: each of the step's two components is
        # one dot product of d with a weight vector per patch (a reduction over a contiguous
        # last axis: the cheapest form on a CPU).
        cx, cy = tgx - tgx.mean(-1, keepdim=True), tgy - tgy.mean(-1, keepdim=True)
        num_x = hyy[..., None] * cx - hxy[..., None] * cy  # the step's weights, times det
        num_y = hxx[..., None] * cy - hxy[..., None] * cx
        if self._use_fused(dev):
            from bluref_ray.matching.torch_dis_fused import sweep

            weights = (num_x / det[..., None], num_y / det[..., None])  # pixels
            at = [None if f is None else f.flatten(2)[:, :, centres].transpose(1, 2)
                  for f in (u, init)]
            try:
                s = sweep(i1, at[0], at[1], t0, *weights, ((col * st)[order], (row * st)[order]),
                          before, runs, self.passes, self.iters // self.passes, ps)
            except Exception as e:  # a kernel that cannot be built on this GPU: not asked for
                if self.fused:
                    raise
                warnings.warn(f"TorchDIS: the fused patch search failed on {dev} ({e!r}); "
                              "using tensor operations", stacklevel=2)
                self.fused = False
            else:
                return self._densify(i0, i1, s[:, rank].transpose(1, 2), px, py, tmpl, (hs, ws))
        scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], device=dev)
        # [P, 2, ps²] in grid_sample's units: adding a flow [.., P, 2, 1] to it runs along the
        # contiguous last axis (6× faster on a CPU than [P, ps², 2] + [.., P, 1, 2]); the sum is
        # handed to grid_sample transposed, which takes strided grids as they are
        base = (torch.stack([px, py], 1) * scale[:, None] - 1.0)[order]
        # flows are kept in grid_sample's units during the sweep (the step scaled to them, the
        # patches' distance guard scaled back)
        wx, wy = num_x * (scale[0] / det[..., None]), num_y * (scale[1] / det[..., None])
        s = (u.flatten(2)[:, :, centres].transpose(1, 2) * scale).contiguous()  # [B, P, 2]
        start_init = (init.flatten(2)[:, :, centres].transpose(1, 2) * scale
                      if init is not None else None)
        steps = self.iters // self.passes
        early_stop = dev.type == "cpu" if self.early_stop is None else self.early_stop

        def diff(v: torch.Tensor, a: int, z: int) -> torch.Tensor:
            """I1 at patches a:z moved by ``v`` (``[B, C, z − a, 2]``: C candidates) − I0."""
            grid = (base[a:z] + v[..., None]).transpose(-1, -2)  # [B, C, p, ps², 2]
            return _sample_grid(i1, grid.flatten(1, 2)).view(grid.shape[:-1]) - t0[:, None, a:z]

        for it in range(self.passes):
            nb = before[it % 2]
            for a, z in (runs if it % 2 == 0 else runs[::-1]):
                # candidates, in OpenCV's order (the first of equals wins): the current flow,
                # the initial flow, the neighbours visited before in this pass
                cands = [s[:, a:z]] + ([] if start_init is None else [start_init[:, a:z]])
                cands += [s[:, nb[0][a:z]], s[:, nb[1][a:z]]]
                cand = torch.stack(cands, 1)  # [B, C, p, 2]
                d = diff(cand, a, z)
                pick = _ssd(d).argmin(1)  # [B, p]
                cur = cand.gather(1, pick[:, None, :, None].expand(-1, 1, -1, 2))[:, 0]
                start, prev = cur, None
                active = torch.ones_like(pick, dtype=torch.bool)
                base_d, t0_d, wx_d, wy_d = base[a:z], t0[:, a:z], wx[:, a:z], wy[:, a:z]
                for _ in range(steps):
                    d = _sample_grid(i1, (base_d + cur[..., None]).transpose(-1, -2)) - t0_d
                    g = torch.stack([torch.linalg.vecdot(d, wx_d), torch.linalg.vecdot(d, wy_d)],
                                    -1)  # [B, p, 2]
                    cur = torch.where(active[..., None], cur - g, cur)
                    e = _ssd(d)
                    active = active & (e < prev) if prev is not None else active
                    prev = e if prev is None else torch.where(active, e, prev)
                    # a patch that stopped stays put; ending when all have stopped saves work
                    # on a CPU, where on a GPU the check would cost a sync every step
                    if early_stop and not bool(active.any()):
                        break
                far = ((cur - start) / scale).norm(dim=-1) > ps
                s[:, a:z] = torch.where(far[..., None], start, cur)
        s = (s / scale)[:, rank].transpose(1, 2)  # [B, 2, P] in pixels, row-major
        return self._densify(i0, i1, s, px, py, tmpl, (hs, ws))

    def _use_fused(self, device: torch.device) -> bool:
        """Whether the patch search runs as :mod:`~bluref_ray.matching.torch_dis_fused`'s
        kernel: as ``fused`` says, by default on a CUDA device where Triton is installed."""
        if self.fused is not None:
            return self.fused
        square = self.patch * self.patch  # the kernel's lanes: a power of two (8×8 patches)
        return (device.type == "cuda" and square & (square - 1) == 0
                and importlib.util.find_spec("triton") is not None)

    def _densify(self, i0: torch.Tensor, i1: torch.Tensor, s: torch.Tensor, px: torch.Tensor,
                 py: torch.Tensor, tmpl: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Dense flow: each pixel's covering patches' flows, weighted by how well each fits it."""
        b, _, h, w = i0.shape
        ps, st = self.patch, self.stride
        d = _sample(i1, px[None] + s[:, 0, :, None], py[None] + s[:, 1, :, None])
        coef = 1.0 / (d - tmpl).abs().clamp_min(1.0)  # [B, P, ps²]
        out = ((grid[0] - 1) * st + ps, (grid[1] - 1) * st + ps)
        num = torch.cat([coef * s[:, 0, :, None], coef * s[:, 1, :, None], coef], 2)
        num = num.view(b, -1, 3, ps * ps).permute(0, 2, 3, 1).reshape(b, 3 * ps * ps, -1)
        summed = F.fold(num, out, ps, stride=st)  # [B, 3, h', w']
        flow = summed[:, :2] / summed[:, 2:].clamp_min(1e-12)
        return F.pad(flow, (0, w - out[1], 0, h - out[0]), mode="replicate")
