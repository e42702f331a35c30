"""Ray Tune sweeps (``bluref sweep --config SWEEP.yaml``) over N, Δ, τ, the fusion strategy, ...

Each trial makes (or reuses) the pseudo-GT of its settings, trains the deblurrer on it with Ray
Train, and reports the validation scores after every ``train.val_every`` steps; an ASHA scheduler
stops poor trials early. A sweep file::

    out: ./bluref-sweeps/n-tau      # everything goes here (local or s3://)
    data: [./bluref-data/train]     # what to learn from: videos, frame trees, buckets
    val: ./bluref-data/test         # GoPro-style tree: PSNR/SSIM; blurry frames only: NIQE
    config: base.yaml               # optional bluref config file with the base settings
    set: {train.steps: 600, train.val_every: 100}   # base settings by dotted name
    space:                          # what varies: a shorthand (below) or any dotted setting
      N: [4, 6, 8, 10]              # a list is a grid
      tau: {grid: [0.5, 0.7, 0.9]}
      strategy: {choice: [sequential, weighted, progressive]}
      lr: {loguniform: [1.0e-4, 1.0e-2]}
    samples: 1                      # samples of the space (a grid is repeated)
    metric: psnr                    # psnr, ssim or niqe (default: psnr, or niqe without truth)
    asha: {grace_steps: 200, reduction_factor: 2}   # or `asha: false`
    concurrency: null               # trials at once (default: what the cluster fits)
    cache: null                     # pseudo-GT cache (default OUT/pseudo_gt), shareable

Shorthands (:data:`SHORTHANDS`): ``N`` (references fused), ``delta`` (Δ, frames), ``tau`` (τ, the
confidence threshold of fusion and of the loss mask), ``strategy``, ``matcher``, ``lr``,
``steps``. Domains: a list or ``{grid: [...]}``, ``{choice: [...]}``, ``{uniform: [lo, hi]}``,
``{loguniform: [lo, hi]}``, ``{randint: [lo, hi]}`` (both ends included), or a single value.

Stages:

1. **ingest** (Ray Data, once): ``data`` into ``OUT/ingest``, with N and Δ at the largest values
   of the space; a trial with a smaller Δ uses only the references within it
   (``pseudo_gt.delta``).
2. **trials** (Ray Tune, ``concurrency`` at once, each driving a Ray Train run):
   a. pseudo-GT from the cache: one named actor (:class:`PseudoGTCache`) makes each distinct
      pseudo-GT once, in ``CACHE/<key>``, where the key hashes the data, the ingest settings
      and the pseudo-GT settings; trials that share it wait for it and reuse it;
   b. training (:func:`bluref_ray.training.deblur.train_deblurrer`) in ``OUT/trials/<trial>``;
      every report reaches Tune, whose ASHA scheduler stops the trial if it lags.
3. **results** (driver): ``OUT/results.csv`` and ``results.md`` (one row per trial),
   ``best.json``, plots of the metric against N, Δ and τ (``OUT/<metric>_vs_<param>.png``, one
   line per strategy) and ``OUT/report.{md,html}``.

Interrupted, the same command resumes: Tune restores its state from ``OUT/tune``; a finished
trial is not run again, an unfinished one resumes its training from its last checkpoint, and a
half-made pseudo-GT resumes from its finished shards.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from bluref_ray import storage
from bluref_ray.config import Config, ConfigError, config_hash, load_config, section_types

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
SPEC_KEYS = ("out", "data", "val", "config", "set", "space", "samples", "metric", "asha",
             "concurrency", "cache")
#: Memory a trial reserves for itself (its Ray Train run reserves the workers' resources).
TRIAL_MEMORY = 256 * 2**20
#: The parameters the plots put on the x axis.
PLOTTED = ("N", "delta", "tau")


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
    metric: str = "psnr"
    asha: dict[str, Any] | None = field(default_factory=dict)
    concurrency: int | None = None
    cache: str | None = None
    source: str = "<sweep>"

    def to_json(self) -> dict:
        """The sweep as recorded in ``OUT/sweep.json`` (S3 keys left out)."""
        d = dataclasses.asdict(self)
        d.pop("source")
        d["data"] = list(self.data)
        d["set"] = {k: "<hidden>" if k.endswith(("access_key", "secret_key")) else v
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
        raise ConfigError(f"sweep file {path} is not valid YAML: {e}") from None
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
        set=base, samples=int(raw.get("samples", 1)), metric=raw.get("metric") or "psnr",
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
    if kind in ("grid", "choice"):
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{_where(spec, name)}: {kind} needs a non-empty list")
    elif not (isinstance(arg, list) and len(arg) == 2 and arg[0] < arg[1]):
        raise ConfigError(f"{_where(spec, name)}: {kind} needs [low, high] with low < high")
    return kind, arg


def candidate_values(spec: SweepSpec, name: str) -> list:
    """The values a space entry can take (for ranges: both ends)."""
    kind, arg = _domain(spec, name)
    return [arg] if kind == "fixed" else list(arg)


def check_spec(spec: SweepSpec) -> None:
    """Every value of the space must make a valid config (checked here, not in a trial)."""
    if spec.metric not in METRICS:
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
               + [int(v) for v in _values_of(spec, "pseudo_gt.max_refs")])
    delta = max([base.ingest.delta] + [int(v) for v in _values_of(spec, "pseudo_gt.delta")
                                       if v is not None])
    return dataclasses.replace(base, ingest=dataclasses.replace(base.ingest, max_refs=refs,
                                                                delta=delta))


def _values_of(spec: SweepSpec, key: str) -> list:
    return [v for name in spec.space if key in config_keys(name)
            for v in candidate_values(spec, name)]


def cache_key(pg, data: tuple[str, ...], ingest) -> str:
    """Readable, unique name of a pseudo-GT in the cache: its settings, then a hash of them
    and of the data and ingest settings they were made from."""
    from bluref_ray.pipeline.pseudo_gt import settings_hash

    digest = hashlib.sha256(json.dumps(
        [settings_hash(pg), list(data), config_hash(ingest)]).encode()).hexdigest()[:10]
    delta = f"-D{pg.delta}" if pg.delta is not None else ""
    return f"{pg.matcher}-{pg.strategy}-N{pg.max_refs}{delta}-tau{pg.tau:g}-{digest}"


class PseudoGTCache:
    """Makes each pseudo-GT of a sweep once, however many trials ask for it (a named actor).

    Requests for the same key wait for the one run; a finished pseudo-GT (its ``summary.json``
    exists) is reused at once, also by a later sweep pointed at the same cache. Each run that
    starts leaves ``CACHE/<key>/runs/<time>-<trial>.json`` (which trial, how many shards were
    already done), so runs can be counted.
    """

    def __init__(self, frames: str, cache: str, data: tuple[str, ...], ingest) -> None:
        self.frames, self.cache, self.data, self.ingest = frames, cache, data, ingest
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()

    def get(self, cfg: Config, trial: str) -> dict:
        """``{"uri", "key", "made"}``: the pseudo-GT of ``cfg.pseudo_gt``, made if needed."""
        from bluref_ray.pipeline.common import finished
        from bluref_ray.pipeline.pseudo_gt import run_pseudo_gt

        key = cache_key(cfg.pseudo_gt, self.data, self.ingest)
        uri = storage.join(self.cache, key)
        sc = cfg.storage.resolved()
        with self._guard:
            lock = self._locks[key]
        with lock:
            if storage.exists(storage.join(uri, "summary.json"), sc):
                print(f"[sweep] trial {trial}: reusing pseudo-GT {key}", flush=True)
                return {"uri": uri, "key": key, "made": False}
            before = len(finished(storage.join(uri, "shards"), sc))
            storage.write_text(
                storage.join(uri, "runs", f"{time.strftime('%Y%m%d-%H%M%S')}-{trial}.json"),
                json.dumps({"trial": trial, "shards_before": before, "time": time.time()}), sc)
            print(f"[sweep] trial {trial}: making pseudo-GT {key}", flush=True)
            run_pseudo_gt(self.frames, uri, cfg, log=lambda m: print(m, flush=True))
            return {"uri": uri, "key": key, "made": True}


@dataclass(frozen=True)
class TrialSetup:
    """What every trial needs besides its parameters."""

    base: Config
    out: str
    val: str
    cache_actor: str
    metric: str


def run_trial(params: dict, setup: TrialSetup) -> None:
    """One Tune trial: pseudo-GT from the cache, then Ray Train; reports reach Tune."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from bluref_ray.training.deblur import train_deblurrer

    trial = tune.get_context().get_trial_id()
    cfg = trial_config(setup.base, params, setup.val)
    out = storage.join(setup.out, "trials", trial)
    pg = ray.get(ray.get_actor(setup.cache_actor).get.remote(cfg, trial))
    done = finished_trial(out, pg["uri"], cfg)
    if done:  # trained to the end before an interruption: report it, do not redo it
        tune.report(final_metrics(done))
        return
    train_deblurrer(pg["uri"], out, cfg, log=lambda m: print(m, flush=True),
                    command=f"bluref sweep (trial {trial})", callbacks=[TuneReportCallback()])


def finished_trial(out: str, pairs: str, cfg: Config) -> dict | None:
    """The training summary of a trial that reached its last step, else None.

    A trial stopped right after its last report (by the scheduler, or by an interruption) has
    its final checkpoint but no ``model.pt`` yet: it is exported here.
    """
    from bluref_ray.training.common import latest_checkpoint
    from bluref_ray.training.deblur import checkpoint_step, finish_training

    sc = cfg.storage.resolved()
    summary = storage.join(out, "train.json")
    if storage.exists(summary, sc):
        return json.loads(storage.read_text(summary, sc))
    last = latest_checkpoint(out, sc)
    if last and checkpoint_step(last) >= cfg.train.steps:
        return finish_training(out, pairs, cfg, 0.0, "bluref sweep", log=lambda _m: None)
    return None


def final_metrics(train_summary: dict) -> dict:
    """The last report of a finished training, from its ``train.json``."""
    from bluref_ray.training.deblur import VAL_METRICS

    v = train_summary.get("val") or {}
    return {"step": train_summary["steps"],
            **{f"val_{k}": v[k] for k in VAL_METRICS if k in v}}


def default_concurrency(tc, resources: dict) -> int:
    """Trials that fit at once: each takes its workers' CPUs (and GPUs) plus one CPU for its
    data loading."""
    from bluref_ray.training.deblur import DATA_CPUS_FREE

    n = int(resources.get("CPU", 0) // (tc.workers * tc.cpus_per_worker + DATA_CPUS_FREE))
    gpus = resources.get("GPU", 0)
    if gpus and tc.use_gpu is not False:
        n = min(n, int(gpus // tc.workers))
    return max(1, n)


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


def _cache_actor_name(spec: SweepSpec) -> str:
    return "bluref-sweep-pgt-" + hashlib.sha1(spec.out.encode()).hexdigest()[:12]


def run_sweep(spec: SweepSpec, log: Callable[[str], None] = print, overwrite: bool = False,
              verbose: int = 1) -> dict:
    """Run (or resume) a sweep; returns ``{"rows", "best", "table", "report", ...}``.

    ``verbose`` is Tune's: 0 silent, 1 a status table now and then, 2 every result.
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import AsyncHyperBandScheduler

    from bluref_ray.pipeline.common import prepare_out
    from bluref_ray.pipeline.ingest import run_ingest
    from bluref_ray.ray_utils import init_ray

    t0 = time.time()
    base = base_config(spec)
    sc = base.storage.resolved()
    storage.check_reachable(spec.out, sc)
    for uri in (*spec.data, spec.val):
        storage.check_reachable(uri, sc)
    prepare_out(spec.out, "sweep.json", {"config_hash": _spec_hash(spec), "spec": spec.to_json(),
                                         "inputs": list(spec.data)},
                overwrite, ("tune", "trials", "ingest", "results.csv", "results.md",
                            "best.json"), sc, log, "sweep")
    init_ray(base.ray)
    icfg = ingest_config(spec, base)
    frames = storage.join(spec.out, "ingest")
    log(f"[sweep] 1/3 ingesting {', '.join(spec.data)} (N ≤ {icfg.ingest.max_refs}, "
        f"Δ ≤ {icfg.ingest.delta}) → {frames}")
    run_ingest(list(spec.data), frames, icfg, log=log)
    cache = spec.cache or storage.join(spec.out, "pseudo_gt")
    actor_name = _cache_actor_name(spec)
    cache_actor = ray.remote(num_cpus=0, max_concurrency=64)(PseudoGTCache).options(
        name=actor_name, get_if_exists=True).remote(frames, cache, spec.data, icfg.ingest)
    steps = [int(v) for v in _values_of(spec, "train.steps")] or [base.train.steps]
    key, mode, _ = METRICS[spec.metric]
    grace = int((spec.asha or {}).get("grace_steps", base.train.val_every))
    # No rung at the last step: a trial that got there has spent its budget.
    scheduler = None if spec.asha is None else AsyncHyperBandScheduler(
        time_attr="step", max_t=max(max(steps) - 1, grace), grace_period=grace,
        reduction_factor=float(spec.asha.get("reduction_factor", 2)),
        stop_last_trials=False)  # a trial at its last step finishes: exports its model
    concurrency = spec.concurrency or default_concurrency(base.train, ray.cluster_resources())
    setup = TrialSetup(base=base, out=spec.out, val=spec.val, cache_actor=actor_name,
                       metric=spec.metric)
    # A trial only drives a Ray Train run, which asks for its own workers: it reserves no CPU
    # (Tune needs some resource in the bundle; a little memory is honest for a driver).
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup),
                                    {"CPU": 0, "memory": TRIAL_MEMORY})
    fs, out_path = storage.resolve(spec.out, sc)
    space = param_space(spec)
    log(f"[sweep] 2/3 trials over {', '.join(spec.space)}: {spec.samples} sample(s), "
        f"{concurrency} at a time, metric {key} ({mode}), "
        + (f"ASHA from step {grace}" if scheduler else "no early stopping")
        + f"; pseudo-GT cache {cache}")
    if tune.Tuner.can_restore(f"{out_path}/tune", storage_filesystem=fs):
        log(f"[sweep] resuming the sweep in {spec.out}")
        tuner = tune.Tuner.restore(f"{out_path}/tune", trainable, resume_unfinished=True,
                                   resume_errored=True, param_space=space,
                                   storage_filesystem=fs)
    else:
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(metric=key, mode=mode, scheduler=scheduler,
                                        num_samples=spec.samples,
                                        max_concurrent_trials=concurrency),
            run_config=tune.RunConfig(name="tune", storage_path=out_path,
                                      storage_filesystem=fs, verbose=verbose))
    grid = tuner.fit()
    ray.kill(cache_actor)
    log("[sweep] 3/3 results")
    rows = result_rows(grid, spec, base, cache, icfg.ingest, sc)
    summary = write_results(spec, rows, sc)
    summary["seconds"] = time.time() - t0
    return summary


def _spec_hash(spec: SweepSpec) -> str:
    return hashlib.sha256(json.dumps(spec.to_json(), sort_keys=True, default=str).encode()
                          ).hexdigest()[:12]


def result_rows(grid, spec: SweepSpec, base: Config, cache: str, ingest, sc) -> list[dict]:
    """One dict per trial: its values, status, last scores and its pseudo-GT's quality."""
    key = METRICS[spec.metric][0]
    rows = []
    for r in grid:
        params = {k: r.config[k] for k in spec.space if k in r.config}
        cfg = trial_config(base, params, spec.val)
        m = r.metrics or {}
        step = m.get("step")
        trial = m.get("trial_id") or storage.basename(r.path)
        pg_key = cache_key(cfg.pseudo_gt, spec.data, ingest)
        pg = _read_json(storage.join(cache, pg_key, "summary.json"), sc)
        q = pg.get("quality", {})
        if r.error:
            status = "error"
        elif step is None:
            status = "no result"
        elif step < cfg.train.steps:
            status = f"stopped at step {step} (ASHA)"
        else:
            status = "done"
        if status == "done":  # stopped right after its last report: export its model
            finished_trial(storage.join(spec.out, "trials", trial), storage.join(cache, pg_key),
                           cfg)
        rows.append({
            "trial": trial, **params,
            "status": status, "step": step, "steps": cfg.train.steps,
            **{f"val_{k}": m.get(f"val_{k}") for k in METRICS},
            "metric": m.get(key), "coverage": pg.get("mean_coverage"),
            "pseudo_psnr": q.get("psnr_pseudo_confident"),
            "blurry_psnr": q.get("psnr_blurry_confident"), "pseudo_gt": pg_key,
            "seconds": m.get("time_total_s"),
            "model": storage.join(spec.out, "trials", trial, "model.pt"),
            "error": str(r.error).splitlines()[0][:200] if r.error else None})
    rows.sort(key=lambda row: row["trial"])
    return rows


def _read_json(uri: str, sc) -> dict:
    try:
        return json.loads(storage.read_text(uri, sc))
    except (storage.StorageNotFoundError, FileNotFoundError):
        return {}


def columns(spec: SweepSpec) -> list[tuple[str, str, str]]:
    """Table columns: the trial, the swept settings, status, scores, pseudo-GT quality."""
    cols = [("trial", "trial", "{}")]
    for name in spec.space:
        fmt = "{:.2e}" if name in ("lr", "train.lr") else "{}"
        cols.append((name, "Δ" if name == "delta" else "τ" if name == "tau" else name, fmt))
    cols.append(("status", "status", "{}"))
    if spec.metric == "niqe":
        cols.append(("val_niqe", "val NIQE", "{:.2f}"))
    else:
        cols += [("val_psnr", "val PSNR (dB)", "{:.2f}"), ("val_ssim", "val SSIM", "{:.4f}")]
    cols += [("coverage", "pseudo-GT coverage", "{:.3f}"),
             ("pseudo_psnr", "pseudo-GT PSNR (confident px)", "{:.2f}")]
    return cols


def best_row(rows: list[dict], metric: str) -> dict | None:
    """The best trial that ran to the end (ASHA-stopped ones have fewer steps)."""
    sign = 1 if METRICS[metric][1] == "max" else -1
    done = [r for r in rows if r["status"] == "done" and _finite(r["metric"])]
    return max(done, key=lambda r: sign * r["metric"]) if done else None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def write_results(spec: SweepSpec, rows: list[dict], sc) -> dict:
    """``results.csv``, ``results.md``, ``best.json``, the plots and ``report.{md,html}``."""
    from bluref_ray.report import markdown_table, write_report

    out = spec.out
    buf = io.StringIO()
    keys = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text(storage.join(out, "results.csv"), buf.getvalue(), sc)
    cols = columns(spec)
    table = markdown_table(rows, cols)
    storage.write_text(storage.join(out, "results.md"), table, sc)
    best = best_row(rows, spec.metric)
    if best:
        best = {**best, "settings": {k: best[k] for k in spec.space}}
    storage.write_text(storage.join(out, "best.json"), json.dumps(best, indent=1), sc)
    plots = []
    for param in PLOTTED:
        if param in spec.space and len({r.get(param) for r in rows}) > 1:
            name = f"{spec.metric}_vs_{param}.png"
            sweep_plot(rows, param, spec.metric, storage.join(out, name), sc)
            plots.append((name, f"{METRICS[spec.metric][2]} against "
                                f"{ {'N': 'N', 'delta': 'Δ', 'tau': 'τ'}[param]}"))
    stopped = sum(r["status"].startswith("stopped") for r in rows)
    text = (f"{len(rows)} trials, {stopped} stopped early by ASHA. Scores are the last "
            f"validation of each trial on {spec.val}; pseudo-GT quality is measured on the "
            "training data, over the pixels whose confidence reaches τ.")
    if best:
        text += f"\n\nBest: trial {best['trial']} with {best['settings']}."
    report = write_report(out, "bluref sweep", [
        {"heading": "Trials", "rows": rows, "columns": cols, "text": text},
        {"heading": "Plots", "images": plots}], sc)
    return {"rows": rows, "best": best, "table": table, "plots": [n for n, _ in plots],
            "report": report[1], "out": out}


def sweep_plot(rows: list[dict], param: str, metric: str, uri: str, sc=None) -> str:
    """The metric against ``param``, one line per strategy (and per value of the other
    plotted settings that vary). A point is the best trial that ran to the end; if every trial
    of a point was stopped early, its best stopped one, drawn with an ×."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sign = 1 if METRICS[metric][1] == "max" else -1
    others = [p for p in PLOTTED if p != param and len({r.get(p) for r in rows}) > 1]
    lines: dict[str, dict[Any, dict]] = defaultdict(dict)
    for r in rows:
        if not _finite(r["metric"]) or r.get(param) is None:
            continue
        parts = [str(r["strategy"])] if r.get("strategy") else []
        label = ", ".join(parts + [f"{_symbol(p)}={r.get(p)}" for p in others]) or "all trials"
        best = lines[label].get(r[param])
        if best is None or _rank(r, sign) > _rank(best, sign):
            lines[label][r[param]] = r
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, points in sorted(lines.items()):
        xs = sorted(points)
        ys = [points[x]["metric"] for x in xs]
        (line,) = ax.plot(xs, ys, marker="o", label=label)
        stopped = [(x, points[x]["metric"]) for x in xs if points[x]["status"] != "done"]
        if stopped:
            ax.scatter(*zip(*stopped), marker="x", s=80, color=line.get_color())
    if all(isinstance(r.get(param), int) for r in rows):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=_symbol(param), ylabel=METRICS[metric][2])
    ax.set_title(f"{METRICS[metric][2]} against {_symbol(param)}"
                 + (" (× stopped early)" if any(r["status"] != "done" for r in rows) else ""))
    ax.grid(True, alpha=0.3)
    if lines:
        ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    storage.write_bytes(uri, buf.getvalue(), sc)
    return uri


def _rank(row: dict, sign: int) -> tuple:
    return row["status"] == "done", sign * row["metric"]


def _symbol(param: str) -> str:
    return {"delta": "Δ", "tau": "τ"}.get(param, param)
