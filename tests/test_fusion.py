"""Warping, the DIS baseline matcher, and the three fusion strategies."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from bluref_ray.fusion import STRATEGIES, aligner, fuse, progressive_average, weighted_average
from bluref_ray.matching import build_matcher, warp


def _photo(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 1.2)
    return torch.from_numpy(img).permute(2, 0, 1).clamp(0, 1)


def _zero_flow_full_confidence(target, reference):
    aligned, valid = warp(reference, torch.zeros_like(reference[:, :2]))
    return aligned, valid


def test_zero_flow_warp_and_fusion_reproduce_the_reference_exactly():
    ref = _photo()[None]
    aligned, valid = warp(ref, torch.zeros(1, 2, 48, 64))
    assert torch.equal(aligned, ref) and bool(valid.all())
    target = _photo(seed=1)[None]
    for strategy in STRATEGIES:
        f = fuse(strategy, target, ref[:, None], _zero_flow_full_confidence)
        assert torch.equal(f.image, ref), strategy
        assert f.coverage.item() == 1.0 and f.confidence.min().item() == 1.0


def test_integer_flow_shifts_and_out_of_frame_is_invalid():
    ref = _photo()[None]
    flow = torch.zeros(1, 2, 48, 64)
    flow[:, 0] = 3.0  # every target pixel looks 3 px to the right in the reference
    aligned, valid = warp(ref, flow)
    assert torch.allclose(aligned[..., :, :61], ref[..., :, 3:], atol=1e-6)
    assert valid[..., :61].all() and not valid[..., 61:].any()


def test_progressive_matches_no_new_reference_where_pixels_are_covered():
    target, r0, r1 = _photo(seed=1)[None], _photo(seed=2)[None], _photo(seed=3)[None]
    calls = []

    def counting(t, r):
        calls.append(len(t))
        return _zero_flow_full_confidence(t, r)

    f = progressive_average(target, torch.stack([r0, r1], 1), counting)
    assert calls == [1] and f.refs_used.tolist() == [1]  # all covered by r0: r1 never matched
    assert torch.equal(f.image, r0)


def test_progressive_keeps_covered_pixels_with_a_real_matcher(tiny_data):
    """With DIS, pixels covered by earlier references are never changed by later ones."""
    seq = f"{tiny_data}/train/clip_0000"
    blur = sorted(__import__("os").listdir(f"{seq}/blur"))[1]
    t = int(blur[:6])

    def load(path):
        return torch.from_numpy(cv2.imread(path)[..., ::-1].copy()).permute(2, 0, 1) / 255.0

    target = load(f"{seq}/blur/{blur}")[None]
    refs = torch.stack([load(f"{seq}/sharp/{i:06d}.png") for i in (t - 1, t + 1, t + 2)])[None]
    calls = []
    real = aligner(build_matcher("dis"))

    def recording(tt, rr):
        calls.append(tt)
        return real(tt, rr)

    one = progressive_average(target, refs[:, :1], real)
    three = progressive_average(target, refs, recording)
    covered = (one.confidence >= 0.7).expand_as(one.image)
    assert 0 < covered.float().mean() < 1
    assert torch.equal(three.image[covered], one.image[covered])
    assert three.coverage.item() >= one.coverage.item()
    assert len(calls) == three.refs_used.item() >= 2


def test_coverage_rises_with_n(tiny_data):
    import json

    manifest = json.load(open(f"{tiny_data}/manifest.json"))
    clip = manifest["clips"][0]
    seq = f"{tiny_data}/{clip['frames_dir']}"

    def load(path):
        return torch.from_numpy(cv2.imread(path)[..., ::-1].copy()).permute(2, 0, 1) / 255.0

    blurry = [f["index"] for f in clip["frames"] if f["blurry"] and 3 <= f["index"] <= 20][:3]
    target = torch.stack([load(f"{seq}/blur/{t:06d}.png") for t in blurry])
    refs = torch.stack([torch.stack([load(f"{seq}/sharp/{t + d:06d}.png") for d in
                                     (-1, 1, -2, 2, -3, 3)]) for t in blurry])
    align = aligner(build_matcher("dis"))
    for strategy in STRATEGIES:
        cov = [fuse(strategy, target, refs[:, :n], align).coverage.mean().item()
               for n in (1, 2, 4, 6)]
        assert cov == sorted(cov), (strategy, cov)
        assert cov[-1] > cov[0] + 0.05, (strategy, cov)


def test_missing_references_are_skipped_and_shapes_checked():
    target = _photo(seed=1)[None].repeat(2, 1, 1, 1)
    refs = torch.stack([_photo(seed=2), _photo(seed=3)])[None].repeat(2, 1, 1, 1, 1)
    available = torch.tensor([[True, False], [False, False]])
    f = weighted_average(target, refs, _zero_flow_full_confidence, available=available)
    assert torch.equal(f.image[0], refs[0, 0]) and torch.equal(f.image[1], target[1])
    assert f.coverage.tolist() == [1.0, 0.0] and f.refs_used.tolist() == [1, 0]
    with pytest.raises(ValueError, match="do not fit"):
        weighted_average(target, refs[:, :, :, :10], _zero_flow_full_confidence)
    with pytest.raises(ValueError, match="unknown fusion strategy"):
        fuse("median", target, refs, _zero_flow_full_confidence)


def test_dis_confidence_is_high_on_an_identity_pair_and_low_on_unrelated_images():
    m = build_matcher("dis", ref_blur=0)
    img = _photo(96, 128, seed=4)[None]
    same = m(img, img)
    assert same.flow.abs().max() < 0.5 and same.confidence.mean() > 0.95
    other = m(img, _photo(96, 128, seed=5)[None])
    assert other.confidence.mean() < same.confidence.mean() - 0.3


def test_warp_matches_grid_sample_and_has_gradients():
    import torch.nn.functional as F

    img = _photo(17, 23, seed=6)[None].requires_grad_(True)
    flow = (torch.randn(1, 2, 17, 23) * 2).requires_grad_(True)
    out, _ = warp(img, flow)
    ys, xs = torch.meshgrid(torch.arange(17.0), torch.arange(23.0), indexing="ij")
    gx = 2 * (xs + flow[0, 0]) / 22 - 1
    gy = 2 * (ys + flow[0, 1]) / 16 - 1
    ref = F.grid_sample(img, torch.stack([gx, gy], -1)[None], align_corners=True,
                        padding_mode="border")
    assert torch.allclose(out, ref, atol=1e-5)
    out.sum().backward()
    assert flow.grad.abs().sum() > 0 and img.grad.abs().sum() > 0
