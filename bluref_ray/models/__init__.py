"""Networks, chosen by name plus keyword arguments, and their checkpoints.

Checkpoints are plain dicts saved with ``torch.save`` and loaded with ``weights_only=True``::

    {"arch": "nafnet", "kwargs": {...}, "state_dict": {...}, ...anything else}

Models run one after another are a :class:`Chain` (``arch="chain"``): Blur2Blur's translator
then a deblurrer. :func:`load_checkpoint` also takes ``A.pt+B.pt`` (two checkpoint URIs joined
by ``+``) and builds that chain from the two files.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any

import torch
from torch import nn

from bluref_ray import storage
from bluref_ray.config.core import ConfigError
from bluref_ray.models.blur2blur import KernelWizard, MIMOUNet, PatchDiscriminator
from bluref_ray.models.exported import Exported, archive_kind, exported_checkpoint
from bluref_ray.models.nafnet import NAFNet
from bluref_ray.models.refnafnet import RefNAFNet
from bluref_ray.models.restormer import Restormer
from bluref_ray.storage import StorageConfig

_NAF32 = {"width": 32, "enc_blocks": (1, 1, 1, 28), "middle_blocks": 1,
          "dec_blocks": (1, 1, 1, 1)}
_NAF_TINY = {"width": 16, "enc_blocks": (1, 1, 2), "middle_blocks": 2, "dec_blocks": (1, 1, 1)}

#: Named configurations: (architecture, keyword arguments).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "nafnet-width32": ("nafnet", _NAF32),
    "nafnet-width64": ("nafnet", {**_NAF32, "width": 64}),
    "nafnet-tiny": ("nafnet", _NAF_TINY),
    "restormer": ("restormer", {"width": 48, "blocks": (4, 6, 6, 8), "refinement_blocks": 4,
                                "heads": (1, 2, 4, 8), "ffn_expansion": 2.66}),
    "restormer-tiny": ("restormer", {"width": 16, "blocks": (1, 1, 1, 2), "refinement_blocks": 1,
                                     "heads": (1, 1, 2, 2), "ffn_expansion": 2.0}),
    # Blur2Blur: the translator (the paper's MIMO-UNet is width 32, 8 blocks), its
    # discriminator (the paper's PatchGAN: 64 channels, 3 layers) and the kernel extractor
    "mimo-unet": ("mimo-unet", {"width": 32, "blocks": 8}),
    "mimo-tiny": ("mimo-unet", {"width": 16, "blocks": 2}),
    "patchgan": ("patchgan", {"width": 64, "layers": 3}),
    "patchgan-tiny": ("patchgan", {"width": 16, "layers": 3}),
    "patchgan-plain": ("patchgan", {"width": 64, "layers": 3, "norm": "none"}),
    "patchgan-plain-tiny": ("patchgan", {"width": 16, "layers": 3, "norm": "none"}),
    "kernel-wizard": ("kernel-wizard", {"width": 32, "code": 128, "kernel_size": 33,
                                        "blocks": 2}),
    "kernel-tiny": ("kernel-wizard", {"width": 16, "code": 64, "kernel_size": 25, "blocks": 1}),
    # Ref-NAFNet: the NAFNet presets' backbones with reference matching (L = 16 as the paper)
    "refnafnet-width32": ("refnafnet", {**_NAF32, "window": 16}),
    "refnafnet-width64": ("refnafnet", {**_NAF32, "width": 64, "window": 16}),
    "refnafnet-tiny": ("refnafnet", {**_NAF_TINY, "window": 8}),
}


class Chain(nn.Module):
    """Networks applied one after another, each output clamped to [0, 1] before the next.

    Args:
        stages: ``[{"arch", "kwargs"}, ...]``, as checkpoints describe networks.
    """

    def __init__(self, stages: list[dict[str, Any]]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(_build(s["arch"], s["kwargs"]) for s in stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.stages) - 1:
                x = x.clamp(0, 1)
        return x


class CheckpointError(ConfigError):
    """A checkpoint cannot be used: not a checkpoint, not bluref-ray's, or not a network of the
    kind asked for. The message names the file."""


#: Architectures that map an image to an image of the same size (what deblur, eval and the
#: deblurrer settings run); the others are Blur2Blur's kernel extractor and discriminator.
IMAGE_TO_IMAGE = ("nafnet", "restormer", "mimo-unet", "refnafnet", "chain", "exported")

_ARCHS: dict[str, type[nn.Module]] = {
    "nafnet": NAFNet, "restormer": Restormer, "mimo-unet": MIMOUNet,
    "patchgan": PatchDiscriminator, "kernel-wizard": KernelWizard, "refnafnet": RefNAFNet,
    "chain": Chain}


def _tuples(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Lists of a checkpoint's kwargs (JSON-like) back to the tuples the constructors take."""
    return {k: tuple(v) if isinstance(v, list) and k != "stages" else v
            for k, v in kwargs.items()}


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


def _build(arch: str, kwargs: dict[str, Any]) -> nn.Module:
    """The network a checkpoint describes: :func:`build_model`, or a user's own exported
    network (which only a checkpoint can hold, so it is not among the models to train)."""
    return Exported() if arch == "exported" else build_model(arch, **_tuples(kwargs))


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
        CheckpointError: not a readable checkpoint, or not a bluref-ray one.
    """
    if not blob:
        raise CheckpointError(f"{uri}: empty file, not a checkpoint")
    if not blob.startswith(b"PK"):  # torch.save writes a zip archive
        raise CheckpointError(f"{uri}: not a PyTorch checkpoint (not a zip archive, "
                              f"{len(blob)} bytes)")
    if archive_kind(blob):  # a network of the user's own (torch.export.save, torch.jit.save)
        return exported_checkpoint(blob)
    try:
        ckpt = torch.load(io.BytesIO(blob), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{uri}: not a readable checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or not {"arch", "kwargs", "state_dict"} <= set(ckpt):
        raise CheckpointError(f"{uri}: not a bluref-ray checkpoint (needs arch, kwargs, "
                              "state_dict); a network of your own can be given as "
                              "torch.export.save or torch.jit.save writes it (see "
                              "bluref_ray/models/exported.py)")
    return ckpt


def chain_checkpoint(ckpts: list[dict]) -> dict:
    """One checkpoint of several networks applied in order (:class:`Chain`)."""
    stages = [{"arch": c["arch"], "kwargs": c["kwargs"]} for c in ckpts]
    state = {f"stages.{i}.{k}": v for i, c in enumerate(ckpts) for k, v in c["state_dict"].items()}
    return {"arch": "chain", "kwargs": {"stages": stages}, "state_dict": state}


def read_checkpoint(uri: str, storage_cfg: StorageConfig | None = None,
                    map_location: str | torch.device = "cpu") -> dict:
    """The dict a bluref-ray checkpoint holds (``arch``, ``kwargs``, ``state_dict``, ...).

    ``A+B`` (URIs joined by ``+``, when no file has that whole name) is the chain of the two:
    A's network, then B's.

    Raises:
        storage.StorageNotFoundError: ``uri`` (or a part of a chain) does not exist.
        CheckpointError: the file is not a bluref-ray checkpoint.
    """
    if "+" in uri and not storage.exists(uri, storage_cfg):
        return chain_checkpoint([read_checkpoint(part, storage_cfg, map_location)
                                 for part in uri.split("+")])
    return checkpoint_from_bytes(storage.read_bytes(uri, storage_cfg), uri, map_location)


def resolve_checkpoint(uri: str, storage_cfg: StorageConfig | None = None) -> str:
    """A checkpoint URI in canonical form, checked to exist before any work starts.

    ``uri`` is a file, or a chain ``A+B`` (as :func:`read_checkpoint` reads it): each part is
    made canonical (an absolute path or ``s3://bucket/key``) and must be a file.

    Raises:
        storage.StorageNotFoundError: the file, or a part of the chain, does not exist; the
            message names it.
        storage.StorageError: a part's storage cannot be reached.
    """
    parts = [uri]
    if "+" in uri:
        try:
            whole = storage.is_file(storage.normalize(uri), storage_cfg)
        except storage.StorageError:  # e.g. "a.pt+s3://..." is no one URI
            whole = False
        parts = [uri] if whole else uri.split("+")
    out = []
    for part in parts:
        part = storage.normalize(part)
        storage.check_reachable(part, storage_cfg)
        if not storage.is_file(part, storage_cfg):
            within = f" (a part of the chain {uri})" if len(parts) > 1 else ""
            raise storage.StorageNotFoundError(f"checkpoint {part}: not found{within}")
        out.append(part)
    return "+".join(out)


#: Settings that name files or folders (checkpoints, chains ``A+B``, data), in any section.
PATH_SETTINGS = ("init", "deblurrer", "kernel", "known", "pairs", "val", "images", "backbone",
                 "matcher_checkpoint", "check_selector", "vgg19_weights")


def absolute_paths(section: Any) -> Any:
    """The config section with its path settings (:data:`PATH_SETTINGS`) absolute, as the
    driver sees them: a relative path sent to a Ray actor or training worker would be taken
    from the folder that worker runs in, on its node. Each part of a chain ``A+B`` is made
    absolute; ``package://`` and ``s3://`` URIs stay as they are."""

    def absolute(uri: str) -> str:
        if uri.startswith("package://") or uri.lower() in ("auto", "none"):
            return uri
        whole = storage.normalize(uri)
        if "+" not in uri or storage.is_s3(whole) or os.path.exists(whole):
            return whole
        return "+".join(storage.normalize(part) for part in uri.split("+"))

    found = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)
             if f.name in PATH_SETTINGS}
    return dataclasses.replace(section, **{k: absolute(v) for k, v in found.items()
                                           if isinstance(v, str) and v})


def load_checkpoint(uri: str, storage_cfg: StorageConfig | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Build the network a checkpoint describes and load its weights.

    Returns:
        ``(model in eval mode, the checkpoint dict)``.

    Raises:
        storage.StorageNotFoundError: ``uri`` does not exist.
        CheckpointError: the file is not a bluref-ray checkpoint, or its network cannot be
            built.
    """
    ckpt = read_checkpoint(uri, storage_cfg, map_location)
    return _model(ckpt, uri), ckpt


def _model(ckpt: dict, uri: str) -> nn.Module:
    try:
        model = _build(ckpt["arch"], ckpt["kwargs"])
        model.load_state_dict(ckpt["state_dict"])
    except (ValueError, TypeError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{uri}: a {ckpt['arch']!r} checkpoint whose network cannot be "
                              f"built or loaded by this version ({first[:200]})") from None
    return model.eval()


def load_image_model(uri: str, storage_cfg: StorageConfig | None = None,
                     map_location: str | torch.device = "cpu", what: str = "deblurrer"
                     ) -> tuple[nn.Module, dict]:
    """:func:`load_checkpoint` for a network that maps images to images (a deblurrer, a blur
    translator, a chain of them).

    Raises:
        CheckpointError: also if the checkpoint holds another kind of network (the matcher,
            Blur2Blur's kernel extractor or discriminator); the message says which.
    """
    ckpt = read_checkpoint(uri, storage_cfg, map_location)
    archs = [s["arch"] for s in ckpt["kwargs"].get("stages", [])] if ckpt["arch"] == "chain" \
        else [ckpt["arch"]]
    for arch in archs:
        base = PRESETS[arch][0] if arch in PRESETS else arch
        if base not in IMAGE_TO_IMAGE:
            raise CheckpointError(
                f"{uri}: a {arch!r} checkpoint, not a {what} (an image-to-image network: "
                f"{', '.join(IMAGE_TO_IMAGE)}); use the model.pt of `bluref train`, `refine`, "
                "`blur2blur` or `train-ref`, or a network of your own as torch.export or "
                "TorchScript saves it")
    if len(archs) > 1 and any((PRESETS[a][0] if a in PRESETS else a) == "refnafnet"
                              for a in archs):
        raise CheckpointError(f"{uri}: a chain with a Ref-NAFNet in it; a network that reads a "
                              "reference frame runs on its own")
    return _model(ckpt, uri), ckpt
