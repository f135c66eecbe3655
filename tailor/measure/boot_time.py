"""Boot time: ``out/bench/boot.json``.

Boot time is measured from the guest, Lupine-style: the first line of the
generated init (``tailor-init: start``, :data:`MARKER`) goes to the serial
console and the host timestamps each console line as it arrives (time since
qemu started). An I/O-port write would need ``/dev/port`` (CONFIG_DEVPORT),
which lupine-base does not have, so the serial marker is the signal. Every
kernel boots with ``quiet`` added to its command line (:data:`MEASURE_CMDLINE`)
so that console speed, not kernel log volume, does not decide the result.
:func:`boot_once` is one such boot test (the memory bisection uses it too).

Each kernel is booted both ways qemu can start it (:data:`tailor.qemu.BOOT_METHODS`): by PVH
(the ELF vmlinux, no decompressor; the default boot of tests and benchmarks, and Firecracker's)
when its config has ``CONFIG_PVH=y``, and from its bzImage. A row's ``init_s``/``ready_s``
are those of its default method (``boot``); ``methods`` holds every method's figures.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Callable

from tailor import boot, qemu
from tailor.bench import Variant, bench_dir, conditions, report_variants, result_row, say, spread
from tailor.errors import TailorError
from tailor.kinds import BootMethod
from tailor.recipe import Recipe
from tailor.records import load_boot_result
from tailor.records.bench import save_bench

MARKER = "tailor-init: "
"""Prefix of every line the generated init prints; its first (``tailor-init: start``, printed
before anything else) is the guest's 'init is running' signal."""

MEASURE_CMDLINE = "quiet"
"""Added to every kernel's command line in boot-time and memory runs, the same for all kernels."""

BOOT_RUNS = 5

_CONSOLE_LINE = re.compile(r"^\[\s*([0-9]+\.[0-9]+)\] (.*)$")


def console_times(console_log: str, marker: str = MARKER) -> float | None:
    """Host time (s since qemu started) of the first console.log line containing *marker*."""
    for line in console_log.splitlines():
        m = _CONSOLE_LINE.match(line)
        if m and marker in m.group(2):
            return float(m.group(1))
    return None


def measured_recipe(recipe: Recipe, memory: int | None = None, timeout: int | None = None) -> Recipe:
    """*recipe* as measured: ``quiet`` added to its command line, and *memory*/*timeout* if given."""
    cmdline = f"{recipe.kernel.cmdline} {MEASURE_CMDLINE}".strip()
    test = recipe.test
    ready = test.ready or re.escape(MARKER)
    test = replace(test, ready=ready, memory=memory or test.memory, timeout=timeout or test.timeout)
    return replace(recipe, kernel=replace(recipe.kernel, cmdline=cmdline), test=test)


def boot_once(v: Variant, outdir: Path, memory: int | None = None, timeout: int | None = None,
              accel: str | None = None, method: str | None = None) -> dict:
    """One measured boot test of *v* (by *method*, default :func:`tailor.qemu.kernel_file`'s);
    returns ``{"pass", "init_s", "ready_s", "accel", "reason"}``."""
    recipe = measured_recipe(v.recipe, memory, timeout)
    kernel, _ = qemu.kernel_file(v.kernel, method)
    try:
        result = boot.run(recipe, kernel, v.image, outdir, accel=accel)
        ok, reason = True, ""
    except TailorError as e:
        ok, reason = False, str(e).splitlines()[0]
        try:
            result = load_boot_result(outdir / "result.json").dump()
        except TailorError:
            result = {}
    log = outdir / "console.log"
    init_s = console_times(log.read_text(errors="replace")) if log.is_file() else None
    return {"pass": ok, "init_s": init_s, "ready_s": result.get("time_to_ready_s"),
            "accel": result.get("accel"), "reason": reason}


def methods_of(v: Variant) -> list[str]:
    """The boot methods *v*'s kernel supports, its default first (``pvh`` only with CONFIG_PVH=y)."""
    default = qemu.kernel_file(v.kernel)[1]
    return [default] + [m for m in qemu.BOOT_METHODS if m != default and m is not BootMethod.PVH]


def measure_boot(runs: int = BOOT_RUNS, apps: dict[str, Recipe | str] | None = None,
                 accel: str | None = None, log: Callable[[str], None] = say) -> dict:
    """Boot every variant *runs* times by each of its boot methods, interleaved (variant A by PVH,
    A from bzImage, B by PVH, ..., then again); writes ``boot.json``."""
    todo = [(v, m) for v in report_variants(apps) if not v.missing for m in methods_of(v)]
    samples: dict[tuple[str, str], dict] = {(v.key, m): {"init": [], "ready": [], "errors": []} for v, m in todo}
    accel_seen = set()
    for i in range(runs):
        for v, m in todo:
            s = samples[(v.key, m)]
            if s["errors"]:
                continue  # a kernel that failed once is not booted again (a failure costs the whole timeout)
            outdir = bench_dir() / "boot" / v.app / v.variant / m
            r = boot_once(v, outdir, accel=accel, method=m)
            accel_seen.add(r["accel"])
            if r["pass"] and r["init_s"] is not None:
                s["init"].append(r["init_s"])
                if r["ready_s"] is not None:
                    s["ready"].append(r["ready_s"])
            else:
                s["errors"].append(r["reason"] or "init marker not seen")
            log(f"boot {v.key} ({m}) run {i + 1}/{runs}: "
                + (f"init {r['init_s']:.3f} s, ready {r['ready_s']} s" if r["pass"] and r["init_s"] is not None
                   else f"FAILED: {s['errors'][-1]}"))
    results = []
    for v in report_variants(apps):
        row = result_row(v)
        if v.missing:
            row["missing"] = v.missing
        else:
            methods = {}
            for m in methods_of(v):
                s = samples[(v.key, m)]
                methods[m] = {"init_s": spread(s["init"]), "ready_s": spread(s["ready"]), "errors": s["errors"]}
            default = methods_of(v)[0]
            row.update({"boot": default, "methods": methods, **methods[default]})
        results.append(row)
    return save_bench("boot", {"kind": "boot", "conditions": conditions(accel), "runs": runs,
                               "cmdline_extra": MEASURE_CMDLINE, "marker": MARKER,
                               "accel_used": sorted(a for a in accel_seen if a), "results": results})
