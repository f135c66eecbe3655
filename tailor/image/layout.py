"""OCI image layouts on disk, and the one deterministic tar writer: used by the image cache, images built
from Debian packages (:mod:`tailor.image.build`) and the release's layout for urunc (:mod:`tailor.release.oci`).

A layout is a directory holding ``oci-layout`` (``{"imageLayoutVersion": "1.0.0"}``), ``index.json``
(the descriptors of its images, each tagged by an ``org.opencontainers.image.ref.name`` annotation)
and ``blobs/sha256/<hex>``, every blob named by the sha256 of its bytes. A descriptor is a dict with
at least ``digest`` (``sha256:<hex>``) and ``size`` (bytes), as in the OCI image spec.

Blobs are written atomically (a temporary name, then a rename), so a blob path only ever holds
complete content; readers check every blob against its descriptor's digest and size before use.
Blob bytes are the caller's (the JSON of a manifest or config is encoded by whoever hashes it);
``index.json`` and ``oci-layout`` are written as :func:`tailor.util.write_json` writes JSON.

Imports nothing of the rest of :mod:`tailor.image` but :mod:`~tailor.image.reference`'s constants.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path
from typing import Iterable

from tailor.errors import TailorError
from tailor.image.reference import DIGEST, REF_NAME
from tailor.util import atomic_path, display_path, makedirs, sha256_file, write_atomic, write_json

LAYOUT_VERSION = "1.0.0"
"""The ``imageLayoutVersion`` of every layout tailor writes and the only one it reads."""


# --------------------------------------------------------------------------
# Blobs


def blob_dir(layout: str | os.PathLike) -> Path:
    """The directory of *layout*'s blobs: ``blobs/sha256`` (which may not exist yet)."""
    return Path(layout) / "blobs" / "sha256"


def blob_path(layout: str | os.PathLike, digest: str) -> Path:
    """Where the blob *digest* (``sha256:<hex>``) lives in *layout*: ``blobs/sha256/<hex>``; the path
    may not exist. *digest* is not checked here: callers that got it from a document check it first
    (:func:`verify_blob` does)."""
    return blob_dir(layout) / digest.split(":", 1)[1]


def put_blob(layout: str | os.PathLike, data: bytes) -> dict:
    """Store *data* in *layout* as a blob (atomically; kept as it is when that blob exists already) and
    return its descriptor ``{"digest": "sha256:<hex>", "size": len(data)}``."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = blob_path(layout, digest)
    if not path.exists():
        write_atomic(path, data)
    return {"digest": digest, "size": len(data)}


def put_blob_file(layout: str | os.PathLike, path: str | os.PathLike) -> dict:
    """Move the finished file *path* into *layout* as a blob (hashed as a stream, then renamed, so *path*
    must be on the layout's filesystem) and return its ``{"digest", "size"}`` descriptor. *path* is
    gone afterwards."""
    digest = "sha256:" + sha256_file(path)
    dest = blob_path(layout, digest)
    makedirs(dest.parent)
    size = os.stat(path).st_size
    os.replace(path, dest)
    return {"digest": digest, "size": size}


def verify_blob(layout: str | os.PathLike, desc: dict, what: str, where: str) -> Path:
    """Check the blob of descriptor *desc* in *layout* against the descriptor's digest and size (read
    as a stream, so layers of any size) and return its path.

    Raises a one-line TailorError starting with *where* and naming *what* (``"manifest"``, ``"layer
    0"``...) when the digest is not ``sha256:<64 hex>``, the size is not a whole number, the blob is
    missing, its content has another sha256 or another length.
    """
    digest = str(desc.get("digest", ""))
    if not DIGEST.match(digest):
        raise TailorError(f"{where}: {what} has digest {digest!r}, not sha256; tailor verifies sha256 only")
    size = desc.get("size")
    if not isinstance(size, int) or isinstance(size, bool):
        raise TailorError(f"{where}: {what} {digest[:19]} has size {size!r} in its descriptor, not a number of bytes")
    path = blob_path(layout, digest)
    h, n = hashlib.sha256(), 0
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
                n += len(block)
    except FileNotFoundError:
        raise TailorError(f"{where}: {what} {digest[:19]} is missing from the image") from None
    if "sha256:" + h.hexdigest() != digest:
        raise TailorError(f"{where}: {what} {digest[:19]} is corrupt (its content has sha256:{h.hexdigest()[:12]}); "
                          f"the image is damaged, fetch or build it again")
    if n != size:
        raise TailorError(f"{where}: {what} {digest[:19]} has {n} bytes, its descriptor says {size}")
    return path


def read_blob(layout: str | os.PathLike, desc: dict, what: str, where: str) -> bytes:
    """The bytes of the blob of *desc* in *layout*, checked as :func:`verify_blob` checks them."""
    return verify_blob(layout, desc, what, where).read_bytes()


def read_json_blob(layout: str | os.PathLike, desc: dict, what: str, where: str) -> dict:
    """The JSON object (an index, manifest or config) in the blob of *desc*, checked as
    :func:`verify_blob` checks it; a blob that is not a JSON object is a one-line TailorError."""
    data = read_blob(layout, desc, what, where)
    try:
        doc = json.loads(data)
    except ValueError:
        raise TailorError(f"{where}: {what} {desc['digest'][:19]} is not JSON") from None
    if not isinstance(doc, dict):
        raise TailorError(f"{where}: {what} {desc['digest'][:19]} is not a JSON object")
    return doc


# --------------------------------------------------------------------------
# index.json and oci-layout


def read_index(layout: str | os.PathLike, where: str, hint: str) -> dict:
    """*layout*'s ``index.json``: a JSON object whose ``manifests`` is a list.

    Raises a one-line TailorError starting with *where* and ending with *hint* (what to do) when the
    file is missing, is not JSON or has no ``manifests`` list."""
    path = Path(layout) / "index.json"
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise TailorError(f"{where}: {display_path(layout)} is not an OCI image layout (no index.json); "
                          f"{hint}") from None
    except (OSError, ValueError) as e:
        raise TailorError(f"{where}: {display_path(path)} is unreadable ({e}); {hint}") from None
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise TailorError(f"{where}: {display_path(path)} has no manifests list; {hint}")
    return index


def index_manifests(layout: str | os.PathLike) -> list[dict]:
    """The descriptors listed in *layout*'s ``index.json`` (those that are JSON objects), or an empty list
    when :func:`read_index` finds no index: for callers that treat a missing or broken index as no image."""
    try:
        manifests = read_index(layout, "", "")["manifests"]
    except TailorError:
        return []
    return [m for m in manifests if isinstance(m, dict)]


def tag_of(desc: dict) -> str | None:
    """The ``org.opencontainers.image.ref.name`` annotation of the index entry *desc*, or None."""
    annotations = desc.get("annotations")
    return annotations.get(REF_NAME) if isinstance(annotations, dict) else None


def write_index(layout: str | os.PathLike, manifests: list[dict], media_type: str | None = None) -> None:
    """Write *layout*'s ``index.json`` (schemaVersion 2, *manifests* in the given order, and the index's
    own ``mediaType`` when *media_type* is given) and its ``oci-layout`` marker when that is missing,
    each atomically."""
    layout = Path(layout)
    index: dict = {"schemaVersion": 2, "manifests": manifests}
    if media_type is not None:
        index["mediaType"] = media_type
    if not (layout / "oci-layout").exists():
        write_json(layout / "oci-layout", {"imageLayoutVersion": LAYOUT_VERSION})
    write_json(layout / "index.json", index)


def set_tag(layout: str | os.PathLike, desc: dict, name: str) -> dict:
    """Name the image of descriptor *desc* *name* in *layout*'s ``index.json`` and return the entry.

    The entry is *desc*'s ``mediaType``, ``digest`` and ``size`` with the annotation
    ``org.opencontainers.image.ref.name`` = *name*. It replaces an entry of the same name and comes
    after the others, which are kept as they are; an index that is missing or unreadable starts empty.
    """
    entry = {k: desc[k] for k in ("mediaType", "digest", "size") if k in desc}
    entry["annotations"] = {REF_NAME: name}
    others = [m for m in index_manifests(layout) if tag_of(m) != name]
    write_index(layout, others + [entry])
    return entry


# --------------------------------------------------------------------------
# The deterministic tar writer


def deterministic_tar(members: Iterable[tuple[str, str | os.PathLike | bytes | None, int]],
                      dest: str | os.PathLike, epoch: int) -> Path:
    """Write an uncompressed tar of *members* to *dest*, atomically; same inputs, same bytes.

    Each member is ``(path inside the archive, source, mode)``: *source* is the bytes of a regular
    file, a host path whose content (symlinks followed) makes a regular file, or None for a directory;
    *mode* is its permission bits. Leading and trailing slashes are dropped; a path with ``..`` is a
    TailorError. Parent directories not listed are added with mode 0755. The entries are written as
    :func:`tree_tar` writes them.
    """
    entries: dict[str, tuple[tarfile.TarInfo, str | os.PathLike | bytes | None]] = {}

    def directory(name: str, mode: int) -> tuple[tarfile.TarInfo, None]:
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, mode
        return info, None

    for name, src, mode in members:
        name = name.strip("/")
        if not name or ".." in name.split("/"):
            raise TailorError(f"{name!r}: not a relative path for an archive member")
        parts = name.split("/")
        for i in range(1, len(parts)):
            entries.setdefault("/".join(parts[:i]), directory("/".join(parts[:i]), 0o755))
        if src is None:
            entries[name] = directory(name, mode)
            continue
        info = tarfile.TarInfo(name)
        info.mode = mode
        info.size = len(src) if isinstance(src, bytes) else os.stat(src).st_size
        entries[name] = (info, src)
    return _write_tar(dest, entries, epoch)


def tree_tar(tree: str | os.PathLike, dest: str | os.PathLike, epoch: int) -> Path:
    """Write an uncompressed tar of every entry under the directory *tree* (not *tree* itself) to *dest*,
    atomically; the same tree gives the same bytes whoever writes it and whenever.

    Each entry is taken as it is, without following symlinks: directories, regular files, symlinks
    (their target as it is), FIFOs and device nodes, with their permission bits. A regular file whose
    inode was already archived under an earlier name (in the order below) becomes a hard link to that
    name. A socket or another kind of file is a TailorError naming it. The entries are written as
    :func:`deterministic_tar` writes them.
    """
    tree = Path(tree)
    names = []
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            names.append(os.path.relpath(os.path.join(dirpath, name), tree))
    entries: dict[str, tuple[tarfile.TarInfo, Path | None]] = {}
    inodes: dict[tuple[int, int], str] = {}
    kinds = {stat.S_ISDIR: tarfile.DIRTYPE, stat.S_ISLNK: tarfile.SYMTYPE, stat.S_ISFIFO: tarfile.FIFOTYPE,
             stat.S_ISCHR: tarfile.CHRTYPE, stat.S_ISBLK: tarfile.BLKTYPE}
    for name in sorted(names, key=os.fsencode):
        path = tree / name
        st = os.lstat(path)
        info = tarfile.TarInfo(name)
        info.mode = stat.S_IMODE(st.st_mode)
        src = None
        if stat.S_ISREG(st.st_mode):
            inode = (st.st_dev, st.st_ino)
            if inode in inodes:
                info.type, info.linkname = tarfile.LNKTYPE, inodes[inode]
            else:
                inodes[inode] = name
                info.size, src = st.st_size, path
        else:
            kind = next((t for test, t in kinds.items() if test(st.st_mode)), None)
            if kind is None:
                raise TailorError(f"{path}: cannot be archived (a socket or another special file); remove it")
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = os.readlink(path)
            elif kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        entries[name] = (info, src)
    return _write_tar(dest, entries, epoch)


def _write_tar(dest: str | os.PathLike, entries: dict[str, tuple[tarfile.TarInfo, str | os.PathLike | bytes | None]],
               epoch: int) -> Path:
    """Write *entries* (``{name: (header, content)}``) to *dest*, atomically: sorted by the bytes of their
    names; every time *epoch* (a whole number of seconds, so no pax time records), owner and group 0
    with empty names; POSIX.1-2001 (pax) format, whose extended records appear only for what ustar
    cannot hold (names over 100 bytes or not ASCII); no compression."""
    with atomic_path(dest) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(entries, key=os.fsencode):
            info, content = entries[name]
            info.mtime, info.uid, info.gid, info.uname, info.gname = int(epoch), 0, 0, "", ""
            if content is None:
                tf.addfile(info)
            elif isinstance(content, bytes):
                tf.addfile(info, io.BytesIO(content))
            else:
                with open(content, "rb") as f:
                    tf.addfile(info, f)
    return Path(dest)
