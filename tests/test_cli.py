"""The bluref command: help, configs, and the demo."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bluref_ray.cli import build_parser, main
from bluref_ray.config import (
    Config,
    ConfigError,
    DeblurConfig,
    IngestConfig,
    MatcherTrainConfig,
    PseudoGTConfig,
    RefineConfig,
    SynthConfig,
    TrainConfig,
    load_config,
)
from bluref_ray.storage import StorageConfig


@pytest.mark.parametrize("command, sections", [
    ("synth", [SynthConfig, StorageConfig]), ("ingest", [IngestConfig, StorageConfig]),
    ("demo", [SynthConfig, StorageConfig]),
    ("train", [TrainConfig, StorageConfig]), ("refine", [RefineConfig, PseudoGTConfig]),
    ("deblur", [DeblurConfig, StorageConfig]), ("eval", [DeblurConfig, StorageConfig]),
    ("pseudo-gt", [PseudoGTConfig, StorageConfig]),
    ("pseudo-gt-quality", [PseudoGTConfig, StorageConfig]),
    ("train-matcher", [MatcherTrainConfig, StorageConfig]),
    ("eval-matcher", [PseudoGTConfig, StorageConfig])])
def test_help_explains_every_option(command, sections):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    text = sub.format_help()
    for cls in sections:
        for f in dataclasses.fields(cls):
            assert "--" + f.name.replace("_", "-") in text
            assert f.metadata["help"].split()[0] in text
    for action in sub._actions:
        assert action.help, f"{command} {action.option_strings} has no help"


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "bluref_ray.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "synth" in out and "ingest" in out and "demo" in out


def test_config_file_overrides_and_errors(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("ingest:\n  delta: 20\n  threshold: 55.5\nstorage:\n  region: eu-west-1\n")
    cfg = load_config(str(path), ["ingest.max_refs=8"])
    assert (cfg.ingest.delta, cfg.ingest.threshold, cfg.ingest.max_refs) == (20, 55.5, 8)
    assert cfg.storage.region == "eu-west-1" and cfg.synth == Config().synth
    path.write_text("ingest:\n  detla: 3\n")
    with pytest.raises(ConfigError, match=r"run.yaml.*ingest.*detla"):
        load_config(str(path))
    with pytest.raises(ConfigError, match=r"ingest.delta.*'many'"):
        load_config(None, ["ingest.delta=many"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    path.write_text("ingest: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(path))


def test_the_example_configs_load():
    root = Path(__file__).resolve().parent.parent / "configs"
    ingest = load_config(str(root / "ingest.yaml")).ingest
    assert (ingest.label_rule, ingest.protocol) == ("local", "auto")
    synth = load_config(str(root / "synth_dashcam.yaml")).synth
    synth.validate()
    assert synth.resolved().jpeg_quality == 80 and synth.resolved().crf == 23


def test_bad_option_value_exits_2_with_a_message(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--k-min", "9", "--k-max", "3"]) == 2
    assert "k_min" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "o"), "--delta", "x"]) == 2
    assert "ingest.delta" in capsys.readouterr().err
    assert main(["train-matcher", "--out", str(tmp_path / "m"), "--objects", "1.5"]) == 2
    assert "train_matcher.objects=1.5" in capsys.readouterr().err


def test_eval_model_labels(tmp_path, capsys):
    """LABEL=PATH names a model; an "=" within a path is no label; a label used twice, or the
    blurry input's, is refused before any work."""
    data = str(tmp_path / "none")
    within = f"{tmp_path}/lr=1e-4/model.pt"
    for spec, said in ((within, f"{within}: not found"),
                       ("blurry=a.pt", "'blurry' is the blurry input's")):
        assert main(["eval", data, "--model", spec, "--out", str(tmp_path)]) == 2
        assert said in capsys.readouterr().err
    assert main(["eval", data, "--model", "a=x.pt", "--model", "a=y.pt",
                 "--out", str(tmp_path)]) == 2
    assert "'a' is used twice" in capsys.readouterr().err


def test_demo_runs_end_to_end(ray_cluster, tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path / "demo"), "--train-clips", "1", "--test-clips",
                 "1", "--frames", "12", "--height", "48", "--width", "80", "--quiet",
                 "--set", "train.steps=2", "--set", "refine.steps_later=1",
                 "--set", "train.crop=32", "--set", "train.workers=1",
                 "--set", "train.cpus_per_worker=0.5", "--set", "train.threads=1"])
    assert code == 0
    out = capsys.readouterr().out
    for row in ("| blurry input |", "| BluRef round 1 |", "| BluRef round 2 |",
                "| supervised |"):
        assert row in out
    assert "agree with the synthesizer" in out and "report:" in out
    demo = tmp_path / "demo"
    assert (demo / "eval" / "report.html").is_file() and (demo / "eval" / "rounds.png").is_file()
    assert (demo / "refine" / "round_2" / "train" / "model.pt").is_file()
    table = __import__("json").loads((demo / "demo.json").read_text())["table"]
    assert table[3]["steps"] == 3 and table[0]["psnr"] > 10


def test_option_values_keep_their_type(tmp_path):
    cfg = load_config(None, ["storage.secret_key=a: b", "storage.access_key=0123",
                             "ingest.threshold=none", "ray.progress_bars=false"])
    assert cfg.storage.secret_key == "a: b" and cfg.storage.access_key == "0123"
    assert cfg.ingest.threshold is None and cfg.ray.progress_bars is False


def test_the_recorded_command_hides_the_s3_keys():
    """The command line goes into every exported checkpoint, and checkpoints get shared."""
    from bluref_ray.cli import hide_secrets

    argv = ["train", "pairs", "--secret-key", "S1", "--access-key=A1", "--set",
            "storage.secret_key=S2", "--set", "train.lr=0.001", "--out", "o"]
    shown = " ".join(hide_secrets(argv))
    assert not any(k in shown for k in ("S1", "A1", "S2"))
    assert shown == ("train pairs --secret-key <hidden> --access-key=<hidden> --set "
                     "storage.secret_key=<hidden> --set train.lr=0.001 --out o")


def test_job_entrypoint_takes_the_cli_options():
    job = Path(__file__).resolve().parents[1] / "jobs" / "ingest.py"
    out = subprocess.run([sys.executable, str(job), "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--max-refs" in out and "--delta" in out and "SOURCE" in out


def test_pseudo_gt_commands(ray_cluster, tiny_frames, tmp_path, capsys):
    out = str(tmp_path / "pg")
    assert main(["pseudo-gt", tiny_frames, "--out", out, "--limit", "2", "--max-refs", "2",
                 "--strategy", "sequential", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "pseudo-GT: 4 pairs, 0 rejected" in printed and "quality on 4 frames" in printed
    # the shipped learned matcher is the default
    assert set(pq.read_table(f"{out}/shards").column("matcher").to_pylist()) == {"learned"}
    assert main(["pseudo-gt-quality", tiny_frames, "--out", str(tmp_path / "q"), "--limit", "2",
                 "--strategies", "weighted,progressive", "--refs", "1,3", "--quiet"]) == 0
    table = (tmp_path / "q" / "quality.md").read_text()
    assert table.count("| weighted |") == 2 and table.count("| progressive |") == 2
    assert main(["pseudo-gt-quality", tiny_frames, "--out", str(tmp_path / "q2"),
                 "--strategies", "median"]) == 2
    assert "median" in capsys.readouterr().err
    # several τ: one run each, in its own folder; a higher τ never covers more
    assert main(["pseudo-gt-quality", tiny_frames, "--out", str(tmp_path / "q3"), "--limit", "2",
                 "--strategies", "weighted", "--refs", "2", "--taus", "0.5,0.9", "--matcher", "dis",
                 "--quiet"]) == 0
    rows = json.loads((tmp_path / "q3" / "quality.json").read_text())
    assert [r["tau"] for r in rows] == [0.5, 0.9] and rows[0]["coverage"] >= rows[1]["coverage"]
    assert (tmp_path / "q3" / "dis-weighted-n2-t0.9" / "summary.json").exists()
    assert main(["pseudo-gt-quality", tiny_frames, "--out", str(tmp_path / "q4"),
                 "--taus", "0.5,high"]) == 2
    assert "--taus" in capsys.readouterr().err


def test_eval_matcher_measures_the_network_its_refinement_and_dis(tmp_path, capsys):
    out = tmp_path / "em"
    assert main(["eval-matcher", "--out", str(out), "--pairs", "2", "--size", "64",
                 "--quiet"]) == 0
    rows = json.loads((out / "matcher_eval.json").read_text())
    assert [(r["matcher"], r["blur"]) for r in rows] == [
        (m, b) for b in (True, False) for m in ("learned", "learned+dis", "dis")]
    assert all(r["aepe"] >= 0 and 0 <= r["coverage"] <= 1 for r in rows)
    assert "P(error < 1 px)" in (out / "matcher_eval.md").read_text()
    assert main(["eval-matcher", "--out", str(tmp_path / "em2"), "--pairs", "2", "--size", "64",
                 "--no-dis-refine", "--pairs-radius", "4", "--quiet"]) == 0
    rows = json.loads((tmp_path / "em2" / "matcher_eval.json").read_text())
    assert {r["matcher"] for r in rows} == {"learned", "dis"}
    assert "P(error < 4 px)" in capsys.readouterr().out
