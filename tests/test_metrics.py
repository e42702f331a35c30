"""Image metrics: PSNR/SSIM against references, NIQE with the shipped params, no downloads."""

from __future__ import annotations

import math
import socket

import cv2
import numpy as np
import pytest
import torch

from bluref_ray import metrics
from bluref_ray.metrics import ImageMetrics, masked_psnr


@pytest.fixture(scope="module", autouse=True)
def no_network():
    """Any attempt by pyiqa (or anything else) to reach the network fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]} {kwargs}")

    import pyiqa.utils.download_util as download_util

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(download_util, "load_file_from_url", refuse)
        mp.setattr(download_util, "download_url_to_file", refuse)
        mp.setattr(torch.hub, "download_url_to_file", refuse)
        yield


@pytest.fixture(scope="module")
def m() -> ImageMetrics:
    return ImageMetrics("cpu")


def _t(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage.data import astronaut
    return cv2.resize(astronaut(), (128, 128), interpolation=cv2.INTER_AREA)


def test_psnr_matches_numpy_on_rgb():
    m = ImageMetrics("cpu")
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.random((2, 3, 32, 40), dtype=np.float32))
    pred = (target + torch.from_numpy(rng.normal(0, 0.05, target.shape)).float()).clamp(0, 1)
    got = m.psnr(pred, target)
    mse = ((pred.double() - target.double()) ** 2).mean(dim=(1, 2, 3)).numpy()
    assert got.shape == (2,)
    np.testing.assert_allclose(got.numpy(), 10 * np.log10(1.0 / mse), atol=1e-3)
    built = m._metrics["psnr"]
    m.psnr(pred, target)
    assert m._metrics == {"psnr": built}  # created once, reused
    with pytest.raises(ValueError, match="shape mismatch"):
        m.psnr(pred, target[:, :, :16])


def test_ssim_identity_and_blur(m, astronaut):
    x = _t(astronaut)
    blurred = _t(cv2.GaussianBlur(astronaut, (0, 0), 3))
    same, worse = m.ssim(torch.cat([x, blurred]), torch.cat([x, x]))
    assert same.item() == pytest.approx(1.0, abs=1e-6)
    assert worse.item() < 0.9


def test_niqe_shipped_params_and_direction(m, astronaut):
    rng = np.random.default_rng(1)
    x = _t(astronaut)
    noisy = (x + torch.from_numpy(rng.normal(0, 0.1, x.shape)).float()).clamp(0, 1)
    blurred = _t(cv2.GaussianBlur(astronaut, (0, 0), 3))
    blur_noisy = (blurred + torch.from_numpy(rng.normal(0, 0.05, x.shape)).float()).clamp(0, 1)
    clean, n, bn = m.niqe(torch.cat([x, noisy, blur_noisy])).tolist()
    assert np.isfinite([clean, n, bn]).all()
    assert n > clean and bn > clean  # lower is better


def test_niqe_errors(m, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="at least 96"):
        m.niqe(torch.rand(1, 3, 64, 128))
    with pytest.raises(FileNotFoundError, match="nope.mat"):
        ImageMetrics(niqe_params=tmp_path / "nope.mat").niqe(torch.rand(1, 3, 96, 96))
    monkeypatch.setattr(metrics, "NIQE_PARAMS", ("assets", "missing.mat"))
    with pytest.raises(FileNotFoundError, match="missing.mat"):
        metrics.niqe_params_path()


def test_masked_psnr_over_the_masked_pixels_only():
    pred = torch.zeros(3, 3, 4, 4)
    target = torch.zeros(3, 3, 4, 4)
    target[:, :, :2] = 10 / 255  # inside the mask: off by 10 levels
    target[:, :, 2:] = 1.0  # outside: off by everything
    mask = torch.zeros(3, 4, 4, dtype=torch.bool)
    mask[:2, :2] = True
    target[1] = pred[1]  # a perfect match scores the cap
    got = masked_psnr(pred, target, mask)
    assert got[0].item() == pytest.approx(20 * math.log10(255 / 10), abs=1e-4)  # 28.13 dB
    assert got[1].item() == 99.0
    assert torch.isnan(got[2])  # an empty mask
    weights = mask[:, None].float() * 0.5  # a float mask weights: uniform weights, same PSNR
    assert masked_psnr(pred, target, weights)[0].item() == pytest.approx(got[0].item(), abs=1e-4)
    diverged = torch.full_like(pred, float("nan"))  # a diverged model is not a perfect one
    assert masked_psnr(diverged, target, mask)[:2].isnan().all()
