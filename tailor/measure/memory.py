"""Memory footprint: ``out/bench/memory.json``.

:func:`measure_memory` finds, for every variant, the smallest guest memory
(MiB) with which the app's whole boot test (probe included) still passes, by
bisection (:func:`bisect_min`) between :data:`MEMORY_RANGE`'s bounds.

For each app's own kernel it then says what that minimum is made of
(:func:`breakdown`): the kernel's own parts as its ``Memory:`` boot line gives them
(code, rwdata, rodata, init, bss; "reserved" also holds the page structures and
firmware areas), the initramfs archive as loaded (held until it is unpacked) and the
tree unpacked from it (kept in page cache for the VM's life), and the rest (the app,
page tables, slab, what the kernel keeps free). And it measures the other roots
(:data:`ALTERNATIVES`): the same tree as the other image format (an ext2 image on
virtio-blk, which the kernel reads page by page instead of holding a copy, or a cpio
initramfs) and, for :data:`GZIP_APPS`, a gzip initramfs, each with its own minimum and
time to ready.
"""

from __future__ import annotations

import gzip
import os
import re
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

from tailor import boot, config, kernel, qemu, records, rootfs
from tailor.bench import Variant, bench_dir, conditions, line_apps, report_variants, result_row, say
from tailor.errors import TailorError
from tailor.kinds import RootFormat
from tailor.measure.boot_time import MEASURE_CMDLINE, boot_once
from tailor.recipe import Recipe
from tailor.records.bench import save_bench
from tailor.util import atomic_path, makedirs, system_map_symbols

MEMORY_RANGE = (8, 256)
"""Bisection bounds in MiB: the low end is assumed to fail, the high end must pass."""
MEMORY_TIMEOUT_S = 60
"""Timeout of each boot test during the memory bisection (a starved guest may hang)."""
ALTERNATIVES = (RootFormat.CPIO, RootFormat.EXT2, "cpio.gz")
"""Root filesystem formats measured beside each app's own (the recipe's ``rootfs.format``) for its specific
kernel; a baseline gets the other of cpio and ext2 only."""
GZIP_APPS = ("redis",)
"""Apps whose gzip-compressed initramfs is measured: each needs its own kernel with RD_GZIP (one more
kernel build), so only the app with the largest archive of the report's three."""
GZIP_OPTION = ("RD_GZIP", "y")
"""What a kernel needs to unpack a gzip initramfs (lupine-base carries no decompressor for it)."""
READY_RUNS = 3
"""Boots per root format for the time to ready that goes with an alternative's minimum."""

_MEMORY_LINE = re.compile(r"Memory: (\d+)K/(\d+)K available \((\d+)K kernel code, (\d+)K rwdata, (\d+)K rodata, "
                          r"(\d+)K init, (\d+)K bss, (\d+)K reserved")


def parse_memory_line(console: str) -> dict | None:
    """The kernel's ``Memory: ...K/...K available (...)`` boot line as KiB figures, or None."""
    m = _MEMORY_LINE.search(console)
    if not m:
        return None
    keys = ("available", "total", "code", "rwdata", "rodata", "init", "bss", "reserved")
    return dict(zip(keys, (int(g) for g in m.groups())))


CPIO_MAGIC = b"070701"
CPIO_TRAILER = b"TRAILER!!!"


def cpio_data_size(path: Path) -> tuple[int, int]:
    """``(members, bytes)`` of the newc archive at *path*: how many members it has before
    ``TRAILER!!!`` and the sum of their data sizes (what the kernel unpacks into page cache).

    A reader kept here, beside its only user, so that the rootfs stage's code (and with it every
    root image's identity) does not change for a measurement. Raises TailorError naming *path*
    when it is not a newc archive or ends early.
    """
    members = total = 0
    with open(path, "rb") as f:
        while True:
            head = f.read(110)
            if len(head) < 110 or head[:6] != CPIO_MAGIC:
                raise TailorError(f"{path}: not a newc cpio archive (or it ends before TRAILER!!!)")
            try:
                fields = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
            except ValueError:
                raise TailorError(f"{path}: a cpio header is not hexadecimal") from None
            size, namesize = fields[6], fields[11]
            name = f.read(namesize)[:-1]
            f.seek(-(110 + namesize) % 4, os.SEEK_CUR)
            if name == CPIO_TRAILER:
                return members, total
            members += 1
            total += size
            f.seek(size + (-size % 4), os.SEEK_CUR)


def kernel_gaps(system_map: str) -> int:
    """KiB of the kernel image's alignment gaps, from its System.map text: between the end of text
    and the start of rodata, and between the end of rodata and the start of data (each section
    starts on a 2 MiB boundary). The kernel frees them, as "unused kernel image (text/rodata gap)"
    and "(rodata/data gap)", only at the end of boot. 0 when a symbol is missing."""
    want = {"_etext", "__start_rodata", "__end_rodata", "_sdata"}
    at = {name: int(address, 16) for address, _, name in system_map_symbols(system_map) if name in want}
    if set(at) != want:
        return 0
    page = lambda x: -(-x // 4096) * 4096  # noqa: E731 (PFN_ALIGN)
    return ((at["__start_rodata"] - page(at["_etext"])) + (at["_sdata"] - page(at["__end_rodata"]))) // 1024


def breakdown(memory_line: dict, min_mib: int, archive_bytes: int, unpacked_bytes: int, gaps_kib: int = 0) -> dict:
    """What *min_mib* MiB are made of, in KiB: the kernel image (code, rwdata, rodata, bss), its init
    sections and its alignment gaps (*gaps_kib*; both freed at the end of boot), the rest of
    "reserved" (page structures, firmware, the kernel's early allocations), the archive (held until
    unpacked), the unpacked tree, and the rest (the app, page tables, slab, free reserve). The
    archive and the tree are both held while it unpacks."""
    kib = lambda n: -(-n // 1024)  # noqa: E731 (bytes to KiB, rounded up)
    image = sum(memory_line[k] for k in ("code", "rwdata", "rodata", "bss"))
    archive = kib(archive_bytes)
    # "reserved" counts the kernel image, its init sections and the initrd (memblock-reserved until
    # it is unpacked and freed), besides the page structures and firmware areas
    parts = {"kernel_image": image, "kernel_init": memory_line["init"], "kernel_gaps": gaps_kib,
             "reserved_other": max(0, memory_line["reserved"] - image - memory_line["init"] - archive - gaps_kib),
             "initramfs_archive": archive, "unpacked_tree": kib(unpacked_bytes)}
    parts["rest"] = min_mib * 1024 - sum(parts.values())
    return parts


def bisect_min(passes: Callable[[int], bool], lo: int, hi: int) -> tuple[int | None, dict[int, bool]]:
    """The smallest value in (*lo*, *hi*] for which *passes* is true, assuming it is monotonic.

    *lo* is taken to fail and is not tried; *hi* is tried first, and when it
    fails the answer is None. Returns ``(value, {tried value: passed})``.
    """
    tried: dict[int, bool] = {}
    tried[hi] = passes(hi)
    if not tried[hi]:
        return None, tried
    while hi - lo > 1:
        mid = (lo + hi) // 2
        tried[mid] = passes(mid)
        if tried[mid]:
            hi = mid
        else:
            lo = mid
    return hi, tried


def quiet_stderr():
    """Silence boot.run's failure tail (expected during the memory bisection)."""
    return open(os.devnull, "w")


def measure_memory(apps: dict[str, Recipe | str] | None = None, lo: int = MEMORY_RANGE[0],
                   hi: int = MEMORY_RANGE[1], accel: str | None = None,
                   log: Callable[[str], None] = say, alternatives: bool = True) -> dict:
    """Bisect each variant's smallest passing guest memory in MiB; for each app's own kernel and each
    baseline, break that minimum down and (with *alternatives*) measure the other root formats (the
    baselines: the other of cpio and ext2 only, so that each root is also compared like with like);
    writes ``memory.json``. By default the report's apps and their copies on the other kernel lines
    (:func:`~tailor.bench.report_variants`; a copy on its own kernel and its own root only)."""
    results, extra = [], []
    images: dict[tuple[str, str], Variant] = {}  # each app's image in another format, built once for all its kernels
    copies = set(line_apps())
    for v in report_variants(apps):
        row = result_row(v)
        if v.missing:
            row["missing"] = v.missing
            results.append(row)
            continue
        found, tried = bisect_min(_passes(v, bench_dir() / "memory" / v.app / v.variant, accel, log), lo, hi)
        row.update({"min_mib": found, "tried": {str(k): tried[k] for k in sorted(tried)}, "range": [lo, hi]})
        if found is not None and v.variant != "general":
            row["root"] = v.recipe.rootfs.format
            row["breakdown"] = _breakdown_of(v, found, accel)
            if alternatives and v.app not in copies:
                extra += _alternatives(v, found, lo, hi, accel, log, images)
        results.append(row)
    return save_bench("memory", {"kind": "memory", "conditions": conditions(accel), "cmdline_extra": MEASURE_CMDLINE,
                                 "results": results, "alternatives": extra})


def _passes(v: Variant, outdir: Path, accel: str | None, log: Callable[[str], None]) -> Callable[[int], bool]:
    """A bisection oracle: does *v*'s boot test pass with *mib* MiB (its failure tail silenced)?"""
    def passes(mib: int) -> bool:
        saved = sys.stderr
        sys.stderr = quiet_stderr()
        try:
            r = boot_once(v, outdir, memory=mib, timeout=min(MEMORY_TIMEOUT_S, v.recipe.test.timeout), accel=accel)
        finally:
            sys.stderr.close()
            sys.stderr = saved
        log(f"memory {v.key} ({v.recipe.rootfs.format}) {mib} MiB: {'pass' if r['pass'] else 'fail: ' + r['reason']}")
        return r["pass"]
    return passes


def _breakdown_of(v: Variant, min_mib: int, accel: str | None, unpacked: int | None = None) -> dict:
    """:func:`breakdown` of *v* at *min_mib*, from one boot at that size without ``quiet`` (so the
    ``Memory:`` line shows). For an ext2 root the archive and the tree are 0 (nothing is unpacked);
    for a compressed archive *unpacked* is the size of what it holds."""
    outdir = bench_dir() / "memory" / v.app / f"{v.variant}-{v.image.name}-breakdown"
    kernel, _ = qemu.kernel_file(v.kernel)
    recipe = replace(v.recipe, test=replace(v.recipe.test, memory=min_mib))
    try:
        boot.run(recipe, kernel, v.image, outdir, accel=accel)
    except TailorError as e:
        return {"error": str(e).splitlines()[0]}
    line = parse_memory_line((outdir / "console.log").read_text(errors="replace"))
    if line is None:
        return {"error": "no 'Memory:' line on the console"}
    if not RootFormat(v.recipe.rootfs.format).is_disk:
        archive = v.image.stat().st_size
        if unpacked is None:
            _, unpacked = cpio_data_size(v.image)
    else:
        archive = unpacked = 0
    system_map = Path(v.kernel["dir"]) / "System.map"
    gaps = kernel_gaps(system_map.read_text(errors="replace")) if system_map.is_file() else 0
    return {"memory_line": line, "parts": breakdown(line, min_mib, archive, unpacked, gaps)}


def _alternatives(v: Variant, own_min: int, lo: int, hi: int, accel: str | None,
                  log: Callable[[str], None], images: dict[tuple[str, str], Variant]) -> list[dict]:
    """*v* (an app on its own kernel or a baseline) with each root format of :data:`ALTERNATIVES` it
    does not use (a baseline: the other of cpio and ext2 only): the image built from the same recipe
    (``out/rootfs/<app>@<format>/``, once per app, kept in *images*), its minimum memory, its
    breakdown, and the time to ready of both roots at the recipe's memory (:data:`READY_RUNS` each).
    The gzip initramfs compresses the app's cpio image (its own, or the one built here)."""
    out = []
    own = v.recipe.rootfs.format
    own_ready: float | None | object = _UNMEASURED

    def in_format(fmt: str) -> Variant:
        if fmt == own:
            return v
        if (v.app, fmt) not in images:
            images[(v.app, fmt)] = _format_variant(v, fmt)
        return replace(v, recipe=images[(v.app, fmt)].recipe, image=images[(v.app, fmt)].image)

    for fmt in ALTERNATIVES:
        if fmt == own:
            continue
        if fmt == "cpio.gz" and (v.app not in GZIP_APPS or v.variant != "specific"):
            continue
        row = {"app": v.app, "variant": v.variant, "root": fmt, "own_root": own, "own_min_mib": own_min}
        try:
            alt = _gzip_variant(v, in_format(RootFormat.CPIO).image) if fmt == "cpio.gz" else in_format(fmt)
        except TailorError as e:
            row["error"] = f"could not build the {fmt} variant: {str(e).splitlines()[0]}"
            out.append(row)
            continue
        found, tried = bisect_min(_passes(alt, bench_dir() / "memory" / v.app / f"{v.variant}-{fmt}", accel, log),
                                  lo, hi)
        row.update({"min_mib": found, "tried": {str(k): tried[k] for k in sorted(tried)},
                    "image_bytes": alt.image.stat().st_size})
        if fmt == "cpio.gz":
            row["kernel"] = alt.kernel["identity"]
        if found is not None:
            row["breakdown"] = _breakdown_of(alt, found, accel,
                                             cpio_data_size(in_format(RootFormat.CPIO).image)[1] if fmt == "cpio.gz" else None)
        if own_ready is _UNMEASURED:  # the own root's time to ready, once for all alternatives
            own_ready = _ready_median(v, bench_dir() / "memory" / v.app / f"{v.variant}-ready-{own}", accel)
        row["own_ready_s"] = own_ready
        row["ready_s"] = _ready_median(alt, bench_dir() / "memory" / v.app / f"{v.variant}-ready-{fmt}", accel)
        log(f"memory {v.key}: {own} {own_min} MiB, ready {row['own_ready_s']} s; {fmt} {found} MiB, "
            f"ready {row['ready_s']} s")
        out.append(row)
    return out


_UNMEASURED = object()


def _ready_median(v: Variant, outdir: Path, accel: str | None) -> float | None:
    """Median time to ready of :data:`READY_RUNS` measured boots of *v* (None when none passed)."""
    times = []
    for _ in range(READY_RUNS):
        r = boot_once(v, outdir, accel=accel)
        if r["pass"] and r["ready_s"] is not None:
            times.append(r["ready_s"])
    return statistics.median(times) if times else None


def _format_variant(v: Variant, fmt: str) -> Variant:
    """*v* with the same recipe's tree as a *fmt* image (``cpio`` or ``ext2``), built as
    ``out/rootfs/<app>@<fmt>/``."""
    other = replace(v.recipe, name=f"{v.recipe.name}@{fmt}", rootfs=replace(v.recipe.rootfs, format=fmt))
    rootfs.build(other)
    return replace(v, recipe=other, image=rootfs.image_path(other))


def _gzip_variant(v: Variant, cpio_image: Path) -> Variant:
    """*v* booting *cpio_image* (its tree as a cpio) gzip-compressed as its initramfs, on a kernel that can
    unpack it: the recipe's config plus :data:`GZIP_OPTION` (variant ``rd-gzip``, resolved, verified and
    built like any recipe's kernel). The archive is ``out/bench/memory/<app>/rootfs.cpio.gz`` (gzip -9,
    no name or time in its header)."""
    recipe = replace(v.recipe, variant="rd-gzip", rootfs=replace(v.recipe.rootfs, format=RootFormat.CPIO),
                     kernel=replace(v.recipe.kernel, options=v.recipe.kernel.options + (GZIP_OPTION,)))
    config.configure(recipe)
    kernel.build_for(recipe)
    info = records.app_kernel(recipe.id)
    image = makedirs(bench_dir() / "memory" / v.app) / "rootfs.cpio.gz"
    with atomic_path(image) as tmp, open(cpio_image, "rb") as src, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            while chunk := src.read(1 << 20):
                gz.write(chunk)
    return replace(v, recipe=recipe, image=image,
                   kernel={"identity": info.identity, "bzImage": info.bzimage, "vmlinux": info.vmlinux,
                           "dir": info.dir})
