"""Ray Tune sweeps: the sweep file, trial settings, and the tiny sweep (ASHA, shared pseudo-GT,
resume after a kill) on the test cluster."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bluref_ray.cli import build_parser
from bluref_ray.config import ConfigError, load_config
from bluref_ray.sweep import load_sweep, parse_sweep, run_sweep
from bluref_ray.sweep.spec import candidate_values, ingest_config, trial_config
from bluref_ray.sweep.trials import cache_key, default_concurrency

ROOT = Path(__file__).resolve().parent.parent
TINY_SWEEP = str(ROOT / "configs" / "sweeps" / "tiny.yaml")
BASE = {"out": "/tmp/o", "data": ["/tmp/d"], "val": "/tmp/v"}


def _spec(**kw):
    return parse_sweep({**BASE, "space": {"N": [2, 4]}, **kw}, "s.yaml")


def test_every_example_sweep_file_is_valid():
    files = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
    assert {f.stem for f in files} >= {"tiny", "ablation_refs", "ablation_delta", "ablation_tau",
                                       "ablation_strategy", "n_tau"}
    for f in files:
        spec = load_sweep(str(f))
        assert spec.space and spec.metric is None  # psnr or niqe, from the validation frames
    paper = load_sweep(str(ROOT / "configs" / "sweeps" / "ablation_tau.yaml"))
    assert paper.space["tau"] == [0.5, 0.6, 0.7, 0.8, 0.9]


@pytest.mark.parametrize("raw, message", [
    ({"space": {"N": [2]}, "colour": 1}, "unknown key"),
    ({"space": {}}, "'space' is missing"),
    ({"space": {"N": [2]}, "val": None}, "'val' is missing"),
    ({"space": {"train.nonsense": [1]}}, "space.train.nonsense: not a setting"),
    ({"space": {"N": {"uniform": [2, 8]}}}, "not a float setting"),
    ({"space": {"tau": [0.5, 1.5]}}, r"space.tau = 1.5: .*pseudo_gt.tau"),
    ({"space": {"strategy": ["sequential", "best"]}}, "space.strategy = 'best'"),
    ({"space": {"lr": {"loguniform": [1e-2, 1e-4]}}}, "low < high"),
    ({"space": {"N": {"between": [2, 4]}}}, "use one of grid, choice"),
    ({"space": {"N": [2]}, "metric": "lpips"}, "metric='lpips'"),
    ({"space": {"N": [2]}, "asha": {"grace": 3}}, "asha: unknown key"),
    ({"space": {"N": [2]}, "set": {"train.steps": "many"}}, "train.steps"),
    ({"space": {"ingest.delta": [5, 30]}}, r"space.ingest.delta: .*set once for the whole "
                                           r"sweep .*pseudo_gt.\* and train.\*"),
    ({"space": {"lr": {"loguniform": ["1e-2", "1e-4"]}}}, "low < high"),
    ({"space": {"lr": {"loguniform": ["1e-4", "tiny"]}}}, "'tiny' is not a number"),
])
def test_bad_sweep_files_are_clear_errors(raw, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse_sweep({**BASE, **raw}, "s.yaml")
    assert "s.yaml" in str(e.value)


def test_missing_sweep_file_and_cli_help(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_sweep(str(tmp_path / "nope.yaml"))
    text = build_parser()._subparsers._group_actions[0].choices["sweep"].format_help()
    for flag in ("--config", "--out", "--data", "--val", "--concurrency", "--overwrite", "--set"):
        assert flag in text


def test_trial_settings_shorthands_ingest_and_concurrency():
    spec = _spec(space={"N": [2, 8], "delta": [1, 20], "tau": {"grid": [0.5, 0.9]},
                        "lr": {"loguniform": [1e-4, 1e-2]}, "train.weight_decay": 0.0},
                 set={"train.val_every": 50})
    base = load_config(None, spec.set)
    cfg = trial_config(base, {"N": 8, "delta": 1, "tau": 0.9, "lr": 3e-4}, "/tmp/v")
    assert (cfg.pseudo_gt.max_refs, cfg.pseudo_gt.delta) == (8, 1)
    assert cfg.pseudo_gt.tau == cfg.train.tau == 0.9 and cfg.train.lr == 3e-4
    assert cfg.train.checkpoint_every == 50 and cfg.train.val == "/tmp/v"
    icfg = ingest_config(spec, base)
    assert (icfg.ingest.max_refs, icfg.ingest.delta) == (8, 20)  # once, for every trial
    other = trial_config(base, {"N": 8, "delta": 1, "tau": 0.9, "lr": 1e-2}, "/tmp/v")
    assert cache_key(cfg.pseudo_gt, spec.data, icfg.ingest) == \
        cache_key(other.pseudo_gt, spec.data, icfg.ingest)  # lr: same pseudo-GT
    assert cache_key(cfg.pseudo_gt, spec.data, icfg.ingest) != \
        cache_key(trial_config(base, {"tau": 0.5}).pseudo_gt, spec.data, icfg.ingest)
    smoke = dataclasses.replace(cfg.pseudo_gt, limit=6)  # a smoke run's is not a whole one
    assert "-limit6-" in cache_key(smoke, spec.data, icfg.ingest)
    assert cache_key(smoke, spec.data, icfg.ingest) != cache_key(cfg.pseudo_gt, spec.data,
                                                                   icfg.ingest)
    # YAML reads 1e-4 (no dot) as a string: a range of them is read as numbers
    spec_str = _spec(space={"lr": {"loguniform": ["1e-4", "1e-2"]}})
    assert candidate_values(spec_str, "lr") == [1e-4, 1e-2]
    # the base pseudo_gt.delta sizes the ingest too
    wide = _spec(space={"N": [2]}, set={"pseudo_gt.delta": 30})
    assert ingest_config(wide, load_config(None, wide.set)).ingest.delta == 30
    tc = base.train
    assert default_concurrency(tc, {"CPU": 2}) == 1
    assert default_concurrency(tc, {"CPU": 16}) == 8
    assert default_concurrency(tc, {"CPU": 64, "GPU": 4}) == 4


def _run_counts(cache: Path) -> dict[str, list[int]]:
    return {d.name: [json.loads(f.read_text())["shards_before"] for f in (d / "runs").iterdir()]
            for d in cache.iterdir()}


@pytest.mark.faults
def test_tiny_sweep_stops_trials_early_shares_pseudo_gt_and_resumes(ray_cluster, tiny_data,
                                                                    tmp_path):
    """The CI sweep with one value of N (two trials, one pseudo-GT), killed (SIGKILL) once its
    first trial is done, then started again: the finished trial is not trained again, and ASHA
    still stops the diverging one at its first rung (it relearns the finished trial's reports;
    Tune does not restore them)."""
    import ray
    import yaml

    out = tmp_path / "sweep"
    raw = yaml.safe_load(Path(TINY_SWEEP).read_text())
    raw["space"]["N"] = [1]
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(raw))
    paths = {"out": str(out), "data": [f"{tiny_data}/train"], "val": f"{tiny_data}/test"}
    args = ["sweep", "--config", str(config), "--out", paths["out"], "--data", *paths["data"],
            "--val", paths["val"]]
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    log = tmp_path / "sweep.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "bluref_ray.cli", *args], env=env,
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list(out.glob("trials/*/train.json")) \
                and proc.poll() is None:
            time.sleep(0.5)
        assert list(out.glob("trials/*/train.json")), \
            "no trial finished within 5 minutes:\n" + log.read_text()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = {p.parent.name: p.parent.joinpath("model.pt").stat().st_mtime_ns
                for p in out.glob("trials/*/train.json")}

    logs: list[str] = []
    s = run_sweep(load_sweep(str(config), paths), log=logs.append)
    assert any("resuming the sweep" in m for m in logs)
    rows = s["rows"]
    assert len(rows) == 2 and {(r["N"], r["lr"]) for r in rows} == {(1, 3e-3), (1, 0.5)}
    for trial, mtime in finished.items():  # finished before the kill: not trained again
        assert out.joinpath("trials", trial, "model.pt").stat().st_mtime_ns == mtime
        assert next(r for r in rows if r["trial"] == trial)["status"] == "done"
    stopped = [r for r in rows if r["status"].startswith("stopped")]
    assert stopped and all(r["step"] < 6 for r in stopped)
    assert any(r["status"] == "done" and r["step"] == 6 for r in rows)
    assert all(r["val_psnr"] is not None and r["coverage"] > 0 for r in rows)
    # one pseudo-GT run, shared by the two learning rates
    assert len({r["pseudo_gt"] for r in rows}) == 1
    runs = _run_counts(out / "pseudo_gt")
    assert set(runs) == {r["pseudo_gt"] for r in rows}
    assert all(counts.count(0) == 1 for counts in runs.values()), runs  # one fresh run
    best = json.loads((out / "best.json").read_text())
    assert best["lr"] == 3e-3 and best["status"] == "done"
    assert Path(best["model"]).is_file()
    for name in ("results.csv", "results.md", "report.html", "report.md"):
        assert (out / name).stat().st_size > 0
    assert (out / "results.md").read_text().count("\n") == 2 + 2


def test_sweep_on_s3_keeps_results_trials_and_tune_state_in_the_bucket(ray_cluster, tiny_data,
                                                                     s3_cfg, s3_bucket):
    """Two values of N (two pseudo-GT runs), two trials at once on 2 CPUs: the second trial waits
    for the first one's pseudo-GT run (two at once would hold every CPU between their actors,
    and their loading tasks would wait forever)."""
    import yaml

    from bluref_ray import storage

    raw = yaml.safe_load(Path(TINY_SWEEP).read_text())
    raw["set"].update({f"storage.{k}": v for k, v in vars(s3_cfg).items() if v is not None})
    raw.update(out=f"{s3_bucket}/sweep", data=[f"{tiny_data}/train"], val=f"{tiny_data}/test",
               space={"N": [1, 2], "lr": 3e-3}, concurrency=2, asha=False)
    s = run_sweep(parse_sweep(raw, "s3 sweep"), log=lambda _m: None)
    rows = s["rows"]
    assert len(rows) == 2 and all(r["status"] == "done" for r in rows)
    assert len({r["pseudo_gt"] for r in rows}) == 2  # one per value of N
    files = storage.list_files(f"{s3_bucket}/sweep", s3_cfg)
    names = {f.rsplit("/", 1)[1] for f in files}
    assert {"results.csv", "results.md", "best.json", "report.html", "sweep.json",
            "psnr_vs_N.png"} <= names
    assert storage.is_file(s["best"]["model"], s3_cfg)
    assert any("/tune/" in f for f in files) and any("/pseudo_gt/" in f for f in files)


def test_metric_follows_the_validation_frames(tiny_data):
    from bluref_ray.sweep.spec import resolve_metric

    tree = f"{tiny_data}/test"
    blurry_only = str(next(Path(tree).glob("*/blur")))
    assert resolve_metric(_spec(val=tree), None).metric == "psnr"
    assert resolve_metric(_spec(val=blurry_only), None).metric == "niqe"
    assert resolve_metric(_spec(val=tree, metric="ssim"), None).metric == "ssim"
    with pytest.raises(ConfigError, match="metric niqe needs blurry frames without"):
        resolve_metric(_spec(val=tree, metric="niqe"), None)
    with pytest.raises(ConfigError, match="metric psnr needs frames with ground truth"):
        resolve_metric(_spec(val=blurry_only, metric="psnr"), None)
