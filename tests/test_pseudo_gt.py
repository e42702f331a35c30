"""The pseudo-GT pipeline: Ray Data windows, actor pool, shards, resume, rejects."""

from __future__ import annotations

import dataclasses
import os
import shutil

import cv2
import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from conftest import TINY_PAIRS, kill_at_seeded_points, kill_worker_when, shards_of

from bluref_ray import schema, storage
from bluref_ray.config import Config, ConfigError, IngestConfig, PseudoGTConfig, RayConfig
from bluref_ray.fusion import STRATEGIES
from bluref_ray.pipeline.common import actor_memory
from bluref_ray.pipeline.ingest import run_ingest
from bluref_ray.pipeline.pseudo_gt import actor_resources, run_pseudo_gt
from bluref_ray.pipeline.quality import at_equal_coverage, quality_markdown

CFG = Config(ray=RayConfig(progress_bars=False),
             pseudo_gt=PseudoGTConfig(max_refs=3, batch_size=4, targets_per_shard=3, limit=6))


def _cfg(**kw) -> Config:
    return dataclasses.replace(CFG, pseudo_gt=dataclasses.replace(CFG.pseudo_gt, **kw))


def _shards(out, cfg=None):
    t = schema.read_table(f"{out}/shards", schema.PSEUDO_PAIRS, cfg)
    return t.sort_by("row_id")


def _png(b, flags=cv2.IMREAD_UNCHANGED):
    return cv2.imdecode(np.frombuffer(b, np.uint8), flags)


def _check_pairs(t, n_expected, quality=True):
    assert t.num_rows == n_expected
    assert len(set(t.column("row_id").to_pylist())) == t.num_rows
    for r in t.to_pylist():
        blurry, pseudo, conf = (_png(r[k]) for k in ("blurry_png", "pseudo_png",
                                                     "confidence_png"))
        assert blurry.shape == pseudo.shape == (r["height"], r["width"], 3)
        assert conf.shape == (r["height"], r["width"]) and conf.dtype == np.uint8
        assert abs((conf >= round(0.7 * 255)).mean() - r["coverage"]) < 0.02
        assert 0 <= r["coverage"] <= 1 and 1 <= r["refs_used"] <= 3
        assert sum(r["confidence_hist"]) == r["height"] * r["width"]
        if quality:  # the frame has ground truth and confident pixels
            assert 0 < r["coverage"]
            assert r["psnr_pseudo"] is not None and r["psnr_blurry"] is not None


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_runs_through_ray_data_and_writes_shards(ray_cluster, tiny_frames,
                                                               tmp_path, strategy):
    out = str(tmp_path / strategy)
    s = run_pseudo_gt(tiny_frames, out, _cfg(strategy=strategy), log=lambda _m: None)
    frames = schema.read_table(f"{tiny_frames}/frames", schema.FRAMES)
    per_clip = pc.value_counts(frames.filter(pc.equal(frames["role"], "blurry"))["clip_id"])
    expected = sum(min(6, c["counts"].as_py()) for c in per_clip)
    t = _shards(out)
    _check_pairs(t, expected)
    assert set(t.column("strategy").to_pylist()) == {strategy}
    assert s.rows == expected and s.rejected == 0
    assert sum(s.confidence_hist) == sum(r["height"] * r["width"] for r in t.select(
        ["height", "width"]).to_pylist())
    # on average the pseudo-sharp frame beats the blurry one where it is confident
    assert s.quality.psnr_pseudo > s.quality.psnr_blurry


@pytest.mark.parametrize("dis_refine", [False, True])
def test_learned_matcher_through_the_pipeline(ray_cluster, tiny_frames, tmp_path, dis_refine):
    s = run_pseudo_gt(tiny_frames, str(tmp_path / "net"),
                      _cfg(matcher="learned", limit=3, dis_refine=dis_refine),
                      log=lambda _m: None)
    t = _shards(str(tmp_path / "net"))
    _check_pairs(t, s.rows, quality=False)
    assert set(t.column("matcher").to_pylist()) == {"learned"} and s.rows > 0


def test_an_elastic_pool_runs_between_its_minimum_and_maximum(ray_cluster, tiny_frames,
                                                               tmp_path):
    """concurrency=1, max_concurrency=2: one actor is waited for, Ray Data may start a second
    while windows queue up; the output is complete."""
    out = str(tmp_path / "elastic")
    s = run_pseudo_gt(tiny_frames, out, _cfg(concurrency=1, max_concurrency=2, cpus_per_actor=0.5,
                                             targets_per_shard=1, limit=None), log=lambda _m: None)
    frames = schema.read_table(f"{tiny_frames}/frames", schema.FRAMES)
    expected = frames.filter(pc.equal(frames["role"], "blurry")).num_rows
    _check_pairs(_shards(out), s.rows, quality=False)
    assert s.rows + s.rejected == expected and s.this_run.shards == expected
    # Growth to 2 is Ray Data's decision (inputs queued beyond 1.75 per actor): seen when this
    # test runs alone, not reliably within the whole suite, so only the bounds are asserted.
    assert 1 <= s.this_run.actors <= 2
    with pytest.raises(ConfigError, match="max_concurrency=1: must be >= pseudo_gt.concurrency"):
        PseudoGTConfig(concurrency=2, max_concurrency=1).validate()


def test_missing_matcher_checkpoint_is_a_clear_error(ray_cluster, tiny_frames, tmp_path):
    with pytest.raises(ConfigError, match="matcher_checkpoint.*nope.pt"):
        run_pseudo_gt(tiny_frames, str(tmp_path / "x"),
                      _cfg(matcher="learned", matcher_checkpoint=str(tmp_path / "nope.pt")),
                      log=lambda _m: None)


def test_a_resume_that_would_cut_the_shards_otherwise_is_refused(ray_cluster, tiny_frames,
                                                                  tiny_pairs):
    """Shard names stand for windows of `targets_per_shard` frames up to `limit`: a resume with
    other values would take shards of other frames for done (smoke run, then the full run)."""
    for change in ({"limit": None}, {"targets_per_shard": 8}):
        cfg = Config(ray=RayConfig(progress_bars=False),
                     pseudo_gt=dataclasses.replace(TINY_PAIRS, **change))
        key = next(iter(change))
        with pytest.raises(ConfigError, match=f"shards.{key}: {TINY_PAIRS.__dict__[key]} "
                                              r"there.*--overwrite"):
            run_pseudo_gt(tiny_frames, tiny_pairs, cfg, log=lambda _m: None)


@pytest.mark.faults
def test_killed_and_resumed_run_writes_the_rows_of_an_uninterrupted_one(ray_cluster,
                                                                        tiny_frames, tiny_pairs,
                                                                        tmp_path):
    """`bluref pseudo-gt` SIGKILLed (process group) at two seeded points, then the same command:
    the rows of an uninterrupted run (``tiny_pairs``, in fewer shards), each once, finished
    shards not redone, no temporary file left."""
    out = tmp_path / "resumed"
    cfg = dataclasses.replace(CFG, pseudo_gt=dataclasses.replace(TINY_PAIRS, targets_per_shard=3))
    full = _shards(tiny_pairs)
    n = shards_of(tiny_pairs, 3)
    kill_at_seeded_points(["pseudo-gt", tiny_frames, "--out", str(out), "--max-refs", "2",
                           "--concurrency", "1", "--targets-per-shard", "3", "--limit", "6"],
                          out / "shards", n)
    kept = {n: os.stat(out / "shards" / n).st_mtime_ns for n in os.listdir(out / "shards")}
    s = run_pseudo_gt(tiny_frames, str(out), cfg, log=lambda _m: None)
    assert (s.this_run.skipped, s.this_run.shards) == (len(kept), n - len(kept))
    assert {n: os.stat(out / "shards" / n).st_mtime_ns for n in kept} == kept
    t = _shards(str(out))
    assert t.equals(full) and len(set(t.column("row_id").to_pylist())) == t.num_rows
    assert not [f for _, _, fs in os.walk(out) for f in fs if f.startswith(".")]


@pytest.mark.faults
def test_a_killed_matching_actor_is_restarted_and_the_output_is_complete(ray_cluster,
                                                                         tiny_frames, tiny_pairs,
                                                                         tmp_path):
    """An actor of the pseudo-GT pool SIGKILLed after its first shard: Ray restarts it and
    retries its window; the rows equal an uninterrupted run's (``tiny_pairs``), each once."""
    out = tmp_path / "killed"
    cfg = dataclasses.replace(CFG, pseudo_gt=dataclasses.replace(TINY_PAIRS, targets_per_shard=2))
    with kill_worker_when("PseudoGTActor", lambda: any((out / "shards").glob("*.parquet"))) \
            as killed:
        s = run_pseudo_gt(tiny_frames, str(out), cfg, log=lambda _m: None)
    assert killed, "no actor was killed"
    t = _shards(str(out))
    assert t.equals(_shards(tiny_pairs)) and len(set(t.column("row_id").to_pylist())) == t.num_rows
    assert s.this_run.shards == shards_of(tiny_pairs, 2)
    assert not [f for _, _, fs in os.walk(out) for f in fs if f.startswith(".")]


def test_missing_and_odd_sized_references_are_rejected_the_others_go_on(ray_cluster, tiny_data,
                                                                        tmp_path):
    src = tmp_path / "data" / "seq"
    shutil.copytree(f"{tiny_data}/train/clip_0000", src)
    cfg = dataclasses.replace(_cfg(max_refs=1, limit=None),
                              ingest=IngestConfig(max_refs=1, delta=3))
    run_ingest([str(tmp_path / "data")], str(tmp_path / "ingest"), cfg, log=lambda _m: None)
    frames = schema.read_table(str(tmp_path / "ingest/frames"), schema.FRAMES).to_pylist()
    blurry = sorted((r for r in frames if r["role"] == "blurry"), key=lambda r: r["frame_index"])
    ref_of = {r["frame_index"]: r["references"][0] for r in blurry}
    a, b = blurry[0]["frame_index"], blurry[-1]["frame_index"]
    ref_a, ref_b = (int(ref_of[x].rsplit(":", 1)[1]) for x in (a, b))
    assert ref_a != ref_b
    os.remove(src / "sharp" / f"{ref_a:06d}.png")  # A's reference disappeared after ingest
    cv2.imwrite(str(src / "sharp" / f"{ref_b:06d}.png"), np.zeros((40, 50, 3), np.uint8))
    out = str(tmp_path / "pg")
    s = run_pseudo_gt(str(tmp_path / "ingest"), out, cfg, log=lambda _m: None)
    rejects = {r["frame_index"]: r["reason"] for r in
               schema.read_table(f"{out}/rejects", schema.PSEUDO_REJECTS).to_pylist()}
    assert f"{ref_a:06d}.png: missing" in rejects[a]
    assert "is 50x40, the blurry frame is 128x72" in rejects[b]
    done = set(_shards(out).column("frame_index").to_pylist())
    uses_bad = {x for x, ref in ref_of.items() if int(ref.rsplit(":", 1)[1]) in (ref_a, ref_b)}
    assert done == set(ref_of) - uses_bad and done
    assert s.rejected == len(uses_bad)
    assert set(s.reject_reasons) == {"reference … unusable",
                                     "reference … is …, the blurry frame is …"}, s.reject_reasons


def test_deblurrer_checkpoint_output_is_matched(ray_cluster, tiny_frames, tmp_path):
    from bluref_ray.models import build_model, save_checkpoint

    net = build_model("nafnet-tiny")
    with torch.no_grad():
        net.ending.weight.zero_()
        net.ending.bias.zero_()  # an identity deblurrer: output = input
    ckpt = str(tmp_path / "identity.pt")
    save_checkpoint(net, ckpt, "nafnet-tiny", {})
    plain = run_pseudo_gt(tiny_frames, str(tmp_path / "plain"), _cfg(limit=2),
                          log=lambda _m: None)
    with_net = run_pseudo_gt(tiny_frames, str(tmp_path / "net"), _cfg(limit=2, deblurrer=ckpt,
                                                                       round=2),
                             log=lambda _m: None)
    a, b = _shards(str(tmp_path / "plain")), _shards(str(tmp_path / "net"))
    assert set(b.column("round").to_pylist()) == {2}
    assert plain.config_hash != with_net.config_hash
    for x, y in zip(a.sort_by("frame_id").to_pylist(), b.sort_by("frame_id").to_pylist()):
        diff = np.abs(_png(x["pseudo_png"]).astype(int) - _png(y["pseudo_png"]).astype(int))
        # identity deblurrer: same matching input. On CUDA the two runs' matchers may pick
        # different (non-deterministic) kernels, whose last-bit differences can move a flow
        # vector at an edge; there, nearly all pixels, not all, must agree.
        print(f"identity deblurrer vs none: max {diff.max()}, within 1 level "
              f"{(diff <= 1).mean():.4f}, mean {diff.mean():.4f}")
        if torch.cuda.is_available():
            assert (diff <= 1).mean() >= 0.99 and diff.mean() < 0.1
        else:
            assert diff.max() <= 1
    with pytest.raises(ConfigError, match="pseudo_gt.deblurrer.*nope.pt"):
        run_pseudo_gt(tiny_frames, str(tmp_path / "x"), _cfg(deblurrer=str(tmp_path / "nope.pt")),
                      log=lambda _m: None)


def test_delta_keeps_only_references_within_it():
    from bluref_ray.data.windows import plan_windows

    rows = [{"frame_id": f"c:{i}", "frame_index": i, "role": "sharp", "clip_id": "c",
             "source_uri": "u", "references": []} for i in (0, 3, 9, 10)]
    rows.append({"frame_id": "c:5", "frame_index": 5, "role": "blurry", "clip_id": "c",
                 "source_uri": "u", "references": ["c:3", "c:9", "c:0", "c:10"]})
    refs = lambda **kw: plan_windows(rows, 4, **kw)[0].frames[0].ref_ids  # noqa: E731
    assert refs(max_refs=4) == ["c:3", "c:9", "c:0", "c:10"]
    assert refs(max_refs=4, delta=4) == ["c:3", "c:9"]
    assert refs(max_refs=1, delta=5) == ["c:3"]
    assert refs(max_refs=4, delta=1) == []  # rejected later: no reference within ±Δ


def test_a_window_carries_its_clips_protocol_and_gets_that_protocols_check():
    from bluref_ray.data.windows import plan_windows
    from bluref_ray.pipeline.pairs import PairMaker

    rows = [{"frame_id": f"c:{i}", "frame_index": i, "role": "sharp", "clip_id": "c",
             "source_uri": "u", "references": []} for i in (4, 6)]
    rows.append({"frame_id": "c:5", "frame_index": 5, "role": "blurry", "clip_id": "c",
                 "source_uri": "u", "references": ["c:4", "c:6"]})
    assert plan_windows(rows, 4, 4)[0].protocol == "camera"  # a frames table without one
    paired = [dict(r, protocol="paper") for r in rows]
    assert plan_windows(paired, 4, 4)[0].protocol == "paper"
    checks = PairMaker(CFG.pseudo_gt, "t", torch.device("cpu")).checks
    assert (checks["camera"].selector_p, checks["camera"].sharp) == (0.7, 2.5)
    assert (checks["paper"].selector_p, checks["paper"].sharp) == (0.8, 2.0)
    assert checks["paper"].selector is checks["camera"].selector is not None


def test_matchers_are_compared_at_equal_coverage():
    def row(matcher, tau, psnr, coverage):
        return {"matcher": matcher, "strategy": "sequential", "N": 6, "tau": tau, "frames": 9,
                "psnr_pseudo": psnr, "psnr_blurry": 27.0, "coverage": coverage, "refs_used": 6.0}

    rows = [row("learned", 0.7, 28.5, 0.95), row("learned", 0.8, 29.1, 0.92),
            row("learned", 0.9, 30.1, 0.83), row("dis", 0.6, 28.6, 0.92),
            row("dis", 0.7, 28.6, 0.91)]
    [c] = at_equal_coverage(rows, "dis", 0.7)
    # the best learned run covering at least DIS's 0.91: τ = 0.8, not the sharper τ = 0.9
    assert c["best"]["tau"] == 0.8 and c["gain_db"] == pytest.approx(0.5)
    assert "+0.50 dB" in quality_markdown(rows, PseudoGTConfig())
    [c] = at_equal_coverage([row("learned", 0.9, 30.1, 0.83), rows[-1]], "dis", 0.7)
    assert c["best"] is None and c["gain_db"] is None


def test_actor_resources():
    pg = PseudoGTConfig()
    # on CPUs: one CPU left to the loading tasks, at least two actors on two CPUs
    assert actor_resources(pg, {"CPU": 2}) == (0.0, 2, 0.5)
    assert actor_resources(pg, {"CPU": 3}) == (0.0, 2, 1.0)
    assert actor_resources(pg, {"CPU": 16}) == (0.0, 15, 1.0)
    assert actor_resources(pg, {"CPU": 16, "GPU": 4}) == (1.0, 4, 1.0)
    assert actor_resources(pg, {"CPU": 1}) == (0.0, 1, 0.5)
    assert actor_resources(dataclasses.replace(pg, max_concurrency=1), {"CPU": 2}) == (0.0, 1,
                                                                                      1.0)
    assert actor_resources(dataclasses.replace(pg, cpus_per_actor=0.5), {"CPU": 2}) == (0.0, 2,
                                                                                       0.5)
    # more actors than GPUs share them; an explicit share is kept
    assert actor_resources(dataclasses.replace(pg, concurrency=4), {"CPU": 16, "GPU": 1}) == (
        0.25, 4, 1.0)
    assert actor_resources(dataclasses.replace(pg, concurrency=3), {"CPU": 16, "GPU": 2})[0] == 0.5
    assert actor_resources(dataclasses.replace(pg, concurrency=2, gpus_per_actor=0.0),
                           {"CPU": 16, "GPU": 1}) == (0.0, 2, 1.0)
    with pytest.raises(ConfigError, match="no CPU for loading"):
        actor_resources(dataclasses.replace(pg, concurrency=2), {"CPU": 2})


def test_actor_memory():
    gib = 2**30
    # the default, or less on a small cluster (half its memory over the actors)
    assert actor_memory("pseudo_gt", None, {"memory": 64 * gib}, 4) == 2 * gib
    assert actor_memory("pseudo_gt", None, {"memory": 6 * gib}, 2) == 1.5 * gib
    assert actor_memory("pseudo_gt", None, {}, 2) == 2 * gib
    # an explicit request is kept, unless the actors cannot fit the cluster at all
    assert actor_memory("pseudo_gt", 5.0, {"memory": 64 * gib}, 4) == 5 * gib
    with pytest.raises(ConfigError, match=r"pseudo_gt.memory_per_actor=5: 4 actors × 5 GiB"):
        actor_memory("pseudo_gt", 5.0, {"memory": 16 * gib}, 4)
    with pytest.raises(ConfigError, match="memory_per_actor"):
        PseudoGTConfig(memory_per_actor=0).validate()


def test_pseudo_gt_on_s3(ray_cluster, s3_cfg, s3_bucket):
    from conftest import TINY

    from bluref_ray.data.synth import synthesize

    data = f"{s3_bucket}/data"
    synthesize(data, dataclasses.replace(TINY, train_clips=1, test_clips=0, frames=12,
                                         write_videos=False), s3_cfg, log=lambda _m: None)
    cfg = dataclasses.replace(_cfg(limit=3), storage=s3_cfg,
                              ingest=IngestConfig(max_refs=3, delta=3))
    run_ingest([f"{data}/train"], f"{s3_bucket}/ingest", cfg, log=lambda _m: None)
    for strategy in STRATEGIES:
        out = f"{s3_bucket}/pg-{strategy}"
        s = run_pseudo_gt(f"{s3_bucket}/ingest", out,
                          dataclasses.replace(cfg, pseudo_gt=dataclasses.replace(
                              cfg.pseudo_gt, strategy=strategy)), log=lambda _m: None)
        t = _shards(out, s3_cfg)
        _check_pairs(t, 3)
        assert s.rows == 3
        assert storage.exists(f"{out}/summary.json", s3_cfg)


def test_a_run_that_makes_no_pair_fails_with_what_to_change(ray_cluster, tiny_data, tmp_path,
                                                           capsys):
    from bluref_ray.cli import main
    from bluref_ray.pipeline.pseudo_gt import NoPairsError

    # a paired tree: every index has a blurry and a sharp frame
    seq = tmp_path / "paired" / "seq"
    shutil.copytree(f"{tiny_data}/train/clip_0000/sharp", seq / "sharp")
    shutil.copytree(f"{tiny_data}/train/clip_0000/sharp", seq / "blur")
    camera = dataclasses.replace(_cfg(limit=None), ingest=IngestConfig(protocol="camera"))
    run_ingest([str(tmp_path / "paired")], str(tmp_path / "ingest"), camera, log=lambda _m: None)
    out = str(tmp_path / "pg")
    with pytest.raises(NoPairsError, match="ingest.protocol=paper") as e:
        run_pseudo_gt(str(tmp_path / "ingest"), out, camera, log=lambda _m: None)
    assert str(e.value).startswith("0 pairs from 24 blurry frames")
    assert storage.exists(f"{out}/summary.json")  # the rejects and the summary are kept
    code = main(["pseudo-gt", str(tmp_path / "ingest"), "--out", out, "--max-refs", "3",
                 "--targets-per-shard", "3", "--quiet"])  # the same shards: a resume
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code != 0 and len(errors) == 1 and "ingest.protocol=paper" in errors[0]
    # the paper protocol (the default for a paired tree) gives the same tree references
    run_ingest([str(tmp_path / "paired")], str(tmp_path / "ingest_paper"), _cfg(limit=3),
               log=lambda _m: None)
    s = run_pseudo_gt(str(tmp_path / "ingest_paper"), str(tmp_path / "pg_paper"), _cfg(limit=3),
                      log=lambda _m: None)
    assert s.rows == 3 and s.protocols == {"paper": 1}


def test_the_torch_path_runs_on_the_cpu_against_the_dis_path(tiny_frames):
    """The GPU path (refiner=torch: DIS in PyTorch), run on the CPU, against the CPU path
    (OpenCV's DIS) on the same windows (all of the tiny clips': the gain of one frame can differ
    by several dB): the same gain over the blurry frame on confident pixels within a few tenths
    of a dB (5.31 against 5.43 dB over 25 frames when written) at the same coverage, and the
    second match alone in PyTorch as good as DIS's (docs/results.md has the real-footage and
    synthetic tables)."""
    from bluref_ray.data.windows import load_windows
    from bluref_ray.fusion import torch_rematch
    from bluref_ray.pipeline.pairs import PairMaker

    frames = schema.read_table(f"{tiny_frames}/frames", schema.FRAMES)
    windows = list(load_windows(frames, 3, 3))
    gains = {}
    for run in ("dis", "torch", "dis+torch second match"):
        make = PairMaker(dataclasses.replace(CFG.pseudo_gt, refiner=run.split("+")[0]), "t",
                         torch.device("cpu"))
        if run.endswith("second match"):
            make.rematch = torch_rematch()
        rows = [r for w, px in windows for r in make(w, px)[0]]
        scored = [r for r in rows if r["psnr_pseudo"] is not None]  # no confident pixel: None
        assert len(scored) >= len(rows) - 2, rows
        gains[run] = (np.mean([r["psnr_pseudo"] - r["psnr_blurry"] for r in scored]),
                      np.mean([r["coverage"] for r in rows]))
    (g_dis, c_dis), (g_torch, c_torch) = gains["dis"], gains["torch"]
    assert g_dis > 3 and g_torch > g_dis - 0.5, gains  # both beat the blurry frame well
    assert abs(c_torch - c_dis) < 0.03, gains
    g_second, c_second = gains["dis+torch second match"]
    assert g_second > g_dis - 0.3 and abs(c_second - c_dis) < 0.03, gains


def test_a_window_redone_without_rejects_drops_the_old_ones_and_a_lost_truth_is_no_crash(
        tmp_path):
    """A killed window's rejects (written before its shard) do not outlive a redo that has
    none (the frame would count as a pair and a reject); a ground truth that is gone or broken
    leaves only the quality figure out."""
    from bluref_ray.pipeline.pairs import _psnr_on_confident, write_window

    out = str(tmp_path)
    reject = {"clip_id": "c", "frame_id": "c:blurry:000001", "frame_index": 1,
              "source_uri": "x.png", "reason": "x.png: missing"}
    write_window(out, "w0", [], [reject], None)
    assert (tmp_path / "rejects" / "w0.parquet").exists()
    write_window(out, "w0", [], [], None)
    assert not (tmp_path / "rejects" / "w0.parquet").exists()
    frame = np.zeros((8, 8, 3), np.uint8)
    conf = np.full((8, 8), 255, np.uint8)
    assert _psnr_on_confident(str(tmp_path / "gone.png"), frame, frame, conf, 0.7,
                              None) == (None, None)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    assert _psnr_on_confident(str(tmp_path / "broken.png"), frame, frame, conf, 0.7,
                              None) == (None, None)
