"""The patch search of :class:`~bluref_ray.matching.torch_dis.TorchDIS` as one GPU kernel per
anti-diagonal (Triton).

Run as tensor operations, the search is a dozen small operations per Gauss–Newton step of
every diagonal: 281,435 kernel launches for one 1280×720 pair (`benchmarks/torch_dis_ops.py`);
at 5–10 µs a launch that bounds a GPU to about 0.3 pseudo-pairs/s whatever its size. Here one
program per (pair, patch) of a diagonal does all of a patch's work in registers: it scores the
candidate flows
(its own, the initial flow, its two neighbours visited before it; the first of equals wins),
takes the Gauss–Newton steps (stopping for good when the SSD stops falling, as the eager
sweep does) and keeps its start if it moved farther than its size. One launch per diagonal:
~1,240 a call at 1280×720.

Flows here are in pixels (the eager sweep keeps ``grid_sample``'s units); the two agree to
~1e-5 px (a test runs this kernel in Triton's interpreter, ``TRITON_INTERPRET=1``, on a CPU;
near-ties between candidates, or in the stopping test, may fall the other way on a GPU, whose
sums are taken in another order). Compiled ahead of time for sm_90a (one warp: 64 registers,
no spills, no shared memory); its speed on a GPU is not measured yet.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl


@triton.jit
def _patch(img, b, h, w, x0, y0, ox, oy, ux, uy):
    """The image ``b`` bilinearly sampled at the patch's pixels ``(x0 + ox, y0 + oy)`` moved by
    ``(ux, uy)``, positions clamped to the border (``grid_sample``'s border mode)."""
    x = tl.minimum(tl.maximum(x0 + ox + ux, 0.0), w - 1.0)
    y = tl.minimum(tl.maximum(y0 + oy + uy, 0.0), h - 1.0)
    xf, yf = tl.floor(x), tl.floor(y)
    fx, fy = x - xf, y - yf
    xi, yi = xf.to(tl.int32), yf.to(tl.int32)
    xj, yj = tl.minimum(xi + 1, w - 1), tl.minimum(yi + 1, h - 1)
    base = img + b * h * w
    top = tl.load(base + yi * w + xi) * (1 - fx) + tl.load(base + yi * w + xj) * fx
    bottom = tl.load(base + yj * w + xi) * (1 - fx) + tl.load(base + yj * w + xj) * fx
    return top * (1 - fy) + bottom * fy


@triton.jit
def _ssd(d, n: tl.constexpr):
    """Mean-normalised SSD of the residuals ``d`` (``n`` of them)."""
    total = tl.sum(d, 0)
    return tl.sum(d * d, 0) - total * total / n


@triton.jit
def _pick(img, b, h, w, x0, y0, ox, oy, tmpl, flows, k, best, bx, by, n: tl.constexpr):
    """Candidate ``k`` of ``flows`` against the best so far (strictly better replaces it)."""
    cx, cy = tl.load(flows + k * 2), tl.load(flows + k * 2 + 1)
    e = _ssd(_patch(img, b, h, w, x0, y0, ox, oy, cx, cy) - tmpl, n)
    better = e < best
    return tl.where(better, e, best), tl.where(better, cx, bx), tl.where(better, cy, by)


@triton.jit(do_not_specialize=["first"])  # one build, not one per diagonal's start
def _diagonal(img, flow, init, t0, wx, wy, x0s, y0s, before0, before1, first, patches, h, w,
              far, HAS_INIT: tl.constexpr, STEPS: tl.constexpr, PS: tl.constexpr):
    """One diagonal of the sweep: program (i, b) moves patch ``first + i`` of pair ``b``."""
    j = first + tl.program_id(0)
    b = tl.program_id(1)
    n: tl.constexpr = PS * PS
    lane = tl.arange(0, n)
    ox, oy = (lane % PS).to(tl.float32), (lane // PS).to(tl.float32)
    x0, y0 = tl.load(x0s + j), tl.load(y0s + j)
    row = (b * patches + j) * n
    tmpl = tl.load(t0 + row + lane)
    wxv, wyv = tl.load(wx + row + lane), tl.load(wy + row + lane)
    flows = flow + b * patches * 2
    bx, by = tl.load(flows + j * 2), tl.load(flows + j * 2 + 1)
    best = _ssd(_patch(img, b, h, w, x0, y0, ox, oy, bx, by) - tmpl, n)
    if HAS_INIT:
        best, bx, by = _pick(img, b, h, w, x0, y0, ox, oy, tmpl, init + b * patches * 2, j,
                             best, bx, by, n)
    best, bx, by = _pick(img, b, h, w, x0, y0, ox, oy, tmpl, flows, tl.load(before0 + j), best,
                         bx, by, n)
    best, bx, by = _pick(img, b, h, w, x0, y0, ox, oy, tmpl, flows, tl.load(before1 + j), best,
                         bx, by, n)
    sx, sy = bx, by
    active = best == best
    prev = best
    for k in tl.static_range(STEPS):
        d = _patch(img, b, h, w, x0, y0, ox, oy, bx, by) - tmpl
        gx, gy = tl.sum(d * wxv, 0), tl.sum(d * wyv, 0)
        bx, by = tl.where(active, bx - gx, bx), tl.where(active, by - gy, by)
        e = _ssd(d, n)
        if k > 0:
            active = active & (e < prev)
        prev = tl.where(active, e, prev)
    moved = (bx - sx) * (bx - sx) + (by - sy) * (by - sy) > far * far
    tl.store(flows + j * 2, tl.where(moved, sx, bx))
    tl.store(flows + j * 2 + 1, tl.where(moved, sy, by))


def sweep(i1: torch.Tensor, flow: torch.Tensor, init: torch.Tensor | None, t0: torch.Tensor,
          wx: torch.Tensor, wy: torch.Tensor, corners: tuple[torch.Tensor, torch.Tensor],
          before: list[tuple[torch.Tensor, torch.Tensor]], runs: list[tuple[int, int]],
          passes: int, steps: int, patch: int) -> torch.Tensor:
    """The patch search of one level, all passes, in sweep order (see
    :meth:`TorchDIS._level <bluref_ray.matching.torch_dis.TorchDIS._level>`).

    Shape:
        i1 ``[B, 1, H, W]`` (the reference), flow and init ``[B, P, 2]`` (pixels), t0 (the
        query's patches), wx, wy (the step's weights, pixels per intensity) ``[B, P, ps²]``,
        corners (each patch's top-left x and y) ``[P]`` → flows ``[B, P, 2]`` (pixels).
    """
    b, _, h, w = i1.shape
    img, out = i1[:, 0].float().contiguous(), flow.float().contiguous().clone()
    start = out if init is None else init.float().contiguous()
    t0, wx, wy = (x.float().contiguous() for x in (t0, wx, wy))
    x0s, y0s = (c.float().contiguous() for c in corners)
    # Triton launches on the current CUDA device, which need not be the tensors'
    on = torch.cuda.device(img.device) if img.is_cuda else contextlib.nullcontext()
    with on:
        for it in range(passes):
            nb = [n.to(torch.int32).contiguous() for n in before[it % 2]]
            for first, end in (runs if it % 2 == 0 else runs[::-1]):
                # one warp a patch: 64 lanes, its sums by shuffles, no shared memory
                _diagonal[(end - first, b)](img, out, start, t0, wx, wy, x0s, y0s, nb[0], nb[1],
                                            first, out.shape[1], h, w, float(patch),
                                            HAS_INIT=init is not None, STEPS=steps, PS=patch,
                                            num_warps=1)
    return out
