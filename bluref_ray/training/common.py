"""What the Ray Train loops share: checkpoints in storage, resume, schedule, TensorBoard.

A training run writes ``OUT/ray-train/step_NNNNNN/state.pt`` (model, optimizer, schedule, step)
through ``ray.train.report``. Started again with the same ``OUT``, the driver finds the newest one
(:func:`latest_checkpoint`) and hands it to the loop (Ray Train V2 has no
``resume_from_checkpoint``); the loop loads it with :func:`resume_state`.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import re
import tempfile
from collections.abc import Callable

import torch

from bluref_ray import storage
from bluref_ray.config import ConfigError
from bluref_ray.storage import StorageConfig


def gpu_workers(tc, resources: dict, section: str = "train",
                log: Callable[[str], None] = print):
    """Settle a training config's ``use_gpu`` (default: when the cluster has GPUs) and fit its
    ``workers`` to the GPUs; returns the config with both decided.

    Each DDP worker on GPUs holds a whole GPU (NCCL cannot share one between ranks). When
    ``use_gpu`` was left to its default and the cluster has fewer GPUs than ``workers``, training
    runs one worker per GPU, and says so; asking for GPUs explicitly with too few of them, or on
    a cluster without any, is an error rather than a run that waits for ever.

    Raises:
        ConfigError: ``use_gpu=true`` and the cluster has fewer GPUs than workers.
    """
    n_gpus = int(resources.get("GPU", 0))
    if tc.use_gpu is None:
        if not n_gpus:
            return dataclasses.replace(tc, use_gpu=False)
        if n_gpus >= tc.workers:
            return dataclasses.replace(tc, use_gpu=True)
        # as many workers as GPUs, or fewer so that they still split the global batch evenly
        workers = max(w for w in range(1, n_gpus + 1) if tc.batch_size % w == 0)
        log(f"[{section}] the cluster has {n_gpus} GPU(s): training with {workers} GPU "
            f"worker(s) instead of {tc.workers} (set {section}.use_gpu=false for "
            f"{tc.workers} CPU workers)")
        return dataclasses.replace(tc, use_gpu=True, workers=workers)
    if tc.use_gpu and n_gpus < tc.workers:
        raise ConfigError(
            f"{section}: {tc.workers} GPU worker(s) asked for ({section}.use_gpu=true), the "
            f"cluster has {n_gpus} GPU(s); lower {section}.workers or set {section}.use_gpu=false")
    return tc


def warmup_cosine(steps: int, warmup: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0."""

    def factor(s: int) -> float:
        return min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))

    return factor


def resume_state(resume: str | None, storage_cfg: StorageConfig,
                 device: torch.device) -> dict | None:
    """The newest checkpoint: the one Ray Train restored, or ``resume`` (a step folder URI)."""
    import ray.train

    states = []
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            states.append(torch.load(os.path.join(d, "state.pt"), map_location=device,
                                     weights_only=True))
    if resume:
        blob = storage.read_bytes(storage.join(resume, "state.pt"), storage_cfg)
        states.append(torch.load(io.BytesIO(blob), map_location=device, weights_only=True))
    return max(states, key=lambda s: s["step"]) if states else None


def report_checkpoint(state: dict | None, metrics: dict, step: int) -> None:
    """``ray.train.report`` with ``state`` saved as ``step_NNNNNN/state.pt`` (rank 0 passes it,
    the other ranks pass None)."""
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if state is not None:
            torch.save(state, os.path.join(d, "state.pt"))
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"step_{step:06d}")


def tensorboard_dir(out: str) -> str:
    """Where a rank-0 SummaryWriter writes: ``OUT/tensorboard`` locally, a temp dir for S3
    (copied up by :func:`sync_tensorboard`)."""
    return storage.join(out, "tensorboard") if not storage.is_s3(out) else tempfile.mkdtemp()


def sync_tensorboard(local: str, out: str, storage_cfg: StorageConfig) -> None:
    """Copy the event files of a temp TensorBoard dir to ``OUT/tensorboard`` on object storage."""
    if not storage.is_s3(out):
        return
    for name in os.listdir(local):
        storage.upload_file(os.path.join(local, name), storage.join(out, "tensorboard", name),
                            storage_cfg)


def latest_checkpoint(out: str, storage_cfg: StorageConfig) -> str | None:
    """URI of the newest ``OUT/ray-train/step_NNNNNN`` that holds a ``state.pt``."""
    try:
        files = storage.list_files(storage.join(out, "ray-train"), storage_cfg)
    except storage.StorageNotFoundError:
        return None
    steps = [f for f in files if re.search(r"/step_\d{6}/state\.pt$", f)]
    return storage.parent(max(steps)) if steps else None


def fit(train_loop: Callable[[dict], None], loop_config: dict, out: str,
        storage_cfg: StorageConfig, workers: int, cpus_per_worker: float, use_gpu: bool,
        datasets: dict | None = None, callbacks: list | None = None) -> str:
    """Run a ``TorchTrainer`` (gloo on CPUs, NCCL on GPUs) whose checkpoints go to
    ``OUT/ray-train``; returns the URI of the newest checkpoint folder.

    ``loop_config`` gets ``resume``: the newest checkpoint of an earlier run in ``OUT``, if any.
    Datasets are split between the workers (``get_dataset_shard``). ``callbacks`` are Ray Train
    callbacks (a sweep passes Tune's, which forwards every report to the trial).
    """
    from ray.train import DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    fs, path = storage.resolve(out, storage_cfg)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={**loop_config, "resume": latest_checkpoint(out, storage_cfg)},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name="ray-train", storage_path=path, storage_filesystem=fs,
                             callbacks=callbacks),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=list(datasets or [])),
    )
    trainer.fit()
    final = latest_checkpoint(out, storage_cfg)
    if final is None:
        raise RuntimeError(f"training wrote no checkpoint under {out}/ray-train")
    return final


def export_model(state_uri: str, out_uri: str, storage_cfg: StorageConfig | None,
                 **extra) -> dict:
    """Write the model of a training checkpoint as a plain checkpoint (no optimizer state):
    ``{"arch", "kwargs", "state_dict", "step", "train_config", **extra}``."""
    state = torch.load(io.BytesIO(storage.read_bytes(state_uri, storage_cfg)),
                       map_location="cpu", weights_only=True)
    ckpt = {"arch": state["arch"], "kwargs": state["kwargs"], "state_dict": state["state_dict"],
            "step": state["step"], "train_config": state["config"], **extra}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    storage.write_bytes(out_uri, buf.getvalue(), storage_cfg)
    return ckpt
