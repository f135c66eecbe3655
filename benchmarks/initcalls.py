"""Where boot time goes: the most expensive initcalls of lupine-base, general and each baseline.

    python benchmarks/initcalls.py [--accel tcg|kvm]

Boots hello on each kernel once with `initcall_debug loglevel=8`, names each
initcall from the kernel's System.map, and prints per kernel how many initcalls
ran, their summed time and the five most expensive, then the baseline's ten
most expensive and whether lupine-base runs them; stores out/bench/initcalls.json.
"""

import argparse

import _setup

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accel", choices=["tcg", "kvm"], help="force the accelerator (default: detected)")
    raise SystemExit(_setup.main("initcalls", p))
