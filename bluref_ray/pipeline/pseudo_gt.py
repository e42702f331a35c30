"""Pseudo-GT (``bluref pseudo-gt``): frames table → pseudo-pair shards (BluRef).

Stages (each with its resources):

1. **plan** (driver): list the frames table's files (one per clip from ingest) and the shards an
   earlier run finished.
2. **load windows** (Ray Data ``map_batches``, 1 CPU per task, one task per frames file):
   :func:`bluref_ray.data.windows.load_windows` cuts each clip's blurry frames into windows
   (``targets_per_shard``) and loads every frame a window needs once, a video decoded front to
   back a single time.
3. **match and fuse** (actor pool, ``concurrency`` actors, 1 GPU each when the cluster has GPUs,
   CPUs otherwise): :func:`make_pairs` matches references to blurry frames in batches
   (``batch_size``) and fuses them (:mod:`bluref_ray.fusion`); the optional deblurrer checkpoint
   runs first and its output is matched instead of the blurry frame.
4. **write** (same actor): ``OUT/rejects/<shard>.parquet`` if any, then
   ``OUT/shards/<shard>.parquet`` atomically; a finished shard is skipped by a resumed run.
5. **summarize** (driver): ``OUT/summary.json`` with coverage and confidence histograms, rows
   written and rejected (with reasons), quality against ground truth when known, and timings.

Shard rows hold PNG bytes of the blurry frame, the pseudo-sharp image and the confidence
(``round(255·c)``), and deterministic row ids (clip, frame index, config hash).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import torch

from bluref_ray import schema, storage
from bluref_ray.config import Config, ConfigError, PseudoGTConfig, config_hash
from bluref_ray.data.images import decode_image, encode_png
from bluref_ray.data.windows import load_windows
from bluref_ray.fusion import Align, Check, Rematch, aligner, fuse, rematcher
from bluref_ray.matching import Matcher, build_matcher
from bluref_ray.pipeline.common import finished, prepare_out
from bluref_ray.storage import StorageConfig

HIST_BINS = 10


def settings_hash(cfg: PseudoGTConfig) -> str:
    """Hash of the settings that change the pseudo-pairs (not batching, concurrency, limits)."""
    return config_hash(dataclasses.replace(
        cfg, batch_size=1, targets_per_shard=1, concurrency=None, cpus_per_actor=1.0,
        gpus_per_actor=None, limit=None, overwrite=False))


def row_id(clip_id: str, frame_index: int, chash: str) -> str:
    return hashlib.sha1(f"{clip_id}:{frame_index}:{chash}".encode()).hexdigest()[:16]


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float | None:
    """PSNR (dB, 8-bit) of ``a`` against ``b`` over the pixels in ``mask``; None if it is empty.

    Shape:
        a, b ``[H, W, 3]`` uint8, mask ``[H, W]`` bool → scalar.
    """
    if not mask.any():
        return None
    err = (a.astype(np.float64) - b.astype(np.float64))[mask]
    mse = float(np.mean(err ** 2))
    return 99.0 if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def _to_tensor(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    if not pixels.flags.writeable:  # Ray hands out read-only views of the object store
        pixels = pixels.copy()
    return torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def _to_u8(t: torch.Tensor) -> np.ndarray:
    return (t.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def make_pairs(pixels: np.ndarray, meta: dict, align: Align, cfg: PseudoGTConfig, chash: str,
               device: torch.device, deblurrer: torch.nn.Module | None = None,
               storage_cfg: StorageConfig | None = None,
               rematch: Rematch | None = None) -> tuple[list[dict], list[dict]]:
    """Match and fuse one window: rows of :data:`schema.PSEUDO_PAIRS` and of the rejects.

    Args:
        pixels: the window's frame pool, ``[F, H, W, 3]`` uint8.
        meta: the window's targets and rejects (from :func:`load_windows`).
        align: matcher + warp (see :func:`bluref_ray.fusion.aligner`).
        cfg: strategy, τ, batch size, round, matcher name.
        chash: the settings hash recorded in each row.
        device: where the tensors go.
        deblurrer: if given, its output is matched instead of the blurry frame.
        storage_cfg: where the ground truth is read from (for the quality figures).
        rematch: the ``reblur`` strategy's second matching (default: :func:`build_rematch`).
    """
    rejects = [{"clip_id": meta["clip_id"], **r} for r in meta["rejects"]]
    targets = meta["targets"]
    rows: list[dict] = []
    if not targets:
        return rows, rejects
    pool = _to_tensor(pixels, device)
    for start in range(0, len(targets), cfg.batch_size):
        batch = targets[start:start + cfg.batch_size]
        n = max(len(t["refs"]) for t in batch)
        ref_idx = torch.tensor([t["refs"] + [0] * (n - len(t["refs"])) for t in batch],
                               device=device)
        available = torch.tensor([[k < len(t["refs"]) for k in range(n)] for t in batch],
                                 device=device)
        target = pool[[t["pool"] for t in batch]]
        match_input = target
        if deblurrer is not None:
            from bluref_ray.models.tiling import tiled_forward

            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                match_input = tiled_forward(deblurrer, target, tile=512, overlap=32)
        if cfg.strategy == "reblur" and rematch is None:
            rematch = build_rematch(cfg)
        check = Check(cfg.check_gain, cfg.check_noise) if cfg.check else None
        fused = fuse(cfg.strategy, match_input, pool[ref_idx], align, cfg.tau, available,
                     rematch, target, cfg.kernel_size, check)
        for i, t in enumerate(batch):
            rows.append(_row(t, meta["clip_id"], pixels[t["pool"]], _to_u8(fused.image[i]),
                             fused.confidence[i, 0], float(fused.coverage[i]),
                             int(fused.refs_used[i]), cfg, chash, storage_cfg))
    return rows, rejects


def _row(t: dict, clip_id: str, blurry: np.ndarray, pseudo: np.ndarray, conf: torch.Tensor,
         coverage: float, refs_used: int, cfg: PseudoGTConfig, chash: str,
         storage_cfg: StorageConfig | None) -> dict:
    conf_np = conf.float().cpu().numpy()
    conf_u8 = (np.clip(conf_np, 0, 1) * 255.0 + 0.5).astype(np.uint8)
    hist = np.histogram(conf_np, bins=HIST_BINS, range=(0.0, 1.0))[0]
    psnr_pseudo = psnr_blurry = None
    if t.get("gt_uri"):
        gt, _ = decode_image(storage.read_bytes(t["gt_uri"], storage_cfg), t["gt_uri"])
        if gt.shape == blurry.shape:
            mask = conf_np >= cfg.tau
            psnr_pseudo = masked_psnr(pseudo, gt, mask)
            psnr_blurry = masked_psnr(blurry, gt, mask)
    return {
        "row_id": row_id(clip_id, t["frame_index"], chash), "clip_id": clip_id,
        "frame_id": t["frame_id"], "frame_index": t["frame_index"], "round": cfg.round,
        "matcher": cfg.matcher, "strategy": cfg.strategy, "tau": cfg.tau, "config_hash": chash,
        "height": blurry.shape[0], "width": blurry.shape[1],
        "blurry_png": encode_png(blurry), "pseudo_png": encode_png(pseudo),
        "confidence_png": encode_png(conf_u8), "coverage": coverage,
        "confidence_hist": hist.tolist(), "refs_used": refs_used,
        "reference_ids": t["ref_ids"], "source_uri": t["source_uri"], "gt_uri": t.get("gt_uri"),
        "psnr_pseudo": psnr_pseudo, "psnr_blurry": psnr_blurry,
    }


def build_align(cfg: PseudoGTConfig, device: torch.device,
                storage_cfg: StorageConfig | None = None) -> Align:
    """The configured matcher, on ``device``, wrapped to align references."""
    return aligner(matcher_from_config(cfg, cfg.matcher, storage_cfg).to(device))


def build_rematch(cfg: PseudoGTConfig) -> Rematch:
    """The ``reblur`` strategy's second matching: DIS on equally blurred images (no extra blur
    of the reference, which is the point), warping the sharp reference."""
    return rematcher(build_matcher("dis", preset=cfg.dis_preset, ref_blur=0.0))


def matcher_from_config(cfg: PseudoGTConfig, name: str,
                        storage_cfg: StorageConfig | None = None) -> Matcher:
    """Matcher ``name`` ('learned' or 'dis') with the settings of ``cfg``."""
    dis = build_matcher("dis", preset=cfg.dis_preset, ref_blur=cfg.dis_ref_blur)
    if name == "dis":
        return dis
    return build_matcher("learned", checkpoint=cfg.matcher_checkpoint,
                         radius_px=cfg.matcher_radius, storage_cfg=storage_cfg,
                         refine=dis if cfg.dis_refine else None)


def shard_uri(out: str, name: str) -> str:
    return storage.join(out, "shards", f"{name}.parquet")


def write_window(out: str, shard: str, rows: list[dict], rejects: list[dict],
                 storage_cfg: StorageConfig | None) -> None:
    """Rejects first, then the shard: the shard's presence marks the window done."""
    if rejects:
        schema.write_table(pa.Table.from_pylist(rejects, schema=schema.PSEUDO_REJECTS),
                           storage.join(out, "rejects", f"{shard}.parquet"), storage_cfg)
    schema.write_table(pa.Table.from_pylist(rows, schema=schema.PSEUDO_PAIRS),
                       shard_uri(out, shard), storage_cfg)


class PseudoGTWorker:
    """Ray Data actor: matches and fuses windows, writes their shards.

    The constructor is cheap; the matcher (and deblurrer) load on the worker at the first
    batch, on the GPU Ray assigned, else the CPU.
    """

    def __init__(self, cfg: PseudoGTConfig, out: str, storage_cfg: StorageConfig,
                 chash: str) -> None:
        self.cfg, self.out, self.storage_cfg, self.chash = cfg, out, storage_cfg, chash
        self.align: Align | None = None
        self.rematch: Rematch | None = None
        self.deblurrer = None

    def _setup(self) -> None:
        import cv2
        import ray

        gpus = ray.get_gpu_ids()
        self.device = torch.device("cuda" if gpus and torch.cuda.is_available() else "cpu")
        cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        torch.set_num_threads(cpus)
        cv2.setNumThreads(cpus)
        self.align = build_align(self.cfg, self.device, self.storage_cfg)
        if self.cfg.strategy == "reblur":
            self.rematch = build_rematch(self.cfg)
        if self.cfg.deblurrer:
            from bluref_ray.models import load_checkpoint

            model, _ = load_checkpoint(self.cfg.deblurrer, self.storage_cfg,
                                       map_location=self.device)
            self.deblurrer = model.to(self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        if self.align is None:
            self._setup()
        out: dict[str, list] = {"shard": [], "rows": [], "rejects": [], "reasons": [],
                                "coverage": [], "seconds": []}
        for shard, pixels, meta_json in zip(batch["shard"], batch["pixels"], batch["meta"]):
            t0 = time.perf_counter()
            meta = json.loads(meta_json)
            rows, rejects = make_pairs(np.asarray(pixels), meta, self.align, self.cfg,
                                       self.chash, self.device, self.deblurrer,
                                       self.storage_cfg, self.rematch)
            write_window(self.out, str(shard), rows, rejects, self.storage_cfg)
            out["shard"].append(str(shard))
            out["rows"].append(len(rows))
            out["rejects"].append(len(rejects))
            out["reasons"].append(json.dumps([r["reason"] for r in rejects][:3]))
            out["coverage"].append(float(np.mean([r["coverage"] for r in rows])) if rows
                                   else float("nan"))
            out["seconds"].append(time.perf_counter() - t0)
        return out


def _load_task(batch: dict[str, np.ndarray], cfg: PseudoGTConfig, done: frozenset,
               storage_cfg: StorageConfig):
    """Ray task: read one frames file, yield its windows one at a time (bounded memory)."""
    for uri in batch["frames_file"]:
        frames = schema.read_table(str(uri), schema.FRAMES, storage_cfg)
        for w in load_windows(frames, cfg.targets_per_shard, cfg.max_refs, done, cfg.limit,
                              storage_cfg, cfg.delta):
            yield {"shard": [w["shard"]], "pixels": w["pixels"][None], "meta": [w["meta"]]}


def actor_resources(pg: PseudoGTConfig, resources: dict) -> tuple[float, int, float]:
    """GPUs per actor, number of actors and CPUs per actor for the cluster's resources.

    Default: one actor per GPU (``concurrency`` actors on fewer GPUs share them, a fraction
    each); without GPUs, as many actors as fit while leaving one CPU for
    the tasks that load frames (they would starve otherwise, and the pipeline would stall). On a
    cluster of fewer than two CPUs, one actor gets half of them.

    Raises:
        ConfigError: the requested actors leave no CPU for loading frames.
    """
    n_gpus = int(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    gpus = pg.gpus_per_actor if pg.gpus_per_actor is not None else (1.0 if n_gpus else 0.0)
    per_actor = pg.cpus_per_actor
    if pg.concurrency:
        concurrency = pg.concurrency
        if pg.gpus_per_actor is None and n_gpus:  # more actors than GPUs: they share them
            gpus = 1.0 / math.ceil(concurrency / n_gpus)  # a share that packs onto whole GPUs
    elif gpus:
        concurrency = max(1, int(n_gpus / gpus))
    elif cpus - 1 < per_actor:
        concurrency, per_actor = 1, cpus / 2
    else:
        concurrency = max(1, int((cpus - 1) // per_actor))
    loader = min(1.0, cpus / 2)
    if concurrency * per_actor > cpus - loader:
        raise ConfigError(
            f"pseudo_gt: {concurrency} actors × {per_actor:g} CPU leave no CPU for "
            f"loading frames on a cluster of {cpus:g} CPUs; lower --concurrency or "
            "--cpus-per-actor")
    return gpus, concurrency, per_actor


def frames_dir(uri: str, storage_cfg: StorageConfig) -> str:
    """Accept an ingest output folder (with ``frames/``) or the frames folder itself."""
    sub = storage.join(uri, "frames")
    return sub if storage.exists(sub, storage_cfg) else storage.normalize(uri)


def run_pseudo_gt(frames: str, out: str, cfg: Config, log: Callable[[str], None] = print) -> dict:
    """Make pseudo-pairs for every blurry frame of a frames table, with Ray Data; resumable.

    Returns:
        The run summary (also written to ``OUT/summary.json``).
    """
    import ray

    from bluref_ray.ray_utils import init_ray

    t0 = time.time()
    pg = cfg.pseudo_gt
    storage_cfg = cfg.storage.resolved()
    out = storage.normalize(out)
    for uri in (frames, out):
        storage.check_reachable(uri, storage_cfg)
    src = frames_dir(frames, storage_cfg)
    files = [f for f in storage.list_files(src, storage_cfg) if f.endswith(".parquet")]
    if not files:
        raise storage.StorageNotFoundError(f"{src}: no frames table (Parquet files) found; "
                                           "run `bluref ingest` first")
    if pg.matcher == "learned":  # fail here, not in every actor
        from bluref_ray.matching.learned import read_matcher_checkpoint

        try:
            read_matcher_checkpoint(pg.matcher_checkpoint, storage_cfg)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"pseudo_gt.matcher_checkpoint: {e}") from None
    if pg.deblurrer:
        from bluref_ray.models import load_checkpoint

        try:
            load_checkpoint(pg.deblurrer, storage_cfg)
        except storage.StorageNotFoundError:
            raise ConfigError(f"pseudo_gt.deblurrer: checkpoint {pg.deblurrer} does not "
                              "exist") from None
        except ValueError as e:
            raise ConfigError(f"pseudo_gt.deblurrer: {e}") from None
    chash = settings_hash(pg)
    prepare_out(out, "_pseudo_gt.json", {"config_hash": chash, "inputs": [src]}, pg.overwrite,
                ("shards", "rejects", "summary.json"), storage_cfg, log, "pseudo-gt")
    done = frozenset(finished(storage.join(out, "shards"), storage_cfg))
    if done:
        log(f"[pseudo-gt] resuming: {len(done)} shards already done")
    init_ray(cfg.ray)
    gpus, concurrency, cpus_per_actor = actor_resources(pg, ray.cluster_resources())
    loader_cpus = min(1.0, float(ray.cluster_resources().get("CPU", 1)) / 2)
    matcher = pg.matcher
    if matcher == "learned":
        r = f"R={pg.matcher_radius:g}" if pg.matcher_radius else "R of the checkpoint"
        matcher += f" ({r}{', refined by DIS' if pg.dis_refine else ''})"
    log(f"[pseudo-gt] {len(files)} clips from {src}; matcher={matcher} "
        f"strategy={pg.strategy} N={pg.max_refs} Δ={pg.delta or 'ingest'} τ={pg.tau}; "
        f"{concurrency} actor(s) with {gpus:g} GPU and {cpus_per_actor:g} CPU each")
    ds = ray.data.from_items([{"frames_file": f} for f in files],
                             override_num_blocks=max(1, min(len(files), 10_000)))
    ds = ds.map_batches(functools.partial(_load_task, cfg=pg, done=done, storage_cfg=storage_cfg),
                        batch_size=1, num_cpus=loader_cpus)
    ds = ds.map_batches(PseudoGTWorker, fn_constructor_kwargs={
        "cfg": pg, "out": out, "storage_cfg": storage_cfg, "chash": chash},
        batch_size=1, compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=cpus_per_actor, num_gpus=gpus)
    n_rows = n_rej = n_shards = 0
    t_run = time.time()
    for r in ds.iter_rows():
        n_shards += 1
        n_rows += r["rows"]
        n_rej += r["rejects"]
        note = f"  ! {json.loads(r['reasons'])[0]}" if r["rejects"] else ""
        log(f"[pseudo-gt] shard {r['shard']}: {r['rows']} pairs, coverage "
            f"{r['coverage']:.2f}, {r['rejects']} rejects; {n_rows / (time.time() - t_run):.2f} "
            f"frames/s{note}")
    summary = summarize(out, storage_cfg)
    summary.update(frames=src, out=out, config_hash=chash, settings=dataclasses.asdict(pg),
                   this_run={"shards": n_shards, "rows": n_rows, "rejects": n_rej,
                             "seconds": round(time.time() - t_run, 2)},
                   seconds=round(time.time() - t0, 2))
    table = schema.read_table(src, schema.FRAMES, storage_cfg, columns=["clip_id", "protocol"])
    summary["protocols"] = dict(Counter(p for _, p in set(zip(
        table.column("clip_id").to_pylist(), table.column("protocol").to_pylist()))))
    storage.write_text(storage.join(out, "summary.json"), json.dumps(summary, indent=1),
                       storage_cfg)
    if summary["rows"] == 0:
        raise NoPairsError(no_pairs_message(summary, pg))
    return summary


class NoPairsError(ConfigError):
    """A pseudo-GT run made no pair at all; the message says why and what to change."""


def no_pairs_message(summary: dict, pg: PseudoGTConfig) -> str:
    """One line: why no blurry frame got a pseudo-pair, and what to change."""
    reasons = summary["reject_reasons"]
    if not summary["rejected"]:
        return ("0 pairs: the frames table has no blurry frame; check the labels in the frames "
                "table (ingest.label_rule, ingest.threshold)")
    top = max(reasons, key=reasons.get) if reasons else "unknown"
    hint = ""
    if top.startswith("no sharp reference"):
        protocols = ", ".join(summary.get("protocols", {})) or "camera"
        hint = (f"; under the {protocols} protocol no sharp frame lies within ±Δ of a blurry "
                "one: for a paired tree (every index in blur/ and sharp/) ingest with "
                "ingest.protocol=paper, or raise ingest.delta"
                + (" and pseudo_gt.delta" if pg.delta else ""))
    return (f"0 pairs from {summary['rejected']} blurry frames, all rejected (most often: "
            f"{top}){hint}")


def summarize(out: str, storage_cfg: StorageConfig | None = None) -> dict:
    """Coverage/confidence histograms, counts, reject reasons and quality, from the shards."""
    cols = ["coverage", "confidence_hist", "refs_used", "psnr_pseudo", "psnr_blurry"]
    t = schema.read_table(storage.join(out, "shards"), schema.PSEUDO_PAIRS, storage_cfg, cols)
    rej = schema.read_table(storage.join(out, "rejects"), schema.PSEUDO_REJECTS, storage_cfg)
    cov = t.column("coverage").to_numpy(zero_copy_only=False).astype(np.float64)
    hist = np.zeros(HIST_BINS, np.int64)
    for h in t.column("confidence_hist").to_pylist():
        hist += np.asarray(h, np.int64)
    reasons = Counter(r.split(":")[0][:80] for r in rej.column("reason").to_pylist())
    q = [(p, b) for p, b in zip(t.column("psnr_pseudo").to_pylist(),
                                t.column("psnr_blurry").to_pylist()) if p is not None]
    summary = {
        "rows": t.num_rows, "rejected": rej.num_rows,
        "reject_reasons": dict(reasons.most_common(10)),
        "mean_coverage": float(cov.mean()) if len(cov) else 0.0,
        "coverage_hist": np.histogram(cov, bins=HIST_BINS, range=(0, 1))[0].tolist(),
        "confidence_hist": hist.tolist(),
        "mean_refs_used": float(np.mean(t.column("refs_used").to_numpy())) if t.num_rows else 0.0,
    }
    if q:
        summary["quality"] = {"frames_with_gt": len(q),
                              "psnr_pseudo_confident": float(np.mean([p for p, _ in q])),
                              "psnr_blurry_confident": float(np.mean([b for _, b in q]))}
    return summary


def quality_table(frames: str, out: str, cfg: Config, strategies: list[str], refs: list[int],
                  log: Callable[[str], None] = print, matchers: list[str] | None = None,
                  taus: list[float] | None = None) -> list[dict]:
    """Run pseudo-GT for each matcher × strategy × N × τ into
    ``OUT/<matcher>-<strategy>-n<N>[-t<τ>]`` and tabulate quality.

    Needs ground truth (``gt_uri`` in the frames table: synthesized or GoPro-style trees).
    Writes ``OUT/quality.json`` and ``OUT/quality.md``. Several τ trace each matcher's
    PSNR-coverage curve: matchers' confidences differ in scale, so they are compared at equal
    coverage (:func:`at_equal_coverage`), not at equal τ.

    Returns:
        One dict per run: matcher, strategy, N, τ, frames with GT, pseudo-GT PSNR and blurry PSNR
        in the confident region, coverage, references matched, seconds.
    """
    taus = taus or [cfg.pseudo_gt.tau]
    results = []
    for matcher in matchers or [cfg.pseudo_gt.matcher]:
        for strategy in strategies:
            for n in refs:
                for tau in taus:
                    results.append(_quality_run(frames, out, cfg, matcher, strategy, n, tau,
                                                len(taus) > 1, log))
    storage.write_text(storage.join(out, "quality.json"), json.dumps(results, indent=1),
                       cfg.storage)
    storage.write_text(storage.join(out, "quality.md"), quality_markdown(results, cfg.pseudo_gt),
                       cfg.storage)
    return results


def _quality_run(frames: str, out: str, cfg: Config, matcher: str, strategy: str, n: int,
                 tau: float, tau_in_name: bool, log: Callable[[str], None]) -> dict:
    pg = dataclasses.replace(cfg.pseudo_gt, matcher=matcher, strategy=strategy, max_refs=n,
                             tau=tau)
    pg.validate()
    sub = storage.join(out, f"{matcher}-{strategy}-n{n}" + (f"-t{tau:g}" if tau_in_name else ""))
    log(f"[quality] {matcher}, {strategy}, N={n}, τ={tau:g} → {sub}")
    s = run_pseudo_gt(frames, sub, dataclasses.replace(cfg, pseudo_gt=pg), log=log)
    q = s.get("quality", {})
    return {"matcher": matcher, "strategy": strategy, "N": n, "tau": tau, "frames": s["rows"],
            "frames_with_gt": q.get("frames_with_gt", 0),
            "psnr_pseudo": q.get("psnr_pseudo_confident"),
            "psnr_blurry": q.get("psnr_blurry_confident"),
            "coverage": s["mean_coverage"], "refs_used": s["mean_refs_used"],
            "seconds": s["this_run"]["seconds"]}


def at_equal_coverage(results: list[dict], baseline: str, tau: float) -> list[dict]:
    """Each other matcher against ``baseline`` at ``baseline``'s coverage at ``tau``.

    For each strategy and N: the baseline's run at ``tau``, and the other matcher's run with the
    highest pseudo-GT PSNR among those covering at least as many pixels (any τ).

    Returns:
        One dict per comparison: matcher, strategy, N, ``baseline`` and ``best`` (rows of
        ``results``; ``best`` is None where no run of the matcher covers as much) and ``gain_db``.
    """
    out = []
    others = sorted({r["matcher"] for r in results} - {baseline})
    for b in results:
        if b["matcher"] != baseline or b["tau"] != tau or b["psnr_pseudo"] is None:
            continue
        for m in others:
            cands = [r for r in results if r["matcher"] == m and r["strategy"] == b["strategy"]
                     and r["N"] == b["N"] and r["psnr_pseudo"] is not None
                     and r["coverage"] >= b["coverage"]]
            best = max(cands, key=lambda r: r["psnr_pseudo"], default=None)
            gain = None if best is None else best["psnr_pseudo"] - b["psnr_pseudo"]
            out.append({"matcher": m, "strategy": b["strategy"], "N": b["N"], "baseline": b,
                        "best": best, "gain_db": gain})
    return out


def quality_markdown(results: list[dict], pg: PseudoGTConfig) -> str:
    """The quality table as Markdown; with DIS among several matchers, also the comparison at
    DIS's coverage at ``pg.tau`` (:func:`at_equal_coverage`)."""
    def num(x: float | None, fmt: str) -> str:
        return "–" if x is None else format(x, fmt)

    lines = ["Pseudo-GT quality: PSNR (dB) against the ground truth over the pixels with "
             "confidence ≥ τ, for the pseudo-sharp image and for the blurry frame itself (the "
             "same pixels), and coverage (share of pixels with confidence ≥ τ).", "",
             "| matcher | strategy | N | τ | frames | pseudo-GT PSNR | blurry PSNR | gain | "
             "coverage | refs matched |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        gain = (r["psnr_pseudo"] - r["psnr_blurry"]) if r["psnr_pseudo"] is not None else None
        lines.append(f"| {r['matcher']} | {r['strategy']} | {r['N']} | {r['tau']:g} | "
                     f"{r['frames']} | {num(r['psnr_pseudo'], '.2f')} | "
                     f"{num(r['psnr_blurry'], '.2f')} | {num(gain, '+.2f')} | "
                     f"{r['coverage']:.3f} | {r['refs_used']:.2f} |")
    if len({r["matcher"] for r in results}) > 1 and any(r["matcher"] == "dis" for r in results):
        lines += ["", f"At equal coverage: each matcher's best run covering at least as many "
                  f"pixels as DIS at τ = {pg.tau:g}.", ""]
        for c in at_equal_coverage(results, "dis", pg.tau):
            b, best = c["baseline"], c["best"]
            head = f"- {c['matcher']}, {c['strategy']}, N = {c['N']}: "
            if best is None:
                lines.append(head + f"no run covers DIS's {b['coverage']:.3f}")
                continue
            lines.append(head + f"{best['psnr_pseudo']:.2f} dB over {best['coverage']:.3f} "
                         f"(τ = {best['tau']:g}) against DIS's {b['psnr_pseudo']:.2f} dB over "
                         f"{b['coverage']:.3f}: {c['gain_db']:+.2f} dB")
    return "\n".join(lines) + "\n"
