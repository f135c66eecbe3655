"""Small helpers shared by every stage: project paths, atomic writes, hashing, locks.

Every file that tailor produces is written to a temporary name in the same
directory and renamed into place, so a final path only ever holds a complete
file, whatever happens to the process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from tailor.errors import TailorError

PROJECT = Path(__file__).resolve().parent.parent
"""The project's top directory (the one that holds dodo.py)."""


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def out_dir() -> Path:
    """Where every build output goes: ``out/`` in the project, or ``$TAILOR_OUT``."""
    return Path(os.environ.get("TAILOR_OUT") or PROJECT / "out")


def display_path(path: str | os.PathLike) -> str:
    """*path* relative to the project when inside it (for messages), else as given."""
    # The path as named first: resolving a symlink (an overlay's, say) would name its target instead.
    for candidate in (lambda: Path(os.path.abspath(path)), lambda: Path(path).resolve()):
        try:
            return str(candidate().relative_to(PROJECT))
        except (ValueError, OSError, RuntimeError):
            continue
    return str(path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file's contents."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError as e:
        raise TailorError(f"{path}: cannot read ({e.strerror})") from None
    return h.hexdigest()


def sha256_text(text: str | bytes) -> str:
    """Return the hex sha256 of a string (UTF-8) or bytes."""
    if isinstance(text, str):
        text = text.encode()
    return hashlib.sha256(text).hexdigest()


def canonical_json(data) -> str:
    """JSON with sorted keys and no insignificant whitespace: stable input for hashes."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@functools.lru_cache(maxsize=None)
def model_digest(model) -> str:
    """A digest of a validated recipe section (a dataclass, defaults included): what a task built
    from that section depends on. Paths count relative to the project."""
    def plain(value):
        if isinstance(value, Path):
            return display_path(value)
        raise TypeError(f"model_digest: cannot hash {type(value).__name__}")
    return sha256_text(json.dumps(dataclasses.asdict(model), sort_keys=True, separators=(",", ":"),
                                  ensure_ascii=False, default=plain))


def os_error_at(path, e: OSError) -> TailorError:
    """A one-line TailorError for *e* about *path* that says what to do (disk full, not writable, in the way)."""
    if e.errno == errno.ENOSPC:
        return TailorError(f"{path}: no space left on device; free some space (e.g. `doit clean`) and rerun")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return TailorError(f"{path}: not writable ({e.strerror}); fix the permissions of the output directory")
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return TailorError(f"{path}: a file is in the way ({e.strerror}); remove it, or set TAILOR_OUT to a directory")
    return TailorError(f"{path}: {e.strerror}")


def os_error(e: OSError) -> TailorError:
    """A one-line TailorError for an OSError that escaped a stage (named by the file it concerns)."""
    return os_error_at(e.filename or "tailor", e)


def makedirs(path: str | os.PathLike) -> Path:
    """mkdir -p with a one-line error on failure."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise os_error_at(path, e) from None
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside *path*; on success rename it to *path*.

    On any exception the temporary file (or directory) is removed and *path*
    is left untouched.
    """
    path = Path(path)
    makedirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.is_file() and not tmp.is_symlink():
            os.chmod(tmp, mode if mode is not None else 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except OSError as e:
        remove(tmp)
        raise os_error_at(path, e) from None
    except BaseException:
        remove(tmp)
        raise


def write_atomic(path: str | os.PathLike, data: str | bytes, mode: int | None = None) -> Path:
    """Write *data* to *path* atomically (temporary file + rename); return the path."""
    with atomic_path(path, mode) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_json(path: str | os.PathLike, data) -> Path:
    """Write *data* as indented, key-sorted JSON, atomically."""
    return write_atomic(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike):
    """Read a JSON file written by :func:`write_json`; a clear error if it is missing or broken."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise TailorError(f"{path}: missing; run the stage that writes it first") from None
    except (OSError, ValueError) as e:
        raise TailorError(f"{path}: unreadable ({e}); delete it and rerun") from None


def remove(path: str | os.PathLike) -> None:
    """Remove a file, symlink or directory tree if it exists."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished directory *tmp* to *final*, replacing an older one."""
    final = Path(final)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old.{os.getpid()}")
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        remove(old)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, what: str, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive flock on *path* for the duration of the block.

    When another process holds it, say so on stderr and wait (or, with
    ``wait=False``, raise a TailorError naming *what* is busy).
    """
    makedirs(Path(path).parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise TailorError(f"{what} is in use by another tailor process; wait for it to finish") from None
            print(f"tailor: waiting for another process using {what} ...", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def marked_text(content: str, start: str, end: str, text: str, what: str, name: str) -> str:
    """*content* with what lies between the marker lines *start* and *end* replaced by *text*; content
    without both markers is a TailorError naming the file *name* and *what* the markers are for."""
    if start not in content or end not in content:
        raise TailorError(f"{name}: no {what} markers; add the lines {start!r} and {end!r}")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{text.rstrip()}\n{end}{tail}"


def replace_marked(path: Path, start: str, end: str, text: str, what: str) -> None:
    """Replace what lies between the marker lines *start* and *end* of the file *path* with *text*
    (atomically); a file without both markers is a TailorError naming *what* the markers are for."""
    write_atomic(path, marked_text(path.read_text(), start, end, text, what, path.name))


def human_size(n: int) -> str:
    """Format a byte count as e.g. '1.65 MB' (decimal units, as kernel sizes are usually quoted)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000


class Progress:
    """A one-line progress display on stderr: rewritten in place on a terminal, throttled lines otherwise."""

    def __init__(self, label: str, interval: float = 10.0):
        self.label = label
        self.tty = sys.stderr.isatty()
        self.interval = interval
        self._last = 0.0

    def update(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            if force or now - self._last >= 0.2:
                sys.stderr.write(f"\r\033[K{self.label}: {text}")
                sys.stderr.flush()
                self._last = now
        elif force or now - self._last >= self.interval:
            sys.stderr.write(f"{self.label}: {text}\n")
            sys.stderr.flush()
            self._last = now

    def done(self, text: str) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
        sys.stderr.write(f"{self.label}: {text}\n")
        sys.stderr.flush()


def json_bytes(data) -> bytes:
    """*data* as the bytes :func:`write_json` writes (indented, key-sorted JSON and a newline), for
    content that is hashed or archived before it is written."""
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


# --------------------------------------------------------------------------
# Kernel files: .config and System.map


def config_values(config_text: str) -> dict[str, str]:
    """Every ``CONFIG_X=value`` assignment of a .config's text, ``{"CONFIG_X": "value"}``
    (``# CONFIG_X is not set`` comments count as absent)."""
    out = {}
    for line in config_text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value
    return out


def enabled_symbols(config_text: str) -> set[str]:
    """The symbols (without ``CONFIG_``) set to ``y`` in a .config's text."""
    return {ln[len("CONFIG_"):-2] for ln in config_text.splitlines() if ln.startswith("CONFIG_") and ln.endswith("=y")}


def count_enabled(config_text: str) -> int:
    """How many options a .config's text sets to ``y``."""
    return len(enabled_symbols(config_text))


def system_map_symbols(text: str) -> Iterator[tuple[str, str, str]]:
    """``(address, type, name)`` of every well-formed ``System.map`` line (three fields), in order."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            yield parts[0], parts[1], parts[2]
