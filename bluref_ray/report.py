"""Outputs people look at: image grids, per-round plots, Markdown/HTML reports.

Everything is written through :mod:`bluref_ray.storage`, so a report goes to a local directory
or to ``s3://`` alike. A report is ``report.md`` and ``report.html`` (self-contained, no
scripts or external styles) with its PNG images next to them, referenced by relative names.
"""

from __future__ import annotations

import html
import io
import math
import urllib.parse
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from bluref_ray import storage
from bluref_ray.data.images import encode_png
from bluref_ray.storage import StorageConfig

#: How a missing value shows in tables.
MISSING = "–"

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_SEP = 2  # separator width between cells, pixels
_HEADER = 26  # caption strip height, pixels
_BACKGROUND, _PLACEHOLDER = 255, 128

Column = tuple[str, str, str]  # (row key, header, format such as "{:.2f}")
_SECTION_KEYS = {"heading", "text", "rows", "columns", "table", "images"}


def _rgb8(img: np.ndarray) -> np.ndarray:
    """An image as RGB uint8: gray is replicated, float in [0, 1] is scaled to 8 bits."""
    img = np.asarray(img)
    if np.issubdtype(img.dtype, np.floating) or img.dtype == bool:
        img = (np.clip(np.nan_to_num(img.astype(np.float32)), 0, 1) * 255 + 0.5).astype(np.uint8)
    if img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an image [H, W, 3] or [H, W], got {img.shape}")
    return img


def _put_text(canvas: np.ndarray, text: str, x0: int, y0: int, w: int, h: int,
              color: tuple[int, int, int]) -> None:
    """Draw ``text`` centered in the box (x0, y0, w, h), shrunk or cut to fit its width."""
    for scale in (0.5, 0.45, 0.4, 0.35):
        (tw, th), _ = cv2.getTextSize(text, _FONT, scale, 1)
        if tw <= w - 4:
            break
    while tw > w - 4 and len(text) > 2:
        text = text[:-3] + ".."
        (tw, th), _ = cv2.getTextSize(text, _FONT, scale, 1)
    org = (x0 + max(0, (w - tw) // 2), y0 + (h + th) // 2)
    cv2.putText(canvas, text, org, _FONT, scale, color, 1, cv2.LINE_AA)


def image_grid(rows: Sequence[Sequence[np.ndarray | None]], labels: Sequence[str],
               cell_height: int = 180) -> np.ndarray:
    """Tile images into a captioned grid, e.g. one row per sample: blurry | output | GT | conf.

    Every image is resized to ``cell_height`` keeping its aspect ratio (area averaging down,
    nearest neighbour up, so that blur is not added); a column is as wide as its widest cell.
    A ``None`` cell (or a row shorter than ``labels``) shows a gray "n/a" placeholder.

    Shape:
        cells ``[H, W, 3]`` RGB or ``[H, W]`` gray, uint8 (float in [0, 1] is scaled)
        → ``[26 + R·(cell_height + 2) + 2, Σ column widths + 2·(C + 1), 3]`` uint8 RGB.
    """
    if not rows:
        raise ValueError("image_grid needs at least one row")
    ncols = len(labels)
    if any(len(r) > ncols for r in rows):
        raise ValueError(f"a row has more cells than the {ncols} labels")
    cells = [[None if c is None else _rgb8(c) for c in r] + [None] * (ncols - len(r))
             for r in rows]
    for r in cells:
        for j, c in enumerate(r):
            if c is not None:
                w = max(1, round(c.shape[1] * cell_height / c.shape[0]))
                interp = cv2.INTER_AREA if c.shape[0] > cell_height else cv2.INTER_NEAREST
                r[j] = cv2.resize(c, (w, cell_height), interpolation=interp)
    widths = [max((r[j].shape[1] for r in cells if r[j] is not None), default=cell_height)
              for j in range(ncols)]
    height = _HEADER + len(cells) * (cell_height + _SEP) + _SEP
    canvas = np.full((height, sum(widths) + _SEP * (ncols + 1), 3), _BACKGROUND, np.uint8)
    x = _SEP
    for j, w in enumerate(widths):
        _put_text(canvas, labels[j], x, 0, w, _HEADER, (20, 20, 20))
        y = _HEADER + _SEP
        for r in cells:
            if r[j] is None:
                canvas[y:y + cell_height, x:x + w] = _PLACEHOLDER
                _put_text(canvas, "n/a", x, y, w, cell_height, (240, 240, 240))
            else:
                left = x + (w - r[j].shape[1]) // 2
                canvas[y:y + cell_height, left:left + r[j].shape[1]] = r[j]
            y += cell_height + _SEP
        x += w + _SEP
    return canvas


def save_png(uri: str, rgb: np.ndarray, storage_cfg: StorageConfig | None = None) -> str:
    """Write an RGB (``[H, W, 3]``) or gray (``[H, W]``) uint8 image as PNG; returns the URI."""
    if rgb.dtype != np.uint8 or rgb.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 [H, W, 3] or [H, W] image, got {rgb.dtype} "
                         f"{rgb.shape}")
    storage.write_bytes(uri, encode_png(np.ascontiguousarray(rgb)), storage_cfg)
    return storage.normalize(uri)


def round_plot(rounds: Sequence[int], series: dict[str, Sequence[float | None]],
               path_or_uri: str, storage_cfg: StorageConfig | None = None,
               ylabel: str = "PSNR (dB)", title: str | None = None,
               references: dict[str, float | None] | None = None,
               xlabel: str = "refinement round") -> str:
    """Plot metrics per refinement round as a PNG line chart; returns the URI written.

    Args:
        rounds: the x values (round numbers).
        series: name → one value per round (None or NaN leaves a gap).
        path_or_uri: where the PNG goes (local path or ``s3://``).
        references: name → one value drawn as a dashed horizontal line (e.g. the blurry
            input's PSNR), however many rounds there are.
    """
    from matplotlib.ticker import MaxNLocator

    fig, ax = new_plot()
    for name, values in series.items():
        ys = [math.nan if v is None else float(v) for v in values]
        if len(ys) != len(rounds):
            raise ValueError(f"series {name!r} has {len(ys)} values for {len(rounds)} rounds")
        ax.plot(list(rounds), ys, marker="o", label=name)
    styles = iter(["--", ":", "-."] * 3)
    for name, value in (references or {}).items():
        if value is not None:
            ax.axhline(float(value), linestyle=next(styles), color="gray", label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title or "")
    return save_plot(fig, ax, path_or_uri, storage_cfg,
                     legend=bool(series) or bool(references))


def new_plot():
    """A matplotlib figure and axes drawn off-screen (Agg: no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save_plot(fig, ax, path_or_uri: str, storage_cfg: StorageConfig | None = None,
              legend: bool = True) -> str:
    """Add a grid (and the legend), write the figure as PNG; returns the URI written."""
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    storage.write_bytes(path_or_uri, buf.getvalue(), storage_cfg)
    return storage.normalize(path_or_uri)


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    try:
        return fmt.format(value)
    except (ValueError, TypeError):  # e.g. a string in a "{:.2f}" column
        return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[Column]) -> str:
    """A Markdown table: one line per row, ``columns`` as (key, header, format) triples.

    Missing keys, None and NaN show as :data:`MISSING`.
    """
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [line([h for _, h, _ in columns]), line(["---"] * len(columns))]
    out += [line([_cell(r.get(k), f) for k, _, f in columns]) for r in rows]
    return "\n".join(out) + "\n"


def html_table(rows: Sequence[dict], columns: Sequence[Column]) -> str:
    """The same table as :func:`markdown_table`, as HTML."""
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(k), f))}</td>" for k, _, f in columns)
        + "</tr>\n" for r in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #bbb;"
        "padding:.3em .6em;text-align:right}th{background:#eee}"
        "img{max-width:100%}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}")


def _image_name(name: str) -> str:
    if name.startswith("/") or "://" in name or ".." in name.split("/") or not name:
        raise ValueError(f"image name {name!r} must be a relative path below the report")
    return name


def write_report(out_uri: str, title: str, sections: Sequence[dict],
                 storage_cfg: StorageConfig | None = None) -> tuple[str, str]:
    """Write ``report.md`` and ``report.html`` (and images given as arrays) under ``out_uri``.

    Each section is a dict with (all but ``heading`` optional):

    * ``heading``: the section title;
    * ``text``: paragraphs, separated by blank lines;
    * ``rows`` and ``columns``: a table, see :func:`markdown_table` (rendered in both formats);
    * ``table``: a ready Markdown table (shown preformatted in the HTML);
    * ``images``: ``(name, caption)`` for a PNG already saved at ``out_uri/name`` (e.g. with
      :func:`save_png`), or ``(name, caption, rgb)`` to have it saved here.

    Returns:
        The URIs of ``report.md`` and ``report.html``.
    """
    md = [f"# {title}\n"]
    body = [f"<h1>{html.escape(title)}</h1>"]
    for sec in sections:
        unknown = set(sec) - _SECTION_KEYS
        if unknown or "heading" not in sec:
            raise ValueError(f"section needs 'heading' and only {sorted(_SECTION_KEYS)} keys; "
                             f"got {sorted(sec)}")
        md.append(f"## {sec['heading']}\n")
        body.append(f"<h2>{html.escape(sec['heading'])}</h2>")
        if sec.get("text"):
            md.append(sec["text"].strip() + "\n")
            body += [f"<p>{html.escape(p.strip())}</p>"
                     for p in sec["text"].strip().split("\n\n") if p.strip()]
        if sec.get("rows") is not None:
            md.append(markdown_table(sec["rows"], sec["columns"]))
            body.append(html_table(sec["rows"], sec["columns"]))
        if sec.get("table"):
            md.append(sec["table"].rstrip() + "\n")
            body.append(f"<pre>{html.escape(sec['table'])}</pre>")
        for image in sec.get("images") or []:
            name, caption = _image_name(image[0]), image[1]
            if len(image) > 2:
                save_png(storage.join(out_uri, name), image[2], storage_cfg)
            link = urllib.parse.quote(name)  # names with spaces, '#' or '%' (clip labels)
            md.append(f"![{caption}]({link})\n\n*{caption}*\n")
            body.append(f'<figure><img src="{html.escape(link)}" alt="{html.escape(caption)}">'
                        f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}'
            f"</title><style>{_CSS}</style></head>\n<body>\n" + "\n".join(body)
            + "\n</body></html>\n")
    md_uri, html_uri = storage.join(out_uri, "report.md"), storage.join(out_uri, "report.html")
    storage.write_text(md_uri, "\n".join(md), storage_cfg)
    storage.write_text(html_uri, page, storage_cfg)
    return md_uri, html_uri
