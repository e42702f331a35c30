"""The ``bluref`` command. Each subcommand calls one function that ``jobs/`` also calls.

Every setting is a field of a config dataclass (:mod:`bluref_ray.config`); its ``--option`` is
generated from the field, with the field's help text and default. Precedence: built-in defaults,
then ``--config FILE`` (YAML), then ``--set section.key=value``, then explicit ``--options``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bluref_ray import __version__, commands, storage
from bluref_ray.config import (
    ConfigError,
    DeblurConfig,
    IngestConfig,
    MatcherTrainConfig,
    PseudoGTConfig,
    RayConfig,
    RefineConfig,
    SynthConfig,
    TrainConfig,
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
_TRAIN = ("train", TrainConfig, "", "deblurrer training settings")
_TRAIN_PREFIXED = ("train", TrainConfig, "train-", "deblurrer training settings")
_REFINE = ("refine", RefineConfig, "", "refinement settings")
_DEBLUR = ("deblur", DeblurConfig, "", "deblurring settings")
CONCERN_TITLES = {"method": "the method", "matcher": "the matcher",
                  "execution": "execution (not part of the settings hash)"}
_TAUS_HELP = ("comma-separated confidence thresholds τ (default: --tau alone); several trace each "
              "matcher's PSNR-coverage curve, and matchers are compared at equal coverage")


def _add_section(parser: argparse.ArgumentParser, section: str, cls: type, prefix: str,
                 title: str) -> None:
    groups: dict[str, argparse._ArgumentGroup] = {}  # one per concern, if the fields have one
    hints = section_types(cls)
    for f in dataclasses.fields(cls):
        concern = f.metadata.get("concern")
        if concern not in groups:
            groups[concern] = parser.add_argument_group(
                f"{title}: {CONCERN_TITLES[concern]}" if concern else title)
        group = groups[concern]
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


def arg(*flags: str, **kwargs: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """One ``add_argument`` call of a command, kept for :func:`build_parser`."""
    return flags, kwargs


@dataclass(frozen=True)
class Command:
    """A ``bluref`` subcommand: its name, what runs it (:mod:`bluref_ray.commands`), its texts,
    its own arguments, and the settings sections whose fields become its options (None: none,
    as for ``sweep``, whose file holds them). ``out``: ``--out`` is required (True), has this
    default (a string), or is among the command's own arguments (None)."""

    name: str
    run: Callable[[argparse.Namespace], int]
    help: str
    description: str
    args: tuple = ()
    sections: tuple | None = ()
    out: bool | str | None = True


#: Every subcommand, in the order ``bluref --help`` lists them.
COMMANDS: tuple[Command, ...] = (
    Command("synth", commands.cmd_synth,
            "make a GoPro-protocol dataset with ground truth",
            "Synthesize clips by the GoPro protocol: a high-frame-rate sharp stream (real photos "
            "through a virtual hand-held camera with moving objects, or a video you give) whose "
            "frames are averaged in linear light into blurry frames. Writes videos, a "
            "{blur,sharp} frame tree and a manifest.",
            sections=(_SYNTH, _STORAGE,)),
    Command("ingest", commands.cmd_ingest,
            "decode, score sharpness, pick references (Ray Data)",
            "Ingest videos and frame trees with Ray Data: decode every frame, score sharpness "
            "(variance of the Laplacian and the FFT score), label blurry/sharp, and pick up to N "
            "sharp references within ±Δ frames of each blurry frame. Writes OUT/frames/ and "
            "OUT/rejects/ (Parquet) and OUT/summary.json. An interrupted run resumes where it "
            "stopped.",
            args=(arg("sources", nargs="+", metavar="SOURCE",
                     help="folder, bucket prefix or video file (local or s3://)"),),
            sections=(_INGEST, _RAY, _STORAGE,)),
    Command("pseudo-gt", commands.cmd_pseudo_gt,
            "match and fuse references into pseudo-sharp frames",
            "Make BluRef pseudo-pairs with Ray Data: for every blurry frame of a frames table, "
            "match its references (an actor pool, on GPUs when the cluster has them), fuse them "
            "into a pseudo-sharp image with a confidence map, and write Parquet shards (PNG "
            "bytes) to OUT/shards/, rejects to OUT/rejects/, and OUT/summary.json. An interrupted "
            "run resumes.",
            args=(arg("frames", metavar="FRAMES",
                     help="ingest output folder (or its frames/ folder), local or s3://"),),
            sections=(_PSEUDO, _RAY, _STORAGE,)),
    Command("pseudo-gt-quality", commands.cmd_pseudo_gt_quality,
            "pseudo-GT quality per fusion strategy and N (needs ground truth)",
            "Run pseudo-GT for each fusion strategy and reference count N on data with ground "
            "truth (synthesized, or GoPro-style trees), and tabulate PSNR of the pseudo-sharp "
            "image and of the blurry frame inside the confident region, and coverage. Writes "
            "OUT/quality.md and OUT/quality.json.",
            args=(arg("frames", metavar="FRAMES", help="ingest output folder of frame trees"),
                  arg("--strategies", default="weighted,sequential,progressive,reblur",
                      help="comma-separated fusion strategies"),
                  arg("--refs", default="1,2,4,6", help="comma-separated reference counts N"),
                  arg("--taus", default=None, help=_TAUS_HELP)),
            sections=(_PSEUDO, _RAY, _STORAGE,)),
    Command("train-matcher", commands.cmd_train_matcher,
            "train the learned dense matcher (Ray Train, DDP)",
            "Train the dense matcher without real pairs: synthetic warps (homography, thin-plate "
            "spline, elastic) of real photos, with BSRGAN-style blur, noise and JPEG on the "
            "target. Ray Train DDP (gloo on CPUs, NCCL on GPUs); checkpoints in OUT/ray-train/, "
            "TensorBoard logs in OUT/tensorboard/, the final model in OUT/matcher.pt. Run it "
            "again with the same --out to resume.",
            sections=(_TRAIN_MATCHER, _RAY, _STORAGE,)),
    Command("eval-matcher", commands.cmd_eval_matcher,
            "learned matcher vs the classical baseline",
            "Evaluate the learned matcher and the DIS baseline on the same held-out synthetic "
            "pairs, with and without blur: AEPE, PCK-1/3/5, AUSE (how well confidence ranks "
            "errors), calibration error, coverage; the network alone, and with --dis-refine (the "
            "default) also refined by DIS. With --frames, also the pseudo-GT quality of both "
            "matchers, as configured, on data with ground truth.",
            args=(arg("--pairs", type=int, default=48, help="held-out pairs per condition"),
                  arg("--size", type=int, default=192, help="side of the pairs, pixels"),
                  arg("--pairs-radius", type=float, default=1.0, choices=(1.0, 2.0, 4.0),
                      help="R of the learned confidence P(error < R px) on the pairs (default: "
                           "1; the pseudo-GT part uses --matcher-radius)"),
                  arg("--frames", metavar="FRAMES", default=None,
                      help="ingested frame trees with ground truth: also compare pseudo-GT "
                           "quality"),
                  arg("--refs", default="1,6", help="reference counts N for the pseudo-GT part"),
                  arg("--taus", default=None, help=_TAUS_HELP)),
            sections=(_PSEUDO, _RAY, _STORAGE,)),
    Command("train", commands.cmd_train,
            "train the deblurrer on pseudo-pairs (Ray Train, DDP)",
            "Train a deblurrer (NAFNet or Restormer) on the pseudo-pairs of `bluref pseudo-gt`, "
            "with the loss masked where the pseudo-GT confidence is below τ (BluRef), or on the "
            "ground truth with --supervised. Ray Train DDP (gloo on CPUs, NCCL and bfloat16 "
            "autocast on GPUs), data streamed by Ray Data with random crops and flips. Writes "
            "OUT/model.pt, checkpoints in OUT/ray-train/ and TensorBoard logs; run it again with "
            "the same --out to resume.",
            args=(arg("pairs", metavar="PAIRS", help="pseudo-gt output folder (or its shards/)"),),
            sections=(_TRAIN, _RAY, _STORAGE,)),
    Command("refine", commands.cmd_refine,
            "iterative target refinement: K rounds of pseudo-GT + training",
            "BluRef's iterative target refinement. Round 1 matches the references to the blurry "
            "frames and trains; round k+1 matches them to the output of round k's model and "
            "trains again from its weights. Writes OUT/round_K/{pseudo_gt,train}/ and a per-round "
            "table and plot (OUT/refine.md, refine.png). Resumes when run again.",
            args=(arg("frames", metavar="FRAMES", help="ingest output folder (frames table)"),),
            sections=(_REFINE, _PSEUDO, _TRAIN_PREFIXED, _RAY, _STORAGE,)),
    Command("eval", commands.cmd_eval,
            "PSNR/SSIM/NIQE of models, with a report",
            "Evaluate deblurrers on frames: PSNR and SSIM (pyiqa, RGB) against the ground truth "
            "of GoPro-style trees, NIQE without it. Writes OUT/eval.json and OUT/report.{md,html} "
            "with image grids (blurry | pseudo-sharp | models | truth) and a plot of PSNR per "
            "model.",
            args=(arg("data", nargs="+", metavar="DATA",
                      help="GoPro-style tree(s) <seq>/{blur,sharp}/ or image folders"),
                  arg("--model", action="append", default=[], metavar="[LABEL=]CKPT",
                      help="a checkpoint to evaluate, optionally labelled (repeatable; in "
                           "order, e.g. round1=…/model.pt round2=…/model.pt)"),
                  arg("--pairs", metavar="PSEUDO_GT", default=None,
                      help="pseudo-gt output of the same frames (pseudo-sharp column of the "
                           "grids)"),
                  arg("--max-frames", type=int, default=32,
                      help="frames evaluated, evenly picked (0 = all)")),
            sections=(_DEBLUR, _STORAGE,)),
    Command("deblur", commands.cmd_deblur,
            "deblur images, folders, buckets and videos (Ray Data)",
            "Batch deblurring with a trained checkpoint through Ray Data actors (GPUs when the "
            "cluster has them): images become PNGs, videos come out as videos, large frames are "
            "processed in tiles. Outputs keep the inputs' relative paths under OUT; finished "
            "files are skipped when run again; a bad file is reported and the others go on.",
            args=(arg("checkpoint", metavar="CKPT", help="model.pt from `bluref train` / refine"),
                  arg("inputs", nargs="+", metavar="INPUT",
                      help="image or video files, folders or bucket prefixes (local or s3://)")),
            sections=(_DEBLUR, _RAY, _STORAGE,)),
    Command("sweep", commands.cmd_sweep,
            "Ray Tune sweep over N, Δ, τ, strategy, lr, steps",
            "Sweep BluRef's settings with Ray Tune: each trial makes (or reuses, by the hash of "
            "its settings) the pseudo-GT of its N, Δ, τ, strategy and matcher, trains the "
            "deblurrer on it with Ray Train and reports validation PSNR/SSIM (or NIQE without "
            "ground truth); ASHA stops poor trials early. Writes OUT/results.{csv,md}, best.json, "
            "plots of the metric against N, Δ and τ, and report.html. Run it again to resume. The "
            "sweep file is described in `python -m pydoc bluref_ray.sweep`; examples are in "
            "configs/sweeps/.",
            args=(arg("--config", required=True, metavar="SWEEP.yaml",
                      help="the sweep file (local or s3://): out, data, val, space, ..."),
                  arg("--out", metavar="URI", default=None,
                      help="output folder (default: the file's 'out')"),
                  arg("--data", nargs="+", metavar="SOURCE", default=None,
                      help="sources to learn from (default: the file's 'data')"),
                  arg("--val", metavar="URI", default=None,
                      help="validation frames (default: the file's 'val')"),
                  arg("--samples", type=int, default=None,
                      help="samples of the space (default: the file's, else 1)"),
                  arg("--concurrency", type=int, default=None,
                      help="trials at once (default: the file's, else what the cluster fits)"),
                  arg("--set", dest="overrides", action="append", default=[],
                      metavar="KEY=VALUE",
                      help="a base setting by its dotted name, e.g. train.workers=2 "
                           "(repeatable; wins over the file's 'set')"),
                  arg("--overwrite", action="store_true",
                      help="start over: delete the earlier trials and Tune state in OUT (the "
                           "pseudo-GT cache is kept)"),
                  arg("--quiet", action="store_true", help="print only the final result")),
            sections=None,
            out=None),
    Command("demo", commands.cmd_demo,
            "run the whole method on generated data, on this machine",
            "Run BluRef end to end with Ray started in-process: synthesize a small dataset, "
            "ingest it, make pseudo-GT, train and refine the deblurrer, train the supervised "
            "upper bound with the same budget, evaluate on held-out clips and print one table. "
            "Under 15 minutes on 2 CPU cores, with the DIS matcher for that budget. Any setting "
            "can be changed with --set section.key=value, e.g. --set train.steps=2000 --set "
            "refine.rounds=3 --set pseudo_gt.matcher=learned.",
            sections=(_SYNTH, _RAY, _STORAGE,),
            out="bluref-demo"),
)


def build_parser() -> argparse.ArgumentParser:
    """The ``bluref`` parser: one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="bluref",
        description="bluref-ray: unsupervised deblurring at fleet scale on Ray. Turns video with "
                    "blurry and sharp frames into a deblurring model, without paired data. "
                    "Paths may be local, file:// or s3://bucket/key (S3 endpoint and keys from "
                    "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or the config).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bluref-ray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for c in COMMANDS:
        p = sub.add_parser(c.name, help=c.help, description=c.description)
        for flags, kwargs in c.args:
            p.add_argument(*flags, **kwargs)
        if c.out is not None:
            _out(p, None if c.out is True else c.out)
        if c.sections is not None:
            _common(p, *c.sections)
        p.set_defaults(func=c.run)
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
