"""The tasks of ``doit build:<app>`` and what hangs off a built app: source, config, kernel, image,
rootfs, boot, slim and snapshot.

Each generator takes the valid recipes and returns doit task dicts. Actions name their stage
function as ``"module:function"`` (:func:`tailor.tasks.action`), so making these tasks imports
none of the stages' working code. Each task's ``uptodate`` carries the digest of its stage's code
(:func:`tailor.imports.code_digest`: every file of the stage's import closure), so a change to any
module a stage runs reruns it, with no list of modules kept by hand.
"""

from __future__ import annotations

import os

from tailor import imports, paths, records, source
from tailor.recipe import RESEED_SOURCE, ROOTFS_DIR, Recipe, with_variants
from tailor.records.stages import SourceStamp
from tailor.tasks import action, call
from tailor.templates import INIT_TEMPLATE, TEMPLATES_DIR
from tailor.util import sha256_text



def _config_changed(values: dict):
    from doit.tools import config_changed

    return config_changed(values)


def source_tasks(recipes: list[Recipe]):
    """``source:<id>``: verify and unpack each distinct kernel source once."""
    refs = {}
    for r in recipes:
        ref = source.recipe_ref(r)
        refs.setdefault(ref.short, ref)
    for short, ref in sorted(refs.items()):
        deps = [str(p.path) for p in ref.patches]
        if ref.kind == "path" and ref.tarball.exists():
            deps.append(str(ref.tarball))
        yield {
            "basename": "source", "name": short,
            "doc": f"verify and unpack the kernel source {ref.label}",
            "actions": [action("source:prepare", ref)],
            "targets": [str(source.stamp_path(ref))],
            "uptodate": [_config_changed({"id": ref.id, "record": SourceStamp.FORMAT})],
            "file_dep": deps,
            "verbosity": 2,
        }


def config_tasks(recipes: list[Recipe]):
    """``config:<app>``: up to date while the recipe's ``kernel`` section, its fragments, the source
    and the engine's code are unchanged, so an unchanged project never parses Kconfig."""
    for r in with_variants(recipes):
        ref = source.recipe_ref(r)
        fragments = r.fragment_paths()
        yield {
            "basename": "config", "name": r.id,
            "doc": f"resolve and verify the kernel .config of {r.id} ({', '.join(r.kernel.base) or 'no base'}"
                   f" + {len(r.kernel.options)} options)",
            "actions": [action("config:configure", r)],
            "file_dep": [str(p) for p in fragments if p.exists()] + [str(source.stamp_path(ref))],
            "targets": [str(p) for p in paths.config_files(r.id).values()],
            "clean": [call("util:remove", paths.config_dir(r.id))],
            "uptodate": [_config_changed({"kernel": r.digests["kernel"], "engine": imports.code_digest("config")})],
            "verbosity": 2,
        }


def kernel_tasks(recipes: list[Recipe]):
    """``kernel:<app>``: one per recipe; identical configs share one build (keyed by identity)."""
    from tailor.toolchain import BUILD_SETTINGS, kernel_toolchain

    for r in with_variants(recipes):
        files = paths.config_files(r.id)
        yield {
            "basename": "kernel", "name": r.id,
            "doc": f"build the kernel of {r.id} (bzImage, vmlinux, System.map)",
            "actions": [action("kernel:build_for", r)],
            "file_dep": [str(files["config"]), str(files["identity"]), str(source.stamp_path(source.recipe_ref(r)))],
            "targets": [str(paths.kernel_pointer(r.id))],
            "clean": [call("kernel:clean_app", r.id)],
            "uptodate": [_config_changed({"build_settings": BUILD_SETTINGS, "toolchain": kernel_toolchain(r.arch),
                                          "records": [records.KernelBuild.FORMAT, records.KernelPointer.FORMAT]})],
            "verbosity": 2,
        }


def image_tasks():
    """``image:<name>``: the images of ``images/*.yaml``, built from Debian packages."""
    from tailor.errors import TailorError
    from tailor.image.build import load_spec, spec_files

    for path in spec_files():
        try:
            overlay = [str(f) for name in load_spec(path).overlay
                       for f in sorted((ROOTFS_DIR / name).rglob("*")) if f.is_file()]
        except TailorError:
            overlay = []  # the action says what is wrong
        yield {
            "basename": "image", "name": path.stem,
            "doc": f"build the OCI image of images/{path.name} from Debian packages into out/images/{path.stem}",
            "actions": [action("image.build:build_local", path.stem)],
            "file_dep": [str(path)] + overlay,
            "targets": [str(paths.image_dir(path.stem) / "index.json")],
            "clean": [call("util:remove", paths.image_dir(path.stem))],
            "uptodate": [_config_changed({"version": "1", "code": imports.code_digest("image.build")})],
            "verbosity": 2,
        }


def overlay_files(recipe: Recipe) -> list[str]:
    """The regular files of *recipe*'s overlay directories (a rootfs task's file_dep)."""
    out = []
    for name in recipe.rootfs.overlay:
        d = ROOTFS_DIR / name
        if d.is_dir():
            out += [str(p) for p in sorted(d.rglob("*")) if p.is_file() and not p.is_symlink()]
    return out


def overlay_listing(recipe: Recipe) -> str:
    """A digest of what file contents do not show: every overlay and build-directory entry's path,
    kind, mode and, for a symlink, its target. Symlinks cannot be doit file_deps (a link into the
    image's own tree dangles on the host), so an added, removed or retargeted link, an empty
    directory or a mode change reaches the task through this digest."""
    rows = []
    dirs = [ROOTFS_DIR / n for n in recipe.rootfs.overlay] + [ROOTFS_DIR / s.cwd for s in recipe.rootfs.build]
    for top in dirs:
        if not top.is_dir():
            rows.append(f"{top.name}\tmissing")
            continue
        for p in sorted(top.rglob("*")):
            st = p.lstat()
            rel = f"{top.name}/{p.relative_to(top)}"
            kind = "l" if p.is_symlink() else ("d" if p.is_dir() else "f")
            rows.append(f"{rel}\t{kind}\t{st.st_mode & 0o7777:o}\t{os.readlink(p) if kind == 'l' else ''}")
    return sha256_text("\n".join(rows))


def image_pin(recipe: Recipe) -> dict:
    """The image's pinned digest as known now (reads images.lock only; never a registry)."""
    if not recipe.rootfs.image:
        return {}
    from tailor import image as oci
    from tailor.errors import TailorError

    try:
        return {"image": oci.locked_digest(oci.parse_reference(recipe.rootfs.image)) or "unpinned"}
    except TailorError:
        return {"image": "unreadable lock"}


def image_task(recipe: Recipe) -> list[str]:
    """``image:<name>`` when *recipe*'s image is one of ``images/*.yaml`` built locally, else nothing."""
    if not recipe.rootfs.image:
        return []
    from tailor.image.reference import local_image_task

    task = local_image_task(recipe.rootfs.image)
    return [task] if task else []


def rootfs_tasks(recipes: list[Recipe]):
    """``rootfs:<app>``: rebuilt only when the recipe's rootfs/app sections, overlays, init template,
    (network recipes) the reseed helper's source, a traced kept list or the stage's code change."""
    for r in recipes:
        traced = r.rootfs.slim == "traced"
        yield {
            "basename": "rootfs", "name": r.name,
            "doc": f"build the {r.rootfs.format} root filesystem of {r.name} "
                   f"({', '.join(r.rootfs.packages) or 'no packages'}; app as init)",
            "actions": [action("rootfs:build", r)],
            "file_dep": overlay_files(r) + [str(TEMPLATES_DIR / INIT_TEMPLATE)]
                        + ([str(RESEED_SOURCE)] if r.app.network else [])
                        + [str(p) for step in r.rootfs.build for p in sorted((ROOTFS_DIR / step.cwd).rglob("*"))
                           if p.is_file()]
                        + ([str(paths.slim_kept(r.name))] if traced else []),
            "targets": [str(paths.rootfs_image(r.name, r.rootfs.format)), str(paths.rootfs_manifest(r.name))],
            "clean": [call("util:remove", paths.rootfs_dir(r.name))],
            "uptodate": [_config_changed({"rootfs": r.digests["rootfs"], "app": r.digests["app"],
                                          "code": imports.code_digest("rootfs"), "listing": overlay_listing(r),
                                          **image_pin(r)})],
            "task_dep": image_task(r) + ([f"slim:{r.name}"] if traced else []),
            "verbosity": 2,
        }


def boot_tasks(recipes: list[Recipe]):
    """``boot:<app>``: rerun when the kernel, the image, the recipe's test section or the code change."""
    for r in with_variants(recipes):
        yield {
            "basename": "boot", "name": r.id,
            "doc": f"boot {r.id} under qemu microvm and probe it ({r.test.probe.type})",
            "actions": [action("boot:boot_app", r)],
            "file_dep": [str(paths.kernel_pointer(r.id)), str(paths.rootfs_image(r.name, r.rootfs.format))],
            # an image recipe fetches its image first: an unreachable registry fails before any compile
            "task_dep": [f"rootfs:{r.name}"] if r.rootfs.image else [],
            "targets": [str(paths.boot_result(r.id))],
            "clean": [call("util:remove", paths.boot_dir(r.id))],
            "uptodate": [_config_changed({"test": r.digests["test"], "app": r.digests["app"],
                                          "cmdline": r.kernel.cmdline, "code": imports.code_digest("boot")})],
            "verbosity": 2,
        }


def build_tasks(recipes: list[Recipe]):
    """``build:<app>``: config, kernel, rootfs and boot test of a recipe (on both kernels)."""
    for r in with_variants(recipes):
        what = "on the general kernel" if r.variant else "on its own kernel"
        yield {"name": r.id, "doc": f"build and boot-test {r.name} {what}: {r.description}",
               "actions": None, "task_dep": [f"boot:{r.id}"]}


def slim_tasks(recipes: list[Recipe]):
    """``slim:<app>`` (not part of ``build``): trace what the app uses and verify the slim image."""
    for r in recipes:
        yield {
            "basename": "slim", "name": r.name,
            "doc": f"trace which files {r.name} uses in its boot test and verify a root of only those",
            "actions": [action("slim:slim_action", r)],
            "task_dep": [f"kernel:{r.name}"],
            "file_dep": [str(paths.kernel_pointer(r.id))],
            "targets": [str(paths.slim_kept(r.name))],
            "uptodate": [_config_changed({"rootfs": r.digests["rootfs"], "app": r.digests["app"],
                                          "test": r.digests["test"], "code": imports.code_digest("slim")})],
            "verbosity": 2,
        }


def snapshot_tasks(recipes: list[Recipe]):
    """``snapshot:<app>`` for the network apps (not part of ``build``)."""
    for r in recipes:
        if not r.app.network:
            continue
        yield {
            "basename": "snapshot", "name": r.name,
            "doc": f"boot {r.name}, wait until it is ready and save the VM for run --from-snapshot",
            "actions": [action("snapshot:take_action", r)],
            "task_dep": [f"build:{r.name}"],
            "file_dep": [str(paths.kernel_pointer(r.id)), str(paths.rootfs_image(r.name, r.rootfs.format))],
            "targets": [str(paths.snapshot_record(r.name))],
            "uptodate": [_config_changed({"test": r.digests["test"], "app": r.digests["app"],
                                          "code": imports.code_digest("snapshot")})],
            "verbosity": 2,
        }
