"""The pseudo-GT quality experiment (``bluref pseudo-gt-quality``): pseudo-GT made several ways
(matcher × fusion strategy × N × τ) from one frames table with ground truth, and tabulated.

Each run is an ordinary :func:`bluref_ray.pipeline.pseudo_gt.run_pseudo_gt` into its own folder
(so a stopped experiment resumes run by run); the table compares the pseudo-sharp image with the
blurry frame on the same confident pixels.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

from bluref_ray import storage
from bluref_ray.config import Config, PseudoGTConfig
from bluref_ray.pipeline.pseudo_gt import run_pseudo_gt


def quality_table(frames: str, out: str, cfg: Config, strategies: list[str], refs: list[int],
                  log: Callable[[str], None] = print, matchers: list[str] | None = None,
                  taus: list[float] | None = None) -> list[dict]:
    """Run pseudo-GT for each matcher × strategy × N × τ into
    ``OUT/<matcher>-<strategy>-n<N>[-t<τ>]`` and tabulate quality.

    Needs ground truth (``gt_uri`` in the frames table: synthesized or GoPro-style trees).
    Writes ``OUT/quality.json`` and ``OUT/quality.md``. Several τ trace each matcher's
    PSNR-coverage curve: matchers' confidences differ in scale, so they are compared at equal
    coverage (:func:`at_equal_coverage`), not at equal τ.

    Returns:
        One dict per run: matcher, strategy, N, τ, frames with GT, pseudo-GT PSNR and blurry PSNR
        in the confident region, coverage, references matched, seconds.
    """
    taus = taus or [cfg.pseudo_gt.tau]
    results = []
    for matcher in matchers or [cfg.pseudo_gt.matcher]:
        for strategy in strategies:
            for n in refs:
                for tau in taus:
                    results.append(_quality_run(frames, out, cfg, matcher, strategy, n, tau,
                                                len(taus) > 1, log))
    storage.write_text(storage.join(out, "quality.json"), json.dumps(results, indent=1),
                       cfg.storage)
    storage.write_text(storage.join(out, "quality.md"), quality_markdown(results, cfg.pseudo_gt),
                       cfg.storage)
    return results


def _quality_run(frames: str, out: str, cfg: Config, matcher: str, strategy: str, n: int,
                 tau: float, tau_in_name: bool, log: Callable[[str], None]) -> dict:
    pg = dataclasses.replace(cfg.pseudo_gt, matcher=matcher, strategy=strategy, max_refs=n,
                             tau=tau)
    pg.validate()
    sub = storage.join(out, f"{matcher}-{strategy}-n{n}" + (f"-t{tau:g}" if tau_in_name else ""))
    log(f"[quality] {matcher}, {strategy}, N={n}, τ={tau:g} → {sub}")
    s = run_pseudo_gt(frames, sub, dataclasses.replace(cfg, pseudo_gt=pg), log=log)
    q = s.quality
    return {"matcher": matcher, "strategy": strategy, "N": n, "tau": tau, "frames": s.rows,
            "frames_with_gt": q.frames_with_gt if q else 0,
            "psnr_pseudo": q.psnr_pseudo if q else None,
            "psnr_blurry": q.psnr_blurry if q else None,
            "coverage": s.mean_coverage, "refs_used": s.mean_refs_used,
            "seconds": s.this_run.seconds}


def at_equal_coverage(results: list[dict], baseline: str, tau: float) -> list[dict]:
    """Each other matcher against ``baseline`` at ``baseline``'s coverage at ``tau``.

    For each strategy and N: the baseline's run at ``tau``, and the other matcher's run with the
    highest pseudo-GT PSNR among those covering at least as many pixels (any τ).

    Returns:
        One dict per comparison: matcher, strategy, N, ``baseline`` and ``best`` (rows of
        ``results``; ``best`` is None where no run of the matcher covers as much) and ``gain_db``.
    """
    out = []
    others = sorted({r["matcher"] for r in results} - {baseline})
    for b in results:
        if b["matcher"] != baseline or b["tau"] != tau or b["psnr_pseudo"] is None:
            continue
        for m in others:
            cands = [r for r in results if r["matcher"] == m and r["strategy"] == b["strategy"]
                     and r["N"] == b["N"] and r["psnr_pseudo"] is not None
                     and r["coverage"] >= b["coverage"]]
            best = max(cands, key=lambda r: r["psnr_pseudo"], default=None)
            gain = None if best is None else best["psnr_pseudo"] - b["psnr_pseudo"]
            out.append({"matcher": m, "strategy": b["strategy"], "N": b["N"], "baseline": b,
                        "best": best, "gain_db": gain})
    return out


def quality_markdown(results: list[dict], pg: PseudoGTConfig) -> str:
    """The quality table as Markdown; with DIS among several matchers, also the comparison at
    DIS's coverage at ``pg.tau`` (:func:`at_equal_coverage`)."""
    def num(x: float | None, fmt: str) -> str:
        return "–" if x is None else format(x, fmt)

    lines = ["Pseudo-GT quality: PSNR (dB) against the ground truth over the pixels with "
             "confidence ≥ τ, for the pseudo-sharp image and for the blurry frame itself (the "
             "same pixels), and coverage (share of pixels with confidence ≥ τ).", "",
             "| matcher | strategy | N | τ | frames | pseudo-GT PSNR | blurry PSNR | gain | "
             "coverage | refs matched |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        gain = (r["psnr_pseudo"] - r["psnr_blurry"]) if r["psnr_pseudo"] is not None else None
        lines.append(f"| {r['matcher']} | {r['strategy']} | {r['N']} | {r['tau']:g} | "
                     f"{r['frames']} | {num(r['psnr_pseudo'], '.2f')} | "
                     f"{num(r['psnr_blurry'], '.2f')} | {num(gain, '+.2f')} | "
                     f"{r['coverage']:.3f} | {r['refs_used']:.2f} |")
    if len({r["matcher"] for r in results}) > 1 and any(r["matcher"] == "dis" for r in results):
        lines += ["", f"At equal coverage: each matcher's best run covering at least as many "
                  f"pixels as DIS at τ = {pg.tau:g}.", ""]
        for c in at_equal_coverage(results, "dis", pg.tau):
            b, best = c["baseline"], c["best"]
            head = f"- {c['matcher']}, {c['strategy']}, N = {c['N']}: "
            if best is None:
                lines.append(head + f"no run covers DIS's {b['coverage']:.3f}")
                continue
            lines.append(head + f"{best['psnr_pseudo']:.2f} dB over {best['coverage']:.3f} "
                         f"(τ = {best['tau']:g}) against DIS's {b['psnr_pseudo']:.2f} dB over "
                         f"{b['coverage']:.3f}: {c['gain_db']:+.2f} dB")
    return "\n".join(lines) + "\n"
