"""Helpers shared by the pipelines: output folders that resume, actor pools, progress."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

import torch

from bluref_ray import storage
from bluref_ray.config import ConfigError
from bluref_ray.storage import StorageConfig

#: of the CPU that a pipeline's actor pool leaves to its tasks (:func:`actor_pool`), what its
#: writing tasks ask for each (PNG encoding and a Parquet write per window: light next to
#: matching); its loading tasks ask for the rest, so that neither waits for the other
WRITE_CPUS = 0.25


def prepare_out(out: str, marker: str, want: dict, overwrite: bool, parts: tuple[str, ...],
                storage_cfg: StorageConfig, log: Callable[[str], None], what: str,
                hint: str = "use another --out, or --overwrite to replace it") -> None:
    """Make ``out`` ready for a run described by ``want``, keeping finished parts to resume.

    ``out/<marker>`` records ``want`` (settings hash and inputs). A folder holding a run of
    other settings is refused, unless ``overwrite``, which deletes ``parts`` first.

    Raises:
        ConfigError: ``out`` holds a run with other settings and ``overwrite`` is off.
    """
    marker_uri = storage.join(out, marker)
    if storage.exists(marker_uri, storage_cfg):
        have = json.loads(storage.read_text(marker_uri, storage_cfg))
        if have == want and not overwrite:
            gone = delete_leftovers(out, parts, storage_cfg)
            if gone:
                log(f"[{what}] resuming: deleted {gone} unfinished file(s) of the run before")
            return
        if have != want and not overwrite:
            changed = "; ".join(_changes(have, want))
            raise ConfigError(f"{out} holds a {what} run with other settings or inputs "
                              f"({changed}); {hint}")
    if overwrite:
        log(f"[{what}] --overwrite: deleting earlier results in {out}")
        for part in parts:
            storage.delete(storage.join(out, part), storage_cfg)
    storage.makedirs(out, storage_cfg)
    storage.write_text(marker_uri, json.dumps(want, indent=1), storage_cfg)


def _changes(have: dict, want: dict, prefix: str = "") -> list[str]:
    """``key: old there, new now`` for each key whose value differs, nested keys dotted."""
    found = []
    for k in sorted(set(have) | set(want)):
        a, b = have.get(k), want.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _changes(a, b, f"{prefix}{k}.")
        elif a != b:
            found.append(f"{prefix}{k}: {a} there, {b} now")
    return found


def delete_leftovers(out: str, parts: tuple[str, ...], storage_cfg: StorageConfig) -> int:
    """Delete the temporary files that writes cut short (a killed run, task or actor) left in
    ``out``'s ``parts``; for a folder only this run writes (:mod:`bluref_ray.writer`)."""
    return sum(storage.delete_temporaries(storage.join(out, p), storage_cfg) for p in parts)


def await_pool(section: str, ray_cfg, concurrency: int | None, cpus_per_actor: float,
               gpus_per_actor: float | None, log: Callable[[str], None] = print,
               loaders: bool = False) -> dict:
    """The cluster's resources for :func:`actor_pool`, once it holds what was asked for:
    ``concurrency`` actors' CPUs and GPUs (``gpus_per_actor`` > 0: GPUs explicitly asked for),
    and with ``loaders`` one CPU more for the loading tasks; else at least one CPU (a cluster
    whose workers scaled to zero). Waits for the autoscaler
    (:func:`bluref_ray.ray_utils.await_resources`).

    Raises:
        ClusterResourcesError: they did not arrive in time.
    """
    from bluref_ray.ray_utils import await_resources

    n, gpus = concurrency or 1, gpus_per_actor or 0.0
    if concurrency or gpus:
        extra = [{"CPU": 1.0}] if loaders else []
        return await_resources([{"CPU": cpus_per_actor, "GPU": gpus}] * n + extra,
                               f"{n} actor(s) × ({cpus_per_actor:g} CPU, {gpus:g} GPU)"
                               + (" + 1 CPU for loading" if loaders else ""),
                               section, ray_cfg, log)
    return await_resources([{"CPU": 1.0}], "an actor", section, ray_cfg, log)


def actor_pool(section: str, resources: dict, concurrency: int | None, cpus_per_actor: float,
               gpus_per_actor: float | None, loaders: bool = False,
               max_actors: int | None = None) -> tuple[float, int, float]:
    """GPUs per actor, number of actors and CPUs per actor of a stage's actor pool.

    Default: one actor per GPU; ``concurrency`` actors on fewer GPUs share them (a fraction each
    that packs onto whole GPUs; an explicit ``gpus_per_actor`` is kept). Without GPUs: with
    ``loaders`` (tasks that load data for the actors and write what they make), as many actors as
    fit while leaving one CPU to those tasks (they would starve otherwise, and the pipeline would
    stall), at least two on two CPUs or more (sharing the CPUs left: loading needs its CPU only
    now and then, and one actor of one thread would leave a core idle), and on a cluster of fewer
    than two CPUs one actor with half of them; without, one actor. Never more than
    ``max_actors``.

    Raises:
        ConfigError: the actors (and the loading tasks) do not fit the cluster; the message
            names ``section``.
    """
    n_gpus = int(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    gpus = gpus_per_actor if gpus_per_actor is not None else (1.0 if n_gpus else 0.0)
    per_actor = min(cpus_per_actor, cpus)
    if concurrency:
        n = concurrency
    elif gpus:
        n = max(1, int(n_gpus / gpus))
    elif loaders and cpus < 2:
        n, per_actor = 1, min(per_actor, cpus / 2)
    elif loaders:
        n = max(2, int((cpus - 1) // per_actor))
        n = min(n, max_actors or n)  # before the CPUs are shared out
        per_actor = min(per_actor, (cpus - 1) / n)
    else:
        n = 1
    n = max(1, min(n, max_actors or n))
    if gpus_per_actor is None and n_gpus and n > n_gpus:  # more actors than GPUs: share them
        gpus = 1.0 / math.ceil(n / n_gpus)
    loader = min(1.0, cpus / 2) if loaders else 0.0
    if n * per_actor > cpus - loader:
        raise ConfigError(
            f"{section}: {n} actors × {per_actor:g} CPU leave no CPU for loading frames on a "
            f"cluster of {cpus:g} CPUs; lower --concurrency or --cpus-per-actor" if loaders else
            f"{section}: {n} actors × {per_actor:g} CPU do not fit a cluster of {cpus:g} CPUs; "
            "lower --concurrency or --cpus-per-actor")
    if n * gpus > n_gpus + 1e-9:
        raise ConfigError(f"{section}: {n} actors × {gpus:g} GPU do not fit a cluster of "
                          f"{n_gpus} GPUs; lower --concurrency or --gpus-per-actor")
    return gpus, n, per_actor


#: memory each matching actor asks Ray for by default (GiB): its process with PyTorch, the
#: matcher and the check (1.2-1.3 GiB measured at 320×180 on a CPU) and one window's frames and
#: alignments
ACTOR_MEMORY_GIB = 2.0


def actor_memory(section: str, gib: float | None, resources: dict, n: int,
                 default: float = ACTOR_MEMORY_GIB) -> float:
    """Bytes of memory each of a pool's ``n`` actors asks Ray for, so that Ray places no more of
    them on a node than its memory holds: ``gib`` (``<section>.memory_per_actor``), or by default
    ``default`` GiB, at most half the cluster's ``memory`` resource shared out over the
    actors (so that a small cluster still schedules the pool). A request is for scheduling only:
    Ray does not cap what an actor uses.

    Raises:
        ConfigError: an explicit ``gib`` for ``n`` actors is more than the cluster's memory.
    """
    have = float(resources.get("memory", 0.0))
    if gib is None:
        want = default * 2**30
        return min(want, have / (2 * n)) if have else want
    if have and n * gib * 2**30 > have:
        raise ConfigError(f"{section}.memory_per_actor={gib:g}: {n} actors × {gib:g} GiB is more "
                          f"than the cluster's {have / 2**30:.1f} GiB of memory; lower it or "
                          "--concurrency")
    return gib * 2**30


def pool_strategy(size: int, max_size: int | None = None):
    """Ray Data's actor pool of ``size`` actors, or an elastic one from ``size`` up to
    ``max_size``: Ray Data adds actors while their input queues up, and their resource requests
    make an autoscaler add nodes for them."""
    import ray

    if max_size and max_size > size:
        return ray.data.ActorPoolStrategy(min_size=size, max_size=max_size)
    return ray.data.ActorPoolStrategy(size=size)


def pool_size(n: int, max_size: int | None) -> str:
    """``"2"`` or ``"2-8"`` actors, for log lines."""
    return f"{n}-{max_size}" if max_size and max_size > n else f"{n}"


def actor_setup() -> tuple[torch.device, int]:
    """For a Ray actor's constructor: the device Ray assigned it (its GPU, else the CPU) and its
    CPUs, to which the torch and OpenCV thread counts are set. Outside Ray: the CPU."""
    import cv2
    import ray

    try:
        gpus = ray.get_gpu_ids()
        cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    except AssertionError:  # not on a Ray worker (a plain loop, a test): the CPU, as it is
        gpus, cpus = [], torch.get_num_threads()
    device = torch.device("cuda" if gpus and torch.cuda.is_available() else "cpu")
    torch.set_num_threads(cpus)
    cv2.setNumThreads(cpus)
    return device, cpus


class Progress:
    """Progress lines of a long stage: at most one every ``every`` seconds (and one at the end),
    each with the items done of the total, the rate and an estimate of the time left.

    Example line: ``[pseudo-gt] 12/40 windows (30%), 0.41/s, 1m08s left; 96 pairs, 3 rejected``.
    """

    def __init__(self, what: str, total: int | None, unit: str,
                 log: Callable[[str], None], every: float = 5.0) -> None:
        self.what, self.total, self.unit, self.log, self.every = what, total, unit, log, every
        self.t0 = time.time()
        self.last = -math.inf
        self.done = 0

    @property
    def seconds(self) -> float:
        return time.time() - self.t0

    def update(self, status: str = "", note: str = "", n: int = 1) -> None:
        """Count ``n`` more items done; print a line if one is due. ``note`` (a warning about
        this item) is always printed."""
        self.done += n
        if note:
            self.log(f"[{self.what}]   ! {note}")
        now = time.time()
        last = self.total is not None and self.done >= self.total
        if now - self.last < self.every and not last:
            return
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        head = f"[{self.what}] {self.done}"
        if self.total:
            head += f"/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%)"
            left = max(0, self.total - self.done) / rate if rate > 0 else math.inf
            head += f", {rate:.2f}/s, {_duration(left)} left"
        else:
            head += f" {self.unit}, {rate:.2f}/s"
        self.log(head + (f"; {status}" if status else ""))


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (
        f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")
