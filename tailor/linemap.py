"""Line-level mapping: traced pcs -> source lines (DWARF, via ``addr2line``) -> the ``#if`` options around them.

Object-level mapping (:mod:`tailor.kmap`) sees an option only when it gates a
whole object file. Code under ``#ifdef CONFIG_X`` inside an object that is
always built (``kernel/fork.c``, a header's inline function) is invisible to
it. The probe kernel is built with line tables (``DEBUG_INFO_REDUCED``:
:data:`tailor.probe.LINE_TABLES`), so each traced pc has a file and line, and
:mod:`tailor.ifdef` gives the options that the preprocessor conditions around
that line require.

:func:`source_lines`
    ``addr2line -a -i`` over the pcs in one batch: each pc's line, and the lines
    of the inlined calls it sits in (an inline function's ``#ifdef`` counts
    where it was inlined).
:func:`options_by_function`
    ``{option: [functions]}``: the options required around the lines of each
    function's traced pcs, as :func:`tailor.discover.map_functions` gives for objects.

Paths in the line tables are relative to the source tree (kbuild runs with
``-ffile-prefix-map``) or, as ``addr2line`` joins them with the compilation
directory, under the kernel's build directory; lines outside the tree
(compiler built-ins) are skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterable

from tailor import ifdef
from tailor.errors import TailorError

ADDR2LINE = "addr2line"


def parse_addr2line(text: str) -> dict[int, list[tuple[str, int]]]:
    """Parse ``addr2line -a -i`` output: an ``0x...`` line per address, then its ``file:line`` lines
    (innermost first; ``??:0`` and ``(discriminator N)`` suffixes are dropped)."""
    out: dict[int, list[tuple[str, int]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("0x"):
            try:
                current = int(line, 16)
            except ValueError:
                current = None
                continue
            out.setdefault(current, [])
            continue
        if current is None or ":" not in line:
            continue
        path, _, rest = line.rpartition(":")
        number = rest.split(" ", 1)[0]
        if path.startswith("??") or not number.isdigit() or number == "0":
            continue
        out[current].append((path, int(number)))
    return out


def source_lines(vmlinux: Path, pcs: Iterable[int], timeout: float = 600) -> dict[int, list[tuple[str, int]]]:
    """Each pc's source lines in *vmlinux* (its own, then the inlined calls around it), by one ``addr2line``."""
    pcs = sorted(set(pcs))
    if not pcs:
        return {}
    if shutil.which(ADDR2LINE) is None:
        raise TailorError(f"{ADDR2LINE} not found; install binutils (./setup.sh installs build-essential)")
    try:
        proc = subprocess.run([ADDR2LINE, "-a", "-i", "-e", str(vmlinux)], input="".join(f"{pc:#x}\n" for pc in pcs),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TailorError(f"{ADDR2LINE} on {vmlinux} took over {timeout:.0f} s for {len(pcs)} pcs") from None
    if proc.returncode != 0:
        raise TailorError(f"{ADDR2LINE} on {vmlinux} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return parse_addr2line(proc.stdout)


_BUILT_ELSEWHERE = re.compile(r"^/.*/kernel/(?:[0-9a-f]{16}/build|\.stage)/(.+)$")
"""An absolute name under some tailor kernel's build directory: the kernel was built in another checkout
(or its out/ moved) and the line tables still name that directory."""


def _tree_path(srctree: Path, name: str, objdir: Path | None = None) -> Path | None:
    """The source file *name* (as the line tables spell it) in *srctree*: relative names are the tree's;
    absolute ones under the build directory *objdir* (the compilation directory kbuild ran in), or under
    a tailor kernel's build directory elsewhere (:data:`_BUILT_ELSEWHERE`), are taken relative to it;
    anything else is outside the tree (None)."""
    name = name.removeprefix("./")
    path = Path(name)
    if path.is_absolute():
        for root in filter(None, (objdir, srctree)):
            try:
                path = srctree / Path(os.path.normpath(path)).relative_to(Path(root).resolve())
                break
            except ValueError:
                continue
        else:
            moved = _BUILT_ELSEWHERE.match(os.path.normpath(name))
            if moved is None:
                return None
            path = srctree / moved.group(1)
    else:
        path = srctree / path
    try:
        path.resolve().relative_to(srctree.resolve())
    except ValueError:
        return None
    return path if path.is_file() else None


def required_at(srctree: Path, lines: list[tuple[str, int]], objdir: Path | None = None) -> set[str]:
    """The options the ``#if`` conditions around *lines* (one pc's line and its inline chain) require."""
    need: set[str] = set()
    for name, number in lines:
        path = _tree_path(srctree, name, objdir)
        if path is None:
            continue
        try:
            required, _, _ = ifdef.options_for_line(path, number)
        except OSError:
            continue
        need |= required
    return need


def options_by_function(lines: dict[int, list[tuple[str, int]]], function: Callable[[int], str | None],
                        srctree: Path, objdir: Path | None = None) -> dict[str, list[str]]:
    """``{option: [functions]}``: for each pc of *lines*, the options required around its lines, credited to
    the function it is in (*function* maps a pc to its name); *objdir* is the kernel's build directory, which
    absolute names in the line tables may start with."""
    by_option: dict[str, set[str]] = {}
    for pc, where in lines.items():
        fn = function(pc)
        if fn is None:
            continue
        for opt in required_at(srctree, where, objdir):
            by_option.setdefault(opt, set()).add(fn)
    return {opt: sorted(fns) for opt, fns in sorted(by_option.items())}


_STUB = re.compile(r"^static\s+(?:__always_inline|inline)\b[^(=;]*?\b([A-Za-z_]\w*)\s*\(")
"""A ``static inline`` function definition starting on one line: its name is the word before the first ``(``."""
STUB_DIRS = ("include", "arch/x86/include")


def stubs(srctree: Path, cache: Path | None = None) -> dict[str, list[str]]:
    """``{function: [options]}``: the header functions that have a ``static inline`` stand-in compiled only
    when one of those options is off (``#ifdef CONFIG_X ... #else static inline void f(void) {} #endif``).

    A call to such a function compiles to the stub, usually nothing, in a kernel without the option: code
    entered only through such calls runs as a hook of its caller's subsystem. The header trees of
    :data:`STUB_DIRS` are scanned once; with *cache* the result is kept there."""
    if cache is not None and cache.is_file():
        try:
            return json.loads(cache.read_text())
        except (OSError, ValueError):
            pass
    out: dict[str, set[str]] = {}
    for top in STUB_DIRS:
        for header in sorted((srctree / top).rglob("*.h")):
            try:
                text = header.read_text(errors="replace")
            except OSError:
                continue
            if "static inline" not in text and "static __always_inline" not in text:
                continue
            conds = None
            for number, line in enumerate(text.splitlines(), 1):
                if not line.startswith("static"):
                    continue
                m = _STUB.match(line)
                if m is None:
                    continue
                conds = conds or ifdef.conditions(text)
                off = ifdef.forbidden_options(conds.at(number))
                if off:
                    out.setdefault(m.group(1), set()).update(off)
    result = {name: sorted(opts) for name, opts in sorted(out.items())}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result, sort_keys=True))
    return result
