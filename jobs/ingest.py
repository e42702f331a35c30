"""`ray job submit` entrypoint for ingest.

    ray job submit --working-dir . -- python jobs/ingest.py s3://fleet/videos \
        --out s3://fleet/bluref/ingest --config configs/ingest.yaml

Takes exactly the options of `bluref ingest` (see `bluref ingest --help`). Under `ray job submit`,
RAY_ADDRESS is set, so the job joins the cluster instead of starting Ray.
"""

import sys

from bluref_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
