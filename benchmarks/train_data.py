"""The training data path alone: crops/s per CPU core, and so the cores one GPU needs.

    python benchmarks/train_data.py [--height 720] [--width 1280] [--crop 256] [--batch 16]
                                    [--cpus 1,2] [--bare 136.6]

``bluref train`` feeds its workers through Ray Data: read the pseudo-pair shards (Parquet, PNG
bytes), decode each pair and cut ``crops_per_frame`` random crops (:func:`pairs_dataset`). This
measures that path with no model: a Ray cluster of ``--cpus`` CPUs iterates the dataset as a
training worker does (``iter_torch_batches``, batches of ``--batch`` crops, the same shuffle
buffer), read by the driver and through a ``streaming_split`` (a Ray Train worker's shard), and
counts crops per second in the steady state (after the first 20 batches). Dividing
the bare training step's crops/s on a GPU (``--bare``: 136.6, NAFNet-width32 at 256², batch 16,
bfloat16 on one H100, ``benchmarks/train.py``) by the crops/s per core gives the CPU cores one
such GPU needs.

The shards are made here from synthesized frames at the given size (blurry frame, its ground
truth as the pseudo-sharp image, a confidence map from the image's gradients): the data path
does not care how a pseudo-pair was made, and making real pseudo-GT at 1280×720 on a CPU would
take longer than the measurement.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np
import pyarrow as pa

from bluref_ray import schema
from bluref_ray.config import SynthConfig, TrainConfig
from bluref_ray.data.images import encode_png
from bluref_ray.data.synth import synthesize


def make_shards(work: str, h: int, w: int, frames: int, per_shard: int = 8) -> str:
    """Pseudo-pair shards from one synthesized clip: ``frames`` rows, ``per_shard`` a file."""
    data = os.path.join(work, "data")
    synthesize(data, SynthConfig(seed=5, train_clips=1, test_clips=0, frames=frames, height=h,
                                 width=w, blurry_share=1.0, write_videos=False),
               log=lambda _m: None)
    clip = os.path.join(data, "train", sorted(os.listdir(os.path.join(data, "train")))[0])
    names = sorted(os.listdir(os.path.join(clip, "blur")))
    rows = []
    for i, name in enumerate(names):
        blurry = cv2.imread(os.path.join(clip, "blur", name))[..., ::-1]
        sharp = cv2.imread(os.path.join(clip, "sharp", name))[..., ::-1]
        g = cv2.Laplacian(cv2.cvtColor(sharp, cv2.COLOR_RGB2GRAY), cv2.CV_32F)
        conf = np.clip(255 - 8 * np.abs(cv2.GaussianBlur(g, (0, 0), 3)), 0, 255).astype(np.uint8)
        rows.append({"row_id": f"r{i:05d}", "clip_id": "c", "frame_id": name, "frame_index": i,
                     "round": 1, "matcher": "-", "strategy": "-", "tau": 0.7,
                     "config_hash": "-", "height": h, "width": w,
                     "blurry_png": encode_png(np.ascontiguousarray(blurry)),
                     "pseudo_png": encode_png(np.ascontiguousarray(sharp)),
                     "confidence_png": encode_png(conf), "coverage": float((conf >= 179).mean()),
                     "confidence_hist": [0] * 10, "refs_used": 1, "reference_ids": [],
                     "source_uri": name, "gt_uri": None, "psnr_pseudo": None,
                     "psnr_blurry": None})
    out = os.path.join(work, "pairs")
    for s in range(0, len(rows), per_shard):
        schema.write_table(pa.Table.from_pylist(rows[s:s + per_shard], schema=schema.PSEUDO_PAIRS),
                           os.path.join(out, "shards", f"s{s:05d}.parquet"))
    return out


def crops_per_s(pairs: str, cpus: int, tc: TrainConfig, batches: int, split: bool,
                prefetch: int = 1) -> float:
    """Steady-state crops/s of the data path on a Ray cluster of ``cpus`` CPUs (through a
    ``streaming_split`` of 1, as a Ray Train worker's dataset shard, with ``split``)."""
    import ray

    from bluref_ray.training.deblur import pairs_dataset

    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
    try:
        ds = pairs_dataset(pairs, tc, None)
        source = ds.streaming_split(1)[0] if split else ds
        n, t0, seen = 0, None, 0
        while seen < batches + 20:  # passes over the data, as training makes them
            for _ in source.iter_torch_batches(batch_size=tc.batch_size, drop_last=True,
                                               local_shuffle_buffer_size=4 * tc.batch_size,
                                               prefetch_batches=prefetch):
                seen += 1
                if seen == 20:
                    t0 = time.perf_counter()
                elif seen > 20:
                    n += tc.batch_size
                if seen >= batches + 20:
                    break
        return n / (time.perf_counter() - t0)
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--frames", type=int, default=24, help="pairs in the shards")
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crops-per-frame", type=int, default=TrainConfig.crops_per_frame)
    ap.add_argument("--batches", type=int, default=60, help="timed batches per run")
    ap.add_argument("--cpus", default="1,2", help="cluster sizes to measure")
    ap.add_argument("--prefetch", type=int, default=1, help="iter_torch_batches' prefetch_batches")
    ap.add_argument("--bare", type=float, default=136.6,
                    help="the bare training step's crops/s on the GPU in question")
    args = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bluref-bench-data-")
    try:
        t0 = time.perf_counter()
        pairs = make_shards(work, args.height, args.width, args.frames)
        print(f"{args.frames} pairs at {args.width}x{args.height} in shards "
              f"({time.perf_counter() - t0:.0f}s to make)", flush=True)
        tc = TrainConfig(crop=args.crop, batch_size=args.batch,
                         crops_per_frame=args.crops_per_frame)
        print(f"{'CPUs':>4} {'read by':>22} {'crops/s':>8} {'per core':>9} "
              f"{'cores for ' + str(args.bare):>16}")
        for cpus in (int(c) for c in args.cpus.split(",")):
            for split in (False, True):
                r = crops_per_s(pairs, cpus, tc, args.batches, split, args.prefetch)
                how = "a worker's shard" if split else "the driver"
                print(f"{cpus:>4} {how:>22} {r:>8.1f} {r / cpus:>9.1f} "
                      f"{args.bare / (r / cpus):>16.1f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
