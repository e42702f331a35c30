"""The ``bluref`` command. Each subcommand calls one function that ``jobs/`` also calls.

Every setting is a field of a config dataclass (:mod:`bluref_ray.config`); its ``--option`` is
generated from the field, with the field's help text and default. Precedence: built-in defaults,
then ``--config FILE`` (YAML), then ``--set section.key=value``, then explicit ``--options``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bluref_ray import __version__, commands, storage
from bluref_ray.config import (
    Blur2BlurConfig,
    Config,
    ConfigError,
    DeblurConfig,
    IngestConfig,
    KernelConfig,
    MatcherTrainConfig,
    PseudoGTConfig,
    RayConfig,
    RefineConfig,
    RefNetConfig,
    SynthConfig,
    TrainConfig,
    section_types,
)
from bluref_ray.config.core import ordered_fields
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
_KERNEL = ("kernel", KernelConfig, "", "kernel extractor settings")
_BLUR2BLUR = ("blur2blur", Blur2BlurConfig, "", "Blur2Blur settings")
_REFNET = ("refnet", RefNetConfig, "", "Ref-NAFNet settings")
CONCERN_TITLES = {"method": "the method", "matcher": "the matcher",
                  "execution": "execution (not part of the settings hash)"}
_TAUS_HELP = ("comma-separated confidence thresholds τ (default: --tau alone); several trace each "
              "matcher's PSNR-coverage curve, and matchers are compared at equal coverage")


def _add_section(parser: argparse.ArgumentParser, section: str, cls: type, prefix: str,
                 title: str) -> None:
    groups: dict[str, argparse._ArgumentGroup] = {}  # one per concern, if the fields have one
    hints = section_types(cls)
    for f in ordered_fields(cls):
        concern = f.metadata.get("concern")
        if concern not in groups:
            groups[concern] = parser.add_argument_group(
                f"{title}: {CONCERN_TITLES[concern]}" if concern else title)
        group = groups[concern]
        flag = "--" + prefix + f.name.replace("_", "-")
        helptext = f.metadata.get("help", "").replace("%", "%%")
        dest = f"{section}.{f.name}"
        default = f.default
        if hints[f.name] in (bool, bool | None):  # None: decided at run time (the help says how)
            shown = "" if default is None else f" (default: {default})"
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=helptext + shown)
        else:
            shown = "" if default is None else f" (default: {default})"
            group.add_argument(flag, dest=dest, default=argparse.SUPPRESS, metavar="X",
                               help=helptext + shown)


def _out(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--out", required=default is None, default=default, metavar="URI",
                        help="output folder (local or s3://)")


def _common(parser: argparse.ArgumentParser, *sections: tuple) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="YAML config (local path or s3://) with any of the sections "
                             + ", ".join(f.name for f in dataclasses.fields(Config)))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override one setting by its dotted name, e.g. ingest.delta=20 "
                             "(repeatable)")
    for sec in sections:
        _add_section(parser, *sec)
    parser.add_argument("--quiet", action="store_true", help="print only the final result")


def _with_default(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A command's own option says its default in its help, unless the help already does."""
    default, helptext = kwargs.get("default"), kwargs.get("help", "")
    if default in (None, [], False) or "default" in helptext:
        return kwargs
    return {**kwargs, "help": f"{helptext} (default: %(default)s)"}


def arg(*flags: str, **kwargs: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """One ``add_argument`` call of a command, kept for :func:`build_parser`."""
    return flags, kwargs


@dataclass(frozen=True)
class Command:
    """A ``bluref`` subcommand: its name, what runs it (a function of
    :mod:`bluref_ray.commands`, whose docstring's first line is the command's short help and
    the rest its description), its own arguments, and the settings sections whose fields
    become its options (None: none, as for ``sweep``, whose file holds them). ``out``:
    ``--out`` is required (True), has this default (a string), or is among ``args`` (None)."""

    name: str
    run: Callable[[argparse.Namespace], int]
    args: tuple = ()
    sections: tuple | None = ()
    out: bool | str | None = True

    @property
    def texts(self) -> tuple[str, str]:
        """(short help, description) from the runner's docstring."""
        head, _, rest = inspect.getdoc(self.run).partition("\n\n")
        return head.rstrip("."), " ".join(rest.split())


#: Every subcommand, in the order ``bluref --help`` lists them.
COMMANDS: tuple[Command, ...] = (
    Command("synth", commands.cmd_synth, sections=(_SYNTH, _STORAGE)),
    Command("ingest", commands.cmd_ingest, sections=(_INGEST, _RAY, _STORAGE), args=(
        arg("sources", nargs="+", metavar="SOURCE",
            help="folder, bucket prefix or video file (local or s3://)"),)),
    Command("pseudo-gt", commands.cmd_pseudo_gt, sections=(_PSEUDO, _RAY, _STORAGE), args=(
        arg("frames", metavar="FRAMES",
            help="ingest output folder (or its frames/ folder), local or s3://"),)),
    Command("pseudo-gt-quality", commands.cmd_pseudo_gt_quality,
            sections=(_PSEUDO, _RAY, _STORAGE), args=(
        arg("frames", metavar="FRAMES", help="ingest output folder of frame trees"),
        arg("--strategies", default="weighted,sequential,progressive,reblur",
            help="comma-separated fusion strategies"),
        arg("--refs", default="1,2,4,6", help="comma-separated reference counts N"),
        arg("--taus", default=None, help=_TAUS_HELP))),
    Command("train-matcher", commands.cmd_train_matcher,
            sections=(_TRAIN_MATCHER, _RAY, _STORAGE)),
    Command("eval-matcher", commands.cmd_eval_matcher, sections=(_PSEUDO, _RAY, _STORAGE), args=(
        arg("--pairs", type=int, default=48, help="held-out pairs per condition"),
        arg("--size", type=int, default=192, help="side of the pairs, pixels"),
        arg("--pairs-radius", type=float, default=1.0, choices=(1.0, 2.0, 4.0),
            help="R of the learned confidence P(error < R px) on the pairs (default: 1; the "
                 "pseudo-GT part uses --matcher-radius)"),
        arg("--frames", metavar="FRAMES", default=None,
            help="ingested frame trees with ground truth: also compare pseudo-GT quality"),
        arg("--refs", default="1,6", help="reference counts N for the pseudo-GT part"),
        arg("--taus", default=None, help=_TAUS_HELP))),
    Command("train", commands.cmd_train, sections=(_TRAIN, _RAY, _STORAGE), args=(
        arg("pairs", metavar="PAIRS", help="pseudo-gt output folder (or its shards/)"),)),
    Command("refine", commands.cmd_refine,
            sections=(_REFINE, _PSEUDO, _TRAIN_PREFIXED, _RAY, _STORAGE), args=(
        arg("frames", metavar="FRAMES", help="ingest output folder (frames table)"),)),
    Command("train-kernel", commands.cmd_train_kernel, sections=(_KERNEL, _RAY, _STORAGE), args=(
        arg("known", metavar="KNOWN",
            help="GoPro-style tree(s) of the known blur, comma-separated (local or s3://)"),)),
    Command("blur2blur", commands.cmd_blur2blur, sections=(_BLUR2BLUR, _RAY, _STORAGE), args=(
        arg("frames", metavar="FRAMES",
            help="ingest output of the camera's video (frames table), local or s3://"),)),
    Command("train-ref", commands.cmd_train_ref, sections=(_REFNET, _RAY, _STORAGE), args=(
        arg("frames", metavar="FRAMES",
            help="ingest output (frames table) of the training clips, local or s3://"),)),
    Command("eval", commands.cmd_eval, sections=(_DEBLUR, _STORAGE), args=(
        arg("data", nargs="+", metavar="DATA",
            help="GoPro-style tree(s) <seq>/{blur,sharp}/ or image folders"),
        arg("--model", action="append", default=[], metavar="[LABEL=]CKPT",
            help="a checkpoint to evaluate, optionally labelled (repeatable; in order, e.g. "
                 "round1=…/model.pt round2=…/model.pt)"),
        arg("--pairs", metavar="PSEUDO_GT", default=None,
            help="pseudo-gt output of the same frames (pseudo-sharp column of the grids)"),
        arg("--max-frames", type=int, default=32,
            help="frames evaluated, evenly picked (0 = all)"),
        arg("--reference-rule", default="sharpest",
            choices=("sharpest", "middle", "blurriest", "random", "shuffled"),
            help="for models that read a reference (Ref-NAFNet): which frame of the clip "
                 "within ±--reference-delta (by sharpness), or shuffled: another clip's"))),
    Command("deblur", commands.cmd_deblur, sections=(_DEBLUR, _RAY, _STORAGE), args=(
        arg("checkpoint", metavar="CKPT",
            help="model.pt from `bluref train` / refine / blur2blur, or A.pt+B.pt: A's "
                 "network, then B's"),
        arg("inputs", nargs="+", metavar="INPUT",
            help="image or video files, folders or bucket prefixes (local or s3://)"))),
    Command("compact", commands.cmd_compact, sections=(_STORAGE,), out=None, args=(
        arg("outputs", nargs="+", metavar="OUTPUT",
            help="ingest or pseudo-gt output folder, or one table folder (local or s3://)"),
        arg("--part-mib", type=float, default=128,
            help="size of a merged part, MiB of decoded data (memory holds one part)"))),
    Command("sweep", commands.cmd_sweep, sections=None, out=None, args=(
        arg("--config", required=True, metavar="SWEEP.yaml",
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
        arg("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help="a base setting by its dotted name, e.g. train.workers=2 (repeatable; wins "
                 "over the file's 'set')"),
        arg("--overwrite", action="store_true",
            help="start over: delete the earlier trials and Tune state in OUT (the pseudo-GT "
                 "cache is kept)"),
        arg("--quiet", action="store_true", help="print only the final result"))),
    Command("demo", commands.cmd_demo, sections=(_SYNTH, _RAY, _STORAGE), out="bluref-demo"),
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
        short, description = c.texts
        p = sub.add_parser(c.name, help=short, description=description)
        for flags, kwargs in c.args:
            p.add_argument(*flags, **_with_default(kwargs))
        if c.out is not None:
            _out(p, None if c.out is True else c.out)
        if c.sections is not None:
            _common(p, *c.sections)
        p.set_defaults(func=c.run, holds_out=c.out is not None and c.sections is not None)
    return parser


def hide_secrets(argv: Sequence[str]) -> list[str]:
    """The command line with the values of the S3 keys replaced by ``<hidden>``: as
    ``--secret-key S``, ``--secret-key=S`` or ``--set storage.secret_key=S``. The command is
    recorded in every exported checkpoint, which people share."""
    flags = tuple("--" + k.replace("_", "-") for k in storage.SECRETS)
    keys = tuple(f"storage.{k}=" for k in storage.SECRETS)
    out, hide_next = [], False
    for a in argv:
        if hide_next:
            out.append("<hidden>")
        elif a.startswith(tuple(f + "=" for f in flags)) or a.startswith(keys):
            out.append(a.split("=", 1)[0] + "=<hidden>")
        else:
            out.append(a)
        hide_next = a in flags
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bluref``; returns the exit code."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv = hide_secrets(argv)  # what is recorded of the command
    try:
        if not args.holds_out:
            return args.func(args)
        # one writer per output folder (bluref_ray.writer): a second command on it is refused
        from bluref_ray.writer import exclusive_output

        with exclusive_output(args.out, commands._config(args).storage.resolved(),
                              " ".join(["bluref", *argv[:3]])):
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
