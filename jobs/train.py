"""`ray job submit` entrypoint for deblurrer training.

    ray job submit --working-dir . -- python jobs/train.py s3://fleet/bluref/pseudo-gt \
        --out s3://fleet/bluref/nafnet --model nafnet-width32 --workers 8 --use-gpu \
        --steps 100000 --batch-size 64 --crop 256 --val s3://fleet/gopro/test

Takes exactly the options of `bluref train` (see `bluref train --help`).
"""

import sys

from bluref_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
