"""Extracted root trees: in-tree paths copied with their links, globs, ELF files, overlays, users, times.

The rootfs stage (:mod:`tailor.rootfs`) and images built from Debian packages
(:mod:`tailor.image.build`) both turn a tree of extracted packages into the tree of an image;
these are the steps they share. Every function works on a directory of the build host that
holds a root tree, never on the host system itself; paths inside the tree are written as
*in-tree* absolute paths (``"/usr/bin/redis-server"``), as in :mod:`tailor.elf`.

- :func:`copy_in` copies an in-tree path from one tree to another, recreating every symlink on
  the way and what it points to; :func:`make_dir_in` creates a directory (and its parents) only.
- :func:`expand_files` turns glob patterns into in-tree paths; :func:`elf_files` picks the ELF
  files among paths and inside directories (the programs whose library closure is kept).
- :func:`apply_overlay` copies a directory of the project over a tree, refusing symlinks that
  leave it, special files, and writes through a symlink of the tree.
- :func:`add_users` appends system users and groups; :func:`has_user` asks for one.
- :func:`normalise` clamps every time to ``SOURCE_DATE_EPOCH`` and, as root, makes root the owner.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
from pathlib import Path

from tailor.elf import read_dynamic
from tailor.errors import TailorError
from tailor.util import display_path, makedirs


def _link_target(tree: Path, path: str) -> str:
    """Where the symlink at in-tree *path* points (one step, not followed further), as a normalised
    in-tree absolute path (``..`` stops at the tree's root). :func:`tailor.elf.resolve_in_root`
    resolves a whole path; :func:`copy_in` needs each link on the way, to recreate it."""
    text = os.readlink(tree / path.lstrip("/"))
    base = text if text.startswith("/") else os.path.join(os.path.dirname(path), text)
    return posixpath.normpath("/" + base.lstrip("/"))


def copy_in(tree: Path, stage: Path, path: str, depth: int = 0) -> None:
    """Copy in-tree *path* from *tree* to *stage*, recreating symlinks on the way (and their targets)."""
    if depth > 40:
        raise TailorError(f"{path}: too many levels of symbolic links in the packages")
    parts = [p for p in path.split("/") if p]
    cur = ""
    for i, part in enumerate(parts):
        cur += "/" + part
        src = tree / cur.lstrip("/")
        dst = stage / cur.lstrip("/")
        rest = "/".join(parts[i + 1:])
        if src.is_symlink():
            if not dst.is_symlink() and not dst.exists():
                os.symlink(os.readlink(src), dst)
            target = _link_target(tree, cur)
            copy_in(tree, stage, target + ("/" + rest if rest else ""), depth + 1)
            return
        if not src.exists():
            raise TailorError(f"{path}: not in the packages' files")
        if i < len(parts) - 1 or src.is_dir():
            if dst.is_symlink():
                raise TailorError(f"{cur}: is a symlink in the image but a directory in the packages")
            if not dst.exists():
                dst.mkdir()
                os.chmod(dst, stat.S_IMODE(src.stat().st_mode))
            if i == len(parts) - 1:
                for child in sorted(os.listdir(src)):
                    copy_in(tree, stage, f"{cur}/{child}", depth)
        elif not dst.exists():
            shutil.copy2(src, dst, follow_symlinks=False)


def make_dir_in(tree: Path, stage: Path, path: str) -> None:
    """Create in-tree directory *path* of *tree* in *stage* with its parents (modes as in *tree*), without
    its content; a symlink on the way is recreated with its target, as :func:`copy_in` does."""
    cur = ""
    for part in [p for p in path.split("/") if p]:
        cur += "/" + part
        src, dst = tree / cur.lstrip("/"), stage / cur.lstrip("/")
        if src.is_symlink():
            copy_in(tree, stage, path)
            return
        if not dst.exists():
            dst.mkdir()
            os.chmod(dst, stat.S_IMODE(src.stat().st_mode))


def expand_files(tree: Path, patterns: tuple[str, ...], origin: str) -> list[str]:
    """The in-tree absolute paths the glob *patterns* match in *tree* (a dangling symlink named exactly
    counts); a pattern that matches nothing is a TailorError naming *origin*."""
    out = []
    for pat in patterns:
        matches = sorted("/" + str(p.relative_to(tree)) for p in tree.glob(pat.lstrip("/")))
        if not matches and (tree / pat.lstrip("/")).is_symlink():
            matches = [pat]
        if not matches:
            raise TailorError(f"{origin}: {pat!r} matches nothing in the packages' files")
        out += matches
    return out


def elf_files(tree: Path, in_tree: list[str]) -> list[str]:
    """The ELF files among *in_tree* and inside the directories among them (in-tree absolute paths)."""
    out = []
    for path in in_tree:
        host = tree / path.lstrip("/")
        if host.is_symlink():
            continue
        if host.is_dir():
            for dirpath, dirnames, filenames in os.walk(host):
                dirnames.sort()
                for name in sorted(filenames):
                    p = Path(dirpath) / name
                    if p.is_file() and not p.is_symlink() and read_dynamic(p) is not None:
                        out.append("/" + str(p.relative_to(tree)))
        elif host.is_file() and read_dynamic(host) is not None:
            out.append(path)
    return out


def _check_overlay(overlay: Path, origin: str) -> list[Path]:
    """Every file of an overlay directory, refusing symlinks that escape it and special files."""
    files = []
    for dirpath, dirnames, filenames in os.walk(overlay):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(overlay)
            if p.is_symlink():
                text = os.readlink(p)
                if not text.startswith("/"):
                    depth = len(rel.parts) - 1
                    for part in Path(text).parts:
                        depth += -1 if part == ".." else (0 if part == "." else 1)
                        if depth < 0:
                            raise TailorError(f"{display_path(p)}: symlink to {text!r} points outside the rootfs; "
                                              f"use a path inside it")
                files.append(p)
            elif p.is_file():
                files.append(p)
            elif not p.is_dir():
                raise TailorError(f"{display_path(p)}: not a regular file, directory or symlink; remove it")
    return files


def apply_overlay(stage: Path, overlay: Path, origin: str, keep_existing: bool = False) -> None:
    """Copy *overlay* over *stage*; never writes through a symlink of the stage.
    With *keep_existing*, files the stage already has are left alone (the overlay only fills gaps)."""
    if not overlay.is_dir():
        raise TailorError(f"{origin}: overlay directory {display_path(overlay)} does not exist")
    for p in _check_overlay(overlay, origin):
        rel = p.relative_to(overlay)
        dst = stage / rel
        parent = stage
        for part in rel.parts[:-1]:
            parent = parent / part
            if parent.is_symlink():
                raise TailorError(f"{display_path(p)}: would be written through the symlink /{parent.relative_to(stage)} "
                                  f"of the image; put it at the symlink's target instead")
            if not parent.exists():
                parent.mkdir(mode=0o755)
        if keep_existing and (dst.is_symlink() or dst.is_file()):
            continue
        if dst.is_symlink() or dst.is_file():
            dst.unlink()
        elif dst.is_dir() and not p.is_dir() or (p.is_symlink() and dst.is_dir()):
            shutil.rmtree(dst)
        if p.is_symlink():
            os.symlink(os.readlink(p), dst)
        elif p.is_dir():
            dst.mkdir(exist_ok=True)
            os.chmod(dst, 0o755)
        else:
            shutil.copyfile(p, dst)
            os.chmod(dst, 0o755 if os.access(p, os.X_OK) else 0o644)


FIRST_SYSTEM_ID = 100


def has_user(stage_dir: Path, name: str) -> bool:
    """Whether the tree's /etc/passwd has a user *name*."""
    passwd = stage_dir / "etc" / "passwd"
    return passwd.is_file() and any(line.split(":", 1)[0] == name for line in passwd.read_text().splitlines())


def add_users(stage_dir: Path, users: tuple[str, ...]) -> None:
    """Append system users (each with a group of the same name) to the image's /etc/passwd and /etc/group."""
    if not users:
        return
    etc = makedirs(stage_dir / "etc")
    for name in ("passwd", "group"):
        if (etc / name).is_symlink():
            raise TailorError(f"/etc/{name} is a symlink in the image; tailor will not write through it")
    passwd = (etc / "passwd").read_text() if (etc / "passwd").exists() else ""
    group = (etc / "group").read_text() if (etc / "group").exists() else ""
    used = {int(f.split(":")[2]) for f in passwd.splitlines() + group.splitlines()
            if f.count(":") >= 2 and f.split(":")[2].isdigit()}
    next_id = FIRST_SYSTEM_ID
    for user in users:
        if any(line.split(":", 1)[0] == user for line in passwd.splitlines()):
            continue
        while next_id in used:
            next_id += 1
        used.add(next_id)
        passwd += f"{user}:x:{next_id}:{next_id}:{user}:/nonexistent:/bin/false\n"
        group += f"{user}:x:{next_id}:\n"
    (etc / "passwd").write_text(passwd)
    (etc / "group").write_text(group)


def normalise(stage: Path, epoch: int, owners: bool = False) -> None:
    """Clamp every mtime to *epoch* and, as root, make root own everything (deterministic images);
    with *owners* (an image's tree), the owners stay as the layers set them."""
    is_root = os.geteuid() == 0 and not owners
    for dirpath, dirnames, filenames in os.walk(stage, topdown=False):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if is_root:
                os.lchown(p, 0, 0)
            os.utime(p, (epoch, epoch), follow_symlinks=False)
    if is_root:
        os.lchown(stage, 0, 0)
    os.utime(stage, (epoch, epoch))
