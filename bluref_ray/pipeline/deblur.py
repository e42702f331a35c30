"""Batch deblurring (``bluref deblur``): images and videos → deblurred copies, with Ray Data.

Stages (each with its resources):

1. **plan** (driver, metadata only): each input is an image file, a video file, or a folder /
   bucket prefix listed recursively (images: png, jpg, jpeg, bmp, tif, tiff, webp; videos: mp4, avi,
   mov, mkv, webm, m4v). A file below a folder input goes to ``OUT/<path below the folder>``, a
   file input to ``OUT/<its name>``; images become PNG (same stem), videos keep their container
   (mp4, mkv, mov, avi; others become mp4). Outputs that exist already are skipped unless
   ``deblur.overwrite``, so a stopped run, started again, does only what is left; files under
   ``OUT`` itself are never inputs.
2. **deblur** (actor pool, ``concurrency`` actors, 1 GPU each when the cluster has GPUs, else
   ``cpus_per_actor`` CPUs): :class:`DeblurWorker` loads the checkpoint once per actor, in its
   constructor, and runs it tile by tile (:func:`bluref_ray.models.tiling.tiled_forward`, so
   memory is bounded by ``deblur.tile``) in bfloat16 autocast on CUDA, float32 on the CPU.
   Videos are streamed: decoded, deblurred and encoded a few frames at a time. A model that
   reads a reference (Ref-NAFNet) gets ``deblur.reference``: a given image, or (``auto``) the
   sharpest frame within ±``reference_delta`` by the frequency sharpness score: a video is
   decoded twice, once to score its frames and once to deblur them (holding at most Δ frames
   back until their reference has been decoded); the images of a folder, in name order, are
   scored on the driver. Such a model runs on whole frames (no tiles).
3. **write** (same actor): an image's PNG atomically; a video is encoded to a local temporary
   file at the source frame rate (audio is not kept) and uploaded whole once it is complete.
   A bad file (unreadable, empty, corrupt, breaking mid-way) becomes a failed entry that names
   the file and the reason, leaves no output behind and does not stop the other files. What a
   killed run or actor leaves (hidden ``.NAME.XXXXXXXX.tmp`` files under ``OUT``, local encoding
   folders) is deleted by the next run, and by a run's end.
4. **summarize** (driver): ``OUT/deblur_summary.json`` with files done, skipped and failed (with
   the errors), frames, seconds and frames per second; a progress line every few seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from bluref_ray import storage
from bluref_ray.config import Config, DeblurConfig
from bluref_ray.data.images import ImageError, decode_image, encode_png, to_float, to_uint8
from bluref_ray.data.sources import IMAGE_EXTENSIONS
from bluref_ray.data.video import VIDEO_EXTENSIONS, VideoError, VideoWriter, decode_frames
from bluref_ray.models.tiling import tiled_forward
from bluref_ray.pipeline.common import (
    Progress,
    actor_memory,
    actor_pool,
    actor_setup,
    await_pool,
    pool_size,
    pool_strategy,
)
from bluref_ray.storage import StorageConfig, StorageError, StorageUnreachableError

#: Containers an output video keeps; other video inputs are written as mp4.
VIDEO_OUT_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi")
#: Video frames deblurred per model call (tiles of one frame are batched by tiled_forward).
FRAMES_PER_BATCH = 4
#: memory each deblurring actor asks Ray for by default (GiB): its process with PyTorch and the
#: model, and a few frames in tiles of 512 px (peak 1.4 GiB for nafnet-tiny, 2.3 for
#: nafnet-width32, 3.8 for nafnet-width64, on a 720p or 1080p image on a CPU)
DEBLUR_MEMORY_GIB = 3.0
SUMMARY = "deblur_summary.json"
#: Local folders of videos being encoded: ``<tmp>/bluref-deblur-<pid>-XXXX`` (see
#: :func:`delete_stale_encodes`).
TMP_PREFIX = "bluref-deblur-"


def delete_stale_encodes() -> int:
    """Delete the local encoding folders of deblur processes that no longer run (a killed
    actor's); those of live processes are kept. Returns how many were deleted."""
    import shutil

    gone = 0
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        m = re.fullmatch(re.escape(TMP_PREFIX) + r"(\d+)-\w+", name)
        if m is None or _alive(int(m.group(1))):
            continue
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        gone += 1
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _split_ext(name: str) -> tuple[str, str]:
    """``("dir/clip", ".mp4")`` for ``"dir/clip.MP4"``: the extension in lower case."""
    base = name.rsplit("/", 1)[-1]
    if "." not in base.lstrip("."):
        return name, ""
    cut = len(name) - len(base) + base.rindex(".")
    return name[:cut], name[cut:].lower()


def file_kind(uri: str) -> str | None:
    """``"image"``, ``"video"`` or None (not deblurred), from the file's extension."""
    ext = _split_ext(uri)[1]
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return None


def output_name(rel: str, kind: str) -> str:
    """The output's path below ``OUT``: images become ``.png``, videos keep mp4/mkv/mov/avi."""
    stem, ext = _split_ext(rel)
    if kind == "image":
        return stem + ".png"
    return stem + (ext if ext in VIDEO_OUT_EXTENSIONS else ".mp4")


def plan(inputs: list[str], out: str,
         storage_cfg: StorageConfig | None = None) -> list[dict[str, str]]:
    """The files to deblur and where each goes, sorted by output.

    Two inputs that would land on one output (``a.png`` and ``a.jpg`` in one folder) keep
    their source extension in the name instead: ``a_png.png``, ``a_jpg.png``.

    Returns:
        One ``{"src", "dst", "name", "kind"}`` per file; ``name`` is ``dst`` below ``out``.

    Raises:
        storage.StorageNotFoundError: an input does not exist (the message names it).
        storage.StorageError: an input's storage cannot be reached.
        ValueError: the inputs hold no image or video.
    """
    out = storage.normalize(out)
    found: list[tuple[str, str, str]] = []  # (src, path below out, kind)
    inside = 0  # files under out: never inputs (a run's own outputs)
    for given in inputs:
        uri = storage.normalize(given)
        storage.check_reachable(uri, storage_cfg)
        if not storage.exists(uri, storage_cfg):
            raise storage.StorageNotFoundError(f"deblur input {given}: not found")
        if storage.is_file(uri, storage_cfg):
            files, root = [uri], storage.parent(uri)
        else:
            files, root = storage.list_files(uri, storage_cfg), uri
        for f in files:
            kind = file_kind(f)
            if kind and (f == out or f.startswith(out.rstrip("/") + "/")):
                inside += 1
            elif kind:
                found.append((f, storage.relative(f, root), kind))
    if not found and inside:
        raise ValueError(f"the inputs {', '.join(inputs)} lie under --out {out}, whose files are "
                         "never inputs (they are this command's outputs); choose an --out "
                         "outside them")
    if not found:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) or videos "
                         f"({', '.join(VIDEO_EXTENSIONS)}) found in {', '.join(inputs)}")
    by_name: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for src, rel, kind in dict.fromkeys(found):  # the same file named twice counts once
        by_name[output_name(rel, kind)].append((src, rel, kind))
    rows = []
    for name, group in by_name.items():
        for src, rel, kind in group:
            if len(group) > 1:  # a.png and a.jpg (or a.PNG): a_png.png, a_jpg.png, a_PNG.png
                stem, ext = _split_ext(rel)
                name = output_name(f"{stem}_{rel[len(stem) + 1:]}{ext}", kind)
            rows.append({"src": src, "dst": storage.join(out, name), "name": name, "kind": kind})
    names = [r["name"] for r in rows]
    if len(set(names)) != len(names):  # same relative path under two input folders
        clash = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"deblur inputs {', '.join(inputs)} map several files to the same "
                         f"output(s) {', '.join(clash[:5])}; deblur them into separate --out "
                         "folders")
    return sorted(rows, key=lambda r: r["name"])


def deblur_frames(model: torch.nn.Module, frames: np.ndarray, cfg: DeblurConfig,
                  device: torch.device, references: np.ndarray | None = None) -> np.ndarray:
    """Deblur a batch of RGB frames (tiled, or whole with their references for a model that
    reads one; bfloat16 autocast on CUDA).

    Shape:
        ``[N, H, W, 3]`` uint8 (and references ``[N, H', W', 3]``) → ``[N, H, W, 3]`` uint8.
    """
    x = to_float(frames, device)
    with torch.inference_mode(), \
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        if references is not None:  # whole frames: no activations kept for a backward
            y = model(x, to_float(references, device))
        else:
            y = tiled_forward(model, x, cfg.tile, cfg.tile_overlap)
    return to_uint8(y)


def deblur_image(model: torch.nn.Module, src: str, dst: str, cfg: DeblurConfig,
                 device: torch.device, storage_cfg: StorageConfig | None = None,
                 reference: str = "") -> int:
    """Deblur one image file into a PNG at ``dst`` (written atomically). Returns 1 (frames).

    Args:
        reference: the reference image's URI, for a model that reads one ("": none).

    Raises:
        ImageError: ``src`` (or ``reference``) is empty or not a readable image.
        storage.StorageError: ``src`` or ``dst`` cannot be read or written.
    """
    rgb, _ = decode_image(storage.read_bytes(src, storage_cfg), src)
    ref = decode_image(storage.read_bytes(reference, storage_cfg), reference)[0][None] \
        if reference else None
    storage.write_bytes(dst, encode_png(deblur_frames(model, rgb[None], cfg, device, ref)[0]),
                        storage_cfg)
    return 1


def sharpest_nearby(scores: list[float], delta: int) -> list[int]:
    """For each frame, the index of the sharpest other frame within ±``delta`` (itself when
    there is none)."""
    from bluref_ray.data.triplets import Candidate, choose

    cands = [Candidate(i, "", s) for i, s in enumerate(scores)]
    out = []
    for t in range(len(scores)):
        near = [c for c in cands[max(0, t - delta):t + delta + 1] if c.score >= 0]
        ref = choose(near, t, delta, "sharpest")  # a score of -1: unreadable, never a reference
        out.append(ref.index if ref else t)
    return out


def _score(rgb: np.ndarray) -> float:
    from bluref_ray.data.sharpness import fft_score, to_gray

    return fft_score(to_gray(rgb, 0))


def _score_file(uri: str, storage_cfg: StorageConfig) -> float:
    """An image file's sharpness; -1 (never a reference) when it cannot be read (its own
    deblurring then reports why)."""
    try:
        return _score(decode_image(storage.read_bytes(uri, storage_cfg), uri)[0])
    except StorageUnreachableError:
        raise  # an outage, not a bad image
    except (ImageError, StorageError):
        return -1.0


def _with_references(decoded: Iterator, ref_of: list[int]) -> Iterator[tuple[Any, np.ndarray]]:
    """``(frame, its reference's pixels)`` in decoding order; a frame waits (at most Δ frames)
    until its reference has been decoded, and reference pixels are dropped after their last
    use."""
    from collections import deque

    last_use: dict[int, int] = {}
    for t, r in enumerate(ref_of):
        last_use[r] = t
    kept: dict[int, np.ndarray] = {}
    waiting: deque = deque()
    for i, d in enumerate(decoded):
        if i in last_use:
            kept[i] = d.rgb
        waiting.append((i, d))
        while waiting and (ref_of[waiting[0][0]] if waiting[0][0] < len(ref_of)
                           else waiting[0][0]) <= i:
            t, frame = waiting.popleft()
            r = ref_of[t] if t < len(ref_of) else t
            yield frame, kept.get(r, frame.rgb)
            for k in [k for k in kept if last_use[k] <= t]:
                del kept[k]
    for t, frame in waiting:  # the video ended early: its own frame stands in
        yield frame, frame.rgb


def probe_fps(uri: str, storage_cfg: StorageConfig | None = None) -> float | None:
    """The frame rate a video's container declares, or None if it cannot tell."""
    import av

    try:
        with storage.open_input(uri, storage_cfg) as f, av.open(f, mode="r") as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            return float(rate) if rate and float(rate) > 0 else None
    except Exception:  # noqa: BLE001 - decode_frames reports the real problem
        return None


def _batches(frames: Iterator, size: int) -> Iterator[list]:
    batch: list = []
    for f in frames:
        batch.append(f)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def deblur_video(model: torch.nn.Module, src: str, dst: str, cfg: DeblurConfig,
                 device: torch.device, storage_cfg: StorageConfig | None = None,
                 threads: int = 0, reference: str = "") -> int:
    """Deblur a video frame by frame into ``dst`` at the source frame rate.

    ``reference`` (for a model that reads one): ``auto`` (each frame's sharpest neighbour
    within ±``cfg.reference_delta``; the video is decoded once more, first, to score its
    frames) or an image's URI ("": none).

    Frames are streamed (memory is a few frames); the output is encoded to a local temporary
    file and uploaded only once complete, so a video that breaks mid-way leaves no output.

    Returns:
        The number of frames written.

    Raises:
        VideoError: ``src`` is empty, not a video, or breaks mid-way.
        ValueError: the frame size changes within the video, or the container cannot hold it.
        storage.StorageError: ``src`` or ``dst`` cannot be read or written.
    """
    import av

    fps = probe_fps(src, storage_cfg)
    n = 0
    given = None
    if reference and reference != "auto":
        given = decode_image(storage.read_bytes(reference, storage_cfg), reference)[0]
    with tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}{os.getpid()}-") as tmp:
        local = os.path.join(tmp, "out" + _split_ext(dst)[1])
        decoded = decode_frames(src, storage_cfg, threads=threads)
        if reference == "auto":
            ref_of = sharpest_nearby([_score(d.rgb) for d in decoded], cfg.reference_delta)
            decoded = decode_frames(src, storage_cfg, threads=threads)
            pairs: Iterator = _with_references(decoded, ref_of)
        else:
            pairs = ((d, given) for d in decoded)
        writer: VideoWriter | None = None
        shape: tuple[int, ...] | None = None
        try:
            for batch_refs in _batches(pairs, FRAMES_PER_BATCH):
                batch = [d for d, _ in batch_refs]
                shape = shape or batch[0].rgb.shape
                if any(d.rgb.shape != shape or (reference == "auto" and r.shape != shape)
                       for d, r in batch_refs):  # a reference may lie a few frames on
                    raise VideoError(f"{src}: the frame size changes within the video", n)
                if writer is None:
                    if fps is None:  # from the frame times, else a common default
                        step = float(np.median(np.diff([d.time for d in batch]))) \
                            if len(batch) > 1 else 0.0
                        fps = 1.0 / step if step > 0 else 30.0
                    try:
                        writer = VideoWriter(local, shape[1], shape[0], fps, cfg.crf,
                                             batch[0].colour)
                    except ValueError as e:  # named by the output, not the temporary file
                        raise VideoError(f"{src}: {dst}: {e}", n) from None
                refs = np.stack([r for _, r in batch_refs]) if reference else None
                for rgb in deblur_frames(model, np.stack([d.rgb for d in batch]), cfg, device,
                                         refs):
                    writer.write(rgb)
                n += len(batch)
            if writer is None:
                raise VideoError(f"{src}: the video holds no frames")
            finishing, writer = writer, None
            finishing.close()
        except av.FFmpegError as e:
            raise VideoError(f"{src}: encoding {dst} failed after {n} frames ({e})", n) from None
        finally:
            decoded.close()
            if writer is not None:  # failed mid-way: the partial file is discarded with tmp
                try:
                    writer.close()
                except Exception:  # noqa: BLE001 - already failing
                    pass
        storage.upload_file(local, dst, storage_cfg)
    return n


class DeblurWorker:
    """Ray Data actor: loads the checkpoint once, on the GPU Ray assigned (else the CPU, with as
    many torch threads as the actor has CPUs), then deblurs the files of its batches and writes
    the outputs."""

    def __init__(self, checkpoint: str, cfg: DeblurConfig, storage_cfg: StorageConfig) -> None:
        from bluref_ray.models import load_checkpoint

        self.cfg, self.storage_cfg = cfg, storage_cfg
        self.device, self.threads = actor_setup()
        delete_stale_encodes()
        model, _ = load_checkpoint(checkpoint, storage_cfg, map_location="cpu")
        self.model = model.to(self.device).eval()
        self.takes_reference = getattr(model, "takes_reference", False)

    def process(self, src: str, dst: str, kind: str, reference: str = "") -> dict[str, Any]:
        """Deblur one file; a failure becomes ``error`` (naming the file), never an exception.
        ``reference``: an image's URI, ``auto`` (a video's own frames) or "" (none)."""
        t0 = time.perf_counter()
        frames, error = 0, ""
        if not self.takes_reference:
            reference = ""
        try:
            if kind == "image":
                frames = deblur_image(self.model, src, dst, self.cfg, self.device,
                                      self.storage_cfg, "" if reference == "auto" else reference)
            else:  # S3 down or failing mid-video: the video again, from the start
                frames = storage.retry_while_unreachable(lambda: deblur_video(
                    self.model, src, dst, self.cfg, self.device, self.storage_cfg,
                    self.threads, reference), self.storage_cfg)
        except StorageUnreachableError:
            raise  # S3 down past storage.outage_s: the job stops (it resumes when run again)
        except (ImageError, VideoError, StorageError) as e:
            error = str(e) if src in str(e) else f"{src}: {e}"
        except (ValueError, OSError, RuntimeError, torch.jit.Error) as e:  # the last two: the
            # model's own (a TorchScript network of the user's raises torch.jit.Error)
            memory = isinstance(e, torch.cuda.OutOfMemoryError) or "can't allocate" in str(e)
            hint = " (lower deblur.tile)" if memory else ""
            error = f"{src}: {type(e).__name__}: {e}{hint}"
        if error and self.device.type == "cuda":
            torch.cuda.empty_cache()
        return {"frames": frames, "seconds": time.perf_counter() - t0, "error": error}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in ("src", "dst", "name", "kind", "frames",
                                                "seconds", "error")}
        refs = batch.get("reference", [""] * len(batch["src"]))
        for src, dst, name, kind, ref in zip(batch["src"], batch["dst"], batch["name"],
                                             batch["kind"], refs):
            r = self.process(str(src), str(dst), str(kind), str(ref))
            for k, v in (("src", str(src)), ("dst", str(dst)), ("name", str(name)),
                         ("kind", str(kind)), *r.items()):
                out[k].append(v)
        return out


def actor_resources(dc: DeblurConfig, resources: dict, n_files: int) -> tuple[float, int, float]:
    """GPUs per actor, number of actors and CPUs per actor (see
    :func:`bluref_ray.pipeline.common.actor_pool`): one actor per GPU, else a single CPU actor;
    never more actors than files."""
    return actor_pool("deblur", resources, dc.concurrency, dc.cpus_per_actor, dc.gpus_per_actor,
                      max_actors=min(n_files, dc.max_concurrency or n_files))


def _plan_references(todo: list[dict], rows: list[dict], dc: DeblurConfig,
                     storage_cfg: StorageConfig, log: Callable[[str], None]) -> None:
    """Set each file's ``reference``: the given image, or for ``auto`` ``"auto"`` on videos
    (their own frames) and, for images, the sharpest image within ±Δ of the same folder in
    name order (scored here, on the driver)."""
    if dc.reference != "auto":
        ref = storage.normalize(dc.reference)
        if not storage.is_file(ref, storage_cfg):
            raise storage.StorageNotFoundError(f"deblur.reference={dc.reference}: not found")
        for r in todo:
            r["reference"] = ref
        log(f"[deblur] reference for every file: {ref}")
        return
    folders: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["kind"] == "image":
            folders[storage.parent(r["src"])].append(r)
    wanted = {r["src"] for r in todo}
    ref_of: dict[str, str] = {}
    for group in folders.values():
        group = sorted(group, key=lambda r: r["src"])
        if not any(r["src"] in wanted for r in group):
            continue
        scores = [_score_file(r["src"], storage_cfg) for r in group]
        for r, i in zip(group, sharpest_nearby(scores, dc.reference_delta)):
            ref_of[r["src"]] = group[i]["src"]
    for r in todo:
        r["reference"] = "auto" if r["kind"] == "video" else ref_of[r["src"]]
    log(f"[deblur] references: the sharpest frame within ±{dc.reference_delta} "
        f"({len(ref_of)} images scored)")


def _existing(out: str, storage_cfg: StorageConfig) -> set[str]:
    try:
        return set(storage.list_files(out, storage_cfg))
    except storage.StorageNotFoundError:
        return set()


def run_deblur(checkpoint: str, inputs: list[str], out: str, cfg: Config,
               log: Callable[[str], None] = print) -> dict:
    """Deblur every image and video of ``inputs`` into ``out`` with Ray Data; resumable.

    Returns:
        The run summary (also written to ``OUT/deblur_summary.json``): ``files`` (found),
        ``done``, ``skipped`` (outputs already there), ``failed`` (``[{"input", "error"}]``),
        ``frames`` (deblurred by this run), ``seconds`` (of the Ray stage, actor start
        included), ``frames_per_second`` (frames / seconds), ``busy_seconds`` (time the actors
        spent on the files that succeeded, summed), ``total_seconds``, and the checkpoint,
        inputs, output folder and settings.

    Raises:
        storage.StorageNotFoundError: the checkpoint or an input does not exist.
        storage.StorageError: storage cannot be reached.
        ValueError: no images or videos in the inputs, or the checkpoint is not one.
        ConfigError: the actors do not fit the cluster.
    """
    import ray

    from bluref_ray.models import load_image_model, resolve_checkpoint
    from bluref_ray.ray_utils import init_ray, iter_rows

    t0 = time.time()
    dc = cfg.deblur
    storage_cfg = cfg.storage.resolved()
    out = storage.normalize(out)
    storage.check_reachable(out, storage_cfg)
    rows = plan(inputs, out, storage_cfg)
    checkpoint = resolve_checkpoint(checkpoint, storage_cfg)  # here, not in every actor
    model, ckpt = load_image_model(checkpoint, storage_cfg)
    gone = storage.delete_temporaries(out, storage_cfg)  # a killed run's (one writer: ours)
    if gone:
        log(f"[deblur] deleted {gone} unfinished file(s) of a run before")
    have = set() if dc.overwrite else _existing(out, storage_cfg)
    todo = [r for r in rows if r["dst"] not in have]
    if getattr(model, "takes_reference", False):
        _plan_references(todo, rows, dc, storage_cfg, log)
    skipped = len(rows) - len(todo)
    n_video = sum(r["kind"] == "video" for r in rows)
    log(f"[deblur] {len(rows)} files ({len(rows) - n_video} images, {n_video} videos) from "
        f"{', '.join(inputs)} → {out}; {skipped} already done (skipped); model "
        f"{ckpt['arch']}, tile {dc.tile or 'off'}")
    done, frames, failed, busy = 0, 0, [], 0.0
    t_run = time.time()
    if todo:
        init_ray(cfg.ray)
        resources = await_pool("deblur", cfg.ray, dc.concurrency, dc.cpus_per_actor,
                               dc.gpus_per_actor, log)
        gpus, concurrency, cpus_per_actor = actor_resources(dc, resources, len(todo))
        most = min(dc.max_concurrency or concurrency, len(todo))
        # sized on the actors the cluster must hold now; an elastic pool's others come with
        # the nodes the autoscaler adds for them
        memory = actor_memory("deblur", dc.memory_per_actor, resources, concurrency,
                              DEBLUR_MEMORY_GIB)
        log(f"[deblur] {pool_size(concurrency, most)} actor(s) with {gpus:g} GPU, "
            f"{cpus_per_actor:g} CPU and {memory / 2**30:.1f} GiB each")
        ds = ray.data.from_items(todo, override_num_blocks=max(1, min(len(todo), 10_000)))
        ds = ds.map_batches(DeblurWorker, fn_constructor_kwargs={
            "checkpoint": checkpoint, "cfg": dc, "storage_cfg": storage_cfg},
            batch_size=dc.batch_size, compute=pool_strategy(concurrency, most),
            num_cpus=cpus_per_actor, num_gpus=gpus, memory=memory)
        progress = Progress("deblur", len(todo), "files", log)
        for r in iter_rows(ds):
            if r["error"]:
                failed.append({"input": r["src"], "output": r["dst"], "error": r["error"]})
            else:
                done += 1
                frames += int(r["frames"])
                busy += float(r["seconds"])
            progress.update(f"{frames} frames, {frames / progress.seconds:.1f} frames/s, "
                            f"{len(failed)} failed",
                            f"{r['name']}: FAILED: {r['error']}" if r["error"] else "")
    seconds = time.time() - t_run
    storage.delete_temporaries(out, storage_cfg)  # what an actor killed mid-write left
    summary = {
        "checkpoint": checkpoint, "inputs": list(inputs), "out": out,
        "files": len(rows), "done": done, "skipped": skipped, "failed": failed,
        "frames": frames, "seconds": round(seconds, 2),
        "frames_per_second": round(frames / seconds, 3) if frames and seconds > 0 else 0.0,
        "busy_seconds": round(busy, 2),
        "total_seconds": round(time.time() - t0, 2), "settings": dataclasses.asdict(dc),
    }
    storage.write_text(storage.join(out, SUMMARY), json.dumps(summary, indent=1), storage_cfg)
    log(f"[deblur] {done} done, {skipped} skipped, {len(failed)} failed; {frames} frames in "
        f"{seconds:.1f} s ({summary['frames_per_second']:.2f} frames/s) → {out}/{SUMMARY}")
    return summary
