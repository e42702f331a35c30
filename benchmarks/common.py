"""Shared by the benchmarks: peak memory and CPU use of a process tree (Ray's workers too)."""

from __future__ import annotations

import threading
import time

import psutil


def _memory(p: psutil.Process) -> int:
    """PSS where the OS gives it (shared pages split between the processes that map them, so
    Ray's object store is not counted once per worker), else RSS."""
    try:
        return p.memory_full_info().pss
    except (AttributeError, psutil.AccessDenied):
        return p.memory_info().rss


class Usage:
    """Peak summed memory (PSS), and CPU seconds, of this process and all its descendants."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._cpu: dict[int, float] = {}

    def _sample(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += _memory(p)
                t = p.cpu_times()
                self._cpu[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return total

    def __enter__(self) -> Usage:
        self.base = self._sample()
        self._cpu0 = dict(self._cpu)
        self.peak = self.base
        self.t0 = time.perf_counter()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._sample())
        self.wall = time.perf_counter() - self.t0
        self.cpu = sum(v - self._cpu0.get(pid, 0.0) for pid, v in self._cpu.items())

    @property
    def cores(self) -> float:
        """Average number of cores kept busy (CPU seconds / wall seconds)."""
        return self.cpu / self.wall


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
