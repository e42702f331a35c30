"""How many tensor operations (kernel launches on a GPU) one call of the torch DIS makes.

    python benchmarks/torch_dis_ops.py [--sizes 320x180,1280x720] [--batch 1]

On a GPU each operation of :class:`~bluref_ray.matching.torch_dis.TorchDIS` is one kernel
launch, and its patch sweep is thousands of small operations in sequence: their number, not
the arithmetic, bounds the pairs/s a GPU reaches. This counts them on the CPU, as a GPU runs
the sweep (``early_stop=False``: every Gauss–Newton step, no check), for one ``refine_gray``
call (one pyramid, ``--batch`` pairs) at each size; views (which launch nothing) are not
counted. With ``refiner=torch`` the ``reblur`` pseudo-GT makes two such calls per reference
slot and batch of frames (the learned flow's refinement; the second match, both ways in one
batch).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bluref_ray.matching.torch_dis import TorchDIS


class CountOps(TorchDispatchMode):
    """Counts the ATen operations run inside it that are not views."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += not func.is_view
        return func(*args, **(kwargs or {}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="320x180,1280x720", help="WxH,WxH,...")
    ap.add_argument("--batch", type=int, default=1, help="pairs per call")
    args = ap.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    print("| size | pairs per call | operations per call (as on a GPU) | seconds here |")
    print("| --- | --- | --- | --- |")
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        q = torch.rand(args.batch, 1, h, w, generator=gen)
        r = torch.roll(q, (1, 2), (-2, -1))  # a shifted copy: a flow to find
        dis = TorchDIS(ref_blur=0.0, early_stop=False)
        t = time.perf_counter()
        with CountOps() as count:
            dis.refine_gray(q, r)
        print(f"| {w}×{h} | {args.batch} | {count.ops:,} | {time.perf_counter() - t:.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
