"""What every settings section is made of: help texts, concerns, hashes and value coercion."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


def yaml_problem(e: Exception) -> str:
    """A YAML parser error in one line: where, and what."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    return where + " ".join(str(what).split())


#: What a setting is about. ``method``: what the result is (the pseudo-pairs, the frames table);
#: ``matcher``: which matcher, with which settings (it changes the result too); ``execution``:
#: only how and where the work runs (batching, actors, limits, overwriting). Settings hashes
#: (:func:`settings_hash`) cover the first two, so a resumed run may change the third.
CONCERNS = ("method", "matcher", "execution")

#: The fusion strategies (:func:`bluref_ray.fusion.fuse` runs each by name).
STRATEGIES = ("weighted", "sequential", "progressive", "reblur")
#: The training losses (:func:`bluref_ray.losses.build_loss` builds each by name).
LOSSES = ("l1", "l2", "psnr", "charbonnier")
#: The matchers (:func:`bluref_ray.matching.build_matcher` builds each by name).
MATCHER_NAMES = ("learned", "dis")
#: where the sub-pixel matching of pseudo-GT runs
REFINERS = ("dis", "torch")
#: The scikit-image sample photos the synthesizer may use (they ship with scikit-image).
PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins",
          "colorwheel", "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "moon",
          "page", "retina", "rocket", "text")


def _help(text: str, concern: str | None = None, **kw: Any) -> dict:
    """A field's metadata: its help text (the CLI's and the configuration reference's) and, in
    sections whose settings are hashed, its concern (one of :data:`CONCERNS`)."""
    if concern is not None and concern not in CONCERNS:
        raise ValueError(f"concern {concern!r}: use one of {CONCERNS}")
    return {"help": text, **({"concern": concern} if concern else {}), **kw}


def method(text: str) -> dict:
    """Metadata of a setting that changes the result."""
    return _help(text, "method")


def matching(text: str) -> dict:
    """Metadata of a setting of the matcher (it changes the result too)."""
    return _help(text, "matcher")


def execution(text: str) -> dict:
    """Metadata of a setting of how and where the work runs (not in the settings hash)."""
    return _help(text, "execution")


def config_hash(*sections: Any) -> str:
    """A short stable hash of dataclass sections (used to tell runs with other settings apart)."""
    blob = json.dumps([dataclasses.asdict(s) for s in sections], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def settings_hash(section: Any) -> str:
    """A short stable hash of a section's ``method`` and ``matcher`` settings: runs that agree on
    them make the same output, whatever their ``execution`` settings.

    Raises:
        TypeError: a field of ``section`` declares no concern.
    """
    kept = {}
    for f in dataclasses.fields(section):
        concern = f.metadata.get("concern")
        if concern is None:
            raise TypeError(f"{type(section).__name__}.{f.name} declares no concern")
        if concern != "execution":
            kept[f.name] = getattr(section, f.name)
    blob = json.dumps([type(section).__name__, kept], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a ``key=value`` string) to the field type ``tp``."""
    tp, optional = _unwrap_optional(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
        if optional:
            return None
        raise ConfigError(f"{key}: may not be empty")
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {value!r} is not a valid {tp.__name__}") from None
    raise ConfigError(f"{key}: unsupported field type {tp}")




def section_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def ordered_fields(cls: type) -> list[dataclasses.Field]:
    """A section's fields, its own before those it inherits (the settings of a training run)."""
    own = cls.__dict__.get("__annotations__", {})
    return sorted(dataclasses.fields(cls), key=lambda f: f.name not in own)
