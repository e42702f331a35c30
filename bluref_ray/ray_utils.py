"""Starting or joining Ray, the same way from the CLI, from jobs/ and from tests."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator

from bluref_ray.config import ConfigError, RayConfig

#: How long a command waits for resources on a cluster it joined, unless told otherwise.
JOINED_RESOURCE_TIMEOUT_S = 900.0
_in_process = False  # whether this process started Ray itself (a cluster that cannot grow)


class ClusterResourcesError(ConfigError):
    """The cluster did not get the resources a command asks for within the time allowed."""


def init_ray(cfg: RayConfig) -> None:
    """Join the cluster at ``cfg.address`` or ``$RAY_ADDRESS``, else start Ray in-process.

    Does nothing if Ray is already initialised in this process (tests share one cluster).
    """
    import ray
    from ray.data import DataContext

    # Ray Train would send each print of a training worker to the driver twice (once as
    # output, once through its logger); the processes of an in-process Ray inherit this.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if cfg.quiet:
        for name in ("ray", "ray.data", "ray.train", "ray.tune"):
            logging.getLogger(name).setLevel(logging.ERROR)
    level = logging.ERROR if cfg.quiet else logging.WARNING
    if not ray.is_initialized():
        global _in_process
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        _in_process = not address
        if address:
            ray.init(address=address, logging_level=level, log_to_driver=not cfg.quiet)
        else:
            # The dashboard also serves the State API, which Ray Train uses to clean up the
            # resources of a run whose driver was killed.
            ray.init(num_cpus=cfg.num_cpus, include_dashboard=True, logging_level=level,
                     log_to_driver=not cfg.quiet)
    terminal = sys.stderr.isatty()
    if not terminal:  # a log file or `ray job logs`: no colour codes around workers' lines
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    bars = terminal if cfg.progress_bars is None else cfg.progress_bars
    ctx = DataContext.get_current()
    # columns of Python objects (a typed window between two stages) travel pickled, silently
    ctx.enable_fallback_to_arrow_object_ext_type = True
    if cfg.quiet:
        bars = False
    ctx.enable_progress_bars = bars
    ctx.print_on_execution_start = bars


def user_error(e: BaseException) -> BaseException | None:
    """The user's error (a :class:`~bluref_ray.config.ConfigError` or
    :class:`~bluref_ray.storage.StorageError`, whose message says what to do) that a Ray task
    raised, from the error Ray or Ray Data raised on the driver (which wraps it with the
    task's traceback); None if there is none."""
    from bluref_ray.storage import StorageError

    first, seen = e, set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(cause, (ConfigError, StorageError)):
            return cause
        if isinstance(e, (ConfigError, StorageError)) and type(e).__module__.startswith(
                "bluref_ray"):
            return e
        e = cause or e.__cause__ or e.__context__
    return _from_traceback_text(str(first)) if first is not None else None


_RAISED = re.compile(r"^\s*(bluref_ray(?:\.\w+)+)\.(\w+Error): (.+)$", re.M)


def _from_traceback_text(text: str) -> BaseException | None:
    """The user's error named in a remote traceback's text: Ray Data wraps a task's exception in
    its own, and only the text of the original (not the object) crosses to the driver."""
    import importlib

    from bluref_ray.storage import StorageError

    for module, name, message in _RAISED.findall(text):
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(cls, type) and issubclass(cls, (ConfigError, StorageError)):
            return cls(message.strip())
    return None


def iter_rows(ds) -> Iterator[dict]:
    """``ds.iter_rows()``; a user's error raised in a task (storage gone, a bad table) comes out
    as itself, so the command prints its one line instead of Ray's wrapped traceback."""
    try:
        yield from ds.iter_rows()
    except Exception as e:
        cause = user_error(e)
        if cause is not None and cause is not e:
            raise cause from None
        raise


def _fmt(resources: dict) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(resources.items())) or "nothing"


def await_resources(bundles: list[dict[str, float]], what: str, section: str, cfg: RayConfig,
                    log: Callable[[str], None] = print, poll_s: float = 2.0,
                    report_every_s: float = 30.0) -> dict:
    """Wait until the cluster holds ``bundles`` (in total); return its resources then.

    A cluster that scales (the launcher's autoscaler, KubeRay's) may have no GPU node, or no
    worker at all, when a job starts. Deciding from that snapshot would run on CPUs, or fail,
    when GPUs were asked for. Instead the autoscaler is asked for the bundles
    (``ray.autoscaler.sdk.request_resources``, withdrawn when this returns), a line says what is
    awaited (and again every ``report_every_s``), and after ``ray.resource_timeout_s`` (default:
    900 s on a joined cluster, 0 in-process) the wait ends with an error.

    Raises:
        ClusterResourcesError: the resources did not arrive in time; the message says what is
            missing and which settings change it.
    """
    import ray

    need: Counter = Counter()
    for b in bundles:
        need.update({k: v for k, v in b.items() if v})

    def missing(have: dict) -> dict:
        return {k: v for k, v in need.items() if have.get(k, 0) + 1e-9 < v}

    have = ray.cluster_resources()
    if not missing(have):
        return have
    timeout = cfg.resource_timeout_s
    if timeout is None:
        # Ray workers (a Tune trial, an actor) run on a cluster they joined: they wait too.
        timeout = 0.0 if _in_process else JOINED_RESOURCE_TIMEOUT_S
    short = {k: have.get(k, 0) for k in need}
    if timeout > 0:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[{k: v for k, v in b.items() if v} for b in bundles])
        log(f"[{section}] waiting for {_fmt(dict(need))} ({what}); the cluster has "
            f"{_fmt(short)} now; asked the autoscaler for them, waiting up to {timeout:g} s "
            "(ray.resource_timeout_s)")
    t0 = last = time.time()
    try:
        while missing(have) and time.time() - t0 < timeout:
            time.sleep(min(poll_s, max(0.0, timeout - (time.time() - t0))))
            have = ray.cluster_resources()
            if time.time() - last >= report_every_s and missing(have):
                last = time.time()
                log(f"[{section}] still waiting for {_fmt(missing(have))} after "
                    f"{last - t0:.0f} s")
    finally:
        if timeout > 0:
            request_resources(bundles=[])
    lacking = missing(have)
    if lacking:
        waited = f"waited {timeout:g} s; " if timeout > 0 else ""
        raise ClusterResourcesError(
            f"{section}: {what} need {_fmt(dict(need))}; the cluster has "
            f"{_fmt({k: have.get(k, 0) for k in need})} ({waited}short of {_fmt(lacking)}). "
            "Lower the workers or actors asked for, give the cluster nodes with these resources, "
            "or wait longer (ray.resource_timeout_s)")
    if timeout > 0:
        log(f"[{section}] {_fmt(dict(need))} available after {time.time() - t0:.0f} s")
    return have
