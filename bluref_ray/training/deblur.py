"""Training the deblurrer (``bluref train``) with Ray Train on pseudo-pairs streamed by Ray Data.

Stages:

1. **read** (Ray Data): the pseudo-pair shards (Parquet, PNG bytes) of ``bluref pseudo-gt``.
2. **crop** (Ray Data ``map_batches``, CPU tasks): :func:`crop_pairs` decodes each pair and cuts
   ``crops_per_frame`` random crops with random flips (and, with ``color_aug``, a random channel
   order and brightness): blurry, target (pseudo-sharp, or the ground truth in supervised mode)
   and the loss mask (pseudo-GT confidence ≥ τ; all ones in supervised mode). A new pass over
   the data draws new crops.
3. **train** (Ray Train ``TorchTrainer``, ``workers`` DDP processes, NCCL and a GPU each on a GPU
   cluster, gloo on CPUs): each worker reads its share through ``get_dataset_shard("train")``,
   and the masked loss (:mod:`bluref_ray.losses`) is minimised with AdamW on a warm-up + cosine
   schedule, with bfloat16 autocast on CUDA. Rank 0 validates on frames with ground truth
   (PSNR/SSIM by pyiqa) and logs to TensorBoard.

Output in ``OUT`` (local or ``s3://``)::

    OUT/ray-train/step_NNNNNN/state.pt    checkpoints (model, optimizer, schedule, step)
    OUT/model.pt                          the final network: {"arch", "kwargs", "state_dict", ...}
    OUT/train.json                        settings, validation history, timings
    OUT/tensorboard/                      losses, learning rate, samples/s, PSNR/SSIM, images

Started again with the same ``OUT``, it resumes from the newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from bluref_ray import schema, storage, tables
from bluref_ray.config import Config, ConfigError, TrainConfig
from bluref_ray.data.images import decode_image, random_flips, to_float
from bluref_ray.losses import confidence_level
from bluref_ray.models import absolute_paths
from bluref_ray.storage import StorageConfig
from bluref_ray.training.common import (
    check_resume,
    export_model,
    latest_checkpoint,
    settle_workers,
    warmup_cosine,
)
from bluref_ray.training.loop import Task, Worker, fit_task
from bluref_ray.training.validation import (
    describe_validation,
    load_pair_images,
    validate,
    validation_frames,
)

PAIR_COLUMNS = ["row_id", "blurry_png", "pseudo_png", "confidence_png", "gt_uri"]
#: CPUs of each data task (read, crop).
DATA_CPUS = 0.5
#: CPUs the training workers must leave free for Ray Data (less makes its operators wait
#: forever for resources).
DATA_CPUS_FREE = 1.0


def model_spec(name: str) -> tuple[str, dict]:
    """(architecture, keyword arguments) of a preset or architecture name."""
    from bluref_ray.models import PRESETS

    arch, kwargs = PRESETS.get(name, (name, {}))
    return arch, dict(kwargs)


def _check_model(tc: TrainConfig, storage_cfg: StorageConfig) -> None:
    """Refuse on the driver what every worker would fail on: a network that is not a deblurrer
    of one frame, or a ``train.init`` whose weights do not fit it."""
    from bluref_ray.models import IMAGE_TO_IMAGE, build_model, read_checkpoint

    arch, kwargs = model_spec(tc.model)
    if arch not in IMAGE_TO_IMAGE or arch in ("refnafnet", "chain", "exported"):
        raise ConfigError(f"train.model={tc.model!r}: not a deblurrer of one frame; use "
                          "nafnet-tiny, nafnet-width32, nafnet-width64, restormer-tiny or "
                          "restormer (Ref-NAFNet: bluref train-ref)")
    if not tc.init:
        return
    try:
        ckpt = read_checkpoint(tc.init, storage_cfg)
    except storage.StorageNotFoundError:
        raise ConfigError(f"train.init={tc.init}: no such checkpoint") from None
    except ValueError as e:
        raise ConfigError(f"train.init: {e}") from None
    try:
        build_model(arch, **kwargs).load_state_dict(ckpt.get("state_dict") or {})
    except RuntimeError:
        raise ConfigError(f"train.init={tc.init}: a {ckpt.get('arch')!r} checkpoint, whose "
                          f"weights do not fit train.model={tc.model}") from None


def shards_dir(pairs: str, storage_cfg: StorageConfig | None) -> str:
    """The shard folder of a ``bluref pseudo-gt`` output (or the folder itself)."""
    pairs = storage.normalize(pairs)
    sub = storage.join(pairs, "shards")
    return sub if storage.exists(sub, storage_cfg) else pairs


def _pad_to(img: np.ndarray, size: int) -> np.ndarray:
    ph, pw = max(0, size - img.shape[0]), max(0, size - img.shape[1])
    if not (ph or pw):
        return img
    pad = ((0, ph), (0, pw)) + ((0, 0),) * (img.ndim - 2)
    return np.pad(img, pad, mode="reflect" if min(img.shape[:2]) > max(ph, pw) else "edge")


def crop_pairs(batch: dict[str, np.ndarray], crop: int, crops_per_frame: int, tau: float,
               supervised: bool, storage_cfg: StorageConfig | None = None,
               rng: np.random.Generator | None = None,
               color_aug: bool = False) -> dict[str, np.ndarray]:
    """Decode pseudo-pairs and cut random crops with random flips.

    Args:
        batch: columns of :data:`PAIR_COLUMNS` (a Ray Data numpy batch).
        crop: side of the square crops (smaller frames are padded by reflection).
        crops_per_frame: crops cut from each pair.
        tau: the mask is ``confidence ≥ tau`` (confidence stored as ``round(255·c)``).
        supervised: the target is the ground truth (``gt_uri``) and the mask all ones.
        color_aug: also give each crop a random channel order and a random brightness
            (×0.5 to ×1), the same for blurry and target. Blur acts on each channel alike and
            scales with brightness, so the pair stays consistent, while the network sees more
            colours than a few training scenes hold.

    Returns:
        ``blurry`` and ``target`` ``[K, crop, crop, 3]`` uint8, ``mask`` ``[K, crop, crop]``
        uint8 (0 or 1), with ``K = crops_per_frame · rows``.

    Raises:
        ConfigError: supervised mode and a pair without ground truth.
    """
    rng = rng or np.random.default_rng()
    level = confidence_level(tau)
    out: dict[str, list[np.ndarray]] = {"blurry": [], "target": [], "mask": []}
    for i in range(len(batch["row_id"])):
        blurry = decode_image(batch["blurry_png"][i], "blurry_png")[0]
        if supervised:
            gt = batch["gt_uri"][i]
            if not gt:
                raise ConfigError(f"train.supervised: pair {batch['row_id'][i]} has no ground "
                                  "truth (gt_uri); supervised training needs paired data")
            target = decode_image(storage.read_bytes(gt, storage_cfg), gt)[0]
            if target.shape != blurry.shape:
                raise ValueError(f"{gt}: ground truth is {target.shape[:2]}, the blurry frame "
                                 f"{blurry.shape[:2]}")
            mask = np.ones(blurry.shape[:2], np.uint8)
        else:
            target = decode_image(batch["pseudo_png"][i], "pseudo_png")[0]
            conf = decode_image(batch["confidence_png"][i], "confidence_png")[0][..., 0]
            mask = (conf >= level).astype(np.uint8)
        stack = _pad_to(np.concatenate([blurry, target, mask[..., None]], axis=2), crop)
        h, w = stack.shape[:2]
        for _ in range(crops_per_frame):
            y, x = rng.integers(h - crop + 1), rng.integers(w - crop + 1)
            c = random_flips(stack[y:y + crop, x:x + crop], rng)
            if color_aug:
                c = _recolor(c, rng)
            out["blurry"].append(c[..., :3])
            out["target"].append(c[..., 3:6])
            out["mask"].append(c[..., 6])
    return {k: np.ascontiguousarray(np.stack(v)) for k, v in out.items()}


def _recolor(stack: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One channel order and one brightness for a crop's blurry (0:3) and target (3:6) images."""
    order = rng.permutation(3)
    gain = rng.uniform(0.5, 1.0)
    images = np.rint(stack[..., np.r_[order, order + 3]] * gain).astype(np.uint8)
    return np.concatenate([images, stack[..., 6:]], axis=2)


def pairs_dataset(pairs: str, cfg: TrainConfig, storage_cfg: StorageConfig):
    """The Ray Data pipeline of stages 1-2: shards → random crops."""
    import ray.data

    shards = shards_dir(pairs, storage_cfg)
    files = tables.listing(shards, storage_cfg).files
    if not files and cfg.supervised:
        return tree_dataset(pairs, cfg, storage_cfg)
    if not files:
        raise ConfigError(f"{shards}: no pseudo-pair shards (*.parquet); run `bluref pseudo-gt` "
                          "first (or train --supervised on a GoPro-style tree)")
    # every shard's footer checked first (by Ray tasks when there are many): a broken or
    # other-version shard is an error that names it, not a failure deep inside a worker
    tables.map_files(files, functools.partial(schema.check_file, schema=schema.PSEUDO_PAIRS,
                                              cfg=storage_cfg, columns=PAIR_COLUMNS))
    fs, _ = storage.resolve(shards, storage_cfg)
    ds = ray.data.read_parquet([storage.resolve(f, storage_cfg)[1] for f in files],
                               filesystem=fs, num_cpus=DATA_CPUS
                               ).select_columns(PAIR_COLUMNS)
    return ds.randomize_block_order().map_batches(
        crop_pairs, batch_size=4, num_cpus=DATA_CPUS,
        fn_kwargs={"crop": cfg.crop, "crops_per_frame": cfg.crops_per_frame, "tau": cfg.tau,
                   "supervised": cfg.supervised, "storage_cfg": storage_cfg,
                   "color_aug": cfg.color_aug})


def _read_blurry(batch: dict[str, np.ndarray], storage_cfg: StorageConfig | None
                 ) -> dict[str, np.ndarray]:
    """Rows of a paired tree (``row_id`` = the blurry file) as pairs :func:`crop_pairs` reads."""
    n = len(batch["row_id"])
    blurry = np.empty(n, dtype=object)
    blurry[:] = [storage.read_bytes(u, storage_cfg) for u in batch["row_id"]]
    return {"row_id": batch["row_id"], "blurry_png": blurry, "gt_uri": batch["gt_uri"],
            "pseudo_png": np.full(n, b"", dtype=object),
            "confidence_png": np.full(n, b"", dtype=object)}


def tree_dataset(tree: str, cfg: TrainConfig, storage_cfg: StorageConfig):
    """Supervised training straight from GoPro-style trees (``<seq>/{blur,sharp}/``): the
    known pairs of a dataset the user has, or that ``bluref synth`` made."""
    import ray.data

    from bluref_ray.data.domains import known_pairs

    items = [{"row_id": b, "gt_uri": s} for b, s in known_pairs(tree, storage_cfg)]
    return ray.data.from_items(items).randomize_block_order().map_batches(
        _read_blurry, batch_size=4, num_cpus=DATA_CPUS, fn_kwargs={"storage_cfg": storage_cfg}
    ).map_batches(
        crop_pairs, batch_size=4, num_cpus=DATA_CPUS,
        fn_kwargs={"crop": cfg.crop, "crops_per_frame": cfg.crops_per_frame, "tau": cfg.tau,
                   "supervised": True, "storage_cfg": storage_cfg, "color_aug": cfg.color_aug})


class DeblurTask(Task):
    """The deblurrer's part of :func:`bluref_ray.training.loop.train_loop`: the masked loss on
    crops of pseudo-pairs (or of true pairs), AdamW on a warm-up + cosine schedule, gradients
    clipped to 1; rank 0 validates on ``config["val"]`` (PSNR/SSIM, or NIQE without ground
    truth)."""

    name, items = "train", "crops"

    def __init__(self, cfg: TrainConfig, worker: Worker, config: dict) -> None:
        from bluref_ray.losses import build_loss
        from bluref_ray.models import build_model, read_checkpoint

        super().__init__(cfg, worker, config)
        self.arch, self.kwargs = model_spec(cfg.model)
        model = build_model(self.arch, **self.kwargs).to(worker.device)
        # a resumed run's checkpoint replaces these weights: the init is not read again (it
        # may be gone by then)
        if cfg.init and not latest_checkpoint(worker.out, worker.storage_cfg):
            model.load_state_dict(read_checkpoint(cfg.init, worker.storage_cfg,
                                                  worker.device)["state_dict"])
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                betas=(0.9, 0.9))
        warmup = max(1, min(100, cfg.steps // 20))
        self.nets, self.optimizers = {"model": model}, {"model": opt}
        self.schedules = {"model": torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine(cfg.steps, warmup))}
        self.loss_fn = build_loss(cfg.loss)
        self.val_images = (load_pair_images(config["val"], worker.storage_cfg)
                           if worker.rank == 0 else [])

    def batches(self, start: int) -> Iterator[dict]:
        import ray.train

        shard = ray.train.get_dataset_shard("train")
        per_rank = self.cfg.batch_size // self.worker.world
        while True:  # passes over the data, each with new crops
            empty = True
            for batch in shard.iter_torch_batches(batch_size=per_rank, drop_last=True,
                                                  local_shuffle_buffer_size=4 * per_rank):
                empty = False
                yield batch
            if empty:
                raise ConfigError(f"train: a pass over the pairs gave no batch of {per_rank} "
                                  "crops; lower train.batch_size or raise train.crops_per_frame")

    def step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        device = self.worker.device
        x, y = to_float(batch["blurry"], device), to_float(batch["target"], device)
        mask = batch["mask"].to(device)[:, None].float()
        with self.worker.autocast():
            pred = self.ddp["model"](x)
        loss = self.loss_fn(pred.float(), y, mask)
        self.update(loss, clip=1.0)
        return {"loss": loss.detach()}

    def validate(self, step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]] | None:
        if not self.val_images:
            return None
        v = validate(self.nets["model"], self.val_images, self.worker.device, self.worker.amp)
        example = v.pop("example")
        tag = "val/blurry|deblurred|truth" if "psnr" in v else "val/blurry|deblurred"
        return v, {tag: example}

    def describe_validation(self, scores: dict[str, float]) -> str:
        return describe_validation(scores)


@dataclasses.dataclass
class TrainSummary:
    """A finished training run (also ``OUT/train.json``)."""

    model: str  #: ``OUT/model.pt``
    steps: int
    seconds: float  #: of training, over every run that made it (a resume adds its own)
    crops_per_s: float | None  #: steady state, after the first 10% of the steps
    weight_checksums: list[float] | None  #: one per DDP worker: equal when in sync
    history: list[dict]  #: every validation: ``{"step", "psnr", ...}``
    val: dict | None  #: the last validation, if ``train.val`` is set
    config: dict  #: the ``train`` settings
    pairs: str  #: what it trained on


def train_deblurrer(pairs: str, out: str, cfg: Config, log: Callable[[str], None] = print,
                    command: str | None = None,
                    callbacks: list | None = None) -> TrainSummary:
    """Train (or resume training) the deblurrer on pseudo-pairs; returns a summary dict.

    Args:
        pairs: output folder of ``bluref pseudo-gt`` (or its ``shards/``).
        out: training output folder (see the module docstring).
        command: the command line that started it, recorded in the checkpoint.
        callbacks: Ray Train callbacks (a sweep trial passes Tune's report callback).

    Returns:
        The run's :class:`TrainSummary`.
    """

    from bluref_ray.ray_utils import init_ray

    cfg = dataclasses.replace(cfg, train=absolute_paths(cfg.train))  # as the workers need
    tc = cfg.train
    storage_cfg = cfg.storage.resolved()
    out = storage.normalize(out)
    storage.check_reachable(out, storage_cfg)
    storage.check_reachable(pairs, storage_cfg)
    storage.makedirs(out, storage_cfg)
    storage.delete_temporaries(out, storage_cfg, recursive=False)  # a killed run's writes
    # a run of other settings or pairs in OUT would be resumed, or exported, as this one
    check_resume(out, {"pairs": storage.normalize(pairs)}, tc, storage_cfg, log, "training")
    resume = latest_checkpoint(out, storage_cfg)
    if not resume:
        _check_model(tc, storage_cfg)
    if resume and checkpoint_step(resume) >= tc.steps:
        log(f"[train] {out} already holds step {checkpoint_step(resume)} of {tc.steps}")
        return finish_training(out, pairs, cfg, 0.0, command, log)
    init_ray(cfg.ray)
    tc = settle_workers(tc, "train", cfg.ray, log, cpus_free=DATA_CPUS_FREE)
    use_gpu = bool(tc.use_gpu)
    val = validation_frames(tc.val, tc.val_frames, storage_cfg) if tc.val else []
    dataset = pairs_dataset(pairs, tc, storage_cfg)
    if resume:
        log(f"[train] resuming from {resume}")
    mode = "supervised (ground truth)" if tc.supervised else f"masked {tc.loss}, τ={tc.tau}"
    log(f"[train] {tc.model}, {mode}; {tc.workers} worker(s) on "
        f"{'GPU (NCCL)' if use_gpu else 'CPU (gloo)'}; {tc.steps} steps of {tc.batch_size} "
        f"crops of {tc.crop}px; {len(val)} validation frames → {out}")
    t0 = time.time()
    fit_task(DeblurTask, tc, out, storage_cfg, datasets={"train": dataset},
             callbacks=callbacks, val=val, quiet=cfg.ray.quiet)
    return finish_training(out, pairs, cfg, time.time() - t0, command, log)


def checkpoint_step(step_uri: str) -> int:
    """The step of a ``.../step_NNNNNN`` checkpoint folder."""
    return int(step_uri.rstrip("/").rsplit("_", 1)[1])


def finish_training(out: str, pairs: str, cfg: Config, seconds: float,
                    command: str | None = None,
                    log: Callable[[str], None] = print) -> TrainSummary:
    """Export ``OUT/model.pt`` and write ``OUT/train.json`` from the newest checkpoint.

    The last step of :func:`train_deblurrer`, also used on its own when the training process
    was stopped right after its last checkpoint (a sweep's scheduler can do that).
    """
    storage_cfg = cfg.storage.resolved()
    final = latest_checkpoint(out, storage_cfg)
    if final is None:
        raise RuntimeError(f"training wrote no checkpoint under {out}/ray-train")
    target = storage.join(out, "model.pt")
    ckpt = export_model(storage.join(final, "state.pt"), target, storage_cfg,
                        command=command or "train_deblurrer()", pairs=storage.normalize(pairs))
    history = _history(final, storage_cfg)
    try:  # written by the loop after its last step (absent if it was stopped before)
        final_info = json.loads(storage.read_text(storage.join(out, "final.json"), storage_cfg))
    except storage.StorageNotFoundError:
        final_info = {}
    summary = TrainSummary(
        model=target, steps=ckpt["step"], seconds=final_info.get("train_seconds", seconds),
        crops_per_s=final_info.get("crops_per_s"),
        weight_checksums=final_info.get("weight_checksums"), history=history,
        val=history[-1] if history else None, config=dataclasses.asdict(cfg.train),
        pairs=storage.normalize(pairs))
    storage.write_text(storage.join(out, "train.json"),
                       json.dumps(dataclasses.asdict(summary), indent=1), storage_cfg)
    log(f"[train] model written to {target}")
    return summary


def _history(step_uri: str, storage_cfg: StorageConfig) -> list[dict]:
    import io

    blob = storage.read_bytes(storage.join(step_uri, "state.pt"), storage_cfg)
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True).get("history", [])
