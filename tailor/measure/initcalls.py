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
from tailor.bench import Variant, bench_dir, conditions, load_apps, result_row, say, variants
from tailor.errors import TailorError
from tailor.recipe import Recipe
from tailor.records.bench import save_bench
from tailor.util import system_map_symbols

INITCALL_CMDLINE = "initcall_debug printk.time=1 loglevel=8"
"""Added to the kernel command line of these boots (and ``quiet`` is not): every initcall timed,
every kernel line stamped with the kernel's own clock, debug lines on the console."""

GAPS = 3
"""How many of the longest silences of the kernel log (between two consecutive lines) are kept."""

INITCALL_APPS = ("hello",)
"""Whose kernels are booted: hello's specific kernel is lupine-base itself."""

TOP = 5
"""How many of a kernel's most expensive initcalls the report lists."""

_INITCALL = re.compile(r"initcall (\S+) returned (-?\d+) after (\d+) usecs")
_KERNEL_TIME = re.compile(r"^\[\s*[0-9.]+\] \[\s*([0-9]+\.[0-9]+)\] (.*)$")
_ADDRESS = re.compile(r"0x[0-9a-f]{16}")


def parse_initcalls(console: str) -> list[dict]:
    """Every ``initcall <fn> returned <ret> after <N> usecs`` line of *console*, in order:
    ``{"fn", "ret", "usecs"}`` (``fn`` as printed: a name, ``name+0x0/0x40`` or an address)."""
    return [{"fn": m.group(1), "ret": int(m.group(2)), "usecs": int(m.group(3))}
            for m in _INITCALL.finditer(console)]


def text_symbols(system_map: str) -> dict[int, str]:
    """Address -> name of every text symbol (T/t) of a System.map text (the first name of an address)."""
    by_address: dict[int, str] = {}
    for address, kind, name in system_map_symbols(system_map):
        if kind in "tT":
            by_address.setdefault(int(address, 16), name)
    return by_address


def symbolise(calls: list[dict], system_map: str) -> list[dict]:
    """*calls* with each function named: an address (``0xffffffff81...``) looked up in the
    *system_map* text (the text symbol at exactly that address), a ``name+0x0/0x40`` cut to
    ``name``. An address the map does not have stays as it is."""
    by_address = text_symbols(system_map)
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


def gaps(console: str, names: dict[int, str] | None = None, n: int = GAPS) -> dict:
    """The kernel's own timeline from a console.log whose kernel lines carry ``printk.time``
    stamps: ``init_s`` (kernel time of "Run ... as init process", or None) and the *n* longest
    silences between two consecutive kernel lines, ``{"ms", "after", "before"}`` (the lines, with
    addresses named from *names*), longest first. A long silence is work that prints nothing,
    such as the local APIC timer calibration."""
    names = names or {}
    name = lambda text: _ADDRESS.sub(lambda m: names.get(int(m.group(0), 16), m.group(0)), text)[:100]  # noqa: E731
    stamped = [(float(m.group(1)), m.group(2)) for m in map(_KERNEL_TIME.match, console.splitlines()) if m]
    init = next((t for t, text in stamped if "as init process" in text), None)
    silences = sorted(((b[0] - a[0], i) for i, (a, b) in enumerate(zip(stamped, stamped[1:]))), reverse=True)[:n]
    return {"init_s": init, "gaps": [{"ms": round(d * 1000, 1), "after": name(stamped[i][1]),
                                      "before": name(stamped[i + 1][1])} for d, i in silences]}


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
    map_text = system_map.read_text(errors="replace") if system_map.is_file() else ""
    calls = symbolise(calls, map_text)
    timeline = gaps(console, text_symbols(map_text))
    totals: dict[str, int] = {}
    for c in calls:
        totals[c["fn"]] = totals.get(c["fn"], 0) + c["usecs"]
    return {"boot": method, "accel": result["accel"], "init_s": result["time_to_init_s"],
            "kernel_init_s": timeline["init_s"], "gaps": timeline["gaps"],
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
    return save_bench("initcalls", {"kind": "initcalls", "conditions": conditions(accel),
                                    "cmdline_extra": INITCALL_CMDLINE, "top": TOP, "results": results})

