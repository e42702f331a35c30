"""Training Blur2Blur's blur-kernel extractor (``bluref train-kernel``) on known pairs.

The :class:`~bluref_ray.models.blur2blur.KernelWizard` learns to remake a known blurry frame
from its sharp frame and the code it read from the pair: ``G(sharp, F(sharp, blurry)) ≈
blurry`` (Charbonnier), on random crops of the pairs (flipped alike). The last clip of the known
set is held out: validation remakes its blurry frames whole and reports the PSNR of the remade
frame against the real one (``psnr``) beside that of the sharp frame (``psnr_sharp``, the
remake's floor).

Output in ``OUT``: ``model.pt`` (the extractor), ``ray-train/`` checkpoints, ``tensorboard/``,
``final.json``. Run again with the same ``OUT`` to resume.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import numpy as np
import torch

from bluref_ray.config import Config, KernelConfig
from bluref_ray.data.domains import crops, evenly, known_pairs, read_images
from bluref_ray.data.images import to_float
from bluref_ray.losses import masked_charbonnier
from bluref_ray.metrics import masked_psnr
from bluref_ray.training.common import warmup_cosine
from bluref_ray.training.loop import Task, Worker, run_task


def split_known(pairs: list[tuple[str, str]]) -> tuple[list, list]:
    """(train pairs, held-out pairs): the last clip (folder) is held out when there are two or
    more, else every tenth pair."""
    seqs = sorted({b.rsplit("/", 2)[0] for b, _ in pairs})
    if len(seqs) > 1:
        return ([p for p in pairs if not p[0].startswith(seqs[-1] + "/")],
                [p for p in pairs if p[0].startswith(seqs[-1] + "/")])
    return [p for i, p in enumerate(pairs) if i % 10], pairs[::10]


def load_known(source: str, max_frames: int, val_frames: int, worker: Worker
               ) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
    """Training pairs as ``[H, W, 6]`` stacks (sharp, blurry) and held-out (sharp, blurry)."""
    train, held = split_known(known_pairs(source, worker.storage_cfg))
    train, held = evenly(train, max_frames), evenly(held, val_frames)
    stacks = [np.concatenate([s, b], 2) for b, s in zip(
        read_images([b for b, _ in train], worker.storage_cfg),
        read_images([s for _, s in train], worker.storage_cfg))]
    if worker.rank:
        held = []
    val = list(zip(read_images([s for _, s in held], worker.storage_cfg),
                   read_images([b for b, _ in held], worker.storage_cfg)))
    return stacks, val


class KernelTask(Task):
    """The kernel extractor's part of the training loop: crops of known pairs, Charbonnier,
    Adam on a warm-up + cosine schedule, gradients clipped to 1."""

    name, items, shown = "train-kernel", "crops", ("loss", "psnr")

    def __init__(self, cfg: KernelConfig, worker: Worker, config: dict) -> None:
        from bluref_ray.models import build_model
        from bluref_ray.training.deblur import model_spec

        super().__init__(cfg, worker, config)
        self.arch, self.kwargs = model_spec(cfg.model)
        model = build_model(self.arch, **self.kwargs).to(worker.device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        self.nets, self.optimizers = {"model": model}, {"model": opt}
        self.schedules = {"model": torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine(cfg.steps, max(1, min(100, cfg.steps // 20))))}
        self.pairs, self.val = load_known(config["known"], cfg.max_frames, cfg.val_frames,
                                          worker)
        self.last: torch.Tensor | None = None

    def batches(self, start: int) -> Iterator[dict]:
        cfg, w = self.cfg, self.worker
        for step in itertools.count(start):
            rng = np.random.default_rng([cfg.seed, step, w.rank])
            stack = to_float(torch.from_numpy(crops(self.pairs, cfg.batch_size // w.world,
                                                    cfg.crop, rng)), w.device)
            yield {"sharp": stack[:, :3], "blurry": stack[:, 3:]}

    def step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        with self.worker.autocast():
            remade = self.ddp["model"](batch["sharp"], batch["blurry"])
        loss = masked_charbonnier(remade.float(), batch["blurry"])
        self.update(loss, clip=1.0)
        self.last = remade.detach()
        psnr = masked_psnr(self.last.float(), batch["blurry"],
                           torch.ones_like(batch["blurry"][:, :1])).mean()
        return {"loss": loss.detach(), "psnr": psnr}

    @torch.no_grad()
    def validate(self, step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]] | None:
        if not self.val:
            return None
        net, device = self.nets["model"].eval(), self.worker.device
        remade, sharp = [], []
        example = None
        for s, b in self.val:
            s, b = to_float(s, device), to_float(b, device)
            r = net(s, b).float()
            ones = torch.ones_like(b[:, :1])
            remade.append(float(masked_psnr(r, b, ones)))
            sharp.append(float(masked_psnr(s, b, ones)))
            if example is None:
                example = torch.cat([s[0], r[0], b[0]], 2)
        net.train()
        return ({"psnr": float(np.mean(remade)), "psnr_sharp": float(np.mean(sharp))},
                {"val/sharp|remade|blurry": example})

    def describe_validation(self, scores: dict[str, float]) -> str:
        return (f"held-out blurry frames remade at {scores['psnr']:.2f} dB "
                f"(their sharp frames: {scores['psnr_sharp']:.2f} dB)")

    def images(self, batch: dict, logs: dict) -> dict[str, torch.Tensor]:
        if self.last is None:
            return {}
        return {"train/sharp|remade|blurry": torch.cat(
            [batch["sharp"][0], self.last[0].float(), batch["blurry"][0]], 2)}


def train_kernel(known: str, out: str, cfg: Config, log: Callable[[str], None] = print,
                 command: str | None = None) -> dict:
    """Train (or resume training) the kernel extractor on the known pairs under ``known``.

    Returns:
        ``{"model": OUT/model.pt, "steps", "val": the last validation or None}``.
    """
    kc = cfg.kernel
    log(f"[train-kernel] {kc.model} on the known pairs of {known}: {kc.steps} steps of "
        f"{kc.batch_size} crops of {kc.crop}px")
    return run_task(KernelTask, kc, "kernel", out, cfg, log, command or "train_kernel()",
                    known=known)
