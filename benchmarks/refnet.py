"""Ref-NAFNet against the single-image NAFNet of the same width and budget, on held-out clips.

    python benchmarks/refnet.py [--out DIR] [--scale 1.0] [--stop-after STAGE]

Data (``bluref synth``, nothing downloaded): 6 train clips and 2 test clips of unseen photos,
48 frames of 180×320 each, camera protocol (a blurry frame's sharp twin is never recorded; its
references are the recorded frames around it). Stages, each resuming from its output in
``OUT``: synth → ingest (train and test clips) → pseudo-GT of the train clips (BluRef's
defaults) → four training runs through ``bluref train-ref`` with the same crops, loss and
budget: {NAFNet, Ref-NAFNet} × {ground truth, BluRef's pseudo-pairs} → eval on the test clips:
every model with the sharpest reference within ±30 frames, then the Ref-NAFNets with the
middle and the most blurry one (the paper's Table 5) and with a frame of the other test clip
(``shuffled``: the gain should vanish). ``--targets truth`` leaves out the pseudo-pair runs.
Prints one Markdown table and writes it to ``OUT/refnet.md``.

``--real DIR`` runs the same comparison on real footage instead: ``DIR`` is the output of
``python benchmarks/real_footage.py --train-steps N`` (its ``ingest_train``: the camera-like trees
of the development clips ``bikes`` and ``bigbuckbunny`` with their ground truth). NAFNet and
Ref-NAFNet train on them with the budget above (references within ±``--delta``, 10 frames) and
are scored on every blurry frame of the held-out ``carphone_pristine``; the table goes to
``OUT/refnet_real.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bluref_ray import storage
from bluref_ray.config import load_config
from bluref_ray.report import markdown_table

DATA = ["synth.seed=31", "synth.train_clips=6", "synth.test_clips=2"]
STAGES = ("synth", "ingest", "pseudo_gt", "train", "eval")
RULES = ("sharpest", "middle", "blurriest", "shuffled")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-refnet")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every step budget")
    p.add_argument("--width", choices=("tiny", "width32"), default="tiny",
                   help="backbone: nafnet-tiny (CPU) or nafnet-width32 (GPU)")
    p.add_argument("--targets", default="truth,pseudo",
                   help="which training targets to run and compare: truth, pseudo or both")
    p.add_argument("--stop-after", choices=STAGES, default="eval")
    p.add_argument("--real", metavar="DIR",
                   help="train and score on real footage: the output of benchmarks/real_footage.py")
    p.add_argument("--delta", type=int, default=10, help="with --real: references within ±Δ")
    args = p.parse_args()
    out = os.path.abspath(args.out)
    ray = ["ray.num_cpus=2", "ray.quiet=true", "ray.progress_bars=false"]

    def cfg(*overrides: str):
        return load_config(None, [*ray, *DATA, *overrides])

    if args.real:
        return real(os.path.abspath(args.real), out, args, cfg)

    log, t0 = print, time.time()
    from bluref_ray.data.synth import synthesize

    data = f"{out}/data"
    if not storage.exists(f"{data}/manifest.json"):
        synthesize(data, cfg().synth, log=lambda _m: None)
    log(f"[bench] synth done ({time.time() - t0:.0f}s)")
    if args.stop_after == "synth":
        return 0

    from bluref_ray.pipeline.ingest import run_ingest

    for split in ("train", "test"):
        if not storage.exists(f"{out}/ingest_{split}/summary.json"):
            run_ingest([f"{data}/{split}"], f"{out}/ingest_{split}", cfg(), log=lambda _m: None)
    log(f"[bench] ingest done ({time.time() - t0:.0f}s)")
    if args.stop_after == "ingest":
        return 0

    from bluref_ray.pipeline.pseudo_gt import run_pseudo_gt

    pairs = f"{out}/pseudo_gt"
    s = run_pseudo_gt(f"{out}/ingest_train", pairs, cfg(), log=lambda _m: None)
    log(f"[bench] pseudo-GT: {s.rows} pairs ({time.time() - t0:.0f}s)")
    if args.stop_after == "pseudo_gt":
        return 0

    from bluref_ray.training.refnet import train_ref

    steps = max(10, int(1200 * args.scale))
    budget = [f"refnet.steps={steps}", "refnet.log_every=100", "refnet.checkpoint_every=400",
              "refnet.val_every=400", f"refnet.val={out}/ingest_test", "refnet.val_frames=8"]
    runs, rates = {}, {}
    for net in ("nafnet", "refnafnet"):
        for target in args.targets.split(","):
            name = f"{net}_{target}"
            extra = [f"refnet.model={net}-{args.width}"]
            if target == "pseudo":
                extra.append(f"refnet.pairs={pairs}")
            r = train_ref(f"{out}/ingest_train", f"{out}/{name}", cfg(*budget, *extra),
                          log=log)
            with open(f"{out}/{name}/final.json") as f:  # written by the run's last step
                rates[name] = json.load(f).get("crops_per_s")
            runs[name] = r["model"]
            log(f"[bench] {name} done in {r['seconds']:.0f}s ({time.time() - t0:.0f}s)")
    if args.stop_after == "train":
        return 0

    from bluref_ray.evaluation import evaluate

    labels = {"nafnet_truth": "NAFNet, ground truth", "refnafnet_truth": "Ref-NAFNet, ground truth",
              "nafnet_pseudo": "NAFNet, BluRef pseudo-pairs",
              "refnafnet_pseudo": "Ref-NAFNet, BluRef pseudo-pairs"}
    table = []
    for rule in RULES:
        models = {labels[k]: v for k, v in runs.items()
                  if rule == "sharpest" or k.startswith("refnafnet")}
        ev = evaluate(models, [f"{data}/test"], f"{out}/eval_{rule}", cfg(), max_frames=24,
                      reference=rule, log=lambda _m: None)
        for m in ev["methods"]:
            if m["method"] == "blurry" and rule != "sharpest":
                continue
            ref = rule if m["method"].startswith("Ref-") else "–"
            table.append({**m, "reference": ref,
                          "crops_per_s": next((rates[k] for k, v in labels.items()
                                               if v == m["method"]), None)})
    base = {m["method"].split(",")[1].strip(): m["psnr"] for m in table
            if m["method"].startswith("NAFNet")}
    for m in table:
        kind = m["method"].split(",")[1].strip() if "," in m["method"] else None
        m["gain"] = m["psnr"] - base[kind] if kind in base else None
    cols = [("method", "model, trained on", "{}"), ("reference", "reference at test", "{}"),
            ("psnr", "PSNR (dB)", "{:.2f}"), ("gain", "vs NAFNet (dB)", "{:+.2f}"),
            ("ssim", "SSIM", "{:.4f}"), ("frames", "frames", "{}"),
            ("crops_per_s", "training crops/s", "{:.1f}")]
    md = "\n".join([f"# Ref-NAFNet vs NAFNet ({args.width}, {steps} steps of 8 crops of 64²)",
                    "", markdown_table(table, cols), ""])
    print(md)
    with open(f"{out}/refnet.md", "w") as f:
        f.write(md)
    with open(f"{out}/refnet.json", "w") as f:
        json.dump({"rows": table, "runs": runs}, f, indent=1, default=str)
    log(f"[bench] done in {time.time() - t0:.0f}s")
    return 0


def real(src: str, out: str, args, cfg) -> int:
    """NAFNet and Ref-NAFNet trained on the development clips' ground truth, scored on the
    held-out real clip with the sharpest and the most blurry reference within ±Δ."""
    from bluref_ray.evaluation import evaluate
    from bluref_ray.training.refnet import train_ref

    if not storage.exists(f"{src}/ingest_train/summary.json"):
        raise SystemExit(f"{src}/ingest_train/summary.json is missing: run "
                         f"python benchmarks/real_footage.py --out {src} --train-steps 900 first")
    held = f"{src}/camera/carphone_pristine"
    steps = max(10, int(1200 * args.scale))
    budget = [f"refnet.steps={steps}", "refnet.log_every=100", "refnet.checkpoint_every=400",
              f"refnet.delta={args.delta}"]
    runs, rates = {}, {}
    for net, label in (("nafnet", "NAFNet"), ("refnafnet", "Ref-NAFNet")):
        r = train_ref(f"{src}/ingest_train", f"{out}/{net}_real",
                      cfg(*budget, f"refnet.model={net}-{args.width}"), log=print)
        with open(f"{out}/{net}_real/final.json") as f:
            rates[label] = json.load(f).get("crops_per_s")
        runs[label] = r["model"]
    table = []
    for rule in ("sharpest", "blurriest"):
        models = {k: v for k, v in runs.items() if rule == "sharpest" or k.startswith("Ref-")}
        ev = evaluate(models, [held], f"{out}/eval_real_{rule}", cfg(), max_frames=None,
                      reference=rule, delta=args.delta, log=lambda _m: None)
        table += [{**m, "reference": rule if m["method"].startswith("Ref-") else "–",
                   "crops_per_s": rates.get(m["method"])}
                  for m in ev["methods"] if rule == "sharpest" or m["method"] != "blurry"]
    base = next(m["psnr"] for m in table if m["method"] == "NAFNet")
    for m in table:
        m["gain"] = m["psnr"] - base if m["method"] != "blurry" else None
    cols = [("method", "model (ground truth of bikes, bigbuckbunny)", "{}"),
            ("reference", f"reference at test (±{args.delta})", "{}"),
            ("psnr", "PSNR (dB)", "{:.2f}"), ("gain", "vs NAFNet (dB)", "{:+.2f}"),
            ("ssim", "SSIM", "{:.4f}"), ("frames", "frames", "{}"),
            ("crops_per_s", "training crops/s", "{:.1f}")]
    title = f"# Ref-NAFNet vs NAFNet on held-out real footage ({args.width}, {steps} steps)"
    md = "\n".join([title, "", markdown_table(table, cols), ""])
    print(md)
    with open(f"{out}/refnet_real.md", "w") as f:
        f.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
