"""Blur2Blur on two synthetic blur domains: the gap, kernel transfer, and how much of the gap the
translator closes.

    python benchmarks/blur2blur.py [--out DIR] [--scale 1.0] [--stop-after STAGE]

Two domains that ``bluref synth`` makes (nothing is downloaded):

* **known**: hand-held shake in any direction, ``shake_px`` 14, k 7–13 (the synthesizer's
  defaults); a NAFNet trained supervised on it is the known-domain deblurrer;
* **unknown** (the "camera"): shake along one axis (horizontal ± 10°) twice as long
  (``shake_px`` 30), other photos and seeds. Its train clips are the camera's video (ingested,
  labelled, split by clip 6:4 into blurry and sharp scenes); its test clips, with ground truth,
  are where every row is scored.

Stages (each resumes from its output in ``OUT``): synth → known deblurrer and the oracle (the
same network and budget, supervised on the unknown domain) → kernel extractor → ingest of the
camera's videos → translator (Blur2Blur) and the control without the adversarial loss → eval.
It prints one Markdown table per experiment and writes them to ``OUT/blur2blur.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from bluref_ray import storage
from bluref_ray.config import load_config
from bluref_ray.report import markdown_table

KNOWN = ["synth.seed=11", "synth.train_clips=4", "synth.test_clips=1"]
UNKNOWN = ["synth.seed=23", "synth.train_clips=6", "synth.test_clips=2", "synth.shake_axis=0",
           "synth.shake_spread=10", "synth.shake_px=30"]
STAGES = ("synth", "deblurrers", "kernel", "ingest", "blur2blur", "eval")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-blur2blur")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every step budget")
    p.add_argument("--stop-after", choices=STAGES, default="eval")
    args = p.parse_args()
    out = os.path.abspath(args.out)
    ray = ["ray.num_cpus=2", "ray.quiet=true", "ray.progress_bars=false"]

    def cfg(*overrides: str):
        return load_config(None, [*ray, *overrides])

    def steps(n: int) -> str:
        return str(max(10, int(n * args.scale)))

    log = print
    known, unknown = f"{out}/known", f"{out}/unknown"
    t0 = time.time()
    from bluref_ray.data.synth import synthesize

    for root, settings in ((known, KNOWN), (unknown, UNKNOWN)):
        if not storage.exists(f"{root}/manifest.json"):
            synthesize(root, cfg(*settings).synth, log=lambda _m: None)
    log(f"[bench] synth done ({time.time() - t0:.0f}s)")
    if args.stop_after == "synth":
        return 0

    from bluref_ray.training.deblur import train_deblurrer

    sup = ["train.supervised=true", f"train.steps={steps(1200)}", "train.crop=64",
           "train.val_every=400", "train.log_every=100", "train.checkpoint_every=400"]
    deblur_known = train_deblurrer(f"{known}/train", f"{out}/deblur_known",
                                   cfg(*sup, f"train.val={known}/test"), log=log).model
    oracle = train_deblurrer(f"{unknown}/train", f"{out}/deblur_oracle",
                             cfg(*sup, f"train.val={unknown}/test"), log=log).model
    log(f"[bench] deblurrers done ({time.time() - t0:.0f}s)")
    if args.stop_after == "deblurrers":
        return 0

    from bluref_ray.training.kernel import train_kernel

    kernel = train_kernel(f"{known}/train", f"{out}/kernel",
                          cfg(f"kernel.steps={steps(1500)}", "kernel.log_every=100",
                              "kernel.val_every=500", "kernel.checkpoint_every=500"), log=log)
    log(f"[bench] kernel extractor done ({time.time() - t0:.0f}s)")
    if args.stop_after == "kernel":
        return 0

    from bluref_ray.pipeline.ingest import run_ingest

    camera = f"{out}/camera"
    run_ingest([f"{unknown}/videos/train"], camera, cfg(), log=lambda _m: None)
    if args.stop_after == "ingest":
        return 0

    from bluref_ray.training.blur2blur import train_blur2blur

    b2b = [f"blur2blur.known={known}/train", f"blur2blur.kernel={kernel['model']}",
           f"blur2blur.deblurrer={deblur_known}", f"blur2blur.val={unknown}/test",
           f"blur2blur.steps={steps(2000)}", "blur2blur.log_every=100",
           "blur2blur.val_every=500", "blur2blur.checkpoint_every=500"]
    runs = {"blur2blur": train_blur2blur(camera, f"{out}/b2b", cfg(*b2b), log=log),
            "no adversarial loss": train_blur2blur(camera, f"{out}/b2b_noadv",
                                                   cfg(*b2b, "blur2blur.adversarial=0"),
                                                   log=log)}
    log(f"[bench] translators done ({time.time() - t0:.0f}s)")
    if args.stop_after == "blur2blur":
        return 0

    from bluref_ray.evaluation import evaluate

    models = {"known deblurrer (identity translator)": deblur_known,
              "Blur2Blur: translator → known deblurrer": runs["blur2blur"]["model"],
              "translator without adversarial loss → known deblurrer":
                  runs["no adversarial loss"]["model"],
              "oracle (supervised on the camera's blur)": oracle}
    ev = evaluate(models, [f"{unknown}/test"], f"{out}/eval", cfg(), max_frames=None,
                  log=lambda _m: None)
    rows = {m["method"]: m for m in ev["methods"]}
    base = rows["known deblurrer (identity translator)"]["psnr"]
    gap = rows["oracle (supervised on the camera's blur)"]["psnr"] - base
    table = []
    for m in ev["methods"]:
        run = next((r for k, r in runs.items() if models.get(m["method"]) == r["model"]), None)
        table.append({**m, "recovered": (m["psnr"] - base) / gap if gap > 0 else None,
                      "psnr_io": run["val"]["psnr_io"] if run and run["val"] else None})
    cols = [("method", "method on the unknown-blur test clips", "{}"),
            ("psnr", "PSNR (dB)", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"),
            ("recovered", "share of the oracle gap recovered", "{:.0%}"),
            ("psnr_io", "PSNR(G(x), x) (dB)", "{:.2f}"), ("frames", "frames", "{}")]
    text = [f"# Blur2Blur on synthetic domains (scale {args.scale})", "",
            f"Oracle gap: {gap:.2f} dB.", "", markdown_table(table, cols), "",
            transfer_table(known, unknown, kernel, deblur_known), ""]
    md = "\n".join(text)
    print(md)
    with open(f"{out}/blur2blur.md", "w") as f:
        f.write(md)
    with open(f"{out}/blur2blur.json", "w") as f:
        json.dump({"gap": gap, "rows": table, "kernel": kernel["val"],
                   "runs": {k: r["val"] for k, r in runs.items()}}, f, indent=1, default=str)
    log(f"[bench] done in {time.time() - t0:.0f}s")
    return 0


@torch.no_grad()
def transfer_table(known: str, unknown: str, kernel: dict, deblurrer: str) -> str:
    """Kernel transfer: the extractor remaking held-out known blurry frames, and the known
    deblurrer on real known-blur frames against frames blurred by transfer (the unknown
    domain's sharp truth blurred by codes of held-out known pairs)."""
    from bluref_ray.data.domains import known_pairs, read_images
    from bluref_ray.data.images import to_float
    from bluref_ray.models import load_checkpoint
    from bluref_ray.training.blur2blur import psnr

    wizard = load_checkpoint(kernel["model"])[0]
    net = load_checkpoint(deblurrer)[0]
    held = known_pairs(f"{known}/test", None)[::2]
    targets = [s for _, s in known_pairs(f"{unknown}/test", None)][::2][:len(held)]
    real, transferred, blurry_real, blurry_t = [], [], [], []
    for (b_uri, s_uri), t_uri in zip(held, targets):
        b, s, t = (to_float(x, "cpu") for x in read_images([b_uri, s_uri, t_uri], None))
        code = wizard.encode(s, b)
        moved = wizard.apply(t, code)
        blurry_real.append(psnr(b, s))
        real.append(psnr(net(b).clamp(0, 1), s))
        blurry_t.append(psnr(moved, t))
        transferred.append(psnr(net(moved).clamp(0, 1), t))
    rows = [{"set": "real known-blur frames (held-out clip)", "blurry": np.mean(blurry_real),
             "deblurred": np.mean(real), "frames": len(real)},
            {"set": "unknown-domain truth blurred by transfer", "blurry": np.mean(blurry_t),
             "deblurred": np.mean(transferred), "frames": len(transferred)}]
    cols = [("set", "known deblurrer on", "{}"), ("blurry", "blurry PSNR (dB)", "{:.2f}"),
            ("deblurred", "deblurred PSNR (dB)", "{:.2f}"), ("frames", "frames", "{}")]
    v = kernel["val"] or {}
    return (f"Kernel extractor: held-out known blurry frames remade at {v.get('psnr', 0):.2f} "
            f"dB (their sharp frames: {v.get('psnr_sharp', 0):.2f} dB).\n\n"
            + markdown_table(rows, cols))


if __name__ == "__main__":
    sys.exit(main())
