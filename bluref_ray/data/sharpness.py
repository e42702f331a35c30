"""Sharpness scores and the blurry/sharp split.

Two scores, both higher for sharper frames:

* :func:`laplacian_variance`: variance of the Laplacian of the gray frame (Pech-Pacheco et al.).
* :func:`fft_score`: the frequency-domain measure used by Zou et al. (Ref-NAFNet, after De and
  Masilamani): the number of |FFT| coefficients above ``max|FFT| / 1000``, divided by ``M·N``.

  The design notes write the threshold as ``max|FFT| / (1000·M·N)``. Read that way the threshold
  sits below the quantisation noise of any 8-bit frame, and every frame scores 1.0 (measured on
  synthesized clips: 1.0000 for sharp and blurry frames alike). ``M·N`` belongs to the fraction,
  as in De and Masilamani's paper, which separates blurry from sharp frames by about 2×.

Two rules label the frames of a clip:

* :func:`split_blurry_local` (the default): a frame is blurry *with respect to the frames around
  it*. Its score is divided by the sharp level of its neighbourhood (a high quantile of the scores
  within ±w frames of the same shot; :func:`shot_ids` cuts the clip where the colour histogram
  jumps), so the content of a scene, which changes along a drive, cancels out; Otsu's threshold
  on these relative log scores splits the clip, and again each shot of its own
  (:func:`split_blurry_shots`). A second pass (:func:`widen_blurry`) adds the
  mildly blurred frames that this cut leaves sharp: those clearly below the *sharp* frames
  around them, "clearly" measured by how much the sharp frames vary among themselves.
* :func:`split_blurry` (``ingest.label_rule=clip``): Otsu's threshold on the log scores of the
  whole clip, or a fixed threshold when one is given. Scene content moves it: a clip whose first
  half shows less texture is split in halves, not by blur.
"""

from __future__ import annotations

import cv2
import numpy as np
import scipy.fft


def to_gray(rgb: np.ndarray, max_side: int = 0) -> np.ndarray:
    """Luma of an RGB uint8 frame as float32 in [0, 255], optionally shrunk.

    Shape:
        ``[H, W, 3]`` → ``[H', W']``.
    """
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if max_side and max(gray.shape) > max_side:
        s = max_side / max(gray.shape)
        size = (max(1, round(gray.shape[1] * s)), max(1, round(gray.shape[0] * s)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return gray.astype(np.float32)


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 3×3 Laplacian of a gray frame.

    Shape:
        ``[H, W]`` float → scalar.
    """
    lap = cv2.Laplacian(gray.astype(np.float32, copy=False), cv2.CV_32F, ksize=1)
    _, std = cv2.meanStdDev(lap)  # accumulates in float64
    return float(std[0, 0] ** 2)


def fft_score(gray: np.ndarray, divisor: float = 1000.0) -> float:
    """Share of |FFT| coefficients above ``max|FFT| / divisor`` (Zou et al.; De and Masilamani).

    Shape:
        ``[M, N]`` float → scalar in [0, 1].
    """
    m, n = gray.shape
    spec = scipy.fft.rfft2(gray.astype(np.float32, copy=False), workers=1)
    power = spec.real ** 2 + spec.imag ** 2  # compare |F|² with (max|F| / divisor)²: no sqrt
    above = power > power.max() / divisor ** 2
    # rfft2 keeps columns 0..n//2; the others mirror columns 1..(n-1)//2, so count those twice.
    count = np.count_nonzero(above) + np.count_nonzero(above[:, 1:(n - 1) // 2 + 1])
    return float(count / (m * n))


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample: the cut that maximises between-class variance."""
    v = np.asarray(values, np.float64)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centers)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = (w0 * w1 * (m0 - m1) ** 2)[:-1]
    # Every cut inside an empty gap splits the sample the same way: take the middle of the gap.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float((edges[best[0] + 1] + edges[best[-1] + 1]) / 2)


def split_blurry(scores: np.ndarray, threshold: float | None = None,
                 min_spread: float = 0.15) -> tuple[np.ndarray, float]:
    """Label frames of one clip blurry (score below the threshold) or sharp.

    Args:
        scores: sharpness scores of the clip's frames (higher is sharper).
        threshold: a fixed threshold; None for Otsu's threshold on the log scores.
        min_spread: if the log scores' standard deviation is below this, the clip is taken as one
            population and every frame is sharp (Otsu would otherwise split noise).

    Returns:
        ``(blurry, threshold)``: a bool array and the threshold used (NaN if none applied).
    """
    s = np.asarray(scores, np.float64)
    if threshold is not None:
        return s < threshold, float(threshold)
    if len(s) < 2:
        return np.zeros(len(s), bool), float("nan")
    logs = np.log(np.maximum(s, 1e-12))
    if logs.std() < min_spread:
        return np.zeros(len(s), bool), float("nan")
    t = float(np.exp(otsu_threshold(logs)))
    return s < t, t


def colour_histogram(rgb: np.ndarray, max_side: int = 160) -> np.ndarray:
    """A 16×8 hue-saturation histogram (L2-normalised) for telling shots apart; blur barely
    changes it, a cut does.

    Shape:
        ``[H, W, 3]`` uint8 → ``[128]`` float32.
    """
    if max(rgb.shape[:2]) > max_side:
        s = max_side / max(rgb.shape[:2])
        rgb = cv2.resize(rgb, (max(1, round(rgb.shape[1] * s)), max(1, round(rgb.shape[0] * s))),
                         interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    h = cv2.calcHist([hsv], [0, 1], None, [16, 8], [0, 180, 0, 256])
    return cv2.normalize(h, None).flatten().astype(np.float32)


def shot_ids(histograms: list[np.ndarray], min_jump: float = 0.3,
             jump_ratio: float = 6.0) -> np.ndarray:
    """Number the shots of a clip: a new shot starts where the colour histogram of a frame jumps
    from the frame before (Bhattacharyya distance over ``min_jump`` and over ``jump_ratio`` times
    the clip's median step).

    Shape:
        F histograms → ``[F]`` int, 0 for the first shot.
    """
    if len(histograms) < 2:
        return np.zeros(len(histograms), np.int64)
    d = np.array([cv2.compareHist(a, b, cv2.HISTCMP_BHATTACHARYYA)
                  for a, b in zip(histograms[:-1], histograms[1:])])
    cut = d > max(min_jump, jump_ratio * float(np.median(d)))
    return np.concatenate([[0], np.cumsum(cut)]).astype(np.int64)


def relative_scores(scores: np.ndarray, shots: np.ndarray | None = None, window: int = 10,
                    quantile: float = 0.9, min_frames: int = 3,
                    among: np.ndarray | None = None) -> np.ndarray:
    """Each frame's score divided by the sharp level around it, as a log ratio (0: as sharp).

    The sharp level is the ``quantile`` of the log scores of the frames before it (up to
    ``window``, same shot) and, separately, of those after it; the lower of the two counts, so
    that a scene whose texture grows or shrinks along the clip, or a cut, does not make a frame
    look blurry against content it does not show. A side with fewer than ``min_frames`` frames
    is left out (at the ends of a shot); a frame with neither side uses both sides' frames
    regardless of shots. ``among`` (a mask) takes the levels from those frames only.

    Shape:
        ``[F]`` scores (higher is sharper), ``[F]`` shot ids → ``[F]`` log ratios.
    """
    logs = np.log(np.maximum(np.asarray(scores, np.float64), 1e-12))
    n = len(logs)
    shots = np.zeros(n, np.int64) if shots is None else np.asarray(shots)
    among = np.ones(n, bool) if among is None else np.asarray(among, bool)
    levels = []
    for side in _sides(logs, among, shots, window):
        level, count = _row_quantile(side, quantile)
        levels.append(np.where(count >= min_frames, level, np.nan))
    level = np.fmin(*levels)  # the lower side; NaN only where neither side counts
    alone = np.isnan(level)
    if alone.any():  # both sides' frames, regardless of shots
        near = np.concatenate(_sides(logs, among, np.zeros(n, np.int64), window), 1)[alone]
        fallback, count = _row_quantile(near, quantile)
        level[alone] = np.where(count > 0, fallback, logs[alone])
    return logs - level


def _sides(values: np.ndarray, keep: np.ndarray, shots: np.ndarray, window: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """The ``window`` values before and after each frame: those of kept frames of its shot, NaN
    for the others and beyond the clip.

    Shape:
        ``[F]`` values, ``[F]`` bool, ``[F]`` shot ids → ``([F, window]``, ``[F, window])``.
    """
    n = len(values)
    other = (shots.min() - 1) if n else -1  # a shot id no frame has

    def windows(a: np.ndarray, fill) -> np.ndarray:
        edge = np.full(window, fill, a.dtype)
        return np.lib.stride_tricks.sliding_window_view(np.concatenate([edge, a, edge]), window)

    v = windows(np.asarray(values, np.float64), np.nan)
    k, s = windows(keep, False), windows(shots, other)
    out = []
    for start in (0, window + 1):  # frames t−window … t−1, then t+1 … t+window
        rows = slice(start, start + n)
        out.append(np.where(k[rows] & (s[rows] == shots[:, None]), v[rows], np.nan))
    return out[0], out[1]


def _row_quantile(x: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``q`` quantile of each row's values other than NaN, interpolated linearly as
    ``np.quantile`` does, and how many there are (NaN quantile for none).

    Shape:
        ``[F, W]`` → ``([F]``, ``[F])``.
    """
    count = np.isfinite(x).sum(1)
    ordered = np.sort(x, axis=1)  # NaN last
    pos = q * np.maximum(count - 1, 0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(count - 1, 0))
    t = pos - lo
    a = np.take_along_axis(ordered, lo[:, None], 1)[:, 0]
    b = np.take_along_axis(ordered, hi[:, None], 1)[:, 0]
    d = b - a
    value = np.where(t >= 0.5, b - d * (1 - t), a + d * t)
    return np.where(count > 0, value, np.nan), count


def split_blurry_local(relative: np.ndarray, max_ratio: float = 0.9,
                       max_blurry_mean: float = 0.8) -> tuple[np.ndarray, float]:
    """Label frames blurry by their relative scores (:func:`relative_scores`).

    Otsu's threshold on the log ratios splits the clip, capped at ``max_ratio`` (a frame with
    90% of its neighbours' detail is not called blurry). The split is kept only if the frames
    below it hold on average at most ``max_blurry_mean`` of their neighbours' detail; otherwise
    the clip has no blurry population and every frame is sharp.

    Returns:
        ``(blurry, threshold)``: a bool array and the threshold as a ratio (NaN if no split).
    """
    rel = np.asarray(relative, np.float64)
    if len(rel) < 2 or rel.max() - rel.min() < 1e-9:
        return np.zeros(len(rel), bool), float("nan")
    t = min(otsu_threshold(rel), float(np.log(max_ratio)))
    below = rel < t
    if not below.any() or rel[below].mean() > np.log(max_blurry_mean):
        return np.zeros(len(rel), bool), float("nan")
    return below, float(np.exp(t))


def split_blurry_shots(relative: np.ndarray, shots: np.ndarray | None = None,
                       min_frames: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`split_blurry_local` over the clip, then again within each shot of at least
    ``min_frames`` frames.

    Otsu's cut over the whole clip is set by its most blurred scenes: a fast pan in one shot
    blurs far more than a slow one in the next, whose mild blur then stays above the cut. A shot
    whose own split finds a blurry population takes its labels (a frame the clip's cut called
    blurry may so become sharp); the others keep the clip's.

    Shape:
        ``[F]`` log ratios, ``[F]`` shot ids → ``([F]`` bool, ``[F]`` each frame's threshold as a
        ratio (NaN: no split), ``[F]`` bool: the threshold is the shot's own``)``.
    """
    rel = np.asarray(relative, np.float64)
    blurry, ratio = split_blurry_local(rel)
    thresholds = np.full(len(rel), ratio)
    by_shot = np.zeros(len(rel), bool)
    if shots is None:
        return blurry, thresholds, by_shot
    shots = np.asarray(shots)
    for shot in np.unique(shots):
        m = shots == shot
        if m.sum() >= min_frames and m.sum() < len(rel):
            own, t = split_blurry_local(rel[m])
            if own.any():
                blurry[m], thresholds[m], by_shot[m] = own, t, True
    return blurry, thresholds, by_shot


def widen_blurry(scores: np.ndarray, blurry: np.ndarray, shots: np.ndarray | None = None,
                 window: int = 5, z: float = 3.0, quantile: float = 0.9, rounds: int = 5,
                 min_sd: float = 0.005) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The local rule's second pass: also blurry, a frame clearly less sharp than the *sharp*
    frames around it.

    Otsu's threshold (:func:`split_blurry_local`) is set by the strongly blurred frames: on real
    video a mildly blurred frame keeps 90–97% of its neighbours' detail and stays above it. Here
    each frame's score is divided by the sharp level (``quantile``) of the frames labelled sharp
    within ±``window`` (each side, same shot, the lower side counts, as in
    :func:`relative_scores`). How far sharp frames fall below that level by themselves comes
    from the sharp frames' own ratios in the same shot (median, and the MAD as a robust
    standard deviation, at least ``min_sd``): a frame more than ``z`` of those below the median
    is blurry. Repeated (the sharp levels change as frames leave) until nothing changes, at most
    ``rounds`` times. Frames are only added, and only those with sharp frames of their shot on
    both sides; a clip without blurry frames is left alone.

    Shape:
        ``[F]`` scores, ``[F]`` bool, ``[F]`` shot ids → ``([F]`` bool, ``[F]`` log ratios to the
        sharp frames, ``[F]`` cuts as log ratios``)``: for a frame this pass added, the ratio and
        cut of the round that added it; for the others, those of the last round (ratio NaN: no
        sharp frame on one side; cut NaN: no cut for the shot, or no pass).
    """
    blurry = np.asarray(blurry, bool).copy()
    n = len(blurry)
    shots = np.zeros(n, np.int64) if shots is None else np.asarray(shots)
    rel, cut = np.full(n, np.nan), np.full(n, np.nan)
    if not blurry.any():
        return blurry, rel, cut
    added = np.zeros(n, bool)
    rel_at, cut_at = rel.copy(), cut.copy()
    for _ in range(rounds):
        sharp = ~blurry
        rel = relative_scores(scores, shots, window, quantile, min_frames=1, among=sharp)
        # A frame needs sharp frames on both sides: at a shot's ends a scene whose detail grows
        # would otherwise make its first frame look blurry, then the next, and so on.
        rel[~_sharp_on_both_sides(sharp, shots, window)] = np.nan
        cut = np.full(n, np.nan)
        for shot in np.unique(shots):
            ref = rel[sharp & (shots == shot)]
            ref = ref[np.isfinite(ref)]
            if len(ref) >= 3:
                med = float(np.median(ref))
                cut[shots == shot] = med - z * max(1.4826 * float(np.median(np.abs(ref - med))),
                                                   min_sd)
        more = sharp & (rel < cut)  # NaN (no cut for the shot, or a side alone): no change
        rel_at[more], cut_at[more] = rel[more], cut[more]
        added |= more
        blurry |= more
        if not more.any():
            break
    rel = np.where(added, rel_at, rel)
    cut = np.where(added, cut_at, cut)
    return blurry, rel, cut


def _sharp_on_both_sides(sharp: np.ndarray, shots: np.ndarray, window: int) -> np.ndarray:
    """Whether each frame has a ``sharp`` frame of its shot within ``window`` before and after."""
    before, after = _sides(np.ones(len(sharp)), sharp, shots, window)
    return np.isfinite(before).any(1) & np.isfinite(after).any(1)
