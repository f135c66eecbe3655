"""Releases: a versioned, checksummed, bit-for-bit reproducible tree of everything an app ships as.

``doit release:<app>`` (and ``doit release`` for every recipe) runs the
pipeline first (the task depends on the app's kernel pointer, rootfs image
and boot result) and then :func:`release_app` writes
``out/release/<version>/<app>/``:

* ``bzImage`` (arm64: ``Image``), ``vmlinux``, ``config``, ``System.map`` (the kernel) and
  ``rootfs.cpio`` or ``rootfs.ext2`` (the root image), byte copies of the
  pipeline's outputs, and ``recipe.yaml``;
* ``linux-image-<major.minor>-tailor-<app>_<version>_<arch>.deb`` (``amd64`` or ``arm64``)
  (:func:`~tailor.release.deb.build_deb`): the kernel, its config and System.map in ``/boot``,
  built with ``dpkg-deb`` from a staging tree with clamped times and root
  ownership, and installed into a scratch root before the release is kept
  (:func:`install_deb`);
* ``oci/``: an OCI image layout for urunc (:func:`oci_layout`): kernel,
  rootfs and ``/urunc.json`` as uncompressed tar layers written
  deterministically, urunc's annotations on the manifest, the app's argv as
  Entrypoint/Cmd; every digest and size is checked again by walking the
  layout (:func:`verify_oci`);
* ``firecracker.json`` (:func:`firecracker_config`): a VM config for
  ``firecracker --no-api --config-file firecracker.json`` run from the
  app's release directory;
* ``snapshot/`` with ``release.snapshot: true`` in the recipe (:mod:`~tailor.release.snapshot`):
  the VM saved once the app was ready (``doit snapshot:<app>``), its disk layer
  and ``restore.sh``, which starts it from there with the qemu that took it;
* ``manifest.json``: the recipe and its hash, the kernel source and its
  sha256, the resolved config's identity, the toolchain versions,
  SOURCE_DATE_EPOCH, every other file's sha256 and size, the boot-test
  result and time, and the command that reproduces the release.

``out/release/<version>/SHA256SUMS`` lists every file of every app released
under that version (:func:`write_sums`); ``sha256sum -c SHA256SUMS`` passes.

Everything but what one run captured (``manifest.json``'s ``boot_test``:
how long one boot took, on one machine; the snapshot and its section) is a function of the
inputs: :func:`verify_reproducible` builds an app twice from scratch, in two
different directories and at two different times, and compares the two
release trees byte for byte (:func:`compare_trees`).

The release version is :data:`tailor.__version__` unless
``TAILOR_RELEASE_VERSION`` is set. The .deb's texts come from templates in
``templates/release/``; every JSON file is written with ``json.dumps``
(sorted keys); every file is written atomically, and an app's release
directory is built beside its final place and renamed into it.

Modules, in the order a release is made: :mod:`~tailor.release.names`
(version, paths, maintainer, templates), :mod:`~tailor.release.deb`,
:mod:`~tailor.release.oci`, :mod:`~tailor.release.firecracker`, :mod:`~tailor.release.snapshot`,
:mod:`~tailor.release.treediff` (SHA256SUMS, tree comparison) and
:mod:`~tailor.release.repro` (:func:`verify_reproducible`); this module
holds :func:`release_app`, the manifest and the release tasks, and re-exports
the public names of the others.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


from tailor import __version__, paths, records, rootfs, source
from tailor import config as config_stage
from tailor.errors import TailorError
from tailor.kinds import Arch
from tailor.epoch import source_date_epoch
from tailor.qemu import kernel_file
from tailor.records.release import ReleaseManifest
from tailor.release.deb import build_deb, deb_file_name, deb_package_name, install_deb, kernel_release
from tailor.release.firecracker import (FIRECRACKER_BOOT_ARGS, FIRECRACKER_MAC, FIRECRACKER_TAP,
                                        check_firecracker_config, firecracker_config)
from tailor.release.names import (DEFAULT_MAINTAINER, MEASURED_KEY, MEASURED_KEYS, RELEASE_FORMAT, SUMS_NAME, TEMPLATE_DIR,
                                  VERSION_RE, app_release_dir, check_version, maintainer, manifest_path,
                                  release_version, render, template_files)
from tailor.release.oci import (OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, URUNC_KERNEL, URUNC_ROOTFS, config_has,
                                deterministic_tar, oci_layout, urunc_annotations, urunc_hypervisor, verify_oci)
from tailor.release.repro import (COPY_IGNORE, REPRO_BUILDS, copy_project, measurement_only, tree_digest,
                                  verify_reproducible)
from tailor.release.snapshot import SNAPSHOT_DIR, add_snapshot, is_snapshot_file, restore_command
from tailor.release.treediff import (check_sums, compare_trees, describe_difference, file_sums, first_difference,
                                     first_difference_bytes, walk_files, write_sums)
from tailor.rootfs import PATH_DIRS, normalise
from tailor.toolchain import IMAGE_TOOLS, first_line, versions
from tailor.util import (PROJECT, count_enabled, display_path, file_lock, makedirs, remove,
                         replace_dir, sha256_file, sha256_text, write_atomic)

__all__ = [  # the public names of the whole package, importable from tailor.release
    "COPY_IGNORE", "DEFAULT_MAINTAINER", "FIRECRACKER_BOOT_ARGS", "FIRECRACKER_MAC", "FIRECRACKER_TAP",
    "KERNEL_FILES", "kernel_files", "MEASURED_KEY", "MEASURED_KEYS", "SNAPSHOT_DIR", "add_snapshot", "is_snapshot_file",
    "restore_command", "OCI_CONFIG", "OCI_LAYER", "OCI_MANIFEST", "RELEASE_FORMAT", "REPRO_BUILDS",
    "SUMS_NAME", "TEMPLATE_DIR", "URUNC_KERNEL", "URUNC_ROOTFS", "VERSION_RE", "app_release_dir", "build_deb",
    "check_firecracker_config", "check_sums", "check_version", "compare_trees", "config_has", "copy_project",
    "deb_file_name", "deb_package_name", "describe_difference", "deterministic_tar", "file_sums",
    "firecracker_config", "first_difference", "first_difference_bytes", "install_deb", "kernel_release",
    "maintainer", "manifest_path", "measurement_only", "oci_layout", "release_app",
    "release_version", "render", "source_commit", "snapshot_record", "template_files", "tree_digest",
    "urunc_annotations", "urunc_hypervisor", "verify_oci", "verify_reproducible", "walk_files",
    "write_sums",
]

KERNEL_FILES = ("bzImage", "vmlinux", "config", "System.map")
"""The kernel artefacts copied from ``out/kernel/<identity>/`` into an x86_64 release (see :func:`kernel_files`)."""


def kernel_files(arch: Arch) -> tuple[str, ...]:
    """The kernel artefacts copied into a release of an *arch* kernel: its boot image (``bzImage``, or
    ``Image`` on arm64), ``vmlinux``, ``config`` and ``System.map``."""
    return (arch.boot_image[0],) + KERNEL_FILES[1:]


def source_commit() -> dict:
    """The git commit of the project and whether tracked files differ from it (None outside git)."""
    if not (PROJECT / ".git").exists():
        return {"commit": None, "dirty": None}
    commit = first_line(["git", "-C", str(PROJECT), "rev-parse", "HEAD"])
    if not commit or not re.match(r"^[0-9a-f]{40}$", commit):
        return {"commit": None, "dirty": None}
    try:
        proc = subprocess.run(["git", "-C", str(PROJECT), "status", "--porcelain", "--untracked-files=no"],
                              capture_output=True, text=True, timeout=60)
        dirty = bool(proc.stdout.strip()) if proc.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        dirty = None
    return {"commit": commit, "dirty": dirty}


def _boot_result(recipe, pointer: records.KernelPointer, image: Path) -> records.BootResult:
    """The app's boot-test result (read strictly as a :class:`tailor.records.BootResult`), refusing a
    failed, missing or stale one."""
    path = paths.boot_result(recipe.name)
    if not path.exists():
        raise TailorError(f"release of {recipe.name} refused: it has no boot-test result; "
                          f"run `doit boot:{recipe.name}`")
    result = records.load_boot_result(path)
    if not result.passed:
        raise TailorError(f"release of {recipe.name} refused: its boot test did not pass "
                          f"({result.reason or 'no reason recorded'}); fix it and run `doit boot:{recipe.name}`")
    kernel, _ = kernel_file(pointer)  # the file the boot test booted (the vmlinux by PVH when it has it)
    if result.kernel != str(kernel) or result.image != str(image):
        raise TailorError(f"release of {recipe.name} refused: its boot result is for another kernel or image; "
                          f"run `doit boot:{recipe.name}`")
    newest = max(kernel.stat().st_mtime, image.stat().st_mtime)
    if path.stat().st_mtime < newest:
        raise TailorError(f"release of {recipe.name} refused: its boot result is older than its kernel or image; "
                          f"run `doit boot:{recipe.name}`")
    return result


def _copy(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise TailorError(f"{src}: missing; run the stage that writes it")
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o644)


def release_app(recipe, version: str | None = None) -> dict:
    """Release *recipe*'s app under *version* (default :func:`release_version`); return its manifest.

    Refuses an app whose boot test did not pass (or is older than its kernel
    or image). Builds the app's directory beside its final place, checks the
    .deb by installing it into a scratch root and the OCI layout by walking
    it, renames the directory into ``out/release/<version>/<app>`` and
    rewrites that version's SHA256SUMS.
    """
    version = check_version(version or release_version())
    app = recipe.name
    epoch = source_date_epoch()
    pointer = records.app_kernel(app)
    identity = pointer.identity
    kdir = pointer.files.dir
    kernel_meta = pointer.build_record()
    image = rootfs.image_path(recipe)
    result = _boot_result(recipe, pointer, image)
    rootfs_manifest = records.app_rootfs(app)
    if not image.is_file() or sha256_file(image) != rootfs_manifest.sha256:
        raise TailorError(f"{display_path(image)}: does not match {rootfs.manifest_path(app).name}; "
                          f"run `doit rootfs:{app}`")
    config_text = (kdir / "config").read_text()
    resolved = config_stage.config_paths(app)["config"]
    if resolved.exists() and resolved.read_text() != config_text:
        raise TailorError(f"kernel {identity[:16]} was not built from the current config of {app}; "
                          f"run `doit kernel:{app}`")
    arch = recipe.arch
    boot_name = arch.boot_image[0]
    kernel_rel = kernel_release(kdir / boot_name)
    ref = source.recipe_ref(recipe)
    maint = maintainer()
    fmt = recipe.rootfs.format
    rootfs_name = f"rootfs.{fmt}"
    argv = [rootfs_manifest.command or recipe.app.command] + list(recipe.app.args)
    hypervisor = urunc_hypervisor(config_text)
    root = makedirs(paths.release_dir(version))
    final = app_release_dir(app, version)
    tmp = Path(tempfile.mkdtemp(prefix=f".{app}.", suffix=".tmp", dir=root))
    try:
        (tmp / "recipe.yaml").write_bytes(Path(recipe.path).read_bytes())
        for name in kernel_files(arch):
            _copy(kdir / name, tmp / name)
        _copy(image, tmp / rootfs_name)
        deb = build_deb(tmp, app=app, kernel_rel=kernel_rel, version=version, image=tmp / boot_name, arch=arch,
                        config=tmp / "config", system_map=tmp / "System.map", epoch=epoch,
                        description=recipe.description, source_label=ref.label, source_sha256=ref.sha256,
                        config_identity=identity, maintainer_field=maint)
        with tempfile.TemporaryDirectory(prefix="tailor-deb-root-") as scratch:
            listed = install_deb(deb, scratch)
            flavour = f"{kernel_rel}-tailor-{app.replace('_', '-')}"
            for prefix, src in (("vmlinuz", boot_name), ("config", "config"), ("System.map", "System.map")):
                installed = Path(scratch) / "boot" / f"{prefix}-{flavour}"
                if f"/boot/{prefix}-{flavour}" not in listed or not installed.is_file() \
                        or sha256_file(installed) != sha256_file(tmp / src):
                    raise TailorError(f"{deb.name}: /boot/{prefix}-{flavour} is not installed as built")
        env = [f"PATH={':'.join(PATH_DIRS)}", "HOME=/root"] + [f"{k}={v}" for k, v in recipe.app.env]
        oci = oci_layout(tmp / "oci", app=app, version=version,
                         kernel=tmp / (boot_name if hypervisor == "qemu" else arch.firecracker_kernel),
                         rootfs=tmp / rootfs_name, rootfs_format=fmt, argv=argv, env=env,
                         workdir=recipe.app.workdir, hypervisor=hypervisor, epoch=epoch, arch=arch)
        verify_oci(tmp / "oci")
        fc = firecracker_config(kernel=arch.firecracker_kernel, rootfs=rootfs_name, rootfs_format=fmt,
                                memory=recipe.test.memory, network=bool(recipe.app.network),
                                cmdline_extra=recipe.kernel.cmdline)
        check_firecracker_config(json.loads(fc))
        write_atomic(tmp / "firecracker.json", fc)
        snapshot = None
        if recipe.release.snapshot:
            snapshot = add_snapshot(recipe, tmp, image=image, kernel_name=kernel_file(pointer)[0].name,
                                    version=version)
        normalise(tmp, epoch)
        artefacts = [{"path": rel, "sha256": digest, "size": (tmp / rel).stat().st_size}
                     for rel, digest in file_sums(tmp) if not is_snapshot_file(rel, in_app=True)]
        manifest = _manifest(recipe, version, epoch, identity, config_text, kernel_rel, ref, rootfs_manifest,
                             result, artefacts, deb.name, oci, hypervisor, maint, kernel_meta.toolchain, arch)
        if snapshot:
            manifest["snapshot"] = snapshot
        manifest = ReleaseManifest.from_dict(manifest, display_path(final / "manifest.json")).save(
            tmp / "manifest.json")
        os.utime(tmp / "manifest.json", (epoch, epoch))
        os.utime(tmp, (epoch, epoch))
        with file_lock(root / ".lock", f"release {version}"):
            replace_dir(tmp, final)
            write_sums(root)
    finally:
        remove(tmp)
    problems = check_sums(root)
    if problems:
        raise TailorError(f"{display_path(root / SUMS_NAME)}: {problems[0]}")
    total = sum(a["size"] for a in artefacts)
    print(f"[release:{app}] {display_path(final)}: {len(artefacts) + 1} files, {total / 1e6:.1f} MB; "
          f"{deb.name}; OCI {oci['manifest']['digest'][:19]} ({hypervisor})", file=sys.stderr)
    return manifest


def _manifest(recipe, version, epoch, identity, config_text, kernel_rel, ref, rootfs_manifest: records.RootfsManifest,
              result: records.BootResult, artefacts, deb_name, oci, hypervisor, maint, kernel_toolchain: dict,
              arch: Arch) -> dict:
    """The release's manifest.json. Its ``toolchain`` names the compiler and binutils that built the
    kernel (an arm64 kernel's cross gcc and binutils), copied from ``kernel.json`` (recorded at build
    time), and the image tools of this host; ``kernel.arch`` is the recipe's architecture."""
    app = recipe.name
    recipe_bytes = Path(recipe.path).read_bytes()
    commit = source_commit()
    env = {"SOURCE_DATE_EPOCH": str(epoch), "TAILOR_RELEASE_VERSION": version}
    if os.environ.get("TAILOR_DEB_MAINTAINER"):
        env["TAILOR_DEB_MAINTAINER"] = maint
    run = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + f" .venv/bin/doit release:{app}"
    steps = ([f"git checkout {commit['commit']}"] if commit["commit"] else []) + ["./setup.sh", run]
    return {
        "format": ReleaseManifest.FORMAT,
        "app": app,
        "description": recipe.description,
        "version": version,
        "tailor_version": __version__,
        "source_date_epoch": epoch,
        "recipe": {"file": f"recipes/{Path(recipe.path).name}", "sha256": sha256_text(recipe_bytes),
                   "text": recipe_bytes.decode("utf-8", "replace")},
        "kernel": {
            "release": kernel_rel,
            "arch": str(arch),
            "image": arch.boot_image[0],
            "source": {"label": ref.label, "kind": ref.kind, "sha256": ref.sha256, "id": ref.id,
                       "patches": [{"file": Path(p.path).name, "sha256": p.sha256} for p in ref.patches]},
            "config_identity": identity,
            "config_sha256": sha256_text(config_text),
            "enabled": count_enabled(config_text),
            "cmdline": recipe.kernel.cmdline,
        },
        "rootfs": {"format": rootfs_manifest.image_format, "command": rootfs_manifest.command,
                   "sha256": rootfs_manifest.sha256, "packages": rootfs_manifest.packages},
        "toolchain": {**versions(IMAGE_TOOLS), **kernel_toolchain},
        "artefacts": artefacts,
        "deb": {"file": deb_name, "maintainer": maint},
        "oci": {"layout": "oci", "ref": oci["ref"], "manifest_digest": oci["manifest"]["digest"],
                "hypervisor": hypervisor, "annotations": oci["annotations"]},
        "firecracker": {"config": "firecracker.json",
                        "run": "firecracker --no-api --config-file firecracker.json (from this directory)"},
        MEASURED_KEY: {
            "pass": result.passed,
            "accel": result.accel,
            "time_to_init_s": result.time_to_init_s,
            "time_to_ready_s": result.time_to_ready_s,
            "boot_method": result.boot_method,
            "entropy_before_app": result.entropy_before_app,
            "probe": result.probe.get("type"),
            "detail": result.probe.get("detail"),
            "memory_mib": result.memory,
            "note": "measured by the boot test of this build; it differs between runs and machines and is "
                    "the only part of a release left out of the bit-for-bit comparison",
        },
        "reproduce": {"commit": commit["commit"], "dirty": commit["dirty"], "environment": env,
                      "command": " && ".join(steps)},
    }


snapshot_record = paths.snapshot_record
"""The snapshot record a release with ``release.snapshot: true`` depends on."""
