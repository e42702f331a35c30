"""`ray job submit` entrypoint for batch deblurring.

    ray job submit --working-dir . -- python jobs/deblur.py s3://fleet/bluref/nafnet/model.pt \
        s3://fleet/incoming/ --out s3://fleet/deblurred

Takes exactly the options of `bluref deblur` (see `bluref deblur --help`).
"""

import sys

from bluref_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["deblur", *sys.argv[1:]]))
