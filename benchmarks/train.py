"""Deblurrer training throughput and memory: 1 against 2 DDP workers (Ray Train), this machine.

    python benchmarks/train.py [--model nafnet-tiny] [--crop 96] [--batch 8] [--steps 100]

Synthesizes clips, ingests their frame trees and makes pseudo-GT once, then trains the same
network for the same steps with ``bluref train``'s code (:func:`train_deblurrer`: Ray Data
streams crops into a Ray Train ``TorchTrainer``) with 1 worker and with 2 DDP workers (gloo on
CPUs). Both runs share the machine's CPUs the same way: workers get ``CPUs - 1`` between them
(one CPU is left to the data tasks) and one torch thread per whole CPU (at least one). It prints
crops per second in the steady state (the global batch: both workers' crops count; measured
after the first 10% of steps), the 2-vs-1 ratio, cores kept busy and peak memory (PSS, driver
plus all Ray processes).

On a machine with a CUDA GPU it also trains NAFNet-width32 at 256×256 crops on one GPU
(bfloat16 autocast) and prints its crops per second, next to the bare training step's on random
tensors already on the GPU (the ceiling for the data pipeline). ``--skip-cpu`` measures only that.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile

from common import Usage, gib

from bluref_ray.config import Config, PseudoGTConfig, RayConfig, SynthConfig, TrainConfig
from bluref_ray.data.synth import synthesize
from bluref_ray.pipeline.ingest import run_ingest
from bluref_ray.pipeline.pseudo_gt import run_pseudo_gt
from bluref_ray.training.deblur import train_deblurrer


def _run(pairs: str, out: str, cfg: Config, workers: int, cpus: float) -> tuple[dict, Usage]:
    per_worker = (cpus - 1) / workers
    tc = dataclasses.replace(cfg.train, workers=workers, cpus_per_worker=per_worker,
                             threads=max(1, round(per_worker)), use_gpu=False)
    with Usage() as usage:
        summary = train_deblurrer(pairs, out, dataclasses.replace(cfg, train=tc),
                                  log=lambda _m: None)
    return summary, usage


def _model_alone(model_name: str, batch: int, crop: int, steps: int = 30) -> float:
    """Crops per second of the bare training step on the GPU (random tensors already there, the
    loop's AdamW, bfloat16 autocast and gradient clipping): the ceiling the pipeline feeds."""
    import time

    import torch

    from bluref_ray.models import build_model

    model = build_model(model_name).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = (torch.rand(batch, 3, crop, crop, device="cuda") for _ in range(2))
    for i in range(steps + 5):
        if i == 5:  # warm-up done (cuDNN autotuning, allocator)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            pred = model(x)
        loss = (pred.float() - y).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="nafnet-tiny")
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--skip-cpu", action="store_true",
                    help="measure only the GPU figure (on a machine with a CUDA GPU)")
    args = ap.parse_args()
    import ray
    import torch

    from bluref_ray.ray_utils import init_ray

    work = tempfile.mkdtemp(prefix="bench-train-")
    try:
        cfg = Config(ray=RayConfig(progress_bars=False),
                     synth=SynthConfig(train_clips=2, test_clips=0, frames=48, write_videos=False),
                     pseudo_gt=PseudoGTConfig(max_refs=2, matcher="dis"))  # data prep only
        init_ray(cfg.ray)
        cpus = ray.cluster_resources().get("CPU", 1)
        synthesize(f"{work}/data", cfg.synth, log=lambda _m: None)
        run_ingest([f"{work}/data/train"], f"{work}/ingest", cfg, log=lambda _m: None)
        run_pseudo_gt(f"{work}/ingest", f"{work}/pairs", cfg, log=lambda _m: None)
        cfg = dataclasses.replace(cfg, train=TrainConfig(
            model=args.model, steps=args.steps, batch_size=args.batch, crop=args.crop,
            checkpoint_every=args.steps, val_every=args.steps, log_every=args.steps))
        print(f"training {args.model}, {args.steps} steps of {args.batch} crops of {args.crop}px, "
              f"{cpus:g} CPUs")
        results = {}
        for workers in () if args.skip_cpu else (1, 2):
            s, u = _run(f"{work}/pairs", f"{work}/train{workers}", cfg, workers, cpus)
            results[workers] = s.crops_per_s
            print(f"  {workers} worker(s): {s.crops_per_s:.1f} crops/s, {u.cores:.2f} cores "
                  f"busy, peak memory {gib(u.peak)} ({gib(u.peak - u.base)} above the idle "
                  f"cluster), {u.wall:.0f}s in all")
        if results:
            print(f"  2 workers against 1: {results[2] / results[1]:.2f}×")
        if torch.cuda.is_available():
            gcfg = dataclasses.replace(cfg, train=dataclasses.replace(
                cfg.train, model="nafnet-width32", crop=256, batch_size=16, workers=1,
                use_gpu=True, threads=4, cpus_per_worker=1.0))
            s = train_deblurrer(f"{work}/pairs", f"{work}/gpu", gcfg, log=lambda _m: None)
            bare = _model_alone("nafnet-width32", 16, 256)
            print(f"  GPU ({torch.cuda.get_device_name()}): NAFNet-width32 at 256×256, "
                  f"batch 16: {s.crops_per_s:.1f} crops/s through the pipeline; the bare "
                  f"training step alone: {bare:.1f} crops/s (pipeline / bare: "
                  f"{s.crops_per_s / bare:.2f})")
        else:
            print("  no CUDA GPU here: the NAFNet-width32 GPU figure was not measured")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    raise SystemExit(main())
