"""Reconstruction losses for the BluRef objective, each optionally masked.

BluRef trains on pseudo-sharp targets that are only trustworthy where their confidence is high,
so every loss here takes an optional mask ``[B, 1, H, W]`` (usually
``confidence_mask(confidence, tau)``): the loss is then averaged over the masked-in pixels and
channels only, i.e. ``sum(error * mask) / (mask.sum() * C)``. Pixels where the mask is zero get
exactly zero gradient, and a mask that is zero everywhere gives a loss of 0 (not NaN) with zero
gradients. Without a mask each loss is a plain mean.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from bluref_ray.config import LOSSES

#: Signature of every reconstruction loss: ``(pred, target, mask=None) -> scalar``.
LossFn = Callable[..., torch.Tensor]

#: Names :func:`build_loss` knows.

#: Smallest denominator of a masked mean (only reached by an empty mask, whose sum is zero).
_MIN_COUNT = 1e-6


def confidence_level(tau: float) -> int:
    """The stored 8-bit confidence (``round(255·c)``, as shards hold it) at or above which a
    pixel is confident at ``tau``: the one rule the training mask and the pseudo-GT quality
    figures use. ``confidence_level(0.7) == 178``."""
    return int(math.ceil(255.0 * tau - 0.5))


def confidence_mask(confidence: torch.Tensor, tau: float) -> torch.Tensor:
    """Binarise a confidence map at ``tau``: 1 where ``confidence >= tau``, else 0.

    Args:
        confidence: per-pixel confidence of the pseudo-sharp target, in [0, 1].
        tau: threshold; a confidence exactly ``tau`` counts as covered.

    Returns:
        A float tensor of zeros and ones with no gradient (the dtype of ``confidence`` when that
        is floating point, else float32).

    Shape:
        ``[B, 1, H, W]`` → ``[B, 1, H, W]``.
    """
    if confidence.dtype == torch.uint8:  # as stored: round(255·c)
        return (confidence >= confidence_level(tau)).float()
    dtype = confidence.dtype if confidence.is_floating_point() else torch.float32
    return (confidence.detach() >= tau).to(dtype)


def _masked_mean(error: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``error`` over all elements, or over the masked-in pixels and channels.

    Shape:
        ``error [B, C, H, W]``, ``mask [B, 1, H, W]`` (or ``[B, C, H, W]``) → scalar.
    """
    if mask is None:
        return error.mean()
    mask = mask.to(error.dtype).expand_as(error)
    return (error * mask).sum() / mask.sum().clamp_min(_MIN_COUNT)


def masked_l1(pred: torch.Tensor, target: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error, over the masked-in pixels when ``mask`` is given.

    Shape:
        ``pred, target [B, C, H, W]``, ``mask [B, 1, H, W] | None`` → scalar.
    """
    return _masked_mean((pred - target).abs(), mask)


def masked_l2(pred: torch.Tensor, target: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error, over the masked-in pixels when ``mask`` is given.

    Shape:
        ``pred, target [B, C, H, W]``, ``mask [B, 1, H, W] | None`` → scalar.
    """
    return _masked_mean((pred - target).pow(2), mask)


def masked_charbonnier(pred: torch.Tensor, target: torch.Tensor,
                       mask: torch.Tensor | None = None, eps: float = 1e-3) -> torch.Tensor:
    """Charbonnier loss ``sqrt((pred - target)**2 + eps**2)``, a smooth L1, optionally masked.

    Shape:
        ``pred, target [B, C, H, W]``, ``mask [B, 1, H, W] | None`` → scalar.
    """
    return _masked_mean(torch.sqrt((pred - target).pow(2) + eps * eps), mask)


def masked_psnr_loss(pred: torch.Tensor, target: torch.Tensor,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Negative PSNR (as in NAFNet): the mean over images of ``10 * log10(mse_i + 1e-8)``.

    ``mse_i`` is image ``i``'s mean squared error, over its masked-in pixels and channels when
    ``mask`` is given. Images whose mask is empty are left out of the mean; when every image's
    mask is empty the loss is 0 with zero gradients.

    Shape:
        ``pred, target [B, C, H, W]``, ``mask [B, 1, H, W] | None`` → scalar.
    """
    error = (pred - target).pow(2)
    if mask is None:
        mse = error.flatten(1).mean(1)
        return (10.0 / math.log(10.0)) * torch.log(mse + 1e-8).mean()
    mask = mask.to(error.dtype).expand_as(error)
    count = mask.flatten(1).sum(1)
    mse = (error * mask).flatten(1).sum(1) / count.clamp_min(_MIN_COUNT)
    valid = (count > 0).to(error.dtype)
    per_image = (10.0 / math.log(10.0)) * torch.log(mse + 1e-8)
    return (per_image * valid).sum() / valid.sum().clamp_min(1.0)


def fft_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the 2-D real FFTs (real and imaginary parts) of both images.

    Computed in float32 (half-precision FFTs are restricted to power-of-two sizes).

    Shape:
        ``pred, target [B, C, H, W]`` → scalar.
    """
    fp = torch.view_as_real(torch.fft.rfft2(pred.float()))
    ft = torch.view_as_real(torch.fft.rfft2(target.float()))
    return (fp - ft).abs().mean()


def multiscale_loss(outputs: list[torch.Tensor], target: torch.Tensor,
                    mask: torch.Tensor | None = None, fft_weight: float = 0.01) -> torch.Tensor:
    """Ref-NAFNet's loss: over every output scale, Charbonnier plus ``fft_weight`` × the L1
    distance of the Fourier transforms, against the target (and mask) area-resized to that
    scale. With a mask (BluRef's pseudo-GT confidence), both terms see the masked-in pixels
    only (the FFT compares the masked images).

    Shape:
        ``outputs`` ``[B, C, H_s, W_s]`` each, ``target [B, C, H, W]``, ``mask [B, 1, H, W]``
        → scalar.
    """
    total = target.new_zeros(())
    for out in outputs:
        out = out.float()
        size = out.shape[-2:]
        t = target if target.shape[-2:] == size else F.interpolate(target, size=size,
                                                                   mode="area")
        m = None if mask is None else (mask if mask.shape[-2:] == size else
                                       F.interpolate(mask, size=size, mode="area"))
        total = total + masked_charbonnier(out, t, m)
        if fft_weight:
            total = total + fft_weight * (fft_l1(out, t) if m is None else fft_l1(out * m, t * m))
    return total


_BUILDERS: dict[str, LossFn] = {
    "l1": masked_l1,
    "l2": masked_l2,
    "psnr": masked_psnr_loss,
    "charbonnier": masked_charbonnier,
}


def build_loss(name: str) -> LossFn:
    """The masked reconstruction loss called ``name`` (one of :data:`LOSSES`).

    Returns:
        A function ``(pred, target, mask=None) -> scalar``.

    Raises:
        ValueError: unknown name.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    return _BUILDERS[name]


# Adversarial losses (Blur2Blur's translator against its discriminator) ---------------------


def hinge_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: ``mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))``
    (0 once real logits are ≥ 1 and fake ones ≤ -1)."""
    return torch.relu(1.0 - real).mean() + torch.relu(1.0 + fake).mean()


def hinge_g(fake: torch.Tensor) -> torch.Tensor:
    """The generator's hinge loss: ``-mean(D(fake))``."""
    return -fake.mean()


def gradient_penalty(disc: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """WGAN-GP: ``mean((‖∇ₓ D(x)‖₂ − 1)²)`` at random points ``x`` between real and fake
    images (one mixing weight per image), differentiable with respect to D's weights.

    Shape:
        ``real``, ``fake``: ``[B, C, H, W]`` → scalar.
    """
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, generator=generator)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(disc(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()
