"""Read the dynamic-linking facts of ELF files and compute library closures.

This module answers one question for the rootfs stage: given an extracted
Debian root tree (a directory on the build host, *not* the host system itself)
and a few programs inside it, which in-tree files must be copied so that the
programs can be started?

The answer is computed without running anything from the tree (no ldd, no
ldconfig): :func:`read_dynamic` parses the ELF program headers and the dynamic
section directly, and :func:`library_closure` emulates the search the dynamic
loader performs at run time, with every path lookup confined to the tree by
:func:`resolve_in_root` (chroot semantics).

Vocabulary used in the docstrings:

in-tree path
  An absolute path as seen from inside the root tree, such as
  ``"/usr/bin/redis-server"``.  The matching host path is the root directory
  joined with it.

root
  The host directory holding the extracted tree.

:func:`section` reads one section of an ELF file held in memory (tailor.farm compares the
``.comment`` of objects compiled on two machines); it is the project's only other ELF reading.

Over 400 lines because it emulates one program, ld.so: the ELF reader and the chroot path resolution
(which tailor.image also uses) serve the library search, and a quarter of the lines document the loader's rules.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import stat
import struct

from tailor.errors import TailorError
from tailor.kinds import Arch

__all__ = [
    "DEFAULT_LIBRARY_DIRS",
    "ElfInfo",
    "library_closure",
    "read_dynamic",
    "resolve_in_root",
    "section",
]

# ELF constants (see elf(5)).
_ELF_MAGIC = b"\x7fELF"
_ELFCLASS32 = 1
_ELFCLASS64 = 2
_ELFDATA2LSB = 1
_ELFDATA2MSB = 2
_EM_X86_64 = 62
_PN_XNUM = 0xFFFF

_SHN_XINDEX = 0xFFFF
_SHT_NOBITS = 8

_PT_LOAD = 1
_PT_DYNAMIC = 2
_PT_INTERP = 3

_DT_NULL = 0
_DT_NEEDED = 1
_DT_STRTAB = 5
_DT_STRSZ = 10
_DT_SONAME = 14
_DT_RPATH = 15
_DT_RUNPATH = 29

# Largest number of symlinks followed while resolving one path, as Linux's
# MAXSYMLINKS; more than that is reported as a loop.
_MAX_SYMLINKS = 40

DEFAULT_LIBRARY_DIRS = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
)
"""Directories searched after DT_RUNPATH/DT_RPATH and ld.so.conf, in order (for x86_64 objects)."""

_ARCH_OF_MACHINE = {a.elf_machine: a for a in Arch}


def library_dirs(machine):
    """The default library directories for objects of ELF *machine*: :data:`DEFAULT_LIBRARY_DIRS` for
    x86_64 (and any machine tailor does not know), the same with that machine's multiarch triplet
    otherwise (``/lib/aarch64-linux-gnu`` for aarch64, whose loader is ``ld-linux-aarch64.so.1``)."""
    arch = _ARCH_OF_MACHINE.get(machine, Arch.X86_64)
    if arch is Arch.X86_64:
        return DEFAULT_LIBRARY_DIRS
    return (f"/lib/{arch.triplet}", f"/usr/lib/{arch.triplet}", "/lib", "/usr/lib")


@dataclasses.dataclass(frozen=True)
class ElfInfo:
    """The dynamic-linking facts of one ELF file, as returned by :func:`read_dynamic`.

    interp
      The program interpreter requested by the PT_INTERP segment (for example
      ``"/lib64/ld-linux-x86-64.so.2"``), or None when there is none (shared
      libraries, static programs).

    needed
      The DT_NEEDED entries, in the order they appear in the dynamic section.

    runpath
      The DT_RUNPATH directories split on ``":"``, or the DT_RPATH directories
      when there is no DT_RUNPATH.  Empty strings are kept out; ``$ORIGIN`` and
      similar tokens are left unexpanded.

    soname
      The DT_SONAME string, or None.

    elf_class
      32 or 64 (from EI_CLASS).

    machine
      The e_machine value (62 is x86_64, 183 aarch64).
    """

    interp: str | None
    needed: tuple[str, ...]
    runpath: tuple[str, ...]
    soname: str | None
    elf_class: int = 64
    machine: int = _EM_X86_64


# --------------------------------------------------------------------------
# ELF parsing
# --------------------------------------------------------------------------


def _invalid(path, why):
    """Return the TailorError for a truncated or corrupt ELF file *path*."""
    return TailorError(f"{os.fspath(path)}: not a valid ELF file ({why})")


def _read_at(f, path, offset, size, what):
    """Read exactly *size* bytes at *offset* of the open file *f*.

    *what* names the structure being read, for the error message raised when
    the file ends early.
    """
    if offset < 0 or size < 0:
        raise _invalid(path, f"{what} at a negative offset")
    if offset + size > os.fstat(f.fileno()).st_size:
        raise _invalid(path, f"truncated {what}")
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise _invalid(path, f"truncated {what}")
    return data


def _decode(raw):
    """Decode a NUL-free byte string from an ELF file to str (surrogateescape)."""
    return raw.decode("utf-8", "surrogateescape")


def read_dynamic(path):
    """Return the :class:`ElfInfo` of the file at host path *path*.

    Returns None when the file does not start with the ELF magic (scripts, data
    files, empty files).  ELF files of any class, byte order or machine are
    parsed; callers that care check ElfInfo.elf_class and ElfInfo.machine.

    Only program headers are used (PT_INTERP, PT_DYNAMIC and the PT_LOAD
    segments that map DT_STRTAB's virtual address to a file offset), so
    stripped files work.  A static program gives an ElfInfo with no interp and
    nothing needed.

    Raises TailorError("<path>: not a valid ELF file (...)") when the file has
    the ELF magic but is truncated or inconsistent, and TailorError naming the
    file when it cannot be read at all.
    """
    try:
        with open(path, "rb") as f:
            return _parse(f, path)
    except OSError as err:
        raise TailorError(
            f"{os.fspath(path)}: cannot read ({err.strerror or err})"
        ) from None


def _parse(f, path):
    """Parse the open file *f* (see :func:`read_dynamic`)."""
    ident = f.read(16)
    if len(ident) < 4 or ident[:4] != _ELF_MAGIC:
        return None
    if len(ident) < 16:
        raise _invalid(path, "truncated ELF header")

    elf_class, data = ident[4], ident[5]
    if data == _ELFDATA2LSB:
        order = "<"
    elif data == _ELFDATA2MSB:
        order = ">"
    else:
        raise _invalid(path, f"unknown byte order {data}")

    if elf_class == _ELFCLASS64:
        ehdr_fmt = order + "HHIQQQIHHHHHH"
        # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
        phdr_fmt = order + "IIQQQQQQ"
        ph_fields = (0, 2, 3, 5)  # indexes of type, offset, vaddr, filesz
        dyn_fmt = order + "qQ"
        sh_info_fmt, sh_info_off = order + "I", 44
        bits = 64
    elif elf_class == _ELFCLASS32:
        ehdr_fmt = order + "HHIIIIIHHHHHH"
        # p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align
        phdr_fmt = order + "IIIIIIII"
        ph_fields = (0, 1, 2, 4)
        dyn_fmt = order + "iI"
        sh_info_fmt, sh_info_off = order + "I", 28
        bits = 32
    else:
        raise _invalid(path, f"unknown ELF class {elf_class}")

    ehdr = struct.unpack(
        ehdr_fmt,
        _read_at(f, path, 16, struct.calcsize(ehdr_fmt), "ELF header"),
    )
    machine, phoff, shoff = ehdr[1], ehdr[4], ehdr[5]
    phentsize, phnum = ehdr[8], ehdr[9]

    if phnum == _PN_XNUM:
        # The real count lives in sh_info of section header 0.
        (phnum,) = struct.unpack(
            sh_info_fmt,
            _read_at(f, path, shoff + sh_info_off, 4, "section header 0"),
        )

    phdr_size = struct.calcsize(phdr_fmt)
    if phnum and phentsize < phdr_size:
        raise _invalid(path, f"program header entry size {phentsize} too small")

    loads = []  # (vaddr, filesz, offset)
    interp_seg = None
    dynamic_seg = None
    raw = _read_at(f, path, phoff, phentsize * phnum, "program headers")
    for i in range(phnum):
        fields = struct.unpack_from(phdr_fmt, raw, i * phentsize)
        p_type, p_offset, p_vaddr, p_filesz = (fields[j] for j in ph_fields)
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_filesz, p_offset))
        elif p_type == _PT_INTERP and interp_seg is None:
            interp_seg = (p_offset, p_filesz)
        elif p_type == _PT_DYNAMIC and dynamic_seg is None:
            dynamic_seg = (p_offset, p_filesz)

    interp = None
    if interp_seg is not None:
        raw = _read_at(f, path, interp_seg[0], interp_seg[1], "PT_INTERP segment")
        interp = _decode(raw.split(b"\0", 1)[0]) or None

    needed_offsets = []
    soname_off = rpath_off = runpath_off = None
    strtab_addr = strsz = None
    if dynamic_seg is not None:
        raw = _read_at(f, path, dynamic_seg[0], dynamic_seg[1], "PT_DYNAMIC segment")
        step = struct.calcsize(dyn_fmt)
        for pos in range(0, len(raw) - step + 1, step):
            tag, val = struct.unpack_from(dyn_fmt, raw, pos)
            if tag == _DT_NULL:
                break
            if tag == _DT_NEEDED:
                needed_offsets.append(val)
            elif tag == _DT_STRTAB:
                strtab_addr = val
            elif tag == _DT_STRSZ:
                strsz = val
            elif tag == _DT_SONAME:
                soname_off = val
            elif tag == _DT_RPATH:
                rpath_off = val
            elif tag == _DT_RUNPATH:
                runpath_off = val

    wanted = [soname_off, rpath_off, runpath_off, *needed_offsets]
    strtab = b""
    if any(off is not None for off in wanted):
        if strtab_addr is None:
            raise _invalid(path, "dynamic section has strings but no DT_STRTAB")
        strtab = _read_strtab(f, path, loads, strtab_addr, strsz)

    def string(off):
        if off is None:
            return None
        if off >= len(strtab):
            raise _invalid(path, f"string offset {off} beyond the string table")
        end = strtab.find(b"\0", off)
        if end < 0:
            raise _invalid(path, "unterminated string in the string table")
        return _decode(strtab[off:end])

    path_list = string(runpath_off if runpath_off is not None else rpath_off)
    return ElfInfo(
        interp=interp,
        needed=tuple(string(off) for off in needed_offsets),
        runpath=tuple(d for d in (path_list or "").split(":") if d),
        soname=string(soname_off),
        elf_class=bits,
        machine=machine,
    )


def _read_strtab(f, path, loads, addr, size):
    """Return the dynamic string table at virtual address *addr*.

    The address is mapped to a file offset through the PT_LOAD segment whose
    file-backed part contains it.  *size* is DT_STRSZ, or None to read up to
    the end of that segment's file-backed part.
    """
    for vaddr, filesz, offset in loads:
        if vaddr <= addr < vaddr + filesz:
            available = vaddr + filesz - addr
            if size is None or size > available:
                size = available
            return _read_at(f, path, offset + (addr - vaddr), size, "string table")
    raise _invalid(path, f"DT_STRTAB address {addr:#x} is not in any PT_LOAD segment")


def section(data, name):
    """Return the contents of the section called *name* of the ELF file whose bytes are *data*.

    *data* is a whole ELF file (an object file, a program or a library) of
    either class and byte order; sections are found by name through the
    section header string table, the first of several same-named sections
    winning.  A SHT_NOBITS section (``.bss``) gives ``b""``.

    Returns None when *data* does not start with the ELF magic, when no
    section has that name, and when the section headers, their string table
    or the section itself lie (partly) outside *data*: a damaged object has no
    readable section, so callers compare None rather than catch an error.
    """
    if len(data) < 16 or data[:4] != _ELF_MAGIC or data[5] not in (_ELFDATA2LSB, _ELFDATA2MSB):
        return None
    order = "<" if data[5] == _ELFDATA2LSB else ">"
    if data[4] == _ELFCLASS64:
        # e_shoff; e_shentsize, e_shnum, e_shstrndx; sh_name, sh_type, ..., sh_offset, sh_size, sh_link
        shoff_at, shoff_fmt, counts_at, shdr_fmt = 0x28, "Q", 0x3A, "IIQQQQIIQQ"
    elif data[4] == _ELFCLASS32:
        shoff_at, shoff_fmt, counts_at, shdr_fmt = 0x20, "I", 0x2E, "IIIIIIIIII"
    else:
        return None
    try:
        (shoff,) = struct.unpack_from(order + shoff_fmt, data, shoff_at)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, counts_at)
        if shoff == 0 or shentsize < struct.calcsize(order + shdr_fmt):
            return None

        def header(i):
            """(sh_name, sh_type, sh_offset, sh_size, sh_link) of section header *i*."""
            fields = struct.unpack_from(order + shdr_fmt, data, shoff + i * shentsize)
            return fields[0], fields[1], fields[4], fields[5], fields[6]

        if shnum == 0:  # more sections than e_shnum holds: the count is section 0's sh_size
            shnum = header(0)[3]
        if shstrndx == _SHN_XINDEX:  # likewise the string table's index, in section 0's sh_link
            shstrndx = header(0)[4]
        if shstrndx >= shnum:
            return None

        def contents(h):
            if h[1] == _SHT_NOBITS:
                return b""
            if h[2] + h[3] > len(data):
                return None
            return data[h[2]:h[2] + h[3]]

        names = contents(header(shstrndx))
        if names is None:
            return None
        wanted = name.encode("utf-8", "surrogateescape")
        for i in range(shnum):
            h = header(i)
            end = names.find(b"\0", h[0])
            if h[0] < len(names) and end >= 0 and names[h[0]:end] == wanted:
                return contents(h)
    except struct.error:  # a header beyond the end of *data*
        return None
    return None


# --------------------------------------------------------------------------
# Path resolution inside a root tree
# --------------------------------------------------------------------------


def _host(root, in_tree):
    """Return the host path of the in-tree path *in_tree* under *root*."""
    return root + in_tree if in_tree != "/" else root


def _resolve(root, path, trace):
    """Resolve the in-tree path *path* under the host directory *root*.

    Follows the algorithm of :func:`resolve_in_root`.  When *trace* is a list,
    the in-tree path of every symlink followed is appended to it, in the order
    met (each with its parent directories already resolved).
    """
    pending = [c for c in reversed(os.fspath(path).split("/")) if c]
    parts = []
    followed = 0
    while pending:
        name = pending.pop()
        if name == ".":
            continue
        if name == "..":
            if parts:
                parts.pop()
            continue
        parts.append(name)
        here = "/" + "/".join(parts)
        try:
            st = os.lstat(_host(root, here))
        except OSError:
            # Missing (or unreadable): the rest is resolved lexically.
            continue
        if not stat.S_ISLNK(st.st_mode):
            continue
        followed += 1
        if followed > _MAX_SYMLINKS:
            raise TailorError(
                f"{os.fspath(path)}: too many levels of symbolic links inside "
                f"{root} (symlink loop at {here}); fix the link in the packages "
                f"or overlay"
            )
        target = os.readlink(_host(root, here))
        if trace is not None:
            trace.append(here)
        parts.pop()
        if target.startswith("/"):
            parts.clear()
        pending.extend(c for c in reversed(target.split("/")) if c)
    return "/" + "/".join(parts)


def resolve_in_root(root, path):
    """Return the in-tree absolute path that in-tree *path* designates under *root*.

    Resolution behaves as if *root* were ``/`` (chroot semantics): every
    symlink met, including one on the last component, is followed; absolute
    symlink targets restart at *root*; ``..`` never climbs above *root*.  The
    result therefore never designates anything outside the tree, and its
    parents contain no symlinks.

    *path* is taken as absolute even without a leading ``/``.  Components that
    do not exist are kept lexically (like ``realpath -m``), so the result may
    name a missing file; callers check existence on the host path
    ``os.path.join(root, result.lstrip("/"))``.

    Raises TailorError naming *path* when more than 40 symlinks are followed
    (a symlink loop).
    """
    return _resolve(_normroot(root), path, None)


def _normroot(root):
    """Return *root* as an absolute host path without a trailing slash."""
    root = os.path.abspath(os.fspath(root))
    return root.rstrip("/") or "/"


# --------------------------------------------------------------------------
# Library search
# --------------------------------------------------------------------------


def _glob_in_root(root, pattern):
    """Return the sorted in-tree paths matching the glob *pattern* inside *root*.

    Each component is matched inside the tree, so symlinked directories are
    resolved with :func:`resolve_in_root`.  Names starting with ``.`` only
    match patterns that start with ``.``, like glob(3).
    """
    current = ["/"]
    for comp in (c for c in pattern.split("/") if c):
        following = []
        for base in current:
            if not any(ch in comp for ch in "*?["):
                following.append(base.rstrip("/") + "/" + comp)
                continue
            real = _resolve(root, base, None)
            try:
                names = os.listdir(_host(root, real))
            except OSError:
                continue
            for name in sorted(names):
                if name.startswith(".") and not comp.startswith("."):
                    continue
                if fnmatch.fnmatchcase(name, comp):
                    following.append(base.rstrip("/") + "/" + name)
        current = following
    return sorted(
        p for p in current if os.path.lexists(_host(root, _resolve(root, p, None)))
    )


def _ld_so_conf_dirs(root, conf="/etc/ld.so.conf", seen=None):
    """Return the library directories listed by *conf* inside *root*, in order.

    Follows ``include`` lines (whitespace-separated glob patterns, relative
    ones taken from the directory of the including file) and ignores comments,
    ``hwcap`` lines and missing files.  Each file is read at most once.
    """
    if seen is None:
        seen = set()
    real = _resolve(root, conf, None)
    if real in seen:
        return []
    seen.add(real)
    try:
        with open(_host(root, real), encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return []

    dirs = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if words[0] == "include":
            for pattern in words[1:]:
                if not pattern.startswith("/"):
                    pattern = os.path.dirname(conf) + "/" + pattern
                for match in _glob_in_root(root, pattern):
                    dirs.extend(_ld_so_conf_dirs(root, match, seen))
        elif words[0] == "hwcap":
            continue
        else:
            for word in line.replace(",", " ").replace(":", " ").split():
                if word.startswith("/"):
                    dirs.append(word.split("=", 1)[0])
    return dirs


def _expand_tokens(entry, origin, info):
    """Expand $ORIGIN, $LIB and $PLATFORM (also in ``${...}`` form) in *entry*."""
    arch = _ARCH_OF_MACHINE.get(info.machine)
    lib = f"lib/{arch.triplet}" if arch else "lib"
    platform = arch.triplet.split("-")[0] if arch else ""
    for name, value in (("ORIGIN", origin), ("LIB", lib), ("PLATFORM", platform)):
        entry = entry.replace("${" + name + "}", value).replace("$" + name, value)
    return entry


def _missing(program, requester, lib):
    """Return the TailorError for library *lib* not found for *program*."""
    via = f" (through {requester})" if requester != program else ""
    return TailorError(
        f"{program}: needs {lib}{via}, which is not in the packages; add the "
        f"package that provides it to rootfs.packages"
    )


def library_closure(root, paths):
    """Return the sorted in-tree paths needed to run the programs *paths* inside *root*.

    *root* is the host directory holding an extracted root tree and *paths*
    are in-tree absolute paths of programs (``"/usr/bin/redis-server"``).  The
    result contains:

    - the programs themselves,
    - their PT_INTERP interpreter,
    - every DT_NEEDED library, recursively, found as the dynamic loader
      would: the requesting object's DT_RUNPATH (or DT_RPATH) with $ORIGIN
      expanded to the directory the object was found in, then the directories
      of the tree's /etc/ld.so.conf (with its includes), then
      :func:`library_dirs` (the object's machine's); a candidate whose ELF class or machine
      differs from the requester's is skipped, as the loader does,
    - every symlink followed on the way, file or directory (for example both
      ``/lib64/ld-linux-x86-64.so.2`` and its target, and ``/lib`` when it
      links to ``usr/lib``).

    Every path is resolved with chroot semantics (see
    :func:`resolve_in_root`), and no returned path has a symlink among its
    parent directories, so copying each returned path as it is (symlinks as
    symlinks, parents created as directories) reproduces every lookup.

    Non-ELF programs (scripts) are included without further analysis.

    Raises TailorError naming the program when a program or its interpreter
    is missing, when a needed library is found nowhere, or when a file is a
    corrupt ELF file.
    """
    root = _normroot(root)
    conf_dirs = None  # read lazily, once
    result = set()
    # Objects already analysed, by resolved in-tree path.
    done = set()
    infos = {}

    def info_of(real):
        if real not in infos:
            infos[real] = read_dynamic(_host(root, real))
        return infos[real]

    def locate(path):
        """Return (resolved path, symlinks followed), or None if no file is there."""
        trace = []
        real = _resolve(root, path, trace)
        if not os.path.isfile(_host(root, real)):
            return None
        return real, trace

    def search_dirs(info, origin):
        nonlocal conf_dirs
        if conf_dirs is None:
            conf_dirs = _ld_so_conf_dirs(root)
        dirs = [_expand_tokens(d, origin, info) for d in info.runpath]
        dirs.extend(conf_dirs)
        dirs.extend(library_dirs(info.machine))
        return dirs

    # Work list of (program, found path, resolved path) still to analyse.
    work = []
    for program in paths:
        program = "/" + os.fspath(program).lstrip("/")
        found = locate(program)
        if found is None:
            raise TailorError(
                f"{program}: not found in the extracted packages; add the "
                f"package that provides it to rootfs.packages"
            )
        real, trace = found
        result.add(real)
        result.update(trace)
        # The kernel hands the loader the resolved executable for $ORIGIN.
        work.append((program, real, real))

    while work:
        program, as_found, real = work.pop()
        if real in done:
            continue
        done.add(real)
        info = info_of(real)
        if info is None:
            continue

        if info.interp is not None:
            found = locate(info.interp)
            if found is None:
                raise _missing(program, as_found, info.interp)
            interp_real, trace = found
            result.add(interp_real)
            result.update(trace)
            work.append((program, info.interp, interp_real))

        origin = os.path.dirname(as_found)
        for lib in info.needed:
            if "/" in lib:
                candidates = ["/" + lib.lstrip("/")]
            else:
                candidates = [d.rstrip("/") + "/" + lib for d in search_dirs(info, origin)]
            for candidate in candidates:
                found = locate(candidate)
                if found is None:
                    continue
                lib_real, trace = found
                lib_info = info_of(lib_real)
                if lib_info is None or (lib_info.elf_class, lib_info.machine) != (
                    info.elf_class,
                    info.machine,
                ):
                    continue
                result.add(lib_real)
                result.update(trace)
                work.append((program, candidate, lib_real))
                break
            else:
                raise _missing(program, as_found, lib)

    return sorted(result)
