"""The ``bluref`` command. Each subcommand calls one function that ``jobs/`` also calls.

Every setting is a field of a config dataclass (:mod:`bluref_ray.config`); its ``--option`` is
generated from the field, with the field's help text and default. Precedence: built-in defaults,
then ``--config FILE`` (YAML), then ``--set section.key=value``, then explicit ``--options``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence

from bluref_ray import __version__, storage
from bluref_ray.config import (
    Config,
    ConfigError,
    IngestConfig,
    MatcherTrainConfig,
    PseudoGTConfig,
    RayConfig,
    SynthConfig,
    load_config,
    section_types,
)
from bluref_ray.storage import StorageConfig

#: (section name, dataclass, option prefix) that each subcommand exposes.
_STORAGE = ("storage", StorageConfig, "", "object storage (S3) settings")
_RAY = ("ray", RayConfig, "ray-", "Ray settings")
_SYNTH = ("synth", SynthConfig, "", "synthesizer settings")
_INGEST = ("ingest", IngestConfig, "", "ingest settings")
_PSEUDO = ("pseudo_gt", PseudoGTConfig, "", "pseudo-GT settings")
_TRAIN_MATCHER = ("train_matcher", MatcherTrainConfig, "", "matcher training settings")


def _add_section(parser: argparse.ArgumentParser, section: str, cls: type, prefix: str,
                 title: str) -> None:
    group = parser.add_argument_group(title)
    hints = section_types(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + prefix + f.name.replace("_", "-")
        helptext = f.metadata.get("help", "").replace("%", "%%")
        dest = f"{section}.{f.name}"
        default = f.default
        if hints[f.name] is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS,
                               help=f"{helptext} (default: {default})")
        else:
            shown = "" if default is None else f" (default: {default})"
            group.add_argument(flag, dest=dest, default=argparse.SUPPRESS, metavar="X",
                               help=helptext + shown)


def _out(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--out", required=default is None, default=default, metavar="URI",
                        help="output folder (local or s3://)")


def _common(parser: argparse.ArgumentParser, *sections: tuple) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="YAML config with sections storage, ray, synth, ingest "
                             "(local path or s3://)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override one setting by its dotted name, e.g. ingest.delta=20 "
                             "(repeatable)")
    for sec in sections:
        _add_section(parser, *sec)
    parser.add_argument("--quiet", action="store_true", help="print only the final result")


def _config(args: argparse.Namespace) -> Config:
    """Defaults < --config FILE < --set KEY=VALUE < explicit options."""
    explicit = [f"{k}={v}" for k, v in vars(args).items() if "." in k]
    return load_config(args.config, [*args.overrides, *explicit])


def _log(args: argparse.Namespace) -> Callable[[str], None]:
    if getattr(args, "quiet", False):
        return lambda _msg: None
    return lambda msg: print(msg, flush=True)


def cmd_synth(args: argparse.Namespace) -> int:
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
    print(f"ingested {summary['clips']} clips: {summary['frames']} frames "
          f"({summary['blurry']} blurry, {summary['sharp']} sharp), "
          f"{summary['mean_references']:.2f} references per blurry frame, "
          f"{summary['rejects']} rejects, {summary['seconds']:.1f}s")
    print(f"  frames table:  {summary['frames_table']}")
    print(f"  rejects table: {summary['rejects_table']}")
    for uri in summary["rejected_files"][:10]:
        print(f"  rejected: {uri}")


def cmd_ingest(args: argparse.Namespace) -> int:
    from bluref_ray.pipeline.ingest import run_ingest

    cfg = _config(args)
    summary = run_ingest(args.sources, args.out, cfg, log=_log(args))
    _print_ingest(summary)
    return 0


def _print_pseudo_gt(s: dict) -> None:
    print(f"pseudo-GT: {s['rows']} pairs, {s['rejected']} rejected, mean coverage "
          f"{s['mean_coverage']:.3f}, {s['mean_refs_used']:.2f} references matched per frame, "
          f"{s['seconds']:.1f}s")
    if "quality" in s:
        q = s["quality"]
        print(f"  quality on {q['frames_with_gt']} frames with ground truth, confident pixels: "
              f"pseudo-GT {q['psnr_pseudo_confident']:.2f} dB, blurry "
              f"{q['psnr_blurry_confident']:.2f} dB")
    for reason, n in s["reject_reasons"].items():
        print(f"  rejected {n}: {reason}")
    print(f"  shards:  {storage.join(s['out'], 'shards')}")
    print(f"  summary: {storage.join(s['out'], 'summary.json')}")


def cmd_pseudo_gt(args: argparse.Namespace) -> int:
    from bluref_ray.pipeline.pseudo_gt import run_pseudo_gt

    cfg = _config(args)
    _print_pseudo_gt(run_pseudo_gt(args.frames, args.out, cfg, log=_log(args)))
    return 0


def cmd_pseudo_gt_quality(args: argparse.Namespace) -> int:
    from bluref_ray.pipeline.pseudo_gt import quality_markdown, quality_table

    cfg = _config(args)
    try:
        refs = [int(x) for x in args.refs.split(",")]
    except ValueError:
        raise ConfigError(f"--refs {args.refs!r}: expected numbers like 1,2,4,6") from None
    strategies = args.strategies.split(",")
    for s in strategies:
        dataclasses.replace(cfg.pseudo_gt, strategy=s).validate()
    results = quality_table(args.frames, args.out, cfg, strategies, refs, log=_log(args))
    print(quality_markdown(results, cfg.pseudo_gt))
    print(f"written: {storage.join(args.out, 'quality.md')} and quality.json")
    return 0


def cmd_train_matcher(args: argparse.Namespace) -> int:
    from bluref_ray.training.matcher import train_matcher

    cfg = _config(args)
    path = train_matcher(args.out, cfg, log=_log(args),
                         command="bluref " + " ".join(args.argv))
    print(f"matcher checkpoint: {path}")
    print(f"TensorBoard: tensorboard --logdir {storage.join(args.out, 'tensorboard')}")
    return 0


def cmd_eval_matcher(args: argparse.Namespace) -> int:
    from bluref_ray.matching import build_matcher
    from bluref_ray.matching.evaluate import evaluate, markdown
    from bluref_ray.pipeline.pseudo_gt import quality_markdown, quality_table

    cfg = _config(args)
    pg = cfg.pseudo_gt
    matchers = {"learned": build_matcher("learned", checkpoint=pg.matcher_checkpoint,
                                         radius_px=pg.matcher_radius, storage_cfg=cfg.storage),
                "dis": build_matcher("dis", preset=pg.dis_preset, ref_blur=pg.dis_ref_blur)}
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
        refs = [int(x) for x in args.refs.split(",")]
        rows = quality_table(args.frames, storage.join(args.out, "pseudo_gt"), cfg,
                             [pg.strategy], refs, log=log, matchers=["learned", "dis"])
        print(quality_markdown(rows, pg))
    print(f"written: {storage.join(args.out, 'matcher_eval.md')}"
          + (f" and {storage.join(args.out, 'pseudo_gt', 'quality.md')}" if args.frames else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from bluref_ray.data.synth import synthesize
    from bluref_ray.pipeline.ingest import run_ingest
    from bluref_ray.pipeline.pseudo_gt import run_pseudo_gt

    cfg = _config(args)
    log = _log(args)
    out = storage.normalize(args.out)
    data = storage.join(out, "data")
    log(f"[demo] 1/3 synthesizing a GoPro-protocol dataset → {data}")
    synthesize(data, cfg.synth, cfg.storage, log=log)
    log("[demo] 2/3 ingesting the videos and the frame trees with Ray Data")
    rows = []
    for name, sources in (("videos", [storage.join(data, "videos")]),
                          ("frame trees", [storage.join(data, s) for s in ("train", "test")])):
        dest = storage.join(out, "ingest", name.replace(" ", "_"))
        rows.append((name, run_ingest(sources, dest, cfg, log=log)))
    accuracy = _label_accuracy(data, storage.join(out, "ingest", "videos"), cfg.storage)
    log("[demo] 3/3 pseudo-GT for the blurry frames of the frame trees (they have ground truth)")
    pg = run_pseudo_gt(storage.join(out, "ingest", "frame_trees"), storage.join(out, "pseudo_gt"),
                       cfg, log=log)
    print("\nbluref demo: what it made")
    print(f"  dataset: {data} (manifest.json, videos/, train/ and test/ frame trees)")
    print(f"  {'source':<12} {'clips':>5} {'frames':>7} {'blurry':>7} {'sharp':>6} "
          f"{'refs/blurry':>11} {'rejects':>7}  frames table")
    for name, s in rows:
        print(f"  {name:<12} {s['clips']:>5} {s['frames']:>7} {s['blurry']:>7} {s['sharp']:>6} "
              f"{s['mean_references']:>11.2f} {s['rejects']:>7}  {s['frames_table']}")
    print(f"  blurry/sharp labels of video frames agree with the synthesizer's truth on "
          f"{100 * accuracy:.1f}% of frames")
    q = pg.get("quality", {})
    print(f"  pseudo-GT ({cfg.pseudo_gt.matcher}, {cfg.pseudo_gt.strategy}, "
          f"N={cfg.pseudo_gt.max_refs}, τ={cfg.pseudo_gt.tau}): {pg['rows']} pairs, coverage "
          f"{pg['mean_coverage']:.3f}; PSNR in the confident region: pseudo-GT "
          f"{q.get('psnr_pseudo_confident', float('nan')):.2f} dB vs blurry "
          f"{q.get('psnr_blurry_confident', float('nan')):.2f} dB")
    print(f"  pseudo-pair shards: {storage.join(out, 'pseudo_gt', 'shards')}")
    return 0


def _label_accuracy(data: str, ingest_out: str, storage_cfg: StorageConfig) -> float:
    """Share of video frames whose ingest label matches the synthesizer's manifest."""
    from bluref_ray import schema

    manifest = json.loads(storage.read_text(storage.join(data, "manifest.json"), storage_cfg))
    truth = {(c["video"], f["index"]): f["blurry"] for c in manifest["clips"] for f in c["frames"]}
    t = schema.read_table(storage.join(ingest_out, "frames"), schema.FRAMES, storage_cfg,
                          columns=["source_uri", "frame_index", "role"]).to_pylist()
    hits = [truth.get((storage.relative(r["source_uri"], data), r["frame_index"])) ==
            (r["role"] == "blurry") for r in t]
    return sum(hits) / max(len(hits), 1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bluref",
        description="bluref-ray: unsupervised deblurring at fleet scale on Ray. Turns video with "
                    "blurry and sharp frames into a deblurring model, without paired data. "
                    "Paths may be local, file:// or s3://bucket/key (S3 endpoint and keys from "
                    "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or the config).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bluref-ray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("synth", help="make a GoPro-protocol dataset with ground truth",
                       description="Synthesize clips by the GoPro protocol: a high-frame-rate "
                                   "sharp stream (real photos through a virtual hand-held "
                                   "camera with moving objects, or a video you give) whose "
                                   "frames are averaged in linear light into blurry frames. "
                                   "Writes videos, a {blur,sharp} frame tree and a manifest.")
    _out(p)
    _common(p, _SYNTH, _STORAGE)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("ingest", help="decode, score sharpness, pick references (Ray Data)",
                       description="Ingest videos and frame trees with Ray Data: decode every "
                                   "frame, score sharpness (variance of the Laplacian and the "
                                   "FFT score), label blurry/sharp, and pick up to N sharp "
                                   "references within ±Δ frames of each blurry frame. Writes "
                                   "OUT/frames/ and OUT/rejects/ (Parquet) and OUT/summary.json. "
                                   "An interrupted run resumes where it stopped.")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="folder, bucket prefix or video file (local or s3://)")
    _out(p)
    _common(p, _INGEST, _RAY, _STORAGE)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("pseudo-gt", help="match and fuse references into pseudo-sharp frames",
                       description="Make BluRef pseudo-pairs with Ray Data: for every blurry "
                                   "frame of a frames table, match its references (an actor "
                                   "pool, on GPUs when the cluster has them), fuse them into a "
                                   "pseudo-sharp image with a confidence map, and write Parquet "
                                   "shards (PNG bytes) to OUT/shards/, rejects to OUT/rejects/, "
                                   "and OUT/summary.json. An interrupted run resumes.")
    p.add_argument("frames", metavar="FRAMES",
                   help="ingest output folder (or its frames/ folder), local or s3://")
    _out(p)
    _common(p, _PSEUDO, _RAY, _STORAGE)
    p.set_defaults(func=cmd_pseudo_gt)

    p = sub.add_parser("pseudo-gt-quality",
                       help="pseudo-GT quality per fusion strategy and N (needs ground truth)",
                       description="Run pseudo-GT for each fusion strategy and reference count "
                                   "N on data with ground truth (synthesized, or GoPro-style "
                                   "trees), and tabulate PSNR of the pseudo-sharp image and of "
                                   "the blurry frame inside the confident region, and coverage. "
                                   "Writes OUT/quality.md and OUT/quality.json.")
    p.add_argument("frames", metavar="FRAMES", help="ingest output folder of frame trees")
    _out(p)
    p.add_argument("--strategies", default="weighted,sequential,progressive",
                   help="comma-separated fusion strategies")
    p.add_argument("--refs", default="1,2,4,6", help="comma-separated reference counts N")
    _common(p, _PSEUDO, _RAY, _STORAGE)
    p.set_defaults(func=cmd_pseudo_gt_quality)

    p = sub.add_parser("train-matcher", help="train the learned dense matcher (Ray Train, DDP)",
                       description="Train the dense matcher without real pairs: synthetic warps "
                                   "(homography, thin-plate spline, elastic) of real photos, "
                                   "with BSRGAN-style blur, noise and JPEG on the target. Ray "
                                   "Train DDP (gloo on CPUs, NCCL on GPUs); checkpoints in "
                                   "OUT/ray-train/, TensorBoard logs in OUT/tensorboard/, the "
                                   "final model in OUT/matcher.pt. Run it again with the same "
                                   "--out to resume.")
    _out(p)
    _common(p, _TRAIN_MATCHER, _RAY, _STORAGE)
    p.set_defaults(func=cmd_train_matcher)

    p = sub.add_parser("eval-matcher", help="learned matcher vs the classical baseline",
                       description="Evaluate the learned matcher and the DIS baseline on the "
                                   "same held-out synthetic pairs, with and without blur: AEPE, "
                                   "PCK-1/3/5, AUSE (how well confidence ranks errors), "
                                   "calibration error, coverage. With --frames, also the "
                                   "pseudo-GT quality of both on data with ground truth.")
    _out(p)
    p.add_argument("--pairs", type=int, default=48, help="held-out pairs per condition")
    p.add_argument("--size", type=int, default=192, help="side of the pairs, pixels")
    p.add_argument("--frames", metavar="FRAMES", default=None,
                   help="ingested frame trees with ground truth: also compare pseudo-GT quality")
    p.add_argument("--refs", default="1,6", help="reference counts N for the pseudo-GT part")
    _common(p, _PSEUDO, _RAY, _STORAGE)
    p.set_defaults(func=cmd_eval_matcher)

    p = sub.add_parser("demo", help="run the whole method on generated data, on this machine",
                       description="Run bluref-ray end to end on a small synthesized dataset "
                                   "with Ray started in-process, and print what it made. "
                                   "(Today: synthesize → ingest → pseudo-GT; training and "
                                   "evaluation join as they land.) Pseudo-GT settings: "
                                   "--set pseudo_gt.KEY=VALUE.")
    _out(p, default="bluref-demo")
    _common(p, _SYNTH, _INGEST, _RAY, _STORAGE)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bluref``; returns the exit code."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (ConfigError, storage.StorageError) as e:
        print(f"bluref {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bluref {args.command}: interrupted; run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
