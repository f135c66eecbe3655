"""``images.lock``: the digest each image reference written without one was pinned at.

The lock file's path is :data:`LOCK_FILE`, looked up each time a function is called (never bound as
a default argument), so pointing it elsewhere (a test, a copy of the project) moves every reader
and writer. :func:`obtain` is the rootfs stage's entry point: parse, pin, fetch and verify.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tailor import paths
from tailor.errors import TailorError
from tailor.image import cache
from tailor.image.cache import Image
from tailor.image.reference import DIGEST, ImageRef, parse_reference
from tailor.util import PROJECT, file_lock, write_json

LOCK_FILE = PROJECT / "images.lock"
"""The lock beside the recipes; every function of this module reads it when called."""


def lock_path(path: Path | None = None) -> Path:
    """*path*, or :data:`LOCK_FILE` as it is now (looked up at each call, so a test can point it elsewhere)."""
    return path if path is not None else LOCK_FILE


def read_lock(path: Path | None = None) -> dict:
    """The lock at *path* (default :func:`lock_path`): ``{unpinned reference: {"digest"}}``; {} if absent."""
    path = lock_path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TailorError(f"{path.name}: unreadable ({e}); fix it or delete it and pin again") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) and DIGEST.match(str(v.get("digest", "")))
                                             for v in data.values()):
        raise TailorError(f"{path.name}: not a map of reference to {{digest}}; fix it or delete it and pin again")
    return data


def locked_digest(ref: ImageRef, path: Path | None = None) -> str | None:
    """The digest recorded for *ref* (None when there is none yet); reads only the lock file."""
    if ref.digest:
        return ref.digest
    entry = read_lock(path).get(ref.unpinned)
    return entry["digest"] if entry else None


def record(ref: ImageRef, digest: str, path: Path | None = None) -> None:
    """Record *digest* for *ref* in the lock at *path* (default :func:`lock_path`)."""
    path = lock_path(path)
    with file_lock(paths.cache_root() / "images.lock.lock", "images.lock"):
        data = read_lock(path)
        data[ref.unpinned] = {"digest": digest}
        write_json(path, data)


def pinned_digest(ref: ImageRef, origin: str, path: Path | None = None) -> str:
    """The digest a build uses for *ref*: its own, the locked one, or (first time) the resolved one, recorded."""
    digest = locked_digest(ref, path)
    if digest:
        return digest
    digest = cache.resolve(ref, origin)
    _record_new(ref, digest, path)
    return digest


def _record_new(ref: ImageRef, digest: str, path: Path | None = None) -> None:
    record(ref, digest, path)
    print(f"tailor: {ref.unpinned} is {digest}; recorded in {lock_path(path).name}", file=sys.stderr, flush=True)


def pin(ref: ImageRef, origin: str, path: Path | None = None) -> str:
    """Resolve *ref* now and record its digest (``python -m tailor pin-image``)."""
    if ref.digest:
        raise TailorError(f"{origin}: rootfs.image: {ref.text} names its digest itself; edit the recipe to move it")
    digest = cache.resolve(ref, origin)
    record(ref, digest, path)
    return digest


def obtain(ref_text: str, origin: str, goarch: str = "amd64") -> Image:
    """The recipe's image: parsed, pinned, fetched and verified (an index narrowed to its linux/*goarch*
    image: ``amd64`` for an x86_64 recipe, ``arm64`` for an arm64 one)."""
    ref = parse_reference(ref_text)
    digest = locked_digest(ref)
    if digest:
        return cache.fetch(ref, digest, origin, goarch)
    digest = cache.resolve(ref, origin)
    img = cache.fetch(ref, digest, origin, goarch)  # pinned only once it fetched and verified
    _record_new(ref, digest)
    return img
