"""Image quality metrics for evaluating deblurring: PSNR, SSIM (with a reference) and NIQE.

The metrics come from `pyiqa <https://github.com/chaofengc/IQA-PyTorch>`_, created once per
:class:`ImageMetrics` and reused. Nothing is downloaded: PSNR and SSIM need no weights, and NIQE
reads the pristine-image model shipped with this package (``assets/niqe_pristine_params.mat``).

Convention (:data:`COLOR_CONVENTION`): PSNR and SSIM are both computed over the full RGB image
(no Y-channel conversion, no border crop, data range 1), the way BasicSR/NAFNet report their
GoPro results, so our numbers compare with theirs. SSIM, as in MATLAB's reference code, first
rounds the images to 8-bit levels and averages the per-channel SSIM maps (11×11 Gaussian
window, σ = 1.5). NIQE is computed on the luminance (Y of YIQ) of the 8-bit image.

Inputs are float tensors in ``[0, 1]``; values outside are clamped, as saving an image would.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import math
import os
from typing import Any

import torch

#: Where PSNR and SSIM are measured: the full RGB image for both (see the module docstring).
COLOR_CONVENTION = "rgb"

#: The NIQE pristine-image model shipped with the package (keys ``mu_prisparam`` and
#: ``cov_prisparam``), relative to the package root.
NIQE_PARAMS = ("assets", "niqe_pristine_params.mat")

#: NIQE cuts the image into 96×96 blocks; smaller images have none.
NIQE_MIN_SIZE = 96

#: PSNR reported for identical images (pyiqa's ``eps`` of 1e-8 on the MSE caps it here).
PSNR_MAX_DB = 80.0


def niqe_params_path() -> Any:
    """The shipped NIQE parameter file, as an :mod:`importlib.resources` traversable.

    Raises:
        FileNotFoundError: if the package was installed without its assets.
    """
    resource = importlib.resources.files("bluref_ray").joinpath(*NIQE_PARAMS)
    if not resource.is_file():
        raise FileNotFoundError(
            f"NIQE parameters not found at {resource} (the bluref_ray package should ship "
            f"{'/'.join(NIQE_PARAMS)}; reinstall it)")
    return resource


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got {tuple(pred.shape)}")
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: {tuple(pred.shape)} vs {tuple(target.shape)}")


class ImageMetrics:
    """PSNR, SSIM and NIQE of image batches, on one device.

    Each pyiqa metric is built at its first use and reused afterwards. Constructing this object
    is cheap and imports nothing heavy.

    Args:
        device: where the metrics run (inputs are moved there).
        niqe_params: a ``.mat`` file with ``mu_prisparam`` and ``cov_prisparam`` to use instead
            of the shipped one.

    Example:
        >>> m = ImageMetrics("cuda")
        >>> m.psnr(restored, sharp).mean()
    """

    def __init__(self, device: str | torch.device = "cpu",
                 niqe_params: str | os.PathLike | None = None) -> None:
        self.device = torch.device(device)
        self.niqe_params = niqe_params
        self._metrics: dict[str, torch.nn.Module] = {}

    def _metric(self, name: str) -> torch.nn.Module:
        if name not in self._metrics:
            self._metrics[name] = self._create(name)
        return self._metrics[name]

    def _create(self, name: str) -> torch.nn.Module:
        import pyiqa  # slow to import: only when a metric is first needed

        if name in ("psnr", "ssim"):
            # Explicit, so that a change of pyiqa's defaults cannot change our numbers.
            return pyiqa.create_metric(name, device=self.device, test_y_channel=False)
        if self.niqe_params is not None:
            if not os.path.isfile(self.niqe_params):
                raise FileNotFoundError(f"NIQE parameters not found at {self.niqe_params}")
            path_cm: Any = contextlib.nullcontext(os.fspath(self.niqe_params))
        else:
            path_cm = importlib.resources.as_file(niqe_params_path())
        with path_cm as path:
            try:
                return pyiqa.create_metric("niqe", device=self.device,
                                           pretrained_model_path=str(path))
            except KeyError as e:
                raise ValueError(f"{path}: not a NIQE parameter file (missing {e}; it needs "
                                 "mu_prisparam and cov_prisparam)") from None

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach().to(self.device, torch.float32).clamp(0.0, 1.0)

    @torch.no_grad()
    def psnr(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """PSNR in dB over the RGB image, data range 1 (``10·log10(1 / MSE)``), higher is better.

        Identical images score :data:`PSNR_MAX_DB`.

        Shape:
            pred, target ``[B, 3, H, W]`` float in ``[0, 1]`` → ``[B]`` float32 on the CPU.
        """
        return self._full_reference("psnr", pred, target)

    @torch.no_grad()
    def ssim(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """SSIM over the RGB image (mean of the channels), at most 1, higher is better.

        Shape:
            pred, target ``[B, 3, H, W]`` float in ``[0, 1]`` → ``[B]`` float32 on the CPU.
        """
        return self._full_reference("ssim", pred, target)

    def _full_reference(self, name: str, pred: torch.Tensor, target: torch.Tensor
                        ) -> torch.Tensor:
        _check_pair(pred, target)
        out = self._metric(name)(self._prepare(pred), self._prepare(target))
        return out.reshape(-1).float().cpu()

    @torch.no_grad()
    def niqe(self, images: torch.Tensor) -> torch.Tensor:
        """No-reference NIQE of each image, lower is better (more like natural sharp images).

        Shape:
            images ``[B, 3, H, W]`` (or ``[B, 1, H, W]``) float in ``[0, 1]``, H and W at least
            :data:`NIQE_MIN_SIZE` → ``[B]`` float32 on the CPU.

        An image without structure to score (a flat frame: a covered lens, a black night
        frame, a diverged model's output) gets NaN: its block statistics are not finite.

        Raises:
            ValueError: if the images are smaller than NIQE's 96×96 blocks.
            FileNotFoundError: if the NIQE parameter file is missing.
        """
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if min(h, w) < NIQE_MIN_SIZE:
            raise ValueError(f"NIQE needs images of at least {NIQE_MIN_SIZE}×{NIQE_MIN_SIZE} "
                             f"pixels (it works on {NIQE_MIN_SIZE}-px blocks); got {h}×{w}")
        metric, prepared = self._metric("niqe"), self._prepare(images)
        try:
            return metric(prepared).reshape(-1).float().cpu()
        except RuntimeError:  # torch.linalg on non-finite statistics: find the image(s)
            return torch.stack([self._niqe_or_nan(metric, im[None]) for im in prepared])

    @staticmethod
    def _niqe_or_nan(metric, image: torch.Tensor) -> torch.Tensor:
        try:
            return metric(image).reshape(()).float().cpu()
        except RuntimeError:
            return torch.tensor(float("nan"))


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                  max_db: float = 99.0) -> torch.Tensor:
    """PSNR in dB (data range 1) of each image over the pixels in ``mask`` (e.g. confident ones).

    A float mask weights the pixels, a bool mask selects them (in every channel). Images whose
    mask is empty get NaN, as do NaN predictions; a zero error gives ``max_db``.

    Shape:
        pred, target ``[B, C, H, W]``, mask ``[B, 1, H, W]`` or ``[B, H, W]`` → ``[B]`` float32.
    """
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: {tuple(pred.shape)} vs {tuple(target.shape)}")
    weight = (mask.unsqueeze(1) if mask.ndim == 3 else mask).to(torch.float64)
    err = (pred.double() - target.double()).pow(2) * weight
    total = weight.expand_as(err).sum(dim=(1, 2, 3))
    mse = err.sum(dim=(1, 2, 3)) / total.clamp_min(1e-12)
    psnr = 10.0 * torch.log10(1.0 / mse.clamp_min(1e-300))
    psnr = torch.where(mse > 0, psnr, torch.full_like(psnr, max_db))  # NaN error stays NaN
    return torch.where((total > 0) & ~mse.isnan(), psnr, torch.full_like(psnr, math.nan)).float()
