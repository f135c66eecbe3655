"""The measurement report: ``out/bench/*.json`` -> ``out/report/index.html`` and ``report.md``.

:func:`build` reads whatever the benchmarks stored (see :mod:`tailor.measure`),
turns it into sections (one table per metric, each absolute number with its
ratio to every baseline measured beside it, and a bar chart), evaluates the
targets of :data:`TARGETS` (the data of ``tailor/targets.yaml``), and
renders ``templates/report.html.j2`` (charts as inline SVG, no plotting
dependency) and ``templates/report.md.j2``. It takes no measurement (it only
asks the host for its current conditions, :func:`tailor.bench.conditions`:
qemu and gcc versions, load and date, shown beside those of each stored
measurement), so it takes well under a second; a metric without data is
shown as "not measured" with what to run.

Ratios are *variant / baseline* of the same app (boot, memory, throughput)
or of the kernels (size, system calls). For sizes, times and memory lower is
better; for throughput higher is better.

Over 400 lines because each metric's section (table, ratios, charts) and the targets read the same
stored JSON rows with the same formatting helpers; the targets' own data is in ``tailor/targets.yaml``.
"""

from __future__ import annotations

import math
import string
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from tailor.bench import REPORT_APPS, bench_dir, conditions, line_apps
from tailor.errors import TailorError
from tailor.kinds import RootFormat
from tailor.paths import report_dir
from tailor.records.bench import load_bench
from tailor.templates import render
from tailor.util import write_atomic

KINDS = ("size", "boot", "initcalls", "memory", "throughput", "snapshot", "slim", "pipeline", "discover")
BASELINE_ORDER = ("microvm", "firecracker", "kata")
"""The baselines' columns, in this order, in every table that has data for them (kata beside firecracker)."""
TARGET_BASELINES = ("firecracker", "kata")
"""The baselines a target is measured against unless it names its own (``against``): one verdict each."""
VARIANT_ORDER = ("specific", "general") + BASELINE_ORDER
BENCH_HINT = {
    "size": "doit bench:size (or python benchmarks/size.py)",
    "syscalls": "doit bench:size (or python benchmarks/size.py)",
    "boot": "doit bench:boot (or python benchmarks/boot_time.py)",
    "initcalls": "doit bench:initcalls (or python benchmarks/initcalls.py)",
    "memory": "doit bench:memory (or python benchmarks/memory.py)",
    "throughput": "doit bench:throughput (or python benchmarks/throughput.py)",
    "snapshot": "doit snapshot:<app>, then python benchmarks/snapshot.py",
    "slim": "python benchmarks/slim.py",
    "pipeline": "python benchmarks/pipeline.py (outside doit)",
    "discover": "python -m tailor discover <app>, then python benchmarks/discover.py",
}


def load_results(bench: Path | None = None) -> dict[str, dict]:
    """Every ``<kind>.json`` of *bench* (default ``out/bench``) that exists, by kind, read strictly through
    its record (:mod:`tailor.records.bench`; a damaged one is a TailorError naming the file and key). The
    sections read each as the dict of its file (the rows stay as measured)."""
    bench = bench or bench_dir()
    return {kind: load_bench(kind, bench / f"{kind}.json").dump() for kind in KINDS
            if (bench / f"{kind}.json").is_file()}


# --------------------------------------------------------------------------
# Formatting


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base in (None, 0):
        return None
    return value / base


def fmt_ratio(r: float | None) -> str:
    return "–" if r is None else f"{r:.2f}x"


def fmt_mb(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.2f} MB"


def fmt_s(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f} s"


def fmt_num(x: float | None, digits: int = 0) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _app_rank(app: str) -> tuple[int, str]:
    """Apps in the report's order (hello, redis, nginx), others after them by name."""
    return (REPORT_APPS.index(app) if app in REPORT_APPS else len(REPORT_APPS), app)


def _row_order(r: dict) -> tuple:
    return (_app_rank(r["app"]), _variant_rank(r["variant"]))


def _variant_rank(variant: str) -> int:
    return VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER)


def _kind(variant: str) -> str:
    """The chart colour class of a variant: specific, general or baseline."""
    return variant if variant in ("specific", "general") else "baseline"


# --------------------------------------------------------------------------
# Charts: geometry here, drawing in the template


CHART_LABEL_W = 230
CHART_BAR_W = 380
CHART_ROW_H = 22
CHART_TOP = 8


def chart(title: str, unit: str, items: list[tuple[str, float | None, str, str]]) -> dict | None:
    """Horizontal bar chart geometry for *items* ``(label, value, value text, variant)``.

    Bars are scaled to the largest value; items without a value are left
    out. Returns None when nothing is left.
    """
    items = [i for i in items if i[1] is not None and i[1] >= 0]
    if not items:
        return None
    top = max(i[1] for i in items) or 1.0
    bars = []
    for n, (label, value, text, variant) in enumerate(items):
        width = max(1, round(value / top * CHART_BAR_W)) if value > 0 else 0
        bars.append({"label": label, "text": text, "kind": _kind(variant), "y": CHART_TOP + n * CHART_ROW_H,
                     "width": width, "value": value})
    return {"title": title, "unit": unit, "bars": bars, "label_w": CHART_LABEL_W, "bar_w": CHART_BAR_W,
            "row_h": CHART_ROW_H, "width": CHART_LABEL_W + CHART_BAR_W + 110,
            "height": CHART_TOP * 2 + len(bars) * CHART_ROW_H}


# --------------------------------------------------------------------------
# Sections


@dataclass
class Section:
    """One metric: a table (head and rows of strings), charts, notes and what is not measured."""

    id: str
    title: str
    intro: str
    head: list[str]
    rows: list[list[str]]
    charts: list[dict]
    missing: list[str]
    notes: list[str]
    measured: bool


def _baselines_in(rows: list[dict]) -> list[str]:
    present = {r.get("variant") for r in rows if not r.get("missing")}
    return [b for b in BASELINE_ORDER if b in present]


def _by_app_variant(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["app"], r["variant"]): r for r in rows}


def _result_rows(data: dict) -> tuple[list[dict], list[str], dict[tuple[str, str], dict]]:
    """A measurement's result rows in the report's order, the baselines among them, and the rows by
    ``(app, variant)``."""
    rows = sorted(data["results"], key=_row_order)
    return rows, _baselines_in(rows), _by_app_variant(rows)


def _not_measured(kind: str, title: str, intro: str, section_id: str | None = None) -> Section:
    return Section(section_id or kind, title, intro, [], [], [], [f"not measured: run {BENCH_HINT[kind]}"], [], False)


def size_sections(data: dict | None) -> list[Section]:
    """Kernel image size and options, and the attack surface (system calls)."""
    size_intro = ("bzImage (what the VMM loads) and vmlinux (the uncompressed ELF), and the number of "
                  "options set to y in the kernel's .config.")
    sc_intro = ("System calls compiled in: the `__x64_sys_*` entry points in System.map (T/t), without "
                "`__x64_sys_ni_syscall`, without the entry points that alias a `sys_ni_*` stub "
                "(e.g. the POSIX timers when POSIX_TIMERS=n) and without compiler-split parts (`.cold`); "
                "compiled-out calls are weak stubs that return -ENOSYS.")
    if not data:
        return [_not_measured("size", "Kernel image size", size_intro),
                _not_measured("syscalls", "Attack surface: system calls", sc_intro)]
    kernels = sorted(data["kernels"], key=lambda k: (_variant_rank(k["variant"]),
                                                     min((_app_rank(a) for a in k["apps"]), default=(99, ""))))
    bases = {k["variant"]: k for k in kernels if k["variant"] in BASELINE_ORDER}
    order = [b for b in BASELINE_ORDER if b in bases]
    xz = any(k.get("bzImage_xz_estimate") for k in kernels)
    head = ["kernel", "used by", "bzImage"] + [f"× {b}" for b in order] + \
           (["bzImage with xz"] + [f"× {b}" for b in order] if xz else []) + ["vmlinux"] + \
           [f"× {b}" for b in order] + ["options =y"] + [f"× {b}" for b in order]
    rows, sc_rows = [], []
    for k in kernels:
        row = [k["label"], ", ".join(k["apps"]), fmt_mb(k["bzImage"])]
        row += [fmt_ratio(ratio(k["bzImage"], bases[b]["bzImage"])) for b in order]
        if xz:
            est = k.get("bzImage_xz_estimate")
            row += [fmt_mb(est)] + [fmt_ratio(ratio(est, bases[b]["bzImage"])) for b in order]
        row += [fmt_mb(k["vmlinux"])] + [fmt_ratio(ratio(k["vmlinux"], bases[b]["vmlinux"])) for b in order]
        row += [str(k["enabled"])] + [fmt_ratio(ratio(k["enabled"], bases[b]["enabled"])) for b in order]
        rows.append(row)
        sc = k["syscalls"]
        sc_rows.append([k["label"], str(sc["real"])]
                       + [fmt_ratio(ratio(sc["real"], bases[b]["syscalls"]["real"])) for b in order]
                       + [str(sc["raw"]), str(sc["stubs"])])
    missing = [(f"{m['variant']} baseline: {m['why']}" if m["app"] == "-" else f"{m['app']} ({m['variant']}): {m['why']}")
               for m in data.get("missing", [])]
    notes = [] if order else ["no baseline kernel measured: run `doit baseline:microvm`, then the size benchmark"]
    size_notes = list(notes)
    if xz:
        size_notes.append("bzImage with xz: as built for the kernels that use xz (lupine-base does); for gzip kernels "
                     "(the baselines) estimated by compressing their payload (vmlinux.bin) with kbuild's xz flags, "
                     "so that the compressor is not the difference; ratios are to the baselines as built")
    charts = [c for c in [
        chart("bzImage size", "MB", [(k["label"], k["bzImage"] / 1e6, fmt_mb(k["bzImage"]), k["variant"])
                                     for k in kernels]),
        chart("vmlinux size", "MB", [(k["label"], k["vmlinux"] / 1e6, fmt_mb(k["vmlinux"]), k["variant"])
                                     for k in kernels]),
    ] if c]
    sc_chart = chart("system calls compiled in", "", [(k["label"], k["syscalls"]["real"],
                                                       str(k["syscalls"]["real"]), k["variant"]) for k in kernels])
    sc_head = ["kernel", "system calls"] + [f"× {b}" for b in order] + ["T/t entry points", "stubs"]
    return [
        Section("size", "Kernel image size", size_intro, head, rows, charts, missing, size_notes, True),
        Section("syscalls", "Attack surface: system calls", sc_intro, sc_head, sc_rows,
                [sc_chart] if sc_chart else [], [], notes, True),
    ]


def lines_section(data: dict | None, boot: dict | None = None, memory: dict | None = None) -> Section:
    """The report's apps on the default kernel line and on each other one (hello and hello-612), side by side."""
    title = "Kernel lines: the same recipe on Linux 6.1 and 6.12"
    intro = ("Each app's own kernel, from the same recipe on Debian's linux-source-6.1 and on its "
             "linux-source-6.12 copy (recipes/<app>-612.yaml): bzImage, options set to y and system calls "
             "compiled in (counted as in the sections above), the median boot to init and to ready "
             "(the boot benchmark's default method) and the smallest guest memory with which the boot test "
             "passes (the memory benchmark); × is the 6.12 figure over the 6.1 one.")
    boots = {(r["app"], r["variant"]): r for r in (boot or {}).get("results", []) if not r.get("missing")}

    def booted(app: str, key: str) -> float | None:
        return ((boots.get((app, "specific")) or {}).get(key) or {}).get("median")
    mins = {r["app"]: r.get("min_mib") for r in (memory or {}).get("results", [])
            if r.get("variant") == "specific" and not r.get("missing")}
    if not data:
        return _not_measured("size", title, intro, "lines")

    def own(app: str) -> dict | None:
        return next((k for k in data["kernels"] if k["variant"] == "specific" and app in k["apps"]), None)

    head = ["app", "source", "bzImage", "×", "vmlinux", "×", "options =y", "×", "system calls", "×",
            "boot to init", "×", "to ready", "×", "min memory", "×"]
    rows, missing, bars = [], [], []
    for copy, (app, _package) in line_apps().items():
        first, other = own(app), own(copy)
        if first is None or other is None:
            missing.append(f"{app if first is None else copy}: kernel not measured; run `doit build:"
                           f"{app if first is None else copy}`, then {BENCH_HINT['size']}")
            continue
        for k, base, name in ((first, None, app), (other, first, copy)):
            def cell(value, base_value, show):
                return [show(value), fmt_ratio(ratio(value, base_value)) if base else ""]
            rows.append([name, k.get("source") or "–"]
                        + cell(k["bzImage"], base and base["bzImage"], fmt_mb)
                        + cell(k["vmlinux"], base and base["vmlinux"], fmt_mb)
                        + cell(k["enabled"], base and base["enabled"], str)
                        + cell(k["syscalls"]["real"], base and base["syscalls"]["real"], str)
                        + cell(booted(name, "init_s"), booted(app, "init_s"), fmt_s)
                        + cell(booted(name, "ready_s"), booted(app, "ready_s"), fmt_s)
                        + cell(mins.get(name), mins.get(app), lambda m: "–" if m is None else f"{m} MiB"))
            bars.append((f"{app} on {(k.get('source') or '?').split(' ')[0].replace('linux-source-', '')}",
                         k["bzImage"] / 1e6, fmt_mb(k["bzImage"]), "specific" if base is None else "general"))
    charts = [c for c in [chart("bzImage size by kernel line", "MB", bars)] if c]
    return Section("lines", title, intro, head, rows, charts, missing, [], bool(rows))


def _spread_text(s: dict | None) -> str:
    if not s or s.get("median") is None:
        return "–"
    return f"{s['min']:.3f}–{s['max']:.3f}"


def boot_section(data: dict | None) -> Section:
    intro = ("Host time from starting qemu to the init's first console line (`tailor-init: start`, the "
             "guest's signal) and to the app's ready pattern, with `quiet` on every kernel's command line; "
             "median of N boots with min–max. Each kernel is booted both ways: by PVH (qemu loads the ELF "
             "vmlinux and enters it directly, as Firecracker does; the default boot) and from the bzImage "
             "(setup code and decompressor first). Ratios compare the same boot method.")
    if not data:
        return _not_measured("boot", "Boot time", intro)
    rows_in, order, idx = _result_rows(data)
    head = ["app", "kernel", "boot", "to init (median)", "min–max"] + [f"× {b}" for b in order] + \
           ["to ready (median)", "min–max"] + [f"× {b}" for b in order]
    rows, missing, items = [], [], []
    for r in rows_in:
        if r.get("missing"):
            missing.append(f"{r['app']} on {r['variant']}: {r['missing']}")
            continue
        for method, m in _methods(r).items():
            init, ready = m["init_s"], m["ready_s"]
            bases = {b: _methods(idx.get((r["app"], b))).get(method) for b in order}
            row = [r["app"], r["label"], method, fmt_s(init["median"]), _spread_text(init)]
            row += [fmt_ratio(ratio(init["median"], _median(bases[b], "init_s"))) for b in order]
            row += [fmt_s(ready["median"]), _spread_text(ready)]
            row += [fmt_ratio(ratio(ready["median"], _median(bases[b], "ready_s"))) for b in order]
            rows.append(row)
            if m.get("errors"):
                missing.append(f"{r['app']} on {r['variant']} ({method}): {len(m['errors'])} failed boot(s): "
                               f"{m['errors'][0]}")
            items.append((f"{r['app']} · {r['label']} · {method}", init["median"], fmt_s(init["median"]),
                          r["variant"]))
    notes = [f"{data['runs']} boots per kernel and boot method, accelerator: "
             f"{', '.join(data.get('accel_used') or ['?'])}"]
    c = chart("boot to init (median)", "s", items)
    return Section("boot", "Boot time", intro, head, rows, [c] if c else [], missing, notes, True)


def _methods(row: dict | None) -> dict[str, dict]:
    """A boot row's figures by boot method (a row stored before PVH boots was measured from its bzImage)."""
    if not row or row.get("missing"):
        return {}
    if "methods" in row:
        return row["methods"]
    return {"bzimage": {k: row[k] for k in ("init_s", "ready_s", "errors") if k in row}}


def _median(row: dict | None, key: str) -> float | None:
    if not row or row.get("missing") or not row.get(key):
        return None
    return row[key].get("median")


def initcalls_section(data: dict | None) -> Section:
    intro = ("Where boot time goes: one boot of hello per kernel with `initcall_debug loglevel=8`; the kernel "
             "times every initcall it runs (its own clock, coarse early in boot) and each is named from the "
             "kernel's System.map; `printk.time=1` stamps each kernel line with the kernel's clock, which "
             "gives its own time to init and the longest stretches in which it printed nothing (work outside "
             "initcalls). These boots print far more than a measured boot, so only these figures count here. "
             "The notes list the baseline's most expensive initcalls and what lupine-base does with each.")
    if not data:
        return _not_measured("initcalls", "Where boot time goes: initcalls", intro)
    rows_in, order, idx = _result_rows(data)
    top = data.get("top", 5)
    head = ["kernel", "kernel time to init", "initcalls run", "their time"] + [f"#{n + 1}" for n in range(top)]
    rows, missing, items, notes = [], [], [], []
    for r in rows_in:
        if r.get("missing") or r.get("error"):
            missing.append(f"{r['app']} on {r['variant']}: {r.get('missing') or r.get('error')}")
            continue
        cells = [f"{t['fn']} {t['usecs'] / 1000:.0f} ms" for t in r["top"]]
        rows.append([r["label"], fmt_s(r.get("kernel_init_s")), str(r["count"]), f"{r['total_us'] / 1000:.0f} ms"]
                    + cells + ["–"] * (top - len(cells)))
        items.append((r["label"], r["total_us"] / 1000, f"{r['total_us'] / 1000:.0f} ms", r["variant"]))
        if r.get("gaps"):
            notes.append(f"{r['label']}: longest silences of the kernel log: "
                         + "; ".join(f"{g['ms']:.0f} ms between `{g['after']}` and `{g['before']}`" for g in r["gaps"]))
    mine = idx.get(("hello", "specific"))
    for b in order:
        base = idx.get(("hello", b))
        if not mine or mine.get("error") or not base or base.get("error"):
            continue
        from_base = dropped(base, mine)
        spent = sum(d["usecs"] for d in from_base if d["kernel_usecs"] is None)
        notes.append(f"{b}'s {len(from_base)} most expensive initcalls, and lupine-base: "
                     + "; ".join(f"{d['fn']} {d['usecs'] / 1000:.0f} ms -> "
                                 + ("not run" if d["kernel_usecs"] is None else f"{d['kernel_usecs'] / 1000:.0f} ms")
                                 for d in from_base)
                     + f" (lupine-base drops {spent / 1000:.0f} ms of them by not having the code)")
    c = chart("time in initcalls", "ms", items)
    return Section("initcalls", "Where boot time goes: initcalls", intro, head, rows, [c] if c else [], missing,
                   notes, True)


def dropped(baseline: dict, kernel: dict, n: int = 10) -> list[dict]:
    """The *n* most expensive initcalls of *baseline*'s row and what *kernel*'s row does with each:
    ``{"fn", "usecs", "kernel_usecs"}`` with ``kernel_usecs`` None when the kernel does not run it."""
    mine = kernel.get("all") or {}
    ranked = sorted((baseline.get("all") or {}).items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [{"fn": fn, "usecs": us, "kernel_usecs": mine.get(fn)} for fn, us in ranked]


def memory_section(data: dict | None) -> Section:
    intro = ("The smallest guest memory (MiB) with which the app's boot test still passes, found by "
             "bisection (`quiet` on the command line).")
    if not data:
        return _not_measured("memory", "Memory footprint", intro)
    rows_in, order, idx = _result_rows(data)
    head = ["app", "kernel", "min memory"] + [f"× {b}" for b in order] + ["boots tried"]
    rows, missing, items = [], [], []
    for r in rows_in:
        if r.get("missing"):
            missing.append(f"{r['app']} on {r['variant']}: {r['missing']}")
            continue
        v = r.get("min_mib")
        text = f"{v} MiB" if v is not None else f"> {r['range'][1]} MiB"
        row = [r["app"], r["label"], text]
        row += [fmt_ratio(ratio(v, (idx.get((r["app"], b)) or {}).get("min_mib"))) for b in order]
        row.append(str(len(r.get("tried", {}))))
        rows.append(row)
        items.append((f"{r['app']} · {r['label']}", v, text, r["variant"]))
    c = chart("minimum guest memory", "MiB", items)
    return Section("memory", "Memory footprint", intro, head, rows, [c] if c else [], missing, [], True)


BREAKDOWN_PARTS = (("kernel_image", "kernel image"), ("kernel_init", "kernel init (freed)"),
                   ("kernel_gaps", "image alignment gaps (freed)"),
                   ("reserved_other", "other reserved"), ("initramfs_archive", "initramfs archive"),
                   ("unpacked_tree", "unpacked tree"), ("rest", "app and the rest"))
SLOWER_OK = 1.05
"""A root format counts as not slowing boot when its time to ready is at most this ratio of the other's."""


def memory_breakdown_section(data: dict | None) -> Section:
    intro = ("What each app's minimum memory (on its own kernel and each baseline) is made of, in MiB: the "
             "kernel image (code, data, bss) and init sections from the kernel's `Memory:` boot line, the "
             "2 MiB alignment gaps between its text, rodata and data (freed, like init, only at the end of "
             "boot, so held while the initramfs unpacks); the rest of what it reserves "
             "(page structures, firmware areas); the initramfs archive (held until unpacked) and the tree "
             "unpacked from it (kept in page cache); and the rest (the app, page tables, slab, free reserve). "
             "A kernel runs at its load address (`PHYSICAL_START`: 16 MiB by default, 2 MiB in lupine-base), "
             "so a guest needs at least that plus the image however little its app needs; the memory below "
             "the load address counts in the rest. "
             "An ext2 root on virtio-blk is read page by page (no archive, no copy). Beside each app's own "
             "root (the recipe's format), the same tree in the other format (and, for redis, as a gzip "
             "initramfs), measured the same way, with the time to ready of both roots at the recipe's memory.")
    title = "What the minimum memory is made of"
    if not data:
        return _not_measured("memory", title, intro, "memory-breakdown")
    alts: dict[tuple[str, str], list[dict]] = {}
    for a in data.get("alternatives", []):
        alts.setdefault((a["app"], a["variant"]), []).append(a)
    head = ["app", "kernel", "root", "min memory"] + [label for _, label in BREAKDOWN_PARTS] + ["to ready (median)"]
    rows, missing, notes = [], [], []
    by = {(r["app"], r["variant"]): r for r in data["results"]}
    for r in sorted(data["results"], key=_row_order):
        if r.get("variant") == "general" or r.get("missing") or "breakdown" not in r:
            continue
        own = r.get("root", RootFormat.CPIO)
        mine = alts.get((r["app"], r["variant"]), [])
        own_ready = next((a["own_ready_s"] for a in mine if a.get("own_ready_s") is not None), None)
        entries = [(own, r["min_mib"], r["breakdown"], own_ready)]
        for alt in mine:
            if alt.get("error"):
                missing.append(f"{r['app']} on {r['variant']} ({alt['root']}): {alt['error']}")
            else:
                entries.append((alt["root"], alt.get("min_mib"), alt.get("breakdown") or {}, alt.get("ready_s")))
        for root, mib, bd, ready in entries:
            if bd.get("error"):
                missing.append(f"{r['app']} on {r['variant']} ({root}) breakdown: {bd['error']}")
            parts = bd.get("parts") or {}
            rows.append([r["app"], r["label"], root, f"{mib} MiB" if mib is not None else "–"]
                        + [f"{parts[k] / 1024:.1f}" if k in parts else "–" for k, _ in BREAKDOWN_PARTS]
                        + [fmt_s(ready)])
        if r["variant"] != "specific" or own_ready is None or len(entries) < 2:
            continue
        fine = [(mib, root) for root, mib, _, ready in entries
                if mib is not None and ready is not None and ready <= own_ready * SLOWER_OK]
        pick = min(fine)[1] if fine else own
        notes.append(f"{r['app']}: " + "; ".join(
            f"{root} {mib} MiB, ready in {fmt_s(ready)}" for root, mib, _, ready in entries)
            + f"; smallest floor without slowing boot (at most {SLOWER_OK:g}x {own}'s time to ready): {pick}")
        for alt in mine:
            same = [(b, a) for b in BASELINE_ORDER for a in alts.get((r["app"], b), [])
                    if a["root"] == alt["root"] and a.get("min_mib") and alt.get("min_mib")]
            if same:
                notes.append(f"{r['app']} with {'an' if alt['root'].startswith('e') else 'a'} {alt['root']} root on every kernel too: {alt['min_mib']} MiB = "
                             + ", ".join(f"{fmt_ratio(ratio(alt['min_mib'], a['min_mib']))} {b}'s "
                                         f"{a['min_mib']} MiB" for b, a in same)
                             + f" (with {own}: " + ", ".join(
                                 f"{fmt_ratio(ratio(r['min_mib'], (by.get((r['app'], b)) or {}).get('min_mib')))}"
                                 f" {b}'s" for b, _ in same) + ")")
    return Section("memory-breakdown", title, intro, head, rows, [], missing, notes, True)


def throughput_section(data: dict | None) -> Section:
    intro = ("Requests per second from the host through the forwarded loopback port: redis-benchmark "
             "(GET and SET) for redis, ApacheBench for nginx, fixed parameters; in each round every kernel of "
             "the app is booted in turn, warmed up and loaded; median of the rounds with min–max. "
             "Higher is better.")
    if not data:
        return _not_measured("throughput", "Throughput", intro)
    rows_in, order, idx = _result_rows(data)
    head = ["app", "kernel", "test", "requests/s (median)", "min–max"] + [f"× {b}" for b in order] + \
           ["stalled runs"]
    rows, missing, items = [], [], []
    for r in rows_in:
        if r.get("missing") or (r.get("error") and not r.get("tests")):
            missing.append(f"{r['app']} on {r['variant']}: {r.get('missing') or r.get('error')}")
            continue
        for test, s in sorted(r["tests"].items()):
            row = [r["app"], r["label"], test, fmt_num(s["median"]), f"{fmt_num(s['min'])}–{fmt_num(s['max'])}"]
            for b in order:
                base = (idx.get((r["app"], b)) or {}).get("tests", {}).get(test, {})
                row.append(fmt_ratio(ratio(s["median"], base.get("median"))))
            row.append(f"{s['stalled']}/{s['runs']}" if "runs" in s else "–")
            rows.append(row)
            items.append((f"{r['app']} {test} · {r['label']}", s["median"], fmt_num(s["median"]), r["variant"]))
    p = data.get("params", {})
    notes = [f"stalled runs: the slowest request took over {data.get('stall_ms', 100):g} ms, a TCP "
             "retransmission timeout in qemu's user-mode network (packet loss, not guest work); the median "
             "is taken over the other runs when there are any"]
    if "redis-benchmark" in p:
        rb = p["redis-benchmark"]
        notes.append(f"redis-benchmark -n {rb['requests']} -c {rb['clients']} -t {rb['tests']}, "
                     f"{rb['rounds']} rounds")
    if "ab" in p:
        notes.append(f"ab -n {p['ab']['requests']} -c {p['ab']['clients']}, {p['ab']['rounds']} rounds")
    charts = []
    for app in sorted({i[0].split(" ")[0] for i in items}, key=_app_rank):
        c = chart(f"{app} throughput (median)", "req/s", [i for i in items if i[0].split(" ")[0] == app])
        if c:
            charts.append(c)
    return Section("throughput", "Throughput", intro, head, rows, charts, missing, notes, True)


def pipeline_section(data: dict | None) -> Section:
    intro = ("The pipeline's own cost: a no-op `doit build:<app>` (everything up to date) against kbuild's "
             "own no-op `make bzImage` in the already-built kernel tree; and, when measured, a clean build "
             "against the raw compile of the same config.")
    if not data:
        return _not_measured("pipeline", "The pipeline itself", intro)
    n = data["noop"]
    d, k = n["doit_s"], n["kbuild_s"]
    rows = [[f"no-op {n['doit_cmd']}", fmt_s(d["median"]), _spread_text(d),
             fmt_ratio(ratio(d["median"], k["median"])) + " of kbuild's no-op"],
            [f"no-op {n['kbuild_cmd']} ({data['app']}'s kernel)", fmt_s(k["median"]), _spread_text(k), "1.00x"]]
    items = [(f"no-op doit build:{data['app']}", d["median"], fmt_s(d["median"]), "specific"),
             ("no-op make bzImage", k["median"], fmt_s(k["median"]), "baseline")]
    c = data.get("clean")
    if c:
        rows.append([f"clean doit build:{data['app']}", fmt_s(c["doit_s"]), "–",
                     fmt_ratio(ratio(c["doit_s"], c["raw_make_s"])) + " of the raw compile"])
        rows.append(["raw make olddefconfig bzImage (same config)", fmt_s(c["raw_make_s"]), "–", "1.00x"])
        items += [(f"clean doit build:{data['app']}", c["doit_s"], fmt_s(c["doit_s"]), "specific"),
                  ("raw compile", c["raw_make_s"], fmt_s(c["raw_make_s"]), "baseline")]
    notes = [] if n.get("doit_was_noop", True) else ["warning: a timed doit run executed a task (not a no-op)"]
    if not c:
        notes.append("clean build not measured (python benchmarks/pipeline.py --clean; takes two kernel compiles)")
    ch = chart("pipeline times", "s", items)
    return Section("pipeline", "The pipeline itself", intro, ["what", "median", "min–max", "ratio"], rows,
                   [ch] if ch else [], [], notes, True)


def snapshot_section(data: dict | None) -> Section:
    intro = ("Starting an app from the snapshot `doit snapshot:<app>` took once it was ready (`tailor run "
             "--from-snapshot`: qemu loads the saved VM, the host reseeds the guest's random pool) against "
             "booting it (`tailor run`), each until the recipe's probe answers through a forwarded port; "
             "interleaved runs in one benchmark run. Size on disk counts the blocks the files use.")
    if not data or not data.get("apps"):
        return _not_measured("snapshot", "Start from a snapshot", intro)
    rows, items = [], []
    for app in sorted(data["apps"], key=_app_rank):
        r = data["apps"][app]
        c, t = r["cold_s"], r["restore_s"]
        rows.append([app, f"{fmt_s(c['median'])} ({fmt_s(c['min'])}–{fmt_s(c['max'])})",
                     f"{fmt_s(t['median'])} ({fmt_s(t['min'])}–{fmt_s(t['max'])})", fmt_ratio(r["ratio"]),
                     fmt_s(r["save_s"]), fmt_mb(r["state_on_disk"] + r["disk_on_disk"]),
                     f"{fmt_num(r['rss_mib']['cold'])} / {fmt_num(r['rss_mib']['restore'])} MiB",
                     f"{r['memory_mib']} MiB, {r['accel']}, {r['runs']} runs"])
        items += [(f"{app} cold boot", c["median"], fmt_s(c["median"]), "baseline"),
                  (f"{app} from snapshot", t["median"], fmt_s(t["median"]), "specific")]
    missing = [f"{a}: prints and exits, nothing to resume once ready" for a in ("hello",) if a not in data["apps"]]
    ch = chart("time to ready: cold boot and restore", "s", items)
    return Section("snapshot", "Start from a snapshot", intro,
                   ["app", "cold boot to ready", "restore to ready", "restore/cold", "save", "snapshot on disk",
                    "qemu RSS cold / restored", "guest"], rows, [ch] if ch else [], missing, [], True)


def _slim_cell(x: dict) -> str:
    if x.get("bytes") is None:
        return "not built: " + (x.get("reason") or "?").removeprefix("not built: ")[:120]
    size = f"{fmt_mb(x['bytes'])} ({fmt_mb(x.get('content_bytes'))} in {x['files']} files)"
    if not x["pass"]:
        return f"{size}: fails its boot test"
    mem = f", min {x['min_memory_mib']} MiB" if x.get("min_memory_mib") else ""
    return f"{size}, ready {fmt_s(x['ready_s'])}{mem}"


def slim_section(data: dict | None) -> Section:
    intro = ("Each app's root built three ways on its own kernel: `rootfs.slim: false` (the whole tree of the "
             "packages or the image), `true` (the entrypoint, its ELF closure and `rootfs.files`) and `traced` "
             "(what the app used in one boot test of the whole tree, `doit slim:<app>`). Size is the image file "
             "(an ext2 image has room for what the app writes) and, in brackets, the bytes of the files in it; "
             "ready is the median time to ready of the boot test; min is the smallest guest memory that passes it.")
    if not data or not data.get("apps"):
        return _not_measured("slim", "Root filesystem: whole, slim, traced", intro)
    rows, items = [], []
    for app in sorted(data["apps"], key=_app_rank):
        r = data["apps"][app]
        v = r["variants"]
        rows.append([app, f"{r['source']}, {r['format']}", _slim_cell(v["whole"]), _slim_cell(v["slim"]),
                     _slim_cell(v["traced"]),
                     f"{fmt_ratio(ratio(v['whole']['bytes'], v['traced']['bytes']))} "
                     f"({fmt_ratio(ratio(v['whole'].get('content_bytes'), v['traced'].get('content_bytes')))})",
                     f"{fmt_ratio(ratio(v['traced']['bytes'], v['slim']['bytes']))} "
                     f"({fmt_ratio(ratio(v['traced'].get('content_bytes'), v['slim'].get('content_bytes')))})"])
        items += [(f"{app} whole", v["whole"]["bytes"] / 1e6, fmt_mb(v["whole"]["bytes"]), "baseline"),
                  (f"{app} traced", v["traced"]["bytes"] / 1e6, fmt_mb(v["traced"]["bytes"]), "specific")]
    ch = chart("root image size: whole and traced", "MB", items)
    return Section("slim", "Root filesystem: whole, slim, traced", intro,
                   ["app", "source", "whole", "slim", "traced", "whole/traced", "traced/slim"], rows,
                   [ch] if ch else [], [], [], True)


def discover_section(data: dict | None) -> Section:
    """Discovery (trace, map, trials, minimisation) against each app's hand-found kernel."""
    title = "Discovery against the hand-found kernels"
    intro = ("Each app's kernel options found by `python -m tailor discover <app>` (traced on the probe kernel, "
             "mapped to options, then minimised by delta debugging with the recipe's boot test and exercise as "
             "the oracle) against the recipe's own, hand-found options: trial kernels built and booted (and how "
             "many of them were compiled in that run rather than found in out/kernel from an earlier one), the "
             "whole discovery's wall time, options on top of the base, bzImage and system calls compiled in; "
             "× is the discovered figure over the hand-found one. Candidates: the options the trace's code maps "
             "to through object files (Makefiles), through the `#if` conditions around its source lines, and "
             "those only the lines found.")
    if not data or not data.get("rows"):
        return _not_measured("discover", title, intro)
    rows, missing, items = [], [], []
    for r in sorted(data["rows"], key=lambda r: _app_rank(r["app"])):
        h = r.get("hand_found") or {}
        state = f"minimised ({r.get('search', 'ddmin')})" if r.get("minimised") and not r.get("untried") else \
            (f"budget spent ({len(r['untried'])} untried)" if r.get("untried") else "not minimised")
        rows.append([r["app"], state, f"{r['trial_kernels']} ({r.get('builds', 0)} compiled)",
                     f"{r['total_s'] / 60:.1f} min",
                     f"{len(r['discovered'])} / {len(r['recipe'])}", fmt_mb(r["bzImage"]), fmt_mb(h.get("bzImage")),
                     fmt_ratio(ratio(r["bzImage"], h.get("bzImage"))), f"{r['syscalls']} / {h.get('syscalls', '–')}",
                     ", ".join(sorted(set(r["discovered"]) - set(r["recipe"]))) or "none",
                     ", ".join(sorted(set(r["recipe"]) - set(r["discovered"]))) or "none",
                     _candidates(r.get("mapping")),
                     (r.get("measured") or data.get("conditions", {}).get("date") or "–")[:10]])
        if not h:
            missing.append(f"{r['app']}: hand-found kernel not built; run `doit kernel:{r['app']}`")
        items += [(f"{r['app']} discovered", r["bzImage"] / 1e6, fmt_mb(r["bzImage"]), "specific")]
        if h:
            items.append((f"{r['app']} by hand", h["bzImage"] / 1e6, fmt_mb(h["bzImage"]), "general"))
    ch = chart("bzImage: discovered and hand-found", "MB", items)
    return Section("discover", title, intro,
                   ["app", "search", "trial kernels", "wall time", "options (found / hand)", "bzImage", "by hand",
                    "×", "system calls (found / hand)", "only found", "only by hand",
                    "candidates (objects / #if lines / only lines)", "measured"], rows,
                   [ch] if ch else [], missing, [], True)


def _candidates(mapping: dict | None) -> str:
    """A discovery's candidate options by each mapping (``discover.json``'s ``mapping``), or "–" for a
    row from before it was recorded."""
    if not mapping:
        return "–"
    return " / ".join(str(len(mapping.get(k, []))) for k in ("objects", "lines", "lines_only"))


# --------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class Target:
    """One goal: ``metric`` of ``subject`` compared with ``limit`` (``<=`` or ``>=``), as a ratio to each
    baseline of ``against`` (or, ``absolute``, as the figure itself)."""

    id: str
    what: str
    metric: str
    app: str
    variant: str
    op: str
    limit: float
    gap: str
    accel: str | None = None
    absolute: bool = False
    against: tuple[str, ...] = TARGET_BASELINES


TARGETS_FILE = Path(__file__).with_name("targets.yaml")
TARGET_METRICS = ("size", "syscalls", "boot", "ready", "memory", "throughput", "noop")
GAP_FIELDS = ("figure", "baseline", "needed", "excess")
"""What a target's gap text may name in braces (it holds reasons, no measured figure): this variant's figure,
the baseline's, the figure the limit allows against it and how far the figure is from that, filled from the data."""


def _gap_fields(gap: str) -> set[str]:
    """The {names} in a gap text (a ValueError when its braces do not pair)."""
    return {name for _, name, _, _ in string.Formatter().parse(gap) if name is not None}


def load_targets(path: Path = TARGETS_FILE) -> tuple[Target, ...]:
    """The targets listed in *path* (a YAML list of :class:`Target` fields), in order."""
    names = {f.name for f in fields(Target)}
    targets = []
    for n, row in enumerate(yaml.safe_load(path.read_text()) or []):
        unknown = set(row) - names
        if unknown:
            raise TailorError(f"{path}: target {n + 1}: unknown key(s) {', '.join(sorted(unknown))}")
        if row.get("metric") not in TARGET_METRICS:
            raise TailorError(f"{path}: target {n + 1}: metric {row.get('metric')!r}; use one of "
                              f"{', '.join(TARGET_METRICS)}")
        if "against" in row:
            against = row["against"]
            if not isinstance(against, list) or not all(b in BASELINE_ORDER for b in against):
                raise TailorError(f"{path}: target {n + 1}: against {against!r}; use a list of "
                                  f"{', '.join(BASELINE_ORDER)}")
            row = dict(row, against=tuple(against))
        try:
            unknown = _gap_fields(str(row.get("gap", ""))) - set(GAP_FIELDS)
        except ValueError as e:
            raise TailorError(f"{path}: target {n + 1}: gap: {e}") from None
        if unknown:
            raise TailorError(f"{path}: target {n + 1}: gap names {', '.join(sorted(unknown))}; it may name "
                              + ", ".join("{" + f + "}" for f in GAP_FIELDS))
        targets.append(Target(**row))
    return tuple(targets)


TARGETS = load_targets()
"""The report's targets (data: ``tailor/targets.yaml``)."""


def _kernel_of(size: dict, app: str, variant: str) -> dict | None:
    for k in size.get("kernels", []):
        if k["variant"] == variant and (variant in BASELINE_ORDER or app in k["apps"]):
            return k
    return None


def _target_values(t: Target, results: dict[str, dict], against: str) -> tuple[float | None, float | None, str]:
    """(value, value of baseline *against*, value text) of a target, from the stored results; the
    value text is ``n/a`` when the target's accelerator was not used."""
    if t.metric in ("size", "syscalls"):
        size = results.get("size")
        if not size:
            return None, None, ""
        k = _kernel_of(size, t.app, t.variant)
        pick = (lambda x: x["bzImage"]) if t.metric == "size" else (lambda x: x["syscalls"]["real"])
        show = fmt_mb if t.metric == "size" else str
        base = _kernel_of(size, t.app, against)
        return (pick(k) if k else None), (pick(base) if base else None), (show(pick(k)) if k else "")
    if t.metric == "noop":
        p = results.get("pipeline")
        if not p or p.get("app") != t.app:
            return None, None, ""
        d, k = p["noop"]["doit_s"]["median"], p["noop"]["kbuild_s"]["median"]
        return d, k, fmt_s(d)
    kind = "boot" if t.metric == "ready" else t.metric
    data = results.get(kind)
    if not data:
        return None, None, ""
    if t.accel and kind == "boot" and t.accel not in (data.get("accel_used") or []):
        return None, None, "n/a"
    idx = _by_app_variant(data["results"])
    if kind == "boot":
        key = "init_s" if t.metric == "boot" else "ready_s"
        get, show = (lambda r: _median(r, key)), fmt_s
    elif kind == "memory":
        get, show = (lambda r: r.get("min_mib") if r and not r.get("missing") else None), (lambda v: f"{v} MiB")
    else:
        def get(r):
            if not r or not r.get("tests"):
                return None
            return min(s["median"] for s in r["tests"].values())
        show = fmt_num
    value = get(idx.get((t.app, t.variant)))
    row = idx.get((t.app, against))
    if t.metric == "throughput" and row and row.get("tests"):
        # per-test ratios: the target holds when the worst test meets it
        mine = (idx.get((t.app, t.variant)) or {}).get("tests") or {}
        ratios = [s["median"] / row["tests"][n]["median"] for n, s in mine.items() if n in row["tests"]]
        if ratios:
            return min(ratios), 1.0, " / ".join(f"{n} {fmt_num(s['median'])}" for n, s in sorted(mine.items()))
    return value, get(row), (show(value) if value is not None else "")


def _show(metric: str, v: float | None) -> str:
    """A target's figure as the report writes it."""
    if v is None:
        return "–"
    show = {"size": fmt_mb, "syscalls": lambda x: f"{x:.0f}", "memory": lambda x: f"{x:.0f} MiB",
            "throughput": fmt_ratio}.get(metric, fmt_s)
    return show(v)


def gap_text(t: Target, value: float | None, base: float | None) -> str:
    """The gap note of target *t* when missed, its {fields} (:data:`GAP_FIELDS`) filled from its figure *value*
    and its baseline's figure *base*."""
    needed = None if t.absolute or base is None else round(base * t.limit, 6)
    if needed is not None and t.metric == "syscalls":  # whole calls: the most (or least) the limit allows
        needed = math.floor(needed) if t.op == "<=" else math.ceil(needed)
    excess = None if needed is None or value is None else abs(value - needed)
    return t.gap.format(figure=_show(t.metric, value), baseline=_show(t.metric, base),
                        needed=_show(t.metric, needed), excess=_show(t.metric, excess))


def evaluate_targets(results: dict[str, dict]) -> list[dict]:
    """Each target against each of its baselines (an absolute one once): its value, ratio, verdict
    (met, missed, not measured, n/a) and gap note."""
    out = []
    for t in TARGETS:
        if t.absolute:
            todo = [""]
        elif t.metric == "noop":
            todo = ["kbuild no-op"]
        else:
            todo = list(t.against)
        for against in todo:
            value, base, text = _target_values(t, results, against if against in BASELINE_ORDER else "")
            r = value if t.absolute else ratio(value, base)
            if text == "n/a":
                verdict, text = "n/a", f"not measured under {t.accel.upper()} here"
            elif r is None:
                verdict = "not measured"
            else:
                met = r <= t.limit if t.op == "<=" else r >= t.limit
                verdict = "met" if met else "missed"
            out.append({
                "id": t.id, "what": t.what, "value": text or "–",
                "ratio": (fmt_s(r) if t.absolute else f"{r:.3f}x") if r is not None else "–",
                "limit": f"{t.op} {t.limit:g} s" if t.absolute else f"{t.op} {t.limit:g}x",
                "against": against or "–", "verdict": verdict,
                "gap": gap_text(t, value, base) if verdict == "missed" else "",
            })
    return out


def target_lines(results: dict[str, dict], metrics: tuple[str, ...]) -> list[str]:
    """Plain-text lines for the targets of *metrics*: figure, ratio, limit and whether it is met."""
    metric_of = {t.id: t.metric for t in TARGETS}
    lines = []
    for row in evaluate_targets(results):
        if metric_of[row["id"]] in metrics:
            lines.append(f"target {row['what']}: {row['value']} = {row['ratio']} (limit {row['limit']}, "
                         f"against {row['against']}): {row['verdict'].upper()}"
                         + (f"; to close the gap: {row['gap']}" if row["gap"] else ""))
    return lines


# --------------------------------------------------------------------------
# Rendering


def sections(results: dict[str, dict]) -> list[Section]:
    return (size_sections(results.get("size"))
            + [lines_section(results.get("size"), results.get("boot"), results.get("memory")), boot_section(results.get("boot")),
            initcalls_section(results.get("initcalls")), memory_section(results.get("memory")),
            memory_breakdown_section(results.get("memory")), throughput_section(results.get("throughput")),
            snapshot_section(results.get("snapshot")), slim_section(results.get("slim")),
            discover_section(results.get("discover")), pipeline_section(results.get("pipeline"))])


def conditions_table(results: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Conditions of each stored measurement (machine, accelerator, qemu, gcc, kernel, date)."""
    keys = ("machine", "os", "accel", "qemu", "gcc", "kernel", "load", "date")
    head = ["measurement"] + list(keys)
    rows = []
    for kind in KINDS:
        c = (results.get(kind) or {}).get("conditions")
        if c:
            rows.append([kind] + [" / ".join(map(str, c[k])) if isinstance(c.get(k), list) else str(c.get(k, "–"))
                                  for k in keys])
    return head, rows


def context(results: dict[str, dict]) -> dict:
    """Everything the report templates show."""
    secs = sections(results)
    head, rows = conditions_table(results)
    targets = evaluate_targets(results)
    counts = {v: sum(1 for t in targets if t["verdict"] == v) for v in ("met", "missed", "not measured", "n/a")}
    return {"sections": secs, "targets": targets, "counts": counts, "cond_head": head, "cond_rows": rows,
            "now": conditions(), "measured": [k for k in KINDS if k in results]}


def build(bench: Path | None = None, dest: Path | None = None) -> dict[str, Path]:
    """Render the report from *bench* (default ``out/bench``) into *dest* (default ``out/report``)."""
    results = load_results(bench)
    ctx = context(results)
    dest = dest or report_dir()
    paths = {"html": dest / "index.html", "md": dest / "report.md"}
    write_atomic(paths["html"], render("report.html.j2", **ctx))
    write_atomic(paths["md"], render("report.md.j2", **ctx))
    c = ctx["counts"]
    print(f"[report] {paths['html']} and report.md: {len(ctx['measured'])} of {len(KINDS)} measurements; "
          f"targets: {c['met']} met, {c['missed']} missed, {c['not measured']} not measured", file=sys.stderr)
    return paths


def summary(results: dict[str, dict], section_ids: tuple[str, ...], metrics: tuple[str, ...]) -> str:
    """Plain text of some sections and their targets (what the benchmark scripts print)."""
    secs = [s for s in sections(results) if s.id in section_ids]
    return render("report.txt.j2", sections=secs, targets=target_lines(results, metrics), widths=widths,
                  text_row=text_row)


def widths(head: list[str], rows: list[list[str]]) -> list[int]:
    """Column widths for a plain-text table."""
    cols = [head] + rows
    return [max(len(r[i]) for r in cols if i < len(r)) for i in range(len(head))]



def text_row(cells: list[str], w: list[int]) -> str:
    """One plain-text table row, each cell padded to its column's width."""
    return "  ".join(c.ljust(w[i]) for i, c in enumerate(cells)).rstrip()
