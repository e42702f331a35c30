"""Source discovery and frame readers: videos, GoPro/REDS-style frame trees, image folders.

:func:`discover` lists a source (a folder or bucket prefix, or one video file) once and groups what
it finds into clips:

* a **video** file (mp4, avi, mov, mkv, webm, m4v) is one clip; its frames are labelled by
  sharpness;
* a **GoPro-style tree** ``<seq>/{blur,sharp}/NNNNNN.png`` is one clip per ``<seq>``; blurry and
  sharp frames are known from the folders, and the sharp frame of index t is the blurry frame's
  ground truth (``gt_uri``);
* a **REDS-style tree** ``<split>_blur/<seq>/*.png`` beside ``<split>_sharp/<seq>/*.png`` likewise;
* any other **folder of images** is one clip whose frames are labelled by sharpness.

:func:`read_frames` then yields each frame of a clip as RGB uint8, or a :class:`Reject` that names
the file and the reason, and never stops at one bad file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from bluref_ray import storage
from bluref_ray.data.images import ImageError, decode_image
from bluref_ray.data.video import VIDEO_EXTENSIONS, VideoError, decode_frames
from bluref_ray.storage import StorageConfig, StorageNotFoundError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
BLUR_DIRS = ("blur", "blurry", "input")
ALT_BLUR_DIRS = ("blur_gamma",)
SHARP_DIRS = ("sharp", "gt", "target", "groundtruth")


@dataclass
class FrameFile:
    """One frame stored as an image file."""

    index: int
    role: str  # "blurry" | "sharp" | "" (to be labelled by sharpness)
    uri: str
    gt_uri: str | None = None


@dataclass
class Clip:
    """A clip to ingest: a video file, a frame tree sequence, or a folder of images."""

    clip_id: str
    kind: str  # "video" | "tree" | "images"
    uri: str  # the video file or the sequence folder
    files: list[FrameFile] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> Clip:
        d = json.loads(text)
        d["files"] = [FrameFile(**f) for f in d["files"]]
        return Clip(**d)


@dataclass
class Reject:
    """A file (or one frame of it) that could not be used, and why."""

    clip_id: str
    source_uri: str
    reason: str
    stage: str  # "open" | "decode" | "size" | "empty"
    frame_index: int | None = None


@dataclass
class Frame:
    """A decoded frame of a clip."""

    index: int
    time: float
    rgb: np.ndarray  # [H, W, 3] uint8
    uri: str
    role: str
    gt_uri: str | None
    pixel_format: str


def make_clip_id(rel: str) -> str:
    """A readable, unique, deterministic id from a clip's path relative to its source root."""
    stem = re.sub(r"\.[A-Za-z0-9]+$", "", rel) if "." in rel.rsplit("/", 1)[-1] else rel
    slug = re.sub(r"[^A-Za-z0-9._]+", "-", stem).strip("-")[:80] or "clip"
    return f"{slug}-{hashlib.sha1(rel.encode()).hexdigest()[:6]}"


def _ext(uri: str) -> str:
    name = uri.rsplit("/", 1)[-1].lower()
    return name[name.rfind("."):] if "." in name else ""


def _frame_number(uri: str, position: int) -> int:
    m = re.search(r"(\d+)$", uri.rsplit("/", 1)[-1].rsplit(".", 1)[0])
    return int(m.group(1)) if m else position


#: Frame numbers above this are not frame numbers but times (epoch milliseconds, ROS
#: nanoseconds): 10⁷ frames are 93 hours at 30 fps.
MAX_FRAME_NUMBER = 10**7


def _numbered(*roles: list[str]) -> list[dict[str, tuple[int, str]]]:
    """Per list of files (a tree's blur/ and sharp/, or one folder): stem → (frame index, uri).

    The index is the number the name ends with (``000123.png``, ``frame_123.jpg``), shared by
    the files of one stem across the lists. Where those numbers cannot be frame indices (names
    that are times, above :data:`MAX_FRAME_NUMBER`; two names with one number, such as
    ``front_0001`` and ``rear_0001`` or ``0002.png`` and ``0002.jpg``), every file keeps its
    place instead: the index is its stem's rank in (number, name) order, so that no file is
    dropped and ``ingest.delta`` still counts frames.
    """
    stems = [{f.rsplit("/", 1)[-1]: f for f in files} for files in roles]  # name → uri
    names = sorted({n for r in stems for n in r})
    stem_of = {n: n.rsplit(".", 1)[0] if len(roles) > 1 else n for n in names}
    first = {}  # stem → a file name of it (its number read from the whole name)
    for n in names:
        first.setdefault(stem_of[n], n)
    number = {st: _frame_number(first[st], i) for i, st in enumerate(sorted(first))}
    if (max(number.values(), default=0) > MAX_FRAME_NUMBER
            or len(set(number.values())) < len(number)):
        number = {st: i for i, st in enumerate(sorted(number, key=lambda st: (number[st], st)))}
    return [{stem_of[n]: (number[stem_of[n]], uri) for n, uri in sorted(r.items())}
            for r in stems]


def _tree_clip(rel: str, seq_uri: str, blur_files: list[str], sharp_files: list[str]) -> Clip:
    blur, sharp = _numbered(blur_files, sharp_files)
    files = [FrameFile(idx, "blurry", uri, sharp[stem][1] if stem in sharp else None)
             for stem, (idx, uri) in blur.items()]
    files += [FrameFile(idx, "sharp", uri) for idx, uri in sharp.values()]
    files.sort(key=lambda f: (f.index, f.role))
    return Clip(make_clip_id(rel), "tree", seq_uri, files)


def discover(source: str, storage_cfg: StorageConfig | None = None) -> list[Clip]:
    """The clips under ``source`` (a folder, bucket prefix, or one video file), sorted by id.

    Raises:
        storage.StorageNotFoundError: ``source`` does not exist.
        storage.StorageError: ``source`` cannot be reached.
    """
    source = storage.normalize(source)
    files = storage.list_files(source, storage_cfg)
    root = storage.parent(source)  # ids keep the source's own name: train/clip_0000, test/...
    by_dir: dict[str, list[str]] = defaultdict(list)
    clips: list[Clip] = []
    for f in files:
        ext = _ext(f)
        if ext in VIDEO_EXTENSIONS:
            clips.append(Clip(make_clip_id(storage.relative(f, root)), "video", f))
        elif ext in IMAGE_EXTENSIONS:
            by_dir[storage.parent(f)].append(f)
    used: set[str] = set()
    children: dict[str, dict[str, str]] = defaultdict(dict)  # folder → lower-case name → folder
    for d in by_dir:
        children[storage.parent(d)][storage.basename(d).lower()] = d
    for d in sorted(by_dir):
        name, seq = storage.basename(d).lower(), storage.parent(d)
        if name in BLUR_DIRS + ALT_BLUR_DIRS:
            if name in ALT_BLUR_DIRS and any(b in children[seq] for b in BLUR_DIRS):
                used.add(d)  # GoPro ships blur and blur_gamma; use blur
                continue
            sharp_dir = next((children[seq][s] for s in SHARP_DIRS if s in children[seq]), None)
            if sharp_dir:
                clips.append(_tree_clip(_rel(seq, root), seq, by_dir[d], by_dir[sharp_dir]))
                used.update((d, sharp_dir))
                continue
        m = re.match(r"^(.*)_blur$", storage.basename(seq))
        if m:
            sharp_dir = storage.join(storage.parent(seq), f"{m.group(1)}_sharp",
                                     storage.basename(d))
            if sharp_dir in by_dir:
                rel = f"{_rel(storage.parent(seq), root)}/{m.group(1)}/{storage.basename(d)}"
                clips.append(_tree_clip(rel.strip("/"), d, by_dir[d], by_dir[sharp_dir]))
                used.update((d, sharp_dir))
    for d in sorted(set(by_dir) - used):
        (numbered,) = _numbered(by_dir[d])
        files_ = sorted((FrameFile(idx, "", uri) for idx, uri in numbered.values()),
                        key=lambda f: f.index)
        clips.append(Clip(make_clip_id(_rel(d, root)), "images", d, files_))
    return sorted(clips, key=lambda c: c.clip_id)


def _rel(uri: str, root: str) -> str:
    return storage.relative(uri, root) if uri != root else ""


def _load_image(f: FrameFile, storage_cfg: StorageConfig | None) -> tuple[np.ndarray, str]:
    return decode_image(storage.read_bytes(f.uri, storage_cfg), f.uri)


def read_frames(clip: Clip, storage_cfg: StorageConfig | None = None,
                max_frames: int | None = None, prefetch: int = 8,
                threads: int = 0) -> Iterator[Frame | Reject]:
    """Yield each frame of ``clip``, or a :class:`Reject` for each file or frame that fails.

    Video frames are decoded as a stream; image files are fetched ``prefetch`` at a time in
    threads, so memory stays bounded by the prefetch window. ``threads`` caps the video decoder's
    threads (0: one per core).

    Raises:
        storage.StorageError: storage became unreachable (not a problem of one file; the run
            should stop and be resumed).
    """
    if clip.kind == "video":
        try:
            for d in decode_frames(clip.uri, storage_cfg, max_frames, threads):
                yield Frame(d.index, d.time, d.rgb, clip.uri, "", None, d.pixel_format)
        except VideoError as e:
            stage = "decode" if e.frames_decoded else "open"
            yield Reject(clip.clip_id, clip.uri, str(e), stage,
                         e.frames_decoded if e.frames_decoded else None)
        except StorageNotFoundError as e:
            yield Reject(clip.clip_id, clip.uri, str(e), "open")
        return
    files = clip.files[:max_frames] if max_frames else clip.files
    with ThreadPoolExecutor(max_workers=max(1, prefetch // 2)) as pool:
        window: deque = deque()
        it = iter(files)
        for f in it:
            window.append((f, pool.submit(_load_image, f, storage_cfg)))
            if len(window) >= prefetch:
                break
        while window:
            f, fut = window.popleft()
            nxt = next(it, None)
            if nxt is not None:
                window.append((nxt, pool.submit(_load_image, nxt, storage_cfg)))
            try:
                rgb, fmt = fut.result()
            except (ImageError, StorageNotFoundError) as e:
                yield Reject(clip.clip_id, f.uri, str(e), "decode", f.index)
                continue
            yield Frame(f.index, float("nan"), rgb, f.uri, f.role, f.gt_uri, fmt)
