"""Validation of a deblurrer while it trains: which frames, and how they are scored.

With ground truth (GoPro-style trees) the output is scored by PSNR and SSIM against it; without
(a folder of blurry frames) by NIQE. Rank 0 of :func:`bluref_ray.training.deblur.train_loop` calls
:func:`validate`; its scores reach Ray Train's reports as ``val_<name>`` (and a sweep's trials).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bluref_ray import storage
from bluref_ray.config import ConfigError
from bluref_ray.data.images import as_saved, decode_image, to_float
from bluref_ray.storage import StorageConfig

#: Validation scores reported to Ray Train (as ``val_<name>``) and hence to a sweep.
VAL_METRICS = ("psnr", "ssim", "niqe")


def validation_frames(val: str, count: int,
                      storage_cfg: StorageConfig) -> list[tuple[str, str | None]]:
    """``count`` (blurry URI, ground truth URI) pairs, evenly picked.

    From GoPro-style trees (``<seq>/{blur,sharp}/``) the pairs carry their ground truth; from a
    folder of frames without it (a held-out clip's blurry frames), the ground truth is None and
    validation scores NIQE instead.
    """
    from bluref_ray.data.sources import discover

    files = [f for clip in discover(val, storage_cfg) for f in clip.files]
    pairs = [(f.uri, f.gt_uri) for f in files if f.role == "blurry" and f.gt_uri]
    if not pairs:  # no ground truth: the blurry frames, or every frame of a plain folder
        pairs = [(f.uri, None) for f in files if f.role in ("blurry", "")]
    if not pairs:
        raise ConfigError(f"train.val={val}: no frames to validate on (expected a GoPro-style "
                          "tree <seq>/blur/ + <seq>/sharp/, or a folder of blurry frames)")
    pick = np.linspace(0, len(pairs) - 1, min(count, len(pairs))).round().astype(int)
    return [pairs[i] for i in sorted(set(pick.tolist()))]


def load_pair_images(frames: list[tuple[str, str | None]], storage_cfg: StorageConfig | None
                     ) -> list[tuple[np.ndarray, np.ndarray | None]]:
    return [(decode_image(storage.read_bytes(b, storage_cfg), b)[0],
             decode_image(storage.read_bytes(g, storage_cfg), g)[0] if g else None)
            for b, g in frames]


@torch.no_grad()
def validate(model: torch.nn.Module, images: list[tuple[np.ndarray, ...]],
             device: torch.device, amp: bool = False) -> dict:
    """Mean scores of the model's output and of the blurry input; also the first frame's
    images for a look.

    ``images``: ``(blurry, truth or None)`` per frame, or ``(blurry, truth, reference)`` for a
    model that reads a reference (Ref-NAFNet).

    With ground truth: PSNR and SSIM (pyiqa) against it (``psnr``, ``ssim``, ``psnr_blurry``,
    ``ssim_blurry``). Without (``None`` in place of the truth): NIQE (``niqe``,
    ``niqe_blurry``; lower is better; over the frames with structure to score, NaN if none). A
    model whose output is not finite (it diverged) scores PSNR and SSIM 0 and NIQE infinity.
    """
    from bluref_ray.metrics import ImageMetrics

    metrics = ImageMetrics(device)
    was_training = model.training
    model.eval()
    with_gt = images[0][1] is not None if images else True
    keys = ("psnr", "ssim", "psnr_blurry", "ssim_blurry") if with_gt else ("niqe", "niqe_blurry")
    sums = dict.fromkeys(keys, 0.0)
    example, niqe_frames = None, 0
    for blurry, gt, *ref in images:
        x = to_float(blurry, device)
        inputs = (x, to_float(ref[0], device)) if ref else (x,)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            pred = model(*inputs).float()
        finite = bool(torch.isfinite(pred).all())
        pred = as_saved(pred)
        if with_gt:
            y = to_float(gt, device)
            sums["psnr"] += float(metrics.psnr(pred, y)[0]) if finite else 0.0
            sums["ssim"] += float(metrics.ssim(pred, y)[0]) if finite else 0.0
            sums["psnr_blurry"] += float(metrics.psnr(x, y)[0])
            sums["ssim_blurry"] += float(metrics.ssim(x, y)[0])
        else:
            y = None
            blurry_niqe = float(metrics.niqe(x)[0])
            if math.isfinite(blurry_niqe):  # a flat frame (a covered lens) has no NIQE
                sums["niqe"] += _niqe(metrics, pred) if finite else float("inf")
                sums["niqe_blurry"] += blurry_niqe
                niqe_frames += 1
        if example is None:
            example = torch.cat([x[0], torch.nan_to_num(pred[0])]
                                + ([y[0]] if y is not None else []), dim=2)
    model.train(was_training)
    if with_gt:
        result = {k: v / max(len(images), 1) for k, v in sums.items()}
    else:  # NaN: no frame had structure to score
        result = {k: v / niqe_frames if niqe_frames else float("nan") for k, v in sums.items()}
    result["example"] = example
    return result


def _niqe(metrics, image: torch.Tensor) -> float:
    """NIQE of one image; infinity (the worst) for an image it cannot score, such as the flat
    output of a diverged model (its statistics are not finite)."""
    try:
        score = float(metrics.niqe(image)[0])
    except RuntimeError:  # torch.linalg errors on non-finite statistics
        return float("inf")
    return score if math.isfinite(score) else float("inf")


def describe_validation(v: dict) -> str:
    """One line of validation scores, with the blurry input's beside them."""
    if "psnr" in v:
        return (f"PSNR {v['psnr']:.2f} dB (blurry {v['psnr_blurry']:.2f}), SSIM "
                f"{v['ssim']:.4f} (blurry {v['ssim_blurry']:.4f})")
    return f"NIQE {v['niqe']:.2f} (blurry {v['niqe_blurry']:.2f}; lower is better)"
