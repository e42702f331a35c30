"""The learned matcher behind the :class:`~bluref_ray.matching.Matcher` protocol.

``LearnedMatcher(checkpoint)`` loads a :class:`~bluref_ray.matching.network.DenseMatcherNet`
checkpoint (``bluref train-matcher`` writes one; the package ships a small one,
:data:`SHIPPED`), and runs it on the device it is moved to, with autocast on CUDA.
"""

from __future__ import annotations

from importlib import resources

import torch

from bluref_ray import storage
from bluref_ray.matching.base import MatchResult
from bluref_ray.matching.classical import DISMatcher
from bluref_ray.matching.network import DenseMatcherNet
from bluref_ray.matching.torch_dis import TorchDIS
from bluref_ray.models import checkpoint_from_bytes
from bluref_ray.storage import StorageConfig

#: The matcher checkpoint shipped in the package (trained on a CPU by `bluref train-matcher`;
#: see the README for the command).
SHIPPED = "package://bluref_ray/assets/matcher.pt"


def read_matcher_checkpoint(uri: str, storage_cfg: StorageConfig | None = None) -> dict:
    """The checkpoint dict at ``uri`` (a URI, or ``package://bluref_ray/assets/NAME``).

    Raises:
        FileNotFoundError: nothing at ``uri``; the message names it.
        ValueError: not a dense-matcher checkpoint.
    """
    return read_checkpoint(uri, "dense-matcher", storage_cfg)


def read_checkpoint(uri: str, arch: str, storage_cfg: StorageConfig | None = None) -> dict:
    """The checkpoint dict of an ``arch`` network at ``uri`` (a URI, or
    ``package://bluref_ray/assets/NAME`` for one the package ships).

    Raises:
        FileNotFoundError: nothing at ``uri``; the message names it.
        ValueError: not an ``arch`` checkpoint.
    """
    if uri.startswith("package://"):
        pkg, _, name = uri[len("package://"):].partition("/assets/")
        ref = resources.files(pkg.replace("/", ".")) / "assets" / name
        if not ref.is_file():
            raise FileNotFoundError(f"{uri}: the package has no such checkpoint")
        blob = ref.read_bytes()
    else:
        blob = storage.read_bytes(uri, storage_cfg)
    ckpt = checkpoint_from_bytes(blob, uri)
    if ckpt["arch"] != arch:
        raise ValueError(f"{uri}: not a {arch} checkpoint (it holds {ckpt['arch']!r})")
    return ckpt


class LearnedMatcher:
    """Dense matcher network as a :class:`~bluref_ray.matching.Matcher`.

    Args:
        checkpoint: checkpoint URI (default: the shipped one).
        radius_px: which calibrated confidence to return, P(|error| < R): 1, 2 or 4 pixels
            (default: the checkpoint's).
        storage_cfg: storage settings for ``checkpoint``.
        refine: what refines the network's flow, started from it: a
            :class:`~bluref_ray.matching.classical.DISMatcher` (on the CPU) or a
            :class:`~bluref_ray.matching.torch_dis.TorchDIS` (on the flow's device); the
            confidence stays the network's.
    """

    name = "learned"

    def __init__(self, checkpoint: str = SHIPPED, radius_px: float | None = None,
                 storage_cfg: StorageConfig | None = None,
                 refine: DISMatcher | TorchDIS | None = None) -> None:
        self.refine = refine
        ckpt = read_matcher_checkpoint(checkpoint, storage_cfg)
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["kwargs"].items()}
        kwargs.setdefault("half_level", False)  # checkpoints from before the 1/2 level
        if radius_px is not None:
            kwargs["radius_px"] = float(radius_px)
        self.net = DenseMatcherNet(**kwargs)
        self.net.load_state_dict(ckpt["state_dict"])
        self.net.eval()
        self.checkpoint = checkpoint
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> LearnedMatcher:
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    @torch.no_grad()
    def __call__(self, query: torch.Tensor, reference: torch.Tensor) -> MatchResult:
        """Shape: ``[B, 3, H, W]`` twice → flow ``[B, 2, H, W]``, confidence ``[B, 1, H, W]``."""
        t, r = query.to(self.device), reference.to(self.device)
        with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            out = self.net(t, r)
        flow = out["flow"].float()
        if self.refine is not None:
            flow = self.refine.refine(t, r, flow)
        return MatchResult(flow.to(query.device), out["confidence"].float().to(query.device))
