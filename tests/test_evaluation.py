"""`bluref eval`: metrics against ground truth, image grids and the report."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch
from conftest import kill_at_seeded_points

from bluref_ray.cli import main
from bluref_ray.config import Config, ConfigError
from bluref_ray.evaluation import eval_frames, evaluate
from bluref_ray.models import build_model, save_checkpoint


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    torch.manual_seed(1)
    model = build_model("nafnet-tiny")
    uri = str(tmp_path_factory.mktemp("model") / "model.pt")
    save_checkpoint(model, uri, "nafnet", {"width": 16, "enc_blocks": [1, 1, 2],
                                           "middle_blocks": 2, "dec_blocks": [1, 1, 1]})
    return uri


def test_eval_scores_blurry_and_models_against_ground_truth(tiny_data, tiny_model, tmp_path):
    frames = eval_frames([f"{tiny_data}/test"], 4, None)
    assert len(frames) == 4 and all(f["gt_uri"] for f in frames)
    logs: list[str] = []
    r = evaluate({"a": tiny_model, "b": tiny_model}, [f"{tiny_data}/test"], str(tmp_path), Config(),
                 max_frames=4, log=logs.append)
    by = {m["method"]: m for m in r["methods"]}
    expect = np.mean([_psnr(cv2.imread(f["uri"]), cv2.imread(f["gt_uri"])) for f in frames])
    assert by["blurry"]["psnr"] == pytest.approx(expect, abs=0.01)
    assert by["a"]["psnr"] == pytest.approx(by["b"]["psnr"]) and 0 < by["a"]["ssim"] <= 1
    assert by["a"]["niqe"] is None  # 72×128 frames are below NIQE's 96-px blocks
    assert "[eval] every frame is under 96 px or flat: no NIQE" in logs
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["scored_frames"] == {"psnr": 4, "niqe": 0}
    assert len(saved["frames"]) == 4
    html = (tmp_path / "report.html").read_text()
    assert "PSNR (dB)" in html and "grid_00.png" in html and (tmp_path / "grid_00.png").exists()
    grid = cv2.imread(str(tmp_path / "grid_00.png"))
    assert grid.shape[1] > 4 * 128  # blurry | pseudo-sharp | a | b | truth


def test_eval_cli_and_errors(tiny_data, tiny_model, tmp_path, capsys):
    rc = main(["eval", f"{tiny_data}/test", "--model", f"mine={tiny_model}", "--out",
               str(tmp_path / "e"), "--max-frames", "2", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| mine |" in printed and "report:" in printed
    # a tree whose sharp/ is missing: NIQE only, and a line says why PSNR is not there; a flat
    # frame (a covered lens) has no NIQE, and is left out of its mean
    blur_only = tmp_path / "blur_only" / "seq" / "blur"
    blur_only.mkdir(parents=True)
    textured = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (100, 120, 3),
                                                                   dtype=np.uint8), (0, 0), 1.5)
    cv2.imwrite(str(blur_only / "000000.png"), textured)
    cv2.imwrite(str(blur_only / "000001.png"), np.full((100, 120, 3), 90, np.uint8))
    logs: list[str] = []
    r = evaluate({}, [str(tmp_path / "blur_only")], str(tmp_path / "b"), Config(),
                 log=logs.append)
    assert r["methods"][0]["psnr"] is None and np.isfinite(r["methods"][0]["niqe"])
    assert r["scored_frames"] == {"psnr": 0, "niqe": 1}
    assert any("no frame of" in m and "has a ground truth (a sharp/ folder" in m for m in logs)
    assert any("1 of 2 frames are under 96 px or flat" in m for m in logs)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ConfigError, match="no frames"):
        evaluate({}, [str(tmp_path / "empty")], str(tmp_path / "x"), Config(),
                 log=lambda _m: None)


@pytest.mark.faults
def test_killed_eval_resumes_and_writes_the_results_of_an_uninterrupted_run(tiny_data,
                                                                            tiny_model, tmp_path):
    """`bluref eval` SIGKILLed at two seeded points (by parts of 8 frames scored), then the same
    command: the eval.json and grids of an uninterrupted run, scored parts not redone, no
    temporary file left."""
    data = [f"{tiny_data}/train", f"{tiny_data}/test"]
    full, out = tmp_path / "full", tmp_path / "out"
    evaluate({"m": tiny_model}, data, str(full), Config(), max_frames=24, log=lambda _m: None)
    kill_at_seeded_points(["eval", *data, "--model", f"m={tiny_model}", "--max-frames", "24",
                           "--out", str(out)], out / "eval_frames", 3, pattern="*.json")
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "eval_frames").glob("*.json")}
    logs: list[str] = []
    evaluate({"m": tiny_model}, data, str(out), Config(), max_frames=24, log=logs.append)
    assert {n: (out / "eval_frames" / n).stat().st_mtime_ns for n in kept} == kept
    assert f"{len(kept) * 8} already scored" in logs[0]
    assert (out / "eval.json").read_text() == (full / "eval.json").read_text()
    for grid in full.glob("grid_*.png"):
        assert (out / grid.name).read_bytes() == grid.read_bytes()
    assert not [n for _, _, fs in os.walk(out) for n in fs if n.startswith(".")]


def test_a_broken_frame_and_a_diverged_model_are_left_out_and_said(tiny_data, tiny_model,
                                                                    tmp_path, monkeypatch):
    """One unreadable frame is left out (named), not a crash; a model whose output is NaN is
    scored over no frame, not as a perfect one; eval.json stays strict JSON; the same files
    given by a relative path resume the run's scores."""
    import shutil

    data = tmp_path / "test"
    shutil.copytree(f"{tiny_data}/test", data)
    frames = eval_frames([str(data)], 4, None)
    with open(frames[1]["uri"], "wb") as f:
        f.write(b"\x89PNG truncated")
    broken = build_model("nafnet-tiny")
    with torch.no_grad():
        for p in broken.parameters():
            p.fill_(float("nan"))
    nan_uri = str(tmp_path / "nan.pt")
    save_checkpoint(broken, nan_uri, "nafnet", {"width": 16, "enc_blocks": [1, 1, 2],
                                                "middle_blocks": 2, "dec_blocks": [1, 1, 1]})
    logs: list[str] = []
    r = evaluate({"good": tiny_model, "nan": nan_uri}, [str(data)], str(tmp_path / "e"),
                 Config(), max_frames=4, log=logs.append)
    by = {m["method"]: m for m in r["methods"]}
    assert by["blurry"]["frames"] == by["good"]["frames"] == 3 and by["nan"]["frames"] == 0
    assert by["nan"]["psnr"] is None and np.isfinite(by["good"]["psnr"])
    assert any("left out" in m and os.path.basename(frames[1]["uri"]) in m for m in logs)
    assert any("nan: output not finite (NaN or inf) on 3 of 4 frames" in m for m in logs)
    json.loads((tmp_path / "e" / "eval.json").read_text(),
               parse_constant=lambda c: pytest.fail(f"{c} in eval.json"))
    monkeypatch.chdir(tmp_path)
    logs = []
    evaluate({"good": os.path.relpath(tiny_model), "nan": "nan.pt"}, ["test"], "e", Config(),
             max_frames=4, log=logs.append)
    assert "4 already scored" in logs[0]
    assert "grid_01.png" not in (tmp_path / "e" / "report.md").read_text()  # no picture
