"""Configuration: frozen dataclasses, loaded from YAML, overridable by dotted keys.

Every section is a frozen dataclass whose fields carry their help text in
``field(metadata={"help": ...})``. The CLI builds its ``--options`` from those fields, so a
setting has one name, one default and one explanation everywhere::

    storage:                # StorageConfig
      endpoint_url: http://127.0.0.1:8333
    ingest:
      max_refs: 6
      delta: 10

``load_config("run.yaml", ["ingest.delta=20"])`` reads the file (local or ``s3://``), applies the
overrides, checks every key and value, and returns a :class:`Config`. Unknown keys and values of
the wrong type are :class:`ConfigError` s that name the key and the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from bluref_ray import storage
from bluref_ray.storage import StorageConfig


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


def _help(text: str, **kw: Any) -> dict:
    return {"help": text, **kw}


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
        "none at its centre (radial blur)", "forward_px")
    depth: float | None = _look_field(
        "parallax of a ground plane: camera motion moves the bottom row (1 + depth) times and "
        "the top row (1 - depth) times as far as the centre, so blur grows down the frame",
        "depth")
    exposure_stops: float | None = _look_field(
        "auto-exposure drift between frames, largest change in stops", "exposure_stops")
    white_balance: float | None = _look_field(
        "white-balance drift between frames, largest per-channel gain change (0.04 = ±4%)",
        "white_balance")
    jpeg_quality: int | None = _look_field(
        "JPEG quality each recorded frame of the tree goes through (0 = lossless PNG), as a "
        "camera's encoder", "jpeg_quality")
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
        from bluref_ray.data.camera import available_photos

        unknown = [s for s in self.scenes.split(",") if s not in available_photos()]
        if unknown or not self.scenes:
            raise ConfigError(f"synth.scenes: unknown photo(s) {unknown}; available: "
                              f"{', '.join(available_photos())}")
        if self.video_ext not in ("mp4", "mkv", "avi", "mov"):
            raise ConfigError(f"synth.video_ext={self.video_ext!r}: use mp4, mkv, avi or mov")
        if self.look not in LOOKS:
            raise ConfigError(f"synth.look={self.look!r}: use {' or '.join(LOOKS)}")
        r = self.resolved()
        for name in ("forward_px", "depth", "exposure_stops", "white_balance"):
            if getattr(r, name) < 0:
                raise ConfigError(f"synth.{name}={getattr(r, name)}: must be >= 0")
        if r.depth >= 1:
            raise ConfigError(f"synth.depth={r.depth}: must be below 1 (the top row would "
                              "move backwards)")
        if not 0 <= r.jpeg_quality <= 100:
            raise ConfigError(f"synth.jpeg_quality={r.jpeg_quality}: use 0 (off) to 100")

    def resolved(self) -> SynthConfig:
        """This config with every setting left to the look (None) filled in from it."""
        return dataclasses.replace(self, **{k: v for k, v in LOOKS[self.look].items()
                                            if getattr(self, k) is None})


@dataclass(frozen=True)
class IngestConfig:
    """Ingest: decode, score sharpness, label blurry/sharp, pick references."""

    max_refs: int = field(default=6, metadata=_help("N: most sharp references per blurry frame"))
    delta: int = field(
        default=10, metadata=_help("Δ: references lie within ±delta frames of the blurry frame"))
    label_score: str = field(
        default="laplacian",
        metadata=_help("score that labels video frames: 'laplacian' (variance of the Laplacian) "
                       "or 'fft' (Zou et al. frequency score)"))
    label_rule: str = field(
        default="local",
        metadata=_help("how video and image-folder frames are labelled: 'local' (a frame is "
                       "blurry against the sharp level of the frames within ±label_window of "
                       "its shot: scene content cancels out) or 'clip' (Otsu's threshold over "
                       "the whole clip's scores)"))
    label_window: int = field(
        default=10, metadata=_help("local rule: frames on each side that set a frame's sharp "
                                   "level"))
    threshold: float | None = field(
        default=None,
        metadata=_help("fixed sharpness threshold for the label score (frames below are blurry); "
                       "overrides label_rule"))
    min_spread: float = field(
        default=0.15,
        metadata=_help("clip rule: a clip whose log label scores spread less than this (std) is "
                       "one population: all sharp, no automatic split"))
    protocol: str = field(
        default="auto",
        metadata=_help("which sharp frames may be references: 'camera' (only frames recorded "
                       "sharp: videos, and trees whose blur/ holds some indices), 'paper' (the "
                       "sharp frame of every other index within ±delta, never the frame's own: "
                       "the BluRef paper's protocol on paired trees) or 'auto' (paper for paired "
                       "trees, whose blur/ holds every index; camera otherwise)"))
    frame_rate: float = field(
        default=30.0, metadata=_help("frame rate assumed for frame trees (timestamps)"))
    max_frames: int | None = field(
        default=None, metadata=_help("read at most this many frames per clip"))
    score_max_side: int = field(
        default=0, metadata=_help("score on frames shrunk to this longest side (0 = full size)"))
    clips_per_task: int = field(
        default=1, metadata=_help("clips each Ray task ingests"))
    overwrite: bool = field(
        default=False,
        metadata=_help("delete earlier results in --out instead of resuming from them"))

    def validate(self) -> None:
        if self.max_refs < 0 or self.delta < 1:
            raise ConfigError("ingest.max_refs must be >= 0 and ingest.delta >= 1")
        if self.label_score not in ("laplacian", "fft"):
            raise ConfigError(f"ingest.label_score={self.label_score!r}: use 'laplacian' or 'fft'")
        if self.label_rule not in ("local", "clip"):
            raise ConfigError(f"ingest.label_rule={self.label_rule!r}: use 'local' or 'clip'")
        if self.label_window < 2:
            raise ConfigError(f"ingest.label_window={self.label_window}: must be >= 2")
        if self.protocol not in ("auto", "paper", "camera"):
            raise ConfigError(f"ingest.protocol={self.protocol!r}: use 'auto', 'paper' or "
                              "'camera'")


@dataclass(frozen=True)
class PseudoGTConfig:
    """Pseudo-GT: match references to each blurry frame and fuse them (BluRef)."""

    max_refs: int = field(default=6, metadata=_help("N: most references fused per blurry frame"))
    delta: int | None = field(
        default=None,
        metadata=_help("Δ: use only references within ±delta frames of the blurry frame "
                       "(default: all that ingest picked, within its own ingest.delta)"))
    tau: float = field(
        default=0.7, metadata=_help("τ: confidence threshold; pixels at or above it are covered"))
    strategy: str = field(
        default="reblur",
        metadata=_help("fusion: 'reblur' (match, estimate the frame's blur kernel, blur the "
                       "references by it and match again; the sharpest pseudo-GT), "
                       "'sequential' (the running fusion is the next matching input), "
                       "'weighted' (average of independent matches) or 'progressive' (new "
                       "references only for pixels still below τ)"))
    kernel_size: int = field(
        default=41,
        metadata=_help("reblur: side of the estimated blur kernel, pixels (odd; at least the "
                       "longest blur streak)"))
    check: bool = field(
        default=True,
        metadata=_help("reblur: the physical check; a reference counts only where, blurred by "
                       "the frame's kernel, it reproduces the blurry frame, and where the blurry "
                       "frame is already sharp it is its own pseudo-sharp image (confident "
                       "pixels then beat or equal the blurry frame on real footage)"))
    check_gain: float = field(
        default=4.0,
        metadata=_help("check: a reference must change the blurry frame this many times more "
                       "than its reblurred self misses it"))
    check_noise: float = field(
        default=2.0, metadata=_help("check: the camera's noise level, 8-bit levels"))
    matcher: str = field(
        default="learned",
        metadata=_help("dense matcher: 'learned' (the network; --matcher-checkpoint) or 'dis' "
                       "(OpenCV DIS optical flow, the classical baseline)"))
    matcher_checkpoint: str = field(
        default="package://bluref_ray/assets/matcher.pt",
        metadata=_help("learned matcher checkpoint (default: the one shipped in the package)"))
    matcher_radius: float | None = field(
        default=4.0,
        metadata=_help("learned matcher: confidence as P(error < R px), R = 1, 2 or 4; 4 gave "
                       "the best pseudo-GT (none: the checkpoint's own)"))
    dis_refine: bool = field(
        default=True,
        metadata=_help("learned matcher: refine its flow with DIS started from it (sub-pixel "
                       "precision; on the CPU); the confidence stays the network's"))
    dis_preset: str = field(
        default="medium", metadata=_help("DIS preset: ultrafast, fast or medium"))
    dis_ref_blur: float = field(
        default=1.5, metadata=_help("DIS: blur (sigma, px) applied to references before matching"))
    deblurrer: str | None = field(
        default=None,
        metadata=_help("deblurrer checkpoint: match its output instead of the blurry frame "
                       "(iterative target refinement)"))
    round: int = field(default=1, metadata=_help("refinement round recorded in the shards"))
    batch_size: int = field(
        default=8, metadata=_help("blurry frames matched together in one batch"))
    targets_per_shard: int = field(
        default=16, metadata=_help("blurry frames per shard (consecutive frames of one clip)"))
    concurrency: int | None = field(
        default=None,
        metadata=_help("matching actors (default: one per GPU, else half the CPUs)"))
    cpus_per_actor: float = field(default=1.0, metadata=_help("CPUs reserved by each actor"))
    gpus_per_actor: float | None = field(
        default=None, metadata=_help("GPUs per actor (default: 1 if the cluster has GPUs, else 0)"))
    limit: int | None = field(
        default=None, metadata=_help("process at most this many blurry frames per clip"))
    overwrite: bool = field(
        default=False,
        metadata=_help("delete earlier results in --out instead of resuming from them"))

    def validate(self) -> None:
        from bluref_ray.fusion import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise ConfigError(f"pseudo_gt.strategy={self.strategy!r}: use one of "
                              f"{', '.join(STRATEGIES)}")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"pseudo_gt.tau={self.tau}: must be within (0, 1]")
        if self.check_gain <= 0 or self.check_noise < 0:
            raise ConfigError("pseudo_gt.check_gain must be > 0 and check_noise >= 0")
        if self.kernel_size < 3 or self.kernel_size % 2 == 0:
            raise ConfigError(f"pseudo_gt.kernel_size={self.kernel_size}: an odd number >= 3")
        if self.max_refs < 1 or self.batch_size < 1 or self.targets_per_shard < 1:
            raise ConfigError("pseudo_gt.max_refs, batch_size and targets_per_shard must be >= 1")
        if self.delta is not None and self.delta < 1:
            raise ConfigError(f"pseudo_gt.delta={self.delta}: must be >= 1")
        if self.matcher not in ("learned", "dis"):
            raise ConfigError(f"pseudo_gt.matcher={self.matcher!r}: use 'learned' or 'dis'")
        if self.matcher_radius not in (None, 1.0, 2.0, 4.0):
            raise ConfigError(f"pseudo_gt.matcher_radius={self.matcher_radius}: use 1, 2 or 4")


@dataclass(frozen=True)
class MatcherTrainConfig:
    """Self-supervised training of the dense matcher on synthetic warps of real photos."""

    steps: int = field(default=3000, metadata=_help("optimizer steps"))
    batch_size: int = field(
        default=8, metadata=_help("pairs per step, over all workers together"))
    lr: float = field(default=4e-4, metadata=_help("AdamW learning rate (cosine decay)"))
    weight_decay: float = field(default=1e-4, metadata=_help("AdamW weight decay"))
    crop: int = field(default=192, metadata=_help("side of the square training crops, pixels"))
    workers: int = field(default=2, metadata=_help("DDP workers (Ray Train)"))
    use_gpu: bool | None = field(
        default=None, metadata=_help("train on GPUs (default: when the cluster has them)"))
    cpus_per_worker: float = field(default=1.0, metadata=_help("CPUs per worker"))
    radius_px: float = field(
        default=1.0,
        metadata=_help("R of the default confidence, P(|flow error| < R px): 1, 2 or 4 (the "
                       "network predicts all three)"))
    global_size: int = field(
        default=192, metadata=_help("side both images are resized to for global correlation"))
    images: str | None = field(
        default=None, metadata=_help("extra training photos: a folder or bucket of images"))
    backbone: str | None = field(
        default=None, metadata=_help("checkpoint with feature-pyramid weights to start from"))
    init: str | None = field(
        default=None,
        metadata=_help("matcher checkpoint to start from (fine-tuning; layers it lacks start "
                       "fresh), e.g. package://bluref_ray/assets/matcher.pt"))
    half_level: bool = field(
        default=True, metadata=_help("refine the flow at 1/2 resolution (sub-pixel precision)"))
    objects: float = field(
        default=0.5,
        metadata=_help("share of pairs with a foreground object that moves on its own (its own "
                       "flow and blur, and the background it hides), as in fleet video"))
    log_every: int = field(default=25, metadata=_help("steps between TensorBoard scalars"))
    checkpoint_every: int = field(default=250, metadata=_help("steps between checkpoints"))
    seed: int = field(default=0, metadata=_help("random seed of the synthetic pairs"))

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.workers < 1:
            raise ConfigError("train_matcher.steps, batch_size and workers must be >= 1")
        if self.batch_size % self.workers:
            raise ConfigError(f"train_matcher.batch_size={self.batch_size} must divide by "
                              f"train_matcher.workers={self.workers}")
        if not 0.0 <= self.objects <= 1.0:
            raise ConfigError(f"train_matcher.objects={self.objects}: a share, from 0 to 1")
        if self.radius_px not in (1.0, 2.0, 4.0):
            raise ConfigError(f"train_matcher.radius_px={self.radius_px}: use 1, 2 or 4")
        if self.crop < 64 or self.global_size % 16:
            raise ConfigError("train_matcher.crop must be >= 64 and global_size a multiple of 16")


@dataclass(frozen=True)
class TrainConfig:
    """Training the deblurrer on (blurry, pseudo-sharp) pairs with the masked BluRef loss."""

    model: str = field(
        default="nafnet-tiny",
        metadata=_help("network: a preset (nafnet-tiny, nafnet-width32, nafnet-width64, "
                       "restormer-tiny, restormer) or an architecture name (nafnet, restormer)"))
    loss: str = field(
        default="l1", metadata=_help("reconstruction loss: l1, l2, psnr or charbonnier"))
    tau: float = field(
        default=0.7,
        metadata=_help("τ: the loss counts only pixels whose pseudo-GT confidence is >= tau"))
    supervised: bool = field(
        default=False,
        metadata=_help("train on the ground truth (gt_uri of each pair) without a mask: the "
                       "supervised upper bound"))
    steps: int = field(default=600, metadata=_help("optimizer steps"))
    batch_size: int = field(
        default=8, metadata=_help("crops per step, over all workers together"))
    crop: int = field(default=96, metadata=_help("side of the square random training crops"))
    crops_per_frame: int = field(
        default=32,
        metadata=_help("random crops cut from each pair per pass over the data (more crops per "
                       "decoded frame: less decoding per step)"))
    color_aug: bool = field(
        default=True,
        metadata=_help("augment crops with a random channel order and brightness (x0.5 to x1), "
                       "the same for input and target, on top of flips: better on scenes whose "
                       "colours the training clips lack"))
    lr: float = field(default=2e-3, metadata=_help("AdamW peak learning rate (cosine decay)"))
    weight_decay: float = field(default=1e-4, metadata=_help("AdamW weight decay"))
    workers: int = field(default=1, metadata=_help("DDP workers (Ray Train)"))
    use_gpu: bool | None = field(
        default=None, metadata=_help("train on GPUs (default: when the cluster has them)"))
    cpus_per_worker: float = field(
        default=1.0, metadata=_help("CPUs each worker reserves (leave some for data loading)"))
    threads: int | None = field(
        default=None, metadata=_help("torch threads per worker (default: cpus_per_worker)"))
    amp: bool = field(default=True, metadata=_help("mixed precision (bfloat16), on CUDA only"))
    val: str | None = field(
        default=None,
        metadata=_help("validation frames with ground truth: GoPro-style tree "
                       "(<seq>/{blur,sharp}/) or its parent; PSNR/SSIM are reported"))
    val_frames: int = field(default=16, metadata=_help("validation frames used (evenly picked)"))
    val_every: int = field(default=200, metadata=_help("steps between validations"))
    init: str | None = field(
        default=None,
        metadata=_help("checkpoint to start from (weights only: warm start of a refinement "
                       "round)"))
    log_every: int = field(default=25, metadata=_help("steps between log lines and scalars"))
    checkpoint_every: int = field(default=100, metadata=_help("steps between checkpoints"))
    seed: int = field(default=0, metadata=_help("random seed"))

    def validate(self) -> None:
        from bluref_ray.losses import LOSSES

        if self.loss not in LOSSES:
            raise ConfigError(f"train.loss={self.loss!r}: use one of {', '.join(LOSSES)}")
        if self.steps < 1 or self.batch_size < 1 or self.workers < 1 or self.crop < 16:
            raise ConfigError("train.steps, batch_size, workers must be >= 1 and crop >= 16")
        if self.batch_size % self.workers:
            raise ConfigError(f"train.batch_size={self.batch_size} must divide by "
                              f"train.workers={self.workers}")
        if not 0.0 <= self.tau <= 1.0:
            raise ConfigError(f"train.tau={self.tau}: must be within [0, 1]")


@dataclass(frozen=True)
class RefineConfig:
    """Iterative target refinement: pseudo-GT and training, round after round."""

    rounds: int = field(default=2, metadata=_help("K: rounds of pseudo-GT + training"))
    steps_later: int | None = field(
        default=None,
        metadata=_help("training steps of rounds 2..K, warm-started (default: train.steps)"))
    lr_later: float = field(
        default=0.25,
        metadata=_help("peak learning rate of rounds 2..K as a share of train.lr: a warm-started "
                       "round fine-tunes, and a full restart of the schedule undoes some of what "
                       "the last round learned"))

    def validate(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"refine.rounds={self.rounds}: must be >= 1")
        if not 0 < self.lr_later <= 1:
            raise ConfigError(f"refine.lr_later={self.lr_later}: must be in (0, 1]")


@dataclass(frozen=True)
class DeblurConfig:
    """Batch deblurring of images and videos with a trained checkpoint."""

    tile: int = field(
        default=512, metadata=_help("frames larger than this are deblurred in tiles of this "
                                    "side (0 = whole frames)"))
    tile_overlap: int = field(default=32, metadata=_help("overlap of neighbouring tiles, pixels"))
    batch_size: int = field(default=4, metadata=_help("files per batch of an actor"))
    concurrency: int | None = field(
        default=None, metadata=_help("deblurring actors (default: one per GPU, else 1)"))
    cpus_per_actor: float = field(default=1.0, metadata=_help("CPUs reserved by each actor"))
    gpus_per_actor: float | None = field(
        default=None, metadata=_help("GPUs per actor (default: 1 if the cluster has GPUs)"))
    crf: int = field(default=12, metadata=_help("H.264 quality of output videos (0 = lossless)"))
    overwrite: bool = field(
        default=False, metadata=_help("redo outputs that already exist instead of skipping"))

    def validate(self) -> None:
        if self.tile and self.tile <= 2 * self.tile_overlap:
            raise ConfigError(f"deblur.tile={self.tile} must exceed twice "
                              f"deblur.tile_overlap={self.tile_overlap} (or be 0)")
        if self.batch_size < 1:
            raise ConfigError("deblur.batch_size must be >= 1")


@dataclass(frozen=True)
class Config:
    """All sections. ``Config()`` holds the defaults."""

    storage: StorageConfig = field(default_factory=StorageConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    pseudo_gt: PseudoGTConfig = field(default_factory=PseudoGTConfig)
    train_matcher: MatcherTrainConfig = field(default_factory=MatcherTrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    deblur: DeblurConfig = field(default_factory=DeblurConfig)

    def validate(self) -> Config:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def config_hash(*sections: Any) -> str:
    """A short stable hash of dataclass sections (used to tell runs with other settings apart)."""
    blob = json.dumps([dataclasses.asdict(s) for s in sections], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a ``key=value`` string) to the field type ``tp``."""
    tp, optional = _unwrap_optional(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
        if optional:
            return None
        raise ConfigError(f"{key}: may not be empty")
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {value!r} is not a valid {tp.__name__}") from None
    raise ConfigError(f"{key}: unsupported field type {tp}")


def section_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, data: dict, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = section_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{where}.{name}" if where else name)
        else:
            kwargs[name] = coerce(value, tp, f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
    node[parts[-1]] = value


def load_config(path: str | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Read a YAML config (local or object storage), apply overrides, validate.

    Args:
        path: YAML file, or None for the defaults.
        overrides: ``["section.key=value", ...]`` or ``{"section.key": value}``; these win over
            the file.

    Raises:
        ConfigError: naming the file and key that is wrong.
    """
    data: dict = {}
    where = path or "<defaults>"
    if path:
        try:
            text = storage.read_text(path)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping of sections")
    items = overrides.items() if isinstance(overrides, dict) else [
        _split_override(o) for o in (overrides or [])]
    for key, value in items:  # strings are converted by coerce(), by the field's type
        _set_dotted(data, key, value)
    try:
        cfg = _build(Config, data, "")
        return cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _split_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()
