"""Networks: any input size, finite outputs and gradients, presets, checkpoint round trips."""

from __future__ import annotations

import pytest
import torch

from bluref_ray.models import PRESETS, build_model, load_checkpoint, save_checkpoint

#: Small networks, by preset name or by architecture with tiny keyword arguments.
TINY: dict[str, tuple[str, dict]] = {
    "nafnet-tiny": ("nafnet-tiny", {}),
    "restormer-tiny": ("restormer-tiny", {}),
    "nafnet-kwargs": ("nafnet", {"width": 8, "enc_blocks": (1, 1), "middle_blocks": 1,
                                 "dec_blocks": (1, 1)}),
    "restormer-kwargs": ("restormer", {"width": 8, "blocks": (1, 1, 1, 1),
                                       "refinement_blocks": 1, "heads": (1, 2, 2, 4),
                                       "ffn_expansion": 1.5}),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: tiny convolutions only slow down on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 19, 30)])
def test_any_size_finite_output_and_gradients(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    arch, kwargs = TINY[name]
    model = build_model(arch, **kwargs)
    image = torch.rand(*shape)
    out = model(image)
    assert out.shape == image.shape
    assert torch.isfinite(out).all()
    (out - torch.rand_like(out)).abs().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


def test_tiny_image_is_padded_by_replication() -> None:
    """Smaller than the padding: reflection is impossible, the model still works."""
    model = build_model("restormer-tiny").eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 3, 5))
    assert out.shape == (1, 3, 3, 5)


def test_restormer_checkpoint_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    _, kwargs = PRESETS["restormer-tiny"]
    model = build_model("restormer", **kwargs).eval()
    uri = str(tmp_path / "model.pt")
    save_checkpoint(model, uri, "restormer", kwargs, step=3)
    loaded, ckpt = load_checkpoint(uri)
    assert ckpt["step"] == 3 and not loaded.training
    image = torch.rand(1, 3, 21, 26)
    with torch.no_grad():
        assert torch.equal(model(image), loaded(image))


@pytest.mark.parametrize("name", ["restormer", "nafnet-width32"])
def test_full_presets_construct(name: str) -> None:
    model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) > 1_000_000


def test_restormer_rejects_bad_heads() -> None:
    with pytest.raises(ValueError, match="heads"):
        build_model("restormer", width=8, heads=(3, 1, 1, 1))
    with pytest.raises(ValueError, match="4 levels"):
        build_model("restormer", blocks=(1, 1, 1))


def test_unknown_model() -> None:
    with pytest.raises(ValueError, match="restormer-tiny"):
        build_model("unet")
