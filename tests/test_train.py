"""Deblurrer training on Ray Train: data stage, DDP, validation, kill and resume, refinement."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle

import numpy as np
import pytest
import torch
from conftest import kill_when, kill_worker_when, wait_workers_gone

from bluref_ray.config import Config, ConfigError, RayConfig, RefineConfig, TrainConfig
from bluref_ray.data.images import encode_png
from bluref_ray.models import read_checkpoint
from bluref_ray.training.common import gpu_workers, latest_checkpoint
from bluref_ray.training.deblur import crop_pairs, train_deblurrer

TINY_TRAIN = TrainConfig(steps=3, batch_size=2, crop=32, crops_per_frame=2, workers=1,
                         cpus_per_worker=0.5, val_frames=2, val_every=3, checkpoint_every=3,
                         log_every=1)


def _cfg(**train) -> Config:
    return Config(ray=RayConfig(progress_bars=False),
                  train=dataclasses.replace(TINY_TRAIN, **train))


def test_crops_carry_the_confidence_mask_at_tau():
    blurry = np.full((20, 30, 3), 10, np.uint8)
    pseudo = np.full((20, 30, 3), 200, np.uint8)
    pseudo[..., 0] = np.arange(30)  # the column, to check the mask pixel by pixel
    conf = np.zeros((20, 30), np.uint8)
    conf[:, 15:] = 179  # 179/255 = 0.702 ≥ 0.7; 0 elsewhere
    batch = {"row_id": np.array(["r"]), "blurry_png": np.array([encode_png(blurry)], object),
             "pseudo_png": np.array([encode_png(pseudo)], object),
             "confidence_png": np.array([encode_png(conf)], object),
             "gt_uri": np.array([None], object)}
    out = crop_pairs(batch, crop=16, crops_per_frame=5, tau=0.7, supervised=False,
                     rng=np.random.default_rng(0))
    assert out["blurry"].shape == (5, 16, 16, 3) and out["mask"].shape == (5, 16, 16)
    assert set(np.unique(out["blurry"])) == {10} and set(np.unique(out["target"][..., 1])) == {200}
    np.testing.assert_array_equal(out["mask"], (out["target"][..., 0] >= 15).astype(np.uint8))
    small = crop_pairs(batch, crop=24, crops_per_frame=1, tau=0.7, supervised=False)
    assert small["blurry"].shape == (1, 24, 24, 3)  # padded by reflection
    with pytest.raises(ConfigError, match="no ground truth"):
        crop_pairs(batch, crop=16, crops_per_frame=1, tau=0.7, supervised=True)


def test_color_augmentation_recolors_input_and_target_alike():
    blurry = np.empty((20, 30, 3), np.uint8)
    blurry[...] = (40, 120, 200)  # one value per channel: the order shows in every pixel
    pseudo = blurry + np.uint8(20)
    conf = np.full((20, 30), 255, np.uint8)
    batch = {"row_id": np.array(["r"]), "blurry_png": np.array([encode_png(blurry)], object),
             "pseudo_png": np.array([encode_png(pseudo)], object),
             "confidence_png": np.array([encode_png(conf)], object),
             "gt_uri": np.array([None], object)}
    out = crop_pairs(batch, crop=16, crops_per_frame=40, tau=0.7, supervised=False,
                     rng=np.random.default_rng(0), color_aug=True)
    assert out["mask"].min() == 1  # the mask is not recoloured
    orders, gains = set(), []
    for b, t in zip(out["blurry"], out["target"]):
        assert (b == b[0, 0]).all() and (t == t[0, 0]).all()
        gain = b[0, 0].astype(float).sum() / 360
        order = [int(np.argmin(np.abs(np.array([40, 120, 200]) * gain - v))) for v in b[0, 0]]
        assert sorted(order) == [0, 1, 2] and 0.5 - 0.01 <= gain <= 1.0 + 0.01
        # the target got the same channel order and the same gain
        expected = (np.array([60, 140, 220])[order] * gain)
        np.testing.assert_allclose(t[0, 0], expected, atol=1.6)
        orders.add(tuple(order))
        gains.append(gain)
    assert len(orders) > 1 and np.ptp(gains) > 0.2  # both vary from crop to crop


def test_two_ddp_workers_train_and_end_with_equal_weights(ray_cluster, tiny_pairs, tiny_data,
                                                          tmp_path):
    out = str(tmp_path / "ddp")
    cfg = _cfg(workers=2, batch_size=4, val=f"{tiny_data}/test", use_gpu=False)  # gloo
    s = train_deblurrer(tiny_pairs, out, cfg, log=lambda _m: None)
    sums = json.loads((tmp_path / "ddp" / "final.json").read_text())["weight_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    ckpt = read_checkpoint(s.model)
    assert ckpt["step"] == 3 and ckpt["arch"] == "nafnet"
    from bluref_ray.models import build_model

    torch.manual_seed(0)  # the loop starts from seed-0 weights
    init = build_model("nafnet-tiny").state_dict()
    assert any(not torch.equal(init[k], ckpt["state_dict"][k]) for k in init)  # it trained
    v = s.val
    assert v["step"] == 3 and 10 < v["psnr_blurry"] < 60 and 0 < v["ssim"] <= 1
    assert (tmp_path / "ddp" / "tensorboard").is_dir()


def test_supervised_mode_trains_on_ground_truth(ray_cluster, tiny_pairs, tmp_path):
    s = train_deblurrer(tiny_pairs, str(tmp_path / "sup"), _cfg(supervised=True, steps=2),
                        log=lambda _m: None)
    assert read_checkpoint(s.model)["train_config"]["supervised"] is True


def test_resources_asked_for_are_awaited_and_never_replaced_by_cpus(ray_cluster, tiny_pairs,
                                                                    tiny_frames, tmp_path):
    """GPUs asked for on a cluster without any: the command asks the autoscaler, says what it
    waits for, and after ray.resource_timeout_s stops with an error (no CPU run instead)."""
    import time

    from bluref_ray.config import PseudoGTConfig
    from bluref_ray.pipeline.pseudo_gt import run_pseudo_gt
    from bluref_ray.ray_utils import ClusterResourcesError
    from bluref_ray.training.common import settle_workers

    wait = RayConfig(progress_bars=False, resource_timeout_s=2)
    logs: list[str] = []
    t0 = time.time()
    with pytest.raises(ClusterResourcesError, match=r"short of 1 GPU.*ray.resource_timeout_s"):
        train_deblurrer(tiny_pairs, str(tmp_path / "gpu"),
                        dataclasses.replace(_cfg(use_gpu=True), ray=wait), log=logs.append)
    assert time.time() - t0 >= 2
    assert "waiting for 0.5 CPU, 1 GPU (1 GPU training worker(s))" in logs[0]
    assert not (tmp_path / "gpu" / "ray-train").exists()
    with pytest.raises(ClusterResourcesError, match="pseudo_gt: 1 actor"):
        run_pseudo_gt(tiny_frames, str(tmp_path / "pgt"),
                      Config(ray=wait, pseudo_gt=PseudoGTConfig(gpus_per_actor=1.0)),
                      log=lambda _m: None)
    logs.clear()  # left to its default: CPUs, and it says so
    assert settle_workers(TrainConfig(), "train", RayConfig(), logs.append).use_gpu is False
    assert "no GPU in the cluster now: training on CPUs" in logs[0]


def test_missing_shards_and_bad_settings_are_clear_errors(ray_cluster, tmp_path):
    with pytest.raises(ConfigError, match="no pseudo-pair shards"):
        train_deblurrer(str(tmp_path), str(tmp_path / "o"), _cfg(), log=lambda _m: None)
    with pytest.raises(ConfigError, match="for loading data"):  # would wait forever
        train_deblurrer(str(tmp_path), str(tmp_path / "o"),
                        _cfg(workers=2, batch_size=2, cpus_per_worker=1.0, use_gpu=False),
                        log=lambda _m: None)
    from bluref_ray.config import load_config

    with pytest.raises(ConfigError, match="train.loss"):
        load_config(None, ["train.loss=l3"])
    with pytest.raises(ConfigError, match="must divide"):
        load_config(None, ["train.workers=2", "train.batch_size=3"])


def test_gpu_workers_fit_the_clusters_gpus():
    tc = TrainConfig(workers=2)
    assert gpu_workers(tc, {"CPU": 2}).use_gpu is False  # no GPU: the CPU workers as asked
    logs: list[str] = []
    one = gpu_workers(tc, {"CPU": 16, "GPU": 1}, log=logs.append)
    assert (one.use_gpu, one.workers) == (True, 1) and "1 GPU worker(s) instead of 2" in logs[0]
    assert gpu_workers(tc, {"CPU": 16, "GPU": 4}).workers == 2
    four = dataclasses.replace(tc, workers=4, batch_size=8)  # 3 GPUs: 2 workers split 8 evenly
    assert gpu_workers(four, {"CPU": 16, "GPU": 3}, log=logs.append).workers == 2
    cpu = dataclasses.replace(tc, use_gpu=False)
    assert gpu_workers(cpu, {"CPU": 16, "GPU": 1}) == cpu
    with pytest.raises(ConfigError, match="2 GPU worker.*has 1 GPU"):  # would wait forever
        gpu_workers(dataclasses.replace(tc, use_gpu=True), {"CPU": 16, "GPU": 1})


def _loads(state: os.PathLike) -> bool:
    """Whether a checkpoint's ``state.pt`` is whole (a kill can cut one while it is written)."""
    try:
        torch.load(state, weights_only=True)
        return True
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
        return False


def test_a_training_of_other_settings_is_not_resumed_into_the_same_out(ray_cluster, tiny_pairs,
                                                                        tmp_path):
    """Its checkpoint would be resumed (with the old learning rate) or its model exported as
    the new run's; steps may grow."""
    out = str(tmp_path / "train")
    cfg = _cfg(steps=2, checkpoint_every=2, val=None)
    first = train_deblurrer(tiny_pairs, out, cfg, log=lambda _m: None)
    other = _cfg(steps=2, checkpoint_every=2, val=None, lr=TINY_TRAIN.lr / 10)
    with pytest.raises(ConfigError, match=r"holds a training run with other settings or "
                                          r"inputs \(settings.lr: [0-9.e-]+ there, "
                                          r"[0-9.e-]+ now\); "
                                          r"use another --out, or delete it to start over"):
        train_deblurrer(tiny_pairs, out, other, log=lambda _m: None)
    more = train_deblurrer(tiny_pairs, out, _cfg(steps=4, checkpoint_every=2, val=None),
                           log=lambda _m: None)
    assert more.steps == 4
    # the seconds of training count both runs, and a rerun of the finished one keeps them
    assert first.seconds > 0 and more.seconds > first.seconds
    again = train_deblurrer(tiny_pairs, out, _cfg(steps=4, checkpoint_every=2, val=None),
                            log=lambda _m: None)
    assert again.seconds == more.seconds


def test_a_resumed_training_does_not_read_its_init_again(ray_cluster, tiny_pairs, tmp_path):
    """The checkpoint of a started run holds the weights: its ``train.init`` (a model of an
    earlier round, say) may be gone when the run is resumed, and a fresh run without it is
    refused with the path named."""
    first = str(tmp_path / "first")
    train_deblurrer(tiny_pairs, first, _cfg(steps=2, checkpoint_every=2, val=None),
                    log=lambda _m: None)
    init = str(tmp_path / "init.pt")
    os.rename(os.path.join(first, "model.pt"), init)
    out = str(tmp_path / "train")
    train_deblurrer(tiny_pairs, out, _cfg(steps=2, checkpoint_every=2, val=None, init=init),
                    log=lambda _m: None)
    os.remove(init)
    more = train_deblurrer(tiny_pairs, out, _cfg(steps=4, checkpoint_every=2, val=None,
                                                 init=init), log=lambda _m: None)
    assert more.steps == 4 and os.path.exists(os.path.join(out, "model.pt"))
    with pytest.raises(ConfigError, match=f"train.init={init}: no such checkpoint"):
        train_deblurrer(tiny_pairs, str(tmp_path / "fresh"),
                        _cfg(steps=2, val=None, init=init), log=lambda _m: None)


def test_checkpoints_sort_by_step_past_a_million_and_cadences_must_be_positive(tmp_path):
    from bluref_ray.training.common import checkpoints

    for step in (999_998, 1_000_000, 2):
        d = tmp_path / "ray-train" / f"step_{step:06d}"
        d.mkdir(parents=True)
        (d / "state.pt").write_bytes(b"x")
    assert [int(c.rsplit("_", 1)[1]) for c in checkpoints(str(tmp_path), None)] == [
        2, 999_998, 1_000_000]
    for name in ("checkpoint_every", "log_every", "val_every"):
        with pytest.raises(ConfigError, match=f"train.{name}=0"):
            TrainConfig(**{name: 0}).validate()


def test_the_latest_checkpoint_passes_over_one_cut_short_by_a_kill(tmp_path):
    import io

    buf = io.BytesIO()
    torch.save({"step": 4}, buf)
    whole = buf.getvalue()
    for step, blob in ((2, whole), (4, whole), (6, whole[: len(whole) // 2])):
        d = tmp_path / "ray-train" / f"step_{step:06d}"
        d.mkdir(parents=True)
        (d / "state.pt").write_bytes(blob)
    assert latest_checkpoint(str(tmp_path), None).endswith("step_000004")
    for d in (tmp_path / "ray-train").iterdir():
        (d / "state.pt").write_bytes(b"")
    assert latest_checkpoint(str(tmp_path), None) is None


def test_a_round_made_from_another_model_is_made_again(ray_cluster, tiny_frames, tmp_path):
    """Rerun with more steps: round 1 trains on, so round 2's pairs (made from round 1's
    earlier model) are stale and made again; --overwrite deletes every round's work.
    Settings out of range are refused."""
    from bluref_ray.config import PseudoGTConfig
    from bluref_ray.refine import prepare_round, run_refine

    out = str(tmp_path / "refine")
    cfg = dataclasses.replace(_cfg(steps=2, checkpoint_every=2, val=None),
                              refine=RefineConfig(rounds=2, steps_later=1),
                              pseudo_gt=PseudoGTConfig(max_refs=2, concurrency=1, limit=2))
    run_refine(tiny_frames, out, cfg, log=lambda _m: None)
    shards = lambda k: {p.name: p.stat().st_mtime_ns  # noqa: E731
                        for p in (tmp_path / "refine" / f"round_{k}").glob("pseudo_gt/shards/*")}
    before = {k: shards(k) for k in (1, 2)}
    logs: list[str] = []
    more = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=4))
    r = run_refine(tiny_frames, out, more, log=logs.append)
    assert shards(1) == before[1]  # round 1's pairs stand (made from the blurry frames)
    assert shards(2).keys() == before[2].keys() and all(
        shards(2)[n] != t for n, t in before[2].items())  # made again
    assert any("round 2: made from another model" in m for m in logs)
    assert [row["round"] for row in r["rounds"]] == [1, 2]
    assert read_checkpoint(f"{out}/round_1/train/model.pt")["step"] == 4
    # --overwrite: the round's pairs and training go, and are made again from scratch
    prepare_round(f"{out}/round_1", 1, None, True, None, lambda _m: None)
    assert not (tmp_path / "refine" / "round_1" / "train").exists()
    assert not (tmp_path / "refine" / "round_1" / "pseudo_gt").exists()
    for bad, match in ((RefineConfig(steps_later=0), "steps_later=0"),
                       (PseudoGTConfig(limit=0), "limit=0")):
        key = "refine" if isinstance(bad, RefineConfig) else "pseudo_gt"
        with pytest.raises(ConfigError, match=match):
            dataclasses.replace(cfg, **{key: bad}).validate()


@pytest.mark.faults
def test_killed_refinement_and_training_worker_resume_and_rounds_match_the_previous_models_output(
        ray_cluster, tiny_frames, tiny_pairs, tiny_data, tmp_path):
    """`bluref refine` through every interruption it can meet, one after the other:

    1. in round 1's training, the Ray Train worker's process is SIGKILLed once the checkpoint of
       step 4 appears (that of step 2 is complete then; one cut while being written is not
       used): Ray Train replaces the worker group, which goes on from a checkpoint (not from
       step 0); after its next checkpoint the `bluref refine` process group is SIGKILLed;
    2. the same command resumes round 1's training from its newest checkpoint and is SIGKILLed
       once it has written round 1's model (between two stages);
    3. the same run goes on to the end: finished stages are not redone, round 1's pseudo-GT
       equals an uninterrupted pseudo-GT run's (``tiny_pairs``), round 2 matches the output of
       round 1's model, and older checkpoints stay only if Ray Train still lists them."""
    from bluref_ray import schema
    from bluref_ray.config import PseudoGTConfig
    from bluref_ray.refine import run_refine

    out = tmp_path / "refine"
    steps = 12
    cfg = dataclasses.replace(
        _cfg(steps=steps, val=f"{tiny_data}/test", val_every=steps, checkpoint_every=2,
             max_failures=2, keep_checkpoints=2),
        refine=RefineConfig(rounds=2, steps_later=1),
        pseudo_gt=PseudoGTConfig(max_refs=2, concurrency=1, limit=6))
    r1 = out / "round_1"
    ckpts = r1 / "train" / "ray-train"
    command = [
        "refine", tiny_frames, "--out", str(out), "--rounds", "2", "--steps-later", "1",
        "--max-refs", "2", "--concurrency", "1", "--limit", "6", "--train-steps", str(steps),
        "--train-batch-size", "2", "--train-crop", "32", "--train-crops-per-frame", "2",
        "--train-cpus-per-worker", "0.5", "--train-val", f"{tiny_data}/test",
        "--train-val-frames", "2", "--train-val-every", str(steps),
        "--train-checkpoint-every", "2",
        "--train-max-failures", "2", "--train-keep-checkpoints", "2", "--train-log-every", "1",
        "--no-ray-progress-bars"]
    log1, log2 = tmp_path / "refine-1.log", tmp_path / "refine-2.log"
    marker = "going on from the checkpoint of step "

    def went_on() -> int | None:
        text = log1.read_text() if log1.exists() else ""
        return int(text.split(marker)[1].split()[0]) if marker in text else None

    def next_checkpoint() -> bool:  # one the replaced worker group wrote, whole
        step = went_on()  # (its folder appears before its state.pt is complete)
        return step is not None and _loads(ckpts / f"step_{step + 2:06d}" / "state.pt")

    with kill_worker_when("RayTrainWorker", (ckpts / "step_000004").is_dir) as killed:
        kill_when(command, next_checkpoint, "a checkpoint of the replaced worker group",
                  timeout_s=300, log=log1)
    assert len(killed) == 1 and went_on() >= 2  # replaced, and not from scratch
    wait_workers_gone("RayTrainWorker")  # the killed run's workers write until Ray reaps them
    assert not (r1 / "train" / "model.pt").exists()
    assert latest_checkpoint(str(r1 / "train"), None) is not None
    # the newest checkpoint that loads: the kill may cut the newest one while it is written,
    # and the resume then skips it (resume_state)
    stopped = max(int(d.name.rsplit("_", 1)[1]) for d in ckpts.glob("step_*")
                  if _loads(d / "state.pt"))
    assert went_on() + 2 <= stopped < steps
    kill_when(command, (r1 / "train" / "model.pt").is_file, "round 1's model", timeout_s=300,
              log=log2)
    assert any("resuming from" in line for line in log2.read_text().splitlines())
    kept = {p: p.stat().st_mtime_ns for p in out.glob("round_*/pseudo_gt/shards/*.parquet")}
    logs: list[str] = []
    r = run_refine(tiny_frames, str(out), cfg, log=logs.append)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished shards not redone
    rows = r["rounds"]
    assert [row["round"] for row in rows] == [1, 2]
    assert all(row["pairs"] > 0 and row["val_psnr"] is not None for row in rows)
    first = schema.read_table(f"{r1}/pseudo_gt/shards", schema.PSEUDO_PAIRS).sort_by("row_id")
    assert first.equals(schema.read_table(f"{tiny_pairs}/shards",
                                          schema.PSEUDO_PAIRS).sort_by("row_id"))
    assert r["model"].endswith("round_2/train/model.pt")
    assert any("matching the output of" in m and "round_1/train/model.pt" in m for m in logs)
    assert read_checkpoint(f"{r1}/train/model.pt")["step"] == steps
    final = json.loads((r1 / "train" / "final.json").read_text())
    assert final["step"] == steps and final["start_step"] == stopped, final
    names = sorted(p.name for p in ckpts.glob("step_*"))
    assert names[-2:] == [f"step_{steps - 2:06d}", f"step_{steps:06d}"], names
    listed = (ckpts / "checkpoint_manager_snapshot.json").read_text()  # Ray Train's own record
    assert all(k in listed for k in names[:-2]), names  # older ones only if Ray Train lists them
    assert read_checkpoint(r["model"])["step"] == 1  # round 2: warm start, its own schedule
    lrs = [json.loads((r1.parent / f"round_{k}" / "train" / "train.json").read_text())
           ["config"]["lr"] for k in (1, 2)]
    assert lrs[1] == pytest.approx(lrs[0] * cfg.refine.lr_later)  # round 2 fine-tunes
    for name in ("refine.json", "refine.md", "refine.png"):
        assert (out / name).stat().st_size > 0
    assert not [n for _, _, fs in os.walk(out) for n in fs if n.startswith(".") and
                n.endswith(".tmp")]


def test_validation_without_ground_truth_scores_niqe(tmp_path):
    """A folder of blurry frames (no truth): validation reports NIQE of output and input."""
    import cv2
    from skimage.data import astronaut

    from bluref_ray.models import build_model
    from bluref_ray.training.validation import (
        describe_validation,
        load_pair_images,
        validate,
        validation_frames,
    )

    img = cv2.resize(astronaut(), (128, 96), interpolation=cv2.INTER_AREA)
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i:04d}.png"), cv2.GaussianBlur(img, (0, 0), 1 + i)[..., ::-1])
    frames = validation_frames(str(tmp_path), 2, None)
    assert len(frames) == 2 and all(gt is None for _, gt in frames)
    torch.manual_seed(0)
    v = validate(build_model("nafnet-tiny"), load_pair_images(frames, None), torch.device("cpu"))
    assert set(v) == {"niqe", "niqe_blurry", "example"}
    assert 0 < v["niqe_blurry"] < 100 and np.isfinite(v["niqe"])
    assert v["example"].shape == (3, 96, 256)  # blurry | deblurred
    assert "NIQE" in describe_validation(v)
    # a flat frame (a covered lens) has no NIQE: left out of the means, the training goes on
    flat = np.full((96, 128, 3), 40, np.uint8)
    pairs = load_pair_images(frames, None)
    with_flat = validate(build_model("nafnet-tiny"), [*pairs, (flat, None)], torch.device("cpu"))
    assert with_flat["niqe_blurry"] == pytest.approx(v["niqe_blurry"], rel=1e-5)
    only_flat = validate(build_model("nafnet-tiny"), [(flat, None)], torch.device("cpu"))
    assert np.isnan(only_flat["niqe"]) and np.isnan(only_flat["niqe_blurry"])
