"""Throughput: ``out/bench/throughput.json``.

:func:`measure_throughput` load-tests each network app with
``redis-benchmark`` (GET/SET, redis) or ApacheBench (``ab``, an HTTP app):
every kernel variant and baseline is booted in turn, round after round, in
one session (:func:`running_vm`), warmed up and loaded with fixed parameters
(:data:`REDIS_BENCH`, :data:`HTTP_BENCH`). Runs that hit a TCP
retransmission timeout of qemu's user-mode network (:data:`STALL_MS`) are
left out of the median when clean runs exist (:func:`clean_spread`).
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
from contextlib import contextmanager
from typing import Callable, Iterator

from tailor import probes, qemu
from tailor.bench import (Variant, bench_dir, conditions, kernel_label, load_apps, result_row, say,
                          spread, variants)
from tailor.console import ConsoleState
from tailor.errors import BootFailure, TailorError
from tailor.recipe import Recipe
from tailor.records.bench import save_bench
from tailor.util import makedirs, write_atomic

REDIS_BENCH = {"requests": 20000, "clients": 10, "tests": "set,get", "rounds": 7}
"""Fixed redis-benchmark parameters: ``-n requests -c clients -t tests``, repeated ``rounds`` times."""
HTTP_BENCH = {"requests": 5000, "clients": 10, "rounds": 5}
"""Fixed ApacheBench parameters: ``ab -n requests -c clients``, repeated ``rounds`` times."""

STALL_MS = 100.0
"""A load run whose slowest request took longer than this (ms) hit a TCP retransmission timeout
(200 ms and more, doubling) in qemu's user-mode network; such runs measure the network's packet
loss, not the guest, and are left out of the median when clean runs exist."""

_AB_RPS = re.compile(r"^Requests per second:\s+([0-9.]+)", re.M)
_AB_FAILED = re.compile(r"^Failed requests:\s+([0-9]+)", re.M)
_AB_LONGEST = re.compile(r"^\s*100%\s+([0-9]+)", re.M)


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
        return qemu.qemu_command(qemu.kernel_file(v.kernel)[0], v.image, recipe.rootfs.format, memory or recipe.test.memory,
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
            row = {**result_row(v, kernel=False), "tool": tool}
            if v.missing:
                row["missing"] = v.missing
            elif v.key in errors and not samples[v.key]:
                row["error"] = errors[v.key]
            else:
                row["tests"] = {t: clean_spread(xs) for t, xs in samples[v.key].items()}
                if v.key in errors:
                    row["error"] = errors[v.key]
            results.append(row)
    params = {"redis-benchmark": dict(REDIS_BENCH), "ab": dict(HTTP_BENCH)}
    if rounds:  # the rounds this run took, not the defaults
        for p in params.values():
            p["rounds"] = rounds
    return save_bench("throughput", {"kind": "throughput", "conditions": conditions(accel), "stall_ms": STALL_MS,
                                     "params": params, "results": results})
