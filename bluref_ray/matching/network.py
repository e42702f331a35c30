"""The learned dense matcher, in the spirit of GLU-Net / PDC-Net+.

Dict in, dict out::

    net = DenseMatcherNet()
    out = net(query, reference)        # [B,3,H,W] each, floats in [0, 1], any H, W
    out["flow"]                         # [B,2,H,W] query → reference, pixels
    out["confidence"]                   # [B,1,H,W] P(|flow error| < radius_px)
    out["confidence_logits"]            # [B,K,H,W] one logit per radius in ``radii``
    out["levels"]                       # for training: [(name, flow on that grid)]
    out["correlations"]                 # for training: [(name, logits, flow before the level)]

How it works, coarse to fine:

1. **Feature pyramid**, shared by both images: four stride-2 stages (1/2 … 1/16).
2. **Global correlation**: both images resized to ``global_size``²; every query cell of the
   1/16 grid is correlated with every reference cell. A soft-argmax gives a first flow and a
   decoder on the whole correlation volume refines it, so large displacements are found.
3. **Local correlations** at 1/16, 1/8 and 1/4 of the input size: the reference features are
   warped by the current flow and correlated within ``radius`` cells; the soft-argmax of that
   correlation moves the flow, then a decoder predicts a residual from the correlation, the
   query features and the flow. The decoders' last layers start at zero, so an untrained
   network is already a (random-feature) correlation matcher, and training sharpens the
   features and learns the corrections: this is what lets it train in minutes on a CPU.
4. **Half-resolution refinement** (``half_level``): the same step once more at 1/2, within
   ``half_radius`` cells, on features of its own and with a small decoder. Cells of 2 pixels
   make the flow precise below a pixel, where the 1/4 grid left typical errors of 1 to 2 pixels.
5. **Confidence head** at 1/4: from a local correlation along the final flow and the 1/4
   decoder's features, one logit per radius R in ``radii`` that the flow at that pixel is within
   R pixels of the truth. Trained with binary cross-entropy against those events, each is a
   calibrated probability; unlike PDC-Net's ``p_r`` it has no ceiling below 1 (DESIGN.md:
   PDC-Net's ``p_r`` with R=1 cannot pass 0.573). ``radius_px`` picks the one returned as
   ``confidence``.
6. The flow (1/2, or 1/4 without ``half_level``) and the logits are upsampled bilinearly to the
   input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bluref_ray.matching.warp import warp


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.1, inplace=True))


class FeaturePyramid(nn.Module):
    """Four stride-2 stages. Shape: ``[B,3,H,W]`` → features at 1/2, 1/4, 1/8, 1/16."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 96)) -> None:
        super().__init__()
        stages, cin = [], 3
        for c in channels:
            stages.append(nn.Sequential(_conv(cin, c, 2), _conv(c, c), _conv(c, c)))
            cin = c
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


def global_correlation(ft: torch.Tensor, fr: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every query cell with every reference cell.

    Shape:
        ``[B,C,h,w]`` twice → ``[B, h·w (reference cells), h, w]``.
    """
    ft, fr = F.normalize(ft, dim=1), F.normalize(fr, dim=1)
    b, c, h, w = ft.shape
    return torch.einsum("bcn,bcm->bmn", ft.flatten(2), fr.flatten(2)).reshape(b, h * w, h, w)


def local_correlation(ft: torch.Tensor, fr: torch.Tensor, radius: int) -> torch.Tensor:
    """Cosine similarity of each query cell with reference cells within ``radius``.

    Shape:
        ``[B,C,H,W]`` twice → ``[B, (2r+1)², H, W]``.
    """
    ft, fr = F.normalize(ft, dim=1), F.normalize(fr, dim=1)
    h, w = ft.shape[-2:]
    pad = F.pad(fr, (radius,) * 4)
    out = [(ft * pad[..., dy:dy + h, dx:dx + w]).sum(1) for dy in range(2 * radius + 1)
           for dx in range(2 * radius + 1)]
    return torch.stack(out, 1)


def windowed_soft_argmax(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Expected position under the softmax of ``logits``, within 1 cell of the arg max.

    A plain soft-argmax over a wide window is pulled towards the window's centre of mass
    whenever the distribution is not sharply peaked; restricted to the 3×3 cells around the
    best match it stays unbiased and still interpolates below a cell.

    Shape:
        logits ``[B, K, H, W]``, positions ``[2, K]`` (x, y of each of the K candidates) →
        ``[B, 2, H, W]``.
    """
    best = positions[:, logits.argmax(1)]  # [2, B, H, W]
    near = ((positions.view(2, 1, -1, 1, 1) - best.unsqueeze(2)).abs() <= 1.0).all(0)
    prob = torch.softmax(logits.masked_fill(~near, float("-inf")), dim=1)
    return torch.einsum("kn,bnhw->bkhw", positions, prob)


def window_offsets(radius: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(dx, dy) of the ``(2r+1)²`` local correlation channels, in their order. Shape ``[2, K]``."""
    d = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    return torch.stack([dx.flatten(), dy.flatten()])


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample a flow field to ``size`` and rescale its vectors to the new pixel units."""
    h, w = flow.shape[-2:]
    out = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    scale = torch.tensor([size[1] / w, size[0] / h], device=flow.device, dtype=flow.dtype)
    return out * scale.view(1, 2, 1, 1)


class FlowDecoder(nn.Module):
    """Conv stack: inputs → residual flow (and its last features)."""

    def __init__(self, cin: int, hidden: tuple[int, ...] = (96, 64, 32)) -> None:
        super().__init__()
        layers, c = [], cin
        for hdim in hidden:
            layers.append(_conv(c, hdim))
            c = hdim
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, 2, 3, padding=1)
        nn.init.zeros_(self.head.weight)  # starts as "no correction": the correlation decides
        nn.init.zeros_(self.head.bias)
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.body(x)
        return self.head(feats), feats


class DenseMatcherNet(nn.Module):
    """Coarse-to-fine dense matcher with a calibrated confidence (see the module docstring).

    Args:
        channels: feature pyramid widths at 1/2, 1/4, 1/8, 1/16.
        global_size: side (multiple of 16) both images are resized to for global correlation.
        radius: local correlation radius in cells.
        radii: the radii R (pixels) of the confidences P(|error| < R) the head predicts.
        radius_px: which of ``radii`` is returned as ``confidence``.
        half_level: refine the flow once more at 1/2 resolution.
        half_radius: local correlation radius at 1/2, in cells.
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 96), global_size: int = 192,
                 radius: int = 3, radii: tuple[float, ...] = (1.0, 2.0, 4.0),
                 radius_px: float = 1.0, half_level: bool = True,
                 half_radius: int = 2) -> None:
        super().__init__()
        if global_size % 16:
            raise ValueError(f"global_size={global_size} must be a multiple of 16")
        if radius_px not in radii:
            raise ValueError(f"radius_px={radius_px} must be one of radii={radii}")
        self.global_size, self.radius, self.radii = global_size, radius, tuple(radii)
        self.radius_px = radius_px
        self.features = FeaturePyramid(channels)
        cells = (global_size // 16) ** 2
        # log-temperatures: sharpening a softmax must not wait on a learning rate of 1e-4
        self.log_temperature = nn.Parameter(torch.tensor(3.4))
        self.global_decoder = FlowDecoder(cells + 2)
        k = (2 * radius + 1) ** 2
        self.local_decoders = nn.ModuleList(
            [FlowDecoder(k + channels[i] + 2) for i in (3, 2, 1)])  # 1/16, 1/8, 1/4
        self.local_log_temperature = nn.Parameter(torch.full((3,), 3.4))
        self.half_radius = half_radius
        if half_level:
            # its own features: the level can be added to a trained network without its losses
            # reaching, through shared features, the levels that already work
            self.half_features = nn.Sequential(_conv(3, channels[0], 2),
                                               _conv(channels[0], channels[0]),
                                               _conv(channels[0], channels[0]))
            self.half_decoder = FlowDecoder((2 * half_radius + 1) ** 2 + channels[0] + 2,
                                            hidden=(32, 16))
            self.half_log_temperature = nn.Parameter(torch.tensor(3.4))
            # how far the 1/2 soft-argmax moves the flow (×10, so that it opens within a few
            # hundred optimizer steps); 0 at first, so the level starts as a no-op and a network
            # trained without it can be fine-tuned with it
            self.half_gate = nn.Parameter(torch.zeros(()))
        else:
            self.half_decoder = None
        c_last = self.local_decoders[-1].out_channels
        self.confidence_head = nn.Sequential(_conv(k + c_last, 32),
                                             nn.Conv2d(32, len(self.radii), 3, padding=1))

    def _global_flow(self, query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        g = self.global_size
        t = F.interpolate(query, size=(g, g), mode="bilinear", align_corners=False,
                          antialias=True)
        r = F.interpolate(reference, size=(g, g), mode="bilinear", align_corners=False,
                          antialias=True)
        ft, fr = self.features(t)[-1], self.features(r)[-1]
        corr = global_correlation(ft, fr)  # [B, h*w, h, w]
        b, m, h, w = corr.shape
        ys, xs = torch.meshgrid(torch.arange(h, device=corr.device, dtype=corr.dtype),
                                torch.arange(w, device=corr.device, dtype=corr.dtype),
                                indexing="ij")
        pos = torch.stack([xs, ys]).reshape(2, m)  # reference cell positions
        logits = corr * self.log_temperature.exp()
        flow = windowed_soft_argmax(logits, pos) - torch.stack([xs, ys])[None]
        residual, _ = self.global_decoder(torch.cat([corr, flow], 1))
        self._corrs.append(("global", logits, torch.zeros_like(flow)))
        return flow + residual  # in 1/16 cells of the global_size² image

    def forward(self, query: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
        """Shape: ``[B,3,H,W]`` twice → see the module docstring."""
        h, w = query.shape[-2:]
        levels = []
        self._corrs: list = []
        g16 = self._global_flow(query, reference)
        levels.append(("global", g16))
        ft = self.features(query)
        fr = self.features(reference)
        flow = None
        steps = [(name, decoder, ft[i], fr[i], self.radius, self.local_log_temperature[j], 1.0)
                 for j, (name, decoder, i) in enumerate(zip(("local16", "local8", "local4"),
                                                            self.local_decoders, (3, 2, 1)))]
        if self.half_decoder is not None:
            steps.append(("local2", self.half_decoder, self.half_features(query),
                          self.half_features(reference), self.half_radius,
                          self.half_log_temperature, 10 * self.half_gate))
        for name, decoder, t_feat, r_feat, radius, log_t, gate in steps:
            size = t_feat.shape[-2:]
            if flow is None:  # from the global grid to this level, through pixel units
                init = resize_flow(resize_flow(g16, (self.global_size,) * 2), (h, w))
                flow = resize_flow(init, size)
            else:
                flow = resize_flow(flow, size)
            warped, _ = warp(r_feat, flow)
            corr = local_correlation(t_feat, warped, radius)
            logits = corr * log_t.exp()
            self._corrs.append((name, logits, flow))
            flow = flow + gate * windowed_soft_argmax(
                logits, window_offsets(radius, corr.device, corr.dtype))
            residual, level_feats = decoder(torch.cat([corr, t_feat, flow], 1))
            flow = flow + residual
            levels.append((name, flow))
            if name == "local4":
                feats = level_feats
        quarter = resize_flow(flow, ft[1].shape[-2:])
        warped, _ = warp(fr[1], quarter)
        corr = local_correlation(ft[1], warped, self.radius)
        logit = self.confidence_head(torch.cat([corr, feats], 1))
        full = resize_flow(flow, (h, w))
        logits = F.interpolate(logit, size=(h, w), mode="bilinear", align_corners=False)
        k = self.radii.index(self.radius_px)
        corrs, self._corrs = self._corrs, []
        return {"flow": full, "confidence_logits": logits,
                "confidence": torch.sigmoid(logits[:, k:k + 1]), "levels": levels,
                "correlations": corrs}
