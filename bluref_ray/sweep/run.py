"""``run_sweep``: ingest once, then the Tune trials, then the results."""

from __future__ import annotations

import time
from collections.abc import Callable

from bluref_ray import storage
from bluref_ray.sweep.results import result_rows, write_results
from bluref_ray.sweep.spec import (
    METRICS,
    SweepSpec,
    base_config,
    ingest_config,
    param_space,
    resolve_metric,
    spec_hash,
    values_of,
)
from bluref_ray.sweep.trials import (
    TRIAL_MEMORY,
    PseudoGTCache,
    TrialSetup,
    cache_actor_name,
    default_concurrency,
    run_trial,
)


def run_sweep(spec: SweepSpec, log: Callable[[str], None] = print, overwrite: bool = False,
              verbose: int = 1) -> dict:
    """Run (or resume) a sweep; returns ``{"rows", "best", "table", "report", ...}``.

    ``verbose`` is Tune's: 0 silent, 1 a status table now and then, 2 every result.
    """
    import ray
    from ray import tune

    from bluref_ray.pipeline.common import prepare_out
    from bluref_ray.pipeline.ingest import run_ingest
    from bluref_ray.ray_utils import init_ray
    from bluref_ray.sweep.asha import ResumableASHA

    t0 = time.time()
    base = base_config(spec)
    sc = base.storage.resolved()
    storage.check_reachable(spec.out, sc)
    for uri in (*spec.data, spec.val):
        storage.check_reachable(uri, sc)
    spec = resolve_metric(spec, sc)
    prepare_out(spec.out, "sweep.json", {"config_hash": spec_hash(spec), "spec": spec.to_json(),
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
    actor_name = cache_actor_name(spec.out)
    cache_actor = ray.remote(num_cpus=0, max_concurrency=64)(PseudoGTCache).options(
        name=actor_name, get_if_exists=True).remote(frames, cache, spec.data, icfg.ingest)
    steps = [int(v) for v in values_of(spec, "train.steps")] or [base.train.steps]
    key, mode, _ = METRICS[spec.metric]
    grace = int((spec.asha or {}).get("grace_steps", base.train.val_every))
    # No rung at the last step: a trial that got there has spent its budget.
    scheduler = None if spec.asha is None else ResumableASHA(
        time_attr="step", max_t=max(max(steps) - 1, grace), grace_period=grace,
        reduction_factor=float(spec.asha.get("reduction_factor", 2)),
        stop_last_trials=False)  # a trial at its last step finishes: exports its model
    concurrency = spec.concurrency or default_concurrency(base.train, ray.cluster_resources())
    setup = TrialSetup(base=base, out=spec.out, val=spec.val, cache_actor=actor_name)
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
    # Tune takes Ctrl+C itself: it stops the trials and returns; those it stopped are neither
    # terminated nor errored
    unfinished = len(grid) - grid.num_terminated - grid.num_errors
    log("[sweep] 3/3 results" + (f" (interrupted: {unfinished} trial(s) unfinished; the same "
                                 "command resumes them)" if unfinished else ""))
    rows = result_rows(grid, spec, base, cache, icfg.ingest, sc)
    summary = write_results(spec, rows, sc)
    summary.update(seconds=time.time() - t0, metric=spec.metric, unfinished=unfinished)
    return summary
