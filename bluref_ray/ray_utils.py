"""Starting or joining Ray, the same way from the CLI, from jobs/ and from tests."""

from __future__ import annotations

import logging
import os
import sys

from bluref_ray.config import RayConfig


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
        address = cfg.address or os.environ.get("RAY_ADDRESS")
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
