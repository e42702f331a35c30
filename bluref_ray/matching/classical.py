"""The classical baseline: OpenCV's DIS optical flow with forward–backward consistency.

DIS (Kroeger et al., 2016) assumes brightness constancy, which a blurry query breaks: the
reference is blurred a little (``ref_blur``) before matching so the two look more alike. The flow
is computed both ways; the forward–backward error ``e = |f(x) + b(x + f(x))|`` becomes the
confidence ``exp(-e² / 2σ²)`` (σ = ``sigma_px``), and pixels that map outside the reference get 0.

It runs on the CPU, one pair at a time; tensors on a GPU are moved to the CPU and back.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from bluref_ray.data.images import to_uint8
from bluref_ray.matching.base import MatchResult

_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
            "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
            "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


def _gray_u8(t: torch.Tensor) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(to_uint8(t)), cv2.COLOR_RGB2GRAY)


def fb_confidence(fwd: np.ndarray, bwd: np.ndarray, sigma_px: float) -> np.ndarray:
    """Confidence from forward–backward consistency; 0 where the match leaves the frame.

    Shape:
        fwd, bwd ``[H, W, 2]`` → ``[H, W]``.
    """
    h, w = fwd.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    mx, my = xs + fwd[..., 0], ys + fwd[..., 1]
    back = cv2.remap(bwd, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    err2 = ((fwd + back) ** 2).sum(-1)
    inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    return np.exp(-err2 / (2 * sigma_px ** 2)) * inside


class DISMatcher:
    """OpenCV DIS optical flow + forward–backward confidence (see the module docstring).

    Args:
        preset: DIS preset, ``ultrafast``, ``fast`` or ``medium``.
        ref_blur: Gaussian sigma (pixels) applied to the reference before matching.
        sigma_px: forward–backward error (pixels) at which confidence falls to exp(-1/2).
    """

    name = "dis"

    def __init__(self, preset: str = "medium", ref_blur: float = 1.5,
                 sigma_px: float = 1.0) -> None:
        if preset not in _PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; known: {', '.join(_PRESETS)}")
        self.preset, self.ref_blur, self.sigma_px = preset, ref_blur, sigma_px
        self._dis: dict[str, cv2.DISOpticalFlow] = {}

    def to(self, device: torch.device | str) -> DISMatcher:
        return self  # CPU only; results are moved back to the input's device

    def _flow(self, a: np.ndarray, b: np.ndarray, init: np.ndarray | None = None) -> np.ndarray:
        # one OpenCV object for plain calls and one for calls from an initial flow: after a call
        # with one, a plain call on the same object no longer gives the plain result
        key = "plain" if init is None else "init"
        if key not in self._dis:
            self._dis[key] = cv2.DISOpticalFlow_create(_PRESETS[self.preset])
        return self._dis[key].calc(a, b, init)

    def _gray_pair(self, t: torch.Tensor, r: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        gt, gr = _gray_u8(t), _gray_u8(r)
        if self.ref_blur > 0:
            gr = cv2.GaussianBlur(gr, (0, 0), self.ref_blur)
        return gt, gr

    def refine(self, query: torch.Tensor, reference: torch.Tensor,
               flow: torch.Tensor) -> torch.Tensor:
        """DIS started from ``flow`` (e.g. a learned matcher's): its variational refinement
        sharpens the flow to sub-pixel precision, while ``flow`` supplies the large motions.

        Shape:
            ``[B, 3, H, W]`` twice and flow ``[B, 2, H, W]`` → refined flow ``[B, 2, H, W]``.
        """
        out = []
        for t, r, f in zip(query, reference, flow):
            init = np.ascontiguousarray(f.detach().float().permute(1, 2, 0).cpu().numpy())
            out.append(torch.from_numpy(self._flow(*self._gray_pair(t, r), init))
                       .permute(2, 0, 1))
        return torch.stack(out).to(flow.device, flow.dtype)

    def __call__(self, query: torch.Tensor, reference: torch.Tensor) -> MatchResult:
        """Match each query to its reference.

        Shape:
            ``[B, 3, H, W]`` twice → flow ``[B, 2, H, W]``, confidence ``[B, 1, H, W]``.
        """
        flows, confs = [], []
        for t, r in zip(query, reference):
            gt, gr = self._gray_pair(t, r)
            fwd = self._flow(gt, gr)
            bwd = self._flow(gr, gt)
            flows.append(torch.from_numpy(fwd).permute(2, 0, 1))
            confs.append(torch.from_numpy(fb_confidence(fwd, bwd, self.sigma_px))[None])
        dev = query.device
        return MatchResult(torch.stack(flows).to(dev), torch.stack(confs).float().to(dev))
