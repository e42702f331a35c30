"""Fusion: BluRef's three strategies and blur-aware matching; references → pseudo-sharp image.

All work on batches: B queries, each with up to N references (missing ones flagged in
``available``). ``align(query, reference)`` matches and warps: it returns the reference in the
query's frame and its confidence (0 where the match leaves the frame); :func:`aligner` builds it
from any :class:`~bluref_ray.matching.Matcher`.

* :func:`weighted_average`: match every reference to the blurry frame independently; average
  the aligned references per pixel, weighted by confidence (only matches ≥ τ count).
* :func:`sequential_accumulation`: the running fused image, sharper after each reference, is the
  matching input for the next reference.
* :func:`progressive_average`: take references in order; a new one is matched only for pixels
  still below τ, and only those pixels take it; stop once every pixel is covered.

* :func:`reblur_average` (ours): match every reference to the blurry frame, estimate the frame's
  blur kernel from these rough alignments (:mod:`bluref_ray.matching.kernel`), blur every
  reference by it and match again, blurry frame to equally blurred reference, which is far more
  precise; warp the sharp references by these flows and average them by confidence. The second
  match is OpenCV's DIS on the CPU (:func:`dis_rematch`) or DIS in PyTorch on the tensors'
  device (:func:`torch_rematch`, the GPU path).

Each returns a :class:`Fusion`: the pseudo-sharp image (the blurry frame where nothing matched),
the confidence map (best confidence per pixel), the coverage (share of pixels with confidence
≥ τ), and the number of references matched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from bluref_ray.config import STRATEGIES
from bluref_ray.config.method import SHIPPED_SELECTOR  # noqa: F401 (re-exported)
from bluref_ray.matching.base import Matcher
from bluref_ray.matching.kernel import (
    GAMMA,
    LocalKernels,
    centre_on,
    estimate_kernel,
    estimate_local_kernels,
    forward_differences,
    linear_luma,
    midpoint,
    reblur,
    reblur_local,
)
from bluref_ray.matching.learned import read_checkpoint
from bluref_ray.matching.refine import fb_confidence, gaussian_blur, gray
from bluref_ray.matching.torch_dis import TorchDIS
from bluref_ray.matching.warp import warp
from bluref_ray.storage import StorageConfig

#: ``align(query [b,3,H,W], reference [b,3,H,W]) -> (aligned [b,3,H,W], confidence [b,1,H,W])``
Align = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
#: ``rematch(query, blurred reference, sharp reference) -> (aligned sharp reference,
#: confidence)``: match the query to the blurred reference afresh, warp the sharp one.
Rematch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]



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
    """Match, then warp the reference into the query's frame; invalid pixels get confidence 0."""

    def align(query: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = matcher(query, reference)
        aligned, valid = warp(reference, m.flow)
        return aligned, m.confidence * valid

    return align


def rematcher(matcher: Matcher) -> Rematch:
    """Match the query to a blurred reference (afresh), warp the sharp one by that flow."""

    def rematch(query: torch.Tensor, blurred: torch.Tensor, sharp: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        m = matcher(query, blurred)
        aligned, valid = warp(sharp, m.flow)
        return aligned, m.confidence * valid

    return rematch


def dis_rematch(preset: str = "medium") -> Rematch:
    """The ``reblur`` strategy's second matching: DIS between the blurry frame and the equally
    blurred reference (so no extra blur of the reference, which is the point), warping the sharp
    reference."""
    from bluref_ray.matching import build_matcher

    return rematcher(build_matcher("dis", preset=preset, ref_blur=0.0))


def torch_rematch(flow: TorchDIS | None = None, sigma_px: float = 1.0) -> Rematch:
    """The ``reblur`` strategy's second matching in PyTorch, on the tensors' device (the GPU
    path), as :func:`dis_rematch` does it: DIS in PyTorch (``flow``, by default a
    :class:`~bluref_ray.matching.torch_dis.TorchDIS` with no reference blur) from no flow,
    blurry frame to blurred reference and back, each direction on its own; the confidence is
    their forward–backward consistency (σ = ``sigma_px``, DIS's)."""
    flow = flow or TorchDIS(ref_blur=0.0)

    def rematch(query: torch.Tensor, blurred: torch.Tensor, sharp: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        q, r = gray(query), gray(blurred)
        both = flow.refine_gray(torch.cat([q, r]), torch.cat([r, q]))  # one batch, both ways
        fwd, bwd = both[:len(q)], both[len(q):]
        aligned, valid = warp(sharp, fwd)
        return aligned, fb_confidence(fwd, bwd, sigma_px).to(sharp.dtype) * valid

    return rematch


class _Accumulator:
    """Running confidence-weighted sum of aligned references (matches ≥ τ only); where none
    matched, the running image is the query and the result the ``blurry`` frame (the query
    itself unless it is a deblurrer's output)."""

    def __init__(self, query: torch.Tensor, tau: float, blurry: torch.Tensor | None = None
                 ) -> None:
        self.query, self.tau = query, tau
        self.blurry = query if blurry is None else blurry
        self.sum = torch.zeros_like(query)
        self.weight = torch.zeros_like(query[:, :1])
        self.best = torch.zeros_like(query[:, :1])

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

    def image(self, unmatched: torch.Tensor | None = None) -> torch.Tensor:
        fused = self.sum / self.weight.clamp_min(1e-8)
        return torch.where(self.weight > 0, fused, self.query if unmatched is None else unmatched)

    def result(self, refs_used: torch.Tensor) -> Fusion:
        coverage = (self.best >= self.tau).flatten(1).float().mean(1)
        return Fusion(self.image(self.blurry), self.best, coverage, refs_used)


def _check(query: torch.Tensor, refs: torch.Tensor, available: torch.Tensor | None
           ) -> torch.Tensor:
    if refs.dim() != 5 or refs.shape[0] != query.shape[0] or refs.shape[2:] != query.shape[1:]:
        raise ValueError(f"references {tuple(refs.shape)} do not fit queries "
                         f"{tuple(query.shape)}: expected [B, N, 3, H, W]")
    if available is None:
        return torch.ones(refs.shape[:2], dtype=torch.bool, device=refs.device)
    return available.to(torch.bool)


def _every_reference(query: torch.Tensor, refs: torch.Tensor, align: Align, tau: float,
                     available: torch.Tensor | None, running: bool,
                     blurry: torch.Tensor | None = None) -> Fusion:
    """Add every reference, matched to the query (or, if ``running``, to the fusion so far).

    The matcher gets one reference slot of the whole batch at a time (B pairs per call), so
    memory stays that of B pairs whatever N is.
    """
    avail = _check(query, refs, available)
    acc = _Accumulator(query, tau, blurry)
    for k in range(refs.shape[1]):
        idx = avail[:, k].nonzero(as_tuple=True)[0]
        if len(idx):
            source = acc.image() if running else query
            aligned, conf = align(source[idx], refs[idx, k])
            acc.add(aligned, conf, idx)
    return acc.result(avail.sum(1))


def weighted_average(query: torch.Tensor, refs: torch.Tensor, align: Align, tau: float = 0.7,
                     available: torch.Tensor | None = None,
                     blurry: torch.Tensor | None = None) -> Fusion:
    """Match every reference to the query independently, then average by confidence.

    Shape:
        query ``[B, 3, H, W]``, refs ``[B, N, 3, H, W]``, available ``[B, N]`` → :class:`Fusion`.
    """
    return _every_reference(query, refs, align, tau, available, running=False, blurry=blurry)


def sequential_accumulation(query: torch.Tensor, refs: torch.Tensor, align: Align,
                            tau: float = 0.7, available: torch.Tensor | None = None,
                            blurry: torch.Tensor | None = None) -> Fusion:
    """Fuse references one by one; the running fused image is the next matching input.

    Shape:
        query ``[B, 3, H, W]``, refs ``[B, N, 3, H, W]``, available ``[B, N]`` → :class:`Fusion`.
    """
    return _every_reference(query, refs, align, tau, available, running=True, blurry=blurry)


def progressive_average(query: torch.Tensor, refs: torch.Tensor, align: Align,
                        tau: float = 0.7, available: torch.Tensor | None = None,
                        blurry: torch.Tensor | None = None) -> Fusion:
    """Add references in order, each only where pixels are still below τ; then fuse all.

    A reference is not matched at all for a query whose pixels are all covered already.

    Shape:
        query ``[B, 3, H, W]``, refs ``[B, N, 3, H, W]``, available ``[B, N]`` → :class:`Fusion`.
    """
    avail = _check(query, refs, available)
    acc = _Accumulator(query, tau, blurry)
    used = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    for k in range(refs.shape[1]):
        uncovered = acc.best < tau  # [B, 1, H, W]
        idx = (avail[:, k] & uncovered.flatten(1).any(1)).nonzero(as_tuple=True)[0]
        if not len(idx):
            continue
        aligned, conf = align(query[idx], refs[idx, k])
        acc.add(aligned, conf, idx, only=uncovered[idx])
        used[idx] += 1
    return acc.result(used)


#: What :class:`Selector` reads, per reference and pixel (logs of energies, 8-bit noise floor
#: added): the check's change, miss and flattening (:func:`check_terms`), how close the nearest
#: other confident reference comes, the matcher's confidence, the blurry frame's gradient energy.
SELECTOR_FEATURES = ("change", "miss", "flattening", "nearest other reference",
                     "matcher confidence", "blurry gradient energy")


class Selector(torch.nn.Module):
    """A learned correction rule for the check: from :data:`SELECTOR_FEATURES`, the probability
    that a reference has under half the blurry frame's error at a pixel (a 6 → hidden → 1 MLP
    on standardised features). ``benchmarks/check_headroom.py --save`` trains it on the truth of
    real footage (the development clips); the package ships one (``assets/selector.pt``). The
    matcher's confidence is one of its features: a selector fits the matcher it was trained
    with (the shipped one: the learned matcher).

    Shape:
        ``[..., 6]`` → ``[...]`` probabilities.
    """

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        n = len(SELECTOR_FEATURES)
        self.net = torch.nn.Sequential(torch.nn.Linear(n, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, 1))
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.mean) / self.std)[..., 0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(features))


def selector_features(blurry: torch.Tensor, aligned: torch.Tensor, conf: torch.Tensor,
                      terms: tuple[torch.Tensor, torch.Tensor, torch.Tensor], tau: float,
                      sigma: float, noise: float) -> torch.Tensor:
    """:data:`SELECTOR_FEATURES` of every reference and pixel; ``terms`` are
    :func:`check_terms`' (miss, change, flattening).

    Shape:
        blurry ``[B, 3, H, W]``, aligned ``[B, N, 3, H, W]``, conf ``[B, N, 1, H, W]``
        → ``[B, N, 1, H, W, 6]``.
    """
    miss, change, flatten = terms
    n = aligned.shape[1]
    ok = conf >= tau
    near = torch.ones_like(miss)  # mean squared difference to the nearest other confident one
    for i in range(n):
        for j in range(i + 1, n):
            d = local_mean((aligned[:, i] - aligned[:, j]).square().mean(1, keepdim=True), sigma)
            near[:, i] = torch.minimum(near[:, i], torch.where(ok[:, j], d, 1.0))
            near[:, j] = torch.minimum(near[:, j], torch.where(ok[:, i], d, 1.0))
    floor = (noise / 255.0) ** 2
    log = lambda x: (x + floor).log10()  # noqa: E731
    energy = _gradient_energy(blurry, sigma)[:, None].expand_as(miss)
    return torch.stack([log(change), log(miss), flatten.log10(), log(near), conf.float(),
                        log(energy)], -1)


def load_selector(uri: str, storage_cfg: StorageConfig | None = None) -> Selector:
    """The :class:`Selector` saved at ``uri`` (``package://bluref_ray/assets/selector.pt``: the
    shipped one), on the CPU, in eval mode.

    Raises:
        FileNotFoundError: nothing at ``uri``; the message names it.
        ValueError: not a selector checkpoint.
    """
    ckpt = read_checkpoint(uri, "check-selector", storage_cfg)
    selector = Selector(**ckpt["kwargs"])
    selector.load_state_dict(ckpt["state_dict"])
    return selector.eval()


@dataclass(frozen=True)
class Check:
    """The physical check of blur-aware fusion (see :func:`reblur_check`).

    Attributes:
        gain: a reference counts at a pixel where it changes the blurry frame at least ``gain``
            times more than its reblurred self misses the blurry frame.
        noise: the camera's noise level in 8-bit levels: differences below it are noise.
        sharp: how close (8-bit levels) a reference and its reblurred self must both come to the
            blurry frame for a pixel to count as already sharp. Raising it (3 levels) trades
            gain for coverage, and does so better than raising ``noise``: see docs/results.md.
        sigma: the size (Gaussian σ, pixels) of the neighbourhood both are measured over.
        tile: the reblurred reference is blurred by kernels estimated per ``tile × tile`` tile
            (pixels) rather than by the frame's one kernel: real blur varies across a frame.
            0: the frame's kernel.
        selector: a learned rule (:class:`Selector`) decides where a reference corrects a pixel
            instead of ``gain``: where it gives the reference a probability of at least
            ``selector_p`` of having under half the blurry frame's error there, and the
            reference changes the frame by more than twice the noise level.
    """

    gain: float = 4.0
    noise: float = 2.0
    sharp: float = 2.0
    sigma: float = 3.0
    tile: int = 64
    selector: Selector | None = None
    selector_p: float = 0.7


def local_mean(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian-weighted local mean of each channel, edges replicated.

    Shape:
        ``[B, C, H, W]`` → ``[B, C, H, W]``.
    """
    return gaussian_blur(x, sigma)


def _gradient_energy(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Local mean of the squared gradient, over channels (+ a floor of one 8-bit level).

    Shape:
        ``[B, 3, H, W]`` → ``[B, 1, H, W]``.
    """
    gx, gy = forward_differences(x)
    return local_mean((gx.square() + gy.square()).mean(1, keepdim=True), sigma) + (1 / 255) ** 2


def match_light(aligned: torch.Tensor, blurry: torch.Tensor, matched: torch.Tensor,
                limit: float = 2.0) -> torch.Tensor:
    """Give each aligned reference the blurry frame's exposure and white balance.

    Blur moves light around but keeps its amount, so over the pixels a reference is matched on,
    its mean in linear light equals the blurry frame's unless the camera's gain changed between
    the two frames (auto-exposure, white balance). The ratio of the two means, per reference and
    channel (at most ``limit``, one stop, either way), is that change; it scales the reference
    (in 8-bit space by the ratio to the power 1/γ). A reference matched on under 1% of the frame
    keeps its light.

    Shape:
        aligned ``[B, N, 3, H, W]``, blurry ``[B, 3, H, W]``, matched ``[B, N, 1, H, W]`` (bool or
        0/1) → ``[B, N, 3, H, W]``.
    """
    w = matched.float()
    lin = lambda x: x.float().clamp(0, 1) ** GAMMA  # noqa: E731
    num = (w * lin(blurry)[:, None]).flatten(3).sum(-1)
    den = (w * lin(aligned)).flatten(3).sum(-1)
    enough = (w.flatten(2).mean(-1) > 0.01)[..., None] & (den > 1e-6)
    ratio = torch.where(enough, num / den.clamp_min(1e-6), torch.ones_like(num))
    gain = ratio.clamp(1 / limit, limit) ** (1 / GAMMA)
    return (aligned * gain[..., None, None].to(aligned.dtype)).clamp(0, 1)


def check_terms(blurry: torch.Tensor, aligned: torch.Tensor,
                kernel: torch.Tensor | LocalKernels, sigma: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What :func:`reblur_check` decides on, per reference and pixel, over a Gaussian
    neighbourhood of ``sigma`` pixels: the *miss* ``|k ⊛ a − blurry|²``, the *change*
    ``|a − blurry|²`` and the *flattening*: how much more gradient energy the reference has
    than the blurry frame (at least 1).

    Shape:
        blurry ``[B, 3, H, W]``, aligned ``[B, N, 3, H, W]``, kernel ``[B, S, S]`` or
        :class:`LocalKernels` → three ``[B, N, 1, H, W]``.
    """
    b, n = aligned.shape[:2]
    flat = aligned.flatten(0, 1)
    if isinstance(kernel, LocalKernels):  # one reference at a time: tiles overlap 4-fold
        reblurred = torch.stack([reblur_local(aligned[:, k], kernel) for k in range(n)], 1)
    else:
        reblurred = reblur(flat, kernel.repeat_interleave(n, 0)).view_as(aligned)
    miss = local_mean(((reblurred - blurry[:, None]) ** 2).mean(2).flatten(0, 1)[:, None],
                      sigma).view(b, n, 1, *blurry.shape[-2:])
    change = local_mean(((aligned - blurry[:, None]) ** 2).mean(2).flatten(0, 1)[:, None],
                        sigma).view_as(miss)
    # A misalignment d shows in the miss as d·∇blurry but costs d·∇reference: the flattening
    # scales the miss to estimate the reference's own error.
    flatten = (_gradient_energy(flat, sigma).view_as(miss)
               / _gradient_energy(blurry, sigma)[:, None].clamp_min(1e-12)).clamp_min(1.0)
    return miss, change, flatten


def reblur_check(blurry: torch.Tensor, aligned: torch.Tensor, conf: torch.Tensor,
                 kernel: torch.Tensor | LocalKernels, tau: float, check: Check = Check()
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep a reference only where, blurred by the blur there, it reproduces the blurry frame.

    For each aligned reference ``a`` and pixel, over a Gaussian neighbourhood: the *miss*
    ``|k ⊛ a − blurry|²`` (what the blur model fails to explain: misalignment, occlusion, a blur
    the kernel does not describe, a change of light) and the *change* ``|a − blurry|²`` (what the
    reference would correct). A pixel is

    * **corrected** where some reference with matcher confidence ≥ τ changes the frame at least
      ``check.gain`` times more than its estimated own error (the miss, scaled by how much the
      blur flattened the gradients there, plus the noise floor), or, with ``check.selector``,
      where that learned rule says so: the pseudo-sharp pixel is the confidence-weighted mean
      of those references, its confidence their best;
    * **already sharp** where a reference both misses and changes the frame by no more than
      ``check.sharp`` levels: the blurry frame itself is the pseudo-sharp pixel (nothing to
      correct there), with that reference's matcher confidence;
    * **unsure** otherwise: confidence 0.

    Shape:
        blurry ``[B, 3, H, W]``, aligned ``[B, N, 3, H, W]``, conf ``[B, N, 1, H, W]`` (0 for an
        empty slot), kernel ``[B, S, S]`` (one per frame) or :class:`LocalKernels` (per tile)
        → image ``[B, 3, H, W]``, confidence ``[B, 1, H, W]``.
    """
    terms = check_terms(blurry, aligned, kernel, check.sigma)
    features = None
    if check.selector is not None:
        features = selector_features(blurry, aligned, conf, terms, tau, check.sigma, check.noise)
    return fuse_checked(blurry, aligned, conf, check_corrects(terms, conf, tau, check, features),
                        check_sharp(terms, check))


def check_corrects(terms: tuple[torch.Tensor, torch.Tensor, torch.Tensor], conf: torch.Tensor,
                   tau: float, check: Check, features: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Where each reference corrects the blurry frame (:func:`reblur_check`'s rule); ``terms``
    are :func:`check_terms`', ``features`` :func:`selector_features` (needed with
    ``check.selector``).

    Shape:
        terms and conf ``[B, N, 1, H, W]``, features ``[B, N, 1, H, W, 6]`` → bool, as conf.
    """
    miss, change, flatten = terms
    floor = (check.noise / 255.0) ** 2
    if check.selector is None:
        return (change >= check.gain * (miss * flatten + floor)) & (conf >= tau)
    if features is None:
        raise ValueError("check.selector needs the selector's features")
    return (check.selector(features) >= check.selector_p) & (change > 4 * floor) & (conf >= tau)


def check_sharp(terms: tuple[torch.Tensor, torch.Tensor, torch.Tensor], check: Check
                ) -> torch.Tensor:
    """Where each reference finds the blurry frame already sharp (:func:`reblur_check`'s rule).

    Shape:
        terms ``[B, N, 1, H, W]`` → bool, as they.
    """
    miss, change, _ = terms
    level = (check.sharp / 255.0) ** 2
    return (change <= level) & (miss <= level)


def fuse_checked(blurry: torch.Tensor, aligned: torch.Tensor, conf: torch.Tensor,
                 corrects: torch.Tensor, sharp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pseudo-sharp image and its confidence from per-reference decisions: where some
    reference ``corrects`` the pixel, the confidence-weighted mean of those references and their
    best confidence; elsewhere the blurry pixel, with the best confidence of the references that
    find it ``sharp`` already (0 if none).

    Shape:
        blurry ``[B, 3, H, W]``, aligned ``[B, N, 3, H, W]``, conf, corrects, sharp
        ``[B, N, 1, H, W]`` → image ``[B, 3, H, W]``, confidence ``[B, 1, H, W]``.
    """
    w = conf * corrects
    fused = (w * aligned).sum(1) / w.sum(1).clamp_min(1e-8)
    corrected = corrects.any(1)
    image = torch.where(corrected, fused, blurry)
    best = (conf * corrects).amax(1)
    confidence = torch.where(corrected, best, (conf * sharp).amax(1))
    return image, confidence


def reblur_average(query: torch.Tensor, refs: torch.Tensor, align: Align, rematch: Rematch,
                   tau: float = 0.7, available: torch.Tensor | None = None,
                   blurry: torch.Tensor | None = None, kernel_size: int = 41,
                   check: Check | None = Check()) -> Fusion:
    """Blur-aware matching: align, estimate the blur kernel, blur the references, match again.

    1. ``align`` matches every reference to ``query`` (the blurry frame, or a deblurrer's
       output of it in later refinement rounds).
    2. One blur kernel per frame: ``blurry ≈ k ⊛ aligned`` over all aligned references, centred
       on the middle of the exposure (:mod:`bluref_ray.matching.kernel`).
    3. ``rematch`` matches ``blurry`` to every reference blurred by ``k`` (it may start from
       step 1's flow) and warps the sharp reference by that flow;
       :func:`match_light` gives it the blurry frame's exposure and white balance. (Steps 1-3
       are :func:`blur_aware_align`.)
    4. With ``check`` (the default), :func:`reblur_check` keeps each reference only where the
       physical model holds, so that a confident pixel is one the blurry frame's own pixels
       vouch for; the model there is a kernel per tile, estimated again from the references
       as step 3 aligned them, each weighted by where it matched (``check.tile``). Without
       it, the references are averaged by confidence (matches ≥ τ only).

    Shape:
        query, blurry ``[B, 3, H, W]``, refs ``[B, N, 3, H, W]``, available ``[B, N]``
        → :class:`Fusion`.
    """
    avail = _check(query, refs, available)
    blurry = query if blurry is None else blurry
    n = refs.shape[1]
    aligned_all, conf_all, kernel = blur_aware_align(query, refs, align, rematch, tau, avail,
                                                     blurry, kernel_size)
    if check is None:
        acc = _Accumulator(blurry, tau)
        for k in range(n):
            acc.add(aligned_all[:, k], conf_all[:, k])
        return acc.result(avail.sum(1))
    model = check_model(blurry, aligned_all, conf_all, kernel, tau, check, kernel_size, avail)
    image, confidence = reblur_check(blurry, aligned_all, conf_all, model, tau, check)
    coverage = (confidence >= tau).flatten(1).float().mean(1)
    return Fusion(image, confidence, coverage, avail.sum(1))


def blur_aware_align(query: torch.Tensor, refs: torch.Tensor, align: Align, rematch: Rematch,
                     tau: float, available: torch.Tensor, blurry: torch.Tensor,
                     kernel_size: int = 41
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1-3 of :func:`reblur_average`: the references aligned to the blurry frames, light
    matched, their confidences (0 for an empty slot) and the frames' blur kernels.

    Shape:
        query, blurry ``[B, 3, H, W]``, refs ``[B, N, 3, H, W]``, available ``[B, N]`` bool →
        aligned ``[B, N, 3, H, W]``, confidence ``[B, N, 1, H, W]``, kernel ``[B, S, S]``.
    """
    avail = available.to(torch.bool)
    b, n = refs.shape[:2]
    views = torch.zeros(b, n, *query.shape[-2:], device=query.device)
    for k in range(n):
        idx = avail[:, k].nonzero(as_tuple=True)[0]
        if len(idx):
            aligned, _ = align(query[idx], refs[idx, k])
            views[idx, k] = linear_luma(aligned).float()
    side = min(kernel_size, (min(query.shape[-2:]) - 1) // 2 * 2 + 1)  # fits small frames
    kernel = estimate_kernel(views, linear_luma(blurry).float(), side, avail)
    kernel = centre_on(kernel, midpoint(kernel))
    aligned_all = torch.zeros_like(refs)
    conf_all = torch.zeros(b, n, 1, *query.shape[-2:], device=query.device,
                           dtype=query.dtype)
    for k in range(n):
        idx = avail[:, k].nonzero(as_tuple=True)[0]
        if len(idx):
            sharp = refs[idx, k]
            aligned_all[idx, k], conf_all[idx, k] = rematch(
                blurry[idx], reblur(sharp, kernel[idx]), sharp)
    return match_light(aligned_all, blurry, conf_all >= tau), conf_all, kernel


def check_model(blurry: torch.Tensor, aligned: torch.Tensor, conf: torch.Tensor,
                kernel: torch.Tensor, tau: float, check: Check, kernel_size: int,
                available: torch.Tensor) -> torch.Tensor | LocalKernels:
    """The blur that :func:`reblur_check` tests the references against: the frame's kernel, or
    (``check.tile``) kernels per tile estimated again from the references as aligned, each
    weighted by where it matched."""
    if not check.tile:
        return kernel.to(blurry.dtype)  # reblur gives the kernels the image's dtype
    return estimate_local_kernels(linear_luma(aligned).float(), linear_luma(blurry).float(),
                                  check.tile, kernel_size, available, conf[:, :, 0] >= tau)


def fuse(strategy: str, query: torch.Tensor, refs: torch.Tensor, align: Align,
         tau: float = 0.7, available: torch.Tensor | None = None,
         rematch: Rematch | None = None, blurry: torch.Tensor | None = None,
         kernel_size: int = 41, check: Check | None = Check()) -> Fusion:
    """Run one of :data:`STRATEGIES` by name.

    When ``query`` is not the blurry frame itself (a deblurrer's output), ``blurry`` is: it
    fills the pixels no reference covers. ``reblur`` also takes ``rematch`` (default:
    :func:`dis_rematch`) and the physical ``check`` (None: none).
    """
    fns = {"weighted": weighted_average, "sequential": sequential_accumulation,
           "progressive": progressive_average}
    if strategy == "reblur":
        return reblur_average(query, refs, align, rematch or dis_rematch(), tau, available,
                              blurry, kernel_size, check)
    if strategy not in fns:
        raise ValueError(f"unknown fusion strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    return fns[strategy](query, refs, align, tau, available, blurry)
