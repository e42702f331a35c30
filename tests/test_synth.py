"""The GoPro-protocol synthesizer."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
from conftest import TINY

from bluref_ray.config import ConfigError
from bluref_ray.data.camera import PhotoCamera, ShakePath
from bluref_ray.data.synth import ClipSynth, apply_gains, held_out_scenes, synthesize
from bluref_ray.data.video import decode_frames


def _png(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)


def test_blur_is_the_linear_light_average_of_its_sharp_frames(tiny_data):
    manifest = json.load(open(f"{tiny_data}/manifest.json"))
    clip_info = manifest["clips"][0]
    clip = ClipSynth(TINY, clip_info["split"], 0)
    blurry = [f for f in clip_info["frames"] if f["blurry"]]
    assert blurry, "the tiny dataset must have blurry frames"
    for f in blurry[:4]:
        assert TINY.k_min <= f["k"] <= TINY.k_max
        subframes = np.stack([clip.stream.frame(j) for j in
                              range(f["first"], f["first"] + f["k"])]).astype(np.float64)
        assert len(subframes) == f["k"]
        # independent of the implementation: inverse gamma, mean, gamma, to 8 bits
        expected = 255.0 * (((subframes / 255.0) ** 2.2).mean(0)) ** (1 / 2.2)
        written = _png(f"{tiny_data}/{clip_info['frames_dir']}/blur/{f['index']:06d}.png")
        assert np.abs(written - expected).max() <= 0.5 + 1e-6
        # and it is not the plain (gamma-space) mean, which is darker in high-contrast regions
        assert np.abs(written - subframes.mean(0)).max() > 2
        # the ground truth is the centre frame of the exposure
        gt = _png(f"{tiny_data}/{clip_info['frames_dir']}/sharp/{f['index']:06d}.png")
        np.testing.assert_array_equal(gt, clip.stream.frame(f["centre"]))
        assert f["first"] <= f["centre"] < f["first"] + f["k"]


def test_layout_manifest_and_video(tiny_data):
    manifest = json.load(open(f"{tiny_data}/manifest.json"))
    assert [(c["split"], c["seq"]) for c in manifest["clips"]] == [
        ("train", "clip_0000"), ("train", "clip_0001"), ("test", "clip_0000")]
    c = manifest["clips"][1]
    import os
    sharp = sorted(os.listdir(f"{tiny_data}/{c['frames_dir']}/sharp"))
    blur = sorted(os.listdir(f"{tiny_data}/{c['frames_dir']}/blur"))
    assert sharp == [f"{i:06d}.png" for i in range(TINY.frames)]
    assert blur == [f"{f['index']:06d}.png" for f in c["frames"] if f["blurry"]]
    frames = list(decode_frames(f"{tiny_data}/{c['video']}"))
    assert len(frames) == TINY.frames
    assert frames[0].rgb.shape == (TINY.height, TINY.width, 3)
    # the video holds the recorded frames: blurry where the manifest says so, sharp elsewhere
    for f, d in zip(c["frames"], frames):
        folder = "blur" if f["blurry"] else "sharp"
        ref = _png(f"{tiny_data}/{c['frames_dir']}/{folder}/{f['index']:06d}.png")
        mse = np.mean((ref.astype(float) - d.rgb) ** 2)
        assert 10 * np.log10(255 ** 2 / max(mse, 1e-9)) > 30


def test_test_clips_show_scenes_no_train_clip_shows(tiny_data):
    clips = json.load(open(f"{tiny_data}/manifest.json"))["clips"]
    train = {c["scene"] for c in clips if c["split"] == "train"}
    test = [c["scene"] for c in clips if c["split"] == "test"]
    assert test and not train & set(test)
    # once the train clips have used every scene, test clips may show any of them
    used_all = [{"split": "train", "scene": s} for s in ("coffee", "rocket")]
    cfg = dataclasses.replace(TINY, scenes="coffee,rocket")
    assert held_out_scenes(cfg, used_all) == ["coffee", "rocket"]
    assert held_out_scenes(cfg, used_all[:1]) == ["rocket"]


def test_deterministic_for_a_seed(tmp_path):
    cfg = dataclasses.replace(TINY, train_clips=1, test_clips=0, frames=6, write_videos=False)
    a = synthesize(str(tmp_path / "a"), cfg, log=lambda _m: None)
    b = synthesize(str(tmp_path / "b"), cfg, log=lambda _m: None)
    synthesize(str(tmp_path / "c"), dataclasses.replace(cfg, seed=cfg.seed + 1),
               log=lambda _m: None)
    assert a["clips"] == b["clips"]
    for i in range(cfg.frames):
        name = f"train/clip_0000/sharp/{i:06d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a/train/clip_0000/sharp/000000.png").read_bytes() != (
        tmp_path / "c/train/clip_0000/sharp/000000.png").read_bytes()
    # the same settings again: the same files; other settings into the same folder: refused,
    # naming what changed, and nothing of the dataset there is touched
    assert synthesize(str(tmp_path / "a"), cfg, log=lambda _m: None)["clips"] == a["clips"]
    before = {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=rf"holds a dataset made with other settings \(seed: "
                                          rf"{cfg.seed} there, {cfg.seed + 1} now\)"):
        synthesize(str(tmp_path / "a"), dataclasses.replace(cfg, seed=cfg.seed + 1),
                   log=lambda _m: None)
    assert {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()} == before
    (tmp_path / "mine" / "train").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no manifest.json: not a dataset of bluref synth"):
        synthesize(str(tmp_path / "mine"), cfg, log=lambda _m: None)


def test_blurry_share_and_exposures(tmp_path):
    all_blurry = dataclasses.replace(TINY, blurry_share=1.0, frames=10, k_min=9, k_max=9)
    clip = ClipSynth(all_blurry, "train", 0)
    assert all(p.blurry and p.k == 9 for p in clip.plan)
    # even and odd k as wide as the slot (8 sub-frames) and wider: no sub-frame in two exposures,
    # and each truth inside its exposure
    mixed = ClipSynth(dataclasses.replace(all_blurry, frames=40, subframes=8, k_min=7, k_max=12),
                      "train", 0).plan
    for plans in (clip.plan, mixed):
        windows = [(p.first, p.first + p.k) for p in plans]
        assert all(a1 >= b0 for (_, b0), (a1, _) in zip(windows, windows[1:])), "exposures overlap"
        assert all(p.first <= p.centre < p.first + p.k for p in plans)
    assert {p.k % 2 for p in mixed} == {0, 1}
    none_blurry = ClipSynth(dataclasses.replace(TINY, blurry_share=0.0), "train", 0)
    assert not any(p.blurry for p in none_blurry.plan)


def test_sharp_stream_from_a_real_video(tiny_data, tmp_path):
    source = f"{tiny_data}/videos/train/clip_0000.mp4"
    cfg = dataclasses.replace(TINY, video=source, train_clips=1, test_clips=0, frames=2,
                              subframes=4, k_min=3, k_max=3, blurry_share=1.0)
    m = synthesize(str(tmp_path / "v"), cfg, log=lambda _m: None)
    assert m["clips"][0]["scene"] == "video"
    src = [f.rgb for f in decode_frames(source)]
    f0 = m["clips"][0]["frames"][0]
    gt = _png(tmp_path / "v/train/clip_0000/sharp/000000.png")
    np.testing.assert_array_equal(gt, src[f0["centre"]])
    too_long = dataclasses.replace(cfg, frames=500)
    with pytest.raises(ConfigError, match="clip_0000.mp4"):
        synthesize(str(tmp_path / "w"), too_long, log=lambda _m: None)


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="k_min"):
        synthesize(str(tmp_path), dataclasses.replace(TINY, k_min=9, k_max=3))
    with pytest.raises(ConfigError, match="blurry_share"):
        synthesize(str(tmp_path), dataclasses.replace(TINY, blurry_share=1.5))
    with pytest.raises(ConfigError, match="video_ext=avi needs an even synth.height"):
        synthesize(str(tmp_path), dataclasses.replace(TINY, video_ext="avi", width=57))
    with pytest.raises(ConfigError, match="synth.look='gopro'"):
        synthesize(str(tmp_path), dataclasses.replace(TINY, look="gopro"))
    with pytest.raises(ConfigError, match="synth.depth=1.0"):
        synthesize(str(tmp_path), dataclasses.replace(TINY, look="dashcam", depth=1.0))


def _flow(a, b):
    """Dense flow from frame ``a`` to frame ``b`` (Farnebäck), ``[H, W, 2]`` (dx, dy)."""
    grey = [cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (a, b)]
    return cv2.calcOpticalFlowFarneback(*grey, None, 0.5, 3, 15, 5, 5, 1.1, 0)


def test_dashcam_parallax_and_surge_move_parts_of_the_frame_differently():
    still = ShakePath([], np.zeros(0), np.random.default_rng(0))
    h, w = 96, 160

    def camera(**kw):
        return PhotoCamera(np.random.default_rng(1), h, w, 8, drift_px=3.0, rotation_deg=0.0,
                           zoom=0.0, n_objects=0, shake=still, shake_reach=0.0,
                           scenes=("astronaut",), **kw)

    # parallax: the camera's drift moves the bottom rows further than the top rows
    flat, ground = camera(), camera(depth=0.5)
    for cam, low, high in ((flat, 0.85, 1.15), (ground, 1.8, 4.0)):
        flow = _flow(cam.frame(0), cam.frame(32))
        top, bottom = (np.linalg.norm(flow[rows, 16:-16].mean((0, 1))) for rows in
                       (slice(8, 24), slice(-24, -8)))
        assert top > 1.0
        assert low < bottom / top < high
    # a forward surge during an exposure: the sides move apart, the centre stays
    surge = ShakePath([(10.0, 20.0)], np.array([8.0]), np.random.default_rng(2), axis_deg=0.0,
                      spread_deg=0.0)
    cam = camera(surge=surge)
    cam.drift_x = cam.drift_y = lambda _t: 0.0
    flow = _flow(cam.frame(9), cam.frame(21))[16:-16, :, 0]
    left, right, centre = flow[:, 8:32].mean(), flow[:, -32:-8].mean(), flow[:, 70:90].mean()
    assert abs(left) > 2 and abs(right) > 2 and np.sign(left) != np.sign(right)
    assert abs(centre) < 0.5


def test_dashcam_look_drifts_the_light_and_compresses_what_is_recorded(tmp_path):
    cfg = dataclasses.replace(TINY, look="dashcam", train_clips=1, test_clips=0, frames=40,
                              write_videos=False)
    m = synthesize(str(tmp_path), cfg, log=lambda _m: None)
    assert m["config"]["jpeg_quality"] == 80 and m["config"]["crf"] == 23
    clip = ClipSynth(cfg, "train", 0)
    assert clip.gains.shape == (40, 3)
    exposure = clip.gains.prod(1) ** (1 / 3)
    assert 1.1 < exposure.max() / exposure.min() < 2 ** 0.6 * 1.13
    frames = m["clips"][0]["frames"]
    blurry = next(f for f in frames if f["blurry"])
    sharp = next(f for f in frames if not f["blurry"])
    root = tmp_path / "train/clip_0000"
    # a blurry frame's truth has that frame's light, uncompressed
    truth = apply_gains(clip.stream.frame(blurry["centre"]), clip.gains[blurry["index"]])
    np.testing.assert_array_equal(_png(root / f"sharp/{blurry['index']:06d}.png"), truth)
    # a recorded frame went through the encoder: close to, not equal to, what the lens saw
    seen = apply_gains(clip.stream.frame(sharp["centre"]), clip.gains[sharp["index"]])
    recorded = _png(root / f"sharp/{sharp['index']:06d}.png").astype(float)
    mse = np.mean((recorded - seen) ** 2)
    assert 0 < mse and 10 * np.log10(255 ** 2 / mse) > 28
    # a setting given explicitly wins over the look; the studio look adds nothing
    assert dataclasses.replace(cfg, jpeg_quality=0).resolved().jpeg_quality == 0
    assert ClipSynth(TINY, "train", 0).gains is None


def test_sensor_noise_goes_on_what_is_recorded_and_the_truth_stays_clean():
    cfg = dataclasses.replace(TINY, frames=6, noise=10.0)
    noisy = list(ClipSynth(cfg, "train", 0).frames())
    clean = list(ClipSynth(dataclasses.replace(cfg, noise=0.0), "train", 0).frames())
    for (p, rec, gt), (_, rec0, gt0) in zip(noisy, clean):
        assert np.array_equal(gt, gt0)  # the truth: the same clean frame
        diff = rec.astype(float) - rec0
        assert 7 < diff.std() < 11 and abs(diff.mean()) < 1  # σ 10, clipped at 0 and 255
    again = list(ClipSynth(cfg, "train", 0).frames())
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(noisy, again))  # seeded
    with pytest.raises(ConfigError, match="synth.noise"):
        dataclasses.replace(TINY, noise=-1.0).validate()
