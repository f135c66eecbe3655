"""Building on many machines: a cold kernel build against a warm shared cache and distcc helpers.

    python benchmarks/scale.py [--app hello]

Three builds of one config in scratch checkouts (cold and filling the cache
server; another checkout with an empty local ccache and the warm cache server;
distcc helpers), then the serial parts (kbuild's no-op walk, the link tail) in
the cold build's tree. Prints the times as ratios of the cold build, checks the
three kernels are identical, and stores out/bench/scale.json. Uses
TAILOR_CCACHE_REMOTE / TAILOR_DISTCC_HOSTS when set, else a Redis server and
two distccd helpers on loopback (then, on one machine, only correctness and
overhead are measurable, and the output says so). Without --app the config is
allnoconfig + EMBEDDED + CC_OPTIMIZE_FOR_SIZE (about 500 objects).
"""

import argparse
import sys

import _setup  # noqa: F401  (puts the project on sys.path)

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--app", help="build this recipe's kernel config instead of the small default one")
    args = p.parse_args()
    from tailor import scale
    from tailor.errors import TailorError

    try:
        scale.measure_scale(args.app)
    except TailorError as e:
        print(f"tailor: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("tailor: interrupted", file=sys.stderr)
        sys.exit(130)
