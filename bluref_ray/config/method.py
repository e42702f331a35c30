"""Settings of the method and its training: pseudo-GT, refinement, training, deblurring."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bluref_ray.config.core import (
    LOSSES,
    MATCHER_NAMES,
    REFINERS,
    STRATEGIES,
    ConfigError,
    _help,
    execution,
    matching,
    method,
)


def _failures_field() -> Any:
    return field(default=3, metadata=_help(
        "times Ray Train replaces dead workers (a lost node) and goes on from the last "
        "checkpoint; -1: no limit"))


def _keep_field() -> Any:
    return field(default=3, metadata=_help(
        "newest checkpoints kept in OUT/ray-train, older ones deleted (0: keep all)"))


def _check_faults(cfg: Any, section: str) -> None:
    """What every training section shares: failures, checkpoints kept, cadences."""
    if cfg.max_failures < -1 or cfg.keep_checkpoints < 0:
        raise ConfigError(f"{section}.max_failures must be >= -1 and {section}.keep_checkpoints "
                          ">= 0")
    for name in ("checkpoint_every", "log_every", "val_every"):
        every = getattr(cfg, name, None)
        if every is not None and every < 1:
            raise ConfigError(f"{section}.{name}={every}: must be >= 1 (steps)")


#: The check's learned correction rule shipped in the package (``pseudo_gt.check_selector``).
SHIPPED_SELECTOR = "package://bluref_ray/assets/selector.pt"


@dataclass(frozen=True)
class PseudoGTConfig:
    """Pseudo-GT: match references to each blurry frame and fuse them (BluRef)."""

    max_refs: int = field(default=6, metadata=method("N: most references fused per blurry frame"))
    delta: int | None = field(
        default=None,
        metadata=method("Δ: use only references within ±delta frames of the blurry frame "
                        "(default: all that ingest picked, within its own ingest.delta)"))
    tau: float = field(
        default=0.7, metadata=method("τ: confidence threshold; pixels at or above it are covered"))
    strategy: str = field(
        default="reblur",
        metadata=method("fusion: 'reblur' (match, estimate the frame's blur kernel, blur the "
                        "references by it and match again; the sharpest pseudo-GT), "
                        "'sequential' (the running fusion is the next matching input), "
                        "'weighted' (average of independent matches) or 'progressive' (new "
                        "references only for pixels still below τ)"))
    kernel_size: int = field(
        default=41,
        metadata=method("reblur: side of the estimated blur kernel, pixels (odd; at least the "
                        "longest blur streak)"))
    check: bool = field(
        default=True,
        metadata=method("reblur: the physical check; a reference counts only where, blurred by "
                        "the blur estimated there, it reproduces the blurry frame, and where the "
                        "blurry frame is already sharp it is its own pseudo-sharp image "
                        "(confident pixels then beat or equal the blurry frame on real footage)"))
    check_gain: float = field(
        default=4.0,
        metadata=method("check: a reference must change the blurry frame this many times more "
                        "than its reblurred self misses it"))
    check_noise: float = field(
        default=2.0, metadata=method("check: the camera's noise level, 8-bit levels"))
    check_sharp: float | None = field(
        default=None,
        metadata=method("check: a pixel is already sharp where a reference and its reblurred self "
                        "both come within this many 8-bit levels of the blurry frame (more: "
                        "more coverage, less gain); default: with a selector 2.5 for clips of "
                        "the camera protocol and 2 for the paper protocol's, 2 with the physical "
                        "rule (each the best on the development clips of docs/results.md)"))
    check_tile: int = field(
        default=64,
        metadata=method("check: the reference is reblurred by kernels estimated per tile of this "
                        "side, pixels (real blur varies across a frame: a person moving before a "
                        "still background, depth); 0: by the frame's one kernel"))
    check_selector: str | None = field(
        default="auto",
        metadata=method("check: a learned rule decides where a reference corrects the blurry "
                        "frame, instead of check_gain: a selector checkpoint; 'auto': the one "
                        "shipped in the package (learned on real footage by "
                        "benchmarks/check_headroom.py with the learned matcher, whose confidence "
                        "it reads) when matcher is 'learned', the physical rule with 'dis'; "
                        "'none': the physical rule"))
    check_selector_p: float | None = field(
        default=None,
        metadata=method("check: with check_selector, a reference corrects a pixel where the "
                        "selector gives it at least this probability of halving the error "
                        "(less: more coverage, less precision); default: 0.7 for clips of the "
                        "camera protocol, 0.8 for the paper protocol's (references farther away)"))
    matcher: str = field(
        default="learned",
        metadata=matching("dense matcher: 'learned' (the network; --matcher-checkpoint) or 'dis' "
                          "(OpenCV DIS optical flow, the classical baseline)"))
    matcher_checkpoint: str = field(
        default="package://bluref_ray/assets/matcher.pt",
        metadata=matching("learned matcher checkpoint (default: the one shipped in the package)"))
    matcher_radius: float | None = field(
        default=4.0,
        metadata=matching("learned matcher: confidence as P(error < R px), R = 1, 2 or 4; 4 gave "
                          "the best pseudo-GT (none: the checkpoint's own)"))
    dis_refine: bool = field(
        default=True,
        metadata=matching("learned matcher: refine its flow, started from it (by DIS: see "
                          "refiner); the confidence stays the network's"))
    refiner: str = field(
        default="dis",
        metadata=matching("what refines the learned matcher's flow (dis_refine) and makes "
                          "reblur's second match: 'dis' (OpenCV DIS, on the CPU, pair by pair) "
                          "or 'torch' (DIS in PyTorch on the actor's device, batched: the GPU "
                          "path; see docs/results.md for its pseudo-GT beside dis's)"))
    dis_preset: str = field(
        default="medium", metadata=matching("DIS preset: ultrafast, fast or medium"))
    dis_ref_blur: float = field(
        default=1.5,
        metadata=matching("DIS: blur (sigma, px) applied to references before matching"))
    deblurrer: str | None = field(
        default=None,
        metadata=method("deblurrer checkpoint: match its output instead of the blurry frame "
                        "(iterative target refinement)"))
    round: int = field(default=1, metadata=method("refinement round recorded in the shards"))
    batch_size: int = field(
        default=8, metadata=execution("blurry frames matched together in one batch"))
    targets_per_shard: int = field(
        default=16, metadata=execution("blurry frames per shard (consecutive frames of one clip)"))
    concurrency: int | None = field(
        default=None,
        metadata=execution("matching actors (default: one per GPU, else the CPUs but one "
                           "for loading and writing, at least two on two CPUs or more)"))
    max_concurrency: int | None = field(
        default=None,
        metadata=execution("elastic pool: start with --concurrency actors (waited for) and grow "
                           "to this many as the autoscaler adds nodes (default: a fixed pool)"))
    cpus_per_actor: float = field(default=1.0, metadata=execution("CPUs reserved by each actor"))
    gpus_per_actor: float | None = field(
        default=None,
        metadata=execution("GPUs per actor (default: 1 if the cluster has GPUs, else 0)"))
    memory_per_actor: float | None = field(
        default=None,
        metadata=execution("GiB of memory each actor asks Ray for, so that a node gets no more "
                           "actors than its memory holds; raise it for frames above 720p "
                           "(default: 2, at most half the cluster's memory over the actors)"))
    limit: int | None = field(
        default=None, metadata=execution("process at most this many blurry frames per clip"))
    overwrite: bool = field(
        default=False,
        metadata=execution("delete earlier results in --out instead of resuming from them"))

    def selector_uri(self) -> str:
        """The selector checkpoint the check uses, ``check_selector`` resolved; ``""``: the
        physical rule (or no check at all)."""
        if not self.check or (self.check_selector or "none").lower() in ("", "none"):
            return ""
        if self.check_selector.lower() == "auto":
            return SHIPPED_SELECTOR if self.matcher == "learned" else ""
        return self.check_selector

    def sharp_level(self, protocol: str = "camera") -> float:
        """``check_sharp`` resolved for clips of reference ``protocol``: 8-bit levels."""
        if self.check_sharp is not None:
            return self.check_sharp
        return 2.5 if self.selector_uri() and protocol != "paper" else 2.0

    def selector_p(self, protocol: str = "camera") -> float:
        """``check_selector_p`` resolved for clips of reference ``protocol``."""
        if self.check_selector_p is not None:
            return self.check_selector_p
        return 0.8 if protocol == "paper" else 0.7

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"pseudo_gt.strategy={self.strategy!r}: use one of "
                              f"{', '.join(STRATEGIES)}")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"pseudo_gt.tau={self.tau}: must be within (0, 1]")
        if self.check_gain <= 0 or self.check_noise < 0 or self.sharp_level() < 0:
            raise ConfigError("pseudo_gt.check_gain must be > 0, check_noise and check_sharp >= 0")
        if self.check_selector_p is not None and not 0 < self.check_selector_p < 1:
            raise ConfigError(f"pseudo_gt.check_selector_p={self.check_selector_p}: a "
                              "probability, between 0 and 1")
        if self.check_tile != 0 and self.check_tile < 16:
            raise ConfigError(f"pseudo_gt.check_tile={self.check_tile}: 0 (one kernel per frame) "
                              "or at least 16 pixels")
        if self.kernel_size < 3 or self.kernel_size % 2 == 0:
            raise ConfigError(f"pseudo_gt.kernel_size={self.kernel_size}: an odd number >= 3")
        if self.max_refs < 1 or self.batch_size < 1 or self.targets_per_shard < 1:
            raise ConfigError("pseudo_gt.max_refs, batch_size and targets_per_shard must be >= 1")
        if self.delta is not None and self.delta < 1:
            raise ConfigError(f"pseudo_gt.delta={self.delta}: must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"pseudo_gt.limit={self.limit}: must be >= 1 (or unset: every "
                              "blurry frame)")
        if self.matcher not in MATCHER_NAMES:
            raise ConfigError(f"pseudo_gt.matcher={self.matcher!r}: use one of "
                              f"{', '.join(MATCHER_NAMES)}")
        if self.refiner not in REFINERS:
            raise ConfigError(f"pseudo_gt.refiner={self.refiner!r}: use one of "
                              f"{', '.join(REFINERS)}")
        if self.matcher_radius not in (None, 1.0, 2.0, 4.0):
            raise ConfigError(f"pseudo_gt.matcher_radius={self.matcher_radius}: use 1, 2 or 4")
        check_pool("pseudo_gt", self.concurrency, self.max_concurrency)
        if self.memory_per_actor is not None and self.memory_per_actor <= 0:
            raise ConfigError(f"pseudo_gt.memory_per_actor={self.memory_per_actor}: GiB, > 0")


def check_pool(section: str, concurrency: int | None, max_concurrency: int | None) -> None:
    """An actor pool's size: at least one actor, the maximum not below the minimum."""
    if concurrency is not None and concurrency < 1:
        raise ConfigError(f"{section}.concurrency={concurrency}: must be >= 1")
    if max_concurrency is not None and max_concurrency < max(1, concurrency or 1):
        raise ConfigError(f"{section}.max_concurrency={max_concurrency}: must be >= "
                          f"{section}.concurrency ({concurrency or 1})")


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
    max_failures: int = _failures_field()
    keep_checkpoints: int = _keep_field()
    seed: int = field(default=0, metadata=_help("random seed of the synthetic pairs"))

    def validate(self) -> None:
        _check_faults(self, "train_matcher")
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
    max_failures: int = _failures_field()
    keep_checkpoints: int = _keep_field()
    seed: int = field(default=0, metadata=_help("random seed"))

    def validate(self) -> None:
        _check_faults(self, "train")
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
        if self.steps_later is not None and self.steps_later < 1:
            raise ConfigError(f"refine.steps_later={self.steps_later}: must be >= 1 (or unset: "
                              "train.steps)")


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
    max_concurrency: int | None = field(
        default=None,
        metadata=_help("elastic pool: start with --concurrency actors (waited for) and grow to "
                       "this many as the autoscaler adds nodes (default: a fixed pool)"))
    cpus_per_actor: float = field(default=1.0, metadata=_help("CPUs reserved by each actor"))
    gpus_per_actor: float | None = field(
        default=None, metadata=_help("GPUs per actor (default: 1 if the cluster has GPUs)"))
    memory_per_actor: float | None = field(
        default=None,
        metadata=_help("GiB of memory each actor asks Ray for, so that a node gets no more "
                       "actors than its memory holds; raise it for models larger than "
                       "nafnet-width32 or a larger tile (default: 3, at most half the cluster's "
                       "memory over the actors)"))
    crf: int = field(default=12, metadata=_help("H.264 quality of output videos (0 = lossless)"))
    overwrite: bool = field(
        default=False, metadata=_help("redo outputs that already exist instead of skipping"))
    reference: str = field(
        default="auto",
        metadata=_help("for a model that reads a reference frame (Ref-NAFNet): auto (the "
                       "sharpest frame within ±reference_delta of each frame of a video, or of "
                       "the images of a folder in name order) or the path of one image"))
    reference_delta: int = field(
        default=30, metadata=_help("Δ of reference=auto, in frames (or images)"))

    def validate(self) -> None:
        if self.reference_delta < 1:
            raise ConfigError(f"deblur.reference_delta={self.reference_delta}: must be >= 1")
        if self.tile and self.tile <= 2 * self.tile_overlap:
            raise ConfigError(f"deblur.tile={self.tile} must exceed twice "
                              f"deblur.tile_overlap={self.tile_overlap} (or be 0)")
        if self.batch_size < 1:
            raise ConfigError("deblur.batch_size must be >= 1")
        check_pool("deblur", self.concurrency, self.max_concurrency)
        if self.memory_per_actor is not None and self.memory_per_actor <= 0:
            raise ConfigError(f"deblur.memory_per_actor={self.memory_per_actor}: GiB, > 0")


@dataclass(frozen=True)
class _TrainingRun:
    """What every training run on Ray Train needs besides its model: steps, batch, workers,
    logging and checkpoints (the fields :func:`bluref_ray.training.loop.train_loop` reads)."""

    steps: int = field(default=1000, metadata=_help("optimizer steps"))
    batch_size: int = field(default=8, metadata=_help("crops per step, over all workers"))
    crop: int = field(default=64, metadata=_help("side of the square random training crops"))
    workers: int = field(default=1, metadata=_help("DDP workers (Ray Train)"))
    use_gpu: bool | None = field(
        default=None, metadata=_help("train on GPUs (default: when the cluster has them)"))
    cpus_per_worker: float = field(default=1.0, metadata=_help("CPUs each worker reserves"))
    threads: int | None = field(
        default=None, metadata=_help("torch threads per worker (default: cpus_per_worker)"))
    amp: bool = field(default=True, metadata=_help("mixed precision (bfloat16), on CUDA only"))
    max_frames: int = field(
        default=400,
        metadata=_help("most frames (or pairs) of each set held in each worker's memory, "
                       "evenly picked"))
    val_frames: int = field(default=8, metadata=_help("validation frames (evenly picked)"))
    val_every: int = field(default=250, metadata=_help("steps between validations"))
    log_every: int = field(default=25, metadata=_help("steps between log lines and scalars"))
    checkpoint_every: int = field(default=250, metadata=_help("steps between checkpoints"))
    max_failures: int = _failures_field()
    keep_checkpoints: int = _keep_field()
    seed: int = field(default=0, metadata=_help("random seed"))

    def _check_run(self, section: str) -> None:
        _check_faults(self, section)
        if self.steps < 1 or self.batch_size < 1 or self.workers < 1 or self.crop < 32:
            raise ConfigError(f"{section}.steps, batch_size, workers must be >= 1 and "
                              "crop >= 32")
        if self.batch_size % self.workers:
            raise ConfigError(f"{section}.batch_size={self.batch_size} must divide by "
                              f"{section}.workers={self.workers}")


@dataclass(frozen=True)
class KernelConfig(_TrainingRun):
    """Blur2Blur's blur-kernel extractor: F reads a blur code from a known (sharp, blurry)
    pair, G applies it to a sharp image; trained together on known pairs (Charbonnier)."""

    model: str = field(
        default="kernel-tiny",
        metadata=_help("network: kernel-tiny (CPU) or kernel-wizard (the paper's size)"))
    lr: float = field(default=1e-3, metadata=_help("Adam peak learning rate (cosine decay)"))

    def validate(self) -> None:
        self._check_run("kernel")


@dataclass(frozen=True)
class Blur2BlurConfig(_TrainingRun):
    """Blur2Blur: a translator from the camera's blur to a known blur, trained adversarially
    against sets of known blur made from the camera's own sharp frames (kernel transfer)."""

    known: str | None = field(
        default=None,
        metadata=_help("the known domain: GoPro-style tree(s) <seq>/{blur,sharp}/ of paired "
                       "frames with the blur the known deblurrer handles"))
    kernel: str | None = field(
        default=None, metadata=_help("the kernel extractor (`bluref train-kernel` OUT/model.pt)"))
    deblurrer: str | None = field(
        default=None,
        metadata=_help("the known-domain deblurrer (a bluref-ray model.pt, or a network of "
                       "your own saved by torch.export or TorchScript): validation scores "
                       "translator → deblurrer, and OUT/model.pt is that chain"))
    translator: str = field(
        default="mimo-tiny", metadata=_help("translator: mimo-tiny (CPU) or mimo-unet (paper)"))
    discriminator: str = field(
        default="patchgan-plain-tiny",
        metadata=_help("discriminator: patchgan-plain-tiny (CPU) or patchgan-plain (the paper's "
                       "size), without instance norm; patchgan-tiny or patchgan: with it, as in "
                       "the paper (blind to how strong the detail is)"))
    adversarial: float = field(
        default=1.0, metadata=_help("weight of the adversarial (hinge) loss; 0: content only "
                                    "(a control)"))
    gp_weight: float = field(
        default=1e-3, metadata=_help("λ of the discriminator's gradient penalty (paper: 1e-4 "
                                     "to 5e-3)"))
    content_weight: float = field(
        default=0.8, metadata=_help("λ of the content loss between the output and its input"))
    content: str = field(
        default="pixels",
        metadata=_help("what the content loss compares: pixels (images low-passed by a 4x4 "
                       "average: colour and layout stay, detail is free to change), matcher "
                       "(the shipped matcher's feature pyramid) or vgg19 (needs vgg19_weights)"))
    vgg19_weights: str | None = field(
        default=None, metadata=_help("path of torchvision VGG19 weights (content=vgg19)"))
    disc_input: str = field(
        default="detail",
        metadata=_help("what the discriminator judges: detail (the image minus its 4x4 "
                       "low-pass: blur and noise, not the colour and layout of the scenes, "
                       "which the content loss keeps) or image (the paper)"))
    scene_split: float = field(
        default=0.6,
        metadata=_help("share of the camera's clips whose blurry frames are translated; the "
                       "others give the sharp frames (split by clip, so no blurry frame's truth "
                       "is among them)"))
    curriculum: float = field(
        default=0.3,
        metadata=_help("share of the steps that see only the least blurry half of the blurry "
                       "frames (variance of the Laplacian), before all of them"))
    lr: float = field(default=2e-4, metadata=_help("Adam learning rate of both networks"))
    val: str | None = field(
        default=None,
        metadata=_help("validation tree with ground truth in the camera's blur: scores the "
                       "known deblurrer on translated frames (needs deblurrer)"))

    def validate(self) -> None:
        self._check_run("blur2blur")
        if not 0.0 < self.scene_split < 1.0:
            raise ConfigError(f"blur2blur.scene_split={self.scene_split}: must be within (0, 1)")
        if not 0.0 <= self.curriculum <= 1.0:
            raise ConfigError(f"blur2blur.curriculum={self.curriculum}: must be within [0, 1]")
        if min(self.adversarial, self.gp_weight, self.content_weight) < 0:
            raise ConfigError("blur2blur.adversarial, gp_weight and content_weight must be >= 0")
        if self.disc_input not in ("image", "detail"):
            raise ConfigError(f"blur2blur.disc_input={self.disc_input!r}: use image or detail")
        if self.content not in ("matcher", "vgg19", "pixels"):
            raise ConfigError(f"blur2blur.content={self.content!r}: use matcher, vgg19 or "
                              "pixels")


@dataclass(frozen=True)
class RefNetConfig(_TrainingRun):
    """Ref-NAFNet: a deblurrer that also reads a sharp reference frame, trained on (blurry,
    reference, target) triplets from the frames table: the target is the ground truth, or with
    ``pairs`` BluRef's pseudo-sharp frame under its confidence mask (no paired data at all)."""

    model: str = field(
        default="refnafnet-tiny",
        metadata=_help("network: refnafnet-tiny (CPU), refnafnet-width32, refnafnet-width64; "
                       "or a single-image NAFNet preset trained on the same triplets without "
                       "the reference (the baseline of the same budget)"))
    pairs: str | None = field(
        default=None,
        metadata=_help("`bluref pseudo-gt` OUT: train on its pseudo-pairs (masked by "
                       "confidence >= tau) instead of the ground truth"))
    reference: str = field(
        default="sharpest",
        metadata=_help("which frame within ±delta is the reference: sharpest, middle, "
                       "blurriest (by the frequency sharpness score), random, or shuffled (a "
                       "frame of another clip: a control)"))
    delta: int = field(
        default=30, metadata=_help("Δ: references come from within ±delta frames (paper: 30)"))
    reference_crop: float = field(
        default=2.0,
        metadata=_help("side of the reference's training crop, as a multiple of crop: the "
                       "square around the blurry crop, so that what it shows is in view though "
                       "the camera moved"))
    tau: float = field(
        default=0.7, metadata=_help("τ: with pairs, the loss counts pixels of confidence >= tau"))
    fft_weight: float = field(
        default=0.01,
        metadata=_help("weight of the L1 distance of the Fourier transforms beside Charbonnier, "
                       "at every output scale"))
    match_features: str = field(
        default="matcher",
        metadata=_help("features that match the estimate to the reference: matcher (the "
                       "shipped matcher's first stage) or vgg19 (needs vgg19_weights)"))
    vgg19_weights: str | None = field(
        default=None, metadata=_help("path of torchvision VGG19 weights (match_features=vgg19)"))
    lr: float = field(default=2e-3, metadata=_help("AdamW peak learning rate (cosine decay)"))
    weight_decay: float = field(default=1e-4, metadata=_help("AdamW weight decay"))
    val: str | None = field(
        default=None,
        metadata=_help("validation frames: a `bluref ingest` OUT of held-out clips with ground "
                       "truth; PSNR with the reference chosen by `reference`"))

    def validate(self) -> None:
        from bluref_ray.data.triplets import REFERENCE_RULES

        self._check_run("refnet")
        if self.reference not in REFERENCE_RULES:
            raise ConfigError(f"refnet.reference={self.reference!r}: use one of "
                              f"{', '.join(REFERENCE_RULES)}")
        if self.delta < 1:
            raise ConfigError(f"refnet.delta={self.delta}: must be >= 1")
        if self.reference_crop < 1:
            raise ConfigError(f"refnet.reference_crop={self.reference_crop}: must be >= 1")
        if self.crop % 4:  # the 1/2 and 1/4 scale outputs cover whole 4×4 blocks of the crop
            raise ConfigError(f"refnet.crop={self.crop}: must be a multiple of 4 (its 1/2 and "
                              "1/4 scale outputs are compared with the target at those scales)")
        if self.fft_weight < 0 or not 0.0 <= self.tau <= 1.0:
            raise ConfigError("refnet.fft_weight must be >= 0 and refnet.tau within [0, 1]")
        if self.match_features not in ("matcher", "vgg19"):
            raise ConfigError(f"refnet.match_features={self.match_features!r}: use matcher or "
                              "vgg19")
