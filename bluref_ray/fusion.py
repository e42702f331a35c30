"""Fusion: BluRef's three strategies and blur-aware matching; references → pseudo-sharp image.

All work on batches: B targets, each with up to N references (missing ones flagged in
``available``). ``align(target, reference)`` matches and warps: it returns the reference in the
target's frame and its confidence (0 where the match leaves the frame); :func:`aligner` builds
it from any :class:`~bluref_ray.matching.Matcher`.

* :func:`weighted_average`: match every reference to the blurry frame independently; average
  the aligned references per pixel, weighted by confidence (only matches ≥ τ count).
* :func:`sequential_accumulation`: the running fused image, sharper after each reference, is the
  matching input for the next reference.
* :func:`progressive_average`: take references in order; a new one is matched only for pixels
  still below τ, and only those pixels take it; stop once every pixel is covered.

* :func:`reblur_average` (ours): match every reference to the blurry frame, estimate the frame's
  blur kernel from these rough alignments (:mod:`bluref_ray.matching.kernel`), blur every
  reference by it and match again, blurry frame to equally blurred reference, which is far more
  precise; warp the sharp references by these flows and average them by confidence.

Each returns a :class:`Fusion`: the pseudo-sharp image (the blurry frame where nothing matched),
the confidence map (best confidence per pixel), the coverage (share of pixels with confidence
≥ τ), and the number of references matched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from bluref_ray.matching.base import Matcher
from bluref_ray.matching.kernel import centre_on, estimate_kernel, linear_luma, midpoint, reblur
from bluref_ray.matching.warp import warp

#: ``align(target [b,3,H,W], reference [b,3,H,W]) -> (aligned [b,3,H,W], confidence [b,1,H,W])``
Align = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
#: ``rematch(target, blurred reference, sharp reference) -> (aligned sharp reference,
#: confidence)``: match the target to the blurred reference, warp the sharp one.
Rematch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

STRATEGIES = ("weighted", "sequential", "progressive", "reblur")


@dataclass
class Fusion:
    """A fused pseudo-sharp batch.

    Attributes:
        image: ``[B, 3, H, W]`` pseudo-sharp images.
        confidence: ``[B, 1, H, W]`` best match confidence per pixel.
        coverage: ``[B]`` share of pixels with confidence ≥ τ.
        refs_used: ``[B]`` references matched.
    """

    image: torch.Tensor
    confidence: torch.Tensor
    coverage: torch.Tensor
    refs_used: torch.Tensor


def aligner(matcher: Matcher) -> Align:
    """Match, then warp the reference into the target's frame; invalid pixels get confidence 0."""

    def align(target: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = matcher(target, reference)
        aligned, valid = warp(reference, m.flow)
        return aligned, m.confidence * valid

    return align


def rematcher(matcher: Matcher) -> Rematch:
    """Match the target to a blurred reference, warp the sharp one by that flow."""

    def rematch(target: torch.Tensor, blurred: torch.Tensor, sharp: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        m = matcher(target, blurred)
        aligned, valid = warp(sharp, m.flow)
        return aligned, m.confidence * valid

    return rematch


class _Accumulator:
    """Running confidence-weighted sum of aligned references (matches ≥ τ only)."""

    def __init__(self, target: torch.Tensor, tau: float) -> None:
        self.target, self.tau = target, tau
        self.sum = torch.zeros_like(target)
        self.weight = torch.zeros_like(target[:, :1])
        self.best = torch.zeros_like(target[:, :1])

    def add(self, aligned: torch.Tensor, conf: torch.Tensor, idx: torch.Tensor | None = None,
            only: torch.Tensor | None = None) -> None:
        """Add references for batch items ``idx`` (all if None), at pixels ``only`` (all)."""
        if only is not None:
            conf = conf * only
        w = conf * (conf >= self.tau)
        sel = slice(None) if idx is None else idx
        self.sum[sel] += w * aligned
        self.weight[sel] += w
        self.best[sel] = torch.maximum(self.best[sel], conf)

    def image(self) -> torch.Tensor:
        fused = self.sum / self.weight.clamp_min(1e-8)
        return torch.where(self.weight > 0, fused, self.target)

    def result(self, refs_used: torch.Tensor) -> Fusion:
        coverage = (self.best >= self.tau).flatten(1).float().mean(1)
        return Fusion(self.image(), self.best, coverage, refs_used)


def _check(target: torch.Tensor, refs: torch.Tensor, available: torch.Tensor | None
           ) -> torch.Tensor:
    if refs.dim() != 5 or refs.shape[0] != target.shape[0] or refs.shape[2:] != target.shape[1:]:
        raise ValueError(f"references {tuple(refs.shape)} do not fit targets "
                         f"{tuple(target.shape)}: expected [B, N, 3, H, W]")
    if available is None:
        return torch.ones(refs.shape[:2], dtype=torch.bool, device=refs.device)
    return available.to(torch.bool)


def _every_reference(target: torch.Tensor, refs: torch.Tensor, align: Align, tau: float,
                     available: torch.Tensor | None, running: bool) -> Fusion:
    """Add every reference, matched to the target (or, if ``running``, to the fusion so far).

    The matcher gets one reference slot of the whole batch at a time (B pairs per call), so
    memory stays that of B pairs whatever N is.
    """
    avail = _check(target, refs, available)
    acc = _Accumulator(target, tau)
    for k in range(refs.shape[1]):
        idx = avail[:, k].nonzero(as_tuple=True)[0]
        if len(idx):
            source = acc.image() if running else target
            aligned, conf = align(source[idx], refs[idx, k])
            acc.add(aligned, conf, idx)
    return acc.result(avail.sum(1))


def weighted_average(target: torch.Tensor, refs: torch.Tensor, align: Align, tau: float = 0.7,
                     available: torch.Tensor | None = None) -> Fusion:
    """Match every reference to the target independently, then average by confidence.

    Shape:
        target ``[B, 3, H, W]``, refs ``[B, N, 3, H, W]``, available ``[B, N]`` → :class:`Fusion`.
    """
    return _every_reference(target, refs, align, tau, available, running=False)


def sequential_accumulation(target: torch.Tensor, refs: torch.Tensor, align: Align,
                            tau: float = 0.7, available: torch.Tensor | None = None) -> Fusion:
    """Fuse references one by one; the running fused image is the next matching input.

    Shape:
        target ``[B, 3, H, W]``, refs ``[B, N, 3, H, W]``, available ``[B, N]`` → :class:`Fusion`.
    """
    return _every_reference(target, refs, align, tau, available, running=True)


def progressive_average(target: torch.Tensor, refs: torch.Tensor, align: Align,
                        tau: float = 0.7, available: torch.Tensor | None = None) -> Fusion:
    """Add references in order, each only where pixels are still below τ; then fuse all.

    A reference is not matched at all for a target whose pixels are all covered already.

    Shape:
        target ``[B, 3, H, W]``, refs ``[B, N, 3, H, W]``, available ``[B, N]`` → :class:`Fusion`.
    """
    avail = _check(target, refs, available)
    acc = _Accumulator(target, tau)
    used = torch.zeros(target.shape[0], dtype=torch.long, device=target.device)
    for k in range(refs.shape[1]):
        uncovered = acc.best < tau  # [B, 1, H, W]
        idx = (avail[:, k] & uncovered.flatten(1).any(1)).nonzero(as_tuple=True)[0]
        if not len(idx):
            continue
        aligned, conf = align(target[idx], refs[idx, k])
        acc.add(aligned, conf, idx, only=uncovered[idx])
        used[idx] += 1
    return acc.result(used)


def reblur_average(target: torch.Tensor, refs: torch.Tensor, align: Align, rematch: Rematch,
                   tau: float = 0.7, available: torch.Tensor | None = None,
                   blurry: torch.Tensor | None = None, kernel_size: int = 41) -> Fusion:
    """Blur-aware matching: align, estimate the blur kernel, blur the references, match again.

    1. ``align`` matches every reference to ``target`` (the blurry frame, or a deblurrer's
       output of it in later refinement rounds).
    2. One blur kernel per frame: ``blurry ≈ k ⊛ aligned`` over all aligned references, centred
       on the middle of the exposure (:mod:`bluref_ray.matching.kernel`).
    3. ``rematch`` matches ``blurry`` to every reference blurred by ``k`` and warps the sharp
       reference by that flow; the results are averaged by confidence (matches ≥ τ only).

    Shape:
        target, blurry ``[B, 3, H, W]``, refs ``[B, N, 3, H, W]``, available ``[B, N]``
        → :class:`Fusion`.
    """
    avail = _check(target, refs, available)
    blurry = target if blurry is None else blurry
    b, n = refs.shape[:2]
    views = torch.zeros(b, n, *target.shape[-2:], device=target.device)
    for k in range(n):
        idx = avail[:, k].nonzero(as_tuple=True)[0]
        if len(idx):
            aligned, _ = align(target[idx], refs[idx, k])
            views[idx, k] = linear_luma(aligned).float()
    side = min(kernel_size, (min(target.shape[-2:]) - 1) // 2 * 2 + 1)  # fits small frames
    kernel = estimate_kernel(views, linear_luma(blurry).float(), side, avail)
    kernel = centre_on(kernel, midpoint(kernel))
    acc = _Accumulator(blurry, tau)
    for k in range(n):
        idx = avail[:, k].nonzero(as_tuple=True)[0]
        if len(idx):
            sharp = refs[idx, k]
            aligned, conf = rematch(blurry[idx], reblur(sharp, kernel[idx]), sharp)
            acc.add(aligned, conf, idx)
    return acc.result(avail.sum(1))


def fuse(strategy: str, target: torch.Tensor, refs: torch.Tensor, align: Align,
         tau: float = 0.7, available: torch.Tensor | None = None,
         rematch: Rematch | None = None, blurry: torch.Tensor | None = None,
         kernel_size: int = 41) -> Fusion:
    """Run one of :data:`STRATEGIES` by name.

    ``reblur`` also takes ``rematch`` (default: DIS at its medium preset, see
    :func:`rematcher`) and, when ``target`` is not the blurry frame itself (a deblurrer's
    output), the ``blurry`` frame.
    """
    fns = {"weighted": weighted_average, "sequential": sequential_accumulation,
           "progressive": progressive_average}
    if strategy == "reblur":
        if rematch is None:
            from bluref_ray.matching import build_matcher

            rematch = rematcher(build_matcher("dis", ref_blur=0.0))
        return reblur_average(target, refs, align, rematch, tau, available, blurry, kernel_size)
    if strategy not in fns:
        raise ValueError(f"unknown fusion strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    return fns[strategy](target, refs, align, tau, available)
