"""The pipeline's own cost: no-op `doit build:<app>` against kbuild's no-op `make bzImage`.

    python benchmarks/pipeline.py [--app redis] [--runs N] [--clean]

Run it outside doit (it runs doit). Both no-ops are warmed up once and timed N
times. --clean also times a clean `doit build:<app>` in a scratch output
directory against `make olddefconfig bzImage` of the same config (two kernel
compiles). Prints the times and ratios; stores out/bench/pipeline.json.
"""

import argparse

import _setup

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--app", help="the recipe to time (default redis)")
    p.add_argument("--runs", type=int, help="timed runs of each no-op (default 3)")
    p.add_argument("--clean", action="store_true", default=None, help="also time a clean build")
    raise SystemExit(_setup.main("pipeline", p))
