"""Object storage that goes away mid-job: back within ``storage.outage_s``, the job goes on and
ends with the full output; gone for good, the job stops with one error that names the endpoint,
and what it wrote is intact and resumable. A SeaweedFS server of its own is stopped (process
gone, connections refused) and started again on the same endpoint with its data."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from bluref_ray import schema, storage
from bluref_ray.config import Config, IngestConfig, RayConfig
from bluref_ray.pipeline.ingest import run_ingest
from bluref_ray.storage import StorageConfig, StorageUnreachableError

CFG = Config(ray=RayConfig(progress_bars=False), ingest=IngestConfig(max_refs=4, delta=5))


def _frames(out: str, cfg: StorageConfig | None = None):
    return schema.sort_frames(schema.read_table(f"{out}/frames", schema.FRAMES, cfg))


def _outage_after_first_clip(server, out: str, cfg: StorageConfig, seconds: float | None,
                             log: list[str]) -> threading.Thread:
    """Stop the server once ``out`` holds a frames file; start it again after ``seconds``
    (None: leave it down)."""

    def run() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            if storage.exists(f"{out}/frames", cfg) and storage.list_files(f"{out}/frames", cfg):
                break
            time.sleep(0.1)
        server.pause()
        log.append(f"stopped at {time.time():.1f}")
        if seconds is not None:
            time.sleep(seconds)
            server.resume()
            log.append(f"started at {time.time():.1f}")

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_ingest_outlasts_an_s3_restart_and_stops_cleanly_when_it_stays_down(ray_cluster,
                                                                           tiny_data,
                                                                           tmp_path):
    from s3server import SeaweedS3

    sources = [f"{tiny_data}/videos", f"{tiny_data}/train"]
    run_ingest(sources, str(tmp_path / "local"), CFG, log=lambda _m: None)
    full = _frames(str(tmp_path / "local"))
    with SeaweedS3(str(tmp_path / "weed")) as server:
        s3 = StorageConfig(endpoint_url=server.endpoint_url, access_key=server.access_key,
                           secret_key=server.secret_key, region="us-east-1",
                           connect_timeout_s=1, max_attempts=2, outage_s=60)
        storage.makedirs("s3://faults", s3)
        cfg = dataclasses.replace(CFG, storage=s3)

        # back within the retry window: the job goes on and ends complete
        events: list[str] = []
        out = "s3://faults/restarted"
        watcher = _outage_after_first_clip(server, out, s3, 4.0, events)
        s = run_ingest(sources, out, cfg, log=lambda _m: None)
        watcher.join()
        assert len(events) == 2, events
        assert s["this_run"]["clips"] == s["clips"]
        assert _frames(out, s3).equals(full)

        # down for good: one error naming the endpoint; what was written stays, and resumes
        out = "s3://faults/down"
        short = dataclasses.replace(cfg, storage=dataclasses.replace(s3, outage_s=3))
        watcher = _outage_after_first_clip(server, out, s3, None, events)
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
        assert _frames(out, s3).equals(full)
