"""Feature distances for Blur2Blur's content loss: the translated image should keep its input's
content while its blur changes.

The paper compares VGG features pre-trained on ImageNet; nothing can be downloaded here. Three
choices: ``pixels`` (the default) compares the images low-passed by a 4×4 average, so colour and
layout must stay while detail (blur, noise) is free to change; ``matcher`` compares the features
of the dense matcher that ships in the package (its feature pyramid, trained by this project to
match frames across blur); ``vgg19`` takes VGG19 weights from a path the user gives. On the
project's two-domain benchmark and on real footage the matcher's features let the translation
drift further from its input than the low-pass does (on real footage: docs/results.md,
Blur2Blur), hence the default.

``ContentLoss(kind)(output, input)``: the mean L1 distance over the feature layers; frozen (no
gradient to its weights), on the device of the images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bluref_ray.storage import StorageConfig

#: Feature sources :class:`ContentLoss` knows.
CONTENT_FEATURES = ("matcher", "vgg19", "pixels")
#: VGG19 layers compared (after ReLU): relu1_2, relu2_2, relu3_4 (indices into ``features``)
VGG19_LAYERS = (3, 8, 17)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _matcher_pyramid(storage_cfg: StorageConfig | None) -> nn.Module:
    from bluref_ray.matching.learned import SHIPPED, read_matcher_checkpoint
    from bluref_ray.matching.network import FeaturePyramid

    ckpt = read_matcher_checkpoint(SHIPPED, storage_cfg)
    pyramid = FeaturePyramid(tuple(ckpt["kwargs"].get("channels", (16, 32, 64, 96))))
    pyramid.load_state_dict({k[len("features."):]: v for k, v in ckpt["state_dict"].items()
                             if k.startswith("features.")})
    return pyramid


def _vgg19(path: str | None, storage_cfg: StorageConfig | None,
           key: str = "blur2blur.vgg19_weights") -> nn.Module:
    import io

    import torchvision

    from bluref_ray import storage
    from bluref_ray.config import ConfigError

    if not path:
        raise ConfigError(f"VGG19 features need {key}: the path of torchvision VGG19 weights "
                          "(a state dict); nothing is downloaded")
    try:
        blob = storage.read_bytes(path, storage_cfg)
    except storage.StorageNotFoundError:
        raise ConfigError(f"{key}={path}: no such file") from None
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    vgg = torchvision.models.vgg19(weights=None)
    try:
        vgg.load_state_dict(state.get("state_dict", state))
    except RuntimeError as e:
        raise ConfigError(f"{key}={path}: not torchvision VGG19 weights "
                          f"({str(e)[:200]})") from None
    return vgg.features[:max(VGG19_LAYERS) + 1]


def lowpass(x: torch.Tensor) -> torch.Tensor:
    """``x`` averaged over 4×4 blocks: the colour and layout that the ``pixels`` content loss
    keeps. Shape: ``[B, C, H, W]`` → ``[B, C, ⌈H/4⌉, ⌈W/4⌉]``."""
    return F.avg_pool2d(x, 4, ceil_mode=True)


def detail(x: torch.Tensor) -> torch.Tensor:
    """``x`` minus its :func:`lowpass` (upsampled back): the blur, noise and texture that the
    ``pixels`` content loss leaves free to change. Shape: kept."""
    return x - F.interpolate(lowpass(x), size=x.shape[-2:], mode="bilinear",
                             align_corners=False)


class ContentLoss(nn.Module):
    """Mean L1 distance between features of two images (frozen features).

    Args:
        kind: ``pixels`` (images low-passed by a 4×4 average), ``matcher`` (the shipped
            matcher's feature pyramid, 1/2 and 1/4 scale) or ``vgg19`` (ImageNet VGG19 at
            ``vgg19_weights``).
    """

    def __init__(self, kind: str = "pixels", vgg19_weights: str | None = None,
                 storage_cfg: StorageConfig | None = None) -> None:
        super().__init__()
        if kind not in CONTENT_FEATURES:
            raise ValueError(f"content features {kind!r}: use one of {CONTENT_FEATURES}")
        self.kind = kind
        self.net = {"matcher": lambda: _matcher_pyramid(storage_cfg),
                    "vgg19": lambda: _vgg19(vgg19_weights, storage_cfg),
                    "pixels": lambda: nn.Identity()}[kind]()
        self.net.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN)[None, :, None, None])
        self.register_buffer("std", torch.tensor(_IMAGENET_STD)[None, :, None, None])

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.kind == "pixels":
            return [lowpass(x)]
        if self.kind == "matcher":
            return self.net(x)[:2]
        x, out = (x - self.mean) / self.std, []
        for i, layer in enumerate(self.net):
            x = layer(x)
            if i in VGG19_LAYERS:
                out.append(x)
        return out

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            want = self.features(target)
        got = self.features(output)
        return torch.stack([(a - b).abs().mean() for a, b in zip(got, want)]).mean()
