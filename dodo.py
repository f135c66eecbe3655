"""doit tasks of tailor. This file only wires: the work is in the tailor/ package.

    doit list                  every task with its one-line doc
    doit build:<app>           config, kernel, rootfs and boot test of one recipe
    doit build                 every recipe
    doit explain <app> <SYM>   why a symbol has its value in a recipe's config
"""

import sys

from tailor import (baseline, boot, catalogue, config, discover, fits, kernel, measure, release, report, rootfs,
                    slim, snapshot, source, tasks)
from tailor.image import build as image_build
from tailor.recipe import with_variants

DOIT_CONFIG = {
    "dep_file": str(tasks.state_file()),
    "backend": "sqlite3",
    "default_tasks": ["build:hello"],
    "verbosity": 2,
}

tasks.guard_concurrent_runs(sys.argv)
RECIPES, BROKEN = tasks.load_recipes()


def task_source():
    """verify and unpack a pinned kernel source (once per source hash)"""
    yield from source.tasks(RECIPES, tasks.action)


def task_config():
    """resolve and verify a recipe's kernel .config"""
    yield from config.tasks(RECIPES, tasks.action)
    yield from tasks.broken_tasks("config", BROKEN)


def task_kernel():
    """build a recipe's kernel (shared by recipes with identical configs)"""
    yield from kernel.tasks(RECIPES, tasks.action)
    yield from tasks.broken_tasks("kernel", BROKEN)


def task_image():
    """build an OCI image of images/<name>.yaml from Debian packages (the local example of image recipes)"""
    yield from image_build.tasks(tasks.action)


def task_rootfs():
    """build a recipe's root filesystem image with the app as init"""
    yield from rootfs.tasks(RECIPES, tasks.action)
    yield from tasks.broken_tasks("rootfs", BROKEN)


def task_boot():
    """boot a recipe's microVM and probe its app"""
    yield from boot.tasks(RECIPES, tasks.action)
    yield from tasks.broken_tasks("boot", BROKEN)


def task_build():
    """config, kernel, rootfs and boot test of a recipe"""
    for r in with_variants(RECIPES):
        what = "on the general kernel" if r.variant else "on its own kernel"
        yield {"name": r.id, "doc": f"build and boot-test {r.name} {what}: {r.description}",
               "actions": None, "task_dep": [f"boot:{r.id}"]}
    yield from tasks.broken_tasks("build", BROKEN)


def task_explain():
    """why a symbol has its value in a recipe: doit explain <app> <SYMBOL>"""
    return tasks.explain_task()


def task_discover():
    """discover an app's kernel options: trace it on the probe kernel, map the code to options, verify"""
    yield from discover.tasks(RECIPES, tasks.action)


def task_fits():
    """check an app's discovered kernel options against every baseline .config (reads only; builds nothing)"""
    yield from fits.tasks(RECIPES, tasks.action)


def task_snapshot():
    """boot an app, wait until it is ready and save the VM (python -m tailor run <app> --from-snapshot)"""
    yield from snapshot.tasks(RECIPES, tasks.action)


def task_slim():
    """trace which files an app uses and verify a root of only those (rootfs.slim: traced)"""
    yield from slim.tasks(RECIPES, tasks.action)


def task_release():
    """release a recipe: kernel, rootfs, .deb, OCI layout for urunc, Firecracker config, manifest, SHA256SUMS"""
    yield from release.tasks(RECIPES, tasks.action)
    yield from tasks.broken_tasks("release", BROKEN)


def task_verify_reproducible():
    """release an app (default hello) twice from scratch and compare every file byte for byte"""
    yield from release.verify_tasks(tasks.action)


def task_baseline():
    """build a general-purpose baseline kernel to measure against (long; not part of build)"""
    yield from baseline.tasks(tasks.action)


def task_bench():
    """measure what is built (size, boot, memory, throughput) into out/bench/*.json"""
    yield from measure.tasks(tasks.action)


def task_report():
    """render out/report/index.html and report.md from out/bench/*.json (measures nothing)"""
    return {"actions": [tasks.action(report.build)], "uptodate": [False], "verbosity": 2}


def task_catalogue():
    """the whole catalogue and its table in docs/catalogue.md"""
    yield from catalogue.tasks(RECIPES, tasks.action)
