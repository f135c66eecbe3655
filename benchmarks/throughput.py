"""Throughput of redis (redis-benchmark GET/SET) and nginx (ab) on each kernel and the baselines.

    python benchmarks/throughput.py [--rounds N] [--accel tcg|kvm]

All kernels of an app run at once and are loaded alternately, with fixed,
bounded request counts, only through 127.0.0.1. Prints the medians and their
ratios to each baseline; stores out/bench/throughput.json.
"""

import argparse

import _setup

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, help="load runs per kernel (default 3)")
    p.add_argument("--accel", choices=["tcg", "kvm"], help="force the accelerator (default: detected)")
    raise SystemExit(_setup.main("throughput", p))
