"""`ray job submit` entrypoint for compaction of ingest and pseudo-GT outputs.

    ray job submit --working-dir . -- python jobs/compact.py s3://fleet/bluref/ingest \
        s3://fleet/bluref/pseudo-gt --part-mib 128

Takes exactly the options of `bluref compact` (see `bluref compact --help`).
"""

import sys

from bluref_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["compact", *sys.argv[1:]]))
