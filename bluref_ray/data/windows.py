"""Clip windows for pseudo-GT: blurry frames with their references, each frame decoded once.

The blurry frames of a clip are cut into windows of consecutive frames (one window = one output
shard). :func:`load_windows` walks a clip's windows in order and loads every frame a window needs
(its blurry frames and their references) exactly once: a video is decoded front to back a single
time, image files are read once, and a frame stays in memory only until the last window that uses
it. Each window comes out as a :class:`Window` and a pool of its distinct frames
``[F, H, W, 3]``: each :class:`BlurryFrame` holds the pool index of its pixels and of its
references' pixels. Frames that cannot be used come out as :class:`Reject` with the reason: a
blurry frame that cannot be read, or whose references are all missing, unreadable or of another
size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from bluref_ray import storage
from bluref_ray.data.images import ImageError, decode_image
from bluref_ray.data.video import VideoError, decode_frames
from bluref_ray.storage import StorageConfig


@dataclass
class BlurryFrame:
    """A blurry frame and its references (frame ids, nearest first).

    Once its window is loaded, ``pool`` and ``refs`` index the pixels of the frame and of its
    usable references in the window's frame pool; ``ref_ids`` then names those references, and
    ``dropped`` says why the others were left out.
    """

    frame_id: str
    frame_index: int
    source_uri: str
    gt_uri: str | None
    ref_ids: list[str]
    pool: int = -1
    refs: list[int] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


@dataclass
class Reject:
    """A blurry frame that gets no pseudo-pair, and why."""

    frame_id: str
    frame_index: int
    source_uri: str
    reason: str

    def row(self) -> dict:
        """The row of :data:`bluref_ray.schema.PSEUDO_REJECTS`, without the clip id."""
        return asdict(self)


@dataclass
class Window:
    """Consecutive blurry frames of one clip: the unit of work, written as one shard."""

    clip_id: str
    index: int
    frames: list[BlurryFrame] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    protocol: str = "camera"  #: the clip's reference protocol (``ingest.protocol``)

    @property
    def name(self) -> str:
        """The name of the window's shard."""
        return f"{self.clip_id}-{self.index:05d}"

    def frame_ids(self) -> list[str]:
        ids = []
        for f in self.frames:
            ids += [f.frame_id, *f.ref_ids]
        return list(dict.fromkeys(ids))


def plan_windows(clip_rows: list[dict], frames_per_window: int, max_refs: int,
                 limit: int | None = None, delta: int | None = None) -> list[Window]:
    """Cut one clip's blurry frames (frames-table rows) into windows, in frame order.

    Each blurry frame keeps its first ``max_refs`` references (ingest lists them nearest
    first), only those within ``±delta`` frames if ``delta`` is given.
    """
    blurry = sorted((r for r in clip_rows if r["role"] == "blurry"),
                    key=lambda r: r["frame_index"])
    index = {r["frame_id"]: r["frame_index"] for r in clip_rows}
    if limit is not None:
        blurry = blurry[:limit]
    windows = []
    for k in range(0, len(blurry), frames_per_window):
        w = Window(blurry[0]["clip_id"], k // frames_per_window,
                   protocol=blurry[0].get("protocol") or "camera")
        for r in blurry[k:k + frames_per_window]:
            refs = [f for f in r["references"] if delta is None or f not in index
                    or abs(index[f] - r["frame_index"]) <= delta]
            w.frames.append(BlurryFrame(r["frame_id"], r["frame_index"], r["source_uri"],
                                        r.get("gt_uri"), refs[:max_refs]))
        windows.append(w)
    return windows


class ClipFrames:
    """Loads a clip's frames by frame id: a video decoded once in order, or image files."""

    def __init__(self, rows: dict[str, dict], storage_cfg: StorageConfig | None) -> None:
        self.rows, self.storage_cfg = rows, storage_cfg
        self.cache: dict[str, np.ndarray] = {}
        self.failed: dict[str, str] = {}
        self._decoder: Iterator | None = None
        self._by_index: dict[int, str] = {}

    def _row(self, fid: str) -> dict:
        if fid not in self.rows:
            raise KeyError(fid)
        return self.rows[fid]

    def get(self, fid: str, wanted: set[str]) -> np.ndarray:
        """The frame's RGB pixels; raises LookupError with the reason if it cannot be had."""
        if fid in self.cache:
            return self.cache[fid]
        if fid in self.failed:
            raise LookupError(self.failed[fid])
        try:
            row = self._row(fid)
        except KeyError:
            self.failed[fid] = f"{fid}: not in the frames table"
            raise LookupError(self.failed[fid]) from None
        if row["source_kind"] == "video":
            return self._from_video(fid, row, wanted)
        try:
            rgb, _ = decode_image(storage.read_bytes(row["source_uri"], self.storage_cfg),
                                  row["source_uri"])
        except storage.StorageNotFoundError:
            self.failed[fid] = f"{row['source_uri']}: missing"
            raise LookupError(self.failed[fid]) from None
        except ImageError as e:
            self.failed[fid] = str(e)
            raise LookupError(self.failed[fid]) from None
        if fid in wanted:
            self.cache[fid] = rgb
        return rgb

    def _from_video(self, fid: str, row: dict, wanted: set[str]) -> np.ndarray:
        if self._decoder is None:
            self._by_index = {r["frame_index"]: k for k, r in self.rows.items()
                              if r["source_kind"] == "video"}
            self._decoder = iter(decode_frames(row["source_uri"], self.storage_cfg, threads=1))
        while fid not in self.cache:
            try:
                frame = next(self._decoder)
            except StopIteration:
                self.failed[fid] = f"{row['source_uri']}: frame {row['frame_index']} missing"
                raise LookupError(self.failed[fid]) from None
            except VideoError as e:
                self.failed[fid] = str(e)
                raise LookupError(self.failed[fid]) from None
            got = self._by_index.get(frame.index)
            if got is not None and (got in wanted or got == fid):
                self.cache[got] = frame.rgb
            if frame.index > row["frame_index"] and fid not in self.cache:
                self.failed[fid] = f"{row['source_uri']}: frame {row['frame_index']} missing"
                raise LookupError(self.failed[fid])
        return self.cache[fid]

    def keep_only(self, ids: set[str]) -> None:
        for k in [k for k in self.cache if k not in ids]:
            del self.cache[k]


def _load(window: Window, frames: ClipFrames, wanted: set[str]) -> tuple[Window, np.ndarray]:
    """Load a window's frames into a pool and index it; collect rejects with their reasons."""
    pool: list[np.ndarray] = []
    slot: dict[str, int] = {}
    loaded = Window(window.clip_id, window.index, protocol=window.protocol)

    def put(fid: str) -> int:
        if fid not in slot:
            slot[fid] = len(pool)
            pool.append(frames.get(fid, wanted))
        return slot[fid]

    for f in window.frames:
        def reject(reason: str) -> None:
            loaded.rejects.append(Reject(f.frame_id, f.frame_index, f.source_uri, reason))

        if not f.ref_ids:
            reject("no sharp reference within ±Δ")
            continue
        try:
            blurry = frames.get(f.frame_id, wanted)
        except LookupError as e:
            reject(f"blurry frame unreadable: {e}")
            continue
        if pool and blurry.shape != pool[0].shape:
            reject(f"frame is {blurry.shape[1]}x{blurry.shape[0]}, the window's frames are "
                   f"{pool[0].shape[1]}x{pool[0].shape[0]}")
            continue
        refs, problems = [], []
        for rid in f.ref_ids:
            try:
                ref = frames.get(rid, wanted)
            except LookupError as e:
                problems.append(f"reference {rid} unusable: {e}")
                continue
            if ref.shape != blurry.shape:
                problems.append(f"reference {rid} is {ref.shape[1]}x{ref.shape[0]}, the blurry "
                                f"frame is {blurry.shape[1]}x{blurry.shape[0]}")
                continue
            refs.append(rid)
        if not refs:
            reject("; ".join(problems))
            continue
        loaded.frames.append(BlurryFrame(f.frame_id, f.frame_index, f.source_uri, f.gt_uri,
                                         refs, put(f.frame_id), [put(r) for r in refs],
                                         problems))
    pixels = np.stack(pool) if pool else np.zeros((0, 1, 1, 3), np.uint8)
    return loaded, pixels


def load_windows(frames: pa.Table, frames_per_window: int, max_refs: int,
                 done: set[str] | frozenset = frozenset(), limit: int | None = None,
                 storage_cfg: StorageConfig | None = None,
                 delta: int | None = None) -> Iterator[tuple[Window, np.ndarray]]:
    """Each window of each clip in ``frames`` with its frame pool, skipping windows in ``done``.

    Yields:
        The window (its usable blurry frames with pool indices, and its rejects) and the pool of
        its distinct frames, ``[F, H, W, 3]`` uint8.
    """
    rows = frames.to_pylist()
    by_clip: dict[str, list[dict]] = {}
    for r in rows:
        by_clip.setdefault(r["clip_id"], []).append(r)
    for clip_id in sorted(by_clip):
        clip_rows = by_clip[clip_id]
        windows = [w for w in plan_windows(clip_rows, frames_per_window, max_refs, limit, delta)
                   if w.name not in done]
        if not windows:
            continue
        source = ClipFrames({r["frame_id"]: r for r in clip_rows}, storage_cfg)
        needs = [set(w.frame_ids()) for w in windows]
        later = [set() for _ in windows]  # frames needed by windows after i
        for i in range(len(windows) - 2, -1, -1):
            later[i] = later[i + 1] | needs[i + 1]
        for i, w in enumerate(windows):
            yield _load(w, source, needs[i] | later[i])
            source.keep_only(later[i])
