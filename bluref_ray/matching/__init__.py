"""Dense matching: the Matcher protocol, warping, and the matchers (classical baseline first).

A matcher maps each pixel of a query to a reference::

    result = matcher(query, reference)        # [B,3,H,W] floats in [0, 1] each
    result.flow        # [B,2,H,W]: (dx, dy) in pixels; query (x, y) ↔ reference (x+dx, y+dy)
    result.confidence  # [B,1,H,W] in [0, 1]

:func:`warp` brings the reference into the query's frame with that flow.
"""

from bluref_ray.matching.base import Matcher, MatchResult
from bluref_ray.matching.build import MATCHERS, build_matcher, matcher_from_config
from bluref_ray.matching.warp import Warp, warp

__all__ = ["MATCHERS", "MatchResult", "Matcher", "Warp", "build_matcher", "matcher_from_config",
           "warp"]
