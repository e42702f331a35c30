"""Configuration: frozen dataclasses, loaded from YAML, overridable by dotted keys.

Every section is a frozen dataclass whose fields carry their help text in
``field(metadata={"help": ...})``. The CLI builds its ``--options`` from those fields, so a
setting has one name, one default and one explanation everywhere::

    storage:                # StorageConfig
      endpoint_url: http://127.0.0.1:8333
    ingest:
      max_refs: 6
      delta: 10

``load_config("run.yaml", ["ingest.delta=20"])`` reads the file (local or ``s3://``), applies the
overrides, checks every key and value, and returns a :class:`Config`. Unknown keys and values of
the wrong type are :class:`ConfigError` s that name the key and the file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from bluref_ray import storage
from bluref_ray.config.core import (
    CONCERNS,
    LOSSES,
    MATCHER_NAMES,
    PHOTOS,
    STRATEGIES,
    ConfigError,
    coerce,
    config_hash,
    section_types,
    settings_hash,
    yaml_problem,
)
from bluref_ray.config.data import LOOKS, IngestConfig, RayConfig, SynthConfig
from bluref_ray.config.method import (
    Blur2BlurConfig,
    DeblurConfig,
    KernelConfig,
    MatcherTrainConfig,
    PseudoGTConfig,
    RefineConfig,
    RefNetConfig,
    TrainConfig,
)
from bluref_ray.storage import StorageConfig

__all__ = ["CONCERNS", "LOOKS", "LOSSES", "MATCHER_NAMES", "PHOTOS", "STRATEGIES",
           "Blur2BlurConfig", "Config", "KernelConfig",
           "ConfigError", "DeblurConfig", "IngestConfig", "MatcherTrainConfig", "PseudoGTConfig",
           "RayConfig", "RefNetConfig", "RefineConfig",
           "StorageConfig", "SynthConfig", "TrainConfig", "coerce",
           "config_hash", "load_config", "section_types", "settings_hash"]


@dataclass(frozen=True)
class Config:
    """All sections. ``Config()`` holds the defaults."""

    storage: StorageConfig = field(default_factory=StorageConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    pseudo_gt: PseudoGTConfig = field(default_factory=PseudoGTConfig)
    train_matcher: MatcherTrainConfig = field(default_factory=MatcherTrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    deblur: DeblurConfig = field(default_factory=DeblurConfig)
    kernel: KernelConfig = field(default_factory=KernelConfig)
    blur2blur: Blur2BlurConfig = field(default_factory=Blur2BlurConfig)
    refnet: RefNetConfig = field(default_factory=RefNetConfig)

    def validate(self) -> Config:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls: type, data: dict | None, where: str) -> Any:
    if data is None:  # a section whose keys are all commented out
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = section_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        what = f"{where}: unknown key(s)" if where else "unknown section(s)"
        raise ConfigError(f"{what} {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{where}.{name}" if where else name)
        else:
            kwargs[name] = coerce(value, tp, f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _known_key(dotted: str) -> None:
    """An override names a known section and key (or the error names the override)."""
    types = section_types(Config)
    section, _, rest = dotted.partition(".")
    if section not in types:
        raise ConfigError(f"--set {dotted}: unknown section {section!r}; known: "
                          f"{', '.join(sorted(types))}")
    key = rest.split(".")[0]
    names = sorted(f.name for f in dataclasses.fields(types[section]))
    if key not in names:
        raise ConfigError(f"--set {dotted}: {section} has no key {key!r}; known: "
                          f"{', '.join(names)}")


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
    node[parts[-1]] = value


def load_config(path: str | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Read a YAML config (local or object storage), apply overrides, validate.

    Args:
        path: YAML file, or None for the defaults.
        overrides: ``["section.key=value", ...]`` or ``{"section.key": value}``; these win over
            the file.

    Raises:
        ConfigError: naming the file and key that is wrong.
    """
    data: dict = {}
    if path:
        try:
            text = storage.read_text(path)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML ({yaml_problem(e)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping of sections")
    items = overrides.items() if isinstance(overrides, dict) else [
        _split_override(o) for o in (overrides or [])]
    for key, value in items:  # strings are converted by coerce(), by the field's type
        _known_key(key)
        _set_dotted(data, key, value)
    try:
        cfg = _build(Config, data, "")
        return cfg.validate()
    except ConfigError as e:  # name where the wrong value came from: --set, or the file
        given = next((k for k, _ in items if str(e).startswith(k)), None)
        if given is not None:
            raise ConfigError(f"--set {e}") from None
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def _split_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()
