"""Ref-NAFNet (Zou, Suganuma, Okatani): NAFNet that also reads a sharp reference frame.

The backbone is :class:`~bluref_ray.models.nafnet.NAFNet` whose last three decoder levels (1/4,
1/2 and full scale) each end in an image head, so that the decoder makes a sharp estimate at
each scale, coarse to fine. At each of those scales:

1. **Estimate**: ``Ŝ_s = head_s(D_s) + B↓s`` (``D_s`` the decoder's features, ``B↓s`` the blurry
   input at that scale).
2. **Match**: features ``φ`` of ``Ŝ_s`` and of the reference at that scale ``R↓s``; every 3×3
   patch of ``φ(Ŝ_s)`` is compared by cosine similarity with patches of ``φ(R↓s)``: all of them
   at the coarsest scale (:func:`global_match`, chunked so that memory stays bounded), an L×L
   window around the coarser scale's match at finer scales (:func:`local_match`). The best
   patch's position is the index map ``I``, its similarity the confidence ``S``.
3. **Transfer and fuse**: the reference encoder's features at that scale are gathered at ``I``
   (3×3 patches folded back with overlap averaging, :func:`transfer`) into ``F_trans``, and
   ``D_s ← conv1([D_s, F_trans]) ⊙ conv2(S) + D_s``; decoding goes on from there.

The final image comes from the full-scale fused features. ``forward`` returns it;
``forward(..., return_scales=True)`` returns ``[Ŝ_1/4, Ŝ_1/2, Ŝ_1, final]`` for the multi-scale
loss (:func:`ref_loss`).

``φ`` is frozen and lives in the model (so a checkpoint is self-contained): ``matcher`` is the
first stage of the feature pyramid of the dense matcher that ships with the package (trained by
this project to match frames across blur; it runs on the image upsampled ×2, so its stride-2
stage gives features at the image's own resolution), ``vgg19`` is ImageNet VGG19 up to relu1_2
from weights the user gives (the paper's choice). :func:`load_match_features` fills it in.

``conv1`` starts at zero, so an untrained Ref-NAFNet is the plain multi-scale NAFNet: the
reference is used only as far as training finds it useful.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bluref_ray.models.nafnet import NAFBlock, NAFNet, pad_to_multiple

#: Matching features :class:`RefNAFNet` knows.
MATCH_FEATURES = ("matcher", "vgg19")
#: Default bound on the similarities held at once by a match (elements of float32).
MATCH_CHUNK = 1 << 22


def patch_vectors(features: torch.Tensor) -> torch.Tensor:
    """3×3 patches of a feature map, each L2-normalised (zero-padded at the borders).

    Shape:
        ``[B, C, H, W]`` → ``[B, 9C, H·W]``.
    """
    return F.normalize(F.unfold(features.float(), 3, padding=1), dim=1)


def global_match(query: torch.Tensor, keys: torch.Tensor,
                 chunk: int = MATCH_CHUNK) -> torch.Tensor:
    """For each 3×3 patch of ``query``, the index of the most similar patch of ``keys``
    (cosine similarity, exhaustive search).

    Query rows are compared in chunks of ``chunk // (Hk·Wk)`` so that at most about ``chunk``
    similarities are held at once, whatever the image size: in one buffer, reused by every
    chunk (a new block per chunk made glibc's heap grow by each block on the CPU: 12 GiB for
    16-channel features at 1/4 of 720p). Ties go to the first key. No gradient: a match is a
    choice.

    Shape:
        ``query [B, C, H, W]``, ``keys [B, C, Hk, Wk]`` → ``([B, H·W] int64 indices into
        Hk·Wk (row-major), [B, H·W] their cosine similarity)``.
    """
    with torch.no_grad():
        q, k = patch_vectors(query).transpose(1, 2), patch_vectors(keys)  # [B,N,D], [B,D,M]
        b, n, m = q.shape[0], q.shape[1], k.shape[2]
        rows = min(n, max(1, chunk // (m * b)))
        sims = torch.empty(b, rows, m, device=q.device)
        index = torch.empty(b, n, dtype=torch.long, device=q.device)
        cos = torch.empty(b, n, device=q.device)
        for s in range(0, n, rows):
            block = sims[:, :min(rows, n - s)]
            torch.bmm(q[:, s:s + rows], k, out=block)
            cos[:, s:s + rows], index[:, s:s + rows] = block.max(2)
    return index, cos


def _patch_norms(features: torch.Tensor) -> torch.Tensor:
    """L2 norm of every zero-padded 3×3 patch: ``[B, C, H, W]`` → ``[B, H·W]``."""
    energy = F.avg_pool2d(features.float().pow(2).sum(1, keepdim=True), 3, 1, 1,
                          count_include_pad=True) * 9
    return energy.clamp_min(1e-24).sqrt().flatten(1)


def local_match(query: torch.Tensor, keys: torch.Tensor, coarse: torch.Tensor,
                coarse_key_width: int, window: int, chunk: int = MATCH_CHUNK) -> torch.Tensor:
    """For each 3×3 patch of ``query``, the most similar patch of ``keys`` near where the
    coarser scale matched (cosine similarity).

    The query grid is cut into 2×2 cells, one per coarse position; a cell whose coarse match is
    at ``(y, x)`` searches the ``(L+1)²`` keys from ``(2y − L/2, 2x − L/2)`` (moved inside the
    key grid at its borders), which hold every query's own ``L × L`` neighbourhood of
    ``2·(y, x)`` plus its offset in the cell. The similarities of a cell are one grouped
    convolution of the key window's features with the cell's four query patches, so no patch
    is copied out. When the window covers the whole key grid this is :func:`global_match`,
    ties included (keys are searched in the same order).

    Args:
        query, keys: ``[B, C, H, W]`` and ``[B, C, Hk, Wk]`` features.
        coarse: ``[B, ceil(H/2)·ceil(W/2)]`` indices of the coarser scale's match into a key
            grid of width ``coarse_key_width``.
        window: L, the side of the searched square.
        chunk: about the most values held at once.

    Returns:
        ``([B, H·W] int64 indices into Hk·Wk (row-major), [B, H·W] their cosine similarity)``.
    """
    b, c, h, w = query.shape
    hk, wk = keys.shape[-2:]
    hc, wc = (h + 1) // 2, (w + 1) // 2
    sy, sx = min(window + 1, hk), min(window + 1, wk)
    dev = query.device
    # window corner per cell: 2·coarse match − L/2, kept inside the key grid
    cy = ((coarse // coarse_key_width) * 2 - window // 2).clamp(0, hk - sy)
    cx = ((coarse % coarse_key_width) * 2 - window // 2).clamp(0, wk - sx)
    # the window's key features with the 1-pixel zero border its patches reach into
    ry, rx = torch.meshgrid(torch.arange(sy + 2, device=dev), torch.arange(sx + 2, device=dev),
                            indexing="ij")
    oy, ox = torch.meshgrid(torch.arange(sy, device=dev), torch.arange(sx, device=dev),
                            indexing="ij")
    padded = F.pad(keys.float(), (1, 1, 1, 1)).flatten(2)  # [B, C, (Hk+2)(Wk+2)]
    norms = _patch_norms(keys)
    # queries grouped by cell: [cells, 4] flat query indices (odd sizes: the edge repeated)
    two = torch.tensor([0, 1], device=dev)
    qy = (torch.arange(hc, device=dev)[:, None] * 2 + two).clamp_max(h - 1)
    qx = (torch.arange(wc, device=dev)[:, None] * 2 + two).clamp_max(w - 1)
    cell_q = (qy[:, None, :, None] * w + qx[None, :, None, :]).reshape(hc * wc, 4)
    q_patches = F.unfold(query.float(), 3, padding=1)  # [B, 9C, H·W]
    per_cell = c * (sy + 2) * (sx + 2) + 6 * sy * sx
    cells = max(1, chunk // (per_cell * b))
    out = torch.empty(b, h * w, dtype=torch.long, device=dev)
    cos = torch.empty(b, h * w, device=dev)
    bi = torch.arange(b, device=dev)[:, None, None]
    for s in range(0, hc * wc, cells):
        e = min(hc * wc, s + cells)
        n = e - s
        region = ((cy[:, s:e, None] + ry.reshape(1, 1, -1)) * (wk + 2)
                  + cx[:, s:e, None] + rx.reshape(1, 1, -1))  # [B, n, R]
        feats = padded.gather(2, region.view(b, 1, -1).expand(-1, c, -1))
        feats = feats.view(b, c, n, -1).transpose(1, 2).reshape(1, b * n * c, sy + 2, sx + 2)
        qi = cell_q[s:e]
        kernels = q_patches[:, :, qi].permute(0, 2, 3, 1).reshape(b * n * 4, c, 3, 3)
        dots = F.conv2d(feats, kernels, groups=b * n).view(b, n, 4, sy * sx)
        kidx = ((cy[:, s:e, None] + oy.reshape(1, 1, -1)) * wk
                + cx[:, s:e, None] + ox.reshape(1, 1, -1))  # [B, n, sy·sx]
        value, best = (dots / norms.gather(1, kidx.view(b, -1)).view(b, n, 1, -1)).max(3)
        out[bi, qi[None].expand(b, -1, -1)] = kidx.gather(2, best)
        cos[bi, qi[None].expand(b, -1, -1)] = value
    return out, cos / _patch_norms(query)


def _shift(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[..., y, x] = t[..., y − dy, x − dx]`` (edges repeated)."""
    h, w = t.shape[-2:]
    p = F.pad(t[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0]
    return p[..., 1 - dy:1 - dy + h, 1 - dx:1 - dx + w]


def transfer(features: torch.Tensor, index: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The reference's features moved to where they matched: every 3×3 patch of ``features``
    at its matched position is pasted at the query's position, overlaps averaged.

    Shape:
        ``features [B, C, Hk, Wk]``, ``index [B, H·W]`` (into ``Hk·Wk``), ``size = (H, W)``
        → ``[B, C, H, W]``.
    """
    b, c, hk, wk = features.shape
    h, w = size
    ty, tx = (index // wk).view(b, h, w), (index % wk).view(b, h, w)
    ys = torch.arange(h, device=index.device)[:, None]
    xs = torch.arange(w, device=index.device)[None, :]
    flat = features.flatten(2)
    total = torch.zeros(b, c, h * w, dtype=features.dtype, device=features.device)
    count = torch.zeros(b, 1, h * w, dtype=features.dtype, device=features.device)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            # the patch centred at (y − dy, x − dx) covers (y, x) at its offset (dy, dx)
            ky, kx = _shift(ty, dy, dx).long() + dy, _shift(tx, dy, dx).long() + dx
            ok = ((ys - dy >= 0) & (ys - dy < h) & (xs - dx >= 0) & (xs - dx < w)
                  & (ky >= 0) & (ky < hk) & (kx >= 0) & (kx < wk)).view(b, 1, -1)
            k = (ky.clamp(0, hk - 1) * wk + kx.clamp(0, wk - 1)).view(b, 1, -1)
            got = flat.gather(2, k.expand(-1, c, -1))
            total = total + got * ok
            count = count + ok
    return (total / count.clamp_min(1)).view(b, c, h, w)


class MatchFeatures(nn.Module):
    """The frozen features ``φ`` that matching compares (see the module docstring).

    Shape:
        ``[B, 3, H, W]`` in [0, 1] → ``[B, C, H, W]``.
    """

    def __init__(self, kind: str = "matcher") -> None:
        super().__init__()
        if kind not in MATCH_FEATURES:
            raise ValueError(f"match_features={kind!r}: use one of {MATCH_FEATURES}")
        self.kind = kind
        if kind == "matcher":  # the matcher's FeaturePyramid stage 0 (channels 16)
            from bluref_ray.matching.network import FeaturePyramid

            self.net = FeaturePyramid((16,)).stages[0]
        else:  # VGG19 conv1_1, relu, conv1_2, relu
            self.net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(64, 64, 3, padding=1), nn.ReLU())
            self.register_buffer("mean", torch.tensor((0.485, 0.456, 0.406))[None, :, None, None])
            self.register_buffer("std", torch.tensor((0.229, 0.224, 0.225))[None, :, None, None])
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "matcher":
            return self.net(F.interpolate(x, scale_factor=2, mode="bilinear",
                                          align_corners=False))
        return self.net((x - self.mean) / self.std)


def load_match_features(model: RefNAFNet, vgg19_weights: str | None = None,
                        storage_cfg=None) -> None:
    """Fill a new model's ``φ`` with its trained weights: the shipped matcher's first stage, or
    VGG19's first two convolutions from ``vgg19_weights``.

    Raises:
        ConfigError: ``vgg19`` without a readable VGG19 state dict.
    """
    from bluref_ray.models.content import _matcher_pyramid, _vgg19

    phi = model.phi
    if phi.kind == "matcher":
        phi.net.load_state_dict(_matcher_pyramid(storage_cfg).stages[0].state_dict())
    else:
        vgg = _vgg19(vgg19_weights, storage_cfg, "refnet.vgg19_weights")
        phi.net[0].load_state_dict(vgg[0].state_dict())
        phi.net[2].load_state_dict(vgg[2].state_dict())


class RefEncoder(nn.Module):
    """The reference's features at full, 1/2 and 1/4 scale: a convolution and two NAF blocks at
    full scale (the paper has three convolutions; one keeps the encoder cheaper than the
    backbone's full-scale level), then a strided convolution and a NAF
    block per halving.

    Shape:
        ``[B, 3, H, W]`` → ``[[B, 4C, H/4, W/4], [B, 2C, H/2, W/2], [B, C, H, W]]``.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.intro = nn.Sequential(nn.Conv2d(3, width, 3, padding=1),
                                   NAFBlock(width), NAFBlock(width))
        self.downs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, 2 * c, 2, stride=2), NAFBlock(2 * c))
            for c in (width, 2 * width))

    def forward(self, ref: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.intro(ref)]
        for down in self.downs:
            feats.append(down(feats[-1]))
        return feats[::-1]


class Fusion(nn.Module):
    """``F ← conv1([F, F_trans]) ⊙ conv2(S) + F``; ``conv1`` starts at zero."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2 * c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(1, c, 3, padding=1)
        nn.init.zeros_(self.conv1.weight)
        nn.init.zeros_(self.conv1.bias)

    def forward(self, feat: torch.Tensor, trans: torch.Tensor, conf: torch.Tensor
                ) -> torch.Tensor:
        return self.conv1(torch.cat([feat, trans], 1)) * self.conv2(conf) + feat


class RefNAFNet(NAFNet):
    """Reference-guided NAFNet: the :class:`~bluref_ray.models.nafnet.NAFNet` backbone (same
    parameter names) with image heads, matching and fusion at its last three decoder levels.

    Args:
        width, enc_blocks, middle_blocks, dec_blocks: the NAFNet backbone (at least three
            levels: the last three decoder levels are the 1/4, 1/2 and full scales).
        window: L, the side of the local search window at 1/2 and full scale (16 in the paper).
        match_features: ``matcher`` or ``vgg19`` (see the module docstring).
        chunk: about the most patch similarities held at once while matching.

    Shape:
        ``(blurry [B, 3, H, W], reference [B, 3, H', W'])`` in [0, 1] → ``[B, 3, H, W]``. The
        reference may have any size (matching is global at the coarsest scale): training
        crops a larger square of it than of the blurry frame, so that what the blurry crop
        shows is in it although the camera moved between the frames.
    """

    #: the network reads a reference frame as its second input
    takes_reference = True

    def __init__(self, width: int = 32, enc_blocks: tuple[int, ...] = (1, 1, 1, 28),
                 middle_blocks: int = 1, dec_blocks: tuple[int, ...] = (1, 1, 1, 1),
                 window: int = 16, match_features: str = "matcher",
                 chunk: int = MATCH_CHUNK) -> None:
        if len(enc_blocks) < 3:
            raise ValueError("Ref-NAFNet needs at least 3 levels (1/4, 1/2 and full scale)")
        super().__init__(width, enc_blocks, middle_blocks, dec_blocks)
        self.window, self.chunk = window, chunk
        scale_widths = (4 * width, 2 * width, width)
        self.heads = nn.ModuleList(nn.Conv2d(c, 3, 3, padding=1) for c in scale_widths)
        self.fusions = nn.ModuleList(Fusion(c) for c in scale_widths)
        self.ref_encoder = RefEncoder(width)
        self.phi = MatchFeatures(match_features)

    def train(self, mode: bool = True) -> RefNAFNet:
        super().train(mode)
        self.phi.eval()  # frozen
        return self

    @torch.no_grad()
    def match(self, estimate: torch.Tensor, reference: torch.Tensor,
              coarse: tuple[torch.Tensor, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Index map and confidence of ``estimate``'s patches in ``reference`` (any size).
        No gradient: the estimate is trained by its own loss, the fusion learns what to make
        of the match.

        Returns:
            ``([B, H·W] indices into the reference's grid, [B, 1, H, W] confidence)``.
        """
        h, w = estimate.shape[-2:]
        fq, fk = self.phi(estimate.float()), self.phi(reference.float())
        if coarse is None:
            index, conf = global_match(fq, fk, self.chunk)
        else:
            index, conf = local_match(fq, fk, coarse[0], coarse[1], self.window, self.chunk)
        return index, conf.view(-1, 1, h, w).to(estimate.dtype)

    def forward(self, image: torch.Tensor, reference: torch.Tensor,
                return_scales: bool = False) -> torch.Tensor | list[torch.Tensor]:
        h, w = image.shape[-2:]
        inp = pad_to_multiple(image, self.multiple)
        ref = pad_to_multiple(reference, self.multiple)
        ref_feats = self.ref_encoder(ref)
        x, skips = self.encode(inp)
        first = len(self.decoders) - 3
        outputs, coarse = [], None
        for i, (dec, up, skip) in enumerate(zip(self.decoders, self.ups, reversed(skips))):
            x = dec(up(x) + skip)
            if i < first:
                continue
            s = i - first
            factor = 2 ** (2 - s)
            blur_s = F.avg_pool2d(inp, factor) if factor > 1 else inp
            ref_s = F.avg_pool2d(ref, factor) if factor > 1 else ref
            estimate = self.heads[s](x) + blur_s
            outputs.append(estimate)
            index, conf = self.match(estimate, ref_s, coarse)
            x = self.fusions[s](x, transfer(ref_feats[s], index, x.shape[-2:]), conf)
            coarse = (index, ref_s.shape[-1])
        outputs.append(self.ending(x) + inp)
        outputs = [o[..., :(h + factor - 1) // factor, :(w + factor - 1) // factor]
                   for o, factor in zip(outputs, (4, 2, 1, 1))]
        return outputs if return_scales else outputs[-1]
