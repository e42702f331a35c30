"""`ray job submit` entrypoint for evaluation.

    ray job submit --working-dir . -- python jobs/eval.py s3://fleet/gopro/test \
        --model round1=s3://fleet/bluref/refine/round_1/train/model.pt \
        --model round2=s3://fleet/bluref/refine/round_2/train/model.pt --out s3://fleet/bluref/eval

Takes exactly the options of `bluref eval` (see `bluref eval --help`).
"""

import sys

from bluref_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
