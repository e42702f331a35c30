"""Training Blur2Blur's translator (``bluref blur2blur``): the camera's blur → a known blur.

Each step, on every worker:

1. **Data**: crops of the camera's blurry frames (the least blurry half during the first
   ``curriculum`` share of the steps, then all: :mod:`bluref_ray.data.domains`); and the
   known-blur set K made by **kernel transfer**: crops of the camera's own sharp frames (other
   clips) blurred by the frozen kernel extractor with the codes of random known pairs, so that
   K differs from the camera's frames only in its blur.
2. **Discriminator step**: one PatchGAN judges K (real) against the translator's outputs (fake)
   at 1/4, 1/2 and full scale with the same weights; hinge loss averaged over the scales plus
   ``gp_weight`` × the gradient penalty. By default it judges their *detail* (each image minus
   its 4×4 low-pass, :func:`~bluref_ray.models.content.detail`) and has no instance norm: K's
   scenes are not the blurry frames' scenes, and a discriminator that sees colour and layout
   tells them apart by content, which the translator must keep; instance norm would hide how
   strong the detail is (noise, sharpness). The paper's choice (``disc_input=image``, the
   ``patchgan`` presets) is one setting away.
3. **Translator step**: ``adversarial`` × the hinge generator loss plus ``content_weight`` ×
   the sum over scales of the feature distance between each output and the input at its
   scale (:class:`~bluref_ray.models.content.ContentLoss`).

Both networks use Adam (lr 2e-4, β₁ 0.5) as in the paper; the loop wraps both for DDP and
saves both in its checkpoints. With ``blur2blur.deblurrer`` and ``blur2blur.val`` (frames of the
camera's blur with ground truth), validation scores the known deblurrer on translated frames
(``psnr``) against the same deblurrer on the frames as they are (``psnr_direct``), and how far
the translation moved from its input (``psnr_io``).

Output in ``OUT``: ``translator.pt``; with a deblurrer also ``model.pt``, the chain translator
→ deblurrer that ``bluref deblur`` and ``bluref eval`` take; checkpoints, TensorBoard (with
example translations), ``final.json``. Run again with the same ``OUT`` to resume.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import numpy as np
import torch

from bluref_ray import storage
from bluref_ray.config import Blur2BlurConfig, Config, ConfigError
from bluref_ray.data.domains import camera_frames, crops
from bluref_ray.data.images import to_float
from bluref_ray.losses import gradient_penalty, hinge_d, hinge_g
from bluref_ray.metrics import masked_psnr
from bluref_ray.models.blur2blur import pyramid
from bluref_ray.training.kernel import load_known
from bluref_ray.training.loop import Task, Worker, run_task


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR (dB) of a batch against another."""
    return float(masked_psnr(a.float(), b.float(), torch.ones_like(a[:, :1])).mean())


class TranslatorTask(Task):
    """Blur2Blur's part of the training loop (see the module docstring)."""

    name, items = "blur2blur", "crops"
    shown = ("loss", "d_loss", "adv", "content", "psnr_io")

    def __init__(self, cfg: Blur2BlurConfig, worker: Worker, config: dict) -> None:
        from bluref_ray.models import build_model, load_checkpoint
        from bluref_ray.models.content import ContentLoss, detail
        from bluref_ray.training.deblur import model_spec

        super().__init__(cfg, worker, config)
        device, sc = worker.device, worker.storage_cfg
        self.arch, self.kwargs = model_spec(cfg.translator)
        translator = build_model(self.arch, **self.kwargs).to(device)
        d_arch, d_kwargs = model_spec(cfg.discriminator)
        disc = build_model(d_arch, **d_kwargs).to(device)
        self.nets = {"translator": translator, "disc": disc}
        self.optimizers = {k: torch.optim.Adam(n.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
                           for k, n in self.nets.items()}
        self.schedules = {k: torch.optim.lr_scheduler.LambdaLR(o, lambda _s: 1.0)
                          for k, o in self.optimizers.items()}
        self.wizard = load_checkpoint(cfg.kernel, sc, device)[0].to(device).requires_grad_(False)
        self.content = ContentLoss(cfg.content, cfg.vgg19_weights, sc).to(device)
        self.judged = detail if cfg.disc_input == "detail" else (lambda x: x)
        self.camera = camera_frames(config["frames"], cfg.scene_split, cfg.max_frames, cfg.seed,
                                    sc)
        self.known, _ = load_known(cfg.known, cfg.max_frames, 0, worker)
        self.easy = max(1, len(self.camera.blurry) // 2)  # the least blurry half
        self.val, self.deblurrer = [], None
        if worker.rank == 0 and cfg.val and cfg.deblurrer:
            from bluref_ray.training.validation import load_pair_images, validation_frames

            self.val = load_pair_images(validation_frames(cfg.val, cfg.val_frames, sc), sc)
            self.deblurrer = load_checkpoint(cfg.deblurrer, sc, device)[0].to(device)
        self.last: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def known_blur(self, sharp: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Kernel transfer: ``sharp`` blurred by the codes of the known pairs ``known``
        (``[B, 6, H, W]``: sharp, blurry)."""
        return self.wizard.apply(sharp, self.wizard.encode(known[:, :3], known[:, 3:]))

    def batches(self, start: int) -> Iterator[dict]:
        cfg, w = self.cfg, self.worker
        n = cfg.batch_size // w.world
        for step in itertools.count(start):
            rng = np.random.default_rng([cfg.seed, step, w.rank])
            pool = self.easy if step < cfg.curriculum * cfg.steps else None
            blurry = crops(self.camera.blurry, n, cfg.crop, rng, pool)
            sharp = crops(self.camera.sharp, n, cfg.crop, rng)
            known = crops(self.known, n, cfg.crop, rng)
            blurry, sharp, known = (to_float(torch.from_numpy(a), w.device)
                                    for a in (blurry, sharp, known))
            yield {"blurry": blurry, "known": self.known_blur(sharp, known)}

    def step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        g, d = self.ddp["translator"], self.ddp["disc"]
        fakes = self._scales(g, batch["blurry"])
        judged = [self.judged(f) for f in fakes]
        reals = [self.judged(r) for r in pyramid(batch["known"])]
        # discriminator: hinge on every scale, plus the gradient penalty
        d_loss = torch.stack([hinge_d(d(r), d(f.detach())) for r, f in zip(reals, judged)]).mean()
        gp = torch.stack([gradient_penalty(d, r, f) for r, f in zip(reals, judged)]).mean()
        self.update(d_loss + cfg.gp_weight * gp, "disc")
        # translator: fool the discriminator, keep the content
        adv = torch.stack([hinge_g(d(f)) for f in judged]).mean()
        content = torch.stack([self.content(f, x) for f, x in
                               zip(fakes, pyramid(batch["blurry"]))]).sum()
        loss = cfg.adversarial * adv + cfg.content_weight * content
        self.update(loss, "translator")
        self.last = {"translated": fakes[-1].detach()}
        return {"loss": loss.detach(), "d_loss": d_loss.detach(), "gp": gp.detach(),
                "adv": adv.detach(), "content": content.detach(),
                "psnr_io": torch.tensor(psnr(fakes[-1].detach(), batch["blurry"]))}

    def _scales(self, g: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        """The translator's outputs at every scale, coarse to fine, through the DDP wrapper (DDP
        synchronises the gradients of what goes through its ``forward``)."""
        with self.worker.autocast():
            outs = g(x, return_scales=True)
        return [o.float() for o in outs]

    @torch.no_grad()
    def validate(self, step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]] | None:
        if not self.val:
            return None
        device, g = self.worker.device, self.nets["translator"].eval()
        scores: dict[str, list[float]] = {"psnr": [], "psnr_direct": [], "psnr_io": []}
        example = None
        for blurry, gt in self.val:
            x, y = to_float(blurry, device), to_float(gt, device)
            t = g(x).clamp(0, 1)
            through, direct = self.deblurrer(t).clamp(0, 1), self.deblurrer(x).clamp(0, 1)
            scores["psnr"].append(psnr(through, y))
            scores["psnr_direct"].append(psnr(direct, y))
            scores["psnr_io"].append(psnr(t, x))
            if example is None:
                example = torch.cat([x[0], t[0], through[0], y[0]], 2)
        g.train()
        return ({k: float(np.mean(v)) for k, v in scores.items()},
                {"val/blurry|translated|deblurred|truth": example})

    def describe_validation(self, scores: dict[str, float]) -> str:
        return (f"known deblurrer {scores['psnr_direct']:.2f} dB on the frames, "
                f"{scores['psnr']:.2f} dB through the translator (translation within "
                f"{scores['psnr_io']:.2f} dB of its input)")

    def images(self, batch: dict, logs: dict) -> dict[str, torch.Tensor]:
        if not self.last:
            return {}
        return {"train/blurry|translated|known blur": torch.cat(
            [batch["blurry"][0], self.last["translated"][0], batch["known"][0]], 2)}


def _check_networks(bc, sc) -> None:
    """Refuse on the driver what would fail in the workers after a while: a kernel checkpoint
    that is no kernel extractor, a deblurrer that needs a reference frame, crops too small for
    the discriminator at the coarsest scale it judges (instance norm needs 2×2 maps)."""
    from bluref_ray.models import PRESETS, build_model, load_image_model, read_checkpoint

    try:
        arch = read_checkpoint(bc.kernel, sc).get("arch", "?")
    except ValueError as e:
        raise ConfigError(f"blur2blur.kernel: {e}") from None
    if (PRESETS[arch][0] if arch in PRESETS else arch) != "kernel-wizard":
        raise ConfigError(f"blur2blur.kernel={bc.kernel}: a {arch!r} checkpoint, not a blur-kernel "
                          "extractor (bluref train-kernel writes one)")
    if bc.deblurrer:
        try:
            net = load_image_model(bc.deblurrer, sc)[0]
        except ValueError as e:
            raise ConfigError(f"blur2blur.deblurrer: {e}") from None
        if getattr(net, "takes_reference", False):
            raise ConfigError(f"blur2blur.deblurrer={bc.deblurrer}: a Ref-NAFNet reads a reference "
                              "frame; the known-blur deblurrer reads the frame alone")
    disc = build_model(bc.discriminator)
    coarsest = pyramid(torch.zeros(1, 1, bc.crop, bc.crop))[0].shape[-1]
    norm = any(isinstance(m, torch.nn.InstanceNorm2d) for m in disc.modules())
    if norm and coarsest < disc.min_size:
        raise ConfigError(f"blur2blur.crop={bc.crop}: {bc.discriminator} judges the coarsest "
                          f"scale too ({coarsest} px) and needs {disc.min_size} px there; use a "
                          f"crop of at least {disc.min_size * 4} or a patchgan-plain "
                          "discriminator")


def train_blur2blur(frames: str, out: str, cfg: Config, log: Callable[[str], None] = print,
                    command: str | None = None) -> dict:
    """Train (or resume) the translator on the camera's frames (an ingest output).

    Returns:
        ``{"translator": OUT/translator.pt, "model": OUT/model.pt (the chain, with a
        deblurrer) or None, "steps", "seconds", "history", "val"}``.

    Raises:
        ConfigError: ``blur2blur.known`` or ``blur2blur.kernel`` missing.
    """
    from bluref_ray.models import chain_checkpoint, read_checkpoint, resolve_checkpoint

    bc, sc = cfg.blur2blur, cfg.storage.resolved()
    for key in ("known", "kernel"):
        if not getattr(bc, key):
            raise ConfigError(f"blur2blur.{key} is required (see `bluref blur2blur --help`)")
    for key in ("kernel", "deblurrer"):
        uri = getattr(bc, key)
        try:
            if uri:
                resolve_checkpoint(uri, sc)
        except storage.StorageNotFoundError as e:
            raise ConfigError(f"blur2blur.{key}={uri}: no such checkpoint ({e})") from None
    _check_networks(bc, sc)
    log(f"[blur2blur] {bc.translator} against {bc.discriminator}: {bc.steps} steps of "
        f"{bc.batch_size} crops of {bc.crop}px; known blur from {bc.known} through {bc.kernel}")
    result = run_task(TranslatorTask, bc, "blur2blur", out, cfg, log,
                      command or "train_blur2blur()", export="translator.pt", frames=frames)
    result["translator"], result["model"] = result["model"], None
    if bc.deblurrer:
        import io

        chain = chain_checkpoint([read_checkpoint(result["translator"], sc),
                                  read_checkpoint(bc.deblurrer, sc)])
        buf = io.BytesIO()
        torch.save(chain, buf)
        result["model"] = storage.join(storage.normalize(out), "model.pt")
        storage.write_bytes(result["model"], buf.getvalue(), sc)
        log(f"[blur2blur] translator → deblurrer chain written to {result['model']}")
    return result
