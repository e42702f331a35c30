"""Ingest throughput and memory: the Ray Data pipeline against a plain single-process loop.

    python benchmarks/ingest.py [--clips 8] [--frames 90] [--height 360] [--width 640]

Synthesizes clips (videos only) once, then ingests the same clips twice:

* **loop**: one Python process calls :func:`bluref_ray.pipeline.ingest.ingest_and_write` clip
  after clip (the same per-clip function the pipeline runs);
* **ray**: :func:`bluref_ray.pipeline.ingest.run_ingest` on a local Ray cluster with all cores
  (Ray start-up and the first worker start are excluded: a warm-up run on one clip comes first).

It prints frames per second of each and their ratio, the cores each kept busy (CPU seconds per
wall second: FFmpeg's decoder threads let even the loop use more than one), and peak memory
(PSS): of the loop's process, and of the driver plus all Ray processes for the pipeline. It
then runs the pipeline on twice as many clips to show that peak memory does not grow with the
number of clips.
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

from bluref_ray.config import Config, IngestConfig, RayConfig, SynthConfig
from bluref_ray.data.sources import discover
from bluref_ray.data.synth import synthesize
from bluref_ray.pipeline.ingest import ingest_and_write, run_ingest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clips", type=int, default=8, help="clips in the base run")
    ap.add_argument("--frames", type=int, default=90, help="frames per clip")
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs for Ray")
    ap.add_argument("--workdir", default=None, help="where to put data (default: a temp dir)")
    args = ap.parse_args(argv)

    work = args.workdir or tempfile.mkdtemp(prefix="bluref-bench-")
    synth = SynthConfig(seed=1, train_clips=2 * args.clips, test_clips=0, frames=args.frames,
                        height=args.height, width=args.width, write_frames=False)
    data = os.path.join(work, "data")
    if not os.path.exists(os.path.join(data, "manifest.json")):
        print(f"synthesizing {synth.train_clips} clips of {args.frames} frames at "
              f"{args.width}x{args.height} → {data}", flush=True)
        synthesize(data, synth, log=lambda _m: None)
    videos = sorted(os.listdir(os.path.join(data, "videos", "train")))
    base = os.path.join(work, "base")
    double = os.path.join(work, "double")
    for d, names in ((base, videos[:args.clips]), (double, videos)):
        os.makedirs(d, exist_ok=True)
        for n in names:
            if not os.path.exists(os.path.join(d, n)):
                os.link(os.path.join(data, "videos", "train", n), os.path.join(d, n))

    cfg = Config(ray=RayConfig(num_cpus=args.num_cpus, progress_bars=False),
                 ingest=IngestConfig())
    clips = discover(base)
    n_frames = len(clips) * args.frames

    # 1. the plain loop, in this process only
    out_loop = os.path.join(work, "out-loop")
    shutil.rmtree(out_loop, ignore_errors=True)
    with Usage() as mem_loop:
        t0 = time.perf_counter()
        for c in clips:
            ingest_and_write(c, out_loop, cfg.ingest)
        t_loop = time.perf_counter() - t0

    # 2. the Ray pipeline (Ray started first; its start-up is not timed)
    import ray

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="ERROR")
    # warm up: start the worker processes once, as a long job would have them
    warm = os.path.join(work, "warm")
    os.makedirs(warm, exist_ok=True)
    for n in videos[:args.num_cpus]:
        if not os.path.exists(os.path.join(warm, n)):
            os.link(os.path.join(data, "videos", "train", n), os.path.join(warm, n))
    run_ingest([warm], os.path.join(work, "warm-out"),
               dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, overwrite=True)),
               log=lambda _m: None)
    runs = {}
    for name, src in (("base", base), ("double", double)):
        out = os.path.join(work, f"out-ray-{name}")
        shutil.rmtree(out, ignore_errors=True)
        with Usage() as mem:
            t0 = time.perf_counter()
            summary = run_ingest([src], out, cfg, log=lambda _m: None)
            runs[name] = (time.perf_counter() - t0, summary["frames"], mem)
        runs[name] = (runs[name][0], runs[name][1], mem)
    ray.shutdown()

    t_ray, frames_ray, mem_ray = runs["base"]
    t_dbl, frames_dbl, mem_dbl = runs["double"]
    assert frames_ray == n_frames, (frames_ray, n_frames)
    fps_loop, fps_ray = n_frames / t_loop, frames_ray / t_ray
    print()
    print(f"ingest benchmark: {len(clips)} clips × {args.frames} frames at "
          f"{args.width}x{args.height}, {args.num_cpus} CPUs, {os.cpu_count()} cores on this "
          f"machine")
    print(f"{'run':<28} {'frames':>7} {'seconds':>8} {'frames/s':>9} {'cores busy':>10} "
          f"{'peak mem':>10}")
    print(f"{'single-process loop':<28} {n_frames:>7} {t_loop:>8.2f} {fps_loop:>9.1f} "
          f"{mem_loop.cores:>10.2f} {gib(mem_loop.peak):>10}")
    print(f"{'Ray Data pipeline':<28} {frames_ray:>7} {t_ray:>8.2f} {fps_ray:>9.1f} "
          f"{mem_ray.cores:>10.2f} {gib(mem_ray.peak):>10}")
    print(f"{'Ray Data pipeline, 2× clips':<28} {frames_dbl:>7} {t_dbl:>8.2f} "
          f"{frames_dbl / t_dbl:>9.1f} {mem_dbl.cores:>10.2f} {gib(mem_dbl.peak):>10}")
    print(f"speed-up, Ray / loop: {fps_ray / fps_loop:.2f}×")
    print(f"peak memory (PSS), Ray (driver + all Ray processes) / loop: "
          f"{mem_ray.peak / mem_loop.peak:.2f}×; above the idle cluster: "
          f"{gib(mem_ray.peak - mem_ray.base)} for 1× clips, "
          f"{gib(mem_dbl.peak - mem_dbl.base)} for 2× clips")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
