"""Training Ref-NAFNet (``bluref train-ref``) on (blurry, reference, target) triplets.

The triplets come from the frames table of ``bluref ingest`` (:mod:`bluref_ray.data.triplets`):
each blurry frame, its reference (the sharpest frame within ±Δ by default) and its target, the
ground truth or, with ``refnet.pairs``, BluRef's pseudo-sharp frame whose confidence masks the
loss. The loss is Charbonnier plus 0.01 × the L1 distance of the Fourier transforms at every
output scale (:func:`bluref_ray.losses.multiscale_loss`); AdamW on a warm-up + cosine schedule.

A single-image preset (``nafnet-tiny``, ...) trains on the same triplets, crops and loss with
the reference left out: the baseline of the same budget. Rank 0 validates on ``refnet.val`` (an
ingest output of held-out clips with ground truth), each frame with its reference by
``refnet.reference``.

Output in ``OUT``: ``model.pt``, ``ray-train/`` checkpoints, ``tensorboard/``, ``final.json``.
Run again with the same ``OUT`` to resume.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import numpy as np
import torch

from bluref_ray import schema
from bluref_ray.config import Config, ConfigError, RefNetConfig
from bluref_ray.data.images import to_float
from bluref_ray.data.triplets import load_triplets, plan_triplets, read_frames, triplet_crops
from bluref_ray.losses import multiscale_loss
from bluref_ray.storage import StorageConfig
from bluref_ray.training.common import warmup_cosine
from bluref_ray.training.loop import Task, Worker, run_task
from bluref_ray.training.validation import describe_validation, validate


def pseudo_pairs_table(pairs: str, storage_cfg: StorageConfig | None):
    """The pseudo-pair rows of a ``bluref pseudo-gt`` output (ids and images)."""
    from bluref_ray.training.deblur import shards_dir

    table = schema.read_table(shards_dir(pairs, storage_cfg), schema.PSEUDO_PAIRS, storage_cfg,
                              columns=["frame_id", "pseudo_png", "confidence_png"])
    if not table.num_rows:
        raise ConfigError(f"refnet.pairs={pairs}: no pseudo-pairs (run `bluref pseudo-gt`)")
    return table


def triplet_stacks(frames: str, cfg: RefNetConfig, storage_cfg: StorageConfig | None,
                   count: int, pairs: str | None = None, log: Callable | None = None
                   ) -> list[np.ndarray]:
    """At most ``count`` triplets of an ingest output as ``[H, W, 10]`` stacks."""
    table = read_frames(frames, storage_cfg)
    pairs_table = pseudo_pairs_table(pairs, storage_cfg) if pairs else None
    plan = plan_triplets(table, cfg.reference, cfg.delta, pairs_table, count, cfg.seed)
    return load_triplets(plan, table, storage_cfg, pairs_table, cfg.tau, log)


class RefTask(Task):
    """Ref-NAFNet's part of the training loop (see the module docstring)."""

    name, items = "train-ref", "crops"

    def __init__(self, cfg: RefNetConfig, worker: Worker, config: dict) -> None:
        from bluref_ray.models import build_model
        from bluref_ray.models.refnafnet import RefNAFNet, load_match_features
        from bluref_ray.training.deblur import model_spec

        super().__init__(cfg, worker, config)
        self.arch, self.kwargs = model_spec(cfg.model)
        if self.arch == "refnafnet":
            self.kwargs["match_features"] = cfg.match_features
        model = build_model(self.arch, **self.kwargs)
        self.with_reference = isinstance(model, RefNAFNet)
        if self.with_reference:
            load_match_features(model, cfg.vgg19_weights, worker.storage_cfg)
        model = model.to(worker.device)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                weight_decay=cfg.weight_decay, betas=(0.9, 0.9))
        self.nets, self.optimizers = {"model": model}, {"model": opt}
        self.schedules = {"model": torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine(cfg.steps, max(1, min(100, cfg.steps // 20))))}
        sc = worker.storage_cfg
        self.stacks = triplet_stacks(config["frames"], cfg, sc, cfg.max_frames, cfg.pairs,
                                     print if worker.rank == 0 else None)
        self.val = []
        if worker.rank == 0 and cfg.val:
            self.val = [(s[..., :3], s[..., 6:9], s[..., 3:6]) if self.with_reference
                        else (s[..., :3], s[..., 6:9])
                        for s in triplet_stacks(cfg.val, cfg, sc, cfg.val_frames)]
        self.last: torch.Tensor | None = None

    def batches(self, start: int) -> Iterator[dict]:
        cfg, w = self.cfg, self.worker
        for step in itertools.count(start):
            rng = np.random.default_rng([cfg.seed, step, w.rank])
            stack, ref = triplet_crops(self.stacks, cfg.batch_size // w.world, cfg.crop,
                                       round(cfg.crop * cfg.reference_crop), rng)
            yield {"blurry": to_float(stack[..., :3], w.device),
                   "reference": to_float(ref, w.device),
                   "target": to_float(stack[..., 3:6], w.device),
                   "mask": to_float(stack[..., 6:7], w.device)}

    def step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        with self.worker.autocast():
            if self.with_reference:
                outputs = self.ddp["model"](batch["blurry"], batch["reference"],
                                            return_scales=True)
            else:
                outputs = [self.ddp["model"](batch["blurry"])]
        mask = None if self.cfg.pairs is None else batch["mask"]
        loss = multiscale_loss(outputs, batch["target"], mask, self.cfg.fft_weight)
        self.update(loss, clip=1.0)
        self.last = outputs[-1].detach()
        return {"loss": loss.detach()}

    def validate(self, step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]] | None:
        if not self.val:
            return None
        v = validate(self.nets["model"], self.val, self.worker.device, self.worker.amp)
        return v, {"val/blurry|deblurred|truth": v.pop("example")}

    def describe_validation(self, scores: dict[str, float]) -> str:
        return describe_validation(scores)

    def images(self, batch: dict, logs: dict) -> dict[str, torch.Tensor]:
        if self.last is None:
            return {}
        ref = torch.nn.functional.interpolate(batch["reference"][:1], size=self.last.shape[-2:],
                                              mode="area")[0]
        return {"train/blurry|reference (shrunk)|deblurred|target": torch.cat(
            [batch["blurry"][0], ref, self.last[0].float().clamp(0, 1), batch["target"][0]], 2)}


def train_ref(frames: str, out: str, cfg: Config, log: Callable[[str], None] = print,
              command: str | None = None) -> dict:
    """Train (or resume training) Ref-NAFNet on the triplets of an ingest output ``frames``.

    Returns:
        ``{"model": OUT/model.pt, "steps", "seconds", "history", "val"}``.
    """
    rc = cfg.refnet
    target = f"pseudo-pairs of {rc.pairs} (confidence >= {rc.tau})" if rc.pairs else \
        "ground truth"
    log(f"[train-ref] {rc.model} on {frames}: target {target}, reference {rc.reference} within "
        f"±{rc.delta}; {rc.steps} steps of {rc.batch_size} crops of {rc.crop}px")
    return run_task(RefTask, rc, "refnet", out, cfg, log, command or "train_ref()",
                    frames=frames)
