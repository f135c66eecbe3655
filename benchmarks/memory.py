"""Minimum guest memory (MiB) with which each app's boot test still passes, by bisection.

    python benchmarks/memory.py [--lo MIB] [--hi MIB] [--accel tcg|kvm] [--no-alternatives]

By default every kernel of the report's apps (own, general, baselines) and their copies on the
other kernel lines (hello-612, ...: own kernel only); --no-alternatives skips the other root formats.

The low bound is taken to fail, the high bound must pass. Prints each minimum
with its ratio to each baseline; stores out/bench/memory.json.
"""

import argparse

import _setup

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lo", type=int, help="MiB assumed to fail (default 8)")
    p.add_argument("--hi", type=int, help="MiB that must pass (default 256)")
    p.add_argument("--accel", choices=["tcg", "kvm"], help="force the accelerator (default: detected)")
    p.add_argument("--no-alternatives", dest="alternatives", action="store_const", const=False,
                   help="measure each kernel with the app's own root only (not the other root formats)")
    raise SystemExit(_setup.main("memory", p))
