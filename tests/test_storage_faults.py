"""Object storage that goes away mid-job: back within ``storage.outage_s``, the job goes on and
ends with the full output; gone for good, the job stops with one error that names the endpoint,
and what it wrote is intact and resumable. A SeaweedFS server of its own is stopped (process
gone, connections refused) and started again on the same endpoint with its data."""

from __future__ import annotations

import dataclasses
import os
import threading
import time

import pytest
from conftest import TINY_PAIRS, TINY_TABLE

from bluref_ray import schema, storage
from bluref_ray.config import Config, RayConfig
from bluref_ray.pipeline.ingest import run_ingest
from bluref_ray.storage import StorageConfig, StorageUnreachableError

CFG = Config(ray=RayConfig(progress_bars=False), ingest=TINY_TABLE)


def _frames(out: str, cfg: StorageConfig | None = None):
    return schema.sort_frames(schema.read_table(f"{out}/frames", schema.FRAMES, cfg))


def _content(frames):
    """A frames table without the sources' paths (local here, on S3 there)."""
    return frames.drop_columns(["source_uri", "gt_uri"])


def _outage_after_first(server, folder: str, cfg: StorageConfig, seconds: float | None,
                        log: list[str]) -> threading.Thread:
    """Stop the server once ``folder`` holds a file (log: how many); start it again after
    ``seconds`` (None: leave it down)."""

    def run() -> None:
        deadline, files = time.time() + 120, []
        while time.time() < deadline and not files:
            files = storage.list_files(folder, cfg) if storage.exists(folder, cfg) else []
            time.sleep(0.05)
        server.pause()
        log.append(f"stopped with {len(files)} file(s) written")
        if seconds is not None:
            time.sleep(seconds)
            server.resume()
            log.append("started")

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def own_s3(tmp_path_factory):
    """A SeaweedFS server of this module's own (its tests stop and start it) and its settings:
    short connection timeouts, the default 60 s outage window."""
    from s3server import SeaweedS3

    with SeaweedS3(str(tmp_path_factory.mktemp("weed-faults"))) as server:
        cfg = StorageConfig(endpoint_url=server.endpoint_url, access_key=server.access_key,
                            secret_key=server.secret_key, region="us-east-1",
                            connect_timeout_s=1, max_attempts=2, outage_s=60)
        storage.makedirs("s3://faults", cfg)
        yield server, cfg


@pytest.mark.faults
def test_ingest_outlasts_an_s3_restart_and_stops_cleanly_when_it_stays_down(own_s3, tiny_data,
                                                                           tiny_table):
    """Sources (videos, read as streams, and frame trees) and output on S3; the table of an
    uninterrupted local run is ``tiny_table``."""
    full = _content(_frames(tiny_table))
    server, s3 = own_s3
    for root, _, files in os.walk(tiny_data):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), tiny_data)
            if rel.startswith(("videos", "train")):
                storage.upload_file(os.path.join(root, name), f"s3://faults/src/{rel}", s3)
    sources = ["s3://faults/src/videos", "s3://faults/src/train"]
    cfg = dataclasses.replace(CFG, storage=s3)

    # back within the retry window: the job goes on and ends complete
    events: list[str] = []
    out = "s3://faults/restarted"
    watcher = _outage_after_first(server, f"{out}/frames", s3, 1.0, events)
    s = run_ingest(sources, out, cfg, log=lambda _m: None)
    watcher.join()
    assert len(events) == 2 and _written(events[0]) < s["clips"], events
    assert s["this_run"]["clips"] == s["clips"]
    assert _content(_frames(out, s3)).equals(full)

    # down for good: one error naming the endpoint; what was written stays, and resumes
    out = "s3://faults/down"
    short = dataclasses.replace(cfg, storage=dataclasses.replace(s3, outage_s=3))
    watcher = _outage_after_first(server, f"{out}/frames", s3, None, events)
    t0 = time.time()
    with pytest.raises(StorageUnreachableError) as e:
        run_ingest(sources, out, short, log=lambda _m: None)
    watcher.join()
    assert server.endpoint_url in str(e.value) and "storage.outage_s" in str(e.value)
    assert "Traceback" not in str(e.value) and time.time() - t0 < 90
    server.resume()
    done = storage.list_files(f"{out}/frames", s3)
    assert done, "the clips finished before the outage are kept"
    s = run_ingest(sources, out, short, log=lambda _m: None)
    assert s["this_run"]["skipped"] == len(done)
    assert _content(_frames(out, s3)).equals(full)


def _written(event: str) -> int:
    return int(event.split()[2])


@pytest.mark.faults
def test_pseudo_gt_and_deblur_outlast_an_s3_restart(ray_cluster, own_s3, tiny_frames,
                                                    tiny_pairs, tiny_data, tmp_path):
    """S3 stopped once the first shard (pseudo-GT: frames table and shards on S3) or the first
    image (deblur: outputs on S3) is written, started again 1 s later: both jobs end with the
    output of an uninterrupted local run (pseudo-GT: ``tiny_pairs``, in fewer shards), row for
    row and byte for byte."""
    from bluref_ray.config import DeblurConfig
    from bluref_ray.models import PRESETS, build_model, save_checkpoint
    from bluref_ray.pipeline.deblur import run_deblur
    from bluref_ray.pipeline.pseudo_gt import run_pseudo_gt

    server, s3 = own_s3
    pg = Config(ray=RayConfig(progress_bars=False),
                pseudo_gt=dataclasses.replace(TINY_PAIRS, targets_per_shard=2))
    for name in os.listdir(f"{tiny_frames}/frames"):
        storage.upload_file(f"{tiny_frames}/frames/{name}", f"s3://faults/frames/frames/{name}", s3)
    events: list[str] = []
    watcher = _outage_after_first(server, "s3://faults/pg/shards", s3, 1.0, events)
    s = run_pseudo_gt("s3://faults/frames", "s3://faults/pg", dataclasses.replace(pg, storage=s3),
                      log=lambda _m: None)
    watcher.join()
    assert len(events) == 2 and _written(events[0]) < s.this_run.shards, events
    got = schema.read_table("s3://faults/pg/shards", schema.PSEUDO_PAIRS, s3).sort_by("row_id")
    want = schema.read_table(f"{tiny_pairs}/shards", schema.PSEUDO_PAIRS)
    assert got.equals(want.sort_by("row_id"))

    arch, kwargs = PRESETS["nafnet-tiny"]
    ckpt = str(tmp_path / "model.pt")
    save_checkpoint(build_model(arch, **kwargs), ckpt, arch, kwargs)
    src = f"{tiny_data}/train/clip_0000/blur"
    db = Config(ray=RayConfig(progress_bars=False),
                deblur=DeblurConfig(tile=32, tile_overlap=8, batch_size=1))
    run_deblur(ckpt, [src], str(tmp_path / "db"), db, log=lambda _m: None)
    events.clear()
    watcher = _outage_after_first(server, "s3://faults/db", s3, 1.0, events)
    d = run_deblur(ckpt, [src], "s3://faults/db", dataclasses.replace(db, storage=s3),
                   log=lambda _m: None)
    watcher.join()
    assert len(events) == 2 and _written(events[0]) < d["files"], events
    assert d["failed"] == [] and d["done"] == d["files"]
    for name in os.listdir(tmp_path / "db"):
        if name.endswith(".png"):
            local = (tmp_path / "db" / name).read_bytes()
            assert storage.read_bytes(f"s3://faults/db/{name}", s3) == local, name


@pytest.mark.faults
def test_a_read_only_output_location_is_one_clear_error_and_nothing_is_lost(
        ray_cluster, s3_server, s3_cfg, s3_bucket, tiny_data, capsys):
    """Keys that may read but not write: the command stops at once with one line naming the
    output and the refusal, exit code 2, and what the folder held stays as it was."""
    from bluref_ray.cli import main

    out = f"{s3_bucket}/ingest"
    src = [f"{tiny_data}/test"]
    run_ingest(src, out, dataclasses.replace(CFG, storage=s3_cfg), log=lambda _m: None)
    before = {f: storage.read_bytes(f, s3_cfg) for f in storage.list_files(out, s3_cfg)}
    capsys.readouterr()
    rc = main(["ingest", *src, "--out", out, "--max-refs", "4", "--delta", "5", "--overwrite",
               "--endpoint-url", s3_server.endpoint_url, "--access-key",
               s3_server.read_only_key, "--secret-key", s3_server.read_only_secret,
               "--region", "us-east-1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"write {out}/" in err and "access denied" in err and "Traceback" not in err
    assert {f: storage.read_bytes(f, s3_cfg) for f in storage.list_files(out, s3_cfg)} == before


@pytest.mark.faults
def test_a_full_output_location_is_one_clear_error_and_the_run_resumes(tiny_data, tmp_path):
    """Writes that the file system refuses (a file size limit: EFBIG, the path a full disk's
    ENOSPC takes too) stop `bluref eval` with one line naming the file; the same evaluation,
    once there is room, finishes with the results of an uninterrupted run."""
    import resource
    import subprocess
    import sys

    from bluref_ray.config import Config
    from bluref_ray.evaluation import evaluate
    from bluref_ray.models import PRESETS, build_model, save_checkpoint

    arch, kwargs = PRESETS["nafnet-tiny"]
    ckpt = str(tmp_path / "model.pt")
    save_checkpoint(build_model(arch, **kwargs), ckpt, arch, kwargs)
    data, out = f"{tiny_data}/test", tmp_path / "out"
    evaluate({"m": ckpt}, [data], str(tmp_path / "full"), Config(), max_frames=8,
             log=lambda _m: None)
    command = [sys.executable, "-m", "bluref_ray.cli", "eval", data, "--model", f"m={ckpt}",
               "--max-frames", "8", "--out", str(out), "--quiet"]

    def small_files() -> None:  # in the child: files up to 32 KiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 << 10, 32 << 10))

    full = subprocess.run(command, capture_output=True, text=True, preexec_fn=small_files)
    assert full.returncode == 2, full.stderr[-2000:]
    lines = full.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "File too large" in lines[0], lines
    assert not [n for _, _, fs in os.walk(out) for n in fs if n.startswith(".")]
    evaluate({"m": ckpt}, [data], str(out), Config(), max_frames=8, log=lambda _m: None)  # room
    assert (out / "eval.json").read_text() == (tmp_path / "full" / "eval.json").read_text()
