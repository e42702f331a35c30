"""A sweep's trials: the shared pseudo-GT cache, and the function each Tune trial runs."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass

from bluref_ray import storage
from bluref_ray.config import Config, settings_hash
from bluref_ray.sweep.spec import trial_config

#: Memory a trial reserves for itself (its Ray Train run reserves the workers' resources).
TRIAL_MEMORY = 256 * 2**20


def cache_key(pg, data: tuple[str, ...], ingest) -> str:
    """Readable, unique name of a pseudo-GT in the cache: its settings, then a hash of them
    and of the data and ingest settings they were made from. ``pseudo_gt.limit`` (an execution
    setting, but one that leaves frames out) names a pseudo-GT of its own: a smoke run's is
    never reused as a whole one."""
    made_of = [settings_hash(pg), list(data), settings_hash(ingest)]
    if pg.limit is not None:
        made_of.append({"limit": pg.limit})
    digest = hashlib.sha256(json.dumps(made_of).encode()).hexdigest()[:10]
    delta = f"-D{pg.delta}" if pg.delta is not None else ""
    limit = f"-limit{pg.limit}" if pg.limit is not None else ""
    return f"{pg.matcher}-{pg.strategy}-N{pg.max_refs}{delta}-tau{pg.tau:g}{limit}-{digest}"


class PseudoGTCache:
    """Makes each pseudo-GT of a sweep once, however many trials ask for it (a named actor).

    One pseudo-GT is made at a time: each run sizes its actor pool to the whole cluster, so two
    at once would gain nothing, and on a small cluster their actors would hold every CPU that
    their loading tasks wait for (neither run ever finishes). Requests for the same key wait for
    the one run; a finished pseudo-GT (its ``summary.json`` exists) is reused at once, also by a
    later sweep pointed at the same cache. Each run that starts leaves
    ``CACHE/<key>/runs/<time>-<trial>.json`` (which trial, how many shards were already done),
    so runs can be counted.
    """

    def __init__(self, frames: str, cache: str, data: tuple[str, ...], ingest) -> None:
        self.frames, self.cache, self.data, self.ingest = frames, cache, data, ingest
        self._making = threading.Lock()

    def get(self, cfg: Config, trial: str) -> dict:
        """``{"uri", "key", "made"}``: the pseudo-GT of ``cfg.pseudo_gt``, made if needed."""
        from bluref_ray.pipeline.pseudo_gt import run_pseudo_gt
        from bluref_ray.tables import finished

        key = cache_key(cfg.pseudo_gt, self.data, self.ingest)
        uri = storage.join(self.cache, key)
        sc = cfg.storage.resolved()

        def reusable() -> bool:
            if storage.exists(storage.join(uri, "summary.json"), sc):
                print(f"[sweep] trial {trial}: reusing pseudo-GT {key}", flush=True)
                return True
            return False

        if reusable():  # no need to wait for the run of another pseudo-GT
            return {"uri": uri, "key": key, "made": False}
        with self._making:
            if reusable():
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
    from bluref_ray.training.validation import VAL_METRICS

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


def cache_actor_name(out: str) -> str:
    """The name of a sweep's :class:`PseudoGTCache` actor (one per output folder)."""
    return "bluref-sweep-pgt-" + hashlib.sha1(out.encode()).hexdigest()[:12]
