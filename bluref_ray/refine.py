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
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from bluref_ray import storage
from bluref_ray.config import Config

if TYPE_CHECKING:
    from bluref_ray.pipeline.pseudo_gt import PseudoGTSummary
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
        pg = run_pseudo_gt(frames, storage.join(round_dir(out, k), "pseudo_gt"),
                           dataclasses.replace(cfg, pseudo_gt=pg_cfg), log=log)
        steps = cfg.train.steps if k == 1 else (cfg.refine.steps_later or cfg.train.steps)
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
    if rows[0].get("val_psnr_blurry") is not None:
        series["blurry (val)"] = [rows[0]["val_psnr_blurry"]]
    round_plot([r["round"] for r in rows], series, storage.join(out, "refine.png"), sc,
               title="BluRef per refinement round")
