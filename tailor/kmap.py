"""Map kernel code to the Kconfig options that build it: pc -> function -> object file -> options.

Everything is derived from the kernel's own files, never from a hand-written table:

* :func:`parse_system_map`: the text symbols of ``System.map``, sorted, and
  :func:`functions_of` which function each program counter falls in;
* :func:`nm_index`: which object files of the build tree define each text
  symbol, from ``nm`` over every ELF object (batched, and cached per kernel in
  ``symbols.json``); composite objects are thin archives and are skipped, so a
  symbol leads to the file it was compiled from;
* :class:`Kbuild`: the Makefile/Kbuild lines that build an object:
  ``obj-$(CONFIG_X) += foo.o``, composite parts ``foo-$(CONFIG_Y) += part.o``
  (and then ``foo.o`` itself), ``ifdef``/``ifeq`` blocks around them, and the
  options that gate every parent directory (``obj-$(CONFIG_NET) += net/`` in
  the top ``Kbuild``, ``core-y``/``libs-y`` in ``arch/x86/Makefile``).

Known gaps, left to the boot test: code under ``#ifdef CONFIG_X`` inside a
file that is always built (there is no line information without debug info),
``IS_ENABLED()`` branches, and options that own no code (menus such as
``NETDEVICES``, which ``resolve: deps`` adds back).
"""

from __future__ import annotations

import bisect
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tailor.errors import TailorError
from tailor.util import system_map_symbols, write_atomic

KERNEL_TEXT_START = 0xFFFFFFFF80000000
"""Kernel text lives above this address on x86_64 (with ``nokaslr``: from 0xffffffff81000000)."""

_TEXT_TYPES = set("TtWw")


# --------------------------------------------------------------------------
# System.map


@dataclass
class SymbolMap:
    """The text symbols of a System.map, sorted by address."""

    addrs: list[int]
    names: list[str]
    end: int

    def function(self, pc: int) -> str | None:
        """The function *pc* falls in, or None outside the kernel's text."""
        if not self.addrs or pc < self.addrs[0] or pc >= self.end:
            return None
        return self.names[bisect.bisect_right(self.addrs, pc) - 1]


def parse_system_map(text: str) -> SymbolMap:
    """Parse ``System.map`` text (``address type name`` lines); keep text symbols (T, t, W, w)."""
    pairs = []
    end = 0
    for addr, typ, name in system_map_symbols(text):
        try:
            a = int(addr, 16)
        except ValueError:
            continue
        if name in ("_etext", "__etext"):
            end = max(end, a)
        if typ in _TEXT_TYPES:
            pairs.append((a, name))
    pairs.sort()
    if not end and pairs:
        end = pairs[-1][0] + 4096
    return SymbolMap([a for a, _ in pairs], [n for _, n in pairs], end)


def functions_of(pcs, symbols: SymbolMap) -> dict[str, int]:
    """``{function: number of distinct pcs seen in it}`` for the kernel pcs in *pcs*."""
    out: dict[str, int] = {}
    for pc in pcs:
        fn = symbols.function(pc)
        if fn is not None:
            out[fn] = out.get(fn, 0) + 1
    return out


# --------------------------------------------------------------------------
# nm over the build tree


def object_files(objdir: Path) -> list[str]:
    """The ELF object files of a kbuild tree (relative paths), without the boot code, host tools,
    the linked vmlinux.o and composite objects (thin archives)."""
    out = []
    skip_dirs = {"scripts", "tools", "Documentation", "source", "include"}
    objdir = Path(objdir)
    for root, dirs, files in os.walk(objdir):
        rel = os.path.relpath(root, objdir)
        if rel == ".":
            dirs[:] = [d for d in dirs if d not in skip_dirs and not d.startswith(".")]
        elif rel.startswith(os.path.join("arch", "x86", "boot")):
            dirs[:] = []
            continue
        for f in files:
            if not f.endswith(".o") or f in ("vmlinux.o",) or f.endswith(".mod.o") or f.startswith(".tmp"):
                continue
            path = os.path.join(root, f)
            try:
                with open(path, "rb") as fh:
                    if fh.read(4) != b"\x7fELF":
                        continue
            except OSError:
                continue
            out.append(os.path.normpath(os.path.join(rel, f)))
    return sorted(out)


def parse_nm(text: str, index: dict[str, list[str]], weak: dict[str, list[str]] | None = None) -> None:
    """Add ``nm -A --defined-only`` output lines (``path:addr type name``) to *index* (text symbols only).

    With *weak*, weak definitions (``W``/``w``) go there instead: the linker keeps a strong definition
    over them (kernel/sys_ni.c defines a weak ``__x64_sys_*`` stub for every conditional system call),
    so they count only for symbols with no strong one (:func:`merge_weak`)."""
    for line in text.splitlines():
        path, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        if len(parts) != 3 or parts[1] not in _TEXT_TYPES:
            continue
        target = weak if weak is not None and parts[1] in "Ww" else index
        objs = target.setdefault(parts[2], [])
        if not objs or objs[-1] != path:
            objs.append(path)


def merge_weak(index: dict[str, list[str]], weak: dict[str, list[str]]) -> None:
    """Give the symbols of *weak* that have no strong definition in *index* their weak definers."""
    for name, objs in weak.items():
        index.setdefault(name, objs)


def nm_index(objdir: Path, cache: Path | None = None, batch: int = 400) -> dict[str, list[str]]:
    """``{text symbol: [object files defining it]}`` for the build tree *objdir* (relative paths).

    ``nm`` runs once per *batch* objects; with *cache*, the index is read from and written to it.
    """
    if cache is not None and cache.is_file():
        try:
            return json.loads(cache.read_text())
        except (OSError, ValueError):
            pass
    objs = object_files(objdir)
    if not objs:
        raise TailorError(f"{objdir}: no object files; the kernel's build tree is needed for mapping")
    index: dict[str, list[str]] = {}
    weak: dict[str, list[str]] = {}
    for i in range(0, len(objs), batch):
        try:
            proc = subprocess.run(["nm", "-A", "--defined-only", *objs[i:i + batch]], cwd=objdir,
                                  capture_output=True, text=True, errors="replace")
        except OSError as e:
            raise TailorError(f"cannot run nm ({e.strerror}); install binutils (./setup.sh does)") from None
        parse_nm(proc.stdout, index, weak)
    merge_weak(index, weak)
    if cache is not None:
        write_atomic(cache, json.dumps(index, sort_keys=True))
    return index


# --------------------------------------------------------------------------
# Makefiles and Kbuild files

_CONFIG = re.compile(r"CONFIG_([A-Za-z0-9_]+)")
_ASSIGN = re.compile(r"^([A-Za-z0-9_.$()/ ,-]+?)\s*(?::=|\+=|=)\s*(.*)$")
_COND = re.compile(r"^(ifdef|ifndef|ifeq|ifneq)\b\s*(.*)$")


@dataclass(frozen=True)
class Rule:
    """One Makefile line that builds *item*: its list (``obj``, ``lib``, a composite's name, ...)
    and the options it is gated by (the list's own ``$(CONFIG_X)`` and enclosing ``ifdef``s)."""

    kind: str
    gates: frozenset[str]


def _logical_lines(text: str) -> list[str]:
    out, cur = [], ""
    for raw in text.splitlines():
        line = raw if "\\#" in raw else raw.split("#", 1)[0]
        line = line.rstrip()
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append((cur + line).strip())
        cur = ""
    if cur:
        out.append(cur.strip())
    return out


def _positive_condition(kind: str, arg: str) -> str | None:
    """The option a conditional requires to be on, or None when it is not of that shape."""
    names = _CONFIG.findall(arg)
    if len(names) != 1:
        return None
    if kind == "ifdef":
        return names[0]
    if kind == "ifndef":
        return None
    body = arg.strip()
    # ifeq ($(CONFIG_X),y) / ifeq ($(CONFIG_X), y) / ifneq ($(CONFIG_X),) / ifneq ($(CONFIG_X),n)
    m = re.match(r"^\(\s*\$\(CONFIG_[A-Za-z0-9_]+\)\s*,\s*([^)]*)\)$", body)
    if not m:
        return None
    value = m.group(1).strip()
    if kind == "ifeq" and value == "y":
        return names[0]
    if kind == "ifneq" and value in ("", "n"):
        return names[0]
    return None


def parse_makefile(text: str, srcarch: str = "x86") -> dict[str, list[Rule]]:
    """``{item: [Rule]}`` for every ``.o`` or ``dir/`` item assigned in a Makefile or Kbuild file."""
    items: dict[str, list[Rule]] = {}
    stack: list[str | None] = []
    for line in _logical_lines(text):
        if not line:
            continue
        m = _COND.match(line)
        if m:
            stack.append(_positive_condition(m.group(1), m.group(2)))
            continue
        if line.startswith("else"):
            if stack:
                stack[-1] = None
            rest = line[4:].strip()
            m = _COND.match(rest)
            if m and stack:  # "else ifeq ...": one level, the new condition replaces the old
                stack[-1] = _positive_condition(m.group(1), m.group(2))
            continue
        if line.startswith("endif"):
            if stack:
                stack.pop()
            continue
        m = _ASSIGN.match(line)
        if not m:
            continue
        lhs, rhs = m.group(1).strip(), m.group(2)
        km = re.match(r"^([A-Za-z0-9_.-]+?)-(y|objs|\$\(.*\))$", lhs)
        if not km:
            continue
        kind, sel = km.group(1), km.group(2)
        if sel not in ("y", "objs") and not _CONFIG.search(sel):
            continue
        gates = frozenset(_CONFIG.findall(sel)) | frozenset(c for c in stack if c)
        for item in rhs.replace("$(SRCARCH)", srcarch).split():
            if item.endswith(".o") or item.endswith("/"):
                items.setdefault(item, []).append(Rule(kind, gates))
    return items


LIST_KINDS = {"obj", "lib", "core", "libs", "drivers", "head", "extra"}
"""Makefile lists that put an object or directory into vmlinux (anything else is a composite's parts)."""


@dataclass
class Kbuild:
    """The options that gate each object of a kernel source tree, from its Makefiles and Kbuild files."""

    srctree: Path
    srcarch: str = "x86"
    _files: dict[str, dict[str, list[Rule]]] = field(default_factory=dict)
    _dir_gates: dict[str, frozenset[str] | None] = field(default_factory=dict)
    _top: dict[str, list[Rule]] | None = None

    def rules(self, directory: str) -> dict[str, list[Rule]]:
        """The parsed Kbuild (or else Makefile) of *directory* (relative to the source tree)."""
        if directory not in self._files:
            items: dict[str, list[Rule]] = {}
            for name in ("Kbuild", "Makefile"):
                path = Path(self.srctree) / directory / name
                if path.is_file():
                    items = parse_makefile(path.read_text(errors="replace"), self.srcarch)
                    break
            self._files[directory] = items
        return self._files[directory]

    def top(self) -> dict[str, list[Rule]]:
        """Directories that the top Kbuild, the top Makefile and the arch Makefile put into vmlinux."""
        if self._top is None:
            items: dict[str, list[Rule]] = {}
            for rel in ("Kbuild", "Makefile", f"arch/{self.srcarch}/Makefile", f"arch/{self.srcarch}/Kbuild"):
                path = Path(self.srctree) / rel
                if not path.is_file():
                    continue
                base = os.path.dirname(rel) if rel.startswith("arch/") and rel.endswith("Kbuild") else ""
                for item, rules in parse_makefile(path.read_text(errors="replace"), self.srcarch).items():
                    key = os.path.normpath(os.path.join(base, item)) + "/" if item.endswith("/") else item
                    items.setdefault(key, []).extend(r for r in rules if r.kind in LIST_KINDS)
            self._top = items
        return self._top

    def dir_gates(self, directory: str) -> frozenset[str] | None:
        """The options every parent directory's entry needs, or None when no Makefile builds it."""
        directory = directory.strip("/")
        if directory in ("", "."):
            return frozenset()
        if directory in self._dir_gates:
            return self._dir_gates[directory]
        self._dir_gates[directory] = None  # cycles
        result = None
        top = self.top().get(directory + "/")
        if top:
            result = frozenset.intersection(*(r.gates for r in top))
        else:
            parent, _, name = directory.rpartition("/")
            rules = [r for r in self.rules(parent).get(name + "/", []) if r.kind in LIST_KINDS]
            if rules:
                above = self.dir_gates(parent)
                if above is not None:
                    result = above | frozenset.intersection(*(r.gates for r in rules))
        self._dir_gates[directory] = result
        return result

    def gates(self, obj: str, _depth: int = 0) -> frozenset[str] | None:
        """The options that must be on for object *obj* (``dir/name.o``) to be built into vmlinux,
        or None when no Makefile line builds it (a generated or unusual object)."""
        directory, _, name = obj.rpartition("/")
        rules = self.rules(directory).get(name, [])
        if not rules or _depth > 4:
            return None
        options: list[frozenset[str]] = []
        for r in rules:
            if r.kind in LIST_KINDS:
                above = self.dir_gates(directory)
                if above is not None:
                    options.append(above | r.gates)
            else:  # a part of the composite object <kind>.o
                whole = self.gates(f"{directory}/{r.kind}.o" if directory else f"{r.kind}.o", _depth + 1)
                if whole is not None:
                    options.append(whole | r.gates)
        if not options:
            return None
        # Built in several ways (obj-$(CONFIG_A) and obj-$(CONFIG_B)): only what every way needs.
        return frozenset.intersection(*options)
