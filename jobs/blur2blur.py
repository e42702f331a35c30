"""`ray job submit` entrypoint for Blur2Blur's translator.

    ray job submit --working-dir . -- python jobs/blur2blur.py s3://fleet/bluref/ingest \
        --out s3://fleet/bluref/blur2blur --known s3://fleet/known/train \
        --kernel s3://fleet/bluref/kernel/model.pt --deblurrer s3://fleet/known-deblurrer.pt \
        --translator mimo-unet --discriminator patchgan --workers 4 --use-gpu --steps 50000

Takes exactly the options of `bluref blur2blur` (see `bluref blur2blur --help`).
"""

import sys

from bluref_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["blur2blur", *sys.argv[1:]]))
