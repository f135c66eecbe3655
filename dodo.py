"""doit tasks of tailor. This file only wires: the task graph is tailor/tasks/, the work is in the stages.

    doit list                  every task with its one-line doc
    doit build:<app>           config, kernel, rootfs and boot test of one recipe
    doit build                 every recipe
    doit explain <app> <SYM>   why a symbol has its value in a recipe's config
"""

import sys

from tailor import tasks
from tailor.tasks import build, publish, study

DOIT_CONFIG = {
    "dep_file": str(tasks.state_file()),
    "backend": "sqlite3",
    "default_tasks": ["build:hello"],
    "verbosity": 2,
}

tasks.guard_concurrent_runs(sys.argv)
RECIPES, BROKEN = tasks.load_recipes()
X86, OTHER_ARCH = tasks.by_arch(RECIPES)  # arm64 recipes: config, kernel, rootfs, boot, build and release, so far


def task_source():
    """verify and unpack a pinned kernel source (once per source hash)"""
    yield from build.source_tasks(RECIPES)


def task_config():
    """resolve and verify a recipe's kernel .config"""
    yield from build.config_tasks(RECIPES)
    yield from tasks.broken_tasks("config", BROKEN)


def task_kernel():
    """build a recipe's kernel (shared by recipes with identical configs)"""
    yield from build.kernel_tasks(RECIPES)
    yield from tasks.broken_tasks("kernel", BROKEN)


def task_image():
    """build an OCI image of images/<name>.yaml from Debian packages (the local example of image recipes)"""
    yield from build.image_tasks()


def task_rootfs():
    """build a recipe's root filesystem image with the app as init"""
    yield from build.rootfs_tasks(RECIPES)
    yield from tasks.broken_tasks("rootfs", BROKEN)


def task_boot():
    """boot a recipe's microVM and probe its app"""
    yield from build.boot_tasks(RECIPES)
    yield from tasks.broken_tasks("boot", BROKEN)


def task_build():
    """config, kernel, rootfs and boot test of a recipe"""
    yield from build.build_tasks(RECIPES)
    yield from tasks.broken_tasks("build", BROKEN)


def task_explain():
    """why a symbol has its value in a recipe: doit explain <app> <SYMBOL>"""
    return tasks.explain_task()


def task_discover():
    """discover an app's kernel options: trace it on the probe kernel, map the code to options, verify"""
    yield from study.discover_tasks(X86)
    yield from tasks.not_yet_tasks("discover", OTHER_ARCH)


def task_fits():
    """check an app's discovered kernel options against every baseline .config (reads only; builds nothing)"""
    yield from study.fits_tasks(X86)
    yield from tasks.not_yet_tasks("fits", OTHER_ARCH)


def task_snapshot():
    """boot an app, wait until it is ready and save the VM (python -m tailor run <app> --from-snapshot)"""
    yield from build.snapshot_tasks(X86)
    yield from tasks.not_yet_tasks("snapshot", [r for r in OTHER_ARCH if r.app.network])


def task_slim():
    """trace which files an app uses and verify a root of only those (rootfs.slim: traced)"""
    yield from build.slim_tasks(X86)
    yield from tasks.not_yet_tasks("slim", OTHER_ARCH)


def task_release():
    """release a recipe: kernel, rootfs, .deb, OCI layout for urunc, Firecracker config, manifest, SHA256SUMS"""
    yield from publish.release_tasks(RECIPES)
    yield from tasks.broken_tasks("release", BROKEN)


def task_verify_reproducible():
    """release an app (default hello) twice from scratch and compare every file byte for byte"""
    yield from publish.verify_tasks()


def task_baseline():
    """build a general-purpose baseline kernel to measure against (long; not part of build)"""
    yield from study.baseline_tasks()


def task_bench():
    """measure what is built (size, boot, memory, throughput) into out/bench/*.json"""
    yield from study.bench_tasks()


def task_report():
    """render out/report/index.html and report.md from out/bench/*.json (measures nothing)"""
    return study.report_task()


def task_docs():
    """render the docs' measured figures from the newest docs/measurements/<date>/ (python -m tailor docs)"""
    return study.docs_task()


def task_catalogue():
    """the whole catalogue and its table in docs/catalogue.md"""
    yield from study.catalogue_tasks(X86, OTHER_ARCH)
