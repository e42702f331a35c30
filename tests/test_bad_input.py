"""Every kind of bad input the project knows, in one place (``docs/bad-input.md`` lists the same
cases): each is rejected, or refused, with a message that names the file or key and the problem;
nothing crashes, and the good inputs of the same run are still processed."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bluref_ray import schema, storage
from bluref_ray.cli import main
from bluref_ray.config import Config, IngestConfig, RayConfig
from bluref_ray.models import build_model, save_checkpoint
from bluref_ray.pipeline.ingest import run_ingest

DOC = Path(__file__).resolve().parent.parent / "docs" / "bad-input.md"
QUIET = Config(ray=RayConfig(progress_bars=False), ingest=IngestConfig(max_refs=2, delta=3))


def _img(seed: int, h: int = 40, w: int = 56) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (0, 0), 0.8)


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=8000)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


#: Bad files among good ones in one ingest run: (case, file, how it is made, reject stage,
#: words of the reason). Each reason must also name the file.
REJECTED = [
    ("empty video", "videos/empty.mp4", lambda good: b"", "open", "empty file"),
    ("truncated video", "videos/truncated.mp4", lambda good: good[: len(good) // 3], "open",
     "not a readable video"),
    ("garbage video", "videos/garbage.mkv", lambda good: os.urandom(4096), "open",
     "not a readable video"),
    ("header-only video", "videos/header.mp4", lambda good: good[:48], "open",
     "not a readable video"),
    ("image renamed as a video", "videos/renamed.mp4", lambda good: _png(_img(1)), "open",
     "not a video"),
    ("video without a video stream", "videos/audio.mp4", None, "open", "no video stream"),
    ("zero-byte image", "cam/000006.png", lambda good: b"", "decode", "empty file"),
    ("truncated image", "cam/000007.png", lambda good: _png(_img(7))[:60], "decode",
     "not a readable image"),
    ("garbage image", "cam/000008.png", lambda good: b"\x89PNG\r\n\x1a\n" + os.urandom(300),
     "decode", "not a readable image"),
    ("image of another size than its clip", "cam/000009.png",
     lambda good: _png(_img(9, 48, 64)), "size", "the clip's frames are 56x40"),
]

#: Odd but usable formats, converted: (case, file, frame, pixel format recorded).
CONVERTED = [
    ("grayscale image", "cam/000010.png", lambda: cv2.cvtColor(_img(10), cv2.COLOR_BGR2GRAY),
     "gray8"),
    ("16-bit image", "cam/000011.png", lambda: _img(11).astype(np.uint16) * 257, "rgb16"),
    ("16-bit grayscale image", "cam/000012.png",
     lambda: cv2.cvtColor(_img(12), cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257, "gray16"),
    ("4-channel (RGBA) image", "cam/000013.png",
     lambda: np.dstack([_img(13), np.full((40, 56), 255, np.uint8)]), "rgba8"),
]


def test_one_ingest_run_rejects_each_bad_file_by_name_and_keeps_the_good(ray_cluster, tiny_data,
                                                                          tmp_path):
    src = tmp_path / "src"
    good = Path(f"{tiny_data}/videos/train/clip_0000.mp4").read_bytes()
    (src / "videos").mkdir(parents=True)
    (src / "videos/good.mp4").write_bytes(good)
    (src / "cam").mkdir()
    for i in range(6):
        (src / f"cam/{i:06d}.png").write_bytes(_png(_img(i)))
    for _case, rel, make, _stage, _words in REJECTED:
        if make is None:
            _audio_only(src / rel)
        else:
            (src / rel).write_bytes(make(good))
    for _case, rel, frame, _fmt in CONVERTED:
        cv2.imwrite(str(src / rel), frame())
    # a frame tree with gaps (indices missing on both sides), and a blur/ without its sharp/
    for d in ("gaps/blur", "gaps/sharp", "lonely/blur"):
        (src / d).mkdir(parents=True)
    for i in (0, 1, 2, 5, 6, 9):
        cv2.imwrite(str(src / f"gaps/blur/{i:06d}.png"), cv2.GaussianBlur(_img(i), (0, 0), 2.5))
    for i in (0, 1, 2, 3, 5, 6, 7, 8, 9):  # no 4 at all
        cv2.imwrite(str(src / f"gaps/sharp/{i:06d}.png"), _img(i))
    for i in range(4):
        cv2.imwrite(str(src / f"lonely/blur/{i:06d}.png"), _img(20 + i))

    out = str(tmp_path / "out")
    summary = run_ingest([str(src)], out, QUIET, log=lambda _m: None)
    rejects = {storage.relative(r["source_uri"], str(src)): r
               for r in schema.read_table(f"{out}/rejects", schema.REJECTS).to_pylist()}
    for case, rel, _make, stage, words in REJECTED:
        assert rel in rejects, f"{case}: not rejected"
        r = rejects[rel]
        assert r["stage"] == stage and words in r["reason"], (case, r)
        assert rel.rsplit("/", 1)[1] in r["reason"], f"{case}: the reason must name the file"
        assert "Traceback" not in r["reason"]
    assert set(rejects) == {rel for _c, rel, *_ in REJECTED}, "nothing else is rejected"
    frames = schema.read_table(f"{out}/frames", schema.FRAMES).to_pylist()
    by_file = {storage.relative(f["source_uri"], str(src)): f for f in frames}
    for case, rel, _frame, fmt in CONVERTED:
        assert by_file[rel]["pixel_format"] == fmt, case
    # the good inputs of the same run: every frame of the good video, the good images, the tree
    assert sum(f["source_uri"].endswith("good.mp4") for f in frames) == 24
    assert all(f"cam/{i:06d}.png" in by_file for i in range(6))
    gaps = [f for f in frames if "/gaps/" in f["source_uri"]]
    assert len(gaps) == 6 + 9 and {f["role"] for f in gaps} == {"blurry", "sharp"}
    lonely = [f for f in frames if "/lonely/" in f["source_uri"]]
    assert len(lonely) == 4 and {f["source_kind"] for f in lonely} == {"images"}
    assert summary["rejects"] == len(REJECTED)


def _frames_copy(tiny_frames, tmp_path, name: str, table: pa.Table | bytes) -> str:
    dst = tmp_path / name
    shutil.copytree(tiny_frames, dst)
    path = dst / "frames" / "zz-bad.parquet"
    if isinstance(table, bytes):
        path.write_bytes(table)
    else:
        pq.write_table(table, path)
    return str(dst)


def _pairs_copy(tiny_pairs, tmp_path, name: str, table: pa.Table | bytes) -> str:
    dst = tmp_path / name
    shutil.copytree(tiny_pairs, dst)
    path = dst / "shards" / "zz-bad.parquet"
    if isinstance(table, bytes):
        path.write_bytes(table)
    else:
        pq.write_table(table, path)
    return str(dst)


def _checkpoint(tmp_path, name: str, what: str) -> str:
    path = tmp_path / name
    if what == "garbage":
        path.write_bytes(os.urandom(2048))
    elif what == "empty":
        path.write_bytes(b"")
    elif what == "kernel":
        save_checkpoint(build_model("kernel-tiny"), str(path), "kernel-tiny", {})
    elif what == "refnet":
        save_checkpoint(build_model("refnafnet-tiny"), str(path), "refnafnet-tiny", {})
    elif what == "matcher":
        from importlib import resources

        shutil.copy(str(resources.files("bluref_ray") / "assets" / "matcher.pt"), path)
    elif what == "foreign":
        import torch

        torch.save({"weights": torch.zeros(3)}, path)
    return str(path)


def _yaml(tmp_path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return str(path)


OLD_FRAMES = pa.table({"frame_id": ["c:blurry:000001"], "clip_id": ["c"]})
OLD_SHARD = pa.table({"row_id": ["r"], "blurry_png": [b"x"]})

#: Bad tables, settings, checkpoints and locations given to a command: (case, the command's
#: arguments (made from the fixtures), a pattern its one-line error must match). Each must exit
#: with code 2 and that line, never a traceback.
REFUSED = [
    ("corrupt frames-table file",
     lambda f, p, t, s: ["pseudo-gt", _frames_copy(f, t, "corrupt", b"PAR1 not parquet PAR1"),
                         "--out", str(t / "o")],
     r"zz-bad\.parquet: not a readable Parquet file"),
    ("frames table of another version",
     lambda f, p, t, s: ["pseudo-gt", _frames_copy(f, t, "old", OLD_FRAMES), "--out",
                         str(t / "o")],
     r"zz-bad\.parquet: not a frames table of this bluref-ray version \(no column"),
    ("corrupt shard",
     lambda f, p, t, s: ["train", _pairs_copy(p, t, "corrupt", b"garbage"), "--out",
                         str(t / "o"), "--steps", "1"],
     r"zz-bad\.parquet: not a readable Parquet file"),
    ("shard of another version",
     lambda f, p, t, s: ["train", _pairs_copy(p, t, "old", OLD_SHARD), "--out", str(t / "o"),
                         "--steps", "1"],
     r"zz-bad\.parquet: not a pseudo-pair shard of this bluref-ray version \(no column "
     r"pseudo_png"),
    ("config with an unknown key",
     lambda f, p, t, s: ["ingest", s, "--out", str(t / "o"),
                         "--config", _yaml(t, "ingest:\n  colour: 1\n")],
     r"bad\.yaml: ingest: unknown key\(s\) colour"),
    ("config with an unknown section",
     lambda f, p, t, s: ["ingest", s, "--out", str(t / "o"),
                         "--config", _yaml(t, "ingets:\n  delta: 3\n")],
     r"bad\.yaml: unknown section\(s\) ingets; known: blur2blur"),
    ("config value of the wrong type",
     lambda f, p, t, s: ["ingest", s, "--out", str(t / "o"),
                         "--config", _yaml(t, "ingest:\n  delta: many\n")],
     r"bad\.yaml: ingest\.delta: 'many' is not a valid int"),
    ("config value out of range",
     lambda f, p, t, s: ["pseudo-gt", f, "--out", str(t / "o"),
                         "--config", _yaml(t, "pseudo_gt:\n  tau: 1.5\n")],
     r"bad\.yaml: pseudo_gt\.tau=1\.5: must be within \(0, 1\]"),
    ("config that is not YAML",
     lambda f, p, t, s: ["ingest", s, "--out", str(t / "o"), "--config", _yaml(t, "ingest: [\n")],
     r"bad\.yaml is not valid YAML \(line 2, column 1: expected the node content"),
    ("--set key unknown, beside a config file (the error names --set, not the file)",
     lambda f, p, t, s: ["ingest", s, "--out", str(t / "o"), "--set", "ingest.colour=1",
                         "--config", _yaml(t, "ingest:\n  delta: 3\n")],
     r"--set ingest\.colour: ingest has no key 'colour'; known: clips_per_task"),
    ("--set section unknown",
     lambda f, p, t, s: ["ingest", s, "--out", str(t / "o"), "--set", "ingets.delta=3"],
     r"--set ingets\.delta: unknown section 'ingets'; known: blur2blur"),
    ("option value of the wrong type",
     lambda f, p, t, s: ["ingest", s, "--out", str(t / "o"), "--delta", "x"],
     r"ingest\.delta: 'x' is not a valid int"),
    ("sweep file with an unknown key",
     lambda f, p, t, s: ["sweep", "--config", _yaml(t, f"out: {t}/sw\ndata: [{s}]\nval: {s}\n"
                                                       "space: {N: [2]}\ncolour: 1\n")],
     r"bad\.yaml: unknown key"),
    ("sweep file value out of range",
     lambda f, p, t, s: ["sweep", "--config", _yaml(t, f"out: {t}/sw\ndata: [{s}]\nval: {s}\n"
                                                       "space: {tau: [0.5, 1.5]}\n")],
     r"bad\.yaml: space\.tau = 1\.5"),
    ("checkpoint that is garbage",
     lambda f, p, t, s: ["deblur", _checkpoint(t, "garbage.pt", "garbage"), s, "--out",
                         str(t / "o")],
     r"garbage\.pt: not a PyTorch checkpoint"),
    ("empty checkpoint",
     lambda f, p, t, s: ["deblur", _checkpoint(t, "empty.pt", "empty"), s, "--out",
                         str(t / "o")],
     r"empty\.pt: empty file, not a checkpoint"),
    ("checkpoint of another program",
     lambda f, p, t, s: ["deblur", _checkpoint(t, "foreign.pt", "foreign"), s, "--out",
                         str(t / "o")],
     r"foreign\.pt: not a bluref-ray checkpoint"),
    ("checkpoint of the wrong architecture (kernel extractor)",
     lambda f, p, t, s: ["deblur", _checkpoint(t, "kernel.pt", "kernel"), s, "--out",
                         str(t / "o")],
     r"kernel\.pt: a 'kernel-tiny' checkpoint, not a deblurrer"),
    ("checkpoint of the wrong architecture (matcher)",
     lambda f, p, t, s: ["eval", s, "--model", _checkpoint(t, "matcher.pt", "matcher"),
                         "--out", str(t / "o")],
     r"matcher\.pt: a 'dense-matcher' checkpoint, not a deblurrer"),
    ("training a network that is not a deblurrer of one frame",
     lambda f, p, t, s: ["train", p, "--out", str(t / "o"), "--steps", "1", "--set",
                         "train.model=refnafnet-tiny"],
     r"train\.model='refnafnet-tiny': not a deblurrer of one frame"),
    ("training from the weights of another network",
     lambda f, p, t, s: ["train", p, "--out", str(t / "o"), "--steps", "1", "--set",
                         f"train.init={_checkpoint(t, 'kernel.pt', 'kernel')}"],
     r"train\.init=.*kernel\.pt: a 'kernel-tiny' checkpoint, whose weights do not fit "
     r"train\.model=nafnet-tiny"),
    ("a Ref-NAFNet as the deblurrer whose output is matched",
     lambda f, p, t, s: ["pseudo-gt", f, "--out", str(t / "o"), "--set",
                         f"pseudo_gt.deblurrer={_checkpoint(t, 'ref.pt', 'refnet')}"],
     r"pseudo_gt\.deblurrer: .*ref\.pt is a Ref-NAFNet, which reads a reference frame"),
    ("a deblurrer as the check's selector",
     lambda f, p, t, s: ["pseudo-gt", f, "--out", str(t / "o"), "--set",
                         f"pseudo_gt.check_selector={_checkpoint(t, 'kernel.pt', 'kernel')}"],
     r"pseudo_gt\.check_selector: .*kernel\.pt: not a check-selector checkpoint \(it holds "
     r"'kernel-tiny'\)"),
    ("checkpoint that does not exist",
     lambda f, p, t, s: ["deblur", str(t / "nope.pt"), s, "--out", str(t / "o")],
     r"nope\.pt.*not found"),
    ("input that does not exist",
     lambda f, p, t, s: ["ingest", str(t / "nowhere"), "--out", str(t / "o")],
     r"nowhere.*not found|nowhere.*does not exist"),
    ("folder without any video or frame",
     lambda f, p, t, s: ["ingest", str(t), "--out", str(t / "o")],
     r"no videos .* or frame folders found under"),
]


@pytest.mark.parametrize("case, argv, pattern", REFUSED, ids=[c[0] for c in REFUSED])
def test_each_bad_table_setting_and_checkpoint_is_a_one_line_error(case, argv, pattern,
                                                                   ray_cluster, tiny_data,
                                                                   tiny_frames, tiny_pairs,
                                                                   tmp_path, capsys):
    images = f"{tiny_data}/test"
    if case == "folder without any video or frame":
        (tmp_path / "notes.txt").write_text("nothing to ingest")
    args = argv(tiny_frames, tiny_pairs, tmp_path, images)
    assert main([*args, "--quiet"] if args[0] not in ("sweep",) else args) == 2, case
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert re.search(pattern, err), f"{case}: {err}"


def test_every_case_is_listed_in_the_docs():
    page = DOC.read_text()
    cases = [c[0] for c in REJECTED + CONVERTED + REFUSED]
    cases += ["frame tree with gaps", "blur/ folder without its sharp/",
              "bucket that does not exist"]
    missing = [c for c in cases if f"| {c} |" not in page]
    assert not missing, f"docs/bad-input.md lacks: {missing}"
    assert len(cases) >= 25


@pytest.mark.faults
def test_a_bucket_that_does_not_exist_is_a_one_line_error(s3_cfg, tmp_path, capsys):
    keys = ["--endpoint-url", s3_cfg.endpoint_url, "--access-key", s3_cfg.access_key,
            "--secret-key", s3_cfg.secret_key, "--region", s3_cfg.region]
    assert main(["ingest", "s3://no-such-bucket-4711/videos", "--out", str(tmp_path / "o"),
                 *keys, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert "no-such-bucket-4711" in err, err
