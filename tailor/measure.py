"""Measurements the Lupine paper made, for tailor's kernels against general-purpose baselines.

Every measurement here reads what the pipeline already built (kernels under
``out/kernel/``, root images under ``out/rootfs/``, baselines under
``out/baseline/``) and writes one JSON file to ``out/bench/``:

* :func:`measure_size` -> ``size.json``: bzImage and vmlinux bytes, enabled
  options and the system calls compiled in (:func:`count_syscalls`);
* :func:`measure_boot` -> ``boot.json``: time to init and to ready over N
  boots (median, min, max);
* :func:`measure_memory` -> ``memory.json``: the smallest guest memory with
  which the boot test still passes (:func:`bisect_min`);
* :func:`measure_throughput` -> ``throughput.json``: redis-benchmark GET/SET
  for redis, ApacheBench (``ab``) for an HTTP app, every kernel variant and
  the baselines booted in turn, round after round, in one session;
* :func:`measure_pipeline` -> ``pipeline.json``: a no-op ``doit build:<app>``
  against kbuild's own no-op ``make bzImage``, and optionally a clean build
  against the raw compile of the same config.

Variants of an app (:func:`variants`): ``specific`` (the recipe's own
kernel), ``general`` (lupine-base + lupine-general) and each built baseline
(``microvm``, ``firecracker``) booting the same root image. Anything not
built is recorded as not measured with the reason, never as a failure.

Boot time is measured from the guest, Lupine-style: the first line of the
generated init (``tailor-init: start``, :data:`MARKER`) goes to the serial
console and the host timestamps each console line as it arrives (time since
qemu started). An I/O-port write would need ``/dev/port`` (CONFIG_DEVPORT),
which lupine-base does not have, so the serial marker is the signal. Every
kernel boots with ``quiet`` added to its command line (:data:`MEASURE_CMDLINE`)
so that console speed, not kernel log volume, does not decide the result.
"""

from __future__ import annotations

import csv
import datetime
import io
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from tailor import probes, qemu
from tailor.console import ConsoleState
from tailor.errors import BootFailure, TailorError
from tailor.recipe import Recipe, general_variant
from tailor.toolchain import first_line
from tailor.util import PROJECT, makedirs, out_dir, read_json, write_atomic, write_json

REPORT_APPS = ("hello", "redis", "nginx")
"""The apps the report compares (Lupine's hello-world, redis and nginx)."""

MARKER = "tailor-init: "
"""Prefix of every line the generated init prints; its first (``tailor-init: start``, printed
before anything else) is the guest's 'init is running' signal."""

MEASURE_CMDLINE = "quiet"
"""Added to every kernel's command line in boot-time and memory runs, the same for all kernels."""

BOOT_RUNS = 5
MEMORY_RANGE = (8, 256)
"""Bisection bounds in MiB: the low end is assumed to fail, the high end must pass."""
MEMORY_TIMEOUT_S = 60
"""Timeout of each boot test during the memory bisection (a starved guest may hang)."""

REDIS_BENCH = {"requests": 20000, "clients": 10, "tests": "set,get", "rounds": 7}
"""Fixed redis-benchmark parameters: ``-n requests -c clients -t tests``, repeated ``rounds`` times."""
HTTP_BENCH = {"requests": 5000, "clients": 10, "rounds": 5}
"""Fixed ApacheBench parameters: ``ab -n requests -c clients``, repeated ``rounds`` times."""
NOOP_RUNS = 3

_CONSOLE_LINE = re.compile(r"^\[\s*([0-9]+\.[0-9]+)\] (.*)$")
_AB_RPS = re.compile(r"^Requests per second:\s+([0-9.]+)", re.M)
_AB_FAILED = re.compile(r"^Failed requests:\s+([0-9]+)", re.M)
_AB_LONGEST = re.compile(r"^\s*100%\s+([0-9]+)", re.M)

STALL_MS = 100.0
"""A load run whose slowest request took longer than this (ms) hit a TCP retransmission timeout
(200 ms and more, doubling) in qemu's user-mode network; such runs measure the network's packet
loss, not the guest, and are left out of the median when clean runs exist."""


def say(text: str) -> None:
    """Progress of a measurement on stdout, flushed at once (benchmarks take minutes)."""
    print(text, flush=True)


def bench_dir() -> Path:
    """Where the measurements go: ``out/bench/``."""
    return out_dir() / "bench"


def bench_path(kind: str) -> Path:
    return bench_dir() / f"{kind}.json"


# --------------------------------------------------------------------------
# Small pure helpers


def spread(samples: list[float]) -> dict:
    """``{"median", "min", "max", "n", "samples"}`` of *samples* (rounded to ms / 3 decimals)."""
    if not samples:
        return {"median": None, "min": None, "max": None, "n": 0, "samples": []}
    return {"median": round(statistics.median(samples), 3), "min": round(min(samples), 3),
            "max": round(max(samples), 3), "n": len(samples), "samples": [round(s, 3) for s in samples]}


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
    for line in system_map.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        addr, kind, name = parts
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


def console_times(console_log: str, marker: str = MARKER) -> float | None:
    """Host time (s since qemu started) of the first console.log line containing *marker*."""
    for line in console_log.splitlines():
        m = _CONSOLE_LINE.match(line)
        if m and marker in m.group(2):
            return float(m.group(1))
    return None


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


def parse_redis_csv(text: str) -> dict[str, dict]:
    """``{test: {"rps", "max_ms"}}`` (``SET``, ``GET``) from ``redis-benchmark --csv`` output."""
    out = {}
    for row in csv.reader(io.StringIO(text)):
        if len(row) >= 2 and row[0] and row[0] != "test":
            try:
                out[row[0].strip().upper()] = {"rps": float(row[1]),
                                               "max_ms": float(row[-1]) if len(row) >= 8 else None}
            except ValueError:
                continue
    return out


def parse_ab(text: str) -> tuple[float, int, float | None]:
    """(requests per second, failed requests, longest request in ms) from ApacheBench's report."""
    m = _AB_RPS.search(text)
    if not m:
        raise TailorError("ab printed no 'Requests per second' line")
    failed = _AB_FAILED.search(text)
    longest = _AB_LONGEST.search(text)
    return (float(m.group(1)), int(failed.group(1)) if failed else 0,
            float(longest.group(1)) if longest else None)


def clean_spread(runs: list[dict]) -> dict:
    """:func:`spread` of the requests/s of the *runs* that did not stall (all of them when every run
    stalled), with ``stalled`` (how many runs stalled) and ``runs``."""
    clean = [r["rps"] for r in runs if r.get("max_ms") is None or r["max_ms"] < STALL_MS]
    s = spread(clean or [r["rps"] for r in runs])
    s.update({"stalled": len(runs) - len(clean), "runs": len(runs),
              "max_ms": [r.get("max_ms") for r in runs], "all": [round(r["rps"], 3) for r in runs]})
    return s


# --------------------------------------------------------------------------
# Conditions of a measurement


def _first_line(cmd: list[str]) -> str:
    return first_line(cmd) or "not found"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def kernel_source_label() -> str:
    """The pinned kernel source, e.g. ``linux-source-6.1 6.1.192-2``."""
    from tailor import baseline

    try:
        return baseline.source_ref().label
    except TailorError:
        return "unknown"


def conditions(accel: str | None = None) -> dict:
    """Machine, accelerator, qemu, gcc and kernel versions, load and date of a measurement."""
    try:
        chosen = accel or qemu.detect_accel()
    except TailorError:
        chosen = "unknown"
    return {
        "machine": f"{platform.machine()}, {_cpu_model()}, {os.cpu_count()} cores, {_mem_total_gib()} GiB",
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo \"$PRETTY_NAME\""]),
        "accel": chosen,
        "qemu": _first_line([qemu.QEMU, "--version"]),
        "gcc": _first_line(["gcc", "--version"]),
        "kernel": kernel_source_label(),
        "load": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# --------------------------------------------------------------------------
# What to measure


@dataclass(frozen=True)
class Variant:
    """One app on one kernel: ``variant`` is specific, general or a baseline's name.

    ``kernel`` is the kernel's directory info (``identity``, ``bzImage``,
    ``vmlinux``, ``dir``), or None with ``missing`` saying why.
    """

    app: str
    variant: str
    recipe: Recipe | None
    kernel: dict | None
    image: Path | None
    missing: str = ""

    @property
    def key(self) -> str:
        return f"{self.app}/{self.variant}"


def load_apps(names: tuple[str, ...] = REPORT_APPS) -> dict[str, Recipe | str]:
    """Each name's recipe, or the reason it cannot be measured (no recipe, invalid recipe)."""
    from tailor.recipe import RECIPES_DIR, load

    out: dict[str, Recipe | str] = {}
    for name in names:
        path = RECIPES_DIR / f"{name}.yaml"
        if not path.is_file():
            out[name] = f"no recipe recipes/{name}.yaml"
            continue
        try:
            out[name] = load(path)
        except TailorError as e:
            out[name] = f"invalid recipe: {str(e).splitlines()[0]}"
    return out


def _pointer_kernel(app_id: str) -> tuple[dict | None, str]:
    from tailor import kernel as kernel_stage

    path = kernel_stage.app_pointer(app_id)
    if not path.is_file():
        return None, f"kernel not built; run `doit build:{app_id}`"
    info = read_json(path)
    if not Path(info.get("bzImage", "")).is_file():
        return None, f"kernel of {app_id} is gone; run `doit build:{app_id}`"
    return {"identity": info["identity"], "bzImage": info["bzImage"], "vmlinux": info["vmlinux"],
            "dir": info["dir"]}, ""


def baseline_names() -> list[str]:
    from tailor import baseline

    return list(baseline.BASELINES)


def variants(apps: dict[str, Recipe | str] | None = None, baselines: list[str] | None = None) -> list[Variant]:
    """Every (app, kernel variant) pair: specific, general, then each baseline, per app."""
    from tailor import baseline, rootfs

    apps = load_apps() if apps is None else apps
    baselines = baseline_names() if baselines is None else baselines
    out = []
    for name, recipe in apps.items():
        if isinstance(recipe, str):
            for v in ["specific", "general"] + baselines:
                out.append(Variant(name, v, None, None, None, recipe))
            continue
        image = rootfs.image_path(recipe)
        image_missing = "" if image.is_file() else f"root image not built; run `doit rootfs:{name}`"
        for v in ["specific", "general"] + baselines:
            if v == "specific":
                r, (k, why) = recipe, _pointer_kernel(recipe.id)
            elif v == "general":
                r = general_variant(recipe)
                k, why = _pointer_kernel(r.id)
            else:
                r = recipe
                info = baseline.load(v)
                k = None if info is None else {key: info[key] for key in ("identity", "bzImage", "vmlinux", "dir")}
                why = "" if info else (f"baseline not built; run `doit baseline:{v}`" if baseline.available(v)
                                       else "baseline input not present on this machine")
            out.append(Variant(name, v, r, k, image if image.is_file() else None, why or image_missing))
    return out


def kernel_label(recipe: Recipe | None, variant: str) -> str:
    """How the report names a kernel: ``lupine-base (hello)``, ``redis``, ``general``, ``microvm``."""
    if variant != "specific":
        return variant
    if recipe is not None and not recipe.kernel.options and tuple(recipe.kernel.base) == ("lupine-base",):
        return f"lupine-base ({recipe.name})"
    return recipe.name if recipe is not None else "?"


# --------------------------------------------------------------------------
# Size and attack surface


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


def measure_size(apps: dict[str, Recipe | str] | None = None) -> dict:
    """Sizes, enabled options and system calls of every distinct kernel; writes ``size.json``."""
    rows: dict[str, dict] = {}
    missing = []
    for v in variants(apps):
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
            "bzImage": (kdir / "bzImage").stat().st_size,
            "vmlinux": (kdir / "vmlinux").stat().st_size,
            "bzImage_xz_estimate": xz_estimate(kdir),
            "enabled": sum(1 for ln in config.splitlines() if ln.startswith("CONFIG_") and ln.endswith("=y")),
            "syscalls": count_syscalls(smap),
        }
    data = {"kind": "size", "conditions": conditions(), "kernels": list(rows.values()), "missing": missing}
    write_json(bench_path("size"), data)
    return data


# --------------------------------------------------------------------------
# Boot time and memory


def _measure_recipe(recipe: Recipe, memory: int | None = None, timeout: int | None = None) -> Recipe:
    """*recipe* as measured: ``quiet`` added to its command line, and *memory*/*timeout* if given."""
    cmdline = f"{recipe.kernel.cmdline} {MEASURE_CMDLINE}".strip()
    test = recipe.test
    ready = test.ready or re.escape(MARKER)
    test = replace(test, ready=ready, memory=memory or test.memory, timeout=timeout or test.timeout)
    return replace(recipe, kernel=replace(recipe.kernel, cmdline=cmdline), test=test)


def boot_once(v: Variant, outdir: Path, memory: int | None = None, timeout: int | None = None,
              accel: str | None = None) -> dict:
    """One measured boot test of *v*; returns ``{"pass", "init_s", "ready_s", "accel", "reason"}``."""
    from tailor import boot

    recipe = _measure_recipe(v.recipe, memory, timeout)
    try:
        result = boot.run(recipe, Path(v.kernel["bzImage"]), v.image, outdir, accel=accel)
        ok, reason = True, ""
    except TailorError as e:
        ok, reason = False, str(e).splitlines()[0]
        try:
            result = read_json(outdir / "result.json")
        except TailorError:
            result = {}
    log = outdir / "console.log"
    init_s = console_times(log.read_text(errors="replace")) if log.is_file() else None
    return {"pass": ok, "init_s": init_s, "ready_s": result.get("time_to_ready_s"),
            "accel": result.get("accel"), "reason": reason}


def _quiet_stderr():
    """Silence boot.run's failure tail (expected during the memory bisection)."""
    return open(os.devnull, "w")


def _result_row(v, kernel: bool = True) -> dict:
    """The fields that name a variant in every result row (and the kernel identity it ran)."""
    row = {"app": v.app, "variant": v.variant, "label": kernel_label(v.recipe, v.variant)}
    if kernel:
        row["kernel"] = v.kernel["identity"] if v.kernel else None
    return row


def measure_boot(runs: int = BOOT_RUNS, apps: dict[str, Recipe | str] | None = None,
                 accel: str | None = None, log: Callable[[str], None] = say) -> dict:
    """Boot every variant *runs* times, interleaved (variant A, B, C, A, B, C, ...); writes ``boot.json``."""
    todo = [v for v in variants(apps) if not v.missing]
    samples: dict[str, dict] = {v.key: {"init": [], "ready": [], "errors": []} for v in todo}
    accel_seen = set()
    for i in range(runs):
        for v in todo:
            if samples[v.key]["errors"]:
                continue  # a kernel that failed once is not booted again (a failure costs the whole timeout)
            outdir = bench_dir() / "boot" / v.app / v.variant
            r = boot_once(v, outdir, accel=accel)
            accel_seen.add(r["accel"])
            s = samples[v.key]
            if r["pass"] and r["init_s"] is not None:
                s["init"].append(r["init_s"])
                if r["ready_s"] is not None:
                    s["ready"].append(r["ready_s"])
            else:
                s["errors"].append(r["reason"] or "init marker not seen")
            log(f"boot {v.key} run {i + 1}/{runs}: "
                + (f"init {r['init_s']:.3f} s, ready {r['ready_s']} s" if r["pass"] and r["init_s"] is not None
                   else f"FAILED: {s['errors'][-1]}"))
    results = []
    for v in variants(apps):
        row = _result_row(v)
        if v.missing:
            row["missing"] = v.missing
        else:
            s = samples[v.key]
            row.update({"init_s": spread(s["init"]), "ready_s": spread(s["ready"]), "errors": s["errors"]})
        results.append(row)
    data = {"kind": "boot", "conditions": conditions(accel), "runs": runs, "cmdline_extra": MEASURE_CMDLINE,
            "marker": MARKER, "accel_used": sorted(a for a in accel_seen if a), "results": results}
    write_json(bench_path("boot"), data)
    return data


def measure_memory(apps: dict[str, Recipe | str] | None = None, lo: int = MEMORY_RANGE[0],
                   hi: int = MEMORY_RANGE[1], accel: str | None = None,
                   log: Callable[[str], None] = say) -> dict:
    """Bisect each variant's smallest passing guest memory in MiB; writes ``memory.json``."""
    results = []
    for v in variants(apps):
        row = _result_row(v)
        if v.missing:
            row["missing"] = v.missing
            results.append(row)
            continue
        outdir = bench_dir() / "memory" / v.app / v.variant

        def passes(mib: int, v=v, outdir=outdir) -> bool:
            saved = sys.stderr
            sys.stderr = _quiet_stderr()
            try:
                r = boot_once(v, outdir, memory=mib, timeout=min(MEMORY_TIMEOUT_S, v.recipe.test.timeout),
                              accel=accel)
            finally:
                sys.stderr.close()
                sys.stderr = saved
            log(f"memory {v.key} {mib} MiB: {'pass' if r['pass'] else 'fail: ' + r['reason']}")
            return r["pass"]

        found, tried = bisect_min(passes, lo, hi)
        row.update({"min_mib": found, "tried": {str(k): tried[k] for k in sorted(tried)}, "range": [lo, hi]})
        results.append(row)
    data = {"kind": "memory", "conditions": conditions(accel), "cmdline_extra": MEASURE_CMDLINE,
            "results": results}
    write_json(bench_path("memory"), data)
    return data


# --------------------------------------------------------------------------
# Throughput


@contextmanager
def running_vm(v: Variant, accel: str | None = None, memory: int | None = None) -> Iterator[int]:
    """Boot *v* with its guest port forwarded, wait until its probe answers, yield the host port.

    The VM runs in a :func:`tailor.qemu.session` (a new host port when the
    picked one was taken meanwhile, a TCG rerun when KVM stays silent) and is
    killed when the block ends, however it ends; its console goes to
    ``out/bench/throughput/<app>/<variant>.console.log``.
    """
    recipe = v.recipe
    probe = recipe.test.probe
    name = f"tailor-bench-{v.app}-{v.variant}-{os.getpid()}"

    def command(chosen: str, port: int | None) -> list[str]:
        return qemu.qemu_command(v.kernel["bzImage"], v.image, recipe.rootfs.format, memory or recipe.test.memory,
                                 recipe.kernel.cmdline, chosen, [(port, probe.port)], True, name=name)

    def ready(vm: qemu.VM, port: int | None) -> str:
        return probes.run_probe(probe, port, vm.t0 + recipe.test.timeout, abort=vm.check)

    log = makedirs(bench_dir() / "throughput" / v.app) / f"{v.variant}.console.log"
    con = None

    def console() -> ConsoleState:
        nonlocal con
        con = ConsoleState(ready=recipe.test.ready)
        return con

    try:
        with qemu.session(command, console, qemu.detect_accel(accel), ready, guest_port=probe.port) as s:
            yield s.port
    except BootFailure as e:
        raise TailorError(f"{v.key}: the app did not come up for the benchmark: {e}") from None
    finally:
        if con is not None:
            write_atomic(log, con.text())


def bench_tool(recipe: Recipe) -> str | None:
    """The load generator for *recipe*'s probe: ``redis-benchmark``, ``ab`` or None."""
    t = recipe.test.probe.type
    if t == "redis":
        return "redis-benchmark"
    if t == "http":
        return "ab"
    return None


def run_load(tool: str, port: int, recipe: Recipe, warmup: bool = False) -> dict[str, dict]:
    """One bounded load run against 127.0.0.1:*port*; ``{test: {"rps", "max_ms"}}``.

    A *warmup* run sends a tenth of the requests (its result is not kept).
    """
    if tool == "redis-benchmark":
        p = REDIS_BENCH
        count = p["requests"] // 10 if warmup else p["requests"]
        cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-n", str(count),
               "-c", str(p["clients"]), "-t", p["tests"], "--csv"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        rps = parse_redis_csv(proc.stdout)
        if proc.returncode != 0 or not rps:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise TailorError(f"redis-benchmark failed (exit {proc.returncode}): {tail[0]}")
        return rps
    p = HTTP_BENCH
    count = p["requests"] // 10 if warmup else p["requests"]
    url = f"http://127.0.0.1:{port}{recipe.test.probe.path or '/'}"
    cmd = ["ab", "-q", "-n", str(count), "-c", str(p["clients"]), url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise TailorError(f"ab failed (exit {proc.returncode}): {tail[0]}")
    rps, failed, longest = parse_ab(proc.stdout)
    if failed:
        raise TailorError(f"ab: {failed} of {count} requests failed")
    return {"GET /": {"rps": rps, "max_ms": longest}}


def measure_throughput(apps: dict[str, Recipe | str] | None = None, accel: str | None = None,
                       rounds: int | None = None, log: Callable[[str], None] = say) -> dict:
    """Load-test every variant of each network app, alternately, in one session; writes ``throughput.json``.

    Each round boots each variant in turn (the order rotates every round),
    runs a short warm-up load and then the measured one, and stops the VM
    before the next one starts, so that only one guest competes with the
    load generator and slow drifts of the host affect every variant alike.
    """
    results = []
    for name, recipe in (load_apps() if apps is None else apps).items():
        group = [v for v in variants({name: recipe})]
        tool = bench_tool(recipe) if not isinstance(recipe, str) else None
        if tool is None or shutil.which(tool) is None:
            why = recipe if isinstance(recipe, str) else (
                "no load generator for this app" if tool is None else f"{tool} not installed (apt-get install "
                f"{'redis-tools' if tool == 'redis-benchmark' else 'apache2-utils'})")
            if tool is None and not isinstance(recipe, str):
                continue
            results += [{"app": v.app, "variant": v.variant, "label": kernel_label(v.recipe, v.variant),
                         "missing": why} for v in group]
            continue
        order = [v for v in group if not v.missing]
        samples: dict[str, dict[str, list[dict]]] = {v.key: {} for v in order}
        errors: dict[str, str] = {}
        n = rounds or (REDIS_BENCH if tool == "redis-benchmark" else HTTP_BENCH)["rounds"]
        for i in range(n):
            shift = i % max(1, len(order))
            for v in order[shift:] + order[:shift]:
                if v.key in errors:
                    continue
                try:
                    with running_vm(v, accel) as port:
                        run_load(tool, port, v.recipe, warmup=True)
                        rps = run_load(tool, port, v.recipe)
                except (TailorError, subprocess.TimeoutExpired) as e:
                    errors[v.key] = str(e).splitlines()[0]
                    log(f"throughput {v.key}: {errors[v.key]}")
                    continue
                for test, value in rps.items():
                    samples[v.key].setdefault(test, []).append(value)
                log(f"throughput {v.key} round {i + 1}/{n}: "
                    + ", ".join(f"{t} {x['rps']:.0f}/s (slowest {x['max_ms']} ms)" for t, x in rps.items()))
        for v in group:
            row = {**_result_row(v, kernel=False), "tool": tool}
            if v.missing:
                row["missing"] = v.missing
            elif v.key in errors and not samples[v.key]:
                row["error"] = errors[v.key]
            else:
                row["tests"] = {t: clean_spread(xs) for t, xs in samples[v.key].items()}
                if v.key in errors:
                    row["error"] = errors[v.key]
            results.append(row)
    data = {"kind": "throughput", "conditions": conditions(accel), "stall_ms": STALL_MS,
            "params": {"redis-benchmark": REDIS_BENCH, "ab": HTTP_BENCH}, "results": results}
    write_json(bench_path("throughput"), data)
    return data


# --------------------------------------------------------------------------
# The pipeline itself


def _timed(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, str, int]:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return time.monotonic() - t0, proc.stdout + proc.stderr, proc.returncode


def wait_for_doit(log: Callable[[str], None] = say, limit_s: float = 3600) -> None:
    """Wait until no other doit run holds the project's lock, so that a timed run does not wait for it."""
    import fcntl

    from tailor.tasks import state_file

    path = state_file().parent / ".doit.lock"
    if not path.exists():
        return
    start, said = time.monotonic(), False
    with open(path, "a") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                if not said:
                    log("another doit run is using this project; waiting for it to finish before timing")
                    said = True
                if time.monotonic() - start > limit_s:
                    raise TailorError(f"another doit run held the project for {limit_s:.0f} s; measure later")
                time.sleep(0.5)


def doit_noop_ran_nothing(output: str) -> bool:
    """True when a doit run's output shows every task up to date (``-- name``) and none executed (``. name``)."""
    lines = [ln for ln in output.splitlines() if ln.strip()]
    return any(ln.startswith("-- ") for ln in lines) and not any(ln.startswith(". ") for ln in lines)


def measure_pipeline(app: str = "redis", runs: int = NOOP_RUNS, clean: bool = False,
                     log: Callable[[str], None] = say) -> dict:
    """Time a no-op ``doit build:<app>`` and kbuild's no-op ``make bzImage`` in that kernel's tree.

    Must run outside doit (the inner doit would wait for the outer one's
    lock). Both are warmed up once and then timed *runs* times. With
    *clean*, also times a clean ``doit build:<app>`` in a scratch output
    directory against ``make olddefconfig bzImage`` of the same config in a
    scratch object tree, both with ccache disabled; writes ``pipeline.json``.
    """
    from tailor import kernel as kernel_stage
    from tailor import source

    doit = [sys.executable, "-m", "doit"]
    data: dict = {"kind": "pipeline", "conditions": conditions(), "app": app}
    wait_for_doit(log)
    _, out, rc = _timed(doit + [f"build:{app}"], cwd=PROJECT)
    if rc != 0:
        last = (out.strip().splitlines() or ["no output"])[-1]
        raise TailorError(f"doit build:{app} failed; build it first ({last})")
    doit_s, noop_ok = [], True
    for _ in range(runs):
        wait_for_doit(log)
        t, out, rc = _timed(doit + [f"build:{app}"], cwd=PROJECT)
        noop_ok &= rc == 0 and doit_noop_ran_nothing(out)
        doit_s.append(t)
    log(f"no-op doit build:{app}: {statistics.median(doit_s):.3f} s" + ("" if noop_ok else " (NOT a no-op!)"))
    pointer = read_json(kernel_stage.app_pointer(app))
    kdir = Path(pointer["dir"])
    recipe = load_apps((app,))[app]
    if isinstance(recipe, str):
        raise TailorError(f"{app}: {recipe}")
    srctree = source.prepare(source.recipe_ref(recipe))
    cmd, env = kernel_stage._make(srctree, kdir / "build", ["bzImage"], os.cpu_count())
    _timed(cmd, env)
    make_s = []
    for _ in range(runs):
        t, out, rc = _timed(cmd, env)
        if rc != 0:
            raise TailorError(f"no-op make bzImage failed in {kdir / 'build'}")
        make_s.append(t)
    log(f"no-op make bzImage ({app}'s kernel): {statistics.median(make_s):.3f} s")
    data["noop"] = {"doit_s": spread(doit_s), "kbuild_s": spread(make_s), "doit_was_noop": noop_ok,
                    "doit_cmd": f"doit build:{app}", "kbuild_cmd": "make -C <src> O=<objdir> bzImage"}
    data["clean"] = measure_clean(app, recipe, srctree, log) if clean else None
    write_json(bench_path("pipeline"), data)
    return data


def measure_clean(app: str, recipe: Recipe, srctree: Path, log: Callable[[str], None] = say) -> dict:
    """A clean ``doit build:<app>`` in a scratch out/ (sharing only the .deb cache) against
    ``make olddefconfig && make bzImage`` of the same .config in a scratch object tree, both
    with ccache disabled (the first would otherwise fill the cache for the second)."""
    from tailor import config as config_stage
    from tailor import kernel as kernel_stage

    config_text = config_stage.config_paths(recipe.id)["config"].read_text()
    with tempfile.TemporaryDirectory(prefix="tailor-clean-", dir=out_dir()) as tmp:
        tmp = Path(tmp)
        objdir = makedirs(tmp / "raw")
        write_atomic(objdir / ".config", config_text)
        cmd, env = kernel_stage._make(srctree, objdir, ["olddefconfig", "bzImage"], os.cpu_count())
        env["CCACHE_DISABLE"] = "1"
        raw_s, _, rc = _timed(cmd, env)
        if rc != 0:
            raise TailorError("raw kernel compile failed")
        log(f"raw compile of {app}'s config: {raw_s:.1f} s")
        scratch = makedirs(tmp / "out")
        makedirs(scratch / "cache")
        os.symlink(out_dir().resolve() / "cache" / "debs", scratch / "cache" / "debs")
        env2 = dict(os.environ, TAILOR_OUT=str(scratch), CCACHE_DISABLE="1")
        total_s, out, rc = _timed([sys.executable, "-m", "doit", f"build:{app}"], env=env2, cwd=PROJECT)
        if rc != 0:
            raise TailorError(f"clean doit build:{app} failed: {out.strip().splitlines()[-1:]}")
        log(f"clean doit build:{app}: {total_s:.1f} s")
    return {"doit_s": round(total_s, 3), "raw_make_s": round(raw_s, 3),
            "note": "both without ccache (CCACHE_DISABLE=1); the clean build also unpacks the source, "
                    "resolves the config, builds the rootfs and boots"}


# --------------------------------------------------------------------------
# Entry points for doit and the benchmark scripts


SUMMARY = {
    "size": (("size", "syscalls"), ("size", "syscalls")),
    "boot": (("boot",), ("boot",)),
    "memory": (("memory",), ("memory",)),
    "throughput": (("throughput",), ("throughput",)),
    "pipeline": (("pipeline",), ("noop",)),
}
"""For each measurement: the report sections and the target metrics its summary prints."""


def run(kind: str, **options) -> dict:
    """Run the measurement *kind* (size, boot, memory, throughput, pipeline), store its JSON and
    print its figures with their ratios and targets."""
    from tailor import report

    fn = {"size": measure_size, "boot": measure_boot, "memory": measure_memory,
          "throughput": measure_throughput, "pipeline": measure_pipeline}.get(kind)
    if fn is None:
        raise TailorError(f"{kind!r}: no such measurement; use {', '.join(SUMMARY)}")
    data = fn(**options)
    sections, metrics = SUMMARY[kind]
    print(report.summary(report.load_results(), sections, metrics), end="")
    print(f"stored in {bench_path(kind)}")
    return data


def tasks(action):
    """doit tasks ``bench:<kind>``: measure what is built and store ``out/bench/<kind>.json``.

    The pipeline measurement runs doit itself, so it is a script only
    (``python benchmarks/pipeline.py``), not a task.
    """
    docs = {
        "size": "kernel sizes, enabled options and system calls of every built kernel (seconds)",
        "boot": f"boot time to init and ready, {BOOT_RUNS} boots per app and kernel (minutes under TCG)",
        "memory": "smallest guest memory that passes the boot test, by bisection (minutes)",
        "throughput": "redis-benchmark / ab against each kernel and the baseline, alternately (minutes)",
    }
    for kind, doc in docs.items():
        yield {"basename": "bench", "name": kind, "doc": doc, "actions": [action(run, kind)],
               "uptodate": [False], "verbosity": 2}
