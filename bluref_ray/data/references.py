"""Reference selection: for each blurry frame, the nearest sharp frames within ±Δ."""

from __future__ import annotations

import numpy as np


def pick_references(blurry: np.ndarray, sharp: np.ndarray, max_refs: int,
                    delta: int) -> list[list[int]]:
    """Up to ``max_refs`` sharp frame indices within ``±delta`` of each blurry frame, nearest first.

    A blurry frame never gets its own index as a reference (the unpaired protocol for frame
    trees, where index t exists as both a blurry and a sharp frame). Ties in distance go to the
    earlier frame.

    Args:
        blurry: frame indices of the blurry frames.
        sharp: frame indices of the sharp frames (candidates).
        max_refs: N, the most references per blurry frame.
        delta: Δ, the largest index distance.

    Returns:
        One list of sharp frame indices per blurry frame, in the order of ``blurry``.
    """
    cand = np.unique(np.asarray(sharp, np.int64))
    out: list[list[int]] = []
    for t in np.asarray(blurry, np.int64):
        lo, hi = np.searchsorted(cand, t - delta), np.searchsorted(cand, t + delta, side="right")
        window = cand[lo:hi]
        window = window[window != t]
        order = np.lexsort((window, np.abs(window - t)))
        out.append([int(i) for i in window[order[:max_refs]]])
    return out
