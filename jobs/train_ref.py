"""`ray job submit` entrypoint for Ref-NAFNet.

    ray job submit --working-dir . -- python jobs/train_ref.py s3://fleet/bluref/ingest \
        --out s3://fleet/bluref/refnet --model refnafnet-width32 --pairs s3://fleet/bluref/pgt \
        --workers 4 --use-gpu --steps 100000

Takes exactly the options of `bluref train-ref` (see `bluref train-ref --help`).
"""

import sys

from bluref_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-ref", *sys.argv[1:]]))
