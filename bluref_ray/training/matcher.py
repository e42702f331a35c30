"""Training the dense matcher (``bluref train-matcher``) with Ray Train.

:func:`train_matcher` starts a ``TorchTrainer``: ``workers`` DDP processes (NCCL and one GPU each
on a GPU cluster, gloo on CPUs), each making its own synthetic pairs
(:mod:`bluref_ray.matching.synthetic`) from a seed, its rank and the step, so a resumed run sees
the same pairs it would have seen. Losses: end-point error at every level of the network and at
full resolution, and binary cross-entropy of the confidence against the event "flow error < R
pixels" (which makes the confidence a calibrated probability).

Output in ``OUT`` (local or ``s3://``)::

    OUT/ray-train/step_NNNNNN/state.pt    checkpoints (model, optimizer, schedule, step)
    OUT/matcher.pt                        the final model: {"arch", "kwargs", "state_dict", ...}
    OUT/tensorboard/                      losses, AEPE, PCK, example warps

Started again with the same ``OUT``, it resumes from the newest checkpoint.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from bluref_ray.config import Config, MatcherTrainConfig
from bluref_ray.matching.network import DenseMatcherNet, resize_flow
from bluref_ray.matching.synthetic import PairConfig, load_photos, make_batch
from bluref_ray.matching.warp import warp
from bluref_ray.training.common import (
    warmup_cosine,
)
from bluref_ray.training.loop import Task, Worker, run_task

ARCH = "dense-matcher"
#: learning-rate factor of the layers that fine-tuning (``init``) adds to a trained network
NEW_LAYER_LR = 5.0
LEVEL_WEIGHTS = {"global": 0.25, "local16": 0.25, "local8": 0.5, "local4": 0.5, "local2": 0.5}


def net_kwargs(cfg: MatcherTrainConfig) -> dict:
    return {"global_size": cfg.global_size, "radius_px": cfg.radius_px,
            "half_level": cfg.half_level}


def level_epe(flow: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean end-point error, in full-resolution pixels, of a flow on a coarser grid.

    Shape:
        flow ``[B,2,h,w]`` (grid units), gt ``[B,2,H,W]`` (pixels), valid ``[B,1,H,W]`` → scalar.
    """
    h, w = flow.shape[-2:]
    big_h, big_w = gt.shape[-2:]
    gt_l = resize_flow(gt, (h, w))
    v = F.interpolate(valid, size=(h, w), mode="area") > 0.99
    scale = torch.tensor([big_w / w, big_h / h], device=flow.device).view(1, 2, 1, 1)
    epe = torch.sqrt((((flow - gt_l) * scale) ** 2).sum(1, keepdim=True) + 1e-6)
    return (epe * v).sum() / v.sum().clamp_min(1)


def correlation_ce(name: str, logits: torch.Tensor, base: torch.Tensor, gt: torch.Tensor,
                   valid: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a correlation volume against the cell the true flow points to.

    The global volume classifies every reference cell; a local one the ``(2r+1)²`` offsets
    around the flow the level started from (r follows from the channel count). Pixels whose
    true cell is out of reach are ignored.

    Shape:
        logits ``[B, K, h, w]``, base ``[B, 2, h, w]`` (cells), gt ``[B, 2, H, W]`` (pixels).
    """
    h, w = logits.shape[-2:]
    gt_l = resize_flow(gt, (h, w))
    v = F.interpolate(valid, size=(h, w), mode="area")[:, 0] > 0.99
    if name == "global":
        ys, xs = torch.meshgrid(torch.arange(h, device=gt.device), torch.arange(w,
                                device=gt.device), indexing="ij")
        tx = (xs + gt_l[:, 0]).round().long()
        ty = (ys + gt_l[:, 1]).round().long()
        ok = v & (tx >= 0) & (tx < w) & (ty >= 0) & (ty < h)
        query = ty.clamp(0, h - 1) * w + tx.clamp(0, w - 1)
    else:
        radius = (round(logits.shape[1] ** 0.5) - 1) // 2
        off = (gt_l - base).round().long()
        ok = v & (off.abs() <= radius).all(1)
        side = 2 * radius + 1
        query = (off[:, 1] + radius).clamp(0, side - 1) * side + (off[:, 0] + radius).clamp(
            0, side - 1)
    ce = F.cross_entropy(logits, query, reduction="none")
    return (ce * ok).sum() / ok.sum().clamp_min(1)


def matcher_loss(out: dict, batch: dict, radii: tuple[float, ...]) -> tuple[torch.Tensor, dict]:
    """Multi-level EPE, correlation cross-entropy and confidence BCE; also metrics to log."""
    gt, valid = batch["flow"], batch["valid"]
    loss = torch.zeros((), device=gt.device)
    logs = {}
    for name, logits, base in out.get("correlations", []):
        ce = correlation_ce(name, logits, base.detach(), gt, valid)
        loss = loss + 0.5 * ce
        logs[f"ce_{name}"] = ce.detach()
    for name, flow in out["levels"]:
        e = level_epe(flow, gt, valid)
        loss = loss + LEVEL_WEIGHTS[name] * e
        logs[f"epe_{name}"] = e.detach()
    err = torch.sqrt(((out["flow"] - gt) ** 2).sum(1, keepdim=True) + 1e-6)
    aepe = (err * valid).sum() / valid.sum().clamp_min(1)
    radii = torch.tensor(radii, device=gt.device).view(1, -1, 1, 1)
    label = ((err.detach() < radii) & (valid > 0.5)).float()  # one event per radius
    bce = F.binary_cross_entropy_with_logits(out["confidence_logits"], label)
    loss = loss + aepe + bce
    logs.update(aepe=aepe.detach(), bce=bce.detach(),
                pck1=((err < 1) * valid).sum().detach() / valid.sum().clamp_min(1))
    return loss, logs


def init_from(model: DenseMatcherNet, uri: str, storage_cfg=None) -> list[str]:
    """Start ``model`` from the weights of the matcher checkpoint at ``uri``.

    Layers the checkpoint lacks (a level added since) keep their fresh initialisation; their
    names are returned. Any other mismatch is an error that names ``uri``.
    """
    from bluref_ray.matching.learned import read_matcher_checkpoint

    state = read_matcher_checkpoint(uri, storage_cfg)["state_dict"]
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a layer of another shape
        raise ValueError(f"{uri}: does not fit this network: {e}") from None
    if unexpected:
        raise ValueError(f"{uri}: layers this network does not have: {unexpected[:5]}")
    return list(missing)


def _example_grid(batch: dict, out: dict) -> torch.Tensor:
    """query | reference warped by the predicted flow | confidence, for TensorBoard."""
    n = min(4, batch["query"].shape[0])
    warped, _ = warp(batch["reference"][:n], out["flow"][:n].detach())
    conf = out["confidence"][:n].detach().expand(-1, 3, -1, -1)
    rows = torch.cat([batch["query"][:n], warped, conf], dim=3)
    return torch.cat(list(rows), dim=1).clamp(0, 1)


class MatcherTask(Task):
    """The matcher's part of :func:`bluref_ray.training.loop.train_loop`: synthetic pairs made
    on each rank from the seed, its rank and the step (a resumed run sees the pairs it would
    have seen), :func:`matcher_loss`, AdamW on a warm-up + cosine schedule, gradients clipped
    to 5."""

    name, items, shown = "train-matcher", "pairs", ("loss", "aepe", "pck1", "bce")

    def __init__(self, cfg: MatcherTrainConfig, worker: Worker, config: dict) -> None:
        super().__init__(cfg, worker, config)
        self.arch, self.kwargs = ARCH, net_kwargs(cfg)
        model = DenseMatcherNet(**self.kwargs)
        if cfg.backbone:
            from bluref_ray.models import read_checkpoint

            state = read_checkpoint(cfg.backbone, worker.storage_cfg)["state_dict"]
            model.features.load_state_dict({k[len("features."):]: v for k, v in state.items()
                                            if k.startswith("features.")})
        fresh = init_from(model, cfg.init, worker.storage_cfg) if cfg.init else []
        model.to(worker.device)
        named = dict(model.named_parameters())
        groups = [{"params": [p for n, p in named.items() if n not in fresh], "lr": cfg.lr}]
        if fresh:  # layers the init checkpoint lacks learn from scratch, faster than the rest
            groups.append({"params": [named[n] for n in fresh if n in named],
                           "lr": cfg.lr * NEW_LAYER_LR})
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.nets, self.optimizers = {"model": model}, {"model": opt}
        self.schedules = {"model": torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine(cfg.steps, max(1, min(200, cfg.steps // 10))))}
        self.photos = load_photos(folder=cfg.images, storage_cfg=worker.storage_cfg)
        self.pair_cfg = PairConfig(size=cfg.crop, p_object=cfg.objects)
        self.last: dict = {}

    def batches(self, start: int) -> Iterator[dict]:
        cfg, w = self.cfg, self.worker
        for step in itertools.count(start):
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1009 + w.rank)
            batch = make_batch(self.photos, cfg.batch_size // w.world, self.pair_cfg, gen)
            yield {k: v.to(w.device) for k, v in batch.items()}

    def step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        self.last = self.ddp["model"](batch["query"], batch["reference"])
        loss, logs = matcher_loss(self.last, batch, self.nets["model"].radii)
        self.update(loss, clip=5.0)
        return {"loss": loss.detach(), **logs}

    def images(self, batch: dict, logs: dict) -> dict[str, torch.Tensor]:
        return {"train/query|warped reference|confidence": _example_grid(batch, self.last)}


def train_matcher(out: str, cfg: Config, log: Callable[[str], None] = print,
                  command: str | None = None) -> str:
    """Train (or resume training) the dense matcher with Ray Train; returns ``OUT/matcher.pt``.

    Args:
        command: the command line that started it, recorded in the exported checkpoint.
    """
    tc = cfg.train_matcher
    log(f"[train-matcher] {tc.steps} steps of {tc.batch_size} pairs at {tc.crop}px")
    return run_task(MatcherTask, tc, "train_matcher", out, cfg, log,
                    command or "train_matcher()", export="matcher.pt")["model"]
