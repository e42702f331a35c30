"""``bluref demo``: the whole method on one machine, on data it synthesizes.

Stages (Ray started in-process):

1. synthesize a GoPro-protocol dataset: train and test clips, as videos and as frame trees
   with ground truth (:mod:`bluref_ray.data.synth`);
2. ingest the videos (sharpness labels, checked against the synthesizer's truth) and the train
   and test frame trees (:mod:`bluref_ray.pipeline.ingest`);
3. pseudo-GT of the test frames, only to show them beside the results;
4. BluRef: ``refine.rounds`` rounds of pseudo-GT + masked training on the train clips
   (:mod:`bluref_ray.refine`), validated on the test clips;
5. the supervised upper bound: the same network and the same number of steps, trained on the
   ground truth of the same frames;
6. evaluation on the held-out test clips (:mod:`bluref_ray.evaluation`) and one table.

Everything lands in ``OUT`` (default ``./bluref-demo``); the report is ``OUT/eval/report.html``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable

from bluref_ray import storage
from bluref_ray.config import Config

#: The demo's budget, sized to finish within 15 minutes on 2 CPU cores. Each can be changed
#: with ``--set section.key=value`` (these come first, so user settings win).
DEMO_SETTINGS = [
    # the synthesizer's shake (14 px), along one axis as a vehicle-mounted camera's
    "synth.shake_axis=90", "synth.test_clips=2",
    "train.steps=900", "train.crop=64", "train.lr=4e-3",
    # two DDP workers of one thread each: 61.5 crops/s of 64² on 2 cores, against 52.9 for one
    # worker of two threads; half a CPU each in Ray leaves one for the Ray Data tasks
    "train.workers=2", "train.cpus_per_worker=0.5", "train.threads=1",
    "train.val_frames=8", "train.val_every=1000", "train.checkpoint_every=300",
    "train.log_every=100", "refine.rounds=2", "refine.steps_later=450",
    # the classical matcher: on 2 CPU cores the learned one (the default elsewhere) adds about
    # 2 minutes, and its deblurrer came out level with this one's in the demo (README)
    "pseudo_gt.matcher=dis",
]

TABLE = [("method", "method", "{}"), ("psnr", "test PSNR (dB)", "{:.2f}"),
         ("ssim", "test SSIM", "{:.4f}"), ("niqe", "test NIQE", "{:.2f}"),
         ("pseudo_psnr", "pseudo-GT PSNR (train, confident px)", "{:.2f}"),
         ("coverage", "pseudo-GT coverage", "{:.3f}"), ("steps", "steps", "{}")]


def run_demo(out: str, cfg: Config, log: Callable[[str], None] = print) -> dict:
    """Run stages 1-6; returns ``{"table": rows, "report": URI, "label_accuracy", ...}``."""
    from bluref_ray.data.synth import synthesize
    from bluref_ray.evaluation import evaluate
    from bluref_ray.pipeline.ingest import run_ingest
    from bluref_ray.pipeline.pseudo_gt import run_pseudo_gt
    from bluref_ray.refine import run_refine
    from bluref_ray.report import markdown_table, round_plot
    from bluref_ray.training.deblur import train_deblurrer

    t0 = time.time()
    out = storage.normalize(out)
    sc = cfg.storage
    data = storage.join(out, "data")
    log(f"[demo] 1/6 synthesizing a GoPro-protocol dataset → {data}")
    synthesize(data, cfg.synth, sc, log=log)
    log("[demo] 2/6 ingesting the videos and the frame trees with Ray Data")
    ingest = {name: run_ingest([storage.join(data, src)], storage.join(out, "ingest", name), cfg,
                               log=log)
              for name, src in (("videos", "videos"), ("train", "train"), ("test", "test"))}
    accuracy = label_accuracy(data, storage.join(out, "ingest", "videos"), sc)
    log("[demo] 3/6 pseudo-GT of the test frames (shown beside the results)")
    run_pseudo_gt(storage.join(out, "ingest", "test"), storage.join(out, "pseudo_gt_test"), cfg,
                  log=log)
    test = storage.join(data, "test")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, val=test))
    log(f"[demo] 4/6 BluRef: {cfg.refine.rounds} rounds of pseudo-GT + training")
    refined = run_refine(storage.join(out, "ingest", "train"), storage.join(out, "refine"), cfg,
                         log=log)
    rounds = refined["rounds"]
    budget = sum(_steps(cfg, r["round"]) for r in rounds)
    log(f"[demo] 5/6 supervised upper bound: the same network, {budget} steps on ground truth")
    sup_cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, supervised=True, steps=budget))
    supervised = train_deblurrer(storage.join(out, "refine", "round_1", "pseudo_gt"),
                                 storage.join(out, "supervised"), sup_cfg, log=log)
    log("[demo] 6/6 evaluating on the held-out test clip(s)")
    models = {f"BluRef round {r['round']}": r["model"] for r in rounds}
    models["supervised"] = supervised.model
    ev = evaluate(models, [test], storage.join(out, "eval"), cfg,
                  pairs=storage.join(out, "pseudo_gt_test"), max_frames=None, log=log)
    by_method = {m["method"]: m for m in ev["methods"]}
    table = [{**by_method["blurry"], "method": "blurry input"}]
    for r in rounds:
        m = by_method[f"BluRef round {r['round']}"]
        table.append({**m, "pseudo_psnr": r["pseudo_psnr"], "coverage": r["coverage"],
                      "steps": sum(_steps(cfg, k) for k in range(1, r["round"] + 1))})
    table.append({**by_method["supervised"], "steps": budget})
    round_plot([r["round"] for r in rounds], {
        "BluRef (test)": [by_method[f"BluRef round {r['round']}"]["psnr"] for r in rounds],
        "pseudo-GT (train, confident px)": [r["pseudo_psnr"] for r in rounds]},
        storage.join(out, "eval", "rounds.png"), sc, title="bluref demo: PSNR per round",
        references={"supervised, same budget": by_method["supervised"]["psnr"],
                    "blurry input": by_method["blurry"]["psnr"]})
    summary = {"table": table, "label_accuracy": accuracy, "seconds": time.time() - t0,
               "report": ev["report"], "ingest": ingest, "rounds": rounds,
               "markdown": markdown_table(table, TABLE)}
    storage.write_text(storage.join(out, "demo.json"), json.dumps(summary, indent=1, default=str),
                       sc)
    _demo_report(out, summary, cfg)
    return summary


def _steps(cfg: Config, k: int) -> int:
    return cfg.train.steps if k == 1 else (cfg.refine.steps_later or cfg.train.steps)


def _demo_report(out: str, summary: dict, cfg: Config) -> None:
    """Prepend the demo's table and per-round plot to the evaluation report."""
    from bluref_ray.report import write_report

    ev = storage.join(out, "eval")
    names = sorted(f for f in (storage.basename(u) for u in storage.list_files(ev, cfg.storage))
                   if f.startswith("grid_"))
    write_report(ev, "bluref demo", [
        {"heading": "Results on the held-out test clip(s)", "rows": summary["table"],
         "columns": TABLE,
         "text": "BluRef rounds and the supervised model use the same network; the supervised "
                 "one trains as many steps as all BluRef rounds together, on ground truth. "
                 "Pseudo-GT PSNR is measured on the training clips, on confident pixels."},
        {"heading": "Per round", "images": [("rounds.png", "PSNR per refinement round")]},
        {"heading": "Images", "images": [(n, "blurry | pseudo-sharp | models | truth")
                                         for n in names]},
    ], cfg.storage)


def label_accuracy(data: str, ingest_out: str, storage_cfg) -> float:
    """Share of video frames whose ingest label matches the synthesizer's manifest."""
    from bluref_ray import schema

    manifest = json.loads(storage.read_text(storage.join(data, "manifest.json"), storage_cfg))
    truth = {(c["video"], f["index"]): f["blurry"] for c in manifest["clips"] for f in c["frames"]}
    t = schema.read_table(storage.join(ingest_out, "frames"), schema.FRAMES, storage_cfg,
                          columns=["source_uri", "frame_index", "role"]).to_pylist()
    hits = [truth.get((storage.relative(r["source_uri"], data), r["frame_index"])) ==
            (r["role"] == "blurry") for r in t]
    return sum(hits) / max(len(hits), 1)
