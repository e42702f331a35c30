"""Matcher evaluation on held-out synthetic pairs (``bluref eval-matcher``).

All matchers see the same pairs: photos the learned matcher was not trained on
(:data:`~bluref_ray.matching.synthetic.HELD_OUT_PHOTOS`), a fixed seed, queries with and without
blur. Per matcher and condition:

* **AEPE**: mean end-point error over valid pixels, in pixels; **PCK-1/3/5**: share of valid
  pixels with error below 1, 3, 5 pixels.
* **AUSE**: area between the sparsification curve (AEPE of the pixels left after removing the
  least confident ones, for removed shares 0…0.95) and the oracle curve (removing the largest
  errors first); 0 means the confidence ranks errors perfectly.
* **ECE**: expected calibration error of the confidence as P(error < R), over 10 bins; a
  calibrated confidence has ECE near 0.
* **coverage@τ**: share of pixels with confidence ≥ τ, and **conf valid / invalid**: mean
  confidence where a match exists and where it does not (out of view, occluded).
* **identity confidence**: mean confidence when query and reference are the same image.
"""

from __future__ import annotations

import numpy as np
import torch

from bluref_ray.matching.base import Matcher
from bluref_ray.matching.synthetic import HELD_OUT_PHOTOS, PairConfig, load_photos, make_batch

REMOVE = np.linspace(0.0, 0.95, 20)


def sparsification(err: np.ndarray, conf: np.ndarray) -> tuple[float, float]:
    """``(AUC of the confidence-ranked curve, AUSE)``; both in pixels (mean over REMOVE).

    Shape:
        err, conf ``[N]`` over valid pixels.
    """
    by_conf = err[np.argsort(-conf, kind="stable")]
    oracle = np.sort(err)
    n = len(err)
    curve, best = [], []
    for f in REMOVE:
        keep = max(1, int(round(n * (1 - f))))
        curve.append(by_conf[:keep].mean())
        best.append(oracle[:keep].mean())
    curve, best = np.array(curve), np.array(best)
    return float(curve.mean()), float((curve - best).mean())


def calibration_error(conf: np.ndarray, hit: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of ``conf`` as the probability of ``hit``."""
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(conf[m].mean() - hit[m].mean())
    return float(ece)


def evaluate(matchers: dict[str, Matcher], pairs: int = 48, seed: int = 2026,
             size: int = 192, tau: float = 0.7, radius_px: float = 1.0,
             batch: int = 8) -> list[dict]:
    """Metrics of each matcher on the same held-out pairs, with and without blur."""
    photos = load_photos(HELD_OUT_PHOTOS)
    cfg = PairConfig(size=size, p_identity=0.0)
    results = []
    for blur in (True, False):
        gen = torch.Generator().manual_seed(seed + int(blur))
        data = [make_batch(photos, min(batch, pairs - i), cfg, gen, blur=blur)
                for i in range(0, pairs, batch)]
        for name, matcher in matchers.items():
            errs, confs, valid = [], [], []
            for b in data:
                m = matcher(b["query"], b["reference"])
                errs.append((m.flow - b["flow"]).norm(dim=1).flatten().numpy())
                confs.append(m.confidence[:, 0].flatten().float().numpy())
                valid.append(b["valid"][:, 0].flatten().numpy() > 0.5)
            err, conf, v = np.concatenate(errs), np.concatenate(confs), np.concatenate(valid)
            auc, ause = sparsification(err[v], conf[v])
            results.append({
                "matcher": name, "blur": blur, "pairs": pairs,
                "aepe": float(err[v].mean()),
                "pck1": float((err[v] < 1).mean()), "pck3": float((err[v] < 3).mean()),
                "pck5": float((err[v] < 5).mean()),
                "sparsification_auc": auc, "ause": ause,
                "ece": calibration_error(conf, (err < radius_px) & v),
                "coverage": float((conf >= tau).mean()),
                "conf_valid": float(conf[v].mean()),
                "conf_invalid": float(conf[~v].mean()) if (~v).any() else float("nan"),
            })
    ident = make_batch(photos, 4, PairConfig(size=size, p_identity=1.0), torch.Generator()
                       .manual_seed(seed + 7), blur=False)
    for name, matcher in matchers.items():
        m = matcher(ident["query"], ident["reference"])
        for r in results:
            if r["matcher"] == name:
                r["identity_confidence"] = float(m.confidence.mean())
                r["identity_aepe"] = float(m.flow.norm(dim=1).mean())
    return results


def markdown(results: list[dict], tau: float, radius_px: float) -> str:
    """The evaluation as a Markdown table."""
    lines = [f"Held-out synthetic pairs ({results[0]['pairs']} per condition, photos unseen in "
             f"training). Confidence as P(error < {radius_px:g} px); coverage at τ = {tau}.", "",
             "| matcher | blur | AEPE px | PCK-1 | PCK-3 | PCK-5 | AUSE px | ECE | coverage | "
             "conf valid / invalid | conf identity |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r['matcher']} | {'yes' if r['blur'] else 'no'} | {r['aepe']:.2f} | "
            f"{r['pck1']:.3f} | {r['pck3']:.3f} | {r['pck5']:.3f} | {r['ause']:.2f} | "
            f"{r['ece']:.3f} | {r['coverage']:.3f} | {r['conf_valid']:.2f} / "
            f"{r['conf_invalid']:.2f} | {r.get('identity_confidence', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"
