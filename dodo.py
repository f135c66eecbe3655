"""doit tasks of tailor. This file only wires: the work is in the tailor/ package.

    doit list                  every task with its one-line doc
    doit build:<app>           config, kernel, rootfs and boot test of one recipe
    doit build                 every recipe
    doit explain <app> <SYM>   why a symbol has its value in a recipe's config
"""

import sys

from tailor import boot, config, kernel, rootfs, source, tasks

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
    for r in RECIPES:
        yield {"name": r.name, "doc": f"build and boot-test {r.name}: {r.description}",
               "actions": None, "task_dep": [f"boot:{r.name}"]}
    yield from tasks.broken_tasks("build", BROKEN)


def task_explain():
    """why a symbol has its value in a recipe: doit explain <app> <SYMBOL>"""
    return tasks.explain_task()
