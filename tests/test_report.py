"""Report outputs: image grids, round plots, Markdown/HTML reports."""

from __future__ import annotations

import math
import os

import cv2
import numpy as np
import pytest

from bluref_ray.report import image_grid, markdown_table, round_plot, save_png, write_report


def test_image_grid_shapes_and_placeholders():
    rgb = np.full((40, 60, 3), 200, np.uint8)
    gray = np.full((40, 60), 30, np.uint8)
    conf = np.linspace(0, 1, 40 * 60, dtype=np.float32).reshape(40, 60)
    grid = image_grid([[rgb, gray, None], [rgb[:20, :20], None, conf]],
                      ["blurry", "a very long label that cannot fit", "conf"], cell_height=50)
    # header 26 + 2 rows of (50 + 2) + 2; columns 75 px wide (60·50/40) + 4 separators of 2
    assert grid.dtype == np.uint8 and grid.shape == (26 + 2 * 52 + 2, 3 * 75 + 4 * 2, 3)
    top = 26 + 2
    assert (grid[top + 2, 2 + 75 + 2 + 5] == 30).all()  # the gray cell, shown as gray RGB
    assert (grid[top + 2, 2 + 2 * 77 + 3] == 128).all()  # a None cell's placeholder
    assert (grid[top + 52 + 2, 2 + 75 + 2 + 3] == 128).all()
    assert (grid[:26] < 100).any()  # captions drawn
    with pytest.raises(ValueError, match="labels"):
        image_grid([[rgb, rgb]], ["one"])


def test_round_plot_writes_png(tmp_path):
    path = str(tmp_path / "plots" / "rounds.png")
    out = round_plot([0, 1, 2], {"BluRef (val PSNR)": [27.0, 28.1, 28.5],
                                 "pseudo-GT PSNR": [30.0, None, 31.2]}, path,
                     references={"blurry": 25.0})
    assert out == path
    img = cv2.imread(path)
    assert img is not None and img.ndim == 3 and img.shape[0] > 100
    # one round: the reference is still a line across, not a second point at round 1
    one = round_plot([1], {"model": [28.0]}, str(tmp_path / "one.png"),
                     references={"blurry": 25.0, "unknown": None}, xlabel="model")
    pixels = cv2.imread(one)
    gray_rows = ((np.abs(pixels.astype(int) - 128).max(-1) < 8).sum(1))  # matplotlib's gray
    assert gray_rows.max() > pixels.shape[1] // 2, "no dashed line across the plot"
    with pytest.raises(ValueError, match="2 values for 3 rounds"):
        round_plot([0, 1, 2], {"x": [1.0, 2.0]}, path)


def test_markdown_table_missing_values():
    cols = [("name", "Method", "{}"), ("psnr", "PSNR", "{:.2f}")]
    text = markdown_table([{"name": "a|b", "psnr": 28.123}, {"name": "c", "psnr": math.nan},
                           {"name": "d"}], cols)
    assert text.splitlines() == ["| Method | PSNR |", "| --- | --- |", "| a\\|b | 28.12 |",
                                 "| c | – |", "| d | – |"]


def test_write_report(tmp_path):
    out = str(tmp_path / "report")
    save_png(os.path.join(out, "grid.png"), np.zeros((8, 8, 3), np.uint8))
    sections = [{"heading": "Results", "text": "First.\n\nSecond <b>.",
                 "rows": [{"round": 1, "psnr": 28.5, "ssim": None}],
                 "columns": [("round", "Round", "{}"), ("psnr", "PSNR (dB)", "{:.2f}"),
                             ("ssim", "SSIM", "{:.3f}")],
                 "images": [("grid.png", "samples"),
                            ("plots/conf.png", "confidence", np.full((4, 4), 9, np.uint8)),
                            ("cam #2 100%.png", "a clip's name", np.zeros((4, 4), np.uint8))]}]
    md_uri, html_uri = write_report(out, "Round 1", sections)
    md, page = open(md_uri).read(), open(html_uri).read()
    for doc in (md, page):
        assert "PSNR (dB)" in doc and "SSIM" in doc and "28.50" in doc and "–" in doc
        assert "grid.png" in doc and "plots/conf.png" in doc
    assert "<table>" in page and "&lt;b&gt;" in page and "<p>First.</p>" in page
    assert "| Round | PSNR (dB) | SSIM |" in md
    assert cv2.imread(os.path.join(out, "plots", "conf.png")) is not None
    assert os.path.isfile(os.path.join(out, "grid.png"))
    assert os.path.isfile(os.path.join(out, "cam #2 100%.png"))  # linked by its quoted name
    assert "(cam%20%232%20100%25.png)" in md and 'src="cam%20%232%20100%25.png"' in page
    with pytest.raises(ValueError, match="heading"):
        write_report(out, "bad", [{"heading": "x", "tabel": "typo"}])
    with pytest.raises(ValueError, match="relative"):
        write_report(out, "bad", [{"heading": "x", "images": [("../x.png", "up")]}])
