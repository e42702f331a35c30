"""`ray job submit` entrypoint for Blur2Blur's kernel extractor.

    ray job submit --working-dir . -- python jobs/train_kernel.py s3://fleet/known/train \
        --out s3://fleet/bluref/kernel --model kernel-wizard --workers 4 --use-gpu --steps 20000

Takes exactly the options of `bluref train-kernel` (see `bluref train-kernel --help`).
"""

import sys

from bluref_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-kernel", *sys.argv[1:]]))
