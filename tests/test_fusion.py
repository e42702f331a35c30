"""Warping, the DIS baseline matcher, the fusion strategies and blur kernels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from bluref_ray.fusion import (
    SELECTOR_FEATURES,
    SHIPPED_SELECTOR,
    STRATEGIES,
    Check,
    Selector,
    aligner,
    check_terms,
    fuse,
    load_selector,
    match_light,
    progressive_average,
    reblur_check,
    selector_features,
    weighted_average,
)
from bluref_ray.matching import build_matcher, warp
from bluref_ray.matching.kernel import (
    LocalKernels,
    centre_on,
    estimate_kernel,
    estimate_local_kernels,
    linear_luma,
    midpoint,
    reblur,
    reblur_local,
)


def _photo(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 1.2)
    return torch.from_numpy(img).permute(2, 0, 1).clamp(0, 1)


def _zero_rematch(query, blurred, sharp):
    return _zero_flow_full_confidence(query, sharp)


def _zero_flow_full_confidence(query, reference):
    return warp(reference, torch.zeros_like(reference[:, :2]))


def test_zero_flow_warp_and_fusion_reproduce_the_reference_exactly():
    ref = _photo()[None]
    aligned, valid = warp(ref, torch.zeros(1, 2, 48, 64))
    assert torch.equal(aligned, ref) and bool(valid.all())
    # an unrelated query in the same light (reblur gives references the query's light)
    query = torch.roll(ref, shifts=(17, 23), dims=(-2, -1))
    for strategy in STRATEGIES:  # reblur without its physical check: query is unrelated
        f = fuse(strategy, query, ref[:, None], _zero_flow_full_confidence,
                 rematch=_zero_rematch,
                 check=None)
        if strategy == "reblur":
            torch.testing.assert_close(f.image, ref, atol=1e-5, rtol=0)
        else:
            assert torch.equal(f.image, ref), strategy
        assert f.coverage.item() == 1.0 and f.confidence.min().item() == 1.0


def test_integer_flow_shifts_and_out_of_frame_is_invalid():
    ref = _photo()[None]
    flow = torch.zeros(1, 2, 48, 64)
    flow[:, 0] = 3.0  # every query pixel looks 3 px to the right in the reference
    aligned, valid = warp(ref, flow)
    assert torch.allclose(aligned[..., :, :61], ref[..., :, 3:], atol=1e-6)
    assert valid[..., :61].all() and not valid[..., 61:].any()


def test_progressive_matches_no_new_reference_where_pixels_are_covered():
    query, r0, r1 = _photo(seed=1)[None], _photo(seed=2)[None], _photo(seed=3)[None]
    calls = []

    def counting(t, r):
        calls.append(len(t))
        return _zero_flow_full_confidence(t, r)

    f = progressive_average(query, torch.stack([r0, r1], 1), counting)
    assert calls == [1] and f.refs_used.tolist() == [1]  # all covered by r0: r1 never matched
    assert torch.equal(f.image, r0)


def test_progressive_keeps_covered_pixels_with_a_real_matcher(tiny_data):
    """With DIS, pixels covered by earlier references are never changed by later ones."""
    seq = f"{tiny_data}/train/clip_0000"
    blur = sorted(__import__("os").listdir(f"{seq}/blur"))[1]
    t = int(blur[:6])

    def load(path):
        return torch.from_numpy(cv2.imread(path)[..., ::-1].copy()).permute(2, 0, 1) / 255.0

    query = load(f"{seq}/blur/{blur}")[None]
    refs = torch.stack([load(f"{seq}/sharp/{i:06d}.png") for i in (t - 1, t + 1, t + 2)])[None]
    calls = []
    real = aligner(build_matcher("dis"))

    def recording(tt, rr):
        calls.append(tt)
        return real(tt, rr)

    one = progressive_average(query, refs[:, :1], real)
    three = progressive_average(query, refs, recording)
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
    query = torch.stack([load(f"{seq}/blur/{t:06d}.png") for t in blurry])
    refs = torch.stack([torch.stack([load(f"{seq}/sharp/{t + d:06d}.png") for d in
                                     (-1, 1, -2, 2, -3, 3)]) for t in blurry])
    align = aligner(build_matcher("dis"))
    for strategy in STRATEGIES:
        cov = [fuse(strategy, query, refs[:, :n], align).coverage.mean().item()
               for n in (1, 2, 4, 6)]
        # reblur's check re-estimates its kernels per tile from all references, so one more
        # reference may move a few pixels below τ
        slack = 0.01 if strategy == "reblur" else 0.0
        assert all(b >= a - slack for a, b in zip(cov, cov[1:])), (strategy, cov)
        assert cov[-1] > cov[0] + 0.05, (strategy, cov)


def test_missing_references_are_skipped_and_shapes_checked():
    query = _photo(seed=1)[None].repeat(2, 1, 1, 1)
    refs = torch.stack([_photo(seed=2), _photo(seed=3)])[None].repeat(2, 1, 1, 1, 1)
    available = torch.tensor([[True, False], [False, False]])
    f = weighted_average(query, refs, _zero_flow_full_confidence, available=available)
    assert torch.equal(f.image[0], refs[0, 0]) and torch.equal(f.image[1], query[1])
    assert f.coverage.tolist() == [1.0, 0.0] and f.refs_used.tolist() == [1, 0]
    # a later round matches a deblurrer's output; where nothing matched, the pseudo-sharp
    # image is still the blurry frame, never the deblurrer's guess
    deblurred = (query + 0.1).clamp(0, 1)
    for strategy in ("weighted", "sequential", "progressive"):
        f = fuse(strategy, deblurred, refs, _zero_flow_full_confidence, available=available,
                 blurry=query)
        assert torch.equal(f.image[1], query[1]) and torch.equal(f.image[0], refs[0, 0])
    with pytest.raises(ValueError, match="do not fit"):
        weighted_average(query, refs[:, :, :, :10], _zero_flow_full_confidence)
    with pytest.raises(ValueError, match="unknown fusion strategy"):
        fuse("median", query, refs, _zero_flow_full_confidence)


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


def _scene(h=96, w=128):
    """A real photo (scikit-image's astronaut), downscaled: [1, 3, h, w] in [0, 1]."""
    from skimage import data

    img = cv2.resize(data.astronaut(), (2 * w, 2 * h), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(img[h // 2:h // 2 + h, w // 2:w // 2 + w] / 255.0).float() \
        .permute(2, 0, 1)[None]


def _path_kernel(points: np.ndarray, size: int = 21) -> torch.Tensor:
    """A kernel with equal mass at each (x, y) point (offsets from the centre), bilinear."""
    k = torch.zeros(1, size, size)
    r = size // 2
    for x, y in points:
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                k[0, r + yy, r + xx] += wx * wy
    return k / k.sum()


def test_blur_kernel_is_recovered_and_its_midpoint_is_the_middle_of_the_exposure():
    # a curved shake: 9 px down while bulging 3 px sideways, centred on the middle instant
    u = np.linspace(0, 1, 41)
    path = np.stack([3.0 * 4 * u * (1 - u) - 3.0, 9.0 * (u - 0.5)], 1)
    true = _path_kernel(path)
    sharp = _scene()
    blurry = reblur(sharp, true)
    assert torch.allclose(reblur(sharp, _path_kernel(np.zeros((1, 2)))), sharp, atol=1e-5)
    est = estimate_kernel(linear_luma(sharp)[:, None], linear_luma(blurry), size=21)
    again = reblur(sharp, est)
    psnr = -10 * torch.log10((again - blurry).square().mean())
    assert psnr > 38, psnr  # the estimate blurs like the true kernel
    mid = midpoint(est)[0]
    centroid = torch.tensor([float(path[:, 0].mean()), float(path[:, 1].mean())])
    assert mid.abs().max() < 0.4, mid  # the middle instant is the kernel's origin ...
    assert (centroid - mid).norm() > 0.8  # ... which is not its centroid (1 px apart)
    moved = centre_on(_path_kernel(np.array([[2.0, -1.0]])), torch.tensor([[2.0, -1.0]]))
    assert moved[0, 10, 10] > 0.99


def test_reblur_fusion_is_sharper_than_matching_the_blurry_frame():
    """Blurry frame = shake blur of the truth; references = shifted sharp views of the scene.
    Matching the blurry frame to references blurred by the estimated kernel aligns them
    closer to the truth than matching it to the sharp references (compared without the
    check, which leaves the blurry frame where it is unsure); with the check, the confident
    pixels beat the blurry frame."""
    big = _scene(160, 200)
    truth = big[..., 30:126, 36:164]
    u = np.linspace(0, 1, 31)
    kernel = _path_kernel(np.stack([2.0 * 4 * u * (1 - u) - 2.0, 10.0 * (u - 0.5)], 1))
    blurry = reblur(truth, kernel)
    refs = torch.stack([big[..., 30 + dy:126 + dy, 36 + dx:164 + dx]
                        for dy, dx in ((3, -2), (-4, 1), (2, 5))], 1)
    align = aligner(build_matcher("dis"))
    inner = (..., slice(12, -12), slice(12, -12))

    def psnr(f):
        return float(-10 * torch.log10((f.image[inner] - truth[inner]).square().mean()))

    plain = psnr(fuse("weighted", blurry, refs, align))
    rb = psnr(fuse("reblur", blurry, refs, align, check=None))
    assert rb > plain + 2.0, (plain, rb)
    checked = fuse("reblur", blurry, refs, align)
    sure = checked.confidence >= 0.7
    assert checked.coverage.item() > 0.4
    assert _masked_psnr(checked.image, truth, sure) > _masked_psnr(blurry, truth, sure) + 3.0


def test_reblur_fits_its_kernel_to_small_frames_and_skips_missing_references():
    query = _photo(h=16, w=20, seed=1)[None].repeat(2, 1, 1, 1)
    other = torch.roll(query[0], shifts=(5, 7), dims=(-2, -1))  # another view, the same light
    refs = torch.stack([other] * 2)[None].repeat(2, 1, 1, 1, 1)
    available = torch.tensor([[True, False], [False, False]])
    f = fuse("reblur", query, refs, _zero_flow_full_confidence, available=available,
             rematch=_zero_rematch, check=None)
    torch.testing.assert_close(f.image[0], refs[0, 0], atol=1e-5, rtol=0)
    assert torch.equal(f.image[1], query[1])
    assert f.refs_used.tolist() == [1, 0]


def _masked_psnr(x, truth, mask):
    m = mask.expand_as(x)
    return float(-10 * torch.log10((x - truth)[m].square().mean()))


def test_the_check_keeps_a_misaligned_reference_out_and_the_blurry_frame_where_it_is_sharp():
    """A blurry frame (the truth blurred by a 9-px shake) and two references: the truth itself,
    aligned exactly, and the truth misaligned by 2 px on purpose. Both are confident to the
    matcher. The check keeps the aligned one where blur changed the frame, keeps the
    misaligned one out where it would be wrong, and the blurry frame where nothing changed."""
    truth = _scene()
    truth[..., :, :40] = truth[..., :, :40].mean((-1, -2), keepdim=True)  # a flat region
    kernel = _path_kernel(np.stack([np.linspace(-4.5, 4.5, 19), np.zeros(19)], 1))
    blurry = reblur(truth, kernel)
    good = truth
    bad = torch.roll(truth, shifts=2, dims=-1)
    conf = torch.ones(1, 1, 1, 96, 128)
    check = Check()
    _, c_bad = reblur_check(blurry, bad[:, None], conf, kernel, 0.7, check)
    img_good, c_good = reblur_check(blurry, good[:, None], conf, kernel, 0.7, check)
    textured = (blurry - truth).abs().amax(1, keepdim=True) > 8 / 255
    flat = torch.zeros_like(textured)
    flat[..., 5:-5, 16:26] = True  # away from the texture (and the rolled-in edge)
    # the misaligned reference is confident on few of the pixels the blur changed, the aligned
    # one on most of them
    assert (c_bad[textured] >= 0.7).float().mean() < 0.1
    assert (c_good[textured] >= 0.7).float().mean() > 0.8
    # where the blurry frame is already sharp (flat), the pseudo-sharp pixel is the blurry one
    assert (c_good[flat] >= 0.7).all() and (c_bad[flat] >= 0.7).all()
    assert torch.equal(img_good[flat.expand_as(img_good)], blurry[flat.expand_as(blurry)])
    # confident pixels beat the blurry frame; with both references, the check picks the right one
    both = torch.cat([good, bad])[None]
    img, c = reblur_check(blurry, both, torch.ones(1, 2, 1, 96, 128), kernel, 0.7, check)
    mask = c >= 0.7
    assert _masked_psnr(img, truth, mask) > _masked_psnr(blurry, truth, mask) + 3.0
    # trusted on its matcher confidence alone, the misaligned reference is worse than the
    # blurry frame where the blur changed it
    assert _masked_psnr(bad, truth, textured) < _masked_psnr(blurry, truth, textured)


def _constant_selector(logit: float) -> Selector:
    s = Selector()
    torch.nn.init.zeros_(s.net[2].weight)
    torch.nn.init.constant_(s.net[2].bias, logit)
    return s.eval()


def test_a_selector_decides_where_a_reference_corrects_and_the_shipped_one_loads(tmp_path):
    """The check's learned rule takes the place of check.gain: a selector that says yes
    everywhere corrects every pixel a confident reference changes by more than twice the noise,
    one that says no corrects none (already sharp pixels keep the blurry frame either way). The
    shipped selector loads; a missing or wrong checkpoint is named."""
    truth = _scene()
    kernel = _path_kernel(np.stack([np.linspace(-4.5, 4.5, 19), np.zeros(19)], 1))
    blurry = reblur(truth, kernel)
    conf = torch.ones(1, 1, 1, 96, 128)
    changed = ((truth - blurry).square().mean(1, keepdim=True) > 4 * (2 / 255) ** 2)
    yes, no = _constant_selector(10.0), _constant_selector(-10.0)
    img_yes, c_yes = reblur_check(blurry, truth[:, None], conf, kernel, 0.7, Check(selector=yes))
    img_no, c_no = reblur_check(blurry, truth[:, None], conf, kernel, 0.7, Check(selector=no))
    assert (c_yes[changed] == 1).float().mean() > 0.9
    assert torch.equal(img_no, blurry)  # nothing corrected
    assert (c_no[changed] == 0).float().mean() > 0.9
    feats = selector_features(blurry, truth[:, None].repeat(1, 2, 1, 1, 1),
                              conf.repeat(1, 2, 1, 1, 1), check_terms(
                                  blurry, truth[:, None].repeat(1, 2, 1, 1, 1), kernel, 3.0),
                              0.7, 3.0, 2.0)
    assert feats.shape == (1, 2, 1, 96, 128, len(SELECTOR_FEATURES))
    # two identical references: the nearest other one is 0 away (the noise floor's log)
    torch.testing.assert_close(feats[..., 3], torch.full_like(feats[..., 3],
                                                              float(np.log10((2 / 255) ** 2))))
    shipped = load_selector(SHIPPED_SELECTOR)
    assert isinstance(shipped, Selector) and not shipped.training
    assert ((shipped(feats) >= 0) & (shipped(feats) <= 1)).all()
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_selector(str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="not a check-selector checkpoint"):
        load_selector("package://bluref_ray/assets/matcher.pt")


def test_check_sharp_sets_how_close_an_already_sharp_pixel_must_come():
    """A flat frame and a reference 2.5 levels brighter (noise, a light change): not already
    sharp at the default 2 levels, already sharp (the blurry pixel kept) at 3."""
    blurry = torch.full((1, 3, 32, 32), 0.5)
    ref = (blurry + 2.5 / 255)[:, None]
    conf = torch.ones(1, 1, 1, 32, 32)
    delta = torch.zeros(1, 3, 3)
    delta[0, 1, 1] = 1.0
    _, strict = reblur_check(blurry, ref, conf, delta, 0.7, Check(tile=0))
    img, loose = reblur_check(blurry, ref, conf, delta, 0.7, Check(sharp=3.0, tile=0))
    assert (strict == 0).all()
    assert (loose == 1).all() and torch.equal(img, blurry)


def test_local_kernels_blend_to_one_blur_and_follow_a_blur_that_changes_across_the_frame():
    """Tiles that share one kernel blend back to that one blur, exactly; a frame blurred by a
    9-px shake on its left and kept sharp on its right (a person who moves before a still
    background) is reproduced by its kernels per tile, not by one kernel for the frame."""
    truth = _scene()
    shake = _path_kernel(np.stack([np.linspace(-4.5, 4.5, 19), np.zeros(19)], 1))
    same = LocalKernels(shake[:, None].expand(1, 6, 21, 21), 64, 96, 128)  # 2 × 3 tiles
    torch.testing.assert_close(reblur_local(truth, same), reblur(truth, shake), atol=1e-5,
                               rtol=0)
    blurry = truth.clone()
    blurry[..., :64] = reblur(truth, shake)[..., :64]
    lum = linear_luma(truth).float()[:, None]
    local = estimate_local_kernels(lum, linear_luma(blurry).float(), tile=32, size=41)
    assert local.kernels.shape == (1, 5 * 7, 9, 9)  # tiles of 32 at stride 16; sides ≤ 32 / 3
    one = estimate_kernel(lum, linear_luma(blurry).float(), 21)
    inner = (..., slice(12, -12), slice(12, -12))
    err_local = (reblur_local(truth, local) - blurry)[inner].square().mean()
    err_one = (reblur(truth, centre_on(one, midpoint(one))) - blurry)[inner].square().mean()
    assert err_local < 0.5 * err_one, (float(err_local), float(err_one))
    with pytest.raises(ValueError, match="kernels for 96x128 frames, image 48x64"):
        reblur_local(truth[..., :48, :64], local)
    # a reference that matched nowhere (another scene) does not bend the kernels
    other = linear_luma(_photo(96, 128, seed=3)).float()[None, None]
    matched = torch.stack([torch.ones(96, 128), torch.zeros(96, 128)])[None]
    both = estimate_local_kernels(torch.cat([lum, other], 1), linear_luma(blurry).float(), 32,
                                  41, matched=matched)
    torch.testing.assert_close(both.kernels, local.kernels, atol=1e-5, rtol=0)


def test_the_check_trusts_a_reference_where_only_part_of_the_frame_is_blurred():
    """Half the frame blurred, half sharp: with one kernel for the frame, the reference (the
    truth itself) misses the blurry frame on both halves and is rejected where the blur changed
    the frame; with kernels per tile the check keeps it there, and its confident pixels beat the
    blurry frame."""
    truth = _scene()
    shake = _path_kernel(np.stack([np.linspace(-4.5, 4.5, 19), np.zeros(19)], 1))
    blurry = truth.clone()
    blurry[..., :64] = reblur(truth, shake)[..., :64]
    moved = torch.zeros(1, 1, 96, 128, dtype=torch.bool)
    moved[..., 12:-12, 12:52] = True
    moved &= (blurry - truth).abs().amax(1, keepdim=True) > 8 / 255
    refs = truth[:, None]

    def confident(tile):
        f = fuse("reblur", blurry, refs, _zero_flow_full_confidence, rematch=_zero_rematch,
                 kernel_size=21, check=Check(tile=tile))
        return f, (f.confidence >= 0.7)

    _, c_one = confident(0)
    local, c_local = confident(64)
    assert c_local[moved].float().mean() > 0.8 and c_one[moved].float().mean() < 0.1
    assert _masked_psnr(local.image, truth, c_local) > _masked_psnr(blurry, truth, c_local) + 3


def test_a_reference_taken_at_another_exposure_gets_the_blurry_frames_light():
    """The camera's auto-exposure and white balance changed between the reference and the
    blurry frame: 0.6 stops darker and bluer, in linear light. Blur keeps the amount of light,
    so the ratio of the means where the reference is matched restores it; an unmatched
    reference keeps its light."""
    truth = _scene()
    kernel = _path_kernel(np.stack([np.linspace(-4.5, 4.5, 19), np.zeros(19)], 1))
    blurry = reblur(truth, kernel)
    gains = torch.tensor([0.66, 0.66, 0.74]).view(1, 3, 1, 1)
    other = (truth ** 2.2 * gains) ** (1 / 2.2)
    matched = torch.ones(1, 2, 1, 96, 128, dtype=torch.bool)
    matched[:, 1] = False
    out = match_light(torch.stack([other, other], 1), blurry, matched)
    inner = (..., slice(12, -12), slice(12, -12))
    assert (out[:, 0] - truth)[inner].abs().mean() < 1 / 255
    assert (other - truth)[inner].abs().mean() > 10 / 255
    assert torch.equal(out[:, 1], other)
