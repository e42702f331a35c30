"""Sharpness scores and the blurry/sharp split.

Two scores, both higher for sharper frames:

* :func:`laplacian_variance`: variance of the Laplacian of the gray frame (Pech-Pacheco et al.).
* :func:`fft_score`: the frequency-domain measure used by Zou et al. (Ref-NAFNet, after De and
  Masilamani): the number of |FFT| coefficients above ``max|FFT| / 1000``, divided by ``M·N``.

  The design notes write the threshold as ``max|FFT| / (1000·M·N)``. Read that way the threshold
  sits below the quantisation noise of any 8-bit frame, and every frame scores 1.0 (measured on
  synthesized clips: 1.0000 for sharp and blurry frames alike). ``M·N`` belongs to the fraction,
  as in De and Masilamani's paper, which separates blurry from sharp frames by about 2×.

:func:`split_blurry` labels the frames of one clip with Otsu's threshold on the log score, or a
fixed threshold when one is given.
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
