"""Write deterministic "newc" cpio archives (the Linux initramfs format) without root.

The archive format is the SVR4 "new ASCII" format without checksums (magic
``070701``), as described in the kernel's
Documentation/driver-api/early-userspace/buffer-format.rst and cpio(5).  Each
member is a 110-byte header of ASCII hex fields followed by the NUL-terminated
name, padded with NULs to a multiple of 4 bytes, then the member's data,
padded again to a multiple of 4.  A member named ``TRAILER!!!`` ends the
archive; the whole archive is padded with NULs to a multiple of 512 bytes.

Nothing on the host decides the content: owners, modes, times and device
numbers come only from the :class:`Entry` objects, inode numbers are given in
entry order, so the same entries always give the same bytes.  Device nodes are
described, never created, so no privileges are needed.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat

from tailor.errors import TailorError
from tailor.util import os_error_at

__all__ = [
    "Entry",
    "device_entry",
    "entries_from_tree",
    "write_archive",
]

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"
_BLOCK = 512
_CHUNK = 1 << 20
_FIELD_MAX = 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class Entry:
    """One archive member.

    path
      The member's name inside the archive, relative, without a leading
      ``/`` (``"usr/bin/redis-server"``), with no empty, ``.`` or ``..``
      components.

    mode
      The full st_mode: file type bits (stat.S_IFREG, S_IFDIR, S_IFLNK,
      S_IFCHR, S_IFBLK, S_IFIFO) and permission bits.

    uid, gid
      Owner, 0 (root) by default.

    mtime
      Modification time in seconds since the epoch (0 to 2**32 - 1).

    data
      Contents of a regular file, as bytes.

    source
      Host path of a file whose contents are streamed into the archive for a
      regular file, instead of *data* (big files are never held in memory).
      At most one of *data* and *source* is set; neither means an empty file.

    target
      Target of a symlink, stored as the member's data.  Required for
      symlinks, not allowed otherwise.

    rdevmajor, rdevminor
      Device numbers of a character or block device node.

    nlink
      Link count written in the header; None means 2 for directories and 1
      for everything else.
    """

    path: str
    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    data: bytes | None = None
    source: str | None = None
    target: str | None = None
    rdevmajor: int = 0
    rdevminor: int = 0
    nlink: int | None = None


def device_entry(path, major, minor, mode=0o600, kind="c", mtime=0):
    """Return the :class:`Entry` of a device node, owned by 0:0.

    *path* may start with ``/`` (``"/dev/console"``); the slash is dropped.
    *kind* is ``"c"`` for a character device or ``"b"`` for a block device,
    *mode* holds the permission bits only.
    """
    if kind == "c":
        type_bits = stat.S_IFCHR
    elif kind == "b":
        type_bits = stat.S_IFBLK
    else:
        raise TailorError(
            f"{path}: device kind must be 'c' (character) or 'b' (block), not {kind!r}"
        )
    return Entry(
        path=path.lstrip("/"),
        mode=type_bits | stat.S_IMODE(mode),
        mtime=mtime,
        rdevmajor=major,
        rdevminor=minor,
    )


def entries_from_tree(root, mtime, owners=False):
    """Return the entries describing the staging directory *root*, ready to archive.

    The tree is walked without following symlinks; *root* itself is not an
    entry.  Directories, regular files (streamed from the tree through
    Entry.source), symlinks, FIFOs and device nodes are described with the
    mode bits they have in the tree, owner 0:0 (with *owners*, the tree's
    own) and the given *mtime* for all of them, so neither the tree's owners
    (unless asked) nor its timestamps change the archive.  Hard links become separate regular files.

    The entries are sorted bytewise by path (the order of ``LC_ALL=C sort``),
    which puts every directory before its contents.

    Raises TailorError naming the file for sockets and unreadable directories,
    and when *root* is not a directory.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise TailorError(f"{root}: not a directory; cannot archive it")
    found = []  # (encoded relative path, Entry)
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        host_dir = os.path.join(root, rel_dir) if rel_dir else root
        try:
            with os.scandir(host_dir) as it:
                children = list(it)
        except OSError as err:
            raise TailorError(
                f"{host_dir}: cannot list the directory ({err.strerror}); fix "
                f"its permissions"
            ) from None
        for child in children:
            rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
            st = child.stat(follow_symlinks=False)
            mode = st.st_mode
            kwargs = {}
            if stat.S_ISDIR(mode):
                pending.append(rel)
            elif stat.S_ISREG(mode):
                kwargs["source"] = child.path
            elif stat.S_ISLNK(mode):
                kwargs["target"] = os.readlink(child.path)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                kwargs["rdevmajor"] = os.major(st.st_rdev)
                kwargs["rdevminor"] = os.minor(st.st_rdev)
            elif not stat.S_ISFIFO(mode):
                raise TailorError(
                    f"{child.path}: sockets and other special files cannot go "
                    f"into the archive; remove it from the staging tree"
                )
            if owners:  # an OCI image's tree: its files keep the owners its layers gave them
                kwargs["uid"], kwargs["gid"] = st.st_uid, st.st_gid
            entry = Entry(path=rel, mode=mode, mtime=mtime, **kwargs)
            found.append((os.fsencode(rel), entry))
    found.sort(key=lambda item: item[0])
    return [entry for _, entry in found]


def _pad(length):
    """Return the NUL bytes that bring *length* to a multiple of 4."""
    return b"\0" * (-length % 4)


def _header(name, ino, mode, uid, gid, nlink, mtime, size, rdevmajor, rdevminor):
    """Return the 110-byte header, the name and its padding, as bytes."""
    fields = (ino, mode, uid, gid, nlink, mtime, size, 0, 0, rdevmajor, rdevminor,
              len(name) + 1, 0)
    for value in fields:
        if not 0 <= value <= _FIELD_MAX:
            raise TailorError(
                f"{os.fsdecode(name)}: a header field ({value}) does not fit the "
                f"newc cpio format (0 to 4294967295)"
            )
    head = _MAGIC + b"".join(b"%08x" % value for value in fields) + name + b"\0"
    return head + _pad(len(head))


def _check_path(path):
    """Raise TailorError unless *path* is a valid relative archive path."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise TailorError(
            f"{path!r}: archive paths must be relative, without leading '/', "
            f"empty, '.' or '..' components"
        )


def _write_entry(out, ino, entry):
    """Write *entry* with inode number *ino* to the binary file *out*."""
    _check_path(entry.path)
    mode = entry.mode
    name = os.fsencode(entry.path)
    is_reg = stat.S_ISREG(mode)
    is_lnk = stat.S_ISLNK(mode)
    if not (is_reg or is_lnk or stat.S_ISDIR(mode) or stat.S_ISCHR(mode)
            or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)):
        raise TailorError(f"{entry.path}: unsupported file type in mode {mode:#o}")
    if entry.data is not None and entry.source is not None:
        raise TailorError(f"{entry.path}: give either data or source, not both")
    if (entry.data is not None or entry.source is not None) and not is_reg:
        raise TailorError(f"{entry.path}: only regular files can have contents")
    if is_lnk != (entry.target is not None):
        raise TailorError(
            f"{entry.path}: a symlink needs a target, and only symlinks have one"
        )
    nlink = entry.nlink
    if nlink is None:
        nlink = 2 if stat.S_ISDIR(mode) else 1

    def header(size):
        return _header(name, ino, mode, entry.uid, entry.gid, nlink, entry.mtime,
                       size, entry.rdevmajor, entry.rdevminor)

    if entry.source is not None:
        def unreadable(err):
            return TailorError(
                f"{entry.source}: cannot read it for archive member "
                f"{entry.path} ({err.strerror or err})"
            )

        try:
            src = open(entry.source, "rb")
        except OSError as err:
            raise unreadable(err) from None
        with src:
            try:
                size = os.fstat(src.fileno()).st_size
            except OSError as err:
                raise unreadable(err) from None
            out.write(header(size))
            copied = 0
            while copied < size:
                try:
                    chunk = src.read(min(_CHUNK, size - copied))
                except OSError as err:
                    raise unreadable(err) from None
                if not chunk:
                    raise TailorError(
                        f"{entry.source}: file shrank while being archived as "
                        f"{entry.path}; rebuild"
                    )
                out.write(chunk)
                copied += len(chunk)
        out.write(_pad(size))
        return

    if is_lnk:
        data = os.fsencode(entry.target)
    else:
        data = entry.data or b""
    out.write(header(len(data)))
    out.write(data)
    out.write(_pad(len(data)))


def write_archive(path, entries):
    """Write the newc cpio archive of *entries* (in the given order) to host path *path*.

    Inode numbers are 1, 2, 3... in entry order; devmajor and devminor are 0;
    nlink is 2 for directories and 1 otherwise unless Entry.nlink is set.  The
    archive ends with the ``TRAILER!!!`` member and NUL padding up to a
    multiple of 512 bytes.  Equal entries give byte-identical archives.

    The archive is written to ``path + ".tmp"`` and renamed into place, so
    *path* never holds a partial archive; on any error the temporary file is
    removed, a previous archive at *path* is left as it was, and the error is
    raised.

    Raises TailorError naming the member for invalid entries (bad path,
    duplicate path, contents on a non-regular file, unreadable source, values
    too large for the format) and naming *path* when it cannot be written.
    """
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as out:
            seen = set()
            for ino, entry in enumerate(entries, start=1):
                if entry.path in seen:
                    raise TailorError(
                        f"{entry.path}: appears twice in archive {path}; keep one"
                    )
                seen.add(entry.path)
                _write_entry(out, ino, entry)
            out.write(_header(_TRAILER.encode(), 0, 0, 0, 0, 1, 0, 0, 0, 0))
            out.write(b"\0" * (-out.tell() % _BLOCK))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS):
            raise os_error_at(path, err) from None  # disk full or unwritable: say what to do
        if isinstance(err, OSError):
            raise TailorError(
                f"{path}: cannot write the archive ({err.strerror or err})"
            ) from None
        raise
