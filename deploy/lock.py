"""Write deploy/constraints.txt: the exact versions of bluref-ray's runtime dependencies.

    python deploy/lock.py [--check]

Reads the environment it runs in (a virtual environment with ``pip install -e .`` done): every
package that bluref-ray needs at run time, directly or through another package, pinned to the
version installed there, for Linux x86_64 and Python 3.11 (the worker image's platform). The
Dockerfile installs the project with ``-c deploy/constraints.txt``, so every node of a cluster
runs these versions. ``--check`` exits 1 when the file differs from the environment.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

OUT = Path(__file__).with_name("constraints.txt")
# The image's platform, for dependency markers (``sys_platform == "linux"`` and the like).
PLATFORM = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}
HEADER = """\
# Exact versions of bluref-ray's run-time dependencies (Linux x86_64, Python 3.11).
# Written by `python deploy/lock.py` from a working environment; the Dockerfile installs with
# `pip install -c deploy/constraints.txt .`. Regenerate after changing pyproject.toml.
"""


def closure(root: str = "bluref-ray") -> dict[str, str]:
    """Name → installed version of every run-time dependency of ``root`` (extras followed)."""
    found: dict[str, tuple[str, str, set[str]]] = {}

    def visit(name: str, extras: set[str]) -> None:
        key = canonicalize_name(name)
        dist = metadata.distribution(name)
        known = found.setdefault(key, (dist.metadata["Name"], dist.version, set()))
        if known[2] and extras <= known[2]:
            return
        known[2].update(extras or {""})
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or any(req.marker.evaluate({**PLATFORM, "extra": e})
                                         for e in known[2]):
                visit(req.name, set(req.extras))

    for spec in metadata.distribution(root).requires or []:
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate({**PLATFORM, "extra": ""}):
            visit(req.name, set(req.extras))
    return {name: version for name, version, _ in found.values()}


def render(pins: dict[str, str]) -> str:
    return HEADER + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items(), key=lambda p:
                                                              canonicalize_name(p[0])))


def main(argv: list[str]) -> int:
    text = render(closure())
    if "--check" in argv:
        same = OUT.exists() and OUT.read_text() == text
        print(f"{OUT}: {'up to date' if same else 'differs from this environment'}")
        return 0 if same else 1
    OUT.write_text(text)
    print(f"wrote {OUT} ({text.count('==')} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
