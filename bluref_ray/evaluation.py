"""Evaluation of deblurrers (``bluref eval``): metrics, image grids and a report.

For every frame of the evaluation data, the blurry input and each model's output are scored:
PSNR and SSIM against the ground truth when the frame has one (GoPro-style trees), and NIQE
(no reference, lower is better) always. With the pseudo-GT of the same frames, the grids show
blurry | pseudo-sharp | each model | truth.

Output in ``OUT``::

    OUT/eval.json           per method: mean PSNR, SSIM, NIQE, frames; and per frame
    OUT/report.md, .html    the table, the image grids and a plot of PSNR per model
    OUT/grid_NN.png         image grids
    OUT/eval_frames/        per-frame scores, 8 frames a file

Resumable: a killed evaluation, started again with the same command, scores only the frames
that no ``eval_frames`` file holds yet (files of another run, other models or frames, are
deleted) and writes the same ``eval.json`` as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from bluref_ray import schema, storage
from bluref_ray.config import Config, ConfigError
from bluref_ray.data.images import ImageError, as_saved, decode_image, to_float, to_uint8
from bluref_ray.metrics import NIQE_MIN_SIZE
from bluref_ray.storage import StorageConfig

#: Per-frame scores, ``CHUNK`` frames a file: a killed run, started again, resumes from them.
PARTS = "eval_frames"
CHUNK = 8
COLUMNS = [("method", "method", "{}"), ("psnr", "PSNR (dB)", "{:.2f}"),
           ("ssim", "SSIM", "{:.4f}"), ("niqe", "NIQE (lower is better)", "{:.2f}"),
           ("frames", "frames", "{}")]


def eval_frames(data: list[str], max_frames: int | None,
                storage_cfg: StorageConfig | None) -> list[dict]:
    """Blurry frames to evaluate (with ``gt_uri`` when known), evenly picked, at most
    ``max_frames``: the blurry frames of GoPro-style trees, or every image of other folders."""
    from bluref_ray.data.sources import discover

    frames = []
    for source in data:
        for clip in discover(source, storage_cfg):
            if clip.kind == "video":
                raise ConfigError(f"{clip.uri}: bluref eval takes frame trees or image folders; "
                                  "deblur videos with `bluref deblur`")
            frames += [{"uri": f.uri, "gt_uri": f.gt_uri, "clip_id": clip.clip_id,
                        "index": f.index} for f in clip.files if f.role in ("blurry", "")]
    if not frames:
        raise ConfigError(f"no frames to evaluate in {', '.join(data)}")
    if max_frames and len(frames) > max_frames:
        pick = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in sorted(set(pick.tolist()))]
    return frames


def pseudo_sharp_by_source(pairs: str | None, storage_cfg: StorageConfig | None) -> dict:
    """source URI of a blurry frame → pseudo-sharp PNG bytes, from pseudo-GT shards."""
    if not pairs:
        return {}
    from bluref_ray.training.deblur import shards_dir

    t = schema.read_table(shards_dir(pairs, storage_cfg), schema.PSEUDO_PAIRS, storage_cfg,
                          columns=["source_uri", "pseudo_png"])
    return dict(zip(t.column("source_uri").to_pylist(), t.column("pseudo_png").to_pylist()))


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def _log_left_out(rows: list[dict], methods: list[str], log: Callable[[str], None]) -> None:
    """Say which frames no method could score (unreadable) and where a model's output was not
    finite (its scores are over the other frames: the table's ``frames`` column)."""
    unreadable = sum("unreadable" in r for r in rows)
    if unreadable:
        log(f"[eval] {unreadable} of {len(rows)} frames could not be read; every method is "
            "scored over the others")
    for m in methods:
        failed = sum(bool(r[m].get("failed")) for r in rows)
        if failed:
            log(f"[eval] {m}: output not finite (NaN or inf) on {failed} of {len(rows)} frames; "
                "scored over the others")


def _scored_frames(blurry: dict[str, list], data: list[str],
                   log: Callable[[str], None]) -> dict[str, int]:
    """How many frames each metric scored (PSNR/SSIM need the ground truth, NIQE a frame of
    at least ``NIQE_MIN_SIZE`` px, not flat); a line says which are left out, and why."""
    n = len(blurry["psnr"])
    scored = {k: sum(v is not None for v in blurry[k]) for k in ("psnr", "niqe")}
    if scored["psnr"] < n:
        log(f"[eval] {n - scored['psnr']} of {n} frames have no ground truth (a sharp/ folder "
            f"beside blur/ in {', '.join(data)}): PSNR and SSIM are over the "
            f"{scored['psnr']} others" if scored["psnr"] else
            f"[eval] no frame of {', '.join(data)} has a ground truth (a sharp/ folder beside "
            "blur/): NIQE only")
    if scored["niqe"] < n:
        log(f"[eval] {n - scored['niqe']} of {n} frames are under {NIQE_MIN_SIZE} px or flat: "
            f"NIQE is over the {scored['niqe']} others" if scored["niqe"] else
            f"[eval] every frame is under {NIQE_MIN_SIZE} px or flat: no NIQE")
    return scored


def _grid_name(n: int) -> str:
    return f"grid_{n:02d}.png"


def _first(part: str) -> int:
    """The first frame of a part ``<key>-<first>.json``."""
    return int(storage.basename(part).rsplit("-", 1)[1].removesuffix(".json"))


def _run_key(models: dict[str, str], nets: dict, frames: list[dict], refs: dict, cfg: Config,
             pairs: str | None, grids: int, device: torch.device) -> str:
    """What the scores and grids of a run depend on (a resumed run reuses only parts of the
    same key): the models (by their weights too, so a checkpoint retrained in place counts as
    another), frames, references, tiling, pseudo-GT, grids and the device (bfloat16 on CUDA)."""
    from bluref_ray.models import resolve_checkpoint

    weights = {k: float(sum(p.detach().double().sum() for p in n.parameters()))
               for k, n in nets.items()}
    models = {k: resolve_checkpoint(v, cfg.storage.resolved()) for k, v in models.items()}
    pairs = storage.normalize(pairs) if pairs else None  # the same files however spelled
    what = {"models": models, "weights": weights, "frames": frames, "refs": refs,
            "tile": cfg.deblur.tile, "overlap": cfg.deblur.tile_overlap, "pairs": pairs,
            "grids": grids, "device": device.type}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def _resume(out: str, key: str, sc: StorageConfig, log: Callable[[str], None]) -> set[str]:
    """The parts of ``OUT/eval_frames`` scored by a run of the same key; parts of other runs
    and what a killed run left (temporary files) are deleted (one writer: this run)."""
    folder = storage.join(out, PARTS)
    gone = storage.delete_temporaries(out, sc, recursive=False) + \
        storage.delete_temporaries(folder, sc, recursive=False)
    try:
        files = storage.list_files(folder, sc, recursive=False)
    except storage.StorageNotFoundError:
        files = []
    ours = {f for f in files if storage.basename(f).startswith(f"{key}-")}
    for f in set(files) - ours:
        storage.delete(f, sc)
    if gone or len(files) > len(ours):
        log(f"[eval] deleted {gone} unfinished file(s) and {len(files) - len(ours)} part(s) "
            "of other runs")
    return ours


def _score_frame(f: dict, nets: dict, refs: dict, metrics, cfg: Config,
                 device: torch.device) -> tuple[dict, dict, np.ndarray, np.ndarray | None]:
    """One frame's scores (``{"uri", "gt_uri", "reference", method: {psnr, ssim, niqe}}``),
    the methods' outputs and the decoded blurry frame and truth."""
    from bluref_ray.models.tiling import tiled_forward

    sc = cfg.storage.resolved()
    blurry = decode_image(storage.read_bytes(f["uri"], sc), f["uri"])[0]
    gt = decode_image(storage.read_bytes(f["gt_uri"], sc), f["gt_uri"])[0] \
        if f["gt_uri"] else None
    if gt is not None and gt.shape != blurry.shape:
        raise ConfigError(f"{f['gt_uri']}: size {gt.shape[:2]} differs from the blurry "
                          f"frame {f['uri']} ({blurry.shape[:2]})")
    x = to_float(blurry, device)
    y = to_float(gt, device) if gt is not None else None
    outputs = {"blurry": x}
    ref_uri = refs.get(f["uri"]) or f["uri"]
    ref = to_float(decode_image(storage.read_bytes(ref_uri, sc), ref_uri)[0], device) \
        if refs else None
    for label, net in nets.items():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = net(x, ref) if getattr(net, "takes_reference", False) else \
                tiled_forward(net, x, tile=cfg.deblur.tile, overlap=cfg.deblur.tile_overlap)
        outputs[label] = as_saved(pred)
    failed = [m for m, o in outputs.items() if not bool(torch.isfinite(o).all())]
    row = {"uri": f["uri"], "gt_uri": f["gt_uri"], "reference": refs.get(f["uri"])}
    # all methods of a frame in one batch: pyiqa's SSIM (float64 filters) dominates on CPU
    batch = torch.cat([x if m in failed else o for m, o in outputs.items()])  # scores dropped
    truth = y.expand_as(batch) if y is not None else None
    none = [None] * len(outputs)
    psnr = metrics.psnr(batch, truth).tolist() if truth is not None else none
    ssim = metrics.ssim(batch, truth).tolist() if truth is not None else none
    niqe = [None if math.isnan(v) else v for v in metrics.niqe(batch).tolist()] \
        if min(batch.shape[-2:]) >= NIQE_MIN_SIZE else none  # NaN: a flat frame
    for i, m in enumerate(outputs):  # a model's NaN/inf output: no score, counted as failed
        row[m] = {"psnr": None, "ssim": None, "niqe": None, "failed": True} if m in failed \
            else {"psnr": psnr[i], "ssim": ssim[i], "niqe": niqe[i]}
    return row, outputs, blurry, gt


def _unreadable(f: dict, methods: list[str], error: ImageError) -> dict:
    """The row of a frame (or its truth or reference) that cannot be decoded: no scores."""
    return {"uri": f["uri"], "gt_uri": f["gt_uri"], "unreadable": str(error),
            **{m: {"psnr": None, "ssim": None, "niqe": None} for m in methods}}


@torch.no_grad()
def evaluate(models: dict[str, str], data: list[str], out: str, cfg: Config,
             pairs: str | None = None, max_frames: int | None = 32, grids: int = 4,
             reference: str = "sharpest", delta: int = 30,
             log: Callable[[str], None] = print) -> dict:
    """Score the blurry frames and each model's output; write ``eval.json`` and a report.

    Args:
        models: label → checkpoint URI, in the order the table and plot show them.
        data: GoPro-style trees (PSNR/SSIM/NIQE) or image folders (NIQE only).
        out: output folder.
        pairs: pseudo-GT output of the same frames, for the pseudo-sharp column of the grids.
        max_frames: frames evaluated, evenly picked (None: all).
        grids: frames shown as image grids.
        reference: how models that read a reference frame (Ref-NAFNet) get it: the rule of
            :mod:`bluref_ray.data.triplets` over the frame's clip within ±``delta``
            (``sharpest``; ``middle``, ``blurriest``; ``shuffled``: another clip's frame). A
            frame with no other frame within ±Δ is its own reference.

    Returns:
        ``{"methods": [{"method", "psnr", "ssim", "niqe", "frames"}], "frames": [...],
        "report": URI}``.
    """
    from bluref_ray.metrics import ImageMetrics
    from bluref_ray.models import load_image_model
    from bluref_ray.report import image_grid, round_plot, save_png, write_report

    sc = cfg.storage.resolved()
    out = storage.normalize(out)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    nets = {label: load_image_model(uri, sc, map_location=device)[0].to(device)
            for label, uri in models.items()}
    frames = eval_frames(data, max_frames, sc)
    pseudo = pseudo_sharp_by_source(pairs, sc)
    refs: dict[str, str | None] = {}
    if any(getattr(n, "takes_reference", False) for n in nets.values()):
        from bluref_ray.data.triplets import file_references

        refs = file_references(data, frames, reference, delta, sc, cfg.ingest.score_max_side)
        log(f"[eval] references: {reference} within ±{delta} frames "
            f"({sum(r is None for r in refs.values())} frame(s) without one use themselves)")
    metrics = ImageMetrics(device)
    methods = ["blurry", *nets]
    key = _run_key(models, nets, frames, refs, cfg, pairs, grids, device)
    parts = _resume(out, key, sc, log)
    per_frame: list[dict] = []
    t0 = time.time()
    log(f"[eval] {len(frames)} frames, methods: {', '.join(methods)}"
        + (f"; {sum(min(CHUNK, len(frames) - _first(p)) for p in parts)} already scored "
           "(resuming)" if parts else ""))
    for first in range(0, len(frames), CHUNK):
        part = storage.join(out, PARTS, f"{key}-{first:06d}.json")
        if part in parts:
            per_frame += json.loads(storage.read_text(part, sc))
            continue
        rows = []
        for n in range(first, min(first + CHUNK, len(frames))):
            try:
                row, outputs, blurry, gt = _score_frame(frames[n], nets, refs, metrics, cfg,
                                                        device)
            except ImageError as e:  # one broken file: left out, named, the rest scored
                log(f"[eval] left out: {e}")
                rows.append(_unreadable(frames[n], methods, e))
                continue
            rows.append(row)
            if n < grids:  # saved at once: a resumed run skips this frame
                ps = pseudo.get(frames[n]["uri"])
                cells = [blurry, decode_image(ps)[0] if ps else None,
                         *[to_uint8(o[0]) for m, o in outputs.items() if m != "blurry"], gt]
                save_png(storage.join(out, _grid_name(n)),
                         image_grid([cells], ["blurry", "pseudo-sharp", *nets, "truth"]), sc)
        storage.write_text(part, json.dumps(rows), sc)
        per_frame += rows
        log(f"[eval] {len(per_frame)}/{len(frames)} frames, {time.time() - t0:.1f}s")
    scores = {m: {k: [r[m][k] for r in per_frame] for k in ("psnr", "ssim", "niqe")}
              for m in methods}
    table = [{"method": m, **{k: _mean(v) for k, v in scores[m].items()},
              "frames": sum("unreadable" not in r and not r[m].get("failed") for r in per_frame)}
             for m in methods]
    _log_left_out(per_frame, methods, log)
    scored = _scored_frames(scores["blurry"], data, log)
    result = {"methods": table, "frames": per_frame, "models": models, "data": data,
              "reference": reference if refs else None, "scored_frames": scored}
    storage.write_text(storage.join(out, "eval.json"), json.dumps(result, indent=1), sc)
    images = [(_grid_name(i), f"{frames[i]['clip_id']} frame {frames[i]['index']}")
              for i in range(min(grids, len(frames))) if "unreadable" not in per_frame[i]]
    sections = [{"heading": "Metrics", "rows": table, "columns": COLUMNS,
                 "text": f"{len(frames)} frames of {', '.join(data)}. PSNR and SSIM on RGB "
                         f"against the ground truth, over the {scored['psnr']} frames that "
                         f"have one; NIQE needs no reference, over the {scored['niqe']} frames "
                         f"of at least {NIQE_MIN_SIZE} px with structure to score."},
                {"heading": "Images", "images": images}]
    if nets and table[0]["psnr"] is not None:
        round_plot(list(range(1, len(nets) + 1)), {
            "model output": [t["psnr"] for t in table[1:]]},
            storage.join(out, "psnr.png"), sc, title=" → ".join(nets),
            references={"blurry": table[0]["psnr"]}, xlabel="model, in the order given")
        sections.insert(1, {"heading": "PSNR per model", "images": [
            ("psnr.png", "PSNR per model, in the order given (x: model number)")]})
    md, html = write_report(out, "bluref eval", sections, sc)
    result["report"] = html
    log(f"[eval] report: {md} and {html}")
    return result
