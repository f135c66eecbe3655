"""Measurements the Lupine paper made, for tailor's kernels against general-purpose baselines.

Every measurement reads what the pipeline already built (kernels under
``out/kernel/``, root images under ``out/rootfs/``, baselines under
``out/baseline/``) and writes one JSON file to ``out/bench/``; one module per metric:

* :mod:`~tailor.measure.size` -> ``size.json``: bzImage and vmlinux bytes,
  enabled options and the system calls compiled in (:func:`count_syscalls`);
* :mod:`~tailor.measure.boot_time` -> ``boot.json``: time to init and to
  ready over N boots (median, min, max);
* :mod:`~tailor.measure.initcalls` -> ``initcalls.json``: one ``initcall_debug`` boot per
  kernel, its initcalls named from System.map, the most expensive ones and what the baseline
  runs that lupine-base does not;
* :mod:`~tailor.measure.memory` -> ``memory.json``: the smallest guest memory
  with which the boot test still passes (:func:`bisect_min`);
* :mod:`~tailor.measure.throughput` -> ``throughput.json``: redis-benchmark
  GET/SET for redis, ApacheBench (``ab``) for an HTTP app, every kernel
  variant and the baselines booted in turn, round after round, in one session;
* :mod:`~tailor.measure.pipeline` -> ``pipeline.json``: a no-op
  ``doit build:<app>`` against kbuild's own no-op ``make bzImage``, and
  optionally a clean build against the raw compile of the same config.

What they share with the report (the variants measured, the bench paths, the
conditions of a measurement) is :mod:`tailor.bench`. This package's
:func:`run` is the entry point of the benchmark scripts and of the
``bench:<kind>`` doit tasks (:func:`tasks`); it prints the figures through
:func:`tailor.report.summary`. The names below are re-exported so that
``tailor.measure.<name>`` keeps working for the scripts.
"""

from __future__ import annotations

from tailor import report
from tailor.bench import (REPORT_APPS, Variant, bench_dir, bench_path, conditions, kernel_label, load_apps,
                          spread, variants)
from tailor.errors import TailorError
from tailor.measure.boot_time import (BOOT_RUNS, MARKER, MEASURE_CMDLINE, boot_once, console_times,
                                      measure_boot, measured_recipe)
from tailor.measure.initcalls import INITCALL_CMDLINE, measure_initcalls, parse_initcalls, summarise, symbolise
from tailor.measure.memory import MEMORY_RANGE, bisect_min, measure_memory
from tailor.measure.pipeline import doit_noop_ran_nothing, measure_clean, measure_pipeline, wait_for_doit
from tailor.measure.size import XZ_FLAGS, count_syscalls, measure_size, xz_estimate
from tailor.measure.throughput import (HTTP_BENCH, REDIS_BENCH, STALL_MS, clean_spread, measure_throughput,
                                       parse_ab, parse_redis_csv, run_load, running_vm)

__all__ = ["REPORT_APPS", "Variant", "bench_dir", "bench_path", "conditions", "kernel_label", "load_apps",
           "spread", "variants", "BOOT_RUNS", "MARKER", "MEASURE_CMDLINE", "boot_once", "console_times",
           "measure_boot", "measured_recipe", "INITCALL_CMDLINE", "measure_initcalls", "parse_initcalls",
           "summarise", "symbolise", "MEMORY_RANGE", "bisect_min", "measure_memory",
           "doit_noop_ran_nothing", "measure_clean", "measure_pipeline", "wait_for_doit", "XZ_FLAGS",
           "count_syscalls", "measure_size", "xz_estimate", "HTTP_BENCH", "REDIS_BENCH", "STALL_MS",
           "clean_spread", "measure_throughput", "parse_ab", "parse_redis_csv", "run_load", "running_vm",
           "SUMMARY", "MEASUREMENTS", "run", "tasks"]

MEASUREMENTS = {"size": measure_size, "boot": measure_boot, "initcalls": measure_initcalls, "memory": measure_memory,
                "throughput": measure_throughput, "pipeline": measure_pipeline}
"""Each measurement's kind and the function that takes it."""

SUMMARY = {
    "size": (("size", "syscalls", "lines"), ("size", "syscalls")),
    "boot": (("boot", "lines"), ("boot", "ready")),
    "initcalls": (("initcalls",), ()),
    "memory": (("memory", "memory-breakdown"), ("memory",)),
    "throughput": (("throughput",), ("throughput",)),
    "pipeline": (("pipeline",), ("noop",)),
}
"""For each measurement: the report sections and the target metrics its summary prints."""


def run(kind: str, **options) -> dict:
    """Run the measurement *kind* (size, boot, initcalls, memory, throughput, pipeline), store its JSON and
    print its figures with their ratios and targets."""
    fn = MEASUREMENTS.get(kind)
    if fn is None:
        raise TailorError(f"{kind!r}: no such measurement; use {', '.join(SUMMARY)}")
    data = fn(**options)
    sections, metrics = SUMMARY[kind]
    print(report.summary(report.load_results(), sections, metrics), end="")
    print(f"stored in {bench_path(kind)}")
    return data
