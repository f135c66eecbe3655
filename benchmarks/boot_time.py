"""Boot time to init and to ready of hello, redis and nginx on each kernel and baseline.

    python benchmarks/boot_time.py [--runs N] [--accel tcg|kvm]

Each kernel boots N times (interleaved with the others) with `quiet` on its
command line; the time to init is when the init's first console line
("tailor-init: start") reaches the host. Prints medians with min-max and the
ratios to each baseline; stores out/bench/boot.json.
"""

import argparse

import _setup

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, help="boots per kernel (default 5)")
    p.add_argument("--accel", choices=["tcg", "kvm"], help="force the accelerator (default: detected)")
    raise SystemExit(_setup.main("boot", p))
