"""`ray job submit` entrypoint for iterative target refinement.

    ray job submit --working-dir . -- python jobs/refine.py s3://fleet/bluref/ingest \
        --out s3://fleet/bluref/refine --rounds 3 --train-model nafnet-width32 \
        --train-workers 8 --train-use-gpu --train-steps 50000

Takes exactly the options of `bluref refine` (see `bluref refine --help`).
"""

import sys

from bluref_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["refine", *sys.argv[1:]]))
