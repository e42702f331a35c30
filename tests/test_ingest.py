"""The Ray Data ingest pipeline on local storage (S3 runs in test_s3.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pyarrow.compute as pc
import pytest
from conftest import TINY, kill_at_seeded_points, kill_worker_when

from bluref_ray import schema, storage
from bluref_ray.config import Config, ConfigError, IngestConfig, RayConfig
from bluref_ray.pipeline.ingest import run_ingest

CFG = Config(ray=RayConfig(num_cpus=2, progress_bars=False), ingest=IngestConfig(max_refs=4,
                                                                                 delta=5))


def _frames(out):
    return schema.sort_frames(schema.read_table(f"{out}/frames", schema.FRAMES))


def _check_references(table, max_refs, delta):
    rows = table.to_pylist()
    sharp_ids = {r["frame_id"] for r in rows if r["role"] == "sharp"}
    for r in rows:
        if r["role"] == "sharp":
            assert r["references"] == []
            continue
        assert len(r["references"]) <= max_refs
        for ref in r["references"]:
            assert ref in sharp_ids, "a reference must be a sharp frame of the table"
            clip, role, idx = ref.rsplit(":", 2)
            assert clip == r["clip_id"] and role == "sharp"
            assert int(idx) != r["frame_index"]
            assert abs(int(idx) - r["frame_index"]) <= delta


def test_ingest_videos_and_frame_trees(ray_cluster, tiny_data, tmp_path):
    out = str(tmp_path / "ingest")
    summary = run_ingest([f"{tiny_data}/videos", f"{tiny_data}/train", f"{tiny_data}/test"], out,
                         CFG, log=lambda _m: None)
    assert summary["this_run"] == {"clips": summary["clips"], "skipped": 0}
    t = _frames(out)
    manifest = json.load(open(f"{tiny_data}/manifest.json"))
    n_blur = sum(f["blurry"] for c in manifest["clips"] for f in c["frames"])
    n = TINY.frames * len(manifest["clips"])
    assert t.num_rows == n + (n_blur + n)  # videos: every frame; trees: blur/ + sharp/
    assert summary["frames"] == t.num_rows and summary["rejects"] == 0
    assert summary["clips"] == 6 and summary["clips_with_frames"] == 6
    mild = pc.match_substring(t["label_reason"], "below the cut for mild blur")
    assert summary["blurry_by_mild_pass"] == pc.sum(mild).as_py() <= summary["blurry"]
    assert t.schema.equals(schema.FRAMES)
    _check_references(t, 4, 5)
    assert len(set(t.column("frame_id").to_pylist())) == t.num_rows
    # video frames are labelled by sharpness: compare with the synthesizer's truth
    truth = {(c["video"], f["index"]): f["blurry"] for c in manifest["clips"] for f in c["frames"]}
    video = t.filter(pc.equal(t["source_kind"], "video")).to_pylist()
    agree = sum(truth[(storage.relative(r["source_uri"], tiny_data), r["frame_index"])] ==
                (r["role"] == "blurry") for r in video)
    assert agree / len(video) >= 0.9
    # frame trees are labelled by their folders, with the ground truth of each blurry frame
    tree = t.filter(pc.equal(t["source_kind"], "tree")).to_pylist()
    for r in tree:
        assert ("/blur/" in r["source_uri"]) == (r["role"] == "blurry")
        if r["role"] == "blurry":
            assert r["gt_uri"].endswith(f"/sharp/{r['frame_index']:06d}.png")
    assert json.load(open(f"{out}/summary.json"))["frames"] == t.num_rows


def test_corrupt_and_empty_videos_are_rejected_others_ingested(ray_cluster, tiny_data, tmp_path):
    src = tmp_path / "videos"
    shutil.copytree(f"{tiny_data}/videos/train", src)
    (src / "empty.mp4").write_bytes(b"")
    good = (src / "clip_0000.mp4").read_bytes()
    (src / "corrupt.mkv").write_bytes(os.urandom(4096))
    (src / "truncated.mp4").write_bytes(good[: len(good) // 3])
    out = str(tmp_path / "out")
    summary = run_ingest([str(src)], out, CFG, log=lambda _m: None)
    rejects = {storage.basename(r["source_uri"]): r
               for r in schema.read_table(f"{out}/rejects", schema.REJECTS).to_pylist()}
    assert set(rejects) == {"empty.mp4", "corrupt.mkv", "truncated.mp4"}
    assert "empty file" in rejects["empty.mp4"]["reason"]
    assert "corrupt.mkv" in rejects["corrupt.mkv"]["reason"]
    t = _frames(out)
    by_clip = {storage.basename(u) for u in t.column("source_uri").to_pylist()}
    assert {"clip_0000.mp4", "clip_0001.mp4"} <= by_clip
    assert t.filter(pc.match_substring(t["source_uri"], "clip_0001.mp4")).num_rows == TINY.frames
    assert summary["rejects"] == 3 and summary["clips"] == 5


def _hidden(folder) -> list[str]:
    return [n for _, _, files in os.walk(folder) for n in files if n.startswith(".")]


@pytest.mark.faults
def test_killed_run_resumes_and_ends_with_the_same_table(tiny_data, tiny_table, tmp_path):
    """`bluref ingest` SIGKILLed (process group) at two seeded points, then the same command:
    the table of an uninterrupted run (``tiny_table``), every row once, no temporary file
    left."""
    sources = [f"{tiny_data}/videos", f"{tiny_data}/train"]
    out = tmp_path / "out"
    full = _frames(tiny_table)
    n = len(os.listdir(f"{tiny_table}/frames"))
    kill_at_seeded_points(["ingest", *sources, "--out", str(out), "--max-refs", "4", "--delta",
                           "5"], out / "frames", n)
    before = set(os.listdir(out / "frames"))
    s = run_ingest(sources, str(out), CFG, log=lambda _m: None)
    assert s["this_run"] == {"clips": n - len(before), "skipped": len(before)}
    t = _frames(str(out))
    assert t.equals(full) and len(set(t.column("frame_id").to_pylist())) == t.num_rows
    assert not _hidden(out), "no temporary file left behind"


@pytest.mark.faults
def test_a_killed_ingest_task_is_retried_and_the_table_is_complete(tiny_data, tiny_table,
                                                                   tmp_path):
    """The process of an ingest task SIGKILLed once the first clip is written: Ray runs the task
    again; the table equals an uninterrupted run's, every row once, no temporary file left."""
    sources = [f"{tiny_data}/videos", f"{tiny_data}/train"]
    full_out, out = tiny_table, tmp_path / "out"
    with kill_worker_when("Map(", lambda: any((out / "frames").glob("*.parquet"))) as killed:
        s = run_ingest(sources, str(out), CFG, log=lambda _m: None)
    assert killed, "no task was killed"
    assert s["this_run"] == {"clips": len(os.listdir(f"{full_out}/frames")), "skipped": 0}
    t = _frames(str(out))
    assert t.equals(_frames(full_out)) and len(set(t.column("frame_id").to_pylist())) == t.num_rows
    assert not _hidden(out), "no temporary file left behind"


def test_out_with_other_settings_is_refused_unless_overwrite(ray_cluster, tiny_data, tmp_path):
    out = str(tmp_path / "out")
    src = [f"{tiny_data}/test"]
    run_ingest(src, out, CFG, log=lambda _m: None)
    other = dataclasses.replace(CFG, ingest=dataclasses.replace(CFG.ingest, delta=2))
    with pytest.raises(ConfigError, match="--overwrite"):
        run_ingest(src, out, other, log=lambda _m: None)
    over = dataclasses.replace(other, ingest=dataclasses.replace(other.ingest, overwrite=True))
    run_ingest(src, out, over, log=lambda _m: None)
    _check_references(_frames(out), 4, 2)


def test_missing_source_is_a_clear_error(ray_cluster, tmp_path):
    with pytest.raises(storage.StorageNotFoundError, match="nowhere"):
        run_ingest([str(tmp_path / "nowhere")], str(tmp_path / "o"), CFG, log=lambda _m: None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(storage.StorageNotFoundError, match="no videos"):
        run_ingest([str(tmp_path / "empty")], str(tmp_path / "o"), CFG, log=lambda _m: None)
