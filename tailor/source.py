"""Kernel sources: obtain, verify, unpack once per hash, apply a recipe's patches to a copy.

A source's identity is its tarball's sha256 (plus the patches' hashes when a
recipe has patches). The default source is Debian's ``linux-source-6.1``
package, pinned in ``kernel-sources.lock`` by exact version, the .deb's sha256
and the sha256 of the tarball it carries. The pin holds whatever the machine
has installed: the tarball is used from ``/usr/src`` only when it is the pinned
one; otherwise tailor fetches the pinned version itself with
``apt-get download PACKAGE=VERSION`` (nothing is installed), checks the .deb
and the tarball against the lock and keeps the tarball in
``out/cache/sources/debian/``. When Debian's archive no longer offers the
pinned version, the error names the versions it offers and the command that
moves the pin (``python -m tailor pin-source PACKAGE[=VERSION]``). A recipe
may instead pin a tarball by ``url`` or ``path`` with its sha256.

Unpacked trees live in ``out/src/<id>/tree`` and are never modified: kernels
are built out of tree, and patches go to a hard-linked copy (GNU patch
replaces files rather than writing through the links).

apt is reached through :mod:`tailor.debian` (its sandbox rule: apt reads the host's package lists
and writes none of the host's state).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tailor import debian, paths
from tailor.errors import TailorError
from tailor.recipe import Recipe, Source
from tailor.records.stages import SourceStamp
from tailor.util import (PROJECT, atomic_path, display_path, file_lock, makedirs, remove, sha256_file,
                         sha256_text)

LOCK_FILE = PROJECT / "kernel-sources.lock"
DEBIAN_SRC_DIR = Path("/usr/src")
"""Where Debian's linux-source package installs its tarball (used only when it is the pinned one)."""


@dataclass(frozen=True)
class SourceRef:
    """A kernel source pinned by sha256, before anything is read or unpacked.

    For a Debian package, *tarball* is its place in tailor's cache and *package*,
    *version* and *deb_sha256* say what to fetch."""

    sha256: str
    label: str
    kind: str
    tarball: Path | None = None
    url: str | None = None
    version: str | None = None
    patches: tuple = ()
    package: str | None = None
    deb_sha256: str | None = None

    @property
    def id(self) -> str:
        """The source identity: the tarball's sha256, extended by the patches' hashes."""
        if not self.patches:
            return self.sha256
        return sha256_text(self.sha256 + "".join(f"\n{p.sha256}" for p in self.patches))

    @property
    def short(self) -> str:
        return self.id[:16]


def read_lock(path: Path | None = None) -> dict:
    """The pinned Debian source packages: ``{package: {"version", "sha256", "deb_sha256"}}``
    (from *path*, default :data:`LOCK_FILE`, read when called)."""
    path = path or LOCK_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise TailorError(f"{path.name}: not valid JSON ({e}); restore it from git") from None
    if not isinstance(data, dict):
        raise TailorError(f"{path.name}: expected a JSON object of packages")
    return data


def installed_tarball(package: str) -> Path:
    """Where the installed Debian *package* keeps its tarball."""
    return DEBIAN_SRC_DIR / f"{package}.tar.xz"


def debian_cache() -> Path:
    return paths.cache_dir("sources") / "debian"


def cached_tarball(package: str, version: str) -> Path:
    """Where tailor keeps the tarball of *package* at *version* once fetched and verified."""
    return debian_cache() / f"{package}_{version}" / f"{package}.tar.xz"


def ref_for(source: Source, patches=(), lock_path: Path | None = None) -> SourceRef:
    """The pinned reference for a recipe's ``kernel.source`` (reads no tarball)."""
    lock_path = lock_path or LOCK_FILE
    if source.kind == "debian":
        lock = read_lock(lock_path)
        pin = lock.get(source.package)
        if not isinstance(pin, dict) or not pin.get("sha256") or not pin.get("version"):
            pinned = ", ".join(sorted(lock)) or "none"
            raise TailorError(f"{lock_path.name}: {source.package} is not pinned (pinned: {pinned}); check the "
                              f"name, or pin it with `python -m tailor pin-source {source.package}`")
        return SourceRef(sha256=pin["sha256"], label=f"{source.package} {pin['version']}", kind="debian",
                         tarball=cached_tarball(source.package, pin["version"]), version=pin["version"],
                         patches=tuple(patches), package=source.package, deb_sha256=pin.get("deb_sha256"))
    if source.kind == "path":
        return SourceRef(sha256=source.sha256, label=Path(source.path).name, kind="path",
                         tarball=Path(source.path), patches=tuple(patches))
    name = source.url.rstrip("/").rsplit("/", 1)[-1]
    return SourceRef(sha256=source.sha256, label=name, kind="url", url=source.url,
                     tarball=paths.cache_dir("sources") / f"{source.sha256[:16]}-{name}",
                     patches=tuple(patches))


def recipe_ref(recipe: Recipe, lock_path: Path | None = None) -> SourceRef:
    """The pinned reference for *recipe*'s kernel source; an unpinned package is one line naming the recipe."""
    try:
        return ref_for(recipe.kernel.source, recipe.kernel.patches, lock_path)
    except TailorError as e:
        if recipe.kernel.source.kind != "debian" or recipe.path is None:
            raise
        raise TailorError(f"{display_path(recipe.path)}: kernel.source.package: {e}") from None


# --------------------------------------------------------------------------
# Debian's archive (through tailor.debian, the one apt client)


def _gone(package: str, version: str) -> TailorError:
    offered = debian.archive_versions(package)
    what = f"it offers {', '.join(offered)}" if offered else "apt knows no version of it"
    return TailorError(
        f"{LOCK_FILE.name} pins {package} {version}, which Debian's archive does not offer ({what}); "
        f"run `apt-get update` if the package lists are old, else re-pin with "
        f"`python -m tailor pin-source {package}` (newest) or `python -m tailor pin-source {package}=VERSION`")


def download_debian(package: str, version: str, deb_sha256: str | None = None,
                    tarball_sha256: str | None = None) -> tuple[Path, str, str]:
    """Fetch *package* at exactly *version* with ``apt-get download`` (nothing is installed), check the
    .deb and its tarball against the given sha256s (when given) and keep the tarball in the cache.

    Returns ``(tarball, deb sha256, tarball sha256)``. Nothing reaches the cache unless it matches."""
    final = cached_tarball(package, version)
    makedirs(debian_cache())
    tmp = Path(tempfile.mkdtemp(prefix=f".{package}_{version}.", dir=debian_cache()))
    try:
        print(f"tailor: downloading {package} {version} from Debian's archive (apt-get download)", flush=True)
        try:
            deb = debian.fetch_exact(package, version, tmp)
        except debian.NotInArchive:
            raise _gone(package, version) from None
        got_deb = sha256_file(deb)
        if deb_sha256 and got_deb != deb_sha256:
            raise TailorError(f"{deb.name}: sha256 is {got_deb}, {LOCK_FILE.name} pins {deb_sha256}; the archive "
                              f"serves another build of {package} {version}: re-pin with "
                              f"`python -m tailor pin-source {package}={version}` if you trust it")
        part = tmp / f"{package}.tar.xz"
        got = debian.extract_member(deb, f"usr/src/{package}.tar.xz", part, "it is not a Linux source package")
        if tarball_sha256 and got != tarball_sha256:
            raise TailorError(f"{deb.name}: its tarball's sha256 is {got}, {LOCK_FILE.name} pins "
                              f"{tarball_sha256}; re-pin with `python -m tailor pin-source {package}={version}` "
                              f"if you trust it")
        makedirs(final.parent)
        os.replace(part, final)
        return final, got_deb, got
    finally:
        remove(tmp)


def pin(spec: str, lock_path: Path | None = None) -> dict:
    """Pin ``PACKAGE[=VERSION]`` from Debian's archive (default: its newest version) in the lock file.

    Downloads the .deb (installs nothing), records its version, its sha256 and the sha256 of the
    tarball it carries, and keeps the tarball in the cache for the next build."""
    package, _, version = spec.partition("=")
    if not package:
        raise TailorError(f"pin-source {spec!r}: name a package, e.g. linux-source-6.1 or linux-source-6.1=VERSION")
    offered = debian.archive_versions(package)
    if not offered:
        raise TailorError(f"pin-source: apt knows no version of {package}; check the name, or run "
                          f"`apt-get update` first")
    if version and version not in offered:
        raise TailorError(f"pin-source: Debian's archive does not offer {package} {version}; it offers "
                          f"{', '.join(offered)}")
    version = version or offered[0]
    lock_path = lock_path or LOCK_FILE
    _, deb_sha, tar_sha = download_debian(package, version)
    data = read_lock(lock_path)
    data[package] = {"version": version, "sha256": tar_sha, "deb_sha256": deb_sha}
    with atomic_path(lock_path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data[package]


def _debian_tarball(ref: SourceRef) -> Path:
    """The pinned Debian tarball: the installed one if it matches, else the cache, else fetched."""
    installed = installed_tarball(ref.package)
    if installed.is_file() and sha256_file(installed) == ref.sha256:
        return installed
    cached = ref.tarball
    if cached.is_file():
        if sha256_file(cached) == ref.sha256:
            return cached
        print(f"tailor: {display_path(cached)} is not the pinned tarball; fetching it again", flush=True)
        remove(cached)
    return download_debian(ref.package, ref.version, ref.deb_sha256, ref.sha256)[0]


def fetch(ref: SourceRef) -> Path:
    """Make sure the tarball is present and has the pinned sha256; return its path."""
    if ref.kind == "debian":
        return _debian_tarball(ref)
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
        raise TailorError(f"{display_path(tarball)}: kernel source tarball does not exist; fix kernel.source.path")
    got = sha256_file(tarball)
    if got != ref.sha256:
        if ref.kind == "url":
            remove(tarball)
        raise TailorError(f"{ref.url or display_path(tarball)}: sha256 is {got}, the recipe pins {ref.sha256}; "
                          f"fix kernel.source.sha256 or the tarball")
    return tarball


def tree_path(ref: SourceRef) -> Path:
    """Where the (patched) tree of *ref* is unpacked."""
    return paths.src_root() / ref.short / "tree"


def stamp_path(ref: SourceRef) -> Path:
    """The file that says the tree is complete (written last; the doit target)."""
    return paths.src_root() / ref.short / "stamp.json"


def is_ready(ref: SourceRef, say: bool = True) -> bool:
    """True when the tree of *ref* is complete: its stamp (:class:`tailor.records.stages.SourceStamp`,
    read strictly) names *ref*. A damaged stamp is said in one line (unless not *say*) and the tree is
    unpacked again."""
    path = stamp_path(ref)
    if not path.is_file():
        return False
    try:
        stamp = SourceStamp.load(path)
    except TailorError as e:
        if say:
            print(f"tailor: {e}", file=sys.stderr)
        return False
    return stamp.id == ref.id and tree_path(ref).is_dir()


def _write_stamp(ref: SourceRef) -> None:
    """Say that the tree of *ref* is complete (written last)."""
    SourceStamp(id=ref.id, sha256=ref.sha256, label=ref.label, version=ref.version,
                patches=[p.path.name for p in ref.patches]).save(stamp_path(ref))


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
    if is_ready(ref, say=False):
        return tree_path(ref)
    base_ref = dataclasses.replace(ref, patches=())
    with file_lock(paths.src_root() / f".{ref.short}.lock", f"kernel source {ref.label}"):
        if is_ready(ref):
            return tree_path(ref)
        if not is_ready(base_ref):
            tarball = fetch(base_ref)
            print(f"tailor: unpacking {ref.label} into {tree_path(base_ref).parent}", flush=True)
            makedirs(tree_path(base_ref).parent)
            _unpack(tarball, tree_path(base_ref))
            _write_stamp(base_ref)
        if ref.patches:
            makedirs(tree_path(ref).parent)
            _apply_patches(tree_path(base_ref), tree_path(ref), ref.patches)
            _write_stamp(ref)
    return tree_path(ref)
