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
      strategy: {choice: [reblur, sequential, weighted, progressive]}
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


from bluref_ray.sweep.run import run_sweep
from bluref_ray.sweep.spec import SHORTHANDS, SweepSpec, load_sweep, parse_sweep

__all__ = ["SHORTHANDS", "SweepSpec", "load_sweep", "parse_sweep", "run_sweep"]
