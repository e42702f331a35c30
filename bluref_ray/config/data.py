"""Settings of the data stages: Ray, the synthesizer and ingest."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from bluref_ray.config.core import PHOTOS, ConfigError, _help, execution, method


@dataclass(frozen=True)
class RayConfig:
    """How to reach Ray."""

    address: str | None = field(
        default=None,
        metadata=_help("Ray cluster address ('auto', 'ray://host:10001'); default: $RAY_ADDRESS "
                       "if set (as under `ray job submit`), else start Ray in-process"))
    num_cpus: int | None = field(
        default=None, metadata=_help("CPUs for an in-process Ray (default: all of this machine)"))
    quiet: bool = field(
        default=False, metadata=_help("print only results: no progress lines from training "
                                      "workers, Ray Data or Ray's loggers (--quiet)"))
    progress_bars: bool | None = field(
        default=None, metadata=_help("show Ray Data's progress bars (default: when the output "
                                     "is a terminal)"))
    resource_timeout_s: float | None = field(
        default=None,
        metadata=_help("seconds to wait for the GPUs or CPUs a command asks for, while the "
                       "autoscaler adds nodes (default: 900 when joining a cluster, 0 for an "
                       "in-process Ray, which cannot grow)"))


#: The settings each ``synth.look`` gives those of its fields left at None.
LOOKS: dict[str, dict[str, Any]] = {
    "studio": {"forward_px": 0.0, "depth": 0.0, "exposure_stops": 0.0, "white_balance": 0.0,
               "jpeg_quality": 0, "crf": 12},
    "dashcam": {"forward_px": 6.0, "depth": 0.5, "exposure_stops": 0.3, "white_balance": 0.04,
                "jpeg_quality": 80, "crf": 23},
}



def _look_field(text: str, name: str) -> Any:
    """A synthesizer setting that defaults to its look's value (None until resolved)."""
    values = ", ".join(f"{look} {settings[name]}" for look, settings in LOOKS.items())
    return field(default=None, metadata=_help(f"{text}; default from synth.look: {values}"))


@dataclass(frozen=True)
class SynthConfig:
    """The GoPro-protocol synthesizer: a high-frame-rate sharp stream, averaged into blur."""

    seed: int = field(default=0, metadata=_help("random seed; equal seeds give equal datasets"))
    train_clips: int = field(default=4, metadata=_help("clips in the train split"))
    test_clips: int = field(default=1, metadata=_help("clips in the test split"))
    frames: int = field(default=48, metadata=_help("output frames per clip"))
    height: int = field(default=180, metadata=_help("frame height in pixels"))
    width: int = field(default=320, metadata=_help("frame width in pixels"))
    fps: float = field(default=30.0, metadata=_help("frame rate of the output videos"))
    subframes: int = field(
        default=8, metadata=_help("sharp high-frame-rate frames per output frame "
                                  "(8 = 240 fps sharp stream for 30 fps output)"))
    k_min: int = field(default=7, metadata=_help("fewest sharp frames averaged into a blurry one"))
    k_max: int = field(default=13, metadata=_help("most sharp frames averaged into a blurry one"))
    blurry_share: float = field(
        default=0.5, metadata=_help("share of output frames that are blurry (0..1)"))
    gamma: float = field(
        default=2.2, metadata=_help("camera response gamma: frames are averaged in linear light"))
    shake_px: float = field(
        default=14.0, metadata=_help("typical hand-shake travel during a blurry exposure, pixels"))
    shake_axis: float | None = field(
        default=None,
        metadata=_help("shake along this axis (degrees from horizontal), as a camera on a "
                       "vehicle mount does; default: any direction, as a hand-held camera"))
    shake_spread: float = field(
        default=15.0, metadata=_help("largest deviation of the shake from shake_axis, degrees"))
    drift_px: float = field(
        default=3.0, metadata=_help("typical smooth camera drift per output frame, pixels"))
    rotation_deg: float = field(default=4.0, metadata=_help("largest smooth camera roll, degrees"))
    zoom: float = field(default=0.08, metadata=_help("largest smooth zoom change (0.08 = ±8%)"))
    objects: int = field(
        default=2, metadata=_help("independently moving foreground objects per clip"))
    look: str = field(
        default="studio",
        metadata=_help("what the camera adds beyond motion blur: 'studio' (nothing: one blur "
                       "per frame, steady exposure, near-lossless clips) or 'dashcam' "
                       "(forward_px, depth, exposure_stops, white_balance, jpeg_quality and crf "
                       "at a dashcam's values); a setting given explicitly wins over the look"))
    forward_px: float | None = _look_field(
        "forward surge during each blurry exposure: travel at the frame's corners in pixels, "
        "none at its centre (radial blur; photos only, not synth.video)", "forward_px")
    depth: float | None = _look_field(
        "parallax of a ground plane: camera motion moves the bottom row (1 + depth) times and "
        "the top row (1 - depth) times as far as the centre, so blur grows down the frame "
        "(photos only, not synth.video)",
        "depth")
    exposure_stops: float | None = _look_field(
        "auto-exposure drift between frames, largest change in stops", "exposure_stops")
    white_balance: float | None = _look_field(
        "white-balance drift between frames, largest per-channel gain change (0.04 = ±4%)",
        "white_balance")
    jpeg_quality: int | None = _look_field(
        "JPEG quality each recorded frame of the tree goes through (0 = lossless PNG), as a "
        "camera's encoder", "jpeg_quality")
    noise: float = field(
        default=0.0,
        metadata=_help("sensor noise of every recorded frame (blurry or sharp; the ground truth "
                       "stays clean): Gaussian, standard deviation in 8-bit levels"))
    scenes: str = field(
        default="coffee,rocket,astronaut,chelsea,hubble_deep_field,immunohistochemistry,retina",
        metadata=_help("comma-separated scikit-image photos the clips' backgrounds come from; "
                       "test clips take those no train clip shows, while any are left"))
    video: str | None = field(
        default=None,
        metadata=_help("take the sharp stream from this video file (path or URI) instead of "
                       "photos seen through a virtual camera"))
    video_ext: str = field(
        default="mp4", metadata=_help("container of the output clips: mp4, mkv, avi or mov"))
    crf: int | None = _look_field("H.264 quality of the output clips (0 = lossless)", "crf")
    write_videos: bool = field(default=True, metadata=_help("write clips as video files"))
    write_frames: bool = field(
        default=True, metadata=_help("write the GoPro-style frame tree {blur,sharp}/NNNNNN.png"))

    def validate(self) -> None:
        if not 1 <= self.k_min <= self.k_max:
            raise ConfigError(f"synth.k_min={self.k_min}, synth.k_max={self.k_max}: need "
                              "1 <= k_min <= k_max")
        if not 0.0 <= self.blurry_share <= 1.0:
            raise ConfigError(f"synth.blurry_share={self.blurry_share}: must be within [0, 1]")
        if self.frames < 1 or self.height < 16 or self.width < 16:
            raise ConfigError("synth.frames must be >= 1 and synth.height/width >= 16")
        unknown = [s for s in self.scenes.split(",") if s not in PHOTOS]
        if unknown or not self.scenes:
            raise ConfigError(f"synth.scenes: unknown photo(s) {unknown}; available: "
                              f"{', '.join(PHOTOS)}")
        if self.video_ext not in ("mp4", "mkv", "avi", "mov"):
            raise ConfigError(f"synth.video_ext={self.video_ext!r}: use mp4, mkv, avi or mov")
        if self.video_ext == "avi" and self.write_videos and (self.height % 2 or self.width % 2):
            raise ConfigError(f"synth.video_ext=avi needs an even synth.height and synth.width "
                              f"(MPEG-4 Part 2), got {self.width}x{self.height}; use mp4 or an "
                              "even size")
        if self.look not in LOOKS:
            raise ConfigError(f"synth.look={self.look!r}: use {' or '.join(LOOKS)}")
        r = self.resolved()
        for name in ("forward_px", "depth", "exposure_stops", "white_balance"):
            if getattr(r, name) < 0:
                raise ConfigError(f"synth.{name}={getattr(r, name)}: must be >= 0")
        if r.depth >= 1:
            raise ConfigError(f"synth.depth={r.depth}: must be below 1 (the top row would "
                              "move backwards)")
        if self.noise < 0:
            raise ConfigError(f"synth.noise={self.noise}: must be >= 0")
        if not 0 <= r.jpeg_quality <= 100:
            raise ConfigError(f"synth.jpeg_quality={r.jpeg_quality}: use 0 (off) to 100")

    def resolved(self) -> SynthConfig:
        """This config with every setting left to the look (None) filled in from it."""
        return dataclasses.replace(self, **{k: v for k, v in LOOKS[self.look].items()
                                            if getattr(self, k) is None})


#: reference protocols (``ingest.protocol``): ``camera``, only frames recorded sharp are
#: references; ``paper``, a paired tree's sharp frame of every other index within ±Δ
PROTOCOLS = ("camera", "paper")


@dataclass(frozen=True)
class IngestConfig:
    """Ingest: decode, score sharpness, label blurry/sharp, pick references."""

    max_refs: int = field(default=6, metadata=method("N: most sharp references per blurry frame"))
    delta: int = field(
        default=10, metadata=method("Δ: references lie within ±delta frames of the blurry frame"))
    label_score: str = field(
        default="laplacian",
        metadata=method("score that labels video frames: 'laplacian' (variance of the Laplacian) "
                        "or 'fft' (Zou et al. frequency score)"))
    label_rule: str = field(
        default="local",
        metadata=method("how video and image-folder frames are labelled: 'local' (a frame is "
                        "blurry against the sharp level of the frames within ±label_window of "
                        "its shot: scene content cancels out) or 'clip' (Otsu's threshold over "
                        "the whole clip's scores)"))
    label_window: int = field(
        default=10, metadata=method("local rule: frames on each side that set a frame's sharp "
                                    "level"))
    label_shot_frames: int = field(
        default=20,
        metadata=method("local rule: a shot of at least this many frames gets Otsu's cut of its "
                        "own (it takes that cut's labels where it finds blurry frames); 0: the "
                        "clip's cut only"))
    label_mild_z: float | None = field(
        default=3.0,
        metadata=method("local rule, second pass: also blurry, a frame whose score is more than "
                        "this many robust standard deviations (of the sharp frames' own spread) "
                        "below the sharp frames within ±label_mild_window; it finds mild blur "
                        "that Otsu's cut leaves sharp (none: one pass)"))
    label_mild_window: int = field(
        default=5, metadata=method("local rule, second pass: frames on each side whose sharp "
                                   "ones set a frame's level"))
    threshold: float | None = field(
        default=None,
        metadata=method("fixed sharpness threshold for the label score (frames below are blurry); "
                        "overrides label_rule"))
    min_spread: float = field(
        default=0.15,
        metadata=method("clip rule: a clip whose log label scores spread less than this (std) is "
                        "one population: all sharp, no automatic split"))
    protocol: str = field(
        default="auto",
        metadata=method("which sharp frames may be references: 'camera' (only frames recorded "
                        "sharp: videos, and trees whose blur/ holds some indices), 'paper' (the "
                        "sharp frame of every other index within ±delta, never the frame's own: "
                        "the BluRef paper's protocol on paired trees) or 'auto' (paper for paired "
                        "trees, whose blur/ holds every index; camera otherwise)"))
    frame_rate: float = field(
        default=30.0, metadata=method("frame rate assumed for frame trees (timestamps)"))
    max_frames: int | None = field(
        default=None, metadata=method("read at most this many frames per clip"))
    score_max_side: int = field(
        default=0, metadata=method("score on frames shrunk to this longest side (0 = full size)"))
    clips_per_task: int = field(
        default=1, metadata=execution("clips each Ray task ingests"))
    overwrite: bool = field(
        default=False,
        metadata=execution("delete earlier results in --out instead of resuming from them"))

    def validate(self) -> None:
        if self.max_refs < 0 or self.delta < 1:
            raise ConfigError("ingest.max_refs must be >= 0 and ingest.delta >= 1")
        if self.label_score not in ("laplacian", "fft"):
            raise ConfigError(f"ingest.label_score={self.label_score!r}: use 'laplacian' or 'fft'")
        if self.label_rule not in ("local", "clip"):
            raise ConfigError(f"ingest.label_rule={self.label_rule!r}: use 'local' or 'clip'")
        if self.label_window < 2:
            raise ConfigError(f"ingest.label_window={self.label_window}: must be >= 2")
        if self.label_shot_frames < 0:
            raise ConfigError(f"ingest.label_shot_frames={self.label_shot_frames}: must be >= 0 "
                              "(0: the clip's cut only)")
        if self.label_mild_z is not None and not (math.isfinite(self.label_mild_z)
                                                  and self.label_mild_z > 0):
            raise ConfigError(f"ingest.label_mild_z={self.label_mild_z}: must be > 0 "
                              "(none: no second pass)")
        if self.label_mild_window < 1:
            raise ConfigError(f"ingest.label_mild_window={self.label_mild_window}: must be >= 1")
        if not self.frame_rate > 0:
            raise ConfigError(f"ingest.frame_rate={self.frame_rate}: must be > 0")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"ingest.max_frames={self.max_frames}: must be >= 1 (or none: all)")
        if self.protocol not in ("auto", *PROTOCOLS):
            raise ConfigError(f"ingest.protocol={self.protocol!r}: use 'auto', 'paper' or "
                              "'camera'")
