"""Sharpness scores, the blurry/sharp split and reference selection."""

from __future__ import annotations

import cv2
import numpy as np
import skimage.data

from bluref_ray.data.references import pick_references
from bluref_ray.data.sharpness import (
    fft_score,
    laplacian_variance,
    otsu_threshold,
    split_blurry,
    to_gray,
)


def test_scores_fall_with_blur():
    gray = to_gray(skimage.data.astronaut())
    lap, fft = [], []
    for sigma in (0, 1, 2, 4):
        g = cv2.GaussianBlur(gray, (0, 0), sigma) if sigma else gray
        lap.append(laplacian_variance(g))
        fft.append(fft_score(g))
    assert lap == sorted(lap, reverse=True) and lap[0] > 5 * lap[-1]
    assert fft == sorted(fft, reverse=True) and fft[0] > 2 * fft[-1]


def test_fft_score_matches_the_full_spectrum_definition():
    rng = np.random.default_rng(0)
    for shape in [(31, 47), (64, 64), (50, 33)]:
        g = cv2.GaussianBlur(rng.random(shape).astype(np.float32) * 255, (0, 0), 1.5)
        mag = np.abs(np.fft.fft2(g.astype(np.float64)))
        expected = np.count_nonzero(mag > mag.max() / 1000) / g.size
        # float32 may flip a coefficient that sits on the threshold, nothing more
        assert abs(fft_score(g) - expected) <= 2 / g.size


def test_otsu_splits_two_populations():
    rng = np.random.default_rng(1)
    sharp, blurry = rng.normal(300, 30, 40), rng.normal(30, 5, 25)
    scores = np.concatenate([sharp, blurry])
    labels, t = split_blurry(scores)
    assert 40 < t < 250
    assert labels[40:].all() and not labels[:40].any()
    assert 0 < otsu_threshold(np.r_[np.zeros(5), np.ones(5)]) <= 1
    # one population: no automatic split
    labels, t = split_blurry(rng.normal(300, 3, 50))
    assert not labels.any() and np.isnan(t)
    # a fixed threshold wins
    labels, t = split_blurry(scores, threshold=100.0)
    assert t == 100.0 and labels.sum() == 25


def test_references_never_self_within_delta_at_most_n_nearest_first():
    rng = np.random.default_rng(2)
    for _ in range(300):
        n_frames = int(rng.integers(1, 60))
        sharp = np.flatnonzero(rng.random(n_frames) < rng.random())
        # frame-tree protocol: every index may be blurry, sharp frames exist at the same indices
        blurry = np.flatnonzero(rng.random(n_frames) < 0.5)
        n, delta = int(rng.integers(0, 9)), int(rng.integers(1, 21))
        refs = pick_references(blurry, sharp, n, delta)
        assert len(refs) == len(blurry)
        for t, r in zip(blurry, refs):
            assert t not in r
            assert len(r) <= n and len(set(r)) == len(r)
            assert all(abs(i - t) <= delta for i in r)
            assert set(r) <= set(sharp.tolist())
            d = [abs(i - t) for i in r]
            assert d == sorted(d)
            # nothing nearer was skipped
            pool = [i for i in sharp if i != t and abs(i - t) <= delta]
            assert len(r) == min(n, len(pool))
            if r and len(r) < len(pool):
                assert max(d) <= min(abs(i - t) for i in pool if i not in r)


def test_reference_ties_go_to_the_earlier_frame():
    assert pick_references(np.array([5]), np.array([3, 4, 6, 7]), 3, 2) == [[4, 6, 3]]
    assert pick_references(np.array([5]), np.array([5]), 3, 2) == [[]]
