"""Pseudo-GT throughput and memory: the Ray pipeline with 1 and 2 actors against a plain loop.

    python benchmarks/pseudo_gt.py [--clips 4] [--frames 60] [--height 360] [--width 640]
                                   [--limit 12] [--max-refs 6] [--strategy weighted]
                                   [--matcher learned|dis]

Synthesizes clips (videos) and ingests them once, then makes pseudo-pairs for the same blurry
frames three ways:

* **loop**: one process calls :func:`load_windows` and a :class:`PairMaker` window after window
  (the functions the pipeline's stages run) and writes the same shards;
* **ray, 1 actor** and **ray, 2 actors**: :func:`run_pseudo_gt` on a local Ray cluster. Actors
  get ``CPUs - 1`` CPUs between them so one CPU stays free for the tasks that decode frames.

It prints pseudo-pairs per second, the ratios to the loop, cores kept busy, and peak memory
(PSS, driver plus all Ray processes). On a machine with a CUDA GPU it adds pairs per second of
the pipeline at 1280×720 with N=6 on the GPU (the DIS matcher itself runs on the CPU; the learned
matcher of a later issue runs on the GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time

from common import Usage, gib

from bluref_ray import schema, storage
from bluref_ray.config import Config, IngestConfig, PseudoGTConfig, RayConfig, SynthConfig
from bluref_ray.data.synth import synthesize
from bluref_ray.data.windows import load_windows
from bluref_ray.pipeline.ingest import run_ingest
from bluref_ray.pipeline.pairs import PairMaker, encode_pairs, write_window
from bluref_ray.pipeline.pseudo_gt import run_pseudo_gt, settings_hash


def _loop(frames_dir: str, out: str, pg: PseudoGTConfig) -> tuple[int, dict[str, float]]:
    """The single-process baseline: the pipeline's stages, one after the other. Returns the
    pairs made and the seconds spent loading windows, making pairs and writing shards."""
    import torch

    make = PairMaker(pg, settings_hash(pg), torch.device("cpu"))
    n, phases = 0, dict.fromkeys(("load", "make", "write"), 0.0)
    for f in storage.list_files(frames_dir):
        frames = schema.read_table(f, schema.FRAMES)
        windows = load_windows(frames, pg.targets_per_shard, pg.max_refs, limit=pg.limit)
        while True:
            t0 = time.perf_counter()
            window, pixels = next(windows, (None, None))
            t1 = time.perf_counter()
            phases["load"] += t1 - t0
            if window is None:
                break
            made = make.make(window, pixels)
            t2 = time.perf_counter()
            rows, rejects = encode_pairs(made, pg, make.chash)
            write_window(out, window.name, rows, rejects, None)
            phases["write"] += time.perf_counter() - t2
            phases["make"] += t2 - t1
            n += len(rows)
    return n, phases


def _prepare(work: str, args: argparse.Namespace, num_cpus: int) -> str:
    data, ingest = os.path.join(work, "data"), os.path.join(work, "ingest")
    if not os.path.exists(os.path.join(ingest, "summary.json")):
        synth = SynthConfig(seed=3, train_clips=args.clips, test_clips=0, frames=args.frames,
                            height=args.height, width=args.width, write_frames=False)
        print(f"synthesizing {args.clips} clips of {args.frames} frames at "
              f"{args.width}x{args.height}", flush=True)
        synthesize(data, synth, log=lambda _m: None)
        cfg = Config(ray=RayConfig(num_cpus=num_cpus, progress_bars=False),
                     ingest=IngestConfig(max_refs=args.max_refs, delta=10))
        run_ingest([os.path.join(data, "videos")], ingest, cfg, log=lambda _m: None)
        import ray

        ray.shutdown()  # the timed runs start their own
    return os.path.join(ingest, "frames")


def _gpu_figure(work: str) -> str:
    import torch

    if not torch.cuda.is_available():
        return "GPU: none on this machine; the 1280x720 N=6 GPU figure was not measured"
    args = argparse.Namespace(clips=2, frames=40, height=720, width=1280, max_refs=6)
    frames = _prepare(os.path.join(work, "gpu"), args, os.cpu_count())
    import ray

    ray.init(include_dashboard=False, logging_level="ERROR")
    pg = PseudoGTConfig(max_refs=6, strategy="weighted", limit=12)
    t0 = time.perf_counter()
    s = run_pseudo_gt(frames, os.path.join(work, "gpu-out"),
                      Config(ray=RayConfig(progress_bars=False), pseudo_gt=pg),
                      log=lambda _m: None)
    dt = time.perf_counter() - t0
    ray.shutdown()
    return (f"GPU {torch.cuda.get_device_name()}: {s.rows / dt:.2f} pairs/s at 1280x720, "
            f"N=6 ({s.rows} pairs)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--limit", type=int, default=12, help="blurry frames per clip")
    ap.add_argument("--max-refs", type=int, default=6)
    ap.add_argument("--strategy", default="weighted")
    ap.add_argument("--matcher", default=PseudoGTConfig.matcher, choices=("learned", "dis"),
                    help="dense matcher (default: the pipeline's default)")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--workdir", default=None, help="keep data here (default: a temp dir)")
    args = ap.parse_args(argv)
    work = args.workdir or tempfile.mkdtemp(prefix="bluref-bench-pg-")
    frames = _prepare(work, args, args.num_cpus)
    pg = PseudoGTConfig(max_refs=args.max_refs, strategy=args.strategy, limit=args.limit,
                        batch_size=8, targets_per_shard=12, matcher=args.matcher)

    out_loop = os.path.join(work, "out-loop")
    shutil.rmtree(out_loop, ignore_errors=True)
    with Usage() as u_loop:
        n_loop, phases = _loop(frames, out_loop, pg)

    import ray

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="ERROR")
    runs = {}
    for actors in (1, 2):
        cpus = min(1.0, (args.num_cpus - 1) / actors)
        cfg = Config(ray=RayConfig(progress_bars=False),
                     pseudo_gt=dataclasses.replace(pg, concurrency=actors, cpus_per_actor=cpus,
                                                   gpus_per_actor=0.0))  # CPUs, GPU or not
        warm = os.path.join(work, f"warm-{actors}")  # start workers and actors once, untimed
        shutil.rmtree(warm, ignore_errors=True)
        run_pseudo_gt(frames, warm, dataclasses.replace(cfg, pseudo_gt=dataclasses.replace(
            cfg.pseudo_gt, limit=1)), log=lambda _m: None)
        out = os.path.join(work, f"out-ray-{actors}")
        shutil.rmtree(out, ignore_errors=True)
        with Usage() as u:
            s = run_pseudo_gt(frames, out, cfg, log=lambda _m: None)
        runs[actors] = (s.rows, u, cpus, s.this_run)
    ray.shutdown()

    fps_loop = n_loop / u_loop.wall
    print()
    print(f"pseudo-GT benchmark: {n_loop} blurry frames at {args.width}x{args.height}, "
          f"N={args.max_refs}, strategy={args.strategy}, matcher={args.matcher}, "
          f"{args.num_cpus} CPUs")
    print(f"{'run':<34} {'pairs':>6} {'seconds':>8} {'pairs/s':>8} {'vs loop':>8} "
          f"{'cores busy':>10} {'peak mem':>9}")
    print(f"{'single-process loop':<34} {n_loop:>6} {u_loop.wall:>8.2f} {fps_loop:>8.2f} "
          f"{1.0:>7.2f}× {u_loop.cores:>10.2f} {gib(u_loop.peak):>9}")
    for actors, (n, u, cpus, *_) in runs.items():
        name = f"Ray, {actors} actor(s) × {cpus:g} CPU"
        print(f"{name:<34} {n:>6} {u.wall:>8.2f} {n / u.wall:>8.2f} "
              f"{n / u.wall / fps_loop:>7.2f}× {u.cores:>10.2f} {gib(u.peak):>9}")
    print("loop: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
          + " (load: decoding windows; make: matching and fusing; write: PNG, PSNR and "
          "Parquet)")
    for actors, (n, u, _, t) in runs.items():
        after = n / (u.wall - t.startup_seconds)
        print(f"Ray, {actors} actor(s): start-up {t.startup_seconds:.1f} s, after it "
              f"{after:.2f} pairs/s ({after / fps_loop:.2f}× the loop); making "
              f"{t.busy_seconds:.1f} actor-s ({t.busy_seconds / n:.2f} s per pair), actors busy "
              f"{t.busy_seconds / (actors * u.wall):.0%} of the run; writing "
              f"{t.write_seconds:.1f} s")
    (n1, u1, *_), (n2, u2, *_) = runs[1], runs[2]
    print(f"2 actors / 1 actor: {(n2 / u2.wall) / (n1 / u1.wall):.2f}×")
    print(_gpu_figure(work))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
