"""A user's own image-to-image network, brought as an exported program or as TorchScript.

Blur2Blur's point is to reuse a deblurrer that already works on some blur; that deblurrer need
not come from bluref-ray. Any network that maps ``[B, 3, H, W]`` in [0, 1] to the same shape can
be saved by its own code and given wherever a checkpoint is read (``bluref deblur``, ``bluref
eval``, ``blur2blur.deblurrer``, a chain ``A.pt+B.pt``):

* ``torch.export.save(torch.export.export(net.eval(), (x,), dynamic_shapes=({0: Dim.AUTO,
  2: Dim.AUTO, 3: Dim.AUTO},)), "own.pt2")`` (PyTorch's current format; batch, height and
  width left free so that any frame and tile size runs), or
* ``torch.jit.save(torch.jit.trace(net.eval(), x), "own.pt")`` (TorchScript, which PyTorch
  deprecates but which many deblurrers still ship as).

:func:`exported_checkpoint` wraps the file's bytes as a checkpoint dict like the others
(``arch`` ``exported``, the bytes as a uint8 tensor in its ``state_dict``), so that chains and
Blur2Blur's ``OUT/model.pt`` carry it as they carry any network. Weights load from the user's
file only: nothing is downloaded.
"""

from __future__ import annotations

import io
import zipfile

import torch
from torch import nn


def archive_kind(blob: bytes) -> str | None:
    """``"export"`` for a ``torch.export.save`` archive, ``"torchscript"`` for a
    ``torch.jit.save`` one, None for anything else (``torch.save``'s pickles included)."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            names = z.namelist()
    except zipfile.BadZipFile:
        return None
    if any(n.endswith("/archive_format") for n in names) and \
            any("/models/" in n and n.endswith(".json") for n in names):
        return "export"
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        return "torchscript"
    return None


def exported_checkpoint(blob: bytes) -> dict:
    """A checkpoint dict (``arch``, ``kwargs``, ``state_dict``) holding an exported network."""
    data = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    return {"arch": "exported", "kwargs": {}, "state_dict": {"program": data}}


def _load(blob: bytes) -> nn.Module:
    kind = archive_kind(blob)
    if kind == "export":
        return torch.export.load(io.BytesIO(blob)).module()
    if kind == "torchscript":
        return torch.jit.load(io.BytesIO(blob), map_location="cpu")
    raise ValueError("neither a torch.export nor a TorchScript archive")


class Exported(nn.Module):
    """Runs a user's exported network; its file's bytes are the ``program`` entry of the state
    dict.

    Built empty (as every architecture is, before its weights load); ``load_state_dict`` reads
    the network. The network is kept out of the module tree, so that the state dict holds only
    the bytes, and is moved along by ``.to()``. Its train/eval mode is the one it was saved in
    (an exported program cannot switch).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("program", torch.zeros(0, dtype=torch.uint8))
        object.__setattr__(self, "_net", None)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        key = prefix + "program"
        if key not in state_dict:
            missing_keys.append(key)
            return
        blob = state_dict[key].detach().cpu().contiguous()
        try:
            net = _load(blob.numpy().tobytes())
        except Exception as e:  # noqa: BLE001 - torch raises many types for a bad archive
            error_msgs.append(f"not a loadable exported network ({str(e).strip()[:200]})")
            return
        device = self.program.device  # where this module is now
        self.program = blob.clone().to(device)
        object.__setattr__(self, "_net", net.to(device))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self._net is not None:  # follow a move to another device (not a dtype change:
            self._net.to(fn(torch.zeros(0)).device)  # the network keeps its own precision)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._net is None:
            raise RuntimeError("Exported: no network loaded (load a checkpoint's state dict)")
        return self._net(x)
