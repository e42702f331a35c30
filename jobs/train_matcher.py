"""`ray job submit` entrypoint for matcher training.

    ray job submit --working-dir . -- python jobs/train_matcher.py \
        --out s3://fleet/bluref/matcher --workers 8 --use-gpu --steps 40000 --batch-size 64

Takes exactly the options of `bluref train-matcher` (see `bluref train-matcher --help`).
"""

import sys

from bluref_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-matcher", *sys.argv[1:]]))
