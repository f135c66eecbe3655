"""Applying an image's layers to a tree: OCI whiteouts, and nothing written outside the tree.

:func:`unpack` applies every layer of a cached image in order (:func:`apply_layer`);
:func:`merge_tree` copies Debian packages over an image tree. Symlinks met on the way resolve inside
the tree; absolute or ``..`` entries, climbing symlinks and hard links out are refused.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import sys
import tarfile
from pathlib import Path

from tailor.elf import resolve_in_root
from tailor.errors import TailorError
from tailor.image.cache import Image
from tailor.image.layout import blob_path
from tailor.image.reference import LAYER_TYPES
from tailor.util import makedirs

WHITEOUT = ".wh."
"""A layer entry ``.wh.NAME`` removes NAME of the lower layers."""

OPAQUE = ".wh..wh..opq"
"""A layer entry that empties its directory of what the lower layers put there."""


def _safe_name(name: str, where: str) -> str:
    """The entry's path relative to the tree ('' for the root); absolute or `..` paths are refused."""
    if name.startswith("/") or ".." in name.split("/"):
        raise TailorError(f"{where}: entry {name!r} would write outside the image tree (absolute or `..` path); "
                          f"the image is unsafe, tailor will not use it")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts)


def _link_escapes(entry_path: str, target: str) -> bool:
    """True when the relative symlink *target* of the entry at *entry_path* climbs above the tree."""
    if target.startswith("/"):
        return False  # absolute targets are taken inside the image (chroot semantics)
    depth = len(entry_path.split("/")) - 1
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def _parent(root: Path, rel: str, where: str, create: bool = True) -> Path:
    """The host directory that will hold in-tree *rel*; symlinks on the way resolve inside the tree."""
    parent = os.path.dirname(rel)
    real = resolve_in_root(root, "/" + parent) if parent else "/"
    host = root / real.lstrip("/")
    if not host.is_dir() and create:
        if host.exists() or host.is_symlink():
            os.unlink(host)
        os.makedirs(host, mode=0o755)
    return host


def _clear(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _own(path: Path, info: tarfile.TarInfo) -> None:
    if os.geteuid() == 0:
        os.lchown(path, info.uid, info.gid)


def apply_layer(root: Path, blob: Path, kind: str, where: str) -> list[str]:
    """Apply one layer tar to *root*: whiteouts first-class, nothing outside *root*; returns skipped devices."""
    skipped: list[str] = []
    created: set[str] = set()
    dir_modes: list[tuple[Path, tarfile.TarInfo]] = []
    opener = gzip.open if kind == "gzip" else open
    try:
        with opener(blob, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tf:
            for info in tf:
                rel = _safe_name(info.name, where)
                if not rel:
                    continue
                base = os.path.basename(rel)
                if base == OPAQUE:
                    d = _parent(root, rel, where, create=False)
                    for child in list(d.iterdir()) if d.is_dir() else []:
                        crel = os.path.join(os.path.dirname(rel), child.name)
                        if crel not in created:
                            _clear(child)
                    continue
                if base.startswith(WHITEOUT):
                    gone = _parent(root, rel, where, create=False) / base[len(WHITEOUT):]
                    if gone.exists() or gone.is_symlink():
                        _clear(gone)
                    continue
                if info.issym() and _link_escapes(rel, info.linkname):
                    raise TailorError(f"{where}: symlink {rel!r} -> {info.linkname!r} leads outside the image tree; "
                                      f"the image is unsafe, tailor will not use it")
                if info.ischr() or info.isblk():
                    skipped.append("/" + rel)
                    continue
                host = _parent(root, rel, where) / base
                created.add(rel)
                if info.isdir():
                    if host.is_symlink() or (host.exists() and not host.is_dir()):
                        host.unlink()
                    if not host.exists():
                        os.mkdir(host, 0o700)
                    _own(host, info)
                    dir_modes.append((host, info))
                    continue
                _clear(host)
                if info.issym():
                    os.symlink(info.linkname, host)
                    _own(host, info)
                elif info.islnk():
                    target = _safe_name(info.linkname, where)
                    if not target:
                        raise TailorError(f"{where}: hard link {rel!r} to the tree's root; the image is unsafe")
                    tparent = os.path.dirname(target)
                    real = (resolve_in_root(root, "/" + tparent) if tparent else "/").rstrip("/")
                    thost = root / (real + "/" + os.path.basename(target)).lstrip("/")
                    if not (thost.is_file() or thost.is_symlink()):
                        raise TailorError(f"{where}: hard link {rel!r} -> {info.linkname!r}: no such file earlier "
                                          f"in the image")
                    os.link(thost, host, follow_symlinks=False)
                elif info.isfifo():
                    os.mkfifo(host, 0o600)
                    _own(host, info)
                    os.chmod(host, stat.S_IMODE(info.mode))
                elif info.isreg():
                    src = tf.extractfile(info)
                    with open(host, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    _own(host, info)
                    os.chmod(host, info.mode & 0o7777)
                else:
                    skipped.append("/" + rel)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError) as e:
        if isinstance(e, OSError) and e.errno == 28:
            raise TailorError(f"{root}: no space left on device; free some space and rerun") from None
        raise TailorError(f"{where}: cannot read the layer ({e}); the image is damaged") from None
    for host, info in reversed(dir_modes):
        os.chmod(host, info.mode & 0o7777)
    return skipped


def merge_tree(src: Path, root: Path, where: str) -> None:
    """Copy the extracted packages in *src* over the image tree *root*, following the image's directory
    symlinks inside the tree (a merged-/usr image keeps /bin -> usr/bin)."""
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(src))
            host = _parent(root, rel, where) / name
            st = p.lstat()
            if stat.S_ISDIR(st.st_mode):
                if host.is_dir():
                    continue
                _clear(host)
                os.mkdir(host, stat.S_IMODE(st.st_mode))
            elif stat.S_ISLNK(st.st_mode):
                _clear(host)
                os.symlink(os.readlink(p), host)
            else:
                _clear(host)
                shutil.copy2(p, host)


def unpack(img: Image, dest: Path, origin: str) -> list[str]:
    """Apply the image's layers in order to the empty directory *dest*; returns the device nodes skipped."""
    makedirs(dest)
    skipped = []
    layers = img.manifest["layers"]
    for i, layer in enumerate(layers):
        where = f"{origin}: rootfs.image: {img.ref.text}: layer {i} ({layer['digest'][7:19]})"
        print(f"tailor: applying layer {i + 1}/{len(layers)} of {img.ref.unpinned} "
              f"({layer.get('size', 0) / 1e6:.1f} MB)", file=sys.stderr, flush=True)
        skipped += apply_layer(dest, blob_path(img.layout, layer["digest"]), LAYER_TYPES[layer["mediaType"]], where)
    return skipped
