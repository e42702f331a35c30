"""Tiled inference: run an image-to-image network on frames larger than memory allows.

:func:`tiled_forward` cuts a frame into square tiles that overlap their neighbours, runs the
network on a few tiles at a time, and cross-fades the overlaps back together. Memory is bounded
by the tile size and the number of tiles per batch, not by the frame size, so a 4K frame needs
no more GPU memory than a 512×512 one.

Blending, per axis, where two neighbouring tiles overlap by ``o`` pixels:

* the outer ``margin`` pixels of each tile's overlapping edge get weight 0: a network sees zero
  (or reflected) padding there instead of the true neighbours, so its output is least reliable;
* over the rest of the overlap, one tile's weight ramps linearly up from 0 to 1 while the other
  ramps down, so the two sum to 1 and no seam is left;
* a border of the frame is no seam: the tile touching it keeps weight 1 up to the border.

The result is divided by the summed weights (which also covers the last tile, aligned to the
frame's border, overlapping its neighbour by more than ``overlap``). For a network whose output
at a pixel depends only on inputs within ``r`` pixels (a stack of convolutions), tiled and
whole-frame outputs agree exactly when ``margin >= r`` (by default ``margin = overlap // 4``, so
``overlap >= 4 r``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Model = Callable[[Tensor], Tensor]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``length`` pixels.

    Neighbours overlap by ``overlap`` pixels; the last tile is aligned to the border (it may
    overlap its neighbour by more). A length that fits in one tile gives ``[0]``.
    """
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def axis_weights(starts: list[int], size: int, margin: int) -> Tensor:
    """Blending weights along one axis for each tile, ``[len(starts), size]`` float32.

    Between tiles ``i - 1`` and ``i`` (overlapping on ``[starts[i], starts[i - 1] + size)``),
    tile ``i`` ramps up and tile ``i - 1`` ramps down over the overlap less ``margin`` pixels
    at each end, so their weights sum to 1 there; outside the overlaps a tile weighs 1. Where
    a tile's rising and falling edges meet (a short last stride), the two multiply.

    Shape:
        → ``[T, size]``, T = ``len(starts)``.
    """
    w = torch.ones(len(starts), size)
    for i in range(1, len(starts)):
        lo, hi = starts[i], starts[i - 1] + size  # the overlap, in frame coordinates
        m = min(margin, (hi - lo) // 2)
        n = hi - lo - 2 * m  # ramp length
        up = torch.zeros(hi - lo)
        up[m + n:] = 1.0
        if n > 0:
            up[m:m + n] = (torch.arange(n, dtype=torch.float32) + 0.5) / n
        w[i, :hi - lo] *= up  # rising edge of tile i, from its start
        w[i - 1, size - (hi - lo):] *= 1.0 - up  # falling edge of tile i - 1, up to its end
    return w


@torch.no_grad()
def tiled_forward(model: Model, image: Tensor, tile: int, overlap: int,
                  margin: int | None = None, tiles_per_batch: int = 4) -> Tensor:
    """Apply ``model`` to ``image`` tile by tile and blend the tiles without seams.

    Peak memory is that of the model on ``tiles_per_batch`` tiles of ``tile × tile`` pixels
    plus two frame-sized float32 accumulators, whatever the frame size.

    Args:
        model: an image-to-image network (``[N, C, h, w] → [N, C', h, w]``), any dtype out.
        image: frames in [0, 1].
        tile: tile side in pixels; 0, or a frame that fits in one tile, runs the model on the
            whole frame.
        overlap: pixels by which neighbouring tiles overlap (``0 <= overlap < tile``).
        margin: pixels at each overlapping tile edge that get no weight (default
            ``overlap // 4``; at most ``overlap // 2``).
        tiles_per_batch: tiles per model call.

    Shape:
        ``[B, C, H, W]`` → ``[B, C', H, W]`` float32 in [0, 1].

    Raises:
        ValueError: ``overlap`` not within ``[0, tile)``.
    """
    _, _, h, w = image.shape
    if tile <= 0 or (h <= tile and w <= tile):
        return model(image).float().clamp_(0.0, 1.0)
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap {overlap} must be within [0, tile={tile})")
    margin = overlap // 4 if margin is None else max(0, min(margin, overlap // 2))
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    wy = axis_weights(ys, th, margin).to(image.device)
    wx = axis_weights(xs, tw, margin).to(image.device)
    boxes = [(iy, ix) for iy in range(len(ys)) for ix in range(len(xs))]
    out: Tensor | None = None
    norm = torch.zeros(1, 1, h, w, device=image.device)
    for k in range(0, len(boxes), max(1, tiles_per_batch)):
        chunk = boxes[k:k + tiles_per_batch]
        crops = torch.cat([image[..., ys[iy]:ys[iy] + th, xs[ix]:xs[ix] + tw]
                           for iy, ix in chunk])
        pred = model(crops).float()
        if out is None:
            out = torch.zeros(image.shape[0], pred.shape[1], h, w, device=image.device)
        pred = pred.reshape(len(chunk), image.shape[0], *pred.shape[1:])
        for j, (iy, ix) in enumerate(chunk):
            weight = wy[iy, :, None] * wx[ix, None, :]  # [th, tw]
            y0, x0 = ys[iy], xs[ix]
            out[..., y0:y0 + th, x0:x0 + tw] += pred[j] * weight
            norm[..., y0:y0 + th, x0:x0 + tw] += weight
    assert out is not None
    return out.div_(norm.clamp_(min=1e-8)).clamp_(0.0, 1.0)
