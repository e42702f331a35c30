"""What the Ray Train loops share: checkpoints in storage, resume, schedule, TensorBoard.

A training run writes ``OUT/ray-train/step_NNNNNN/state.pt`` (model, optimizer, schedule, step)
through ``ray.train.report``. Every start of the loop (a new run with the same ``OUT``, or Ray
Train replacing dead workers) loads the newest one with :func:`resume_state`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import pickle
import re
import tempfile
import zipfile
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


def settle_workers(tc, section: str, ray_cfg, log: Callable[[str], None] = print,
                   cpus_free: float = 0.0):
    """Decide a training config's ``use_gpu`` and ``workers`` on the running cluster, waiting
    for the autoscaler where the cluster lacks what is asked for (see
    :func:`bluref_ray.ray_utils.await_resources`).

    ``use_gpu=true`` waits for one GPU and ``cpus_per_worker`` CPUs per worker; left unset, GPUs
    are used if the cluster has some now (:func:`gpu_workers`), else CPUs, and a line says so.
    CPU workers wait for their CPUs plus ``cpus_free`` (for data loading tasks).

    Raises:
        ClusterResourcesError: what was asked for did not arrive in time.
    """
    import ray

    from bluref_ray.ray_utils import await_resources

    if tc.use_gpu:
        await_resources([{"GPU": 1, "CPU": tc.cpus_per_worker}] * tc.workers,
                        f"{tc.workers} GPU training worker(s)", section, ray_cfg, log)
    resources = ray.cluster_resources()
    decided = gpu_workers(tc, resources, section, log)
    if not decided.use_gpu:
        if tc.use_gpu is None:
            log(f"[{section}] no GPU in the cluster now: training on CPUs ({section}.use_gpu="
                "true waits for GPU nodes)")
        bundles = [{"CPU": tc.cpus_per_worker}] * tc.workers
        await_resources(bundles + ([{"CPU": cpus_free}] if cpus_free else []),
                        f"{tc.workers} training worker(s) × {tc.cpus_per_worker:g} CPU"
                        + (f" + {cpus_free:g} CPU for loading data" if cpus_free else ""),
                        section, ray_cfg, log)
    return decided


def warmup_cosine(steps: int, warmup: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0."""

    def factor(s: int) -> float:
        return min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))

    return factor


def resume_state(out: str, storage_cfg: StorageConfig, device: torch.device) -> dict | None:
    """The newest checkpoint that loads: the one Ray Train hands over, or the newest in
    ``OUT/ray-train`` (an earlier run's, or this run's own when Ray Train replaced its workers
    before it had registered their last report). A checkpoint cut short by a kill is skipped."""
    import ray.train

    states = []
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            states.append(torch.load(os.path.join(d, "state.pt"), map_location=device,
                                     weights_only=True))
    for step_dir in reversed(checkpoints(out, storage_cfg)):
        blob = storage.read_bytes(storage.join(step_dir, "state.pt"), storage_cfg)
        try:
            states.append(torch.load(io.BytesIO(blob), map_location=device, weights_only=True))
            break
        except (RuntimeError, EOFError, pickle.UnpicklingError):
            continue  # written in part when its run was killed
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


def checkpoints(out: str, storage_cfg: StorageConfig) -> list[str]:
    """URIs of the ``OUT/ray-train/step_NNNNNN`` folders that hold a ``state.pt``, oldest
    first."""
    try:
        files = storage.list_files(storage.join(out, "ray-train"), storage_cfg)
    except storage.StorageNotFoundError:
        return []
    found = [storage.parent(f) for f in files if re.search(r"/step_\d{6,}/state\.pt$", f)]
    return sorted(found, key=lambda d: int(d.rsplit("_", 1)[1]))  # step 10⁶ has 7 digits


def prune_checkpoints(out: str, keep: int, storage_cfg: StorageConfig) -> None:
    """Delete all but the newest ``keep`` checkpoints in ``OUT/ray-train``, also those Ray Train
    does not track (an earlier run's, a replaced worker group's unregistered ones), but never
    one that Ray Train's own snapshot lists (a later run with more steps loads that snapshot)."""
    try:
        snapshot = storage.read_text(storage.join(out, "ray-train",
                                                  "checkpoint_manager_snapshot.json"), storage_cfg)
    except storage.StorageNotFoundError:
        snapshot = ""
    for old in checkpoints(out, storage_cfg)[:-keep]:
        if storage.basename(old) not in snapshot:
            storage.delete(old, storage_cfg)


#: Training settings that may change between a run and its resumption: how long, where and
#: how fast it runs, what it reports, and (Blur2Blur) the deblurrer chained after the trained
#: translator. Every other setting of a training section is what the weights and the optimizer
#: state were made with, and a resume must keep it.
RUN_CONTROL = frozenset({
    "steps", "batch_size", "crops_per_frame", "workers", "use_gpu", "cpus_per_worker",
    "threads", "amp", "val", "val_frames", "val_every", "log_every", "checkpoint_every",
    "max_failures", "keep_checkpoints", "deblurrer"})


def check_resume(out: str, inputs: dict[str, str], tc, storage_cfg: StorageConfig,
                 log: Callable[[str], None], what: str) -> None:
    """Refuse to go on in ``out`` from a training of other inputs or settings: its checkpoint
    would be resumed, or its model exported, as this run's. ``OUT/_train.json`` records the
    ``inputs`` (URIs) and every setting of the section ``tc`` but those in
    :data:`RUN_CONTROL`.

    Raises:
        ConfigError: ``out`` holds a training of other inputs or settings.
    """
    from bluref_ray.pipeline.common import prepare_out

    settings = {f.name: getattr(tc, f.name) for f in dataclasses.fields(tc)
                if f.name not in RUN_CONTROL}
    want = json.loads(json.dumps({**inputs, "settings": settings}))  # as read back
    prepare_out(out, "_train.json", want, False, (), storage_cfg, log, what,
                hint="use another --out, or delete it to start over")


def latest_checkpoint(out: str, storage_cfg: StorageConfig) -> str | None:
    """URI of the newest ``OUT/ray-train/step_NNNNNN`` whose ``state.pt`` is whole: one cut
    short by a kill while it was written (no zip directory at its end) is passed over, so that
    a rerun resumes or exports the one before it instead of failing on it."""
    for step_dir in reversed(checkpoints(out, storage_cfg)):
        try:
            with storage.open_input(storage.join(step_dir, "state.pt"), storage_cfg) as f:
                if zipfile.is_zipfile(f):  # reads only the end of the file
                    return step_dir
        except storage.StorageNotFoundError:
            continue
    return None


def fit(train_loop: Callable[[dict], None], loop_config: dict, out: str,
        storage_cfg: StorageConfig, workers: int, cpus_per_worker: float, use_gpu: bool,
        datasets: dict | None = None, callbacks: list | None = None, max_failures: int = 3,
        keep_checkpoints: int = 3) -> str:
    """Run a ``TorchTrainer`` (gloo on CPUs, NCCL on GPUs) whose checkpoints go to
    ``OUT/ray-train``; returns the URI of the newest checkpoint folder.

    Fault tolerance is Ray Train's: when a worker dies (its node lost), the worker group is
    replaced, up to ``max_failures`` times (-1: always), and the loop goes on from the last
    reported checkpoint (:func:`resume_state`). Only the newest ``keep_checkpoints`` (0: all)
    checkpoints stay in storage.

    Datasets are split between the workers (``get_dataset_shard``). ``callbacks`` are Ray Train
    callbacks (a sweep passes Tune's, which forwards every report to the trial).
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    fs, path = storage.resolve(out, storage_cfg)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name="ray-train", storage_path=path, storage_filesystem=fs,
                             callbacks=callbacks,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(
                                 num_to_keep=keep_checkpoints or None)),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=list(datasets or [])),
    )
    trainer.fit()
    if keep_checkpoints:
        prune_checkpoints(out, keep_checkpoints, storage_cfg)
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
