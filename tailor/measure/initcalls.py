"""Where boot time goes: ``out/bench/initcalls.json``.

One measurement-only boot per kernel with ``initcall_debug`` (and ``loglevel=8`` so that the
kernel's debug lines reach the console): the kernel prints ``initcall <fn> returned <ret>
after <N> usecs`` for every initcall it runs (init/main.c). A kernel without KALLSYMS
(lupine-base) prints the function's address instead of its name; :func:`symbolise` names it
from the kernel's own System.map. The durations are the kernel's clock at that point of the
boot (coarse, jiffies-based, until a clocksource is chosen), so a sum over many initcalls
means more than one small figure.

These boots print far more than a measured boot, so their times are not boot times: only
the initcall table comes from them. The report (:func:`tailor.report.dropped`) lists what the
baseline spends most on and whether the tailored kernel runs it at all.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from tailor import boot, qemu
from tailor.bench import Variant, bench_dir, bench_path, conditions, load_apps, result_row, say, variants
from tailor.errors import TailorError
from tailor.recipe import Recipe
from tailor.util import system_map_symbols, write_json

INITCALL_CMDLINE = "initcall_debug loglevel=8"
"""Added to the kernel command line of these boots (and ``quiet`` is not)."""

INITCALL_APPS = ("hello",)
"""Whose kernels are booted: hello's specific kernel is lupine-base itself."""

TOP = 5
"""How many of a kernel's most expensive initcalls the report lists."""

_INITCALL = re.compile(r"initcall (\S+) returned (-?\d+) after (\d+) usecs")


def parse_initcalls(console: str) -> list[dict]:
    """Every ``initcall <fn> returned <ret> after <N> usecs`` line of *console*, in order:
    ``{"fn", "ret", "usecs"}`` (``fn`` as printed: a name, ``name+0x0/0x40`` or an address)."""
    return [{"fn": m.group(1), "ret": int(m.group(2)), "usecs": int(m.group(3))}
            for m in _INITCALL.finditer(console)]


def symbolise(calls: list[dict], system_map: str) -> list[dict]:
    """*calls* with each function named: an address (``0xffffffff81...``) looked up in the
    *system_map* text (the text symbol at exactly that address), a ``name+0x0/0x40`` cut to
    ``name``. An address the map does not have stays as it is."""
    by_address: dict[int, str] = {}
    for address, kind, name in system_map_symbols(system_map):
        if kind in "tT":
            by_address.setdefault(int(address, 16), name)
    out = []
    for c in calls:
        fn = c["fn"]
        if fn.startswith("0x"):
            try:
                fn = by_address.get(int(fn, 16), fn)
            except ValueError:
                pass
        else:
            fn = fn.split("+", 1)[0]
        out.append(dict(c, fn=fn))
    return out


def summarise(calls: list[dict], top: int = TOP) -> dict:
    """``count``, ``total_us`` and the *top* most expensive initcalls (ties in boot order)."""
    ranked = sorted(enumerate(calls), key=lambda ic: (-ic[1]["usecs"], ic[0]))
    return {"count": len(calls), "total_us": sum(c["usecs"] for c in calls),
            "top": [{"fn": c["fn"], "usecs": c["usecs"]} for _, c in ranked[:top]]}


def boot_with_initcalls(v: Variant, outdir: Path, accel: str | None = None) -> dict:
    """One ``initcall_debug`` boot of *v*; its symbolised initcalls and host times."""
    kernel, method = qemu.kernel_file(v.kernel)
    try:
        result = boot.run(v.recipe, kernel, v.image, outdir, accel=accel, cmdline_extra=INITCALL_CMDLINE)
    except TailorError as e:
        return {"error": str(e).splitlines()[0]}
    console = (outdir / "console.log").read_text(errors="replace")
    system_map = Path(v.kernel["dir"]) / "System.map"
    calls = parse_initcalls(console)
    if not calls:
        return {"error": "no initcall lines on the console (initcall_debug ignored?)"}
    calls = symbolise(calls, system_map.read_text(errors="replace") if system_map.is_file() else "")
    totals: dict[str, int] = {}
    for c in calls:
        totals[c["fn"]] = totals.get(c["fn"], 0) + c["usecs"]
    return {"boot": method, "accel": result["accel"], "init_s": result["time_to_init_s"],
            "failed": [c["fn"] for c in calls if c["ret"] != 0], **summarise(calls), "all": totals}


def measure_initcalls(apps: dict[str, Recipe | str] | None = None, accel: str | None = None,
                      log: Callable[[str], None] = say) -> dict:
    """Boot each kernel of *apps* (default :data:`INITCALL_APPS`) once with initcall_debug;
    writes ``initcalls.json``."""
    results = []
    for v in variants(load_apps(INITCALL_APPS) if apps is None else apps):
        row = result_row(v)
        if v.missing:
            row["missing"] = v.missing
        else:
            row.update(boot_with_initcalls(v, bench_dir() / "initcalls" / v.app / v.variant, accel))
            log(f"initcalls {v.key}: " + (f"FAILED: {row['error']}" if "error" in row else
                                          f"{row['count']} initcalls, {row['total_us'] / 1000:.0f} ms in all; "
                                          + ", ".join(f"{t['fn']} {t['usecs'] / 1000:.0f} ms" for t in row["top"])))
        results.append(row)
    data = {"kind": "initcalls", "conditions": conditions(accel), "cmdline_extra": INITCALL_CMDLINE, "top": TOP,
            "results": results}
    write_json(bench_path("initcalls"), data)
    return data

