"""`ray job submit` against a real two-node Ray cluster (`ray start`) with token authentication,
reading and writing S3 on SeaweedFS: the jobs' output equals a local run's."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.compute as pc
import pytest
from test_s3 import _comparable

from bluref_ray import schema, storage

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class TwoNodeCluster:
    """A head that schedules nothing (``--num-cpus=0``, as in cluster.yaml) and one worker node
    with 2 CPUs, each ``ray start --block`` in its own process group, with their own token.

    Nothing here runs ``ray stop``: that would stop every Ray cluster on the machine, the test
    session's own included. Each node's process group is killed instead."""

    def __init__(self, tmp: Path) -> None:
        from s3server import free_port

        self.token = uuid.uuid4().hex
        self.gcs, self.dashboard = free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        self.logs = tmp
        self.nodes: list[subprocess.Popen] = []
        self.address = f"http://127.0.0.1:{self.dashboard}"

    def _start(self, name: str, *args: str) -> None:
        log = open(self.logs / f"{name}.log", "w")
        self.nodes.append(subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    @staticmethod
    def _node_ports() -> list[str]:
        from s3server import free_port

        return [f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}"]

    def start(self, timeout_s: float = 90) -> None:
        # Ports of their own (the test session's cluster holds the defaults) and, for each node,
        # its own temporary folder: nodes sharing one would delete each other's job packages.
        self._start("head", "--head", f"--port={self.gcs}", "--num-cpus=0",
                    f"--dashboard-port={self.dashboard}", "--dashboard-host=127.0.0.1",
                    "--include-dashboard=true", f"--temp-dir=/tmp/ray-mn-{self.token[:8]}",
                    *self._node_ports())
        self._start("worker", f"--address=127.0.0.1:{self.gcs}", "--num-cpus=2",
                    f"--temp-dir=/tmp/ray-mn-{self.token[:8]}-w", *self._node_ports())
        probe = ("import ray; ray.init(address='127.0.0.1:%d', logging_level='ERROR'); "
                 "print(sum(n['Alive'] for n in ray.nodes()))" % self.gcs)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            assert all(p.poll() is None for p in self.nodes), self.log_tail()
            r = subprocess.run([sys.executable, "-c", probe], env=self.env, capture_output=True,
                               text=True, timeout=60)
            if r.returncode == 0 and r.stdout.strip().endswith("2"):
                return
            time.sleep(1)
        raise AssertionError(f"two nodes not up in {timeout_s}s\n{self.log_tail()}")

    def submit(self, script: str, *args: str, env_vars: dict[str, str],
               token: str | None = None) -> subprocess.CompletedProcess:
        """``ray job submit --working-dir . -- python jobs/SCRIPT ARGS``, following the logs."""
        runtime_env = json.dumps({"env_vars": env_vars})
        deadline = time.time() + 60
        while True:  # the head's job agent comes up some seconds after the head
            r = subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--address", self.address, "--working-dir",
                 str(ROOT), "--runtime-env-json", runtime_env, "--",
                 sys.executable, f"jobs/{script}", *args],
                env={**self.env, "RAY_AUTH_TOKEN": token or self.token}, capture_output=True,
                text=True, timeout=600)
            if "No available agent to submit job" not in r.stderr or time.time() > deadline:
                return r
            time.sleep(1)

    def log_tail(self) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text()[-2000:]}" for f in self.logs.glob("*.log"))

    def stop(self) -> None:
        for p in self.nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.time() + 5
        for p in self.nodes:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for suffix in ("", "-w"):
            shutil.rmtree(f"/tmp/ray-mn-{self.token[:8]}{suffix}", ignore_errors=True)


@pytest.fixture
def two_nodes(tmp_path):
    cluster = TwoNodeCluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _upload(local: str, uri: str, cfg) -> None:
    for path in sorted(Path(local).rglob("*")):
        if path.is_file():
            storage.write_bytes(f"{uri}/{path.relative_to(local).as_posix()}", path.read_bytes(),
                                cfg)


def test_ray_job_submit_on_two_nodes_matches_a_local_run(two_nodes, s3_server, s3_cfg, s3_bucket,
                                                        tiny_data, tiny_frames, tiny_pairs):
    """Ingest and pseudo-GT submitted as jobs (settings of the local fixtures) give the same
    tables as those fixtures' in-process runs; a client without the token is refused."""
    data = f"{s3_bucket}/data"
    _upload(f"{tiny_data}/train", f"{data}/train", s3_cfg)
    env = s3_server.env()

    denied = two_nodes.submit("ingest.py", f"{data}/train", "--out", f"{s3_bucket}/x",
                              env_vars=env, token="not-the-token")
    assert denied.returncode != 0 and "AuthenticationError" in denied.stdout + denied.stderr

    r = two_nodes.submit("ingest.py", f"{data}/train", "--out", f"{s3_bucket}/ingest",
                         "--max-refs", "4", "--delta", "4", env_vars=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + two_nodes.log_tail()
    assert "ingested 2 clips" in r.stdout and "succeeded" in r.stdout
    on_s3 = schema.read_table(f"{s3_bucket}/ingest/frames", schema.FRAMES, s3_cfg)
    local = schema.read_table(f"{tiny_frames}/frames", schema.FRAMES)
    assert on_s3.num_rows == local.num_rows > 0
    assert _comparable(on_s3, data).equals(_comparable(local, tiny_data))

    r = two_nodes.submit("pseudo_gt.py", f"{s3_bucket}/ingest", "--out", f"{s3_bucket}/pgt",
                         "--max-refs", "2", "--concurrency", "1", "--limit", "6", env_vars=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + two_nodes.log_tail()
    cols = ["row_id", "frame_id", "refs_used", "coverage", "pseudo_png", "confidence_png"]
    on_s3 = schema.read_table(f"{s3_bucket}/pgt/shards", schema.PSEUDO_PAIRS, s3_cfg, cols)
    local = schema.read_table(f"{tiny_pairs}/shards", schema.PSEUDO_PAIRS, columns=cols)
    assert on_s3.num_rows == local.num_rows == 12  # 6 per clip (--limit), 2 clips
    on_s3, local = (t.sort_by("row_id") for t in (on_s3, local))
    assert on_s3.select(cols[:3]).equals(local.select(cols[:3]))
    assert pc.max(pc.abs(pc.subtract(on_s3["coverage"], local["coverage"]))).as_py() < 1e-6
    assert on_s3["pseudo_png"].equals(local["pseudo_png"])
