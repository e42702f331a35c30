"""Source discovery and readers: trees, image folders, odd pixel formats, bad files."""

from __future__ import annotations

from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from bluref_ray.config import IngestConfig
from bluref_ray.data.sources import Reject, discover, read_frames
from bluref_ray.data.video import decode_frames
from bluref_ray.pipeline.ingest import ingest_clip


def _img(h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (0, 0), 0.8)


def test_discovers_gopro_reds_videos_and_image_folders(tmp_path, tiny_data):
    for i in range(3):
        for d in ("gopro/train/seqA/blur", "gopro/train/seqA/blur_gamma", "gopro/train/seqA/sharp",
                  "reds/train_blur/000", "reds/train_sharp/000", "phone/trip"):
            (tmp_path / d).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(tmp_path / d / f"{i:08d}.png"), _img(seed=i))
    (tmp_path / "cams").mkdir()
    (tmp_path / "cams" / "cam1.mp4").write_bytes(
        open(f"{tiny_data}/videos/train/clip_0000.mp4", "rb").read())
    (tmp_path / "notes.txt").write_text("ignored")
    clips = {c.clip_id.rsplit("-", 1)[0]: c for c in discover(str(tmp_path))}
    top = tmp_path.name
    assert sorted(clips) == [f"{top}-{n}" for n in ("cams-cam1", "gopro-train-seqA",
                                                    "phone-trip", "reds-train-000")]
    assert clips[f"{top}-cams-cam1"].kind == "video"
    phone = clips[f"{top}-phone-trip"]
    assert phone.kind == "images" and len(phone.files) == 3
    for name in ("gopro-train-seqA", "reds-train-000"):
        c = clips[f"{top}-{name}"]
        assert c.kind == "tree"
        roles = sorted((f.index, f.role) for f in c.files)
        assert roles == [(i, r) for i in range(3) for r in ("blurry", "sharp")]
        assert all(f.gt_uri and f.gt_uri.endswith(f"{f.index:08d}.png")
                   for f in c.files if f.role == "blurry")
        assert not any("blur_gamma" in f.uri for f in c.files)
    # clip ids are deterministic
    assert [c.clip_id for c in discover(str(tmp_path))] == sorted(c.clip_id for c in clips.values())


def test_grayscale_and_16bit_frames_become_rgb8(tmp_path):
    d = tmp_path / "cam"
    d.mkdir()
    base = _img()
    cv2.imwrite(str(d / "000000.png"), base)
    cv2.imwrite(str(d / "000001.png"), cv2.cvtColor(base, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(d / "000002.png"), base.astype(np.uint16) * 257)
    cv2.imwrite(str(d / "000003.png"), (cv2.cvtColor(base, cv2.COLOR_BGR2GRAY).astype(np.uint16)
                                        * 257))
    (clip,) = discover(str(d))
    frames = list(read_frames(clip))
    assert [f.pixel_format for f in frames] == ["rgb8", "gray8", "rgb16", "gray16"]
    assert all(f.rgb.shape == (40, 56, 3) and f.rgb.dtype == np.uint8 for f in frames)
    np.testing.assert_array_equal(frames[2].rgb, frames[0].rgb)  # 16-bit scaled back exactly


def _exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an EXIF segment holding only the orientation tag (0x0112)."""
    import struct

    tiff = (b"MM\x00*" + struct.pack(">IH", 8, 1)
            + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0))
    app1 = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def test_a_jpeg_is_read_upright_by_its_exif_orientation(tmp_path):
    """A camera's portrait shot: landscape pixels, tag 6 (turn a quarter clockwise to show)."""
    d = tmp_path / "cam"
    d.mkdir()
    base = _img()
    base[:6, :6] = 255  # a white corner, top left of the stored pixels
    jpeg = cv2.imencode(".jpg", base, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
    (d / "000000.jpg").write_bytes(_exif_orientation(jpeg, 6))
    (d / "000001.jpg").write_bytes(_exif_orientation(jpeg, 1))
    (clip,) = discover(str(d))
    turned, plain = (f.rgb for f in read_frames(clip))
    assert turned.shape == (56, 40, 3) and plain.shape == (40, 56, 3)
    assert turned[:6, -6:].min() > 240 and plain[:6, :6].min() > 240
    np.testing.assert_array_equal(turned, np.rot90(plain, -1))


def test_names_that_are_times_or_share_a_number_keep_every_file_in_order(tmp_path):
    """Epoch-millisecond names (past int32, and Δ would count milliseconds), two cameras or two
    formats in one folder (one number twice): every file kept, indices by place."""
    for folder, names in (("times", ["1686830000000.png", "1686830000033.png",
                                     "1686830000066.png"]),
                          ("mixed", ["front_0001.jpg", "rear_0001.jpg", "0002.png", "0002.jpg"]),
                          ("frames", ["1.png", "2.png", "10.png"])):
        (tmp_path / folder).mkdir()
        for n in names:
            cv2.imwrite(str(tmp_path / folder / n), _img(seed=len(n)))
    clips = {c.uri.rsplit("/", 1)[1]: c for c in discover(str(tmp_path))}
    index = {k: [(f.index, f.uri.rsplit("/", 1)[1]) for f in c.files] for k, c in clips.items()}
    assert index["times"] == [(0, "1686830000000.png"), (1, "1686830000033.png"),
                              (2, "1686830000066.png")]
    assert index["mixed"] == [(0, "front_0001.jpg"), (1, "rear_0001.jpg"), (2, "0002.jpg"),
                              (3, "0002.png")]
    assert index["frames"] == [(1, "1.png"), (2, "2.png"), (10, "10.png")]  # frame numbers
    (table, _) = ingest_clip(clips["times"], IngestConfig())
    assert sorted(table.column("frame_index").to_pylist()) == [0, 1, 2]


def test_corrupt_and_odd_sized_frames_are_rejected_the_rest_go_on(tmp_path):
    d = tmp_path / "cam"
    d.mkdir()
    for i in range(6):
        cv2.imwrite(str(d / f"{i:06d}.png"), _img(seed=i))
    (d / "000006.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (d / "000007.png").write_bytes(b"")
    cv2.imwrite(str(d / "000008.png"), _img(h=48, w=64, seed=8))
    (clip,) = discover(str(d))
    frames, rejects = ingest_clip(clip, IngestConfig())
    assert sorted(frames.column("frame_index").to_pylist()) == list(range(6))
    reasons = {r["frame_index"]: r for r in rejects.to_pylist()}
    assert set(reasons) == {6, 7, 8}
    assert "000006.png" in reasons[6]["reason"] and "not a readable image" in reasons[6]["reason"]
    assert "empty file" in reasons[7]["reason"]
    assert reasons[8]["stage"] == "size" and "64x48" in reasons[8]["reason"]


def test_missing_reference_frames_in_a_tree(tmp_path):
    """A blurry frame whose sharp neighbours are missing gets fewer (or no) references, and the
    sharp twin of a blurry frame (its ground truth) is never anyone's reference."""
    for i in range(8):
        (tmp_path / "s/blur").mkdir(parents=True, exist_ok=True)
        (tmp_path / "s/sharp").mkdir(parents=True, exist_ok=True)
        blurred = cv2.GaussianBlur(_img(seed=i), (0, 0), 3)
        if i <= 6:
            cv2.imwrite(str(tmp_path / f"s/blur/{i:06d}.png"), blurred)
        if i >= 6:
            cv2.imwrite(str(tmp_path / f"s/sharp/{i:06d}.png"), _img(seed=i))
    (clip,) = discover(str(tmp_path))
    frames, _ = ingest_clip(clip, IngestConfig(max_refs=4, delta=2))
    refs = {r["frame_index"]: r["references"] for r in frames.to_pylist() if r["role"] == "blurry"}
    assert refs[0] == [] and refs[3] == []
    assert [x.rsplit(":", 1)[1] for x in refs[5]] == ["000007"]  # not 6: blurry 6's truth
    assert [x.rsplit(":", 1)[1] for x in refs[6]] == ["000007"]  # never its own index


@pytest.mark.parametrize("payload, expect", [(b"", "empty file"),
                                             (b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 500,
                                              "not a readable video")])
def test_broken_videos_are_rejects(tmp_path, payload, expect):
    (tmp_path / "bad.mp4").write_bytes(payload)
    (clip,) = discover(str(tmp_path))
    items = list(read_frames(clip))
    assert len(items) == 1 and isinstance(items[0], Reject)
    assert "bad.mp4" in items[0].reason and expect in items[0].reason


def test_video_times_count_from_its_first_frame(tmp_path):
    """A stream that starts late (a cut from a longer recording, an MPEG-TS clock) gives
    timestamps from its first frame, as the frames table promises."""
    path = str(tmp_path / "late.mp4")
    with av.open(path, "w") as c:
        stream = c.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = Fraction(1, 25)
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(_img(48, 64, i), format="rgb24")
            frame.pts = 250 + i  # the recording's clock: 10 s in
            c.mux(stream.encode(frame))
        c.mux(stream.encode())
    times = [f.time for f in decode_frames(path)]
    assert times == pytest.approx([0.0, 0.04, 0.08, 0.12], abs=1e-6)
