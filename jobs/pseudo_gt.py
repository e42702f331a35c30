"""`ray job submit` entrypoint for pseudo-GT.

    ray job submit --working-dir . -- python jobs/pseudo_gt.py s3://fleet/bluref/ingest \
        --out s3://fleet/bluref/pseudo-gt --strategy progressive --max-refs 6

Takes exactly the options of `bluref pseudo-gt` (see `bluref pseudo-gt --help`).
"""

import sys

from bluref_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["pseudo-gt", *sys.argv[1:]]))
