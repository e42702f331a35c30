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
import json
import time
from collections.abc import Callable

import numpy as np
import torch

from bluref_ray import storage
from bluref_ray.config import Config, ConfigError, TrainConfig
from bluref_ray.data.images import decode_image
from bluref_ray.storage import StorageConfig
from bluref_ray.training.common import (
    export_model,
    fit,
    gpu_workers,
    latest_checkpoint,
    load_state,
    report_checkpoint,
    resume_state,
    sync_tensorboard,
    tensorboard_dir,
    warmup_cosine,
)
from bluref_ray.training.validation import (
    VAL_METRICS,
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
    level = int(np.ceil(255.0 * tau - 0.5))
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
            c = stack[y:y + crop, x:x + crop]
            if rng.random() < 0.5:
                c = c[:, ::-1]
            if rng.random() < 0.5:
                c = c[::-1]
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
    files = [f for f in storage.list_files(shards, storage_cfg) if f.endswith(".parquet")]
    if not files:
        raise ConfigError(f"{shards}: no pseudo-pair shards (*.parquet); run `bluref pseudo-gt` "
                          "first")
    fs, _ = storage.resolve(shards, storage_cfg)
    ds = ray.data.read_parquet([storage.resolve(f, storage_cfg)[1] for f in files],
                               filesystem=fs, num_cpus=DATA_CPUS
                               ).select_columns(PAIR_COLUMNS)
    return ds.randomize_block_order().map_batches(
        crop_pairs, batch_size=4, num_cpus=DATA_CPUS,
        fn_kwargs={"crop": cfg.crop, "crops_per_frame": cfg.crops_per_frame, "tau": cfg.tau,
                   "supervised": cfg.supervised, "storage_cfg": storage_cfg,
                   "color_aug": cfg.color_aug})


def _state(model, opt, sched, step: int, cfg: TrainConfig, history: list) -> dict:
    arch, kwargs = model_spec(cfg.model)
    return {"arch": arch, "kwargs": kwargs, "state_dict": model.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step,
            "config": dataclasses.asdict(cfg), "history": history}


def train_loop(config: dict) -> None:
    """The per-worker loop (Ray Train ``train_loop_per_worker``)."""
    import ray.train
    import ray.train.torch
    from torch.utils.tensorboard import SummaryWriter

    from bluref_ray.losses import build_loss
    from bluref_ray.models import build_model, read_checkpoint

    cfg: TrainConfig = config["cfg"]
    out, storage_cfg = config["out"], config["storage_cfg"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    amp = cfg.amp and device.type == "cuda"
    torch.set_num_threads(cfg.threads or max(1, int(cfg.cpus_per_worker)))
    torch.manual_seed(cfg.seed)  # the same initial weights on every worker
    arch, kwargs = model_spec(cfg.model)
    model = build_model(arch, **kwargs).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            betas=(0.9, 0.9))
    lr_factor = warmup_cosine(cfg.steps, max(1, min(100, cfg.steps // 20)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    start, history = 0, []
    state = resume_state(config.get("resume"), storage_cfg, device)
    if state:
        start = load_state(state, model, opt, sched, lr_factor)
        history = state.get("history", [])
    elif cfg.init:
        model.load_state_dict(read_checkpoint(cfg.init, storage_cfg, device)["state_dict"])
    ddp = ray.train.torch.prepare_model(model)
    loss_fn = build_loss(cfg.loss)
    shard = ray.train.get_dataset_shard("train")
    val_images = load_pair_images(config["val"], storage_cfg) if rank == 0 else []
    tb_dir = tensorboard_dir(out)
    writer = SummaryWriter(tb_dir, purge_step=start) if rank == 0 else None
    per_worker = cfg.batch_size // world
    step, t0, seen = start, time.time(), 0
    warm = start + max(1, (cfg.steps - start) // 10)  # steady-state speed: after 10% of steps
    t_warm = None

    def checkpoint_and_validate(done: int, loss: float) -> None:
        metrics = {"step": done, "loss": loss}
        if rank == 0 and val_images and (done % cfg.val_every == 0 or done == cfg.steps):
            v = validate(model, val_images, device, amp)
            history.append({"step": done, **{k: x for k, x in v.items() if k != "example"}})
            metrics.update({f"val_{k}": x for k, x in v.items() if k in VAL_METRICS})
            print(f"[train] step {done}: validation " + describe_validation(v), flush=True)
            if writer:
                for k, x in v.items():
                    if k != "example":
                        writer.add_scalar(f"val/{k}", x, done)
                tag = "val/blurry|deblurred|truth" if "psnr" in v else "val/blurry|deblurred"
                writer.add_image(tag, v["example"].clamp(0, 1), done)
        if writer:
            writer.flush()
            sync_tensorboard(tb_dir, out, storage_cfg)
        state = _state(model, opt, sched, done, cfg, history) if rank == 0 else None
        report_checkpoint(state, metrics, done)

    while step < cfg.steps:
        for batch in shard.iter_torch_batches(batch_size=per_worker, drop_last=True,
                                              local_shuffle_buffer_size=4 * per_worker):
            x = batch["blurry"].to(device).permute(0, 3, 1, 2).float().div_(255)
            y = batch["target"].to(device).permute(0, 3, 1, 2).float().div_(255)
            mask = batch["mask"].to(device)[:, None].float()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                pred = ddp(x)
            loss = loss_fn(pred.float(), y, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            seen += per_worker * world
            if step == warm:
                t_warm = time.time()
            if writer and (step % cfg.log_every == 0 or step == cfg.steps):
                rate = seen / (time.time() - t0)
                writer.add_scalar("train/loss", float(loss.detach()), step)
                writer.add_scalar("train/lr", sched.get_last_lr()[0], step)
                writer.add_scalar("train/samples_per_s", rate, step)
                print(f"[train] step {step}/{cfg.steps} loss {float(loss.detach()):.4f} "
                      f"lr {sched.get_last_lr()[0]:.2e} {rate:.1f} crops/s", flush=True)
            if step % cfg.checkpoint_every == 0 or step % cfg.val_every == 0 \
                    or step == cfg.steps:
                checkpoint_and_validate(step, float(loss.detach()))
            if step >= cfg.steps:
                break
    sums = weight_checksums(model, world)
    if rank == 0:
        print(f"[train] weights of the {world} worker(s) after step {step}: "
              f"{'in sync' if len(set(sums)) == 1 else 'DIFFERENT: ' + str(sums)}", flush=True)
        steady = (step - warm) * cfg.batch_size / (time.time() - t_warm) \
            if t_warm and step > warm else None
        storage.write_text(storage.join(out, "final.json"), json.dumps(
            {"step": step, "weight_checksums": sums, "crops_per_s": steady}), storage_cfg)
    if writer:
        writer.close()


def weight_checksums(model: torch.nn.Module, world: int) -> list[float]:
    """Each worker's sum of |weights| (gathered from all DDP ranks): equal when in sync."""
    total = float(sum(p.detach().double().abs().sum() for p in model.parameters()))
    if world == 1:
        return [total]
    import torch.distributed as dist

    sums: list = [None] * world
    dist.all_gather_object(sums, total)
    return sums


def train_deblurrer(pairs: str, out: str, cfg: Config, log: Callable[[str], None] = print,
                    command: str | None = None, callbacks: list | None = None) -> dict:
    """Train (or resume training) the deblurrer on pseudo-pairs; returns a summary dict.

    Args:
        pairs: output folder of ``bluref pseudo-gt`` (or its ``shards/``).
        out: training output folder (see the module docstring).
        command: the command line that started it, recorded in the checkpoint.
        callbacks: Ray Train callbacks (a sweep trial passes Tune's report callback).

    Returns:
        ``{"model": OUT/model.pt, "steps", "seconds", "crops_per_s" (steady state), "history",
        "val", "weight_checksums"}``
        (``val``: the last validation, if ``train.val`` is set).
    """
    import ray

    from bluref_ray.ray_utils import init_ray

    tc = cfg.train
    storage_cfg = cfg.storage.resolved()
    out = storage.normalize(out)
    storage.check_reachable(out, storage_cfg)
    storage.check_reachable(pairs, storage_cfg)
    storage.makedirs(out, storage_cfg)
    resume = latest_checkpoint(out, storage_cfg)
    if resume and checkpoint_step(resume) >= tc.steps:
        log(f"[train] {out} already holds step {checkpoint_step(resume)} of {tc.steps}")
        return finish_training(out, pairs, cfg, 0.0, command, log)
    init_ray(cfg.ray)
    tc = gpu_workers(tc, ray.cluster_resources(), "train", log)
    use_gpu = bool(tc.use_gpu)
    cpus = ray.cluster_resources().get("CPU", 0)
    if tc.workers * tc.cpus_per_worker > cpus - DATA_CPUS_FREE:
        raise ConfigError(
            f"train: {tc.workers} worker(s) × {tc.cpus_per_worker:g} CPU leave less than "
            f"{DATA_CPUS_FREE:g} of the cluster's {cpus:g} CPUs for loading data; lower "
            "train.cpus_per_worker or train.workers")
    val = validation_frames(tc.val, tc.val_frames, storage_cfg) if tc.val else []
    dataset = pairs_dataset(pairs, tc, storage_cfg)
    if resume:
        log(f"[train] resuming from {resume}")
    mode = "supervised (ground truth)" if tc.supervised else f"masked {tc.loss}, τ={tc.tau}"
    log(f"[train] {tc.model}, {mode}; {tc.workers} worker(s) on "
        f"{'GPU (NCCL)' if use_gpu else 'CPU (gloo)'}; {tc.steps} steps of {tc.batch_size} "
        f"crops of {tc.crop}px; {len(val)} validation frames → {out}")
    t0 = time.time()
    fit(train_loop, {"cfg": tc, "out": out, "storage_cfg": storage_cfg, "val": val}, out,
        storage_cfg, tc.workers, tc.cpus_per_worker, use_gpu, datasets={"train": dataset},
        callbacks=callbacks)
    return finish_training(out, pairs, cfg, time.time() - t0, command, log)


def checkpoint_step(step_uri: str) -> int:
    """The step of a ``.../step_NNNNNN`` checkpoint folder."""
    return int(step_uri.rstrip("/").rsplit("_", 1)[1])


def finish_training(out: str, pairs: str, cfg: Config, seconds: float,
                    command: str | None = None,
                    log: Callable[[str], None] = print) -> dict:
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
    summary = {"model": target, "steps": ckpt["step"], "seconds": seconds,
               "crops_per_s": final_info.get("crops_per_s"),
               "weight_checksums": final_info.get("weight_checksums"),
               "history": history, "val": history[-1] if history else None,
               "config": dataclasses.asdict(cfg.train), "pairs": storage.normalize(pairs)}
    storage.write_text(storage.join(out, "train.json"), json.dumps(summary, indent=1),
                       storage_cfg)
    log(f"[train] model written to {target}")
    return summary


def _history(step_uri: str, storage_cfg: StorageConfig) -> list[dict]:
    import io

    blob = storage.read_bytes(storage.join(step_uri, "state.pt"), storage_cfg)
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True).get("history", [])
