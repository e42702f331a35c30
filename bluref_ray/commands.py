"""What each ``bluref`` subcommand does: read its settings, call one library function (the one
``jobs/`` also calls), print the result. The options themselves are in :mod:`bluref_ray.cli`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bluref_ray import storage
from bluref_ray.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from bluref_ray.pipeline.pseudo_gt import PseudoGTSummary


def _config(args: argparse.Namespace) -> Config:
    """Defaults < --config FILE < --set KEY=VALUE < explicit options."""
    explicit = [f"{k}={v}" for k, v in vars(args).items() if "." in k]
    quiet = ["ray.quiet=true"] if getattr(args, "quiet", False) else []
    return load_config(args.config, [*args.overrides, *explicit, *quiet])


def _log(args: argparse.Namespace) -> Callable[[str], None]:
    if getattr(args, "quiet", False):
        return lambda _msg: None
    return lambda msg: print(msg, flush=True)


def cmd_synth(args: argparse.Namespace) -> int:
    """Make a GoPro-protocol dataset with ground truth.

    Synthesize clips by the GoPro protocol: a high-frame-rate sharp stream (real photos through
    a virtual hand-held camera with moving objects, or a video you give) whose frames are
    averaged in linear light into blurry frames. Writes videos, a {blur,sharp} frame tree and a
    manifest.
    """
    from bluref_ray.data.synth import synthesize

    cfg = _config(args)
    t0 = time.time()
    manifest = synthesize(args.out, cfg.synth, cfg.storage, log=_log(args))
    n = sum(len(c["frames"]) for c in manifest["clips"])
    nb = sum(f["blurry"] for c in manifest["clips"] for f in c["frames"])
    print(f"synthesized {len(manifest['clips'])} clips, {n} frames ({nb} blurry) in "
          f"{time.time() - t0:.1f}s → {storage.normalize(args.out)}")
    if cfg.synth.write_frames:
        print(f"  frame trees: {storage.join(args.out, '{train,test}/<seq>/{blur,sharp}')}")
    if cfg.synth.write_videos:
        print(f"  videos:      {storage.join(args.out, 'videos')}")
    print(f"  manifest:    {storage.join(args.out, 'manifest.json')}")
    return 0


def _print_ingest(summary: dict) -> None:
    run = summary.get("this_run") or {}
    resumed = f" ({run['skipped']} done by an earlier run)" if run.get("skipped") else ""
    print(f"ingested {summary['clips']} clips{resumed}: {summary['frames']} frames "
          f"({summary['blurry']} blurry, {summary['sharp']} sharp), "
          f"{summary['mean_references']:.2f} references per blurry frame "
          f"({', '.join(f'{n} clips {p}' for p, n in summary['protocols'].items())} protocol), "
          f"{summary['rejects']} rejects, {summary['seconds']:.1f}s")
    print(f"  frames table:  {summary['frames_table']}")
    print(f"  rejects table: {summary['rejects_table']}")
    for uri in summary["rejected_files"][:10]:
        print(f"  rejected: {uri}")


def cmd_ingest(args: argparse.Namespace) -> int:
    """Decode, score sharpness, pick references (Ray Data).

    Ingest videos and frame trees with Ray Data: decode every frame, score sharpness (variance
    of the Laplacian and the FFT score), label blurry/sharp, and pick up to N sharp references
    within ±Δ frames of each blurry frame. Writes OUT/frames/ and OUT/rejects/ (Parquet) and
    OUT/summary.json. An interrupted run resumes where it stopped.
    """
    from bluref_ray.pipeline.ingest import run_ingest

    cfg = _config(args)
    summary = run_ingest(args.sources, args.out, cfg, log=_log(args))
    _print_ingest(summary)
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    """Merge the many small Parquet files of ingest and pseudo-GT outputs.

    Every clip of `bluref ingest` and every window of `bluref pseudo-gt` writes a small Parquet
    file, which also marks it done for a resumed run. A fleet's millions of them slow every
    later listing and read: this merges them into parts of about --part-mib MiB, whose footers
    list the units they hold, so resumed runs still skip them and every reader sees each row
    once. OUTPUT: an ingest output (frames/, rejects/), a pseudo-GT output (shards/,
    rejects/) or one table folder. Safe to kill and run again. It holds OUTPUT as a writer does
    (refused while a job writes it); do not run it while a job reads OUTPUT.
    """
    from bluref_ray import tables
    from bluref_ray.writer import exclusive_output

    cfg = _config(args)
    storage_cfg = cfg.storage.resolved()
    log = _log(args)
    for target in args.outputs:
        folders = tables.table_folders(target, storage_cfg)
        # one table folder (OUT/frames): the job that writes it holds its output, OUT
        holder = storage.parent(folders[0]) if folders == [storage.normalize(target)] and \
            storage.basename(folders[0]) in tables.TABLE_FOLDERS else target
        with exclusive_output(holder, storage_cfg, f"bluref compact {target}"):
            done = [(f, tables.compact(f, storage_cfg, part_mib=args.part_mib, log=log))
                    for f in folders]
        for folder, r in done:
            print(f"{folder}: {r.files_before} → {r.files_after} files ({r.files_merged} merged "
                  f"into {r.parts_written} parts, {r.rows} rows; {r.leftovers_deleted} "
                  "leftovers of an interrupted compaction deleted)")
    return 0


def _print_pseudo_gt(s: PseudoGTSummary) -> None:
    print(f"pseudo-GT: {s.rows} pairs, {s.rejected} rejected, mean coverage "
          f"{s.mean_coverage:.3f}, {s.mean_refs_used:.2f} references matched per frame, "
          f"{s.seconds:.1f}s")
    if s.quality:
        q = s.quality
        print(f"  quality on {q.frames_with_gt} frames with ground truth, confident pixels: "
              f"pseudo-GT {q.psnr_pseudo:.2f} dB, blurry {q.psnr_blurry:.2f} dB")
    for reason, n in s.reject_reasons.items():
        print(f"  rejected {n}: {reason}")
    print(f"  shards:  {storage.join(s.out, 'shards')}")
    print(f"  summary: {storage.join(s.out, 'summary.json')}")


def cmd_pseudo_gt(args: argparse.Namespace) -> int:
    """Match and fuse references into pseudo-sharp frames.

    Make BluRef pseudo-pairs with Ray Data: for every blurry frame of a frames table, match its
    references (an actor pool, on GPUs when the cluster has them), fuse them into a pseudo-sharp
     image with a confidence map, and write Parquet shards (PNG bytes) to OUT/shards/,
    rejects to OUT/rejects/, and OUT/summary.json. An interrupted run resumes.
    """
    from bluref_ray.pipeline.pseudo_gt import run_pseudo_gt

    cfg = _config(args)
    _print_pseudo_gt(run_pseudo_gt(args.frames, args.out, cfg, log=_log(args)))
    return 0


def _numbers(text: str | None, flag: str, kind: type) -> list | None:
    """``"1,2,4"`` → ``[1, 2, 4]`` (None stays None); a clear error for anything else."""
    if text is None:
        return None
    try:
        return [kind(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected comma-separated numbers") from None


def cmd_pseudo_gt_quality(args: argparse.Namespace) -> int:
    """Pseudo-GT quality per fusion strategy and N (needs ground truth).

    Run pseudo-GT for each fusion strategy and reference count N on data with ground truth
    (synthesized, or GoPro-style trees), and tabulate PSNR of the pseudo-sharp image and of the
    blurry frame inside the confident region, and coverage. Writes OUT/quality.md and
    OUT/quality.json.
    """
    from bluref_ray.pipeline.quality import quality_markdown, quality_table

    cfg = _config(args)
    refs, taus = _numbers(args.refs, "--refs", int), _numbers(args.taus, "--taus", float)
    strategies = args.strategies.split(",")
    for s in strategies:
        dataclasses.replace(cfg.pseudo_gt, strategy=s).validate()
    results = quality_table(args.frames, args.out, cfg, strategies, refs, log=_log(args),
                            taus=taus)
    print(quality_markdown(results, cfg.pseudo_gt))
    print(f"written: {storage.join(args.out, 'quality.md')} and quality.json")
    return 0


def cmd_train_matcher(args: argparse.Namespace) -> int:
    """Train the learned dense matcher (Ray Train, DDP).

    Train the dense matcher without real pairs: synthetic warps (homography, thin-plate spline,
    elastic) of real photos, with BSRGAN-style blur, noise and JPEG on the target. Ray Train
    DDP (gloo on CPUs, NCCL on GPUs); checkpoints in OUT/ray-train/, TensorBoard logs in
    OUT/tensorboard/, the final model in OUT/matcher.pt. Run it again with the same --out to
    resume.
    """
    from bluref_ray.training.matcher import train_matcher

    cfg = _config(args)
    path = train_matcher(args.out, cfg, log=_log(args),
                         command="bluref " + " ".join(args.argv))
    print(f"matcher checkpoint: {path}")
    print(f"TensorBoard: tensorboard --logdir {storage.join(args.out, 'tensorboard')}")
    return 0


def cmd_eval_matcher(args: argparse.Namespace) -> int:
    """Learned matcher vs the classical baseline.

    Evaluate the learned matcher and the DIS baseline on the same held-out synthetic pairs,
    with and without blur: AEPE, PCK-1/3/5, AUSE (how well confidence ranks errors),
    calibration error, coverage; the network alone, and with --dis-refine (the default) also
    refined by DIS. With --frames, also the pseudo-GT quality of both matchers, as configured,
    on data with ground truth.
    """
    from bluref_ray.matching import matcher_from_config
    from bluref_ray.matching.evaluate import evaluate, markdown
    from bluref_ray.pipeline.quality import quality_markdown, quality_table

    cfg = _config(args)
    pg = cfg.pseudo_gt
    # the pairs table measures the network alone, and refined (by DIS, on the CPU or in PyTorch)
    # when that is on
    net = dataclasses.replace(pg, matcher_radius=args.pairs_radius, dis_refine=False)
    matchers = {"learned": matcher_from_config(net, "learned", cfg.storage)}
    if pg.dis_refine:
        name = "learned+torch-dis" if pg.refiner == "torch" else "learned+dis"
        matchers[name] = matcher_from_config(dataclasses.replace(net, dis_refine=True),
                                             "learned", cfg.storage)
    matchers["dis"] = matcher_from_config(pg, "dis", cfg.storage)
    radius = matchers["learned"].net.radius_px
    log = _log(args)
    log(f"[eval-matcher] {args.pairs} held-out pairs per condition, {pg.matcher_checkpoint}")
    results = evaluate(matchers, pairs=args.pairs, size=args.size, tau=pg.tau, radius_px=radius)
    table = markdown(results, pg.tau, radius)
    storage.write_text(storage.join(args.out, "matcher_eval.json"),
                       json.dumps(results, indent=1), cfg.storage)
    storage.write_text(storage.join(args.out, "matcher_eval.md"), table, cfg.storage)
    print(table)
    if args.frames:
        refs, taus = _numbers(args.refs, "--refs", int), _numbers(args.taus, "--taus", float)
        rows = quality_table(args.frames, storage.join(args.out, "pseudo_gt"), cfg,
                             [pg.strategy], refs, log=log, matchers=["learned", "dis"],
                             taus=taus)
        print(quality_markdown(rows, pg))
    print(f"written: {storage.join(args.out, 'matcher_eval.md')}"
          + (f" and {storage.join(args.out, 'pseudo_gt', 'quality.md')}" if args.frames else ""))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train the deblurrer on pseudo-pairs (Ray Train, DDP).

    Train a deblurrer (NAFNet or Restormer) on the pseudo-pairs of `bluref pseudo-gt`, with the
    loss masked where the pseudo-GT confidence is below τ (BluRef), or on the ground truth with
    --supervised. Ray Train DDP (gloo on CPUs, NCCL and bfloat16 autocast on GPUs), data
    streamed by Ray Data with random crops and flips. Writes OUT/model.pt, checkpoints in
    OUT/ray-train/ and TensorBoard logs; run it again with the same --out to resume.
    """
    from bluref_ray.training.deblur import train_deblurrer
    from bluref_ray.training.validation import describe_validation

    cfg = _config(args)
    s = train_deblurrer(args.pairs, args.out, cfg, log=_log(args),
                        command="bluref " + " ".join(args.argv))
    print(f"trained {s.steps} steps in {s.seconds:.0f}s → {s.model}")
    if s.val:
        print(f"  validation: {describe_validation(s.val)}")
    print(f"  TensorBoard: tensorboard --logdir {storage.join(args.out, 'tensorboard')}")
    return 0


def cmd_train_kernel(args: argparse.Namespace) -> int:
    """Train Blur2Blur's blur-kernel extractor on known pairs (Ray Train, DDP).

    Blur2Blur's kernel extractor: an encoder F reads a blur code from a (sharp, blurry) pair of
    the known domain, a generator G applies it to a sharp image; trained together with a
    Charbonnier loss on crops of the known pairs (GoPro-style trees, e.g. from `bluref synth`).
    The last clip is held out: validation remakes its blurry frames from their sharp ones.
    Writes OUT/model.pt (for blur2blur.kernel); run again with the same --out to resume.
    """
    from bluref_ray.training.kernel import train_kernel

    cfg = _config(args)
    r = train_kernel(args.known, args.out, cfg, log=_log(args),
                     command="bluref " + " ".join(args.argv))
    print(f"kernel extractor: {r['steps']} steps → {r['model']}")
    if r["val"]:
        print(f"  held-out blurry frames remade at {r['val']['psnr']:.2f} dB (their sharp "
              f"frames: {r['val']['psnr_sharp']:.2f} dB)")
    return 0


def cmd_blur2blur(args: argparse.Namespace) -> int:
    """Train Blur2Blur's translator from the camera's blur to a known blur (Ray Train, DDP).

    Blur2Blur: learn a translator (MIMO-UNet) from the camera's blurry frames to a known blur
    that a deblurrer handles, against a multi-scale PatchGAN judging a known-blur set made
    from the camera's own sharp frames by kernel transfer (blur2blur.kernel, from `bluref
    train-kernel`, with codes of blur2blur.known pairs). FRAMES is `bluref ingest`'s output on
    the camera's video; its clips are split into blurry and sharp scenes. Writes
    OUT/translator.pt and, with blur2blur.deblurrer, OUT/model.pt (translator → deblurrer) for
    `bluref deblur` and `bluref eval`; `A.pt+B.pt` chains any two checkpoints there (e.g. the
    translator and a BluRef-trained deblurrer). Run again with the same --out to resume.
    """
    from bluref_ray.training.blur2blur import train_blur2blur

    cfg = _config(args)
    r = train_blur2blur(args.frames, args.out, cfg, log=_log(args),
                        command="bluref " + " ".join(args.argv))
    print(f"translator: {r['steps']} steps → {r['translator']}")
    if r["model"]:
        print(f"translator → deblurrer: {r['model']}")
    if r["val"]:
        v = r["val"]
        print(f"  validation: deblurrer {v['psnr_direct']:.2f} dB direct, {v['psnr']:.2f} dB "
              f"through the translator (PSNR(G(x), x) {v['psnr_io']:.2f} dB)")
    print(f"TensorBoard: tensorboard --logdir {storage.join(args.out, 'tensorboard')}")
    return 0


def cmd_train_ref(args: argparse.Namespace) -> int:
    """Train Ref-NAFNet, a deblurrer that also reads a sharp reference frame (Ray Train, DDP).

    Ref-NAFNet (Zou et al.): NAFNet whose decoder matches its estimate at 1/4, 1/2 and full
    scale to a sharp reference frame and fuses the reference's features where they match.
    Trains on (blurry, reference, target) triplets of FRAMES (`bluref ingest` output): the
    reference is the sharpest frame within ±refnet.delta (refnet.reference), the target the
    ground truth or, with --pairs (a `bluref pseudo-gt` output), BluRef's pseudo-sharp frame
    masked by its confidence, so that no paired data is needed. A single-image --model
    (nafnet-tiny, ...) trains on the same triplets without the reference: the baseline.
    Writes OUT/model.pt; run again with the same --out to resume.
    """
    from bluref_ray.training.refnet import train_ref
    from bluref_ray.training.validation import describe_validation

    cfg = _config(args)
    r = train_ref(args.frames, args.out, cfg, log=_log(args),
                  command="bluref " + " ".join(args.argv))
    print(f"{cfg.refnet.model}: {r['steps']} steps → {r['model']}")
    if r["val"]:
        print(f"  validation: {describe_validation(r['val'])}")
    print(f"TensorBoard: tensorboard --logdir {storage.join(args.out, 'tensorboard')}")
    return 0


def cmd_refine(args: argparse.Namespace) -> int:
    """Iterative target refinement: K rounds of pseudo-GT + training.

    BluRef's iterative target refinement. Round 1 matches the references to the blurry frames
    and trains; round k+1 matches them to the output of round k's model and trains again from
    its weights. Writes OUT/round_K/{pseudo_gt,train}/ and a per-round table and plot
    (OUT/refine.md, refine.png). Resumes when run again.
    """
    from bluref_ray.refine import COLUMNS, run_refine
    from bluref_ray.report import markdown_table

    cfg = _config(args)
    result = run_refine(args.frames, args.out, cfg, log=_log(args))
    print(markdown_table(result["rounds"], COLUMNS))
    print(f"final model: {result['model']}")
    print(f"written: {storage.join(args.out, 'refine.md')}, refine.json and refine.png")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """PSNR/SSIM/NIQE of models, with a report.

    Evaluate deblurrers on frames: PSNR and SSIM (pyiqa, RGB) against the ground truth of
    GoPro-style trees, NIQE without it. Writes OUT/eval.json and OUT/report.{md,html} with
    image grids (blurry | pseudo-sharp | models | truth) and a plot of PSNR per model.
    """
    from bluref_ray.evaluation import COLUMNS, evaluate
    from bluref_ray.report import markdown_table

    cfg = _config(args)
    models = {}
    for i, spec in enumerate(args.model, 1):
        label, _, uri = spec.partition("=")
        if not uri or "/" in label or ":" in label:  # no label: "=" within a path
            label, uri = f"model {i}", spec
        if label in models or label == "blurry":
            raise ConfigError(f"--model {spec}: the label {label!r} is "
                              + ("the blurry input's" if label == "blurry" else "used twice"))
        models[label] = uri
    result = evaluate(models, args.data, args.out, cfg, pairs=args.pairs,
                      max_frames=args.max_frames or None, reference=args.reference_rule,
                      delta=cfg.deblur.reference_delta, log=_log(args))
    print(markdown_table(result["methods"], COLUMNS))
    print(f"report: {result['report']}")
    return 0


def cmd_deblur(args: argparse.Namespace) -> int:
    """Deblur images, folders, buckets and videos (Ray Data).

    Batch deblurring with a trained checkpoint through Ray Data actors (GPUs when the cluster
    has them): images become PNGs, videos come out as videos, large frames are processed in
    tiles. Outputs keep the inputs' relative paths under OUT; finished files are skipped when
    run again; a bad file is reported and the others go on.
    """
    from bluref_ray.pipeline.deblur import run_deblur

    cfg = _config(args)
    s = run_deblur(args.checkpoint, args.inputs, args.out, cfg, log=_log(args))
    print(f"deblurred {s['done']} file(s), {s['frames']} frames ({s['frames_per_second']:.2f} "
          f"frames/s); {s['skipped']} skipped (already done), {len(s['failed'])} failed → "
          f"{s['out']}")
    for f in s["failed"]:
        print(f"  failed: {f['error']}")
    return 1 if s["failed"] else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Ray Tune sweep over N, Δ, τ, strategy, lr, steps.

    Sweep BluRef's settings with Ray Tune: each trial makes (or reuses, by the hash of its
    settings) the pseudo-GT of its N, Δ, τ, strategy and matcher, trains the deblurrer on it
    with Ray Train and reports validation PSNR/SSIM (or NIQE without ground truth); ASHA stops
    poor trials early. Writes OUT/results.{csv,md}, best.json, plots of the metric against N, Δ
    and τ, and report.html. Run it again to resume. The sweep file is described in `python -m
    pydoc bluref_ray.sweep`; examples are in configs/sweeps/.
    """
    from bluref_ray.sweep import load_sweep, run_sweep

    spec = load_sweep(args.config, {"out": args.out, "data": args.data, "val": args.val,
                                    "samples": args.samples, "concurrency": args.concurrency},
                      [*args.overrides, *(["ray.quiet=true"] if args.quiet else [])])
    from bluref_ray.sweep.spec import base_config
    from bluref_ray.writer import exclusive_output

    with exclusive_output(spec.out, base_config(spec).storage.resolved(),
                          f"bluref sweep {args.config}"):  # one sweep per OUT (and cache actor)
        s = run_sweep(spec, log=_log(args), overwrite=args.overwrite,
                      verbose=0 if args.quiet else 1)
    print(f"\nbluref sweep finished in {s['seconds'] / 60:.1f} min: {len(s['rows'])} trials")
    print(s["table"])
    failed = [r for r in s["rows"] if r["status"] == "error"]
    for r in failed:
        print(f"  trial {r['trial']} failed: {r['error']} (see {storage.join(spec.out, 'tune')})")
    if s["best"]:
        b = s["best"]
        print(f"best: trial {b['trial']}, {b['settings']}: {s['metric']} {b['metric']:.4g} "
              f"→ {b['model']}")
    else:
        print("best: none (no trial ran to the end)")
    print(f"written: {storage.join(spec.out, 'results.md')}, results.csv, best.json, "
          f"{', '.join(s['plots']) or 'no plots'} and {s['report']}")
    if s.get("unfinished"):
        print(f"bluref sweep: interrupted with {s['unfinished']} trial(s) unfinished: the "
              "results above are partial; run the same command again to resume",
              file=sys.stderr)
        return 130
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the whole method on generated data, on this machine.

    Run BluRef end to end with Ray started in-process: synthesize a small dataset, ingest it,
    make pseudo-GT, train and refine the deblurrer, train the supervised upper bound with the
    same budget, evaluate on held-out clips and print one table. Under 15 minutes on 2 CPU
    cores, with the DIS matcher for that budget. Any setting can be changed with --set
    section.key=value, e.g. --set train.steps=2000 --set refine.rounds=3 --set
    pseudo_gt.matcher=learned.
    """
    from bluref_ray.demo import DEMO_SETTINGS, run_demo

    explicit = [f"{k}={v}" for k, v in vars(args).items() if "." in k]
    quiet = ["ray.quiet=true"] if args.quiet else []
    cfg = load_config(args.config, [*DEMO_SETTINGS, *args.overrides, *explicit, *quiet])
    s = run_demo(args.out, cfg, log=_log(args))
    print(f"\nbluref demo finished in {s['seconds'] / 60:.1f} min")
    print(s["markdown"])
    print(f"  sharpness labels of the video frames agree with the synthesizer's truth on "
          f"{100 * s['label_accuracy']:.1f}% of frames")
    print(f"  report: {s['report']}")
    print(f"  everything else: {storage.normalize(args.out)}")
    return 0
