"""Matchers by name, and the matchers a pseudo-GT configuration asks for."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bluref_ray.matching.base import Matcher
from bluref_ray.matching.classical import DISMatcher
from bluref_ray.matching.learned import LearnedMatcher
from bluref_ray.matching.torch_dis import TorchDIS

if TYPE_CHECKING:
    from bluref_ray.config import PseudoGTConfig
    from bluref_ray.storage import StorageConfig

#: the matchers by name
MATCHERS = {"dis": DISMatcher, "learned": LearnedMatcher}


def build_matcher(name: str, **kwargs: Any) -> Matcher:
    """A matcher by name: ``"learned"`` (the dense matcher network; ``checkpoint=``,
    ``radius_px=``) or ``"dis"`` (OpenCV DIS optical flow, the classical baseline).

    Raises:
        ValueError: for an unknown name.
    """
    if name not in MATCHERS:
        raise ValueError(f"unknown matcher {name!r}; known: {', '.join(MATCHERS)}")
    return MATCHERS[name](**kwargs)


def matcher_from_config(pg: PseudoGTConfig, name: str,
                        storage_cfg: StorageConfig | None = None) -> Matcher:
    """Matcher ``name`` (``learned`` or ``dis``) with the settings of ``pg``: DIS's preset and
    reference blur; the learned matcher's checkpoint, radius and refinement (OpenCV's DIS, or
    DIS in PyTorch for ``refiner='torch'``)."""
    dis = build_matcher("dis", preset=pg.dis_preset, ref_blur=pg.dis_ref_blur)
    if name == "dis":
        return dis
    refine = None
    if pg.dis_refine:
        refine = TorchDIS(ref_blur=pg.dis_ref_blur) if pg.refiner == "torch" else dis
    return build_matcher("learned", checkpoint=pg.matcher_checkpoint,
                         radius_px=pg.matcher_radius, storage_cfg=storage_cfg, refine=refine)
