"""Pseudo-GT (``bluref pseudo-gt``): frames table → pseudo-pair shards (BluRef).

:func:`run_pseudo_gt` is the list of stages; each is marked in the code with its resources:

1. **plan** (driver; each frames file counted by a task): the clips with blurry frames and the
   file that holds each (one per clip from ingest, or a part of many after ``bluref
   compact``), the settings hash, and the shards an earlier run finished (:func:`plan`).
2. **load windows** (Ray Data tasks, up to ¾ of a CPU each, one per clip, 1 → N):
   :func:`bluref_ray.data.windows.load_windows` cuts each clip's blurry frames into windows
   (``targets_per_shard``) and loads every frame a window needs once, a video decoded front to
   back a single time; each window travels as a typed :class:`~bluref_ray.data.windows.Window`
   beside its frame pool.
3. **match and fuse** (actor pool: ``concurrency`` actors, or from there up to
   ``max_concurrency``; 1 GPU each when the cluster has GPUs, CPUs otherwise, 1 → 1):
   :class:`PseudoGTActor` builds a :class:`~bluref_ray.pipeline.pairs.PairMaker` once and
   makes each window's pairs as uint8 pixels (:class:`~bluref_ray.pipeline.pairs.WindowPairs`).
4. **encode and write** (Ray Data tasks, ¼ of a CPU each, 1 → 1): :func:`write_task` encodes
   the PNGs, scores the pairs against ground truth where a frame has one, and writes
   ``OUT/rejects/<shard>.parquet`` if any, then ``OUT/shards/<shard>.parquet`` atomically; a
   finished shard is skipped by a resumed run. The actors' device never waits for this.
5. **summarize** (driver; each shard file summed by a task): ``OUT/summary.json`` with
   coverage and confidence histograms, rows written and rejected (with reasons), quality against
   ground truth when known, and timings.

Shard rows hold PNG bytes of the blurry frame, the pseudo-sharp image and the confidence
(``round(255·c)``), and deterministic row ids (clip, frame index, settings hash).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow.compute as pc

from bluref_ray import schema, storage, tables
from bluref_ray.config import Config, ConfigError, PseudoGTConfig, settings_hash
from bluref_ray.data.windows import load_windows
from bluref_ray.models import absolute_paths
from bluref_ray.pipeline.common import (
    WRITE_CPUS,
    Progress,
    actor_memory,
    actor_pool,
    actor_setup,
    await_pool,
    delete_leftovers,
    pool_size,
    pool_strategy,
    prepare_out,
)
from bluref_ray.pipeline.pairs import HIST_BINS, PairMaker, encode_pairs, write_window
from bluref_ray.storage import StorageConfig

#: memory reserved by each loading task (stage 2): its worker process with the libraries it
#: imports (about 0.45 GiB) and one window's frames at a time (16 blurry frames and their
#: references at 1280×720: about 0.2 GiB)
LOADER_MEMORY = 2**30


def actor_resources(pg: PseudoGTConfig, resources: dict) -> tuple[float, int, float]:
    """GPUs per actor, number of actors and CPUs per actor of stage 3 (see
    :func:`bluref_ray.pipeline.common.actor_pool`; one CPU stays with the loading tasks)."""
    return actor_pool("pseudo_gt", resources, pg.concurrency, pg.cpus_per_actor,
                      pg.gpus_per_actor, loaders=True, max_actors=pg.max_concurrency)


def frames_dir(uri: str, storage_cfg: StorageConfig) -> str:
    """Accept an ingest output folder (with ``frames/``) or the frames folder itself."""
    sub = storage.join(uri, "frames")
    return sub if storage.exists(sub, storage_cfg) else storage.normalize(uri)


@dataclasses.dataclass
class Plan:
    """Stage 1's result: what the run reads, and what an earlier run finished."""

    src: str  #: the frames table's folder
    clips: list[dict]  #: ``{"frames_file", "clip_id"}`` of each clip with blurry frames
    chash: str  #: the settings hash (in every row, and in the output folder's marker)
    done: frozenset[str]  #: shards already written
    windows: int  #: windows left to do
    protocols: dict[str, int]  #: clips per reference protocol


def plan(frames: str, out: str, pg: PseudoGTConfig, storage_cfg: StorageConfig,
         log: Callable[[str], None]) -> Plan:
    """Stage 1: check the inputs and checkpoints, prepare ``out`` (resuming), count the work
    (each frames file counted by a task of its own where Ray runs; the driver gets per-clip
    counts, never the table).

    Raises:
        storage.StorageNotFoundError: no frames table under ``frames``.
        ConfigError: a checkpoint is missing or not one, or ``out`` holds another run.
    """
    for uri in (frames, out):
        storage.check_reachable(uri, storage_cfg)
    src = frames_dir(frames, storage_cfg)
    files = tables.listing(src, storage_cfg).files
    if not files:
        raise storage.StorageNotFoundError(f"{src}: no frames table (Parquet files) found; "
                                           "run `bluref ingest` first")
    _check_checkpoints(pg, storage_cfg, log)
    chash = settings_hash(pg)
    # a shard is named by its clip and window: which frames a name covers depends on these two
    # (execution) settings, so a resume must keep them
    layout = {"targets_per_shard": pg.targets_per_shard, "limit": pg.limit}
    prepare_out(out, "_pseudo_gt.json", {"config_hash": chash, "inputs": [src], "shards": layout},
                pg.overwrite, ("shards", "rejects", "summary.json"), storage_cfg, log,
                "pseudo-gt")
    done = frozenset(tables.finished(storage.join(out, "shards"), storage_cfg))
    if done:
        log(f"[pseudo-gt] resuming: {len(done)} shards already done")
    clips, protocols, windows = [], Counter(), 0
    per_file = tables.map_files(files, functools.partial(_clip_counts, storage_cfg=storage_cfg))
    for f, counts in zip(files, per_file):
        for clip_id, (blurry, protocol) in sorted(counts.items()):
            protocols[protocol] += 1
            if blurry:
                clips.append({"frames_file": f, "clip_id": clip_id})
                windows += -(-min(blurry, pg.limit or blurry) // pg.targets_per_shard)
    return Plan(src, clips, chash, done, max(0, windows - len(done)), dict(protocols))


def _clip_counts(uri: str, storage_cfg: StorageConfig) -> dict[str, tuple[int, str]]:
    """``{clip_id: (blurry frames, protocol)}`` of one frames file."""
    t = schema.read_table(uri, schema.FRAMES, storage_cfg, columns=["clip_id", "role", "protocol"])
    out: dict[str, tuple[int, str]] = {}
    for c, r, p in zip(t.column("clip_id").to_pylist(), t.column("role").to_pylist(),
                       t.column("protocol").to_pylist()):
        n, _ = out.get(c, (0, p))
        out[c] = (n + (r == "blurry"), p)
    return out


def _check_checkpoints(pg: PseudoGTConfig, storage_cfg: StorageConfig,
                       log: Callable[[str], None]) -> None:
    """Fail on the driver, not in every actor, when a checkpoint is missing or not one."""
    if pg.matcher == "learned":
        from bluref_ray.matching.learned import read_matcher_checkpoint

        try:
            read_matcher_checkpoint(pg.matcher_checkpoint, storage_cfg)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"pseudo_gt.matcher_checkpoint: {e}") from None
    if pg.selector_uri():
        from bluref_ray.fusion import load_selector
        from bluref_ray.models import CheckpointError

        if pg.matcher != "learned":
            log(f"[pseudo-gt] warning: pseudo_gt.check_selector={pg.check_selector} reads the "
                "matcher's confidence; a selector learned with another matcher (the shipped one: "
                f"'learned') may not fit pseudo_gt.matcher={pg.matcher}")
        try:
            load_selector(pg.selector_uri(), storage_cfg)
        except (FileNotFoundError, ValueError, CheckpointError) as e:
            raise ConfigError(f"pseudo_gt.check_selector: {e}") from None
    if pg.deblurrer:
        from bluref_ray.models import load_image_model

        try:
            model = load_image_model(pg.deblurrer, storage_cfg)[0]
        except storage.StorageNotFoundError:
            raise ConfigError(f"pseudo_gt.deblurrer: checkpoint {pg.deblurrer} does not "
                              "exist") from None
        except ValueError as e:
            raise ConfigError(f"pseudo_gt.deblurrer: {e}") from None
        if getattr(model, "takes_reference", False):
            raise ConfigError(f"pseudo_gt.deblurrer: {pg.deblurrer} is a Ref-NAFNet, which reads "
                              "a reference frame; matching needs a deblurrer of the blurry frame "
                              "alone (a model.pt of bluref train or refine)")


def load_task(batch: dict[str, np.ndarray], pg: PseudoGTConfig, done: frozenset,
              storage_cfg: StorageConfig) -> Iterator[dict]:
    """Stage 2 (Ray task): read one clip's rows of its frames file, yield its windows one at a
    time (bounded memory): ``{"window": [Window], "pixels": [1, F, H, W, 3] uint8}``."""
    for uri, clip_id in zip(batch["frames_file"], batch["clip_id"]):
        frames = schema.read_table(str(uri), schema.FRAMES, storage_cfg,
                                   where=pc.field("clip_id") == str(clip_id))
        for window, pixels in load_windows(frames, pg.targets_per_shard, pg.max_refs, done,
                                           pg.limit, storage_cfg, pg.delta):
            yield {"window": [window], "pixels": pixels[None]}


class PseudoGTActor:
    """Stage 3 (Ray Data actor): builds its :class:`PairMaker` on the device Ray assigned,
    then makes the pairs of each window it gets, as pixels for stage 4."""

    def __init__(self, pg: PseudoGTConfig, chash: str, storage_cfg: StorageConfig) -> None:
        import ray

        self.actor = ray.get_runtime_context().get_actor_id() or ""
        device, _ = actor_setup()
        self.make = PairMaker(pg, chash, device, storage_cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"pairs": [], "started": [], "seconds": [], "actor": []}
        for window, pixels in zip(batch["window"], batch["pixels"]):
            out["started"].append(time.time())
            t0 = time.perf_counter()
            out["pairs"].append(self.make.make(window, np.asarray(pixels)))
            out["seconds"].append(time.perf_counter() - t0)
            out["actor"].append(self.actor)
        return out


def write_task(batch: dict[str, np.ndarray], pg: PseudoGTConfig, chash: str, out: str,
               storage_cfg: StorageConfig) -> dict[str, list]:
    """Stage 4 (Ray task): encode each window's pairs and write its shard (and rejects)."""
    res: dict[str, list] = {"shard": [], "rows": [], "rejects": [], "reason": [],
                            "started": [], "seconds": [], "write_seconds": [], "actor": []}
    for made, started, seconds, actor in zip(batch["pairs"], batch["started"], batch["seconds"],
                                             batch["actor"]):
        t0 = time.perf_counter()
        rows, rejects = encode_pairs(made, pg, chash, storage_cfg)
        write_window(out, made.window.name, rows, rejects, storage_cfg)
        res["shard"].append(made.window.name)
        res["rows"].append(len(rows))
        res["rejects"].append(len(rejects))
        res["reason"].append(rejects[0]["reason"] if rejects else "")
        res["started"].append(float(started))
        res["seconds"].append(float(seconds))
        res["write_seconds"].append(time.perf_counter() - t0)
        res["actor"].append(actor)
    return res


def run_pseudo_gt(frames: str, out: str, cfg: Config,
                  log: Callable[[str], None] = print) -> PseudoGTSummary:
    """Make pseudo-pairs for every blurry frame of a frames table, with Ray Data; resumable.

    Returns:
        The run summary (also written to ``OUT/summary.json``).

    Raises:
        NoPairsError: no blurry frame got a pair; the message says why.
    """
    import ray

    from bluref_ray.ray_utils import init_ray, iter_rows

    t0 = time.time()
    cfg = dataclasses.replace(cfg, pseudo_gt=absolute_paths(cfg.pseudo_gt))  # as actors need
    pg, storage_cfg = cfg.pseudo_gt, cfg.storage.resolved()
    out = storage.normalize(out)

    # Stage 1: plan (driver; Ray tasks count the frames files)
    init_ray(cfg.ray)
    p = plan(frames, out, pg, storage_cfg, log)
    resources = await_pool("pseudo_gt", cfg.ray, pg.concurrency, pg.cpus_per_actor,
                           pg.gpus_per_actor, log, loaders=True)
    gpus, concurrency, cpus_per_actor = actor_resources(pg, resources)
    loader_cpus = min(1.0, float(resources.get("CPU", 1)) / 2) - WRITE_CPUS  # + writing: 1
    # at most a quarter of the cluster's memory resource, so that a small one can schedule them
    loader_memory = min(LOADER_MEMORY, float(resources.get("memory", LOADER_MEMORY)) / 4)
    memory = actor_memory("pseudo_gt", pg.memory_per_actor, resources, concurrency)
    log(f"[pseudo-gt] {len(p.clips)} clips with blurry frames, {p.windows} windows to do, "
        f"from {p.src}; {describe(pg)}; {pool_size(concurrency, pg.max_concurrency)} actor(s) "
        f"with {gpus:g} GPU, {cpus_per_actor:g} CPU and {memory / 2**30:.1f} GiB each")
    ds = ray.data.from_items(p.clips, override_num_blocks=max(1, min(len(p.clips), 10_000)))
    # One window per block: a clip's windows spread over the actors instead of queueing, in one
    # block, for a single actor (Ray Data packs rows into blocks of up to 128 MiB otherwise).
    ds.context.target_max_block_size = 1

    # Stage 2: load windows (tasks, loader_cpus and loader_memory each; one clip → its
    # windows). Their memory request also keeps Ray Data from fusing them into the actors when
    # both ask for as many CPUs: a fused actor would decode while its device waits, and make
    # every window of a clip itself.
    ds = ds.map_batches(functools.partial(load_task, pg=pg, done=p.done,
                                          storage_cfg=storage_cfg),
                        batch_size=1, num_cpus=loader_cpus, memory=loader_memory)

    # Stage 3: match and fuse (actor pool; concurrency × (gpus GPU, cpus_per_actor CPU, memory))
    ds = ds.map_batches(PseudoGTActor, fn_constructor_kwargs={
        "pg": pg, "chash": p.chash, "storage_cfg": storage_cfg},
        batch_size=1, compute=pool_strategy(concurrency, pg.max_concurrency),
        num_cpus=cpus_per_actor, num_gpus=gpus, memory=memory)

    # Stage 4: encode and write (tasks, WRITE_CPUS each, beside the loading tasks; off the
    # actors' critical path)
    ds = ds.map_batches(functools.partial(write_task, pg=pg, chash=p.chash, out=out,
                                          storage_cfg=storage_cfg),
                        batch_size=1, num_cpus=WRITE_CPUS)
    progress = Progress("pseudo-gt", p.windows, "windows", log)
    rows = rejects = 0
    busy = writing = 0.0
    first = float("inf")
    actors: set[str] = set()
    for r in iter_rows(ds):
        rows, rejects = rows + r["rows"], rejects + r["rejects"]
        first = min(first, r["started"])
        busy, writing = busy + r["seconds"], writing + r["write_seconds"]
        actors.add(r["actor"])
        progress.update(f"{rows} pairs, {rejects} rejected",
                        f"{r['shard']}: {r['reason']}" if r["reason"] else "")

    # Stage 5: summarize (driver)
    delete_leftovers(out, ("shards", "rejects"), storage_cfg)  # a killed actor's
    summary = dataclasses.replace(
        summarize(out, storage_cfg), frames=p.src, out=out, config_hash=p.chash,
        settings=dataclasses.asdict(pg), seconds=round(time.time() - t0, 2),
        this_run=ThisRun(progress.done, len(p.done), rows, rejects, round(progress.seconds, 2),
                         len(actors), round(busy, 2), round(writing, 2),
                         round(max(0.0, first - t0), 2) if actors else None),
        protocols=p.protocols)
    storage.write_text(storage.join(out, "summary.json"), summary.to_json(), storage_cfg)
    if summary.rows == 0:
        raise NoPairsError(no_pairs_message(summary, pg))
    return summary


def describe(pg: PseudoGTConfig) -> str:
    """The method's settings in one line."""
    matcher = pg.matcher
    if matcher == "learned":
        r = f"R={pg.matcher_radius:g}" if pg.matcher_radius else "R of the checkpoint"
        by = "DIS in PyTorch" if pg.refiner == "torch" else "DIS"
        matcher += f" ({r}{f', refined by {by}' if pg.dis_refine else ''})"
    return (f"matcher={matcher} strategy={pg.strategy} N={pg.max_refs} "
            f"Δ={pg.delta or 'ingest'} τ={pg.tau} refiner={pg.refiner}")


class NoPairsError(ConfigError):
    """A pseudo-GT run made no pair at all; the message says why and what to change."""


def no_pairs_message(summary: PseudoGTSummary, pg: PseudoGTConfig) -> str:
    """One line: why no blurry frame got a pseudo-pair, and what to change."""
    reasons = summary.reject_reasons
    if not summary.rejected:
        return ("0 pairs: the frames table has no blurry frame; check the labels in the frames "
                "table (ingest.label_rule, ingest.threshold)")
    top = max(reasons, key=reasons.get) if reasons else "unknown"
    hint = ""
    if top.startswith("no sharp reference"):
        protocols = ", ".join(summary.protocols) or "camera"
        hint = (f"; under the {protocols} protocol no sharp frame lies within ±Δ of a blurry "
                "one: for a paired tree (every index in blur/ and sharp/) ingest with "
                "ingest.protocol=paper, or raise ingest.delta"
                + (" and pseudo_gt.delta" if pg.delta else ""))
    return (f"0 pairs from {summary.rejected} blurry frames, all rejected (most often: "
            f"{top}){hint}")


@dataclasses.dataclass
class Quality:
    """Pseudo-GT against the ground truth (frames that have one), over the confident pixels."""

    frames_with_gt: int
    psnr_pseudo: float  #: dB, the pseudo-sharp image
    psnr_blurry: float  #: dB, the blurry frame on the same pixels


@dataclasses.dataclass
class ThisRun:
    """What the last run did (a resumed run skips the shards done before)."""

    shards: int
    skipped: int
    rows: int
    rejects: int
    seconds: float
    actors: int = 0  #: actors that made windows (an elastic pool's grow as nodes join)
    busy_seconds: float = 0.0  #: time the actors spent making pairs, summed
    write_seconds: float = 0.0  #: time the writing tasks spent encoding and writing, summed
    #: from the run's start until an actor began its first window (planning, actors starting,
    #: the first window loaded): what a run pays once
    startup_seconds: float | None = None


@dataclasses.dataclass
class PseudoGTSummary:
    """A pseudo-GT output (``OUT/summary.json``): what its shards hold, and how it was made."""

    rows: int  #: pseudo-pairs in the shards
    rejected: int  #: blurry frames without one
    reject_reasons: dict[str, int]  #: the ten most common reasons and their counts
    mean_coverage: float  #: share of pixels at or above τ, per pair, averaged
    coverage_hist: list[int]  #: pairs per tenth of coverage
    confidence_hist: list[int]  #: pixels per tenth of confidence
    mean_refs_used: float  #: references that went into each pair, averaged
    quality: Quality | None = None
    frames: str = ""  #: the frames table read
    out: str = ""
    config_hash: str = ""
    settings: dict = dataclasses.field(default_factory=dict)
    this_run: ThisRun | None = None
    seconds: float = 0.0
    protocols: dict[str, int] = dataclasses.field(default_factory=dict)  #: clips per protocol

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> PseudoGTSummary:
        d = dict(d)
        d["quality"] = Quality(**d["quality"]) if d.get("quality") else None
        d["this_run"] = ThisRun(**d["this_run"]) if d.get("this_run") else None
        return cls(**d)

    @classmethod
    def read(cls, out: str, storage_cfg: StorageConfig | None = None) -> PseudoGTSummary:
        """The summary of the pseudo-GT output in ``out``."""
        return cls.from_dict(json.loads(storage.read_text(storage.join(out, "summary.json"),
                                                          storage_cfg)))


def summarize(out: str, storage_cfg: StorageConfig | None = None) -> PseudoGTSummary:
    """Coverage/confidence histograms, counts, reject reasons and quality, from the shards
    (each file summed by a task of its own where Ray runs; the driver adds the sums)."""
    shards = tables.map_files(tables.listing(storage.join(out, "shards"), storage_cfg).files,
                              functools.partial(_shard_stats, storage_cfg=storage_cfg))
    t = tables.sum_dicts(shards)
    rejects = tables.map_files(tables.listing(storage.join(out, "rejects"), storage_cfg).files,
                               functools.partial(_reject_stats, storage_cfg=storage_cfg))
    reasons = Counter(tables.sum_dicts(rejects))
    rows, n_q = t.get("rows", 0), t.get("quality_rows", 0)
    return PseudoGTSummary(
        rows=rows, rejected=sum(reasons.values()), reject_reasons=dict(reasons.most_common(10)),
        mean_coverage=t["coverage"] / rows if rows else 0.0,
        coverage_hist=t.get("coverage_hist", [0] * HIST_BINS),
        confidence_hist=t.get("confidence_hist", [0] * HIST_BINS),
        mean_refs_used=t["refs_used"] / rows if rows else 0.0,
        quality=Quality(n_q, t["psnr_pseudo"] / n_q, t["psnr_blurry"] / n_q) if n_q else None)


def _shard_stats(uri: str, storage_cfg: StorageConfig | None) -> dict:
    cols = ["coverage", "confidence_hist", "refs_used", "psnr_pseudo", "psnr_blurry"]
    t = schema.read_table(uri, schema.PSEUDO_PAIRS, storage_cfg, cols)
    cov = t.column("coverage").to_numpy(zero_copy_only=False).astype(np.float64)
    hist = np.zeros(HIST_BINS, np.int64)
    for h in t.column("confidence_hist").to_pylist():
        hist += np.asarray(h, np.int64)
    q = [(p, b) for p, b in zip(t.column("psnr_pseudo").to_pylist(),
                                t.column("psnr_blurry").to_pylist()) if p is not None]
    return {"rows": t.num_rows, "coverage": float(cov.sum()),
            "coverage_hist": np.histogram(cov, bins=HIST_BINS, range=(0, 1))[0].tolist(),
            "confidence_hist": hist.tolist(),
            "refs_used": int(t.column("refs_used").to_numpy().sum()) if t.num_rows else 0,
            "quality_rows": len(q), "psnr_pseudo": float(sum(p for p, _ in q)),
            "psnr_blurry": float(sum(b for _, b in q))}


def reason_kind(reason: str) -> str:
    """What a reject reason says, without the particulars: frame ids, paths and sizes (any
    word with a digit) as ``…``, up to the first colon, so that the frames rejected for one
    cause count together (``reference cam:000012 unusable: …`` → ``reference … unusable``)."""
    return re.sub(r"[^\s,;]*\d[^\s,;]*", "…", reason).split(": ")[0][:80]


def _reject_stats(uri: str, storage_cfg: StorageConfig | None) -> dict[str, int]:
    """Rejects of one file by the kind of their reason (:func:`reason_kind`)."""
    t = schema.read_table(uri, schema.PSEUDO_REJECTS, storage_cfg, ["reason"])
    return dict(Counter(reason_kind(r) for r in t.column("reason").to_pylist()))
