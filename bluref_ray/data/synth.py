"""The GoPro-protocol synthesizer (``bluref synth``).

Every blurry frame is the average of k consecutive frames of a high-frame-rate sharp stream, taken
in linear light (inverse gamma, average, gamma again), and its ground truth is the centre frame of
those k. A sharp output frame is a single frame of the stream. This is how GoPro (Nah et al.) was
made, with k from 7 to 13 at 240 fps.

Output, for ``--out ROOT``::

    ROOT/videos/<split>/<seq>.mp4          the clip as recorded (each frame blurry or sharp)
    ROOT/<split>/<seq>/blur/NNNNNN.png     the blurry frames
    ROOT/<split>/<seq>/sharp/NNNNNN.png    ground truth of every frame index
    ROOT/manifest.json                     settings and, per frame: blurry, k, exposure window

The sharp stream comes from real photos seen through a virtual camera (:mod:`.camera`), or from
the frames of a real video (``synth.video``). ``synth.look=dashcam`` adds what a dashcam adds and
the default ``studio`` look leaves out: blur that varies across the frame (a forward surge and
ground-plane parallax), auto-exposure and white-balance drift between frames (the same gains on a
frame and its ground truth, so references differ from the blurry frame in light), and lossy
compression of what is recorded (JPEG in the tree, a dashcam's H.264 quality in the videos).

Test clips show photos that no train clip shows (while ``synth.scenes`` has any left), so a test
clip is an unseen scene. Output is deterministic for a seed.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from bluref_ray import storage
from bluref_ray.config import ConfigError, SynthConfig
from bluref_ray.data import video
from bluref_ray.data.camera import FrameListStream, PhotoCamera, ShakePath, Smooth
from bluref_ray.data.images import encode_png
from bluref_ray.storage import StorageConfig

SPLITS = ("train", "test")


def _linear_lut(gamma: float) -> np.ndarray:
    """8-bit level → linear light in [0, 1] (the inverse of the camera's gamma)."""
    return (np.arange(256, dtype=np.float64) / 255.0) ** gamma


def linear_light_average(frames: list[np.ndarray], gamma: float = 2.2) -> np.ndarray:
    """Average frames in linear light: ``(mean((x/255)^γ))^(1/γ) · 255``, rounded.

    Shape:
        k × ``[H, W, 3]`` uint8 → ``[H, W, 3]`` uint8.
    """
    lut = _linear_lut(gamma)
    acc = np.zeros(frames[0].shape, np.float64)
    for f in frames:
        acc += lut[f]
    mean = acc / len(frames)
    return np.clip(np.round(255.0 * mean ** (1.0 / gamma)), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class FramePlan:
    """How output frame ``index`` is made from the sharp stream."""

    index: int
    blurry: bool
    k: int  # sharp frames averaged (1 for a sharp frame)
    centre: int  # sub-frame of the ground truth
    first: int  # first sub-frame of the exposure

    @property
    def window(self) -> list[int]:
        return list(range(self.first, self.first + self.k))


def plan_clip(cfg: SynthConfig, rng: np.random.Generator) -> list[FramePlan]:
    """Which frames are blurry, how many sub-frames each averages, and where they lie.

    Each output frame has a slot of ``max(subframes, k)`` sub-frames (as in GoPro, where the
    exposures of consecutive blurry frames never overlap); its exposure is centred in the slot
    and its truth is the middle sub-frame of the exposure (of an even ``k``, one of the two).
    """
    blurry = rng.random(cfg.frames) < cfg.blurry_share
    ks = rng.integers(cfg.k_min, cfg.k_max + 1, size=cfg.frames)
    plans, start = [], 0
    for i in range(cfg.frames):
        k = int(ks[i]) if blurry[i] else 1
        slot = max(cfg.subframes, k)
        centre = start + slot // 2
        first = min(centre - (k - 1) // 2, start + slot - k)  # an even k fills its slot
        plans.append(FramePlan(i, bool(blurry[i]), k, centre, first))
        start += slot
    return plans


class ClipSynth:
    """One synthetic clip: its frame plan and its sharp stream.

    Args:
        cfg: synthesizer settings.
        split: split name (part of the random seed).
        number: clip number within the split.
        source_frames: frames of a real video for the sharp stream, or None for photos.
        scenes: photos to pick the background from (default: ``cfg.scenes``).
    """

    def __init__(self, cfg: SynthConfig, split: str, number: int,
                 source_frames: list[np.ndarray] | None = None,
                 scenes: list[str] | None = None) -> None:
        self.cfg = cfg = cfg.resolved()
        self.split, self.number = split, number
        self.seq = f"clip_{number:04d}"
        key = [cfg.seed, SPLITS.index(split) if split in SPLITS else 9, number]
        self.key = key
        rng = np.random.default_rng(key)
        look = np.random.default_rng(key + [1])  # the look's own draws leave the studio's alone
        self.plan = plan_clip(cfg, rng)
        self.gains = light_gains(cfg, look)
        if source_frames is not None:
            self.stream = FrameListStream(source_frames)
            self.background = "video"
        else:
            windows = [(p.first - 0.5, p.first + p.k - 0.5) for p in self.plan if p.blurry]
            lengths = cfg.shake_px * rng.uniform(0.5, 1.5, size=len(windows))
            shake = ShakePath(windows, lengths, rng, cfg.shake_axis, cfg.shake_spread)
            surge = (ShakePath(windows, cfg.forward_px * look.uniform(0.5, 1.5, len(windows)),
                               look, axis_deg=0.0, spread_deg=0.0)
                     if cfg.forward_px > 0 else None)
            self.stream = PhotoCamera(rng, cfg.height, cfg.width, cfg.subframes, cfg.drift_px,
                                      cfg.rotation_deg, cfg.zoom, cfg.objects, shake,
                                      shake_reach=2.5 * cfg.shake_px,
                                      scenes=tuple(scenes or cfg.scenes.split(",")),
                                      surge=surge, depth=cfg.depth)
            self.background = self.stream.background_name

    @property
    def subframes_needed(self) -> int:
        last = self.plan[-1]
        return max(last.centre, last.first + last.k - 1) + 1

    def render(self, plan: FramePlan) -> tuple[np.ndarray, np.ndarray]:
        """``(recorded, ground_truth)`` for one output frame, both ``[H, W, 3]`` uint8.

        With a look's exposure and white balance both get the frame's gains; with its
        compression the recorded frame is what the encoder gives back (for a sharp frame, the
        recorded frame is also the ground truth: nothing sharper exists). Sensor noise
        (``noise``) goes on the recorded frame only: the truth is the clean frame.
        """
        gt = self.stream.frame(plan.centre)
        if plan.blurry:
            frames = [gt if j == plan.centre else self.stream.frame(j) for j in plan.window]
            recorded = linear_light_average(frames, self.cfg.gamma)
        else:
            recorded = gt
        if self.gains is not None:
            gt, recorded = (apply_gains(x, self.gains[plan.index], self.cfg.gamma)
                            for x in (gt, recorded))
        if self.cfg.noise:  # the truth stays clean
            rng = np.random.default_rng([*self.key, plan.index, 2])
            recorded = np.clip(recorded + rng.normal(0.0, self.cfg.noise, recorded.shape),
                               0, 255).round().astype(np.uint8)
        if self.cfg.jpeg_quality:
            recorded = jpeg(recorded, self.cfg.jpeg_quality)
            if not plan.blurry and not self.cfg.noise:
                gt = recorded
        return recorded, gt

    def frames(self) -> Iterator[tuple[FramePlan, np.ndarray, np.ndarray]]:
        for p in self.plan:
            yield (p, *self.render(p))


def light_gains(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray | None:
    """Per output frame and channel, the linear-light gain of the camera's auto-exposure and
    white balance: slow random drifts within ``±exposure_stops`` and ``±white_balance``, or None
    when both are 0.

    Shape:
        → ``[frames, 3]`` float64.
    """
    if not (cfg.exposure_stops or cfg.white_balance):
        return None
    signals = [Smooth(rng, cfg.exposure_stops * np.log(2.0), (20, 80))]
    signals += [Smooth(rng, cfg.white_balance, (20, 80)) for _ in range(3)]
    log_gain = np.array([[s(i) for s in signals] for i in range(cfg.frames)])
    return np.exp(log_gain[:, :1] + log_gain[:, 1:])


def apply_gains(rgb: np.ndarray, gains: np.ndarray, gamma: float = 2.2) -> np.ndarray:
    """Scale an 8-bit frame by per-channel gains in linear light, clipping at white.

    Shape:
        ``[H, W, 3]`` uint8, ``[3]`` → ``[H, W, 3]`` uint8.
    """
    lin = np.minimum(_linear_lut(gamma)[rgb] * gains, 1.0)
    return np.round(255.0 * lin ** (1.0 / gamma)).astype(np.uint8)


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    """The frame after a JPEG round trip at ``quality`` (a camera encoder's losses)."""
    _, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()


def _read_source_video(cfg: SynthConfig, storage_cfg: StorageConfig | None) -> list[np.ndarray]:
    """Decode the user's video into frames of the configured size."""
    frames = []
    for decoded in video.decode_frames(cfg.video, storage_cfg):
        f = decoded.rgb
        if f.shape[:2] != (cfg.height, cfg.width):
            f = cv2.resize(f, (cfg.width, cfg.height), interpolation=cv2.INTER_AREA)
        frames.append(f)
    if not frames:
        raise ConfigError(f"synth.video={cfg.video}: no frames could be decoded")
    return frames


def synthesize(out: str, cfg: SynthConfig, storage_cfg: StorageConfig | None = None,
               log: Callable[[str], None] = print) -> dict:
    """Write a synthetic dataset under ``out`` (local path or ``s3://``) and return its manifest.

    Raises:
        ConfigError: for invalid settings, or a source video too short for one clip.
    """
    cfg.validate()
    cfg = cfg.resolved()
    out = storage.normalize(out)
    manifest: dict = {"generator": "bluref synth", "config": asdict(cfg), "clips": []}
    _same_dataset(out, manifest["config"], storage_cfg)
    storage.makedirs(out, storage_cfg)
    # written first, as unfinished: a killed run leaves a record of the settings its files have
    storage.write_text(storage.join(out, "manifest.json"),
                       json.dumps({**manifest, "unfinished": True}, indent=1), storage_cfg)
    source = _read_source_video(cfg, storage_cfg) if cfg.video else None
    clips_wanted = [(s, n) for s, count in zip(SPLITS, (cfg.train_clips, cfg.test_clips))
                    for n in range(count)]
    offset = 0
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for split, number in clips_wanted:
            frames_for_clip = None
            if source is not None:
                probe = ClipSynth(cfg, split, number, source_frames=[])
                need = probe.subframes_needed
                if offset + need > len(source):
                    if not manifest["clips"] and offset == 0:
                        raise ConfigError(
                            f"synth.video={cfg.video}: {len(source)} frames, but one clip of "
                            f"{cfg.frames} frames needs {need}; lower synth.frames or "
                            "synth.subframes")
                    log(f"[synth] source video exhausted after {len(manifest['clips'])} clips")
                    break
                frames_for_clip = source[offset:offset + need]
                offset += need
            clip = ClipSynth(cfg, split, number, frames_for_clip,
                             scenes=held_out_scenes(cfg, manifest["clips"]) if split == "test"
                             else None)
            manifest["clips"].append(_write_clip(out, clip, storage_cfg, pool))
            n_blur = sum(p.blurry for p in clip.plan)
            log(f"[synth] {split}/{clip.seq}: {cfg.frames} frames ({n_blur} blurry), "
                f"scene={clip.background} [{len(manifest['clips'])}/{len(clips_wanted)}, "
                f"{time.time() - t0:.1f}s]")
    storage.write_text(storage.join(out, "manifest.json"), json.dumps(manifest, indent=1),
                       storage_cfg)
    return manifest


def _same_dataset(out: str, config: dict, storage_cfg: StorageConfig | None) -> None:
    """Refuse to write over a dataset of other settings: its frames, kept where the new plan
    writes none (an index sharp now, blurry then; a clip fewer), would pair with the new ones.
    The same settings make the same files, so a run again (a killed one too) rewrites them."""
    try:
        old = json.loads(storage.read_text(storage.join(out, "manifest.json"), storage_cfg))
    except storage.StorageNotFoundError:
        if any(storage.exists(storage.join(out, d), storage_cfg) for d in (*SPLITS, "videos")):
            raise ConfigError(f"{out} holds {'/'.join(SPLITS)}/ or videos/ folders but no "
                              "manifest.json: not a dataset of bluref synth; choose another "
                              "--out or delete them") from None
        return
    except ValueError:
        old = {}
    now = json.loads(json.dumps(config))  # as JSON reads it back (tuples become lists)
    then = old.get("config", {}) if isinstance(old, dict) else {}
    changed = [f"{k}: {then.get(k)!r} there, {v!r} now" for k, v in now.items()
               if then.get(k) != v]
    if changed:
        raise ConfigError(f"{out} holds a dataset made with other settings ({'; '.join(changed)})"
                          "; its files would mix with the new ones: choose another --out or "
                          "delete it")


def held_out_scenes(cfg: SynthConfig, clips: list[dict]) -> list[str]:
    """The scenes a test clip may show: those of ``synth.scenes`` that no train clip among
    ``clips`` (manifest entries written so far) shows, or all of them if the train clips used
    every one."""
    scenes = cfg.scenes.split(",")
    seen = {c["scene"] for c in clips if c["split"] == "train"}
    return [s for s in scenes if s not in seen] or scenes


def _write_clip(out: str, clip: ClipSynth, storage_cfg: StorageConfig | None,
                pool: ThreadPoolExecutor) -> dict:
    cfg = clip.cfg
    seq_dir = storage.join(out, clip.split, clip.seq)
    video_rel = f"videos/{clip.split}/{clip.seq}.{cfg.video_ext}"
    writes = []
    with tempfile.TemporaryDirectory() as tmp:
        local_video = os.path.join(tmp, f"clip.{cfg.video_ext}")
        writer = (video.VideoWriter(local_video, cfg.width, cfg.height, cfg.fps, cfg.crf)
                  if cfg.write_videos else None)
        try:
            for plan, recorded, gt in clip.frames():
                name = f"{plan.index:06d}.png"
                if cfg.write_frames:
                    writes.append(pool.submit(storage.write_bytes, storage.join(
                        seq_dir, "sharp", name), encode_png(gt), storage_cfg))
                    if plan.blurry:
                        writes.append(pool.submit(storage.write_bytes, storage.join(
                            seq_dir, "blur", name), encode_png(recorded), storage_cfg))
                if writer:
                    writer.write(recorded)
        finally:
            if writer:
                writer.close()
        for w in writes:
            w.result()
        if writer:
            storage.upload_file(local_video, storage.join(out, video_rel), storage_cfg)
    return {
        "split": clip.split, "seq": clip.seq, "scene": clip.background,
        "video": video_rel if cfg.write_videos else None,
        "frames_dir": f"{clip.split}/{clip.seq}" if cfg.write_frames else None,
        "fps": cfg.fps, "height": cfg.height, "width": cfg.width,
        "frames": [asdict(p) for p in clip.plan],
    }

