"""Kernel sources: locate, verify, unpack once per hash, apply a recipe's patches to a copy.

A source's identity is its tarball's sha256 (plus the patches' hashes when a
recipe has patches). The default source is Debian's ``linux-source-6.1``
package, whose tarball lies under ``/usr/src``; its sha256 and package
version are pinned in ``kernel-sources.lock``. Debian point releases replace
that package, so a mismatch says what changed and how to re-pin
(``python -m tailor pin-source``). A recipe may instead pin a tarball by
``url`` or ``path`` with its sha256.

Unpacked trees live in ``out/src/<id>/tree`` and are never modified: kernels
are built out of tree, and patches go to a hard-linked copy (GNU patch
replaces files rather than writing through the links).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tailor.errors import TailorError
from tailor.recipe import Recipe, Source
from tailor.util import (PROJECT, atomic_path, display_path, file_lock, makedirs, out_dir, read_json,
                         remove, sha256_file, sha256_text, write_json)

LOCK_FILE = PROJECT / "kernel-sources.lock"
DEBIAN_SRC_DIR = Path("/usr/src")


@dataclass(frozen=True)
class SourceRef:
    """A kernel source pinned by sha256, before anything is read or unpacked."""

    sha256: str
    label: str
    kind: str
    tarball: Path | None = None
    url: str | None = None
    version: str | None = None
    patches: tuple = ()

    @property
    def id(self) -> str:
        """The source identity: the tarball's sha256, extended by the patches' hashes."""
        if not self.patches:
            return self.sha256
        return sha256_text(self.sha256 + "".join(f"\n{p.sha256}" for p in self.patches))

    @property
    def short(self) -> str:
        return self.id[:16]


def read_lock(path: Path = LOCK_FILE) -> dict:
    """The pinned Debian source packages: ``{package: {"version": ..., "sha256": ...}}``."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise TailorError(f"{path.name}: not valid JSON ({e}); restore it from git") from None
    if not isinstance(data, dict):
        raise TailorError(f"{path.name}: expected a JSON object of packages")
    return data


def debian_tarball(package: str) -> Path:
    return DEBIAN_SRC_DIR / f"{package}.tar.xz"


def installed_version(package: str) -> str | None:
    """The installed version of a Debian package, or None."""
    try:
        proc = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True)
    except OSError:
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def ref_for(source: Source, patches=(), lock_path: Path = LOCK_FILE) -> SourceRef:
    """The pinned reference for a recipe's ``kernel.source`` (reads no tarball)."""
    if source.kind == "debian":
        pin = read_lock(lock_path).get(source.package)
        if not pin or "sha256" not in pin:
            raise TailorError(f"{lock_path.name}: {source.package} is not pinned; run "
                              f"`python -m tailor pin-source {source.package}` after installing it")
        return SourceRef(sha256=pin["sha256"], label=f"{source.package} {pin.get('version', '?')}",
                         kind="debian", tarball=debian_tarball(source.package), version=pin.get("version"),
                         patches=tuple(patches))
    if source.kind == "path":
        return SourceRef(sha256=source.sha256, label=Path(source.path).name, kind="path",
                         tarball=Path(source.path), patches=tuple(patches))
    name = source.url.rstrip("/").rsplit("/", 1)[-1]
    return SourceRef(sha256=source.sha256, label=name, kind="url", url=source.url,
                     tarball=out_dir() / "cache" / "sources" / f"{source.sha256[:16]}-{name}",
                     patches=tuple(patches))


def recipe_ref(recipe: Recipe, lock_path: Path = LOCK_FILE) -> SourceRef:
    return ref_for(recipe.kernel.source, recipe.kernel.patches, lock_path)


def pin(package: str, lock_path: Path = LOCK_FILE) -> dict:
    """Record the installed *package*'s version and tarball sha256 in the lock file."""
    tarball = debian_tarball(package)
    if not tarball.exists():
        raise TailorError(f"{tarball}: missing; install the {package} package (./setup.sh does)")
    data = read_lock(lock_path)
    data[package] = {"version": installed_version(package) or "unknown", "sha256": sha256_file(tarball)}
    with atomic_path(lock_path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data[package]


def fetch(ref: SourceRef) -> Path:
    """Make sure the tarball is present and has the pinned sha256; return its path."""
    tarball = ref.tarball
    if ref.kind == "url" and not tarball.exists():
        makedirs(tarball.parent)
        print(f"tailor: downloading {ref.url}", flush=True)
        try:
            with atomic_path(tarball) as tmp, urllib.request.urlopen(ref.url, timeout=60) as resp, \
                    open(tmp, "wb") as f:
                shutil.copyfileobj(resp, f, 1 << 20)
        except OSError as e:
            raise TailorError(f"{ref.url}: download failed ({e}); check the URL or use a local `path`") from None
    if not tarball.exists():
        if ref.kind == "debian":
            raise TailorError(f"{tarball}: missing; install the Debian package "
                              f"{tarball.name.removesuffix('.tar.xz')} (./setup.sh does)")
        raise TailorError(f"{display_path(tarball)}: kernel source tarball does not exist; fix kernel.source.path")
    got = sha256_file(tarball)
    if got != ref.sha256:
        if ref.kind == "debian":
            package = tarball.name.removesuffix(".tar.xz")
            now = installed_version(package) or "unknown"
            raise TailorError(
                f"{tarball}: installed {package} {now} has sha256 {got[:16]}..., but kernel-sources.lock pins "
                f"{ref.version} ({ref.sha256[:16]}...); Debian replaced the package: re-pin with "
                f"`python -m tailor pin-source {package}` or pin a kernel.org tarball by url+sha256 in the recipe")
        if ref.kind == "url":
            remove(tarball)
        raise TailorError(f"{ref.url or display_path(tarball)}: sha256 is {got}, the recipe pins {ref.sha256}; "
                          f"fix kernel.source.sha256 or the tarball")
    return tarball


def src_root() -> Path:
    return out_dir() / "src"


def tree_path(ref: SourceRef) -> Path:
    """Where the (patched) tree of *ref* is unpacked."""
    return src_root() / ref.short / "tree"


def stamp_path(ref: SourceRef) -> Path:
    """The file that says the tree is complete (written last; the doit target)."""
    return src_root() / ref.short / "stamp.json"


def is_ready(ref: SourceRef) -> bool:
    try:
        return read_json(stamp_path(ref)).get("id") == ref.id and tree_path(ref).is_dir()
    except TailorError:
        return False


def _unpack(tarball: Path, dest: Path) -> None:
    """Extract *tarball* into *dest*, stripping its single top-level directory."""
    with tarfile.open(tarball) as tf:
        first = None
        for member in tf:
            first = member.name.split("/", 1)[0]
            break
    if not first:
        raise TailorError(f"{tarball}: empty archive")
    tmp = dest.with_name(dest.name + ".unpacking")
    remove(tmp)
    makedirs(tmp)
    proc = subprocess.run(["tar", "-xf", str(tarball), "-C", str(tmp), "--no-same-owner",
                           "--no-same-permissions"], capture_output=True, text=True)
    if proc.returncode != 0:
        remove(tmp)
        raise TailorError(f"{tarball}: cannot unpack ({(proc.stderr.strip().splitlines() or ['?'])[-1]})")
    top = tmp / first
    inner = top if top.is_dir() and len(os.listdir(tmp)) == 1 else tmp
    if not (inner / "Kconfig").is_file() or not (inner / "Makefile").is_file():
        remove(tmp)
        raise TailorError(f"{tarball}: not a Linux kernel source (no top-level Kconfig and Makefile)")
    remove(dest)
    os.rename(inner, dest)
    remove(tmp)


def _apply_patches(base: Path, dest: Path, patches) -> None:
    tmp = dest.with_name(dest.name + ".patching")
    remove(tmp)
    proc = subprocess.run(["cp", "-al", str(base), str(tmp)], capture_output=True, text=True)
    if proc.returncode != 0:
        remove(tmp)
        raise TailorError(f"cannot copy {base} for patching: {proc.stderr.strip()}")
    for p in patches:
        if not p.path.is_file():
            remove(tmp)
            raise TailorError(f"{display_path(p.path)}: patch file does not exist; fix kernel.patches")
        got = sha256_file(p.path)
        if got != p.sha256:
            remove(tmp)
            raise TailorError(f"{p.path.name}: sha256 is {got}, the recipe pins {p.sha256}; update kernel.patches")
        for dry in (True, False):
            cmd = ["patch", "-p1", "--batch", "--forward", "--no-backup-if-mismatch", "-i", str(p.path.resolve())]
            proc = subprocess.run(cmd + (["--dry-run"] if dry else []), cwd=tmp, capture_output=True, text=True)
            if proc.returncode != 0:
                remove(tmp)
                lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "FAILED" in ln or "error" in ln]
                detail = lines[0] if lines else (proc.stdout.strip().splitlines() or ["does not apply"])[-1]
                raise TailorError(f"{display_path(p.path)}: patch does not apply cleanly to the kernel source "
                                  f"({detail}); refresh it for this source or remove it from kernel.patches")
    remove(dest)
    os.rename(tmp, dest)


def prepare(ref: SourceRef) -> Path:
    """Verify, unpack (and patch) the source once; return the tree. Safe under concurrent callers."""
    if is_ready(ref):
        return tree_path(ref)
    base_ref = SourceRef(ref.sha256, ref.label, ref.kind, ref.tarball, ref.url, ref.version)
    with file_lock(src_root() / f".{ref.short}.lock", f"kernel source {ref.label}"):
        if is_ready(ref):
            return tree_path(ref)
        if not is_ready(base_ref):
            tarball = fetch(base_ref)
            print(f"tailor: unpacking {ref.label} into {tree_path(base_ref).parent}", flush=True)
            makedirs(tree_path(base_ref).parent)
            _unpack(tarball, tree_path(base_ref))
            write_json(stamp_path(base_ref), {"id": base_ref.id, "sha256": base_ref.sha256,
                                              "label": base_ref.label, "version": base_ref.version})
        if ref.patches:
            makedirs(tree_path(ref).parent)
            _apply_patches(tree_path(base_ref), tree_path(ref), ref.patches)
            write_json(stamp_path(ref), {"id": ref.id, "sha256": ref.sha256, "label": ref.label,
                                         "patches": [p.path.name for p in ref.patches]})
    return tree_path(ref)


def tasks(recipes, action):
    """doit tasks ``source:<id>``: verify and unpack each distinct kernel source once."""
    from doit.tools import config_changed

    refs = {}
    for r in recipes:
        ref = recipe_ref(r)
        refs.setdefault(ref.short, ref)
    for short, ref in sorted(refs.items()):
        deps = [str(p.path) for p in ref.patches]
        if ref.kind in ("debian", "path") and ref.tarball.exists():
            deps.append(str(ref.tarball))
        yield {
            "basename": "source", "name": short,
            "doc": f"verify and unpack the kernel source {ref.label}",
            "actions": [action(prepare, ref)],
            "targets": [str(stamp_path(ref))],
            "uptodate": [config_changed(ref.id)],
            "file_dep": deps,
            "verbosity": 2,
        }
