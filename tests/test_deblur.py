"""Batch deblurring: seamless tiling, and the Ray Data pipeline on a video and an image folder."""

from __future__ import annotations

import dataclasses
import json
import os

import av
import cv2
import numpy as np
import pytest
import ray
import torch
from conftest import kill_at_seeded_points, kill_worker_when
from torch import nn

from bluref_ray.config import Config, ConfigError, DeblurConfig, RayConfig
from bluref_ray.data.video import VideoWriter, decode_frames
from bluref_ray.models import PRESETS, build_model, save_checkpoint
from bluref_ray.models.tiling import tiled_forward
from bluref_ray.pipeline.deblur import output_name, plan, run_deblur

CFG = Config(ray=RayConfig(progress_bars=False),
             deblur=DeblurConfig(tile=32, tile_overlap=8, batch_size=2))


def _local_model() -> nn.Module:
    """Two 3×3 convolutions: an output pixel sees inputs within 2 pixels."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 3, 3, padding=1), nn.Sigmoid()).eval()


@pytest.mark.parametrize("shape,tile,overlap", [
    ((1, 3, 70, 97), 32, 8), ((2, 3, 61, 130), 32, 12), ((1, 3, 33, 90), 32, 16),
    ((1, 3, 60, 60), 24, 8)])
def test_tiled_forward_matches_whole_frame_for_a_local_model(shape, tile, overlap):
    model = _local_model()
    x = torch.rand(*shape)
    with torch.no_grad():
        whole = model(x)
    tiled = tiled_forward(model, x, tile, overlap)
    assert tiled.shape == x.shape and tiled.dtype == torch.float32
    assert (tiled - whole).abs().max().item() < 1e-5


def test_tiled_forward_small_overlap_margin_and_whole_frame_paths():
    model = _local_model()
    x = torch.rand(1, 3, 70, 97)
    with torch.no_grad():
        whole = model(x)
    # overlap 4 = 2 × the receptive radius: exact once the 2 edge pixels get no weight
    assert (tiled_forward(model, x, 32, 4, margin=2) - whole).abs().max() < 1e-5
    assert torch.equal(tiled_forward(model, x, 0, 8), whole.clamp(0, 1))  # tiling off
    assert torch.equal(tiled_forward(model, x, 128, 8), whole.clamp(0, 1))  # fits one tile
    with pytest.raises(ValueError, match="overlap"):
        tiled_forward(model, x, 32, 32)


def test_output_names():
    assert output_name("a/b.JPG", "image") == "a/b.png"
    assert output_name("clip.mkv", "video") == "clip.mkv"
    assert output_name("clip.webm", "video") == "clip.mp4"


def _checkpoint(path: str) -> str:
    """A nafnet-tiny checkpoint whose residual scales are non-zero (so it is not identity)."""
    arch, kwargs = PRESETS["nafnet-tiny"]
    torch.manual_seed(1)
    model = build_model(arch, **kwargs)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.uniform_(0.2, 0.5)
    save_checkpoint(model, path, arch, kwargs)
    return path


def _video(path: str, frames: int = 6, width: int = 64, height: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    with VideoWriter(path, width, height, fps=24.0, crf=0) as w:
        for t in range(frames):
            rgb = np.stack([128 + 100 * np.sin((xx + 3 * t) / 7), 128 + 90 * np.cos(yy / 5),
                            128 + 80 * np.sin((xx + yy - 2 * t) / 9)], -1).astype(np.uint8)
            w.write(rgb)
            out.append(rgb)
    return np.stack(out)


def test_deblur_round_trips_a_video(ray_cluster, tmp_path):
    ckpt = _checkpoint(str(tmp_path / "model.pt"))
    src = str(tmp_path / "in" / "clip.mp4")
    os.makedirs(os.path.dirname(src))
    _video(src)
    out = str(tmp_path / "out")
    lines: list[str] = []
    s = run_deblur(ckpt, [src], out, CFG, log=lines.append)
    assert s["done"] == 1 and s["failed"] == [] and s["frames"] == 6 and s["skipped"] == 0
    # the actor asked Ray for the default memory (or half the cluster's, if that is less)
    want = min(3.0, ray.cluster_resources()["memory"] / 2 / 2**30)
    assert any(f"CPU and {want:.1f} GiB each" in m for m in lines), lines
    assert s["frames_per_second"] > 0
    got = [d.rgb for d in decode_frames(f"{out}/clip.mp4")]
    want = [d.rgb for d in decode_frames(src)]
    assert len(got) == 6 and got[0].shape == (48, 64, 3)
    diff = np.abs(np.stack(got).astype(int) - np.stack(want).astype(int)).mean()
    assert diff > 1.0  # the random network is no identity
    with av.open(f"{out}/clip.mp4") as c:
        assert float(c.streams.video[0].average_rate) == pytest.approx(24.0)
    with open(f"{out}/deblur_summary.json") as f:
        assert json.load(f)["frames"] == 6
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no temporary files left


def test_a_portrait_video_tagged_bt709_full_range_comes_out_upright_in_its_own_colours(
        ray_cluster, tmp_path):
    """A phone's portrait clip (landscape pixels, a display rotation) in BT.709 full range:
    frames are read upright, and the output (an identity model) plays upright, tagged as the
    input and encoded with its matrix; before, it came out untagged in BT.601 limited range, so
    that a player showed other colours (and the clip sideways)."""
    src = tmp_path / "in" / "portrait.mp4"
    src.parent.mkdir()
    landscape = _video(str(tmp_path / "plain.mp4"))  # [6, 48, 64, 3]
    landscape[:, :6, :6] = 255  # a white corner, top left of the stored pixels
    with av.open(str(src), "w") as c:
        stream = c.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"crf": "0"}
        cc = stream.codec_context
        cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc = 1, 2, 1, 1
        stream.set_display_rotation(-90)  # shown turned a quarter clockwise
        for rgb in landscape:
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                format="yuv420p", dst_colorspace=1, dst_color_range=2)
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    shown = [d for d in decode_frames(str(src))]
    assert shown[0].rgb.shape == (64, 48, 3) and shown[0].colour == (1, 2, 1, 1)
    assert shown[0].rgb[:6, -6:].min() > 240  # the corner, now top right
    assert np.abs(shown[0].rgb.astype(int) - np.rot90(landscape[0], -1)).mean() < 5  # 4:2:0
    model = str(tmp_path / "identity.pt")
    torch.jit.save(torch.jit.script(nn.Identity()), model)
    cfg = dataclasses.replace(CFG, deblur=dataclasses.replace(CFG.deblur, crf=0))
    s = run_deblur(model, [str(src.parent)], str(tmp_path / "out"), cfg, log=lambda _m: None)
    assert s["done"] == 1, s["failed"]
    out = [d for d in decode_frames(str(tmp_path / "out" / "portrait.mp4"))]
    assert out[0].colour == (1, 2, 1, 1)
    with av.open(str(tmp_path / "out" / "portrait.mp4")) as c:
        assert next(c.decode(video=0)).rotation == 0  # upright pixels, nothing left to turn
    diff = np.abs(np.stack([d.rgb for d in out]).astype(int)
                  - np.stack([d.rgb for d in shown]).astype(int))
    assert diff.mean() < 1.5, diff.mean()


def test_deblur_folder_with_a_corrupt_image_and_resume(ray_cluster, tmp_path):
    ckpt = _checkpoint(str(tmp_path / "model.pt"))
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(src / "color.jpg"), rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    cv2.imwrite(str(src / "sub" / "gray16.png"),
                rng.integers(0, 65536, (48, 64), dtype=np.uint16))
    (src / "broken.png").write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    (src / "notes.txt").write_text("not an image")
    out = str(tmp_path / "out")
    assert [r["name"] for r in plan([str(src)], out)] == ["broken.png", "color.png",
                                                          "sub/gray16.png"]

    s = run_deblur(ckpt, [str(src)], out, CFG, log=lambda _m: None)
    assert s["files"] == 3 and s["done"] == 2 and s["frames"] == 2 and s["skipped"] == 0
    assert len(s["failed"]) == 1 and "broken.png" in s["failed"][0]["error"]
    color = cv2.imread(f"{out}/color.png", cv2.IMREAD_UNCHANGED)
    gray = cv2.imread(f"{out}/sub/gray16.png", cv2.IMREAD_UNCHANGED)
    assert color.shape == (40, 56, 3) and color.dtype == np.uint8
    assert gray.shape == (48, 64, 3) and gray.dtype == np.uint8
    assert not os.path.exists(f"{out}/broken.png")

    # a second run skips what is done and tries the broken file again
    s2 = run_deblur(ckpt, [str(src)], out, CFG, log=lambda _m: None)
    assert s2["skipped"] == 2 and s2["done"] == 0 and len(s2["failed"]) == 1


class _NoBrightFrames(nn.Module):
    """A network of one's own that fails on some inputs (a bright tile)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.min() > 0.9):
            raise RuntimeError("this model cannot take bright frames")
        return x


def test_a_model_failing_on_one_file_names_it_and_deblurs_the_others(ray_cluster, tmp_path):
    model = str(tmp_path / "own.pt")
    torch.jit.save(torch.jit.script(_NoBrightFrames()), model)
    src = tmp_path / "photos"
    src.mkdir()
    cv2.imwrite(str(src / "bright.png"), np.full((40, 40, 3), 250, np.uint8))
    cv2.imwrite(str(src / "dark.png"), np.full((40, 40, 3), 20, np.uint8))
    s = run_deblur(model, [str(src)], str(tmp_path / "out"), CFG, log=lambda _m: None)
    assert s["done"] == 1 and [f["input"] for f in s["failed"]] == [str(src / "bright.png")]
    assert "bright.png" in s["failed"][0]["error"]
    assert "cannot take bright frames" in s["failed"][0]["error"]
    assert (tmp_path / "out" / "dark.png").is_file()


def test_deblur_runs_a_chain_of_checkpoints_given_as_a_plus_b(ray_cluster, tmp_path,
                                                               monkeypatch):
    from bluref_ray.models import chain_checkpoint, read_checkpoint
    from bluref_ray.storage import StorageNotFoundError

    monkeypatch.chdir(tmp_path)  # relative parts, as typed on a command line
    a, b = _checkpoint("a.pt"), _checkpoint("b.pt")
    torch.save(chain_checkpoint([read_checkpoint(a), read_checkpoint(b)]), "chain.pt")
    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(2)
    cv2.imwrite(str(tmp_path / "in" / "x.png"), rng.integers(0, 256, (40, 56, 3), np.uint8))
    quiet = lambda _m: None  # noqa: E731
    s = run_deblur(f"{a}+./{b}", ["in"], "out_ab", CFG, log=quiet)
    assert s["done"] == 1 and s["failed"] == []
    run_deblur("chain.pt", ["in"], "out_chain", CFG, log=quiet)
    got, want = cv2.imread("out_ab/x.png"), cv2.imread("out_chain/x.png")
    assert np.array_equal(got, want)
    assert np.abs(got.astype(int) - cv2.imread("in/x.png").astype(int)).mean() > 1.0
    with pytest.raises(StorageNotFoundError, match=r"missing\.pt: not found \(a part of"):
        run_deblur(f"{a}+missing.pt", ["in"], "out_none", CFG, log=quiet)
    assert not os.path.exists("out_none/x.png")

    # a network of one's own, saved by torch.export, runs in the actors as any checkpoint
    own, free = _local_model(), torch.export.Dim.AUTO
    torch.export.save(torch.export.export(own, (torch.rand(2, 3, 32, 32),), dynamic_shapes=(
        {0: free, 2: free, 3: free},)), "own.pt2")
    run_deblur("own.pt2", ["in"], "out_own", CFG, log=quiet)
    x = torch.from_numpy(cv2.imread("in/x.png")[..., ::-1].copy()).permute(2, 0, 1)[None] / 255
    with torch.no_grad():
        want = (own(x.float())[0].permute(1, 2, 0).numpy()[..., ::-1] * 255).round()
    assert np.abs(cv2.imread("out_own/x.png").astype(float) - want).max() <= 1


def test_deblur_memory_per_actor_that_cannot_fit_is_an_error_before_any_output(ray_cluster,
                                                                                tmp_path):
    with pytest.raises(ConfigError, match="deblur.memory_per_actor"):
        DeblurConfig(memory_per_actor=0).validate()
    img = tmp_path / "in" / "a.png"
    img.parent.mkdir()
    cv2.imwrite(str(img), np.zeros((16, 16, 3), np.uint8))
    cfg = dataclasses.replace(CFG, deblur=dataclasses.replace(CFG.deblur, memory_per_actor=1000))
    with pytest.raises(ConfigError, match=r"deblur.memory_per_actor=1000: 1 actors × 1000 GiB"):
        run_deblur(_checkpoint(str(tmp_path / "model.pt")), [str(img)], str(tmp_path / "out"),
                   cfg, log=lambda _m: None)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_missing_input_and_empty_folder_are_clear_errors(tmp_path):
    from bluref_ray.storage import StorageNotFoundError

    with pytest.raises(StorageNotFoundError, match="nowhere"):
        plan([str(tmp_path / "nowhere")], str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="empty"):
        plan([str(tmp_path / "empty")], str(tmp_path / "out"))
    (tmp_path / "empty" / "a.png").write_bytes(b"")  # inputs under --out: said so
    with pytest.raises(ValueError, match="lie under --out .*empty, whose files are never inputs"):
        plan([str(tmp_path / "empty")], str(tmp_path / "empty"))
    (tmp_path / "empty" / "a.PNG").write_bytes(b"")  # names that differ in case only
    (tmp_path / "empty" / "a.jpg").write_bytes(b"")
    assert [r["name"] for r in plan([str(tmp_path / "empty")], str(tmp_path / "out"))] == [
        "a_PNG.png", "a_jpg.png", "a_png.png"]


def test_a_video_breaking_mid_way_leaves_no_output(tmp_path, monkeypatch):
    from bluref_ray.data.video import DecodedFrame, VideoError
    from bluref_ray.pipeline import deblur

    def broken(uri, storage_cfg=None, max_frames=None, threads=0):
        for i in range(5):
            yield DecodedFrame(i, i / 24, np.full((16, 24, 3), 9 * i, np.uint8), "yuv420p")
        raise VideoError(f"{uri}: decoding failed after 5 frames (test)", 5)

    worker = deblur.DeblurWorker(_checkpoint(str(tmp_path / "model.pt")), CFG.deblur,
                                 CFG.storage)  # outside Ray: on the CPU
    (tmp_path / "empty.mp4").write_bytes(b"")
    r = worker.process(str(tmp_path / "empty.mp4"), str(tmp_path / "o1.mp4"), "video")
    assert "empty.mp4" in r["error"] and "empty file" in r["error"]
    monkeypatch.setattr(deblur, "decode_frames", broken)
    r = worker.process(str(tmp_path / "clip.mkv"), str(tmp_path / "o2.mkv"), "video")
    assert "clip.mkv" in r["error"] and "after 5 frames" in r["error"]
    assert not os.path.exists(tmp_path / "o1.mp4") and not os.path.exists(tmp_path / "o2.mkv")


def _outputs(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


#: The deblur run the fault tests interrupt: one blurry clip, one image per batch.
ONE_BY_ONE = dataclasses.replace(CFG, deblur=dataclasses.replace(CFG.deblur, batch_size=1))


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, tiny_data, tmp_path_factory) -> tuple[str, str, dict]:
    """The checkpoint, the source and the outputs of an uninterrupted ``ONE_BY_ONE`` run."""
    folder = tmp_path_factory.mktemp("deblur-uninterrupted")
    ckpt = _checkpoint(str(folder / "model.pt"))
    src = f"{tiny_data}/train/clip_0000/blur"
    run_deblur(ckpt, [src], str(folder / "out"), ONE_BY_ONE, log=lambda _m: None)
    return ckpt, src, _outputs(folder / "out")


@pytest.mark.faults
def test_killed_deblur_resumes_and_writes_the_files_of_an_uninterrupted_run(uninterrupted,
                                                                           tmp_path):
    """`bluref deblur` SIGKILLed (process group) at two seeded points, then the same command:
    byte for byte the outputs of an uninterrupted run, finished files not redone, no temporary
    file left."""
    ckpt, src, want = uninterrupted
    out = tmp_path / "out"
    kill_at_seeded_points(["deblur", ckpt, src, "--out", str(out), "--tile", "32",
                           "--tile-overlap", "8", "--batch-size", "1"], out, len(want),
                          pattern="*.png")
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    s = run_deblur(ckpt, [src], str(out), ONE_BY_ONE, log=lambda _m: None)
    assert (s["skipped"], s["done"], s["failed"]) == (len(kept), len(want) - len(kept), [])
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept
    assert _outputs(out) == want
    assert not [n for n in os.listdir(out) if n.startswith(".")]


@pytest.mark.faults
def test_a_killed_deblur_actor_is_restarted_and_every_file_is_written(uninterrupted, tmp_path):
    """The deblur actor SIGKILLed after its first output: Ray restarts it and retries its batch;
    the outputs equal an uninterrupted run's, byte for byte."""
    ckpt, src, want = uninterrupted
    out = tmp_path / "out"
    with kill_worker_when("DeblurWorker", lambda: any(out.glob("*.png"))) as killed:
        s = run_deblur(ckpt, [src], str(out), ONE_BY_ONE, log=lambda _m: None)
    assert killed, "no actor was killed"
    assert s["done"] == len(want) and s["failed"] == []
    assert _outputs(out) == want
    assert not [n for n in os.listdir(out) if n.startswith(".")]
