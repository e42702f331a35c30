"""`ray job submit` entrypoint for the synthesizer: the options of `bluref synth`."""

import sys

from bluref_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
