"""A sweep's results: one row per trial, the tables, the best trial, plots and a report."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from typing import Any

from bluref_ray import storage
from bluref_ray.config import Config
from bluref_ray.sweep.spec import METRICS, SweepSpec, trial_config
from bluref_ray.sweep.trials import cache_key, finished_trial

#: The parameters the plots put on the x axis.
PLOTTED = ("N", "delta", "tau")


def result_rows(grid, spec: SweepSpec, base: Config, cache: str, ingest, sc) -> list[dict]:
    """One dict per trial: its values, status, last scores and its pseudo-GT's quality."""
    from bluref_ray.pipeline.pseudo_gt import PseudoGTSummary

    key = METRICS[spec.metric][0]
    rows = []
    for r in grid:
        params = {k: r.config[k] for k in spec.space if k in r.config}
        cfg = trial_config(base, params, spec.val)
        m = r.metrics or {}
        step = m.get("step")
        trial = m.get("trial_id") or storage.basename(r.path)
        pg_key = cache_key(cfg.pseudo_gt, spec.data, ingest)
        pg = _read_json(storage.join(cache, pg_key, "summary.json"), sc)
        pg = PseudoGTSummary.from_dict(pg) if pg else None
        q = pg.quality if pg else None
        if r.error:
            status = "error"
        elif step is None:
            status = "no result"
        elif step < cfg.train.steps:
            status = f"stopped at step {step} (ASHA)"
        else:
            status = "done"
        if status == "done":  # stopped right after its last report: export its model
            finished_trial(storage.join(spec.out, "trials", trial), storage.join(cache, pg_key),
                           cfg)
        rows.append({
            "trial": trial, **params,
            "status": status, "step": step, "steps": cfg.train.steps,
            **{f"val_{k}": m.get(f"val_{k}") for k in METRICS},
            "metric": m.get(key), "coverage": pg.mean_coverage if pg else None,
            "pseudo_psnr": q.psnr_pseudo if q else None,
            "blurry_psnr": q.psnr_blurry if q else None, "pseudo_gt": pg_key,
            "seconds": m.get("time_total_s"),
            "model": storage.join(spec.out, "trials", trial, "model.pt"),
            "error": _last_line(r.error) if r.error else None})
    rows.sort(key=lambda row: row["trial"])
    return rows


def _last_line(error: Exception) -> str:
    """The exception that ended a trial, from the last line of its (remote) traceback."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return (lines[-1] if lines else repr(error))[:300]


def _read_json(uri: str, sc) -> dict:
    try:
        return json.loads(storage.read_text(uri, sc))
    except (storage.StorageNotFoundError, FileNotFoundError):
        return {}


def columns(spec: SweepSpec) -> list[tuple[str, str, str]]:
    """Table columns: the trial, the swept settings, status, scores, pseudo-GT quality."""
    cols = [("trial", "trial", "{}")]
    for name in spec.space:
        fmt = "{:.2e}" if name in ("lr", "train.lr") else "{}"
        cols.append((name, "Δ" if name == "delta" else "τ" if name == "tau" else name, fmt))
    cols.append(("status", "status", "{}"))
    if spec.metric == "niqe":
        cols.append(("val_niqe", "val NIQE", "{:.2f}"))
    else:
        cols += [("val_psnr", "val PSNR (dB)", "{:.2f}"), ("val_ssim", "val SSIM", "{:.4f}")]
    cols += [("coverage", "pseudo-GT coverage", "{:.3f}"),
             ("pseudo_psnr", "pseudo-GT PSNR (confident px)", "{:.2f}")]
    return cols


def best_row(rows: list[dict], metric: str) -> dict | None:
    """The best trial that ran to the end (ASHA-stopped ones have fewer steps)."""
    sign = 1 if METRICS[metric][1] == "max" else -1
    done = [r for r in rows if r["status"] == "done" and _finite(r["metric"])]
    return max(done, key=lambda r: sign * r["metric"]) if done else None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def write_results(spec: SweepSpec, rows: list[dict], sc) -> dict:
    """``results.csv``, ``results.md``, ``best.json``, the plots and ``report.{md,html}``."""
    from bluref_ray.report import markdown_table, write_report

    out = spec.out
    buf = io.StringIO()
    keys = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text(storage.join(out, "results.csv"), buf.getvalue(), sc)
    cols = columns(spec)
    table = markdown_table(rows, cols)
    storage.write_text(storage.join(out, "results.md"), table, sc)
    best = best_row(rows, spec.metric)
    if best:
        best = {**best, "settings": {k: best[k] for k in spec.space}}
    storage.write_text(storage.join(out, "best.json"), json.dumps(best, indent=1), sc)
    plots = []
    for param in PLOTTED:
        if param in spec.space and len({r.get(param) for r in rows}) > 1:
            name = f"{spec.metric}_vs_{param}.png"
            sweep_plot(rows, param, spec.metric, storage.join(out, name), sc)
            plots.append((name, f"{METRICS[spec.metric][2]} against "
                                f"{ {'N': 'N', 'delta': 'Δ', 'tau': 'τ'}[param]}"))
    stopped = sum(r["status"].startswith("stopped") for r in rows)
    text = (f"{len(rows)} trials, {stopped} stopped early by ASHA. Scores are the last "
            f"validation of each trial on {spec.val}; pseudo-GT quality is measured on the "
            "training data, over the pixels whose confidence reaches τ.")
    if best:
        text += f"\n\nBest: trial {best['trial']} with {best['settings']}."
    report = write_report(out, "bluref sweep", [
        {"heading": "Trials", "rows": rows, "columns": cols, "text": text},
        {"heading": "Plots", "images": plots}], sc)
    return {"rows": rows, "best": best, "table": table, "plots": [n for n, _ in plots],
            "report": report[1], "out": out}


def sweep_plot(rows: list[dict], param: str, metric: str, uri: str, sc=None) -> str:
    """The metric against ``param``, one line per strategy (and per value of the other
    plotted settings that vary). A point is the best trial that ran to the end; if every trial
    of a point was stopped early, its best stopped one, drawn with an ×."""
    from bluref_ray.report import new_plot, save_plot

    sign = 1 if METRICS[metric][1] == "max" else -1
    others = [p for p in PLOTTED if p != param and len({r.get(p) for r in rows}) > 1]
    lines: dict[str, dict[Any, dict]] = defaultdict(dict)
    for r in rows:
        if not _finite(r["metric"]) or r.get(param) is None:
            continue
        parts = [str(r["strategy"])] if r.get("strategy") else []
        label = ", ".join(parts + [f"{_symbol(p)}={r.get(p)}" for p in others]) or "all trials"
        best = lines[label].get(r[param])
        if best is None or _rank(r, sign) > _rank(best, sign):
            lines[label][r[param]] = r
    fig, ax = new_plot()
    for label, points in sorted(lines.items()):
        xs = sorted(points)
        ys = [points[x]["metric"] for x in xs]
        (line,) = ax.plot(xs, ys, marker="o", label=label)
        stopped = [(x, points[x]["metric"]) for x in xs if points[x]["status"] != "done"]
        if stopped:
            ax.scatter(*zip(*stopped), marker="x", s=80, color=line.get_color())
    if all(isinstance(r.get(param), int) for r in rows):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=_symbol(param), ylabel=METRICS[metric][2])
    ax.set_title(f"{METRICS[metric][2]} against {_symbol(param)}"
                 + (" (× stopped early)" if any(r["status"] != "done" for r in rows) else ""))
    return save_plot(fig, ax, uri, sc, legend=bool(lines))


def _rank(row: dict, sign: int) -> tuple:
    return row["status"] == "done", sign * row["metric"]


def _symbol(param: str) -> str:
    return {"delta": "Δ", "tau": "τ"}.get(param, param)
