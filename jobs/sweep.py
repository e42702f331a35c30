"""`ray job submit` entrypoint for Ray Tune sweeps over N, Δ, τ and the fusion strategy.

    ray job submit --working-dir . -- python jobs/sweep.py \
        --config configs/sweeps/ablation_refs.yaml --out s3://fleet/bluref/sweeps/refs \
        --data s3://fleet/bluref/clips --val s3://fleet/bluref/heldout --set train.use_gpu=true

Takes exactly the options of `bluref sweep` (see `bluref sweep --help`).
"""

import sys

from bluref_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
