"""The learned dense matcher: network, synthetic pairs, training on Ray Train, shipped model."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

from bluref_ray.config import Config, MatcherTrainConfig, RayConfig
from bluref_ray.matching import build_matcher, warp
from bluref_ray.matching.evaluate import calibration_error, sparsification
from bluref_ray.matching.learned import SHIPPED, read_matcher_checkpoint
from bluref_ray.matching.network import DenseMatcherNet, resize_flow
from bluref_ray.matching.synthetic import (
    HELD_OUT_PHOTOS,
    PairConfig,
    load_photos,
    make_batch,
    make_pair,
    motion_kernel,
)


@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 64, 64), (1, 3, 61, 99)])
def test_network_shapes_and_gradients_for_odd_sizes(shape):
    net = DenseMatcherNet(global_size=64)
    t = torch.rand(shape, requires_grad=True)
    r = torch.rand(shape, requires_grad=True)
    out = net(t, r)
    b, _, h, w = shape
    assert out["flow"].shape == (b, 2, h, w)
    assert out["confidence"].shape == (b, 1, h, w)
    assert out["confidence_logits"].shape == (b, 3, h, w)
    assert 0 <= out["confidence"].min() and out["confidence"].max() <= 1
    (out["flow"].square().mean() + out["confidence_logits"].mean()).backward()
    assert t.grad.abs().sum() > 0 and r.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_synthetic_pairs_are_consistent_with_their_flow():
    photos = load_photos(("astronaut", "coffee"))
    cfg = PairConfig(size=96, p_blur=0.0, noise=0.0, p_jpeg=0.0, p_occluder=0.0, p_identity=0.0)
    b = make_batch(photos, 4, cfg, torch.Generator().manual_seed(0))
    warped, inside = warp(b["reference"], b["flow"])
    m = (b["valid"] * inside).bool().expand_as(warped)
    # only the exposure change separates the query from the warped reference
    assert (warped - b["query"]).abs()[m].mean() < 0.08
    assert b["flow"].norm(dim=1).mean() > 2  # it does move
    again = make_batch(photos, 4, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(again["query"], b["query"])  # deterministic for a seed
    k = motion_kernel(9.0, 0.3, 0.2, 13)
    assert abs(k.sum().item() - 1) < 1e-5
    ys, xs = torch.meshgrid(torch.arange(13.0) - 6, torch.arange(13.0) - 6, indexing="ij")
    assert abs((k * xs).sum()) < 0.05 and abs((k * ys).sum()) < 0.05  # centred


def test_moving_objects_have_their_own_flow():
    photos = load_photos(("astronaut", "coffee"))
    still = dict(size=96, p_blur=0.0, noise=0.0, p_jpeg=0.0, p_occluder=0.0, p_identity=0.0,
                 motion_px=(0.0, 0.0))  # no blur, so the object is sharp in both images too
    def pairs(**kw) -> dict:  # one pair per seed: the same camera motion with or without
        ps = [make_pair(photos, PairConfig(**still, **kw), torch.Generator().manual_seed(i))
              for i in range(6)]
        return {k: torch.stack([p[k] for p in ps]) for k in ps[0]}

    plain, b = pairs(), pairs(p_object=1.0)
    # the object's pixels take their own flow
    moved = (b["flow"] - plain["flow"]).norm(dim=1) > 0.5
    assert 0.02 < moved.float().mean() < 0.4
    assert (b["valid"] < plain["valid"]).any()  # the background it hides in the reference
    warped, inside = warp(b["reference"], b["flow"])
    m = (b["valid"] * inside).bool().expand_as(warped)
    assert (warped - b["query"]).abs()[m].mean() < 0.08
    on_object = (moved[:, None] & (b["valid"] > 0.5)).expand_as(warped)
    assert (warped - b["query"]).abs()[on_object].mean() < 0.08


def test_sparsification_and_calibration_metrics():
    err = np.array([0.1, 0.2, 5.0, 9.0])
    good, bad = np.array([0.9, 0.8, 0.2, 0.1]), np.array([0.1, 0.2, 0.8, 0.9])
    assert sparsification(err, good)[1] == pytest.approx(0.0, abs=1e-9)
    assert sparsification(err, bad)[1] > 1.0
    hit = np.array([1, 1, 0, 0], bool)
    assert calibration_error(np.array([1.0, 1.0, 0.0, 0.0]), hit) == pytest.approx(0.0)
    assert calibration_error(np.array([0.0, 0.0, 1.0, 1.0]), hit) == pytest.approx(1.0)


def _homography_pair(s: int = 160) -> tuple[torch.Tensor, ...]:
    """A held-out photo and its warp by a known homography (~11 px motion): query, reference,
    true flow, valid mask."""
    import kornia

    photo = load_photos(("retina",))[0]  # a photo held out of training
    ref = torch.nn.functional.interpolate(photo[None], size=(s, s), mode="area")
    src = torch.tensor([[[0.0, 0.0], [s - 1.0, 0.0], [s - 1.0, s - 1.0], [0.0, s - 1.0]]])
    dst = src + torch.tensor([[[9.0, -6.0], [12.0, -4.0], [8.0, 5.0], [5.0, 3.0]]])
    hom = kornia.geometry.transform.get_perspective_transform(src, dst)[0]
    ys, xs = torch.meshgrid(torch.arange(s, dtype=torch.float32),
                            torch.arange(s, dtype=torch.float32), indexing="ij")
    p = hom @ torch.stack([xs, ys, torch.ones_like(xs)]).reshape(3, -1)
    g = (p[:2] / p[2:]).reshape(2, s, s)
    flow = (g - torch.stack([xs, ys]))[None]
    query, valid = warp(ref, flow)
    return query, ref, flow, valid


def test_shipped_matcher_recovers_a_known_homography():
    query, ref, flow, valid = _homography_pair()
    res = build_matcher("learned")(query, ref)
    err = (res.flow - flow).norm(dim=1, keepdim=True)
    assert (err * valid).sum() / valid.sum() < 2.0  # a few pixels at most, for ~11 px motion
    assert flow.norm(dim=1).mean() > 8


def test_dis_refinement_starts_from_the_learned_flow():
    from bluref_ray.matching.classical import DISMatcher

    query, ref, flow, valid = _homography_pair()
    dis = DISMatcher(ref_blur=0.0)
    before = dis(query, ref).flow
    # started 3 px off everywhere, DIS brings the flow back to within a pixel
    off = dis.refine(query, ref, flow + 3.0)
    assert torch.equal(dis(query, ref).flow, before)  # plain calls are not changed by it
    assert _mean_error(off, flow, valid) < 1.0
    _check_refined_learned_matcher(dis, query, ref, flow, valid, 1.0)


def _mean_error(estimate, flow, valid):
    return float(((estimate - flow).norm(dim=1, keepdim=True) * valid).sum() / valid.sum())


def _check_refined_learned_matcher(refine, query, ref, flow, valid, tolerance_px):
    """The learned matcher refined by ``refine``: the network's confidence, a closer flow."""
    plain = build_matcher("learned")(query, ref)
    refined = build_matcher("learned", refine=refine)(query, ref)
    assert torch.equal(refined.confidence, plain.confidence)  # the network's, unchanged
    assert _mean_error(refined.flow, flow, valid) < tolerance_px


def test_variational_refinement_equals_opencvs():
    """DIS's variational refinement in PyTorch gives what OpenCV's ``VariationalRefinement``
    gives on the same images and flow (the energy, its linearisation and the red-black SOR)."""
    import cv2

    from bluref_ray.matching.refine import Variational, gray

    query, ref, flow, valid = _homography_pair()
    i0, i1 = gray(query) * 255, gray(ref) * 255
    noisy = flow + 1.0 + torch.randn(flow.shape, generator=torch.Generator().manual_seed(0))
    ocv = cv2.VariationalRefinement_create()
    for name, value in (("FixedPointIterations", 5), ("SorIterations", 5), ("Alpha", 20.0),
                        ("Delta", 5.0), ("Gamma", 10.0), ("Omega", 1.6)):
        getattr(ocv, f"set{name}")(value)
    expected = ocv.calc(i0[0, 0].numpy(), i1[0, 0].numpy(),
                        noisy[0].permute(1, 2, 0).contiguous().numpy())
    ours = Variational().level(i0, i1, noisy)
    assert float((ours[0].permute(1, 2, 0) - torch.from_numpy(expected)).abs().max()) < 2e-3
    assert _mean_error(ours, flow, valid) < _mean_error(noisy, flow, valid) - 0.5  # it helps
    assert torch.equal(Variational(iters=0).level(i0, i1, noisy), noisy)


def test_torch_dis_corrects_a_flow_and_replaces_a_wrong_one_like_opencv_dis():
    from bluref_ray.matching.refine import gray
    from bluref_ray.matching.torch_dis import TorchDIS

    query, ref, flow, valid = _homography_pair()
    dis = TorchDIS(ref_blur=0.0)
    for off in (3.0, -2.5):  # started pixels off everywhere, it comes back within half a pixel
        assert _mean_error(dis.refine(query, ref, flow + off), flow, valid) < 0.5, off
    # a given flow 15 px off is outmatched, patch by patch, by its own coarse-to-fine search;
    # from no flow at all it finds the ~9 px motion alone (OpenCV's DIS: 0.37, 0.29, 0.53 and
    # 0.33 px in these four cases; this one 0.34, 0.34, 0.44 and 0.27)
    assert _mean_error(dis.refine(query, ref, flow + 15.0), flow, valid) < 0.6
    assert _mean_error(dis.refine_gray(gray(query), gray(ref)), flow, valid) < 0.45
    # batched pairs give each pair's own result (up to patch choices that float rounding flips)
    both = dis.refine(torch.cat([query, ref]), torch.cat([ref, query]),
                      torch.cat([flow + 3.0, torch.zeros_like(flow)]))
    assert float((both[:1] - dis.refine(query, ref, flow + 3.0)).abs().mean()) < 0.05
    # the sweep as a GPU runs it (every step, no check) gives the same flows
    assert torch.equal(TorchDIS(ref_blur=0.0, early_stop=False).refine(query, ref, flow + 3.0),
                       dis.refine(query, ref, flow + 3.0))
    _check_refined_learned_matcher(dis, query, ref, flow, valid, 0.5)


_FUSED_CHECK = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_matcher import _homography_pair
from bluref_ray.matching.refine import gray
from bluref_ray.matching.torch_dis import TorchDIS
query, ref, flow, _ = _homography_pair(64)
q, r = gray(query), gray(ref)
for init in (None, flow + 2.0):
    eager = TorchDIS(ref_blur=0.0, fused=False).refine_gray(q, r, init)
    fused = TorchDIS(ref_blur=0.0, fused=True).refine_gray(q, r, init)
    diff = (fused - eager).abs()
    print(float(diff.mean()), float(diff.max()), float(eager.abs().mean()))
"""


def test_torch_dis_fused_kernel_gives_the_tensor_sweeps_flows():
    """The patch search as one Triton kernel per diagonal (the GPU's), run by Triton's
    interpreter on the CPU, against the tensor operations' on the same pair, from no flow and
    from a given one (in a process of its own: the interpreter is chosen at Triton's import)."""
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", _FUSED_CHECK.format(tests=os.path.dirname(
        os.path.abspath(__file__)))], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [[float(v) for v in line.split()] for line in out.stdout.split("\n") if line]
    assert len(rows) == 2
    for mean, worst, size in rows:  # the same flows up to float rounding (pixels)
        assert size > 1.0 and mean < 1e-4 and worst < 1e-2, rows


def test_torch_dis_sweep_takes_neighbours_within_a_band_as_opencv_does():
    """A patch's candidates are its left and upper neighbours (right and lower going back),
    never across the cut between two bands of rows (OpenCV's 8 stripes), never off the grid."""
    from bluref_ray.matching.torch_dis import _sweep

    hs, ws = 5, 3  # two bands of ceil(5 / 2) = 3 rows: rows 0-2 and rows 3-4
    row = torch.arange(hs).repeat_interleave(ws)
    col = torch.arange(ws).repeat(hs)
    order, rank, runs, before = _sweep(row, col, hs, ws, stripes=2)
    assert sorted(order.tolist()) == list(range(hs * ws)) and len(runs) == hs + ws - 1
    for step, (side, vertical) in zip((-1, 1), before):  # forward, then backward
        for r in range(hs):
            for c in range(ws):
                i, k = r * ws + c, int(rank[r * ws + c])
                near = r + step
                assert int(order[side[k]]) == (i + step if 0 <= c + step < ws else i)
                inside = 0 <= near < hs and near // 3 == r // 3
                assert int(order[vertical[k]]) == (near * ws + c if inside else i), (step, r, c)


def test_forward_backward_confidence_of_the_torch_path():
    from bluref_ray.matching.refine import fb_confidence

    fwd = torch.zeros(1, 2, 8, 10)
    fwd[:, 0] = 2.0  # 2 px right; the backward flow brings every pixel back
    conf = fb_confidence(fwd, -fwd)
    assert torch.equal(conf[..., :8], torch.ones(1, 1, 8, 8))
    assert not conf[..., 8:].any()  # matched outside the frame
    assert fb_confidence(fwd, torch.zeros_like(fwd))[..., :8].max() < 0.2  # 2 px apart


def test_shipped_confidence_falls_where_images_disagree():
    photos = load_photos(HELD_OUT_PHOTOS)
    m = build_matcher("learned")
    cfg = PairConfig(size=128, p_identity=0.0, p_occluder=1.0)
    pairs = make_batch(photos, 6, cfg, torch.Generator().manual_seed(4), blur=True)
    res = m(pairs["query"], pairs["reference"])
    conf, valid = res.confidence, pairs["valid"] > 0.5
    assert conf[~valid].mean() < conf[valid].mean() - 0.3  # occluded / out of view: low
    # as P(error < 2 px), τ = 0.7 keeps a sensible share of pixels of these hard pairs
    wide = build_matcher("learned", radius_px=2.0)(pairs["query"], pairs["reference"])
    covered = (wide.confidence >= 0.7).float().mean()
    assert 0.3 < covered < 0.98
    err = (wide.flow - pairs["flow"]).norm(dim=1, keepdim=True)
    kept = (wide.confidence >= 0.7) & valid
    assert ((err < 2) & kept).sum() / kept.sum() > 0.7  # and those pixels are mostly right


def test_shipped_checkpoint_is_small_and_documented():
    ckpt = read_matcher_checkpoint(SHIPPED)
    assert ckpt["arch"] == "dense-matcher" and ckpt["step"] >= 1000
    size = sum(v.numel() * v.element_size() for v in ckpt["state_dict"].values())
    assert size < 8 * 2**20
    assert "bluref train-matcher" in ckpt["command"]


def test_training_resumes_from_its_checkpoint(ray_cluster, tmp_path):
    from bluref_ray.training.common import latest_checkpoint
    from bluref_ray.training.matcher import train_matcher

    tc = MatcherTrainConfig(steps=2, batch_size=2, workers=2, crop=64, global_size=64,
                            checkpoint_every=1, log_every=1)
    cfg = Config(ray=RayConfig(progress_bars=False), train_matcher=tc)
    out = str(tmp_path / "run")
    train_matcher(out, cfg, log=lambda _m: None)
    first = read_matcher_checkpoint(f"{out}/matcher.pt")
    assert first["step"] == 2 and latest_checkpoint(out, None).endswith("step_000002")
    logs = []
    more = dataclasses.replace(cfg, train_matcher=dataclasses.replace(tc, steps=3))
    train_matcher(out, more, log=logs.append)
    assert any("resuming from" in m and "step_000002" in m for m in logs)
    second = read_matcher_checkpoint(f"{out}/matcher.pt")
    assert second["step"] == 3
    changed = [k for k in first["state_dict"]
               if not torch.equal(first["state_dict"][k], second["state_dict"][k])]
    assert changed  # it trained one more step from where it stopped
    assert (tmp_path / "run" / "tensorboard").is_dir()


def test_fine_tuning_adds_the_half_level_as_a_no_op(tmp_path):
    """A checkpoint without the 1/2 level starts a network with it: same flow up to 1/4."""
    from bluref_ray.models import save_checkpoint
    from bluref_ray.training.matcher import init_from

    torch.manual_seed(0)
    old = DenseMatcherNet(global_size=64, half_level=False)
    path = tmp_path / "old.pt"
    save_checkpoint(old, str(path), "dense-matcher", {"global_size": 64})
    new = DenseMatcherNet(global_size=64)
    fresh = init_from(new, str(path))
    assert fresh and all(k.startswith("half_") for k in fresh)
    t, r = torch.rand(1, 3, 61, 83), torch.rand(1, 3, 61, 83)
    with torch.no_grad():
        a, b = old(t, r), new(t, r)
    assert torch.allclose(dict(a["levels"])["local4"], dict(b["levels"])["local4"])
    half = dict(b["levels"])["local2"]  # the 1/4 flow, only resampled to 1/2
    assert torch.allclose(half, resize_flow(dict(b["levels"])["local4"], half.shape[-2:]))
    with pytest.raises(ValueError, match="old.pt"):
        init_from(DenseMatcherNet(global_size=64, channels=(8, 16, 32, 48)), str(path))


def test_shipped_matcher_is_sure_of_an_identity_pair():
    photos = load_photos(HELD_OUT_PHOTOS)
    cfg = PairConfig(size=128, p_identity=1.0)
    pair = make_batch(photos, 3, cfg, torch.Generator().manual_seed(7), blur=False)
    assert torch.equal(pair["query"], pair["reference"]) and pair["flow"].abs().max() == 0
    res = build_matcher("learned")(pair["query"], pair["reference"])
    assert res.flow.norm(dim=1).mean() < 0.3  # pixels
    inner = (..., slice(8, -8), slice(8, -8))  # it falls within a few pixels of the border
    assert res.confidence.mean() > 0.85 and res.confidence[inner].mean() > 0.95  # P(err < 1)
    wide = build_matcher("learned", radius_px=2.0)(pair["query"], pair["reference"])
    assert wide.confidence[inner].mean() > 0.99  # P(err < 2)
