"""Ref-NAFNet: matching, the network, its loss, its triplets, and training it on Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bluref_ray.config import Config, ConfigError, RefNetConfig, load_config
from bluref_ray.data.triplets import Candidate, choose, recorded, reference_for
from bluref_ray.losses import multiscale_loss
from bluref_ray.models import build_model, save_checkpoint
from bluref_ray.models.refnafnet import (
    RefNAFNet,
    global_match,
    load_match_features,
    local_match,
)

SMALL = {"width": 8, "enc_blocks": (1, 1, 1), "middle_blocks": 1, "dec_blocks": (1, 1, 1),
         "window": 4}


def test_an_image_matched_to_itself_gives_the_identity_with_confidence_one():
    torch.manual_seed(0)
    model = RefNAFNet(**SMALL)
    load_match_features(model)  # the shipped matcher's features
    image = torch.rand(1, 3, 24, 40)  # noise: every patch is unique
    index, conf = model.match(image, image, None)
    assert torch.equal(index[0], torch.arange(24 * 40))
    assert conf.min() > 0.999
    # the local search around the identity finds it again at the next scale
    fine = torch.rand(1, 3, 48, 80)
    index2, conf2 = model.match(fine, fine, (torch.arange(24 * 40)[None], 40))
    assert torch.equal(index2[0], torch.arange(48 * 80))
    assert conf2.min() > 0.999


@pytest.mark.parametrize("size", [(10, 14), (9, 13)])
def test_local_search_equals_the_global_one_when_its_window_covers_the_image(size):
    torch.manual_seed(1)
    query, keys = torch.randn(2, 6, *size), torch.randn(2, 6, *size)
    g_index, g_conf = global_match(query, keys, chunk=64)  # chunked: 64 // 140 → 1 row at once
    cells = ((size[0] + 1) // 2) * ((size[1] + 1) // 2)
    coarse = torch.randint(0, cells, (2, cells))  # wherever the coarse scale matched
    l_index, l_conf = local_match(query, keys, coarse, (size[1] + 1) // 2, window=2 * max(size),
                                  chunk=500)
    assert torch.equal(g_index, l_index)
    assert torch.allclose(g_conf, l_conf, atol=1e-5)
    # a small window only moves the match within it, and chunking does not change it
    small = local_match(query, keys, coarse, (size[1] + 1) // 2, window=4, chunk=10**6)[0]
    assert torch.equal(small, local_match(query, keys, coarse, (size[1] + 1) // 2, window=4,
                                          chunk=50)[0])


def test_shapes_at_every_scale_on_odd_sizes_and_a_reference_of_another_size():
    model = RefNAFNet(**SMALL)
    blurry, reference = torch.rand(2, 3, 37, 29), torch.rand(2, 3, 40, 30)
    outs = model(blurry, reference, return_scales=True)
    assert [tuple(o.shape) for o in outs] == [(2, 3, 10, 8), (2, 3, 19, 15), (2, 3, 37, 29),
                                              (2, 3, 37, 29)]
    assert model(blurry, reference).shape == blurry.shape
    assert build_model("refnafnet-tiny").window == 8


def test_gradients_reach_the_fusion_layers_and_the_reference_encoder():
    torch.manual_seed(2)
    model = RefNAFNet(**SMALL)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    blurry, reference, target = torch.rand(3, 2, 3, 32, 32)
    for _ in range(2):  # conv1 starts at zero: the others get gradients from the second step
        opt.zero_grad()
        multiscale_loss(model(blurry, reference, return_scales=True), target).backward()
        opt.step()
    for name in ("fusions.0.conv1", "fusions.2.conv1", "fusions.1.conv2", "ref_encoder.intro.0"):
        grad = dict(model.named_modules())[name].weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.phi.parameters())  # the matching features stay


def test_global_match_memory_stays_bounded_on_a_720p_frame():
    """At 1/4 of 1280×720 all-pairs similarities would take 13 GB; chunked (the default
    chunk, features as wide as the model's), the peak stays below 0.5 GiB more than the inputs
    (measured in a fresh process; a new block per chunk once grew the heap to 12 GiB)."""
    code = """
import resource, torch
from bluref_ray.models.refnafnet import global_match
torch.set_num_threads(2)
q, k = torch.rand(1, 16, 180, 320), torch.rand(1, 16, 180, 320)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
index, conf = global_match(q, k)
assert index.shape == conf.shape == (1, 180 * 320)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip()) < 0.5  # GiB (ru_maxrss is in KiB)


def test_multiscale_loss_compares_every_scale_and_respects_the_mask():
    target = torch.rand(1, 3, 16, 16)
    exact = [torch.nn.functional.avg_pool2d(target, 4), torch.nn.functional.avg_pool2d(target, 2),
             target]
    assert multiscale_loss(exact, target) < 0.01  # Charbonnier's ε only
    wrong = target.clone()
    wrong[..., :, :8] = 0  # wrong on the left half only
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 8:] = 1
    assert multiscale_loss([wrong], target) > 0.1
    assert multiscale_loss([wrong], target, mask) < 0.01


def test_references_by_sharpness_within_delta_and_from_another_clip():
    frames = [{"index": i, "role": "blurry" if i % 3 == 0 else "sharp", "key": str(i)}
              for i in range(10)]
    frames.append({"index": 3, "role": "sharp", "key": "gt3"})  # a blurry frame's ground truth
    kept = {f["key"] for f in recorded(frames)}
    assert "gt3" not in kept and {"0", "1", "3"} <= kept
    cands = [Candidate(i, str(i), score) for i, score in enumerate(
        [0.1, 0.5, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6, 0.05])]
    # within ±2 of 3, never itself: 2 (0.9), 4 (0.8), 1 (0.5), 5 (0.3), sharpest first
    assert choose(cands, 3, 2, "sharpest").key == "2"
    assert choose(cands, 3, 2, "middle").key == "1"
    assert choose(cands, 3, 2, "blurriest").key == "5"
    assert choose(cands, 3, 0, "sharpest") is None
    clips = {"a": cands, "b": [Candidate(i, f"b{i}", 0.5) for i in range(4)]}
    assert reference_for(clips, "a", 3, 2, "shuffled").key.startswith("b")
    assert reference_for(clips, "b", 1, 2, "shuffled").key in {"2", "4", "1", "3", "0"}
    with pytest.raises(ConfigError, match="shuffled needs a second clip"):
        reference_for({"a": cands}, "a", 3, 2, "shuffled")


def test_reference_crops_hold_the_blurry_crop_in_view():
    from bluref_ray.data.triplets import triplet_crops

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    stack = np.concatenate([image, image, image // 2, np.full((50, 70, 1), 255, np.uint8)], 2)
    crops, refs = triplet_crops([stack], 6, 16, 32, rng)
    assert crops.shape == (6, 16, 16, 7) and refs.shape == (6, 32, 32, 3)
    for crop, ref in zip(crops, refs):
        windows = np.lib.stride_tricks.sliding_window_view(ref, (16, 16, 3))[..., 0, :, :, :]
        assert (windows == crop[..., :3]).all(axis=(-3, -2, -1)).any()  # flipped alike
        assert (crop[..., 3:6] == crop[..., :3] // 2).all() and (crop[..., 6] == 255).all()
    small, small_refs = triplet_crops([stack[:20, :20]], 2, 16, 32, rng)  # padded
    assert small_refs.shape == (2, 32, 32, 3)


def test_a_video_frame_waits_for_its_reference_and_gets_the_sharpest_nearby():
    from types import SimpleNamespace

    from bluref_ray.pipeline.deblur import _with_references, sharpest_nearby

    scores = [0.1, 0.2, 0.9, 0.3, 0.1, 0.1, 0.8, 0.2]
    ref_of = sharpest_nearby(scores, 2)
    assert ref_of == [2, 2, 3, 2, 2, 6, 7, 6]  # never itself: 3 is the sharpest near 2
    assert sharpest_nearby([0.5], 2) == [0]  # alone: itself
    assert sharpest_nearby([5.0, -1.0, 0.2], 2) == [2, 0, 0]  # unreadable (-1): never a reference
    frames = [SimpleNamespace(index=i, rgb=np.full((2, 2, 3), i, np.uint8)) for i in range(8)]
    got = [(f.index, int(r[0, 0, 0])) for f, r in _with_references(iter(frames), ref_of)]
    assert got == list(enumerate(ref_of))  # in order, each with its reference's pixels


def test_deblurring_with_a_reference_keeps_no_graph():
    """Whole frames go through Ref-NAFNet at once: with autograd on, every activation of the
    frame would be kept."""
    from bluref_ray.config import DeblurConfig
    from bluref_ray.pipeline.deblur import deblur_frames

    model = build_model("refnafnet-tiny").eval()
    grad = []
    model.register_forward_hook(lambda *_: grad.append(torch.is_grad_enabled()))
    frames = np.random.default_rng(0).integers(0, 256, (2, 24, 40, 3), np.uint8)
    out = deblur_frames(model, frames, DeblurConfig(), torch.device("cpu"), frames[::-1].copy())
    assert out.shape == frames.shape and grad == [False]


def test_train_ref_on_pseudo_pairs_then_eval_and_deblur_with_references(
        ray_cluster, tiny_frames, tiny_pairs, tiny_data, tmp_path, monkeypatch):
    """No ground truth anywhere in training: BluRef's pseudo-pairs as targets (given by paths
    relative to where the command runs: Ray Train's workers run elsewhere); then `bluref eval`
    and `bluref deblur` give the model its references."""
    from bluref_ray.evaluation import evaluate
    from bluref_ray.models import load_checkpoint
    from bluref_ray.pipeline.deblur import run_deblur
    from bluref_ray.training.refnet import train_ref

    cfg = load_config(None, ["ray.num_cpus=2", "ray.quiet=true", "refnet.steps=4",
                             "refnet.batch_size=2", "refnet.crop=32", "refnet.log_every=2",
                             "refnet.checkpoint_every=2", "refnet.max_frames=4",
                             f"refnet.pairs={os.path.relpath(tiny_pairs, tmp_path)}"])
    monkeypatch.chdir(tmp_path)
    r = train_ref(os.path.relpath(tiny_frames), "ref", cfg, log=lambda _m: None)
    model, ckpt = load_checkpoint(r["model"])
    assert isinstance(model, RefNAFNet) and r["steps"] == 4
    assert ckpt["kwargs"]["match_features"] == "matcher"
    final = json.loads((tmp_path / "ref" / "final.json").read_text())
    assert final["weight_checksums"]
    naf = str(tmp_path / "naf.pt")
    save_checkpoint(build_model("nafnet-tiny"), naf, "nafnet-tiny", {})
    ev = evaluate({"ref": r["model"], "naf": naf}, [f"{tiny_data}/test"], str(tmp_path / "eval"),
                  Config(), max_frames=3, reference="blurriest", log=lambda _m: None)
    assert ev["reference"] == "blurriest"
    assert all(f["reference"] and "/blur/" in f["reference"] for f in ev["frames"])
    by = {m["method"]: m for m in ev["methods"]}
    assert set(by) == {"blurry", "ref", "naf"}  # side by side with a single-image model
    assert all(np.isfinite(m["psnr"]) and m["frames"] == 3 for m in by.values())
    with pytest.raises(ConfigError, match="second clip"):
        evaluate({"ref": r["model"]}, [f"{tiny_data}/test"], str(tmp_path / "eval2"), Config(),
                 max_frames=3, reference="shuffled", log=lambda _m: None)
    video = f"{tiny_data}/videos/test/clip_0000.mp4"
    s = run_deblur(r["model"], [video], str(tmp_path / "deblurred"),
                   load_config(None, ["ray.quiet=true", "deblur.reference_delta=3"]),
                   log=lambda _m: None)
    assert s["done"] == 1 and s["frames"] == 24 and not s["failed"]


def test_a_reference_from_another_video_is_that_videos_frame(tiny_table, tiny_data):
    """The shuffled control on video sources: two clips share frame indices, and each frame
    must come from its own video."""
    from bluref_ray.data.triplets import Triplet, load_triplets, read_frames
    from bluref_ray.data.video import decode_frames

    table = read_frames(tiny_table, None)
    rows = [r for r in table.to_pylist() if r["source_kind"] == "video"]
    a, b = sorted({r["clip_id"] for r in rows})[:2]
    blurry = next(r for r in rows if r["clip_id"] == a and r["role"] == "blurry")
    ref = next(r for r in rows if r["clip_id"] == b and r["frame_index"] == blurry["frame_index"])
    target = next(r["gt_uri"] for r in table.to_pylist() if r["gt_uri"])
    stack, = load_triplets([Triplet(blurry["frame_id"], a, blurry["frame_index"],
                                    ref["frame_id"], target)], table, None)
    frame = lambda r: next(f.rgb for f in decode_frames(r["source_uri"])  # noqa: E731
                           if f.index == r["frame_index"])
    assert np.array_equal(stack[..., 0:3], frame(blurry))
    assert np.array_equal(stack[..., 3:6], frame(ref))
    assert not np.array_equal(frame(ref), frame(blurry))


def test_bad_refnet_settings_are_clear_errors(tiny_frames, tmp_path):
    from bluref_ray.training.refnet import RefTask

    with pytest.raises(ConfigError, match="refnet.reference='best'"):
        Config(refnet=RefNetConfig(reference="best")).validate()
    with pytest.raises(ConfigError, match="refnet.crop=98: must be a multiple of 4"):
        Config(refnet=RefNetConfig(crop=98)).validate()
    with pytest.raises(ConfigError, match="refnet.vgg19_weights"):
        load_match_features(RefNAFNet(**{**SMALL, "match_features": "vgg19"}))
    from bluref_ray.training.loop import Worker

    worker = Worker(0, 1, torch.device("cpu"), False, str(tmp_path), Config().storage)
    with pytest.raises(ConfigError, match="no pseudo-pairs"):
        RefTask(RefNetConfig(pairs=str(tmp_path / "nothing")), worker, {"frames": tiny_frames})
    with pytest.raises(ConfigError, match="no frames table"):
        RefTask(RefNetConfig(), worker, {"frames": str(tmp_path)})
