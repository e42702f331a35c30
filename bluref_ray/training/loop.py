"""The one training loop: every model trains through :func:`train_loop` on Ray Train.

A model brings a :class:`Task`, its own small part: the networks, optimizers and learning-rate
schedules (built in the constructor, on the worker), its batches, its step (forward, losses and
updates) and, optionally, a validation. The loop owns everything else:

- the worker: rank, world size, the device Ray assigned, threads, the seed (the same initial
  weights on every rank), bfloat16 autocast on CUDA only (:class:`Worker`);
- resume from the newest checkpoint, and checkpoints every ``checkpoint_every`` steps
  (``OUT/ray-train/step_NNNNNN/state.pt``: every net, optimizer and schedule, the step, the
  validation history and the seconds of training so far, over every run that made it);
- DDP (every net of the task is wrapped; gloo on CPUs, NCCL on GPUs, chosen by :func:`fit`);
- the log cadence: TensorBoard scalars and one printed line every ``log_every`` steps, images ten
  times less often, validation every ``val_every`` steps;
- ``OUT/final.json`` after the last step: the step, each rank's weight checksum (equal when the
  ranks are in sync), the steady-state rate and the seconds of training (resumes included).

A task with two networks and two optimizers (a GAN's generator and discriminator) names both in
``nets`` and ``optimizers`` and updates them in turn in :meth:`Task.step` with :meth:`Task.update`.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator

import torch

from bluref_ray import storage
from bluref_ray.storage import StorageConfig
from bluref_ray.training.common import (
    check_resume,
    export_model,
    fit,
    latest_checkpoint,
    report_checkpoint,
    resume_state,
    settle_workers,
    sync_tensorboard,
    tensorboard_dir,
)


@dataclasses.dataclass
class Worker:
    """Where a task runs; the loop makes it, the task reads it."""

    rank: int
    world: int
    device: torch.device
    amp: bool  #: bfloat16 autocast (CUDA only)
    out: str  #: the run's output folder
    storage_cfg: StorageConfig

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast when ``amp``, nothing otherwise."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)


class Task(abc.ABC):
    """One model's part of training. Subclasses set, in their constructor:

    Attributes:
        nets: the networks by name, on ``worker.device``; the first is the one that
            ``arch``/``kwargs`` describe and that the export writes.
        optimizers: by name.
        schedules: by name, ``LambdaLR`` schedules stepped once per step.
        arch, kwargs: how :func:`bluref_ray.models.build_model` rebuilds the first net.

    The loop sets ``ddp`` (the nets wrapped for DDP, by name; the nets themselves on one worker)
    before the first step; :meth:`step` runs the forward pass through them.
    """

    #: the prefix of the printed lines
    name = "train"
    #: what ``batch_size`` counts (for the rate)
    items = "samples"
    #: the logs shown in the printed line (all of them go to TensorBoard)
    shown: tuple[str, ...] = ("loss",)

    nets: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedules: dict[str, torch.optim.lr_scheduler.LambdaLR]
    ddp: dict[str, torch.nn.Module]
    arch: str
    kwargs: dict

    def __init__(self, cfg, worker: Worker, config: dict) -> None:
        self.cfg, self.worker = cfg, worker

    @abc.abstractmethod
    def batches(self, start: int) -> Iterator[dict]:
        """This rank's batches from step ``start`` on, as many as the loop takes."""

    @abc.abstractmethod
    def step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """One training step (forward, losses, :meth:`update`); returns scalar logs, ``loss``
        among them."""

    def validate(self, step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]] | None:
        """Rank 0's validation: scores and images (``[3, H, W]``) by name; None: none to run."""
        return None

    def describe_validation(self, scores: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.4g}" for k, v in scores.items())

    def images(self, batch: dict, logs: dict) -> dict[str, torch.Tensor]:
        """Images for TensorBoard at this step, ``[3, H, W]`` by tag (rank 0, every tenth log)."""
        return {}

    def update(self, loss: torch.Tensor, name: str = "model", clip: float | None = None) -> None:
        """Backpropagate ``loss`` and step optimizer ``name`` (gradients clipped to ``clip``)."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            params = [p for g in opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()

    # checkpoints -------------------------------------------------------------------------

    def state(self, step: int, history: list) -> dict:
        first, *others = self.nets
        return {"arch": self.arch, "kwargs": self.kwargs,
                "state_dict": self.nets[first].state_dict(),
                "nets": {k: self.nets[k].state_dict() for k in others},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "schedules": {k: s.state_dict() for k, s in self.schedules.items()},
                "step": step, "config": dataclasses.asdict(self.cfg), "history": history}

    def load(self, state: dict) -> int:
        """Restore nets, optimizers and schedules from a checkpoint; returns its step.

        The optimizers come back with the learning rate of their schedule at that step (0 at
        the end of a finished schedule): an extended run continues on its own schedule.
        """
        first, *others = self.nets
        self.nets[first].load_state_dict(state["state_dict"])
        for k in others:
            self.nets[k].load_state_dict(state["nets"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedules.items():
            s.load_state_dict(state["schedules"][k])
            for group, base, factor in zip(s.optimizer.param_groups, s.base_lrs, s.lr_lambdas):
                group["lr"] = base * factor(state["step"])
        return state["step"]


def train_loop(config: dict) -> None:
    """Ray Train's ``train_loop_per_worker`` for every task.

    ``config``: ``task`` (a :class:`Task` class), ``cfg`` (its settings section: ``steps``,
    ``batch_size``, ``seed``, ``log_every``, ``checkpoint_every``, ``cpus_per_worker``, and
    optionally ``val_every``, ``amp``, ``threads``), ``out``, ``storage_cfg``, ``quiet`` (print
    nothing), and whatever the task reads. It starts from the newest checkpoint in ``out``.
    """
    import ray.train
    import ray.train.torch
    from torch.utils.tensorboard import SummaryWriter

    cfg, out, storage_cfg = config["cfg"], config["out"], config["storage_cfg"]
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    worker = Worker(ctx.get_world_rank(), ctx.get_world_size(), device,
                    bool(getattr(cfg, "amp", False)) and device.type == "cuda", out, storage_cfg)
    torch.set_num_threads(getattr(cfg, "threads", None) or max(1, int(cfg.cpus_per_worker)))
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    task: Task = config["task"](cfg, worker, config)
    start, history, before = 0, [], 0.0
    state = resume_state(out, storage_cfg, device)
    if state:  # an earlier run's checkpoint, or this run's after Ray Train replaced workers
        start = task.load(state)
        history = state.get("history", [])
        before = float(state.get("train_seconds", 0.0))  # of the runs that made it
    task.ddp = {k: ray.train.torch.prepare_model(m) for k, m in task.nets.items()}
    rank0 = worker.rank == 0
    say = (lambda _line: None) if config.get("quiet") else (lambda line: print(line, flush=True))
    tb_dir = tensorboard_dir(out)
    # events after the checkpoint's step are the killed run's and are logged again; the
    # checkpoint's own step (its validation, its images) stays
    writer = SummaryWriter(tb_dir, purge_step=start + 1) if rank0 else None
    if state and rank0:
        say(f"[{task.name}] going on from the checkpoint of step {start}")
    per_rank = cfg.batch_size // worker.world
    val_every = getattr(cfg, "val_every", None)
    warm = start + max(1, (cfg.steps - start) // 10)  # steady-state rate: after 10% of steps
    t0, t_warm, seen, done = time.time(), None, 0, start

    def checkpoint(logs: dict) -> None:
        metrics = {"step": done, **{k: float(v) for k, v in logs.items()}}
        if rank0 and val_every and (done % val_every == 0 or done == cfg.steps):
            v = task.validate(done)
            if v is not None:
                scores, images = v
                history.append({"step": done, **scores})
                metrics.update({f"val_{k}": x for k, x in scores.items()})
                say(f"[{task.name}] step {done}: validation {task.describe_validation(scores)}")
                for k, x in scores.items():
                    writer.add_scalar(f"val/{k}", x, done)
                for tag, image in images.items():
                    writer.add_image(tag, image.clamp(0, 1), done)
        if writer:
            writer.flush()
            sync_tensorboard(tb_dir, out, storage_cfg)
        state = None
        if rank0:
            state = {**task.state(done, history), "train_seconds": before + time.time() - t0}
        report_checkpoint(state, metrics, done)

    for step, batch in zip(range(start, cfg.steps), task.batches(start)):
        logs = task.step(batch, step)
        for s in task.schedules.values():
            s.step()
        done = step + 1
        seen += per_rank * worker.world
        if done == warm:
            t_warm = time.time()
        if writer and (done % cfg.log_every == 0 or done == cfg.steps):
            say(_log(writer, task, logs, done, cfg.steps, seen / (time.time() - t0)))
            if done % (cfg.log_every * 10) == 0 or done == cfg.steps:
                for tag, image in task.images(batch, logs).items():
                    writer.add_image(tag, image.clamp(0, 1), done)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps \
                or (val_every and done % val_every == 0):
            checkpoint(logs)
    sums = weight_checksums(list(task.nets.values()), worker.world)
    if rank0:
        say(f"[{task.name}] weights of the {worker.world} worker(s) after step {done}: "
            f"{'in sync' if len(set(sums)) == 1 else 'DIFFERENT: ' + str(sums)}")
        steady = (done - warm) * cfg.batch_size / (time.time() - t_warm) \
            if t_warm and done > warm else None
        storage.write_text(storage.join(out, "final.json"), json.dumps(
            {"step": done, "start_step": start, "weight_checksums": sums,
             f"{task.items}_per_s": steady, "train_seconds": before + time.time() - t0}),
            storage_cfg)
        writer.close()


def fit_task(task: type[Task], cfg, out: str, storage_cfg: StorageConfig,
             datasets: dict | None = None, callbacks: list | None = None, quiet: bool = False,
             **config) -> str:
    """Train ``task`` with settings ``cfg`` (``workers``, ``cpus_per_worker``, ``use_gpu``
    decided) through :func:`train_loop` on Ray Train; returns the newest checkpoint's URI.

    ``config``: more entries of the loop's config, for the task's constructor.
    """
    config = {"task": task, "cfg": cfg, "out": out, "storage_cfg": storage_cfg, "quiet": quiet,
              **config}
    return fit(train_loop, config, out, storage_cfg, cfg.workers, cfg.cpus_per_worker,
               bool(cfg.use_gpu), datasets=datasets, callbacks=callbacks,
               max_failures=cfg.max_failures, keep_checkpoints=cfg.keep_checkpoints)


def _log(writer, task: Task, logs: dict, done: int, steps: int, rate: float) -> str:
    """TensorBoard scalars; returns the line to print."""
    lrs = {k: s.get_last_lr()[0] for k, s in task.schedules.items()}
    for k, v in logs.items():
        writer.add_scalar(f"train/{k}", float(v), done)
    for k, lr in lrs.items():
        writer.add_scalar("train/lr" if len(lrs) == 1 else f"train/lr_{k}", lr, done)
    writer.add_scalar(f"train/{task.items}_per_s", rate, done)
    shown = " ".join(f"{k} {float(logs[k]):.4f}" for k in task.shown if k in logs)
    lr = " ".join(f"lr {v:.2e}" for v in lrs.values())
    return f"[{task.name}] step {done}/{steps} {shown} {lr} {rate:.1f} {task.items}/s"


def weight_checksums(nets: list[torch.nn.Module], world: int) -> list[float]:
    """Each rank's sum of |weights| of every net (gathered from all DDP ranks): equal when in
    sync."""
    total = float(sum(p.detach().double().abs().sum() for m in nets for p in m.parameters()))
    if world == 1:
        return [total]
    import torch.distributed as dist

    sums: list = [None] * world
    dist.all_gather_object(sums, total)
    return sums


def run_task(task: type[Task], tc, section: str, out: str, cfg, log, command: str,
             export: str = "model.pt", **config) -> dict:
    """A command's whole training run: check the output, start Ray, settle GPUs and workers,
    train ``task`` with settings ``tc`` (the config section ``section``) or resume it, and
    export the first net to ``OUT/{export}``.

    An output that already holds the last step is exported again without training.

    Returns:
        ``{"model": URI of the export, "steps", "seconds", "history": every validation,
        "val": the last one or None}``.
    """
    import io

    from bluref_ray.models import absolute_paths
    from bluref_ray.ray_utils import init_ray

    tc = absolute_paths(tc)  # relative paths as the driver sees them, not each worker
    storage_cfg = cfg.storage.resolved()
    out = storage.normalize(out)
    storage.check_reachable(out, storage_cfg)
    storage.makedirs(out, storage_cfg)
    # the data's paths too: Ray Train runs each worker in a folder of its own
    config = {k: storage.normalize(v) if isinstance(v, str) else v for k, v in config.items()}
    check_resume(out, config, tc, storage_cfg, log, section)
    resume = latest_checkpoint(out, storage_cfg)
    t0 = time.time()
    if resume and int(resume.rstrip("/").rsplit("_", 1)[1]) >= tc.steps:
        log(f"[{section}] {out} already holds step {tc.steps}")
        final = resume
    else:
        init_ray(cfg.ray)
        tc = settle_workers(tc, section, cfg.ray, log)
        if resume:
            log(f"[{section}] resuming from {resume}")
        log(f"[{section}] {tc.workers} worker(s) on "
            f"{'GPU (NCCL)' if tc.use_gpu else 'CPU (gloo)'} → {out}")
        final = fit_task(task, tc, out, storage_cfg, quiet=cfg.ray.quiet, **config)
    state_uri = storage.join(final, "state.pt")
    target = storage.join(out, export)
    ckpt = export_model(state_uri, target, storage_cfg, command=command)
    history = torch.load(io.BytesIO(storage.read_bytes(state_uri, storage_cfg)),
                         map_location="cpu", weights_only=True).get("history", [])
    log(f"[{section}] model written to {target}")
    return {"model": target, "steps": ckpt["step"],
            "seconds": _train_seconds(out, storage_cfg, time.time() - t0),
            "history": history, "val": history[-1] if history else None}


def _train_seconds(out: str, storage_cfg: StorageConfig, default: float) -> float:
    """Seconds of training of a finished run in ``out``, over every run that made it (from
    ``OUT/final.json``; ``default`` where an older loop wrote no figure there)."""
    try:
        final = json.loads(storage.read_text(storage.join(out, "final.json"), storage_cfg))
    except storage.StorageNotFoundError:
        return default
    return float(final.get("train_seconds", default))

