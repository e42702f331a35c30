"""Iterative target refinement (``bluref refine``): pseudo-GT and training, round after round.

Round 1 matches the references to the blurry frames and trains the deblurrer on the pseudo-pairs.
Round k+1 deblurs each blurry frame with round k's model and matches the references to that
output instead (a sharper matching input gives better alignment), then trains again, warm-started
from round k's weights at a lower peak learning rate (``refine.lr_later``). The loss always pairs
the *blurry* frame with the new pseudo-sharp target.

Output in ``OUT``::

    OUT/round_K/pseudo_gt/    shards and summary.json of round K (see ``bluref pseudo-gt``)
    OUT/round_K/train/        checkpoints, model.pt, train.json (see ``bluref train``)
    OUT/refine.json           one row per round: pseudo-GT quality, coverage, validation PSNR/SSIM
    OUT/refine.md, refine.png the same as a table and a plot

Every stage resumes, so a killed refinement started again with the same ``OUT`` goes on where it
stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from bluref_ray import storage
from bluref_ray.config import Config

if TYPE_CHECKING:
    from bluref_ray.pipeline.pseudo_gt import PseudoGTSummary
    from bluref_ray.storage import StorageConfig
    from bluref_ray.training.deblur import TrainSummary

COLUMNS = [("round", "round", "{}"), ("coverage", "coverage", "{:.3f}"),
           ("pseudo_psnr", "pseudo-GT PSNR (confident)", "{:.2f}"),
           ("blurry_psnr", "blurry PSNR (same pixels)", "{:.2f}"),
           ("val_psnr", "val PSNR", "{:.2f}"), ("val_ssim", "val SSIM", "{:.4f}"),
           ("val_psnr_blurry", "val PSNR blurry", "{:.2f}")]


def round_dir(out: str, k: int) -> str:
    return storage.join(out, f"round_{k}")


def run_refine(frames: str, out: str, cfg: Config, log: Callable[[str], None] = print) -> dict:
    """K rounds of pseudo-GT (:func:`run_pseudo_gt`) + training (:func:`train_deblurrer`).

    Args:
        frames: ingest output (frames table) of the clips to learn from.
        out: output folder (see the module docstring).
        cfg: ``pseudo_gt``, ``train`` and ``refine`` sections; ``train.steps`` is round 1's
            budget, ``refine.steps_later`` (default the same) that of each later round.

    Returns:
        ``{"rounds": [row per round], "model": the last round's model.pt}``.
    """
    from bluref_ray.pipeline.pseudo_gt import run_pseudo_gt
    from bluref_ray.training.deblur import train_deblurrer

    out = storage.normalize(out)
    storage.delete_temporaries(out, cfg.storage)  # a killed run's cut-short report writes
    rows: list[dict] = []
    model = cfg.pseudo_gt.deblurrer
    for k in range(1, cfg.refine.rounds + 1):
        log(f"[refine] round {k}/{cfg.refine.rounds}: pseudo-GT"
            + (f" matching the output of {model}" if model else " matching the blurry frames"))
        pg_cfg = dataclasses.replace(cfg.pseudo_gt, round=k, deblurrer=model)
        prepare_round(round_dir(out, k), k, model, cfg.pseudo_gt.overwrite, cfg.storage, log)
        pg = run_pseudo_gt(frames, storage.join(round_dir(out, k), "pseudo_gt"),
                           dataclasses.replace(cfg, pseudo_gt=pg_cfg), log=log)
        later = cfg.refine.steps_later
        steps = cfg.train.steps if k == 1 or later is None else later
        lr = cfg.train.lr if k == 1 else cfg.train.lr * cfg.refine.lr_later
        tc = dataclasses.replace(cfg.train, steps=steps, lr=lr, init=model or cfg.train.init)
        log(f"[refine] round {k}/{cfg.refine.rounds}: training {steps} steps, peak lr {lr:.2g}"
            + (f", warm start from {model}" if model else ""))
        tr = train_deblurrer(storage.join(round_dir(out, k), "pseudo_gt"),
                             storage.join(round_dir(out, k), "train"),
                             dataclasses.replace(cfg, train=tc), log=log)
        model = tr.model
        rows.append(round_row(k, pg, tr))
        write_refine_report(out, rows, cfg)
    return {"rounds": rows, "model": model}


def prepare_round(rdir: str, k: int, model: str | None, overwrite: bool,
                  storage_cfg: StorageConfig, log: Callable[[str], None]) -> None:
    """Make round ``k``'s folder ready: its pseudo-GT matches the output of ``model`` (the round
    before's), so pairs and training made from another model are stale (an earlier round was
    trained further, or retrained): those are deleted, as everything of the round is with
    ``overwrite``. ``rdir/_round.json`` records the digest of the model's weights."""
    marker = storage.join(rdir, "_round.json")
    want = {"matches_model_digest": _digest(model, storage_cfg)}
    have = (json.loads(storage.read_text(marker, storage_cfg))
            if storage.exists(marker, storage_cfg) else None)
    if overwrite or (have is not None and have != want):
        if have is not None and have != want:
            log(f"[refine] round {k}: made from another model than {model or 'none'}; "
                "making it again")
        for part in ("pseudo_gt", "train"):
            storage.delete(storage.join(rdir, part), storage_cfg)
    storage.makedirs(rdir, storage_cfg)
    storage.write_text(marker, json.dumps(want, indent=1), storage_cfg)


def _digest(uri: str | None, storage_cfg: StorageConfig) -> str | None:
    """SHA-256 of a checkpoint's weights (a chain ``A+B`` too), whatever else it records."""
    if not uri:
        return None
    from bluref_ray.models import read_checkpoint

    h = hashlib.sha256()
    for name, t in sorted(read_checkpoint(uri, storage_cfg)["state_dict"].items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def round_row(k: int, pg: PseudoGTSummary, tr: TrainSummary) -> dict:
    """One round's figures (a row of ``refine.md``) from its pseudo-GT and training."""
    q, v = pg.quality, tr.val or {}
    return {"round": k, "pairs": pg.rows, "coverage": pg.mean_coverage,
            "pseudo_psnr": q.psnr_pseudo if q else None,
            "blurry_psnr": q.psnr_blurry if q else None,
            "val_psnr": v.get("psnr"), "val_ssim": v.get("ssim"),
            "val_psnr_blurry": v.get("psnr_blurry"), "model": tr.model,
            "train_seconds": tr.seconds}


def write_refine_report(out: str, rows: list[dict], cfg: Config) -> None:
    """``refine.json``, ``refine.md`` and the per-round plot ``refine.png``."""
    from bluref_ray.report import markdown_table, round_plot

    sc = cfg.storage
    storage.write_text(storage.join(out, "refine.json"), json.dumps(rows, indent=1), sc)
    storage.write_text(storage.join(out, "refine.md"), markdown_table(rows, COLUMNS) + "\n", sc)
    series = {"pseudo-GT (confident px)": [r["pseudo_psnr"] for r in rows],
              "deblurred (val)": [r["val_psnr"] for r in rows]}
    round_plot([r["round"] for r in rows], series, storage.join(out, "refine.png"), sc,
               title="BluRef per refinement round",
               references={"blurry (val)": rows[0].get("val_psnr_blurry")})
