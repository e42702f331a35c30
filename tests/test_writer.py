"""One writer per output folder: a second command on a folder being written is refused."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

from bluref_ray import storage
from bluref_ray.cli import main
from bluref_ray.writer import LOCK, OutputBusyError, _pid_namespace, exclusive_output


def _claim(out, pid: int, host: str | None = None, age_s: float = 0.0,
           pid_ns: str | None = None) -> None:
    storage.write_text(storage.join(str(out), LOCK), json.dumps({
        "owner": "other", "host": host or socket.gethostname(), "pid": pid,
        "pid_ns": _pid_namespace() if pid_ns is None else pid_ns,
        "command": "bluref ingest src", "started": time.time() - age_s,
        "heartbeat": time.time() - age_s}))


@pytest.fixture
def other_process():
    """A live process of this host, standing for another command."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.mark.faults
def test_a_second_writer_is_refused_until_the_first_ends(tmp_path):
    out = str(tmp_path / "out")
    with exclusive_output(out, command="bluref ingest a"):
        lock = json.loads((tmp_path / "out" / LOCK).read_text())
        assert lock["command"] == "bluref ingest a"
        _claim_copy = dict(lock)
        with exclusive_output(out):  # the same process, inside: allowed
            pass
        assert (tmp_path / "out" / LOCK).exists(), "the outer claim is kept"
    assert not (tmp_path / "out" / LOCK).exists()
    with exclusive_output(out):
        pass
    assert _claim_copy["pid"] > 0


@pytest.mark.faults
def test_a_live_writer_is_named_and_a_dead_one_is_taken_over(tmp_path, other_process):
    out = tmp_path / "out"
    _claim(out, other_process)
    with pytest.raises(OutputBusyError, match=rf"another command \(bluref ingest src; process "
                                              rf"{other_process} on"):
        with exclusive_output(str(out)):
            pass
    dead = subprocess.Popen(["true"])
    dead.wait()
    _claim(out, dead.pid)  # a killed command of this host: its folder is free at once
    with exclusive_output(str(out)):
        assert json.loads((out / LOCK).read_text())["owner"] != "other"
    _claim(out, dead.pid, pid_ns="pid:[1]")  # another container with this host name: its
    with pytest.raises(OutputBusyError):     # PIDs are not ours, only its heartbeat tells
        with exclusive_output(str(out), ttl_s=60):
            pass
    _claim(out, 1, host="elsewhere", age_s=10)  # alive on another machine
    with pytest.raises(OutputBusyError, match="on elsewhere"):
        with exclusive_output(str(out), ttl_s=60):
            pass
    _claim(out, 1, host="elsewhere", age_s=100)  # its heartbeat lapsed
    with exclusive_output(str(out), ttl_s=60):
        pass


@pytest.mark.faults
def test_the_heartbeat_keeps_a_long_claim_alive(tmp_path):
    out = str(tmp_path / "out")
    with exclusive_output(out, ttl_s=0.4):
        first = json.loads((tmp_path / "out" / LOCK).read_text())["heartbeat"]
        time.sleep(0.5)
        assert json.loads((tmp_path / "out" / LOCK).read_text())["heartbeat"] > first


@pytest.mark.faults
def test_two_writers_on_s3(s3_cfg, s3_bucket):
    out = f"{s3_bucket}/out"
    with exclusive_output(out, s3_cfg, command="bluref pseudo-gt x", settle_s=0.2):
        with pytest.raises(OutputBusyError, match="bluref pseudo-gt x"):
            # another process's claim: simulate by forgetting that this one holds it
            from bluref_ray import writer

            writer._held.discard(out)
            try:
                with exclusive_output(out, s3_cfg, settle_s=0.2):
                    pass
            finally:
                writer._held.add(out)
    assert not storage.exists(f"{out}/{LOCK}", s3_cfg)


@pytest.mark.faults
def test_a_command_on_a_busy_folder_exits_2_and_touches_nothing(tmp_path, other_process,
                                                                 capsys):
    out = tmp_path / "out"
    (out / "frames").mkdir(parents=True)
    (out / "frames" / "done.parquet").write_bytes(b"kept")
    _claim(out, other_process)
    assert main(["ingest", str(tmp_path / "src"), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{out} is being written by another command" in err and "Traceback" not in err
    assert (out / "frames" / "done.parquet").read_bytes() == b"kept"
    assert json.loads((out / LOCK).read_text())["owner"] == "other"


@pytest.mark.faults
def test_compacting_one_table_of_an_output_being_written_is_refused(tmp_path, other_process,
                                                                    capsys):
    """`bluref compact OUT/frames` waits for the job writing OUT, as `bluref compact OUT` does."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    (out / "frames").mkdir(parents=True)
    pq.write_table(pa.table({"x": [1]}), out / "frames" / "unit.parquet")
    _claim(out, other_process)
    assert main(["compact", str(out / "frames")]) == 2
    assert "is being written by another command (bluref ingest src" in capsys.readouterr().err
