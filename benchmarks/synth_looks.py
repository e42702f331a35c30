"""Does the synthesizer hide what real footage shows? Labels and pseudo-GT per ``synth.look``.

    python benchmarks/synth_looks.py [--looks studio,dashcam] [--clips 3] [--frames 48]
        [--shake-px 14] [--matcher dis|learned] [--out /tmp/bluref-looks]

For each look it synthesizes the same clips (seed, scenes, shake and blur plan are shared; the
``dashcam`` look adds a forward surge, ground-plane parallax, exposure and white-balance drift
and compression), then measures what ``benchmarks/real_footage.py`` measures on real video:

1. ``bluref ingest`` of the videos: labels against the synthesizer's truth, references per
   blurry frame (N = 6, Δ = 10);
2. ``bluref pseudo-gt`` of the trees, with the physical check (the default) and without it:
   PSNR of the pseudo-sharp image and of the blurry frame on the confident pixels (τ = 0.7),
   and the coverage.

A synthesizer that shows real footage's failures makes the pseudo-GT without the check fall
below the blurry frame, as it does on real video (docs/results.md, "Real footage").
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time

import numpy as np

from bluref_ray import schema
from bluref_ray.config import Config, RayConfig, SynthConfig
from bluref_ray.data.synth import synthesize
from bluref_ray.demo import label_accuracy
from bluref_ray.pipeline.ingest import run_ingest
from bluref_ray.pipeline.pseudo_gt import run_pseudo_gt


def quality(out: str) -> dict:
    """Mean pseudo-GT and blurry PSNR over the pairs' confident pixels, and the coverage."""
    t = schema.read_table(f"{out}/shards", schema.PSEUDO_PAIRS,
                          columns=["psnr_pseudo", "psnr_blurry", "coverage"]).to_pylist()
    q = [r for r in t if r["psnr_pseudo"] is not None]
    p = float(np.mean([r["psnr_pseudo"] for r in q])) if q else float("nan")
    b = float(np.mean([r["psnr_blurry"] for r in q])) if q else float("nan")
    return {"pairs": len(t), "pseudo": p, "blurry": b, "gain": p - b,
            "coverage": float(np.mean([r["coverage"] for r in t])) if t else 0.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--looks", default="studio,dashcam")
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--shake-px", type=float, default=SynthConfig.shake_px,
                    help="shake travel during a blurry exposure (the synthesizer's default)")
    ap.add_argument("--matcher", default="dis", choices=("dis", "learned"),
                    help="pseudo-GT matcher (dis: the demo's)")
    ap.add_argument("--out", default="/tmp/bluref-looks")
    args = ap.parse_args(argv)
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    t0 = time.time()
    quiet = lambda _m: None  # noqa: E731
    base = Config(ray=RayConfig(num_cpus=os.cpu_count(), progress_bars=False))
    rows = []
    for look in args.looks.split(","):
        out = f"{args.out}/{look}"
        synth = SynthConfig(seed=5, train_clips=args.clips, test_clips=0, frames=args.frames,
                            shake_axis=90.0, shake_px=args.shake_px, look=look)
        synthesize(f"{out}/data", synth, log=quiet)
        run_ingest([f"{out}/data/videos"], f"{out}/ingest_videos", base, log=quiet)
        frames = schema.read_table(f"{out}/ingest_videos/frames", schema.FRAMES).to_pylist()
        refs = [len(r["references"]) for r in frames if r["role"] == "blurry"]
        run_ingest([f"{out}/data/train"], f"{out}/ingest_tree", base, log=quiet)
        row = {"look": look, "labelled right": label_accuracy(f"{out}/data",
                                                              f"{out}/ingest_videos", None),
               "refs per blurry": float(np.mean(refs)) if refs else 0.0}
        for check in (True, False):
            pg = dataclasses.replace(base.pseudo_gt, matcher=args.matcher, check=check)
            dst = f"{out}/pseudo_gt_{'check' if check else 'plain'}"
            run_pseudo_gt(f"{out}/ingest_tree", dst, dataclasses.replace(base, pseudo_gt=pg),
                          log=quiet)
            q = quality(dst)
            tag = "check" if check else "no check"
            row.update({"pairs": q["pairs"], f"gain ({tag})": q["gain"],
                        f"coverage ({tag})": q["coverage"], f"blurry PSNR ({tag})": q["blurry"]})
        rows.append(row)
        print(f"[{look}] done, {time.time() - t0:.0f}s", flush=True)
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(
            (f"{r[c]:.3f}" if c.startswith(("labelled", "coverage")) else f"{r[c]:.2f}")
            if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    text = "\n".join(lines) + (f"\n\n`python benchmarks/synth_looks.py --looks {args.looks} "
                               f"--clips {args.clips} --frames {args.frames} "
                               f"--shake-px {args.shake_px:g} --matcher {args.matcher}` "
                               f"({time.time() - t0:.0f} s)\n")
    with open(f"{args.out}/synth_looks.md", "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
