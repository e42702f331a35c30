"""Sweep files: parse and check them, and turn a trial's values into its config.

See :mod:`bluref_ray.sweep` for the format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from bluref_ray import storage
from bluref_ray.config import Config, ConfigError, load_config, section_types
from bluref_ray.config.core import yaml_problem

#: Sweep names for the settings the BluRef ablations vary; each maps to the config keys it sets.
SHORTHANDS: dict[str, tuple[str, ...]] = {
    "N": ("pseudo_gt.max_refs",),
    "delta": ("pseudo_gt.delta",),
    "tau": ("pseudo_gt.tau", "train.tau"),
    "strategy": ("pseudo_gt.strategy",),
    "matcher": ("pseudo_gt.matcher",),
    "lr": ("train.lr",),
    "steps": ("train.steps",),
}
#: metric → (key reported by training, Tune mode, label)
METRICS = {"psnr": ("val_psnr", "max", "PSNR (dB)"), "ssim": ("val_ssim", "max", "SSIM"),
           "niqe": ("val_niqe", "min", "NIQE (lower is better)")}
DOMAINS = ("grid", "choice", "uniform", "loguniform", "randint")
#: The config sections a trial varies (the others are set once, for the whole sweep).
TRIAL_SECTIONS = ("pseudo_gt", "train")
SPEC_KEYS = ("out", "data", "val", "config", "set", "space", "samples", "metric", "asha",
             "concurrency", "cache")


@dataclass(frozen=True)
class SweepSpec:
    """A sweep file, checked (see the module docstring for the keys)."""

    out: str
    data: tuple[str, ...]
    val: str
    space: dict[str, Any]
    config: str | None = None
    set: dict[str, Any] = field(default_factory=dict)
    samples: int = 1
    metric: str | None = None  # None: psnr if val has ground truth, else niqe
    asha: dict[str, Any] | None = field(default_factory=dict)
    concurrency: int | None = None
    cache: str | None = None
    source: str = "<sweep>"

    def to_json(self) -> dict:
        """The sweep as recorded in ``OUT/sweep.json`` (S3 keys left out)."""
        d = dataclasses.asdict(self)
        d.pop("source")
        d["data"] = list(self.data)
        d["set"] = {k: "<hidden>" if k.endswith(storage.SECRETS) else v
                    for k, v in self.set.items()}
        return d


def load_sweep(path: str, overrides: dict[str, Any] | None = None,
               settings: list[str] | None = None) -> SweepSpec:
    """Read and check a sweep file (local or ``s3://``).

    Args:
        overrides: top-level keys that win over the file's (``out``, ``data``, ``val``, ...).
        settings: ``section.key=value`` base settings that win over the file's ``set``.

    Raises:
        ConfigError: naming the file and the key that is wrong.
    """
    try:
        raw = yaml.safe_load(storage.read_text(path))
    except FileNotFoundError:
        raise ConfigError(f"sweep file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"sweep file {path} is not valid YAML ({yaml_problem(e)})") from None
    return parse_sweep(raw, path, overrides, settings)


def parse_sweep(raw: Any, source: str = "<sweep>", overrides: dict[str, Any] | None = None,
                settings: list[str] | None = None) -> SweepSpec:
    """Check a sweep given as a mapping (see :func:`load_sweep`)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a sweep file is a mapping of {', '.join(SPEC_KEYS)}")
    raw = {**raw, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: "
                          f"{', '.join(SPEC_KEYS)}")
    for key in ("out", "data", "val", "space"):
        if not raw.get(key):
            raise ConfigError(f"{source}: '{key}' is missing")
    data = raw["data"]
    data = (data,) if isinstance(data, str) else tuple(data)
    base = dict(raw.get("set") or {})
    if not isinstance(base, dict):
        raise ConfigError(f"{source}: 'set' must map dotted settings to values")
    for s in settings or []:
        if "=" not in s:
            raise ConfigError(f"--set {s!r}: expected section.key=value")
        k, v = s.split("=", 1)
        base[k.strip()] = v.strip()
    space = raw["space"]
    if not isinstance(space, dict):
        raise ConfigError(f"{source}: 'space' must map settings to values or domains")
    asha = raw.get("asha", {})
    if asha is True or asha is None:
        asha = {}
    elif asha is not False and not isinstance(asha, dict):
        raise ConfigError(f"{source}: 'asha' must be a mapping (grace_steps, reduction_factor) "
                          "or false")
    spec = SweepSpec(
        out=storage.normalize(raw["out"]), data=tuple(storage.normalize(d) for d in data),
        val=storage.normalize(raw["val"]), space=dict(space), config=raw.get("config"),
        set=base, samples=int(raw.get("samples", 1)), metric=raw.get("metric"),
        asha=None if asha is False else dict(asha), concurrency=raw.get("concurrency"),
        cache=storage.normalize(raw["cache"]) if raw.get("cache") else None, source=source)
    check_spec(spec)
    return spec


def _where(spec: SweepSpec, name: str) -> str:
    return f"{spec.source}: space.{name}"


def config_keys(name: str) -> tuple[str, ...]:
    """The config keys a space entry sets: a shorthand's, or the dotted key itself."""
    return SHORTHANDS.get(name, (name,))


def _domain(spec: SweepSpec, name: str) -> tuple[str, Any]:
    """(kind, argument) of one space entry; a list is a grid, a scalar is fixed."""
    value = spec.space[name]
    if isinstance(value, list):
        value = {"grid": value}
    if not isinstance(value, dict):
        return "fixed", value
    if len(value) != 1 or next(iter(value)) not in DOMAINS:
        raise ConfigError(f"{_where(spec, name)}: use one of {', '.join(DOMAINS)} "
                          f"(e.g. {{grid: [4, 6]}}), a list, or a single value; got {value}")
    kind, arg = next(iter(value.items()))
    if kind in ("uniform", "loguniform", "randint") and isinstance(arg, list):
        arg = [_number(spec, name, v) for v in arg]  # YAML reads 1e-4 (no dot) as a string
        if kind == "randint":
            arg = [int(v) for v in arg]
    if kind in ("grid", "choice"):
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{_where(spec, name)}: {kind} needs a non-empty list")
    elif not (isinstance(arg, list) and len(arg) == 2 and arg[0] < arg[1]):
        raise ConfigError(f"{_where(spec, name)}: {kind} needs [low, high] with low < high")
    return kind, arg


def _number(spec: SweepSpec, name: str, v: Any) -> Any:
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            raise ConfigError(f"{_where(spec, name)}: {v!r} is not a number") from None
    return v


def candidate_values(spec: SweepSpec, name: str) -> list:
    """The values a space entry can take (for ranges: both ends)."""
    kind, arg = _domain(spec, name)
    return [arg] if kind == "fixed" else list(arg)


def check_spec(spec: SweepSpec) -> None:
    """Every value of the space must make a valid config (checked here, not in a trial)."""
    if spec.metric is not None and spec.metric not in METRICS:
        raise ConfigError(f"{spec.source}: metric={spec.metric!r}; use one of "
                          f"{', '.join(METRICS)}")
    if spec.samples < 1:
        raise ConfigError(f"{spec.source}: samples must be >= 1")
    if spec.concurrency is not None and int(spec.concurrency) < 1:
        raise ConfigError(f"{spec.source}: concurrency must be >= 1 (or null: from the cluster)")
    unknown_asha = set(spec.asha or {}) - {"grace_steps", "reduction_factor"}
    if unknown_asha:
        raise ConfigError(f"{spec.source}: asha: unknown key(s) {sorted(unknown_asha)}; known: "
                          "grace_steps, reduction_factor")
    base = base_config(spec)
    for name in spec.space:
        kind, _ = _domain(spec, name)
        for key in config_keys(name):
            section, _, attr = key.partition(".")
            cls = type(getattr(base, section, None)) if attr else None
            if not (cls and dataclasses.is_dataclass(cls) and attr in section_types(cls)):
                raise ConfigError(f"{_where(spec, name)}: not a setting; use a shorthand "
                                  f"({', '.join(SHORTHANDS)}) or a dotted setting such as "
                                  "train.weight_decay")
            if section not in TRIAL_SECTIONS:  # ingest etc. run once, for the whole sweep
                raise ConfigError(f"{_where(spec, name)}: {key} is set once for the whole sweep "
                                  f"(in `set:`), not per trial; a trial varies only "
                                  f"{' and '.join(s + '.*' for s in TRIAL_SECTIONS)}")
            if kind in ("uniform", "loguniform") and section_types(cls)[attr] is not float:
                raise ConfigError(f"{_where(spec, name)}: {key} is not a float setting; use "
                                  "grid, choice or randint")
        for value in candidate_values(spec, name):
            try:
                trial_config(base, {name: value})
            except ConfigError as e:
                raise ConfigError(f"{_where(spec, name)} = {value!r}: {e}") from None


def base_config(spec: SweepSpec) -> Config:
    """The sweep's base settings: defaults < ``config`` file < ``set``."""
    try:
        return load_config(spec.config, spec.set)
    except ConfigError as e:
        raise ConfigError(f"{spec.source}: {e}") from None


def _flat(cfg: Config) -> dict[str, Any]:
    return {f"{sec}.{k}": v for sec, d in cfg.to_dict().items() for k, v in d.items()}


def trial_config(base: Config, params: dict[str, Any], val: str | None = None) -> Config:
    """The config of one trial: the base with the trial's values.

    Every report of a trial must carry the metric (Tune checks), so checkpoints come exactly
    at validations (``train.checkpoint_every = train.val_every``).
    """
    values = dict(_flat(base))
    for name, value in params.items():
        for key in config_keys(name):
            values[key] = value
    cfg = load_config(None, values)
    return dataclasses.replace(
        cfg, ray=dataclasses.replace(cfg.ray, progress_bars=False),
        train=dataclasses.replace(cfg.train, checkpoint_every=cfg.train.val_every,
                                  val=val if val is not None else cfg.train.val))


def ingest_config(spec: SweepSpec, base: Config) -> Config:
    """Ingest once for the whole space: N and Δ at their largest."""
    refs = max([base.ingest.max_refs, base.pseudo_gt.max_refs]
               + [int(v) for v in values_of(spec, "pseudo_gt.max_refs")])
    deltas = [base.pseudo_gt.delta, *values_of(spec, "pseudo_gt.delta")]
    delta = max([base.ingest.delta] + [int(v) for v in deltas if v is not None])
    return dataclasses.replace(base, ingest=dataclasses.replace(base.ingest, max_refs=refs,
                                                                delta=delta))


def values_of(spec: SweepSpec, key: str) -> list:
    return [v for name in spec.space if key in config_keys(name)
            for v in candidate_values(spec, name)]


def param_space(spec: SweepSpec) -> dict:
    """The Tune search space of the sweep."""
    from ray import tune

    make = {"grid": tune.grid_search, "choice": tune.choice,
            "uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
            "randint": lambda a: tune.randint(a[0], a[1] + 1)}
    space = {}
    for name in spec.space:
        kind, arg = _domain(spec, name)
        space[name] = arg if kind == "fixed" else make[kind](arg)
    return space


def spec_hash(spec: SweepSpec) -> str:
    """What a resumed sweep must keep: everything but how many trials run at once and how Ray
    runs and prints (``ray.*``: --quiet, the address)."""
    kept = {k: v for k, v in spec.to_json().items() if k != "concurrency"}
    kept["set"] = {k: v for k, v in kept["set"].items() if not k.startswith("ray.")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()
                          ).hexdigest()[:12]


def resolve_metric(spec: SweepSpec, storage_cfg) -> SweepSpec:
    """The spec with its metric set from the validation frames: PSNR/SSIM need ground truth,
    NIQE needs frames without it (validation scores one kind or the other).

    Raises:
        ConfigError: the metric does not fit the validation frames.
    """
    from bluref_ray.training.validation import validation_frames

    try:
        has_truth = validation_frames(spec.val, 1, storage_cfg)[0][1] is not None
    except ConfigError as e:
        raise ConfigError(f"{spec.source}: val: {e}") from None
    metric = spec.metric or ("psnr" if has_truth else "niqe")
    if has_truth != (metric != "niqe"):
        need = ("blurry frames without ground truth" if metric == "niqe"
                else "frames with ground truth (<seq>/blur/ and <seq>/sharp/)")
        raise ConfigError(f"{spec.source}: metric {metric} needs {need} as val; {spec.val} "
                          f"{'has' if has_truth else 'has no'} ground truth. Use metric: "
                          f"{'psnr or ssim' if has_truth else 'niqe'}, or leave metric out")
    return dataclasses.replace(spec, metric=metric)
