"""One writer per output folder: a second command started on a folder that another is writing
is refused, so two jobs never mix their results in one place.

The writer holds ``OUT/_writer.json`` (who: host, process, command; and a heartbeat that a
background thread renews every ``ttl_s / 4`` seconds) and deletes it when it ends. Another
command finds it and stops with a message that names the writer, unless the writer is gone: its
heartbeat is older than ``ttl_s``, or it was a process of this host that no longer runs (a killed
command, started again on the same machine, goes on at once).

Taking the folder is atomic on local disks (the file is created exclusively). On S3 the claim is
written, then read back after ``settle_s``: of two commands that claim a free folder at the same
moment, the one whose claim was overwritten sees the other's and stops (S3 reads are strongly
consistent).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator

from bluref_ray import storage
from bluref_ray.config.core import ConfigError
from bluref_ray.storage import StorageConfig

LOCK = "_writer.json"
TTL_S = 120.0
_held: set[str] = set()  # folders this process holds (a command that runs another inside)


class OutputBusyError(ConfigError):
    """Another command is writing the output folder; the message names it."""


def _read(uri: str, cfg: StorageConfig | None) -> dict | None:
    try:
        return json.loads(storage.read_text(uri, cfg))
    except (storage.StorageNotFoundError, ValueError):
        return None  # none, or half-written by a writer killed mid-write: not a live claim


def _pid_namespace() -> str:
    """Which processes a PID names here: containers that share a host name (Docker with the
    host's network) each have their own PIDs ("" where the system does not say)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _gone(other: dict, ttl_s: float) -> bool:
    if time.time() - float(other.get("heartbeat", 0)) > ttl_s:
        return True
    if other.get("host") == socket.gethostname() and other.get("pid_ns") == _pid_namespace():
        try:
            os.kill(int(other.get("pid", 0)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, OverflowError):
            return False
    return False


def _busy(out: str, other: dict, ttl_s: float) -> OutputBusyError:
    seen = time.time() - float(other.get("heartbeat", 0))
    return OutputBusyError(
        f"{out} is being written by another command ({other.get('command', '?')}; process "
        f"{other.get('pid')} on {other.get('host')}, since "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(other.get('started', 0)))}, last "
        f"seen {seen:.0f} s ago). Wait for it to end, stop it, or use another --out; if it died "
        f"on another machine, its claim ({storage.join(out, LOCK)}) lapses {ttl_s:g} s after "
        "its last heartbeat")


def _claim_local(uri: str, me: dict) -> bool:
    """Create ``uri`` exclusively, whole: the claim is written to a file of its own first and
    linked to ``uri`` (an empty file created first could be read by a second command as no
    claim, and replaced, while the first writes into it); False if ``uri`` exists."""
    path = storage.resolve(uri)[1]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mine = f"{path}.{me['owner']}"
    with open(mine, "w") as f:
        json.dump(me, f)
    try:
        os.link(mine, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: create exclusively, then fill
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return True
    finally:
        os.remove(mine)


@contextlib.contextmanager
def exclusive_output(out: str, cfg: StorageConfig | None = None, command: str = "",
                     ttl_s: float = TTL_S, settle_s: float = 1.0) -> Iterator[None]:
    """Hold the output folder ``out`` while the block runs.

    Raises:
        OutputBusyError: another command holds it and is alive.
    """
    out = storage.normalize(out)
    if out in _held:
        yield
        return
    storage.check_reachable(out, cfg)  # a wrong endpoint fails at once, not after retries
    uri = storage.join(out, LOCK)
    me = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
          "pid_ns": _pid_namespace(),
          "command": command or " ".join(sys.argv[:6]), "started": time.time(),
          "heartbeat": time.time()}
    local = not storage.is_s3(out)
    if not (local and _claim_local(uri, me)):
        other = _read(uri, cfg)
        if other is not None and not _gone(other, ttl_s):
            raise _busy(out, other, ttl_s)
        storage.write_text(uri, json.dumps(me), cfg)  # a free or lapsed claim: take it
        time.sleep(settle_s if not local else min(settle_s, 0.2))
        now = _read(uri, cfg)
        if now is None or now.get("owner") != me["owner"]:
            raise _busy(out, now or {}, ttl_s)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(ttl_s / 4):
            me["heartbeat"] = time.time()
            with contextlib.suppress(Exception):  # a missed beat only shortens the claim
                now = _read(uri, cfg)
                if now is not None and now.get("owner") != me["owner"]:
                    # our claim lapsed (a stall past the TTL) and another command took it:
                    # never write over its claim; say so once
                    print(f"bluref: warning: {out} was taken over by "
                          f"{now.get('command', 'another command')} (pid {now.get('pid')} on "
                          f"{now.get('host')}) after this command stalled for over "
                          f"{ttl_s:.0f} s; both now write there", file=sys.stderr, flush=True)
                    return
                storage.write_text(uri, json.dumps(me), cfg)

    thread = threading.Thread(target=beat, name="bluref-writer-heartbeat", daemon=True)
    thread.start()
    _held.add(out)
    try:
        yield
    finally:
        _held.discard(out)
        stop.set()
        thread.join(timeout=5)
        once = dataclasses.replace(cfg or storage.DEFAULT, outage_s=0)  # no retries on the way out
        with contextlib.suppress(Exception):
            if (_read(uri, once) or {}).get("owner") == me["owner"]:
                storage.delete(uri, once)
