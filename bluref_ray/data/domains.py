"""The data of Blur2Blur: the known domain's pairs and the camera's blurry and sharp frames.

- **Known pairs** (:func:`known_pairs`): (blurry, sharp) files of GoPro-style trees with the
  blur a deblurrer already handles (``bluref synth`` makes one).
- **Camera frames** (:func:`camera_frames`): the frames table of ``bluref ingest`` on the
  camera's video. Its clips are split in two (``scene_split``, 6:4 as in the paper): the
  blurry frames of one part are what the translator learns to translate, the sharp frames of
  the other part are what kernel transfer blurs into the known-blur set. Splitting by clip
  keeps each blurry frame's own scene (and truth) out of the sharp set. Blurry frames come
  least blurry first (highest variance of the Laplacian): the curriculum starts with the first
  half.

Each worker holds at most ``max_frames`` images of each set in memory (evenly picked) and cuts
random crops from them (:func:`crops`).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bluref_ray import schema, storage
from bluref_ray.config import ConfigError
from bluref_ray.data.images import decode_image, random_flips
from bluref_ray.storage import StorageConfig


def known_pairs(sources: str, storage_cfg: StorageConfig | None) -> list[tuple[str, str]]:
    """(blurry URI, sharp URI) of every paired frame under the comma-separated ``sources``.

    Raises:
        ConfigError: no paired frames there.
    """
    from bluref_ray.data.sources import discover

    pairs = [(f.uri, f.gt_uri) for source in sources.split(",")
             for clip in discover(source, storage_cfg) for f in clip.files
             if f.role == "blurry" and f.gt_uri]
    if not pairs:
        raise ConfigError(f"{sources}: no paired frames (expected GoPro-style trees "
                          "<seq>/blur/NNNNNN.png beside <seq>/sharp/NNNNNN.png)")
    return pairs


def evenly(items: list, count: int) -> list:
    """At most ``count`` of ``items``, evenly spaced, in order."""
    if len(items) <= count:
        return list(items)
    pick = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in sorted(set(pick.tolist()))]


def read_images(uris: list[str], storage_cfg: StorageConfig | None) -> list[np.ndarray]:
    """Decode image files (in threads), in order."""
    def one(uri: str) -> np.ndarray:
        return decode_image(storage.read_bytes(uri, storage_cfg), uri)[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, uris))


@dataclasses.dataclass
class CameraFrames:
    """The camera's frames for Blur2Blur, split by clip."""

    blurry: list[np.ndarray]  #: least blurry first
    sharp: list[np.ndarray]
    blurry_clips: list[str]
    sharp_clips: list[str]


def split_clips(clips: list[str], share: float, seed: int) -> tuple[list[str], list[str]]:
    """Clips whose blurry frames are used, and clips whose sharp frames are (a seeded shuffle,
    ``round(share · n)`` of them first, at least one in each part).

    Raises:
        ConfigError: fewer than two clips.
    """
    if len(clips) < 2:
        raise ConfigError(f"blur2blur needs at least 2 clips of the camera to split into "
                          f"blurry and sharp scenes; the frames table has {len(clips)}")
    order = sorted(clips)
    np.random.default_rng(seed).shuffle(order)
    n = min(len(order) - 1, max(1, round(share * len(order))))
    return sorted(order[:n]), sorted(order[n:])


def camera_frames(frames: str, share: float, max_frames: int, seed: int,
                  storage_cfg: StorageConfig | None) -> CameraFrames:
    """Load the camera's blurry and sharp frames from an ingest output (see the module doc).

    Raises:
        ConfigError: no frames table, too few clips, or no blurry or no sharp frames.
    """
    from bluref_ray.data.windows import ClipFrames
    from bluref_ray.pipeline.pseudo_gt import frames_dir

    table = schema.read_table(frames_dir(frames, storage_cfg), schema.FRAMES, storage_cfg)
    if not table.num_rows:
        raise ConfigError(f"{frames}: no frames table; run `bluref ingest` on the camera's "
                          "video first")
    rows = table.to_pylist()
    blurry_clips, sharp_clips = split_clips(sorted({r["clip_id"] for r in rows}), share, seed)
    blurry = sorted((r for r in rows if r["role"] == "blurry" and r["clip_id"] in blurry_clips),
                    key=lambda r: -r["laplacian_var"])
    sharp = [r for r in rows if r["role"] == "sharp" and r["clip_id"] in sharp_clips]
    if not blurry or not sharp:
        raise ConfigError(f"{frames}: {len(blurry)} blurry frames in clips {blurry_clips} and "
                          f"{len(sharp)} sharp frames in clips {sharp_clips}; Blur2Blur needs "
                          "both (change blur2blur.seed or scene_split)")
    blurry, sharp = evenly(blurry, max_frames), evenly(sharp, max_frames)
    by_clip: dict[str, ClipFrames] = {}
    wanted = {r["frame_id"] for r in blurry + sharp}

    def pixels(r: dict) -> np.ndarray:
        if r["clip_id"] not in by_clip:
            by_clip[r["clip_id"]] = ClipFrames(
                {x["frame_id"]: x for x in rows if x["clip_id"] == r["clip_id"]}, storage_cfg)
        return by_clip[r["clip_id"]].get(r["frame_id"], wanted)

    # videos decode in order: load in frame order, then put the blurry ones back in theirs
    loaded = {r["frame_id"]: pixels(r) for r in sorted(
        blurry + sharp, key=lambda r: (r["clip_id"], r["frame_index"], r["role"]))}
    return CameraFrames([loaded[r["frame_id"]] for r in blurry],
                        [loaded[r["frame_id"]] for r in sharp], blurry_clips, sharp_clips)


def pad_edges(img: np.ndarray, size: int) -> np.ndarray:
    """An ``[H, W, C]`` image padded at the bottom and right, by repeating its edges, to at
    least ``size`` on each side."""
    h, w = img.shape[:2]
    if h >= size and w >= size:
        return img
    return np.pad(img, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode="edge")


def crops(images: list[np.ndarray], n: int, size: int, rng: np.random.Generator,
          pool: int | None = None) -> np.ndarray:
    """``n`` random ``size``² crops with random flips from the first ``pool`` images (all by
    default); images that are stacks (``[H, W, 3k]``: a pair side by side in channels) keep
    their channels together.

    Shape:
        → ``[n, size, size, C]`` uint8.
    """
    pool = len(images) if pool is None else max(1, min(pool, len(images)))
    out = []
    for i in rng.integers(0, pool, size=n):
        img = pad_edges(images[i], size)
        h, w = img.shape[:2]
        y, x = rng.integers(h - size + 1), rng.integers(w - size + 1)
        out.append(random_flips(img[y:y + size, x:x + size], rng))
    return np.ascontiguousarray(np.stack(out))
