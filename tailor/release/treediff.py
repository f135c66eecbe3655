"""Checksums and byte-for-byte comparison of directory trees: SHA256SUMS and what differs where.

:func:`compare_trees` is how :mod:`tailor.release.repro` tells two builds of a release apart, and
:func:`write_sums` / :func:`check_sums` write and check a release version's ``SHA256SUMS``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tailor.errors import TailorError
from tailor.release.names import SUMS_NAME, render
from tailor.util import sha256_file, write_atomic


def walk_files(root: Path, hidden: bool = True) -> list[str]:
    """Every file (and symlink) under *root*, as sorted POSIX relative paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        if not hidden:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            if hidden or not name.startswith("."):
                out.append((rel_dir / name).as_posix())
    return sorted(out, key=lambda p: p.encode())


def file_sums(root: str | os.PathLike, exclude: tuple[str, ...] = (SUMS_NAME,)) -> list[tuple[str, str]]:
    """``(relative path, sha256)`` of every visible file under *root*, sorted; dot-files and *exclude* left out."""
    root = Path(root)
    return [(rel, sha256_file(root / rel)) for rel in walk_files(root, hidden=False) if rel not in exclude]


def write_sums(root: str | os.PathLike) -> Path:
    """Write ``<root>/SHA256SUMS`` over every file under *root* (``sha256sum -c`` format); return its path."""
    root = Path(root)
    text = render("checksums.j2", sums=file_sums(root))
    return write_atomic(root / SUMS_NAME, text)


def check_sums(root: str | os.PathLike) -> list[str]:
    """The problems ``sha256sum -c SHA256SUMS`` would report in *root* (empty when it passes)."""
    root = Path(root)
    problems = []
    try:
        lines = (root / SUMS_NAME).read_text().splitlines()
    except OSError as e:
        return [f"{SUMS_NAME}: cannot read ({e.strerror})"]
    for line in lines:
        digest, sep, rel = line.partition("  ")
        if not sep or not re.match(r"^[0-9a-f]{64}$", digest):
            problems.append(f"{SUMS_NAME}: malformed line {line!r}")
        elif not (root / rel).is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(root / rel) != digest:
            problems.append(f"{rel}: sha256 differs")
    return problems


def first_difference(a: str | os.PathLike, b: str | os.PathLike, chunk: int = 1 << 20) -> int | None:
    """The offset of the first byte where files *a* and *b* differ (a length difference counts); None if equal."""
    offset = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ba, bb = fa.read(chunk), fb.read(chunk)
            if ba != bb:
                n = min(len(ba), len(bb))
                step = 4096
                for i in range(0, n, step):
                    if ba[i:i + step] != bb[i:i + step]:
                        for j in range(i, min(i + step, n)):
                            if ba[j] != bb[j]:
                                return offset + j
                return offset + n
            if not ba:
                return None
            offset += len(ba)


def compare_trees(a: str | os.PathLike, b: str | os.PathLike) -> list[dict]:
    """Every difference between directory trees *a* and *b*, byte for byte, sorted by path.

    Each difference is ``{"path", "kind", "offset", "size_a", "size_b"}``:
    ``kind`` is ``differs`` (``offset`` is the first differing byte),
    ``only in a``, ``only in b`` or ``type`` (a file in one tree, a symlink or
    directory in the other). Identical trees give ``[]``.
    """
    a, b = Path(a), Path(b)
    for d in (a, b):
        if not d.is_dir():
            raise TailorError(f"{d}: not a directory; nothing to compare")
    files_a, files_b = set(walk_files(a)), set(walk_files(b))
    diffs = []
    for rel in sorted(files_a | files_b, key=lambda p: p.encode()):
        pa, pb = a / rel, b / rel
        entry = {"path": rel, "kind": "", "offset": None,
                 "size_a": pa.lstat().st_size if rel in files_a else None,
                 "size_b": pb.lstat().st_size if rel in files_b else None}
        if rel not in files_b:
            entry["kind"] = "only in a"
        elif rel not in files_a:
            entry["kind"] = "only in b"
        elif pa.is_symlink() or pb.is_symlink():
            if not (pa.is_symlink() and pb.is_symlink()):
                entry["kind"] = "type"
            elif os.readlink(pa) != os.readlink(pb):
                entry["kind"] = "differs"
                entry["offset"] = first_difference_bytes(os.readlink(pa).encode(), os.readlink(pb).encode())
        else:
            offset = first_difference(pa, pb)
            if offset is not None:
                entry["kind"], entry["offset"] = "differs", offset
        if entry["kind"]:
            diffs.append(entry)
    return diffs


def first_difference_bytes(x: bytes, y: bytes) -> int | None:
    """The first offset where byte strings *x* and *y* differ; None if equal."""
    for i, (p, q) in enumerate(zip(x, y)):
        if p != q:
            return i
    return None if len(x) == len(y) else min(len(x), len(y))


def describe_difference(d: dict) -> str:
    """One line for a :func:`compare_trees` entry."""
    if d["kind"] == "differs":
        return (f"{d['path']}: differs at byte offset {d['offset']} (0x{d['offset']:x}); "
                f"sizes {d['size_a']} and {d['size_b']}")
    return f"{d['path']}: {d['kind']}"
