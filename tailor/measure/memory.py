"""Memory footprint: ``out/bench/memory.json``.

:func:`measure_memory` finds, for every variant, the smallest guest memory
(MiB) with which the app's whole boot test (probe included) still passes, by
bisection (:func:`bisect_min`) between :data:`MEMORY_RANGE`'s bounds.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from tailor.bench import bench_dir, bench_path, conditions, result_row, say, variants
from tailor.measure.boot_time import MEASURE_CMDLINE, boot_once
from tailor.recipe import Recipe
from tailor.util import write_json

MEMORY_RANGE = (8, 256)
"""Bisection bounds in MiB: the low end is assumed to fail, the high end must pass."""
MEMORY_TIMEOUT_S = 60
"""Timeout of each boot test during the memory bisection (a starved guest may hang)."""


def bisect_min(passes: Callable[[int], bool], lo: int, hi: int) -> tuple[int | None, dict[int, bool]]:
    """The smallest value in (*lo*, *hi*] for which *passes* is true, assuming it is monotonic.

    *lo* is taken to fail and is not tried; *hi* is tried first, and when it
    fails the answer is None. Returns ``(value, {tried value: passed})``.
    """
    tried: dict[int, bool] = {}
    tried[hi] = passes(hi)
    if not tried[hi]:
        return None, tried
    while hi - lo > 1:
        mid = (lo + hi) // 2
        tried[mid] = passes(mid)
        if tried[mid]:
            hi = mid
        else:
            lo = mid
    return hi, tried


def quiet_stderr():
    """Silence boot.run's failure tail (expected during the memory bisection)."""
    return open(os.devnull, "w")


def measure_memory(apps: dict[str, Recipe | str] | None = None, lo: int = MEMORY_RANGE[0],
                   hi: int = MEMORY_RANGE[1], accel: str | None = None,
                   log: Callable[[str], None] = say) -> dict:
    """Bisect each variant's smallest passing guest memory in MiB; writes ``memory.json``."""
    results = []
    for v in variants(apps):
        row = result_row(v)
        if v.missing:
            row["missing"] = v.missing
            results.append(row)
            continue
        outdir = bench_dir() / "memory" / v.app / v.variant

        def passes(mib: int, v=v, outdir=outdir) -> bool:
            saved = sys.stderr
            sys.stderr = quiet_stderr()
            try:
                r = boot_once(v, outdir, memory=mib, timeout=min(MEMORY_TIMEOUT_S, v.recipe.test.timeout),
                              accel=accel)
            finally:
                sys.stderr.close()
                sys.stderr = saved
            log(f"memory {v.key} {mib} MiB: {'pass' if r['pass'] else 'fail: ' + r['reason']}")
            return r["pass"]

        found, tried = bisect_min(passes, lo, hi)
        row.update({"min_mib": found, "tried": {str(k): tried[k] for k in sorted(tried)}, "range": [lo, hi]})
        results.append(row)
    data = {"kind": "memory", "conditions": conditions(accel), "cmdline_extra": MEASURE_CMDLINE,
            "results": results}
    write_json(bench_path("memory"), data)
    return data
