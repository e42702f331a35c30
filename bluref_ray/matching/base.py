"""The Matcher protocol and what a matcher returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class MatchResult:
    """Dense correspondences from a query to a reference.

    Attributes:
        flow: ``[B, 2, H, W]`` displacement in pixels, (dx, dy): query pixel (x, y) matches
            reference pixel (x + dx, y + dy).
        confidence: ``[B, 1, H, W]`` in [0, 1], the probability that the match is right.
    """

    flow: torch.Tensor
    confidence: torch.Tensor


@runtime_checkable
class Matcher(Protocol):
    """Anything that matches batches of queries to references.

    Shape:
        query, reference: ``[B, 3, H, W]`` float in [0, 1], on one device → :class:`MatchResult`
        on the same device.
    """

    name: str

    def __call__(self, query: torch.Tensor, reference: torch.Tensor) -> MatchResult: ...

    def to(self, device: torch.device | str) -> Matcher: ...
