"""Kernel size and attack surface: ``out/bench/size.json``.

:func:`measure_size` records, for every distinct kernel, bzImage and vmlinux
bytes, an estimate of bzImage with xz (:func:`xz_estimate`), the options set
to ``y`` and the system calls compiled in (:func:`count_syscalls`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from tailor.bench import baseline_names, conditions, kernel_label, report_variants
from tailor.recipe import Recipe
from tailor.records.bench import save_bench
from tailor.util import count_enabled, system_map_symbols


def count_syscalls(system_map: str) -> dict:
    """Count the x86-64 system calls a kernel has compiled in, from its ``System.map`` text.

    Every system call has an entry point ``__x64_sys_<name>``. Compiled-out
    ones are either weak ``W`` stubs (COND_SYSCALL) or, for groups such as
    the POSIX timers, ``T`` aliases at the address of a ``sys_ni_*`` stub.
    Parts that the compiler split off a function (``__x64_sys_setitimer.cold``)
    are not entry points and never count. ``real`` counts the ``T``/``t``
    entry points that are neither ``__x64_sys_ni_syscall`` nor at the address
    of a ``sys_ni_*`` symbol; ``raw`` counts every ``T``/``t`` entry point
    except ``__x64_sys_ni_syscall`` (the plain rule); ``stubs`` the rest.
    """
    entries: list[tuple[str, str]] = []
    stub_addrs: set[str] = set()
    weak = 0
    for addr, kind, name in system_map_symbols(system_map):
        if re.match(r"^(__x64_)?sys_ni_", name):
            stub_addrs.add(addr)
        if name.startswith("__x64_sys_") and "." not in name:
            if kind in "Tt":
                entries.append((addr, name))
            elif kind in "Ww":
                weak += 1
    raw = [e for e in entries if e[1] != "__x64_sys_ni_syscall"]
    real = [e for e in raw if e[0] not in stub_addrs]
    return {"real": len(real), "raw": len(raw), "stubs": len(raw) - len(real) + weak}


XZ_FLAGS = ["--check=crc32", "--x86", "--lzma2=,dict=32MiB"]
"""The flags kbuild's ``cmd_xzkern`` gives xz for an XZ-compressed kernel (scripts/xz_wrap.sh)."""


def xz_estimate(kdir: Path) -> int | None:
    """bzImage bytes of the kernel in *kdir* with XZ compression.

    A kernel built with XZ (lupine-base uses it) gives its own bzImage size.
    For a gzip kernel (the baselines), kbuild keeps the uncompressed payload
    (``vmlinux.bin``) and the gzipped one in the object tree; the estimate
    swaps the latter for the former compressed with kbuild's own xz flags.
    None when the tree, the payload or xz is not there.
    """
    comp = kdir / "build" / "arch" / "x86" / "boot" / "compressed"
    raw, gz = comp / "vmlinux.bin", comp / "vmlinux.bin.gz"
    if (comp / "vmlinux.bin.xz").is_file():
        return (kdir / "bzImage").stat().st_size
    if not (raw.is_file() and gz.is_file()) or shutil.which("xz") is None:
        return None
    with open(raw, "rb") as f:
        proc = subprocess.run(["xz", *XZ_FLAGS, "-c"], stdin=f, capture_output=True)
    if proc.returncode != 0:
        return None
    return (kdir / "bzImage").stat().st_size - gz.stat().st_size + len(proc.stdout)

def _source(kdir: Path) -> str:
    """The kernel source a kernel was built from (its kernel.json's ``source``), or ``""`` (a baseline)."""
    try:
        return str(json.loads((kdir / "kernel.json").read_text()).get("source", ""))
    except (OSError, ValueError):
        return ""


def measure_size(apps: dict[str, Recipe | str] | None = None) -> dict:
    """Sizes, enabled options and system calls of every distinct kernel; writes ``size.json``.

    By default the report's apps on every variant, and their copies on the other kernel lines
    (hello-612, ...) on their own kernel only (:func:`tailor.bench.report_variants`)."""
    rows: dict[str, dict] = {}
    missing = []
    for v in report_variants(apps):
        if v.kernel is None:
            is_base = v.variant in baseline_names()
            entry = {"app": "-" if is_base else v.app, "variant": v.variant, "why": v.missing}
            if not v.missing.startswith("baseline input") and entry not in missing:
                missing.append(entry)
            continue
        ident = v.kernel["identity"]
        if ident in rows:
            if v.app not in rows[ident]["apps"]:
                rows[ident]["apps"].append(v.app)
            continue
        kdir = Path(v.kernel["dir"])
        smap = (kdir / "System.map").read_text(errors="replace")
        config = (kdir / "config").read_text(errors="replace")
        rows[ident] = {
            "label": kernel_label(v.recipe, v.variant),
            "variant": v.variant,
            "apps": [v.app],
            "identity": ident,
            "source": _source(kdir),
            "bzImage": (kdir / "bzImage").stat().st_size,
            "vmlinux": (kdir / "vmlinux").stat().st_size,
            "bzImage_xz_estimate": xz_estimate(kdir),
            "enabled": count_enabled(config),
            "syscalls": count_syscalls(smap),
        }
    return save_bench("size", {"kind": "size", "conditions": conditions(), "kernels": list(rows.values()),
                               "missing": missing})
