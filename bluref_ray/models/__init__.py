"""Networks, chosen by name plus keyword arguments, and their checkpoints.

Checkpoints are plain dicts saved with ``torch.save`` and loaded with ``weights_only=True``::

    {"arch": "nafnet", "kwargs": {...}, "state_dict": {...}, ...anything else}
"""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import nn

from bluref_ray import storage
from bluref_ray.models.nafnet import NAFNet
from bluref_ray.models.restormer import Restormer
from bluref_ray.storage import StorageConfig

#: Named configurations: (architecture, keyword arguments).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "nafnet-width32": ("nafnet", {"width": 32, "enc_blocks": (1, 1, 1, 28), "middle_blocks": 1,
                                  "dec_blocks": (1, 1, 1, 1)}),
    "nafnet-width64": ("nafnet", {"width": 64, "enc_blocks": (1, 1, 1, 28), "middle_blocks": 1,
                                  "dec_blocks": (1, 1, 1, 1)}),
    "nafnet-tiny": ("nafnet", {"width": 16, "enc_blocks": (1, 1, 2), "middle_blocks": 2,
                               "dec_blocks": (1, 1, 1)}),
    "restormer": ("restormer", {"width": 48, "blocks": (4, 6, 6, 8), "refinement_blocks": 4,
                                "heads": (1, 2, 4, 8), "ffn_expansion": 2.66}),
    "restormer-tiny": ("restormer", {"width": 16, "blocks": (1, 1, 1, 2), "refinement_blocks": 1,
                                     "heads": (1, 1, 2, 2), "ffn_expansion": 2.0}),
}

_ARCHS: dict[str, type[nn.Module]] = {"nafnet": NAFNet, "restormer": Restormer}


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """A network by architecture name (``nafnet``, ``restormer``) or preset name.

    Args:
        arch: an architecture name or a preset name (see :data:`PRESETS`).
        **kwargs: constructor arguments; for a preset they override the preset's own.

    Raises:
        ValueError: unknown name.
    """
    if arch in PRESETS:
        arch, preset = PRESETS[arch]
        kwargs = {**preset, **kwargs}
    if arch not in _ARCHS:
        raise ValueError(f"unknown model {arch!r}; known: {', '.join([*_ARCHS, *PRESETS])}")
    return _ARCHS[arch](**kwargs)


def save_checkpoint(model: nn.Module, uri: str, arch: str, kwargs: dict[str, Any],
                    storage_cfg: StorageConfig | None = None, **extra: Any) -> None:
    """Write ``{"arch", "kwargs", "state_dict", **extra}`` atomically to ``uri``."""
    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"arch": arch, "kwargs": dict(kwargs), "state_dict": state, **extra}, buf)
    storage.write_bytes(uri, buf.getvalue(), storage_cfg)


def checkpoint_from_bytes(blob: bytes, uri: str,
                          map_location: str | torch.device = "cpu") -> dict:
    """Unpickle checkpoint bytes safely (``weights_only``); errors name ``uri``.

    Raises:
        ValueError: not a readable checkpoint, or not a bluref-ray one.
    """
    try:
        ckpt = torch.load(io.BytesIO(blob), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise ValueError(f"{uri}: not a readable checkpoint ({e})") from None
    if not isinstance(ckpt, dict) or not {"arch", "kwargs", "state_dict"} <= set(ckpt):
        raise ValueError(f"{uri}: not a bluref-ray checkpoint (needs arch, kwargs, state_dict)")
    return ckpt


def read_checkpoint(uri: str, storage_cfg: StorageConfig | None = None,
                    map_location: str | torch.device = "cpu") -> dict:
    """The dict a bluref-ray checkpoint holds (``arch``, ``kwargs``, ``state_dict``, ...).

    Raises:
        storage.StorageNotFoundError: ``uri`` does not exist.
        ValueError: the file is not a bluref-ray checkpoint.
    """
    return checkpoint_from_bytes(storage.read_bytes(uri, storage_cfg), uri, map_location)


def load_checkpoint(uri: str, storage_cfg: StorageConfig | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Build the network a checkpoint describes and load its weights.

    Returns:
        ``(model in eval mode, the checkpoint dict)``.

    Raises:
        storage.StorageNotFoundError: ``uri`` does not exist.
        ValueError: the file is not a bluref-ray checkpoint.
    """
    ckpt = read_checkpoint(uri, storage_cfg, map_location)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["kwargs"].items()}
    model = build_model(ckpt["arch"], **kwargs)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt
