"""Kernel image size, enabled options and system calls of every built kernel and baseline.

    python benchmarks/size.py

Prints each kernel's bzImage, vmlinux, options and system calls with its ratio
to each baseline, and the size and system-call targets; stores
out/bench/size.json. Reads files only (seconds).
"""

import argparse

import _setup

if __name__ == "__main__":
    raise SystemExit(_setup.main("size", argparse.ArgumentParser(description=__doc__.splitlines()[0])))
