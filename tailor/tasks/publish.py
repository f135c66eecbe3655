"""The release tasks: ``release:<app>`` and ``verify_reproducible``."""

from __future__ import annotations

import os

from tailor import imports, paths
from tailor.errors import TailorError
from tailor.recipe import Recipe
from tailor.tasks import action
from tailor.tasks.build import _config_changed


def _refuse(message: str) -> None:
    raise TailorError(message)


def release_tasks(recipes: list[Recipe]):
    """``release:<app>``: one per recipe, after its kernel, rootfs and boot test."""
    from tailor.epoch import source_date_epoch
    from tailor.release.names import RELEASE_FORMAT, manifest_path, release_version, template_files

    try:
        version = release_version()
    except TailorError as e:  # a bad TAILOR_RELEASE_VERSION fails the release tasks, not every doit command
        for r in recipes:
            yield {"basename": "release", "name": r.name, "doc": f"(cannot release) {e}",
                   "actions": [action(_refuse, str(e))], "uptodate": [False], "verbosity": 2}
        return
    for r in recipes:
        yield {
            "basename": "release", "name": r.name,
            "doc": f"release {r.name} {version}: kernel, rootfs, .deb, OCI layout, Firecracker config, "
                   f"manifest, SHA256SUMS",
            "actions": [action("release:release_app", r, version)],
            "file_dep": [str(paths.kernel_pointer(r.name)), str(paths.rootfs_image(r.name, r.rootfs.format)),
                         str(paths.rootfs_manifest(r.name)), str(paths.boot_result(r.name)), str(r.path)]
                        + [str(p) for p in template_files()]
                        + ([str(paths.snapshot_record(r.name))] if r.release.snapshot else []),
            "task_dep": [f"snapshot:{r.name}"] if r.release.snapshot else [],
            "targets": [str(manifest_path(r.name, version))],
            "uptodate": [_config_changed({"version": version, "format": RELEASE_FORMAT,
                                          "code": imports.code_digest("release"), "epoch": source_date_epoch(),
                                          "maintainer": os.environ.get("TAILOR_DEB_MAINTAINER", "")})],
            "verbosity": 2,
        }


def _verify_action(app: str):
    """doit python-action for ``verify_reproducible``; doit passes the ``--app`` parameter as *app*."""
    fn, args, kwargs = action("release.repro:verify_reproducible", app)
    return fn(*args, **kwargs)


def verify_tasks():
    """``verify_reproducible [--app APP]``: build an app's release twice and compare bit for bit."""
    yield {
        "basename": "verify_reproducible",
        "doc": "release an app (default hello) twice in two directories and compare every file byte for byte",
        "actions": [(_verify_action, (), {})],
        "params": [{"name": "app", "long": "app", "default": "hello", "type": str,
                    "help": "the recipe to build twice (default hello)"}],
        "uptodate": [False],
        "verbosity": 2,
    }

