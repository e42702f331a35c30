"""Ingest (``bluref ingest``): clips in storage → frames table + rejects table.

Stages, each a plain function that tests call without Ray:

1. **discover** (driver, metadata only): list the sources once, group files into clips
   (:func:`bluref_ray.data.sources.discover`); skip clips that an earlier run finished.
2. **ingest_clip** (Ray Data ``map``, 1 CPU per clip task): stream-decode the clip's frames, score
   sharpness (variance of the Laplacian, FFT score), label blurry/sharp (folders for frame trees,
   Otsu per clip otherwise), pick up to N sharp references within ±Δ for each blurry frame.
   Only scores are kept, never pixels, so a task's memory is one frame plus a prefetch window.
3. **write** (same task): ``OUT/rejects/<clip_id>.parquet`` if anything failed, then
   ``OUT/frames/<clip_id>.parquet``, each atomically. The frames file marks the clip done, so a
   killed run, started again, redoes only unfinished clips.
4. **summarize** (driver; each table file counted by a task, see
   :func:`bluref_ray.tables.map_files`): ``OUT/summary.json`` with counts and timings.

``bluref compact`` merges the per-clip files into parts that still mark their clips done
(:mod:`bluref_ray.tables`).

One bad file never stops the others: it becomes a row of the rejects table that names the file
and the reason. Storage that cannot be reached stops the run with a clear error instead, since
every later clip would fail the same way; the run resumes where it stopped.
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bluref_ray import schema, storage, tables
from bluref_ray.config import Config, ConfigError, IngestConfig, settings_hash
from bluref_ray.data.references import pick_references
from bluref_ray.data.sharpness import (
    colour_histogram,
    fft_score,
    laplacian_variance,
    relative_scores,
    shot_ids,
    split_blurry,
    split_blurry_shots,
    to_gray,
    widen_blurry,
)
from bluref_ray.data.sources import Clip, Frame, Reject, discover, read_frames
from bluref_ray.data.video import VIDEO_EXTENSIONS
from bluref_ray.pipeline.common import Progress, delete_leftovers, prepare_out
from bluref_ray.storage import StorageConfig


def ingest_clip(clip: Clip, cfg: IngestConfig, storage_cfg: StorageConfig | None = None,
                threads: int = 0) -> tuple[pa.Table, pa.Table]:
    """Score, label and pick references for one clip.

    Args:
        threads: decoder threads (0: one per core); Ray tasks pass the CPUs they were given.

    Returns:
        ``(frames, rejects)`` tables with the :data:`schema.FRAMES` and :data:`schema.REJECTS`
        schemas.
    """
    rows: list[dict] = []
    rejects: list[Reject] = []
    for item in read_frames(clip, storage_cfg, cfg.max_frames, threads=threads):
        if isinstance(item, Reject):
            rejects.append(item)
            continue
        rows.append(_score(item, cfg))
    rows = _drop_odd_sizes(clip, rows, rejects)
    if not rows and not rejects:
        rejects.append(Reject(clip.clip_id, clip.uri, f"{clip.uri}: no frames", "empty"))
    _label(clip, rows, cfg)
    _add_references(clip, rows, cfg)
    frames = pa.Table.from_pylist(rows, schema=schema.FRAMES)
    rej = pa.Table.from_pylist([asdict(r) for r in rejects], schema=schema.REJECTS)
    return frames, rej


def _score(f: Frame, cfg: IngestConfig) -> dict:
    gray = to_gray(f.rgb, cfg.score_max_side)
    h, w = f.rgb.shape[:2]
    t = f.time if np.isfinite(f.time) else f.index / cfg.frame_rate
    return {"frame_index": f.index, "timestamp": t, "source_uri": f.uri, "gt_uri": f.gt_uri,
            "role": f.role, "laplacian_var": laplacian_variance(gray),
            "fft_score": fft_score(gray), "height": h, "width": w,
            "pixel_format": f.pixel_format,
            "_hist": colour_histogram(f.rgb) if f.role == "" else None}  # dropped after labels


def _drop_odd_sizes(clip: Clip, rows: list[dict], rejects: list[Reject]) -> list[dict]:
    """Keep frames of the clip's most common size; reject the others with their reason."""
    if not rows:
        return rows
    sizes = Counter((r["height"], r["width"]) for r in rows)
    (h, w), _ = sizes.most_common(1)[0]
    keep = []
    for r in rows:
        if (r["height"], r["width"]) == (h, w):
            keep.append(r)
        else:
            rejects.append(Reject(
                clip.clip_id, r["source_uri"],
                f"{r['source_uri']}: frame {r['frame_index']} is {r['width']}x{r['height']}, "
                f"the clip's frames are {w}x{h}", "size", r["frame_index"]))
    return keep


MILD_CUT = "the cut for mild blur"  #: in the reason of a frame the second pass tested


def _label(clip: Clip, rows: list[dict], cfg: IngestConfig) -> None:
    """Roles from the folders (trees), else by sharpness (see :mod:`bluref_ray.data.sharpness`);
    each row gets its label's reason in words."""
    hists = [r.pop("_hist", None) for r in rows]
    for r in rows:
        r["relative_score"] = None
    if clip.kind == "tree":
        for r in rows:
            r["blur_threshold"] = None
            r["label_reason"] = f"in the {'blur' if r['role'] == 'blurry' else 'sharp'}/ folder"
        return
    key = "laplacian_var" if cfg.label_score == "laplacian" else "fft_score"
    name = "variance of the Laplacian" if key == "laplacian_var" else "FFT score"
    scores = np.array([r[key] for r in rows])
    if cfg.threshold is not None or cfg.label_rule == "clip":
        blurry, threshold = split_blurry(scores, cfg.threshold, cfg.min_spread)
        how = "fixed threshold" if cfg.threshold is not None else "the clip's Otsu threshold"
        for r, b in zip(rows, blurry):
            r["role"] = "blurry" if b else "sharp"
            r["blur_threshold"] = None if np.isnan(threshold) else threshold
            r["label_reason"] = (f"{name} {r[key]:.4g} {'<' if b else '>='} {how} "
                                 f"{threshold:.4g}" if not np.isnan(threshold) else
                                 f"{name}: the clip's scores form one population (all sharp)")
        return
    shots = shot_ids(hists) if all(h is not None for h in hists) else None
    rel = relative_scores(scores, shots, cfg.label_window)
    first, ratios, by_shot = split_blurry_shots(rel, shots if cfg.label_shot_frames else None,
                                                cfg.label_shot_frames)
    blurry, mild, cut = first, np.full(len(rows), np.nan), np.full(len(rows), np.nan)
    if cfg.label_mild_z is not None:
        blurry, mild, cut = widen_blurry(scores, first, shots, cfg.label_mild_window,
                                         cfg.label_mild_z)
    for i, (r, b) in enumerate(zip(rows, blurry)):
        r["role"] = "blurry" if b else "sharp"
        r["relative_score"] = float(np.exp(rel[i]))
        ratio = float(ratios[i])
        r["blur_threshold"] = None if np.isnan(ratio) else ratio
        shot = f" of shot {shots[i]}" if shots is not None and shots.max() > 0 else ""
        where = f"the sharp level within ±{cfg.label_window} frames{shot}"
        whose = f"shot {shots[i]}'s" if by_shot[i] else "the clip's"
        r["label_reason"] = (
            f"{name} {np.exp(rel[i]):.2f}× {where}, {'below' if first[i] else 'at or above'} "
            f"{whose} threshold {ratio:.2f}×" if not np.isnan(ratio) else
            f"{name} {np.exp(rel[i]):.2f}× {where}; the clip has no blurry population")
        if np.isnan(cut[i]) or first[i]:
            continue
        near = f"the sharp frames within ±{cfg.label_mild_window}{shot}"
        r["label_reason"] += (
            f"; {np.exp(mild[i]):.3f}× {near}, {'below' if b else 'at or above'} {MILD_CUT} "
            f"{np.exp(cut[i]):.3f}× (the sharp frames' median less "
            f"{cfg.label_mild_z:g} robust s.d.)" if np.isfinite(mild[i]) else
            f"; none of {near} on one side: no test for mild blur")


def clip_protocol(clip: Clip, rows: list[dict], cfg: IngestConfig) -> str:
    """``paper`` or ``camera`` (see ``ingest.protocol``): ``auto`` takes ``paper`` for a paired
    tree, whose every sharp index also has a blurry frame. Decided from the files the tree
    holds, not from the frames that decoded: one unreadable blurry file does not make a paired
    tree a camera's (which would leave its frames nearly without references)."""
    if cfg.protocol != "auto":
        return cfg.protocol
    if clip.kind != "tree":
        return "camera"
    blurry, sharp = _indices(clip, rows, "blurry"), _indices(clip, rows, "sharp")
    return "paper" if sharp and sharp <= blurry else "camera"


def _indices(clip: Clip, rows: list[dict], role: str) -> set[int]:
    """The indices of a role: of a tree's files (their folder gives the role), else of the
    frames read (labelled)."""
    if clip.kind == "tree":
        return {f.index for f in clip.files if f.role == role}
    return {r["frame_index"] for r in rows if r["role"] == role}


def _add_references(clip: Clip, rows: list[dict], cfg: IngestConfig) -> None:
    blurry = [r for r in rows if r["role"] == "blurry"]
    protocol = clip_protocol(clip, rows, cfg)
    # camera: the sharp frame at a blurry frame's index is that frame's ground truth, which a
    # camera never records, so only sharp frames without a blurry twin are references. paper:
    # every other index's sharp frame is (pick_references never gives a frame its own index).
    # (a blurry file that could not be read still makes its index's sharp frame a truth)
    blurry_idx = _indices(clip, rows, "blurry") if protocol == "camera" else set()
    sharp_idx = [r["frame_index"] for r in rows
                 if r["role"] == "sharp" and r["frame_index"] not in blurry_idx]
    refs = pick_references(np.array([r["frame_index"] for r in blurry], np.int64),
                           np.array(sharp_idx, np.int64), cfg.max_refs, cfg.delta)
    for r in rows:
        r.update(clip_id=clip.clip_id, source_kind=clip.kind, references=[], protocol=protocol,
                 frame_id=schema.frame_id(clip.clip_id, r["role"], r["frame_index"]))
    for r, ref in zip(blurry, refs):
        r["references"] = [schema.frame_id(clip.clip_id, "sharp", i) for i in ref]


def frames_uri(out: str, clip_id: str) -> str:
    return storage.join(out, "frames", f"{clip_id}.parquet")


def rejects_uri(out: str, clip_id: str) -> str:
    return storage.join(out, "rejects", f"{clip_id}.parquet")


def ingest_and_write(clip: Clip, out: str, cfg: IngestConfig,
                     storage_cfg: StorageConfig | None = None, threads: int = 0) -> dict:
    """Ingest one clip and write its tables; returns a one-line summary of the clip."""
    t0 = time.perf_counter()
    frames, rejects = ingest_clip(clip, cfg, storage_cfg, threads)
    if rejects.num_rows:
        schema.write_table(rejects, rejects_uri(out, clip.clip_id), storage_cfg)
    schema.write_table(frames, frames_uri(out, clip.clip_id), storage_cfg)  # marks the clip done
    roles = frames.column("role").to_pylist()
    return {"clip_id": clip.clip_id, "source_uri": clip.uri, "frames": frames.num_rows,
            "blurry": roles.count("blurry"), "sharp": roles.count("sharp"),
            "rejects": rejects.num_rows, "seconds": time.perf_counter() - t0,
            "first_reject": rejects.column("reason")[0].as_py() if rejects.num_rows else ""}


def _ingest_row(row: dict, out: str, cfg: IngestConfig, storage_cfg: StorageConfig) -> dict:
    """The Ray task: one clip, with its threads capped to the CPUs Ray gave it."""
    import cv2
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    threads = max(1, int(cpus))
    cv2.setNumThreads(threads)
    clip = Clip.from_json(row["clip"])
    # S3 down or failing mid-clip (a video read as a stream too): the clip again, from the start
    return storage.retry_while_unreachable(
        lambda: ingest_and_write(clip, out, cfg, storage_cfg, threads), storage_cfg)


def run_ingest(sources: list[str], out: str, cfg: Config,
               log: Callable[[str], None] = print) -> dict:
    """Ingest ``sources`` into ``out`` with Ray Data; resumes an interrupted run.

    Returns:
        The run summary (also written to ``OUT/summary.json``).

    Raises:
        storage.StorageError: a source or ``out`` cannot be reached or does not exist.
        ConfigError: ``out`` holds results of other settings (see ``ingest.overwrite``).
    """
    t0 = time.time()
    sources = [storage.normalize(s) for s in sources]
    out = storage.normalize(out)
    storage_cfg = cfg.storage.resolved()
    for uri in [*sources, out]:
        storage.check_reachable(uri, storage_cfg)
    clips: list[Clip] = []
    for s in sources:
        found = discover(s, storage_cfg)
        log(f"[ingest] {s}: {len(found)} clips "
            f"({Counter(c.kind for c in found).most_common()})")
        clips += found
    if not clips:
        raise storage.StorageNotFoundError(
            f"no videos ({', '.join(e[1:] for e in VIDEO_EXTENSIONS)}) or frame folders found "
            f"under {', '.join(sources)}")
    dupes = [k for k, v in Counter(c.clip_id for c in clips).items() if v > 1]
    if dupes:
        raise ConfigError(f"clip ids occur in more than one source: {dupes[:5]}")
    want = {"config_hash": settings_hash(cfg.ingest), "inputs": sources}
    prepare_out(out, "_ingest.json", want, cfg.ingest.overwrite,
                ("frames", "rejects", "summary.json"), storage_cfg, log, "ingest")
    done = tables.finished(storage.join(out, "frames"), storage_cfg)
    todo = [c for c in clips if c.clip_id not in done]
    if done:
        log(f"[ingest] resuming: {len(clips) - len(todo)} of {len(clips)} clips already done")
    ingested = _run_ray(todo, out, cfg, storage_cfg, log) if todo else 0
    if not todo:  # stage 4's tasks run on Ray all the same
        from bluref_ray.ray_utils import init_ray

        init_ray(cfg.ray)
    delete_leftovers(out, ("frames", "rejects"), storage_cfg)  # a killed task's
    summary = _summarize(out, storage_cfg, sources, len(clips), time.time() - t0)
    summary["this_run"] = {"clips": ingested, "skipped": len(clips) - len(todo)}
    storage.write_text(storage.join(out, "summary.json"), json.dumps(summary, indent=1),
                       storage_cfg)
    return summary


def _run_ray(todo: list[Clip], out: str, cfg: Config, storage_cfg: StorageConfig,
             log: Callable[[str], None]) -> int:
    """Stages 2-3 on Ray Data for the clips left to do; returns how many were done."""
    import ray

    from bluref_ray.ray_utils import init_ray, iter_rows

    init_ray(cfg.ray)
    per_task = max(1, cfg.ingest.clips_per_task)
    ds = ray.data.from_items([{"clip": c.to_json()} for c in todo],
                             override_num_blocks=max(1, min(len(todo) // per_task, 10_000)))
    ds = ds.map(functools.partial(_ingest_row, out=out, cfg=cfg.ingest, storage_cfg=storage_cfg),
                num_cpus=1)
    # One operator: reserving resources per operator only idles CPUs (measured: 8 one-second
    # tasks on 2 CPUs took 5.4-7.0 s with the reservation, 4.1 s without).
    ds.context.op_resource_reservation_enabled = False
    progress = Progress("ingest", len(todo), "clips", log)
    frames = 0
    for row in iter_rows(ds):
        frames += row["frames"]
        progress.update(f"{frames} frames, {frames / progress.seconds:.1f} frames/s",
                        f"{row['clip_id']}: {row['rejects']} rejects, first: "
                        f"{row['first_reject']}" if row["rejects"] else "")
    return progress.done


def _summarize(out: str, storage_cfg: StorageConfig, sources: list[str], n_clips: int,
               seconds: float) -> dict:
    """Stage 4: counts from every frames and rejects file, each file read by a task of its own
    where Ray runs (:func:`bluref_ray.tables.map_files`); the driver only adds them up."""
    frames_dir, rejects_dir = storage.join(out, "frames"), storage.join(out, "rejects")
    frames = tables.sum_dicts(tables.map_files(
        tables.listing(frames_dir, storage_cfg).files,
        functools.partial(_frames_stats, storage_cfg=storage_cfg)))
    rejects = tables.map_files(tables.listing(rejects_dir, storage_cfg).files,
                               functools.partial(_rejects_stats, storage_cfg=storage_cfg))
    files = sorted({u for r in rejects for u in r["files"]})
    blurry = frames.get("blurry", 0)
    return {
        "sources": sources, "out": out, "clips": n_clips,
        "clips_with_frames": frames.get("clips", 0),
        "frames": frames.get("frames", 0), "blurry": blurry, "sharp": frames.get("sharp", 0),
        "blurry_by_mild_pass": frames.get("blurry_mild", 0),
        "mean_references": frames.get("references", 0) / blurry if blurry else 0.0,
        "blurry_without_references": frames.get("blurry_without_references", 0),
        "protocols": {k.split(":", 1)[1]: v for k, v in sorted(frames.items())
                      if k.startswith("protocol:")},
        "rejects": sum(r["rows"] for r in rejects),
        "rejected_files": files[:MAX_LISTED],
        "rejected_file_count": sum(r["n_files"] for r in rejects),
        "frames_table": frames_dir, "rejects_table": rejects_dir,
        "seconds": round(seconds, 2),
    }


MAX_LISTED = 1000  #: rejected files named in the summary (the rejects table has them all)


def _frames_stats(uri: str, storage_cfg: StorageConfig) -> dict:
    """Counts of one frames file (a clip's, or a part of whole clips)."""
    t = schema.read_table(uri, schema.FRAMES, storage_cfg,
                          columns=["clip_id", "role", "references", "protocol",
                                   "label_reason"])
    blurry = t.filter(pc.equal(t["role"], "blurry"))
    mild = pc.match_substring(blurry["label_reason"], f"below {MILD_CUT}")
    n_refs = pc.list_value_length(blurry["references"]).to_numpy(zero_copy_only=False)
    clips = dict(zip(t.column("clip_id").to_pylist(), t.column("protocol").to_pylist()))
    out = {"frames": t.num_rows, "blurry": blurry.num_rows,
           "sharp": int(pc.sum(pc.equal(t["role"], "sharp")).as_py() or 0),
           "references": int(n_refs.sum()), "blurry_without_references": int((n_refs == 0).sum()),
           "blurry_mild": int(pc.sum(mild).as_py() or 0), "clips": len(clips)}
    for protocol, n in Counter(clips.values()).items():
        out[f"protocol:{protocol}"] = n
    return out


def _rejects_stats(uri: str, storage_cfg: StorageConfig) -> dict:
    t = schema.read_table(uri, schema.REJECTS, storage_cfg, columns=["source_uri"])
    files = sorted(set(t.column("source_uri").to_pylist()))
    return {"rows": t.num_rows, "files": files[:MAX_LISTED], "n_files": len(files)}
