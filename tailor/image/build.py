"""Images built locally from Debian packages: ``images/<name>.yaml`` -> ``out/images/<name>`` (``doit image:<name>``).

:func:`build_from_packages` extracts the packages' closure (as the rootfs stage does), keeps the
``keep`` paths with their ELF closure (or drops the ``exclude`` paths), and writes one deterministic
uncompressed layer with
:func:`write_layout`: same packages, same digest.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from tailor import debian, paths
from tailor.elf import library_closure, resolve_in_root
from tailor.errors import TailorError
from tailor.fstree import add_users, apply_overlay, copy_in, elf_files, expand_files, normalise
from tailor.image.layout import put_blob, put_blob_file, set_tag, tree_tar
from tailor.image.reference import IMAGES_DIR, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, TAG_RE
from tailor.epoch import source_date_epoch
from tailor.kinds import Arch, parse_arch
from tailor.recipe import ROOTFS_DIR
from tailor.util import display_path, makedirs, remove, replace_dir


@dataclass(frozen=True)
class ImageSpec:
    """``images/<name>.yaml``: an image made of Debian packages (data only)."""

    name: str
    path: Path
    tag: str
    packages: tuple[str, ...]
    keep: tuple[str, ...] = ()
    """In-image paths kept with the ELF closure of the programs among them; empty keeps every file."""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = "/"
    user: str = ""
    overlay: tuple[str, ...] = ()
    """Directories under ``rootfs/`` copied over the tree (the app's own files: scripts, pages)."""
    exclude: tuple[str, ...] = ()
    """In-image paths removed from the packages' tree before the overlay (as Debian's slim container
    images leave out /usr/share/doc, man pages and locales through dpkg's path-exclude)."""
    arch: Arch = Arch.X86_64
    """The image's architecture (``arch`` in the spec, as in recipes): its Debian packages' and its
    config's platform (``linux/amd64``, ``linux/arm64``)."""


_SPEC_KEYS = ("tag", "arch", "packages", "keep", "exclude", "entrypoint", "cmd", "env", "workdir", "user", "overlay")


def load_spec(path: Path) -> ImageSpec:
    """Read ``images/<name>.yaml`` (one line per mistake, like recipes)."""
    where = display_path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise TailorError(f"{where}: cannot read the image spec ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise TailorError(f"{where}: expected a mapping with keys {', '.join(_SPEC_KEYS)}")
    for k in data:
        if k not in _SPEC_KEYS:
            raise TailorError(f"{where}: {k}: unknown key; allowed keys: {', '.join(_SPEC_KEYS)}")

    def strings(key):
        v = data.get(key) or []
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise TailorError(f"{where}: {key}: expected a list of strings")
        return tuple(v)

    env = data.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise TailorError(f"{where}: env: expected a mapping of NAME: \"value\"")
    tag = str(data.get("tag", "latest"))
    if not TAG_RE.match(tag):
        raise TailorError(f"{where}: tag: {tag!r} is not a valid tag")
    if not strings("packages"):
        raise TailorError(f"{where}: packages: list the Debian packages the image is made of")
    try:
        arch = parse_arch(data.get("arch", "x86_64"))
    except ValueError as e:
        raise TailorError(f"{where}: arch: {e}") from None
    for p in strings("exclude"):
        if not p.startswith("/") or ".." in Path(p).parts or p.rstrip("/") == "":
            raise TailorError(f"{where}: exclude: {p!r} must be an absolute path inside the image (not / itself)")
    for name in strings("overlay"):
        if name.startswith("/") or ".." in Path(name).parts or not (ROOTFS_DIR / name).is_dir():
            raise TailorError(f"{where}: overlay: {name!r} is not a directory under rootfs/")
    return ImageSpec(name=path.stem, path=path, tag=tag, packages=strings("packages"), keep=strings("keep"),
                     entrypoint=strings("entrypoint"), cmd=strings("cmd"), env=tuple(sorted(env.items())),
                     workdir=str(data.get("workdir", "/")), user=str(data.get("user", "")),
                     overlay=strings("overlay"), exclude=strings("exclude"), arch=arch)


def write_layout(layout: Path, tag: str, layers: list[Path], config: dict) -> str:
    """Write an image of the uncompressed tar *layers* (files moved into the layout as blobs) and the image
    *config* (its ``rootfs`` key set here) into the OCI layout *layout*, tagged *tag* (replacing an image
    of that tag); return the manifest digest. The config and manifest are compact key-sorted JSON."""
    descs = [dict(put_blob_file(layout, layer), mediaType=OCI_LAYER) for layer in layers]
    config = dict(config, rootfs={"type": "layers", "diff_ids": [d["digest"] for d in descs]})
    cdesc = dict(put_blob(layout, json.dumps(config, sort_keys=True).encode()), mediaType=OCI_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc, "layers": descs}
    mdesc = dict(put_blob(layout, json.dumps(manifest, sort_keys=True).encode()), mediaType=OCI_MANIFEST)
    return set_tag(layout, mdesc, tag)["digest"]


def image_config(*, entrypoint=(), cmd=(), env=(), workdir="/", user="", architecture="amd64") -> dict:
    cfg = {"Env": [f"{k}={v}" for k, v in env], "WorkingDir": workdir}
    if entrypoint:
        cfg["Entrypoint"] = list(entrypoint)
    if cmd:
        cfg["Cmd"] = list(cmd)
    if user:
        cfg["User"] = user
    return {"architecture": architecture, "os": "linux", "config": cfg}


def build_from_packages(spec: ImageSpec, layout: Path) -> str:
    """Build *spec*'s image into the OCI layout *layout* (tag ``spec.tag``); returns the manifest digest.

    The Debian packages' closure is extracted (:mod:`tailor.debian`, as for the rootfs stage); with
    ``keep``, only those paths and the ELF closure of the programs among them
    stay, with ``/etc/passwd`` and ``/etc/group``. Same packages, same bytes.
    """
    where = display_path(spec.path)
    epoch = source_date_epoch()
    closure = debian.closure(list(spec.packages), f"{where}: packages", arch=spec.arch.debian)
    debs = debian.download(closure, arch=spec.arch.debian)
    work = makedirs(layout.parent) / f".{layout.name}.build-{os.getpid()}"
    remove(work)
    try:
        full = work / "full"
        debian.extract(debs, full)
        tree = full
        if spec.keep:
            tree = makedirs(work / "slim")
            files = expand_files(full, spec.keep, f"{where}: keep")
            real = sorted({resolve_in_root(full, f) for f in files})
            keep = set(files) | set(real) | set(library_closure(full, elf_files(full, real)))
            for extra in ("/etc/passwd", "/etc/group"):
                if (full / extra[1:]).is_file():
                    keep.add(extra)
            for p in sorted(keep):
                copy_in(full, tree, p)
            if spec.user:  # the user the image runs as must exist in it
                add_users(tree, (spec.user.split(":")[0],))
        for p in spec.exclude:
            _exclude(tree, p)
        for name in spec.overlay:
            apply_overlay(tree, ROOTFS_DIR / name, f"{where}: overlay")
        normalise(tree, epoch)
        layer = work / "layer.tar"
        tree_tar(tree, layer, epoch)
        scratch = work / "layout"
        if layout.exists():
            shutil.copytree(layout, scratch)
        digest = write_layout(scratch, spec.tag, [layer],
                              image_config(entrypoint=spec.entrypoint, cmd=spec.cmd, env=spec.env,
                                           workdir=spec.workdir, user=spec.user, architecture=spec.arch.goarch))
        replace_dir(scratch, layout)
    finally:
        remove(work)
    print(f"[image:{spec.name}] {layout.name}:{spec.tag} is {digest}", file=sys.stderr)
    return digest


def _exclude(tree: Path, path: str) -> None:
    """Remove the in-image *path* from *tree*; its parent is followed through the tree's own symlinks
    (``/lib`` -> ``usr/lib``) but never out of the tree."""
    parent = Path(resolve_in_root(tree, str(Path(path).parent)))  # no symlink left in it, never above tree
    remove(tree / parent.relative_to("/") / Path(path).name)


def build_local(name: str) -> str:
    """Build ``images/<name>.yaml`` into ``out/images/<name>`` (``doit image:<name>``)."""
    return build_from_packages(load_spec(IMAGES_DIR / f"{name}.yaml"), paths.image_dir(name))


def spec_files() -> list[Path]:
    return sorted(IMAGES_DIR.glob("*.yaml"))
