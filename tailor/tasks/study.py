"""The tasks that study what is built: discovery, fits, baselines, benchmarks, the report and the
catalogue. None of them is part of ``build``; most run every time they are asked for
(``uptodate: [False]``), since what they read is the whole of ``out/``."""

from __future__ import annotations

from tailor import imports, paths
from tailor.recipe import ENOSYS_SOURCE, PROBE_FRAGMENT, Recipe, with_variants
from tailor.tasks import action
from tailor.tasks.build import _config_changed



def discover_tasks(recipes: list[Recipe]):
    """``discover:<app>`` (the table in docs/discovery.md is rendered by ``python -m tailor docs``)."""
    from tailor.records.discovery import DISCOVER_FORMAT

    for r in recipes:
        yield {
            "basename": "discover", "name": r.name,
            "doc": f"discover {r.name}'s kernel options: trace on the probe kernel, map, verify by boot test",
            "actions": [action("discover:discover_action", r)],
            "task_dep": [f"rootfs:{r.name}"],
            "file_dep": [str(PROBE_FRAGMENT), str(ENOSYS_SOURCE), str(paths.rootfs_image(r.name, r.rootfs.format))]
                        + [str(p) for p in r.fragment_paths() if p.exists()],
            "targets": [str(paths.discover_dir(r.name) / "options.yaml")],
            "uptodate": [_config_changed({"test": r.digests["test"], "app": r.digests["app"],
                                          "base": list(r.kernel.base), "format": DISCOVER_FORMAT,
                                          "code": imports.code_digest("discover")})],
            "verbosity": 2,
        }


def fits_tasks(recipes: list[Recipe]):
    """``fits:<app>`` (reads configs only; builds nothing)."""
    for r in recipes:
        yield {"basename": "fits", "name": r.name,
               "doc": f"check {r.name}'s discovery record against every baseline .config built "
                      f"(firecracker, kata, microvm)",
               "actions": [action("fits:against_baselines", r)], "targets": [str(paths.fits_path(r.name))],
               "uptodate": [False], "verbosity": 2}
    yield {"basename": "fits_table",
           "doc": "write the table of every x86_64 recipe against the Firecracker, Kata and microvm configs in "
                  "docs/discovery.md, and its summary line in the README (reads configs only)",
           "actions": [action("fits:write_table", recipes)], "uptodate": [False], "verbosity": 2}


def baseline_tasks():
    """``baseline:<name>``, one per baseline whose input exists (not part of ``build``)."""
    from tailor.baseline import BASELINES, available, input_files, meta_path
    from tailor.records import BaselineKernel

    for name, what in BASELINES.items():
        if not available(name):
            continue
        yield {
            "basename": "baseline", "name": name,
            "doc": f"build the {name} baseline kernel: {what} (long: a full kernel)",
            "actions": [action("baseline:build_baseline", name)],
            "file_dep": [str(p) for p in input_files(name)],
            "targets": [str(meta_path(name))],
            "uptodate": [_config_changed({"record": BaselineKernel.FORMAT})],
            "verbosity": 2,
        }


BENCH_KINDS = {
    "size": "kernel sizes, enabled options and system calls of every built kernel (seconds)",
    "boot": "boot time to init and ready, several boots per app and kernel (minutes under TCG)",
    "initcalls": "one initcall_debug boot per kernel: where boot time goes (a minute)",
    "memory": "smallest guest memory that passes the boot test, by bisection (minutes)",
    "throughput": "redis-benchmark / ab against each kernel and the baseline, alternately (minutes)",
}
"""``bench:<kind>`` and what each measures. The pipeline measurement runs doit itself, so it is a
script only (``python benchmarks/pipeline.py``), not a task."""


def bench_tasks():
    """``bench:<kind>``: measure what is built and store ``out/bench/<kind>.json``."""
    for kind, doc in BENCH_KINDS.items():
        yield {"basename": "bench", "name": kind, "doc": doc, "actions": [action("measure:run", kind)],
               "uptodate": [False], "verbosity": 2}


def report_task() -> dict:
    """``report``: render the report from ``out/bench/*.json`` (measures nothing)."""
    return {"actions": [action("report:build")], "uptodate": [False], "verbosity": 2}


def docs_task() -> dict:
    """``docs``: render the docs' measured figures from the newest ``docs/measurements/<date>/`` (measures nothing)."""
    return {"actions": [action("figures:write_docs")], "uptodate": [False], "verbosity": 2}


def catalogue_tasks(recipes: list[Recipe], others: list[Recipe] = ()):
    """``catalogue_table`` (the table from what out/ records), ``catalogue_baseline`` (every built app
    on the catalogue's baseline kernel), ``catalogue_timing`` (repeated boots) and ``catalogue``
    (build everything, then the table). ``catalogue`` leaves out the recipes whose image needs
    registry access (their rows say so until built). *others* are the recipes of other architectures:
    an app's ``<app>-arm64`` copy among them fills its arm64 column."""
    from tailor.catalogue import ARM64_SUFFIX, BASELINE, RUNS, needs_registry_access

    yield {"basename": "catalogue_table", "doc": "write the catalogue table in docs/catalogue.md from the recorded results",
           "actions": [action("catalogue:write_table", recipes, list(others))], "uptodate": [False], "verbosity": 2}
    yield {"basename": "catalogue_arm64_table",
           "doc": "write the arm64 table of docs/catalogue.md (each app's <app>-arm64 copy) from the recorded results",
           "actions": [action("catalogue:write_arm64_table", recipes, list(others))], "uptodate": [False],
           "verbosity": 2}
    yield {"basename": "catalogue_timing",
           "doc": f"boot every built app {RUNS} times on its own kernel, the general one and the {BASELINE} "
                  "baseline's; the table shows the medians (tens of minutes)",
           "actions": [action("catalogue:time_boots", recipes)], "uptodate": [False], "verbosity": 2}
    yield {"basename": "catalogue_baseline",
           "doc": f"boot-test every built app on the {BASELINE} baseline kernel too, for the table (minutes)",
           "actions": [action("catalogue:boot_on_baseline", recipes)], "uptodate": [False], "verbosity": 2}
    yield {"basename": "catalogue",
           "doc": "build and boot-test every recipe on both kernels, then write the table of docs/catalogue.md (hours)",
           "actions": [action("catalogue:write_table", recipes, list(others))],
           "task_dep": [f"build:{r.id}" for r in with_variants(recipes) if not needs_registry_access(r)]
                       + [f"build:{r.id}" for r in others if r.name.endswith(ARM64_SUFFIX)],
           "uptodate": [False], "verbosity": 2}
