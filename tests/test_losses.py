"""Masked reconstruction losses: masked-out pixels neither count nor get gradient."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bluref_ray.losses import (
    LOSSES,
    build_loss,
    confidence_level,
    confidence_mask,
    fft_l1,
    masked_l1,
    masked_l2,
    masked_psnr_loss,
)


def _pair(b: int = 2, c: int = 3, h: int = 8, w: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, c, h, w, generator=g), torch.rand(b, c, h, w, generator=g)


def _left_half_mask(pred: torch.Tensor) -> torch.Tensor:
    """1 on the left half of each image, 0 on the right half."""
    mask = torch.zeros(pred.shape[0], 1, *pred.shape[2:])
    mask[..., : pred.shape[-1] // 2] = 1.0
    return mask


@pytest.mark.parametrize("name", LOSSES)
def test_masked_pixels_get_no_gradient(name: str) -> None:
    pred, target = _pair()
    pred.requires_grad_(True)
    mask = _left_half_mask(pred)
    build_loss(name)(pred, target, mask).backward()
    half = pred.shape[-1] // 2
    assert torch.all(pred.grad[..., half:] == 0)
    assert pred.grad[..., :half].abs().sum() > 0


@pytest.mark.parametrize("name", LOSSES)
def test_target_under_zero_mask_does_not_matter(name: str) -> None:
    pred, target = _pair()
    mask = _left_half_mask(pred)
    other = target.clone()
    other[..., pred.shape[-1] // 2:] = 5.0
    loss = build_loss(name)
    assert loss(pred, target, mask) == loss(pred, other, mask)


@pytest.mark.parametrize("name", LOSSES)
def test_empty_mask_gives_zero_loss_and_zero_gradient(name: str) -> None:
    pred, target = _pair()
    pred.requires_grad_(True)
    value = build_loss(name)(pred, target, torch.zeros(2, 1, 8, 10))
    value.backward()
    assert value.item() == 0.0
    assert torch.isfinite(pred.grad).all() and torch.all(pred.grad == 0)


def test_unmasked_and_full_mask_match_torch() -> None:
    pred, target = _pair()
    ones = torch.ones(2, 1, 8, 10)
    for fn, ref in ((masked_l1, F.l1_loss), (masked_l2, F.mse_loss)):
        assert torch.allclose(fn(pred, target), ref(pred, target))
        assert torch.allclose(fn(pred, target, ones), ref(pred, target))


def test_masked_mean_is_over_masked_pixels_and_channels() -> None:
    pred, target = _pair()
    mask = _left_half_mask(pred)
    half = pred.shape[-1] // 2
    expected = F.l1_loss(pred[..., :half], target[..., :half])
    assert torch.allclose(masked_l1(pred, target, mask), expected)


def test_psnr_loss_is_mean_per_image_log_mse() -> None:
    pred, target = _pair()
    mse = ((pred - target) ** 2).flatten(1).mean(1)
    expected = (10 * torch.log10(mse + 1e-8)).mean()
    assert torch.allclose(masked_psnr_loss(pred, target), expected)
    # An image with an empty mask is left out of the mean.
    mask = torch.ones(2, 1, 8, 10)
    mask[1] = 0
    assert math.isclose(masked_psnr_loss(pred, target, mask).item(),
                        10 * math.log10(mse[0].item() + 1e-8), rel_tol=1e-5)


def test_confidence_mask_threshold_is_inclusive() -> None:
    confidence = torch.tensor([0.0, 0.49, 0.5, 0.51, 1.0]).reshape(1, 1, 1, 5)
    confidence.requires_grad_(True)
    mask = confidence_mask(confidence, 0.5)
    assert mask.dtype == torch.float32 and not mask.requires_grad
    assert mask.flatten().tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]


def test_stored_confidence_is_confident_from_the_level_of_tau() -> None:
    assert confidence_level(0.7) == 178  # 255 · 0.7 = 178.5: round(255 c) >= 178 ⟺ c >= ~0.7
    assert confidence_level(0.5) == 127 and confidence_level(1.0) == 255
    stored = torch.tensor([0, 177, 178, 255], dtype=torch.uint8).reshape(1, 1, 1, 4)
    assert confidence_mask(stored, 0.7).flatten().tolist() == [0.0, 0.0, 1.0, 1.0]


def test_fft_l1() -> None:
    pred, target = _pair()
    assert fft_l1(pred, pred).item() == 0.0
    assert fft_l1(pred, target).item() > 0.0


def test_build_loss_unknown_name() -> None:
    with pytest.raises(ValueError, match="l1, l2, psnr, charbonnier"):
        build_loss("ssim")


def test_hinge_losses_on_hand_made_logits():
    from bluref_ray.losses import hinge_d, hinge_g

    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - x): 0, 0.5, 2
    fake = torch.tensor([-3.0, 0.0])  # relu(1 + x): 0, 1
    assert hinge_d(real, fake).item() == pytest.approx(2.5 / 3 + 0.5)
    assert hinge_d(torch.ones(4), -torch.ones(4)).item() == 0.0  # both margins met
    assert hinge_g(fake).item() == pytest.approx(1.5)


def test_gradient_penalty_of_a_linear_critic_is_its_weight_norm_minus_one():
    from bluref_ray.losses import gradient_penalty

    w = torch.full((1, 3, 2, 2), 0.5, requires_grad=True)  # ‖w‖ = sqrt(12 · 0.25) = sqrt(3)

    def critic(x):
        return (x * w).flatten(1).sum(1)

    real, fake = torch.rand(4, 3, 2, 2), torch.rand(4, 3, 2, 2)
    gp = gradient_penalty(critic, real, fake)
    assert gp.item() == pytest.approx((3 ** 0.5 - 1) ** 2, rel=1e-5)
    gp.backward()  # differentiable in the critic's weights: d/dw (‖w‖ - 1)² = 2(‖w‖ - 1) w/‖w‖
    expect = 2 * (3 ** 0.5 - 1) * 0.5 / 3 ** 0.5
    assert torch.allclose(w.grad, torch.full_like(w, expect), rtol=1e-4)
    unit = torch.full((1, 3, 2, 2), 12 ** -0.5)  # ‖w‖ = 1: no penalty
    assert gradient_penalty(lambda x: (x * unit).flatten(1).sum(1), real, fake).item() < 1e-10
