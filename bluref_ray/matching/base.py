"""The Matcher protocol and the registry of matchers by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class MatchResult:
    """Dense correspondences from a target to a reference.

    Attributes:
        flow: ``[B, 2, H, W]`` displacement in pixels, (dx, dy): target pixel (x, y) matches
            reference pixel (x + dx, y + dy).
        confidence: ``[B, 1, H, W]`` in [0, 1], the probability that the match is right.
    """

    flow: torch.Tensor
    confidence: torch.Tensor


@runtime_checkable
class Matcher(Protocol):
    """Anything that matches batches of targets to references.

    Shape:
        target, reference: ``[B, 3, H, W]`` float in [0, 1], on one device → :class:`MatchResult`
        on the same device.
    """

    name: str

    def __call__(self, target: torch.Tensor, reference: torch.Tensor) -> MatchResult: ...

    def to(self, device: torch.device | str) -> Matcher: ...


def build_matcher(name: str, **kwargs: Any) -> Matcher:
    """A matcher by name: ``"learned"`` (the dense matcher network; ``checkpoint=``,
    ``radius_px=``) or ``"dis"`` (OpenCV DIS optical flow, the classical baseline).

    Raises:
        ValueError: for an unknown name.
    """
    if name == "dis":
        from bluref_ray.matching.classical import DISMatcher

        return DISMatcher(**kwargs)
    if name == "learned":
        from bluref_ray.matching.learned import LearnedMatcher

        return LearnedMatcher(**kwargs)
    raise ValueError(f"unknown matcher {name!r}; known: learned, dis")
