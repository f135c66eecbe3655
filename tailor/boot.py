"""The boot test: boot the microVM under qemu, watch its console, probe the app from the host.

:func:`run` boots ``kernel`` with ``image`` (a cpio initramfs or an ext2 root)
in a :func:`tailor.qemu.session`, feeds the serial console to a
:class:`~tailor.console.ConsoleState` line by line with host timestamps,
waits for the kernel's ``Run /init as init process`` line and for the
recipe's ready pattern (:func:`~tailor.console.assess`), then checks the app
the way the recipe's probe says (redis, http, tcp, memcached, command,
console or none; :mod:`tailor.probes`) and runs the recipe's
``test.exercise`` commands against it (:func:`tailor.probes.run_exercise`). It writes ``console.log`` and
``result.json`` to the output directory and raises a one-line
:class:`TailorError` when the test fails.

The VM never outlives the test (see :mod:`tailor.qemu`); while it runs in
the main thread, Ctrl-C is deferred by a ``SIGINT`` handler
(:class:`tailor.qemu.CtrlC`) to the wait loops' safe points. When KVM was
chosen and the guest printed nothing (within
:data:`~tailor.console.NO_OUTPUT_S` seconds, or qemu failed first), the
boot is rerun under TCG and the result says so (``fallback_from_kvm``, with
the KVM attempt's failure in ``kvm_failure``).
"""

from __future__ import annotations

import bisect
import os
import re
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tailor import paths, probes, records
from tailor.console import NO_OUTPUT_S, ConsoleState, Verdict, assess, fail, pass_detail
from tailor.errors import KernelPanicked, ProbeFailed, QemuError, QemuExited, TailorError
from tailor.kinds import Variant
from tailor.qemu import (VM, CtrlC, boot_method, detect_accel, free_port, kernel_file, qemu_binary, qemu_command,
                         session)
from tailor.recipe import NETWORK_PROBES, Recipe
from tailor.records import save_boot_result
from tailor.records.stages import SlimDropped
from tailor.util import display_path, makedirs, write_atomic

__all__ = ["run", "boot_app", "boot_dir", "result_path"]

CONSOLE_TAIL = 15
"""Console lines printed to stderr when the test fails."""


@dataclass
class Attempt:
    """How a boot ended: its console, its qemu argv, the verdict, the probe detail and qemu's stderr."""

    con: ConsoleState
    cmd: list[str]
    verdict: Verdict | None = None
    probe_detail: str = ""
    stderr: str = ""


def new_console(recipe: Recipe, on_line: Callable[[str], None] | None = None) -> ConsoleState:
    """A fresh console for *recipe*: its ready pattern and, for a console probe, its expect pattern."""
    probe = recipe.test.probe
    return ConsoleState(ready=recipe.test.ready, expect=probe.expect if probe.type == "console" else None,
                        on_line=on_line)


NETWORK_FAILED = "tailor-init: network setup failed"
"""What the init prints when it cannot bring eth0 up (templates/init.sh.j2): a network probe cannot pass."""


def decide(recipe: Recipe, vm: VM, port: int | None, timeout: float) -> tuple[Verdict, str]:
    """Wait for the console's verdict in *vm*, then run the network probe if it asks for one.

    *timeout* is in seconds since *vm* started. Returns the verdict and the probe detail.
    """
    probe = recipe.test.probe
    verdict = vm.watch(lambda now, status: assess(vm.console, probe.type, now, timeout, exit_status=status,
                                                  no_output_s=NO_OUTPUT_S))
    if verdict.state == "pass":
        return verdict, pass_detail(vm.console, probe.type)
    if verdict.state != "probe":
        return verdict, ""
    def abort() -> str | None:
        """Stop waiting when the guest died (raises), or when its init said it has no network (nothing will
        answer; returns why)."""
        vm.check(no_output_s=None)
        with vm.cond:
            failed = next((line for _, line in vm.console.lines if NETWORK_FAILED in line), None)
        if failed is not None and recipe.app.network:
            return f"the guest has no network, so nothing can answer ({failed.strip()})"
        return None

    try:
        detail = probes.run_probe(probe, port, vm.t0 + timeout, abort=abort)
    except (QemuExited, KernelPanicked) as e:
        return fail(type(e), str(e)), str(e)
    except ProbeFailed as e:
        why = str(e)
        if e.last is not None:
            why = (f"no answer from guest port {probe.port} within the {round(timeout, 1):g} s test timeout "
                   f"(last error: {e.last})")
        return fail(ProbeFailed, f"{probe.type} probe: {why}"), why
    detail = f"{detail} (guest port {probe.port} via 127.0.0.1:{port})"
    if recipe.test.exercise:
        try:
            detail += "; " + probes.run_exercise(recipe.test.exercise, port, abort=lambda: vm.check(no_output_s=None))
        except (QemuExited, KernelPanicked) as e:
            return fail(type(e), f"during the exercise: {e}"), str(e)
        except ProbeFailed as e:
            return fail(ProbeFailed, str(e)), str(e)
    return Verdict("pass"), detail


def run(recipe: Recipe, kernel: Path, image: Path, outdir: Path, *, accel: str | None = None,
        qemu_extra: tuple[str, ...] = (), cmdline_extra: str = "",
        on_line: Callable[[str], None] | None = None, image_known_good: bool = False) -> dict:
    """Boot-test *recipe*'s VM: *kernel* (a bzImage, or an ELF vmlinux started by PVH) with *image*
    (``recipe.rootfs.format``).

    Writes ``outdir/console.log`` and ``outdir/result.json`` (both atomically)
    and returns the result dict. On failure, prints the last console lines to
    stderr and raises ``TailorError("boot test of <app> failed: <reason>")``
    after writing both files. *accel* forces ``tcg`` or ``kvm`` (default:
    :func:`~tailor.qemu.detect_accel`). The whole test, including a KVM-to-TCG
    rerun, is bounded by ``recipe.test.timeout`` seconds; qemu is dead when
    this returns or raises. *qemu_extra* (qemu arguments), *cmdline_extra*
    (kernel arguments) and *on_line* (called with each console line) serve tracing.
    *image_known_good* (discovery's trials: the image passed on another kernel) leaves out the hints
    that blame the root filesystem (slim, a full ext2 root) from a failure's reason.
    """
    kernel, image, outdir = Path(kernel), Path(image), Path(outdir)
    makedirs(outdir)
    test, probe = recipe.test, recipe.test.probe
    chosen = detect_accel(accel, arch=recipe.arch)
    network = bool(recipe.app.network)
    forward = probe.type in NETWORK_PROBES and network
    name = f"tailor-{recipe.name}-{recipe.variant or 'specific'}-{os.getpid()}-{secrets.token_hex(4)}"
    start = time.monotonic()
    kvm_failure = ""
    att: Attempt | None = None
    con = new_console(recipe, on_line)
    reason = ""

    def command(acc: str, port: int | None) -> list[str]:
        hostfwd = [(port, probe.port)] if forward else None
        return qemu_command(kernel, image, recipe.rootfs.format, test.memory,
                            " ".join(filter(None, (recipe.kernel.cmdline, cmdline_extra))), acc,
                            hostfwd, network, name=name, extra=qemu_extra, arch=recipe.arch)

    def console() -> ConsoleState:
        nonlocal con
        con = new_console(recipe, on_line)
        return con

    def ready(vm: VM, port: int | None) -> tuple[Verdict, str]:
        nonlocal cmd
        cmd = vm.cmd
        return decide(recipe, vm, port, max(1.0, test.timeout - (vm.t0 - start)))

    cmd = command(chosen, free_port() if forward else None)  # the argv a result names if qemu never starts
    try:
        if probe.type in NETWORK_PROBES and not network:
            reason = f"a {probe.type} probe needs app.network: true"
        elif not kernel.is_file():
            reason = f"kernel {kernel} not found; build the kernel first"
        elif not image.is_file():
            reason = f"root image {image} not found; build the rootfs first"
        elif shutil.which(qemu_binary(recipe.arch)) is None:
            reason = f"{qemu_binary(recipe.arch)} not found; run ./setup.sh"
        else:
            with CtrlC():
                try:
                    with session(command, console, chosen, ready, guest_port=probe.port if forward else None,
                                 failure=lambda r: r[0].reason if r[0].state != "pass" else None) as s:
                        vm = s.vm
                    (verdict, detail), chosen, kvm_failure = s.result, s.accel, s.kvm_failure
                    att = Attempt(con=vm.console, cmd=vm.cmd, verdict=verdict, probe_detail=detail,
                                  stderr=vm.stderr)
                    if verdict.cause is QemuExited and vm.stderr:
                        att.verdict = fail(QemuExited, f"{verdict.reason}: {vm.stderr.splitlines()[0]}")
                except QemuError as e:
                    att = Attempt(con=con, cmd=cmd, verdict=Verdict("fail", str(e)))
            reason = att.verdict.reason if att.verdict.state != "pass" else ""
    finally:  # also on KeyboardInterrupt: keep what the console showed
        write_atomic(outdir / "console.log", con.text())
    passed = att is not None and att.verdict.state == "pass"
    if not passed and not image_known_good:
        reason += full_root_hint(recipe, con.text()) + slim_hint(recipe, con.text(),
                                                                 att.verdict.cause if att else None)
    result = {
        "app": recipe.name,
        "variant": recipe.variant or Variant.SPECIFIC,
        "pass": passed,
        "reason": "" if passed else reason,
        "accel": chosen,
        "fallback_from_kvm": bool(kvm_failure),
        "kvm_failure": kvm_failure,
        "time_to_init_s": _round(con.init_s),
        "time_to_ready_s": _round(con.ready_s),
        "probe": {"type": probe.type, "detail": att.probe_detail if att else ""},
        "console": "console.log",
        "qemu": cmd,
        "qemu_stderr": att.stderr if att else "",
        "memory": test.memory,
        "kernel": str(kernel),
        "image": str(image),
        "boot_method": boot_method(kernel),
        "crng_init_s": _round(con.crng_s),
        "app_exec_s": _round(con.exec_s),
        "entropy_before_app": con.entropy_before_app(),
        "arch": recipe.arch,
    }
    result = save_boot_result(outdir / "result.json", result)
    if not passed:
        _print_tail(recipe.id, con, outdir)
        raise TailorError(f"boot test of {recipe.id} failed: {reason}")
    return result


def full_root_hint(recipe: Recipe, console: str) -> str:
    """What to add to a failed test's reason when the app ran out of room on its ext2 root (the image is
    sized to its tree plus a quarter; an app that writes at start needs ``rootfs.size_mib``)."""
    if not recipe.rootfs.format.is_disk or "No space left on device" not in console:
        return ""
    return (f" (the console says 'No space left on device': the ext2 root is full; give recipe "
            f"{recipe.name} a rootfs.size_mib with room for what the app writes)")


def slim_hint(recipe: Recipe, console: str, cause: type | None = None) -> str:
    """What to add to a failed boot test's reason when the root is slim and the app exited, the kernel
    panicked or the probe failed (*cause*), or a console line saying something is missing names a path
    slim dropped: how many of the source's files slim dropped, that path, and the fix."""
    path = paths.rootfs_slim(recipe.name)
    if not recipe.rootfs.slim or not path.is_file():
        return ""
    try:
        rec = SlimDropped.load(path)
    except TailorError as e:  # the boot test's verdict stands; the damaged record is named beside it
        return f" ({e})"
    gone, gone_dirs = rec.dropped, rec.dropped_dirs
    if not gone:
        return ""
    named = ""
    gone_set = set(gone) | set(gone_dirs)
    for line in reversed([ln for ln in console.splitlines() if _MISSING.search(ln)]):
        for m in reversed(list(_CONSOLE_PATH.finditer(line))):
            p = m.group(1).rstrip("/.:") or "/"
            if p in gone_set or _under(gone_dirs, p):
                named = f"the console names {p}, which slim dropped; "
                break
        if named:
            break
    if not named and cause not in (QemuExited, KernelPanicked, ProbeFailed):
        return ""  # a timeout, no output: nothing says the files are missing
    if not named and _OUT_OF_MEMORY.search(console):
        return ""  # the guest ran out of memory: not a file slim dropped
    if not named and NETWORK_FAILED in console:
        return ""  # the kernel could not bring eth0 up: not a file slim dropped
    source = "image's" if rec.source == "image" else "packages'"
    return (f" (rootfs.slim dropped {len(gone)} of the {source} files: {named}set rootfs.slim: false in "
            f"{display_path(recipe.path)} to keep them, or list what the app needs in rootfs.files; "
            f"{display_path(path)} lists them)")


_OUT_OF_MEMORY = re.compile(r"Out of memory|deadlocked on memory|oom-kill|Kernel panic - not syncing: VFS: Unable to "
                            r"mount root|Initramfs unpacking failed")
"""A console that says the guest ran out of memory (or could not hold its root): a failure slim did not cause."""

_MISSING = re.compile(r"no such file|not found|can't|cannot|could not|couldn't|does not exist|missing|ENOENT",
                      re.IGNORECASE)
"""A console line that says something is missing; only paths on such lines are taken as what slim dropped
(a path the app merely mentions, e.g. initdb creating its data directory, is not)."""

_CONSOLE_PATH = re.compile(r"(?<![\w.~-])(/(?:[A-Za-z0-9._+@-]+/?)+)")
"""An absolute path as a program prints it in an error (``'/www'``, ``/usr/lib/x.so:``)."""


def _under(dirs: list[str], p: str) -> bool:
    """True when *p* is inside one of the sorted directories *dirs*."""
    i = bisect.bisect_right(dirs, p)
    return i > 0 and p.startswith(dirs[i - 1] + "/")


def _round(t: float | None) -> float | None:
    return None if t is None else round(t, 3)


def _print_tail(app: str, con: ConsoleState, outdir: Path) -> None:
    tail = con.lines[-CONSOLE_TAIL:]
    out = sys.stderr
    if tail:
        out.write(f"tailor: last {len(tail)} console lines of {app} ({outdir / 'console.log'}):\n")
        for t, line in tail:
            out.write(f"  [{t:8.3f}] {line}\n")
    else:
        out.write(f"tailor: {app} printed nothing on the console\n")
    out.flush()


# --------------------------------------------------------------------------
# The stage for a recipe, and its doit tasks


boot_dir = paths.boot_dir
result_path = paths.boot_result


def boot_app(recipe: Recipe, accel: str | None = None) -> dict:
    """Boot-test *recipe* with the kernel its kernel stage recorded (its vmlinux by PVH when it has
    CONFIG_PVH, else its bzImage; :func:`~tailor.qemu.kernel_file`) and its rootfs image."""
    kernel, _ = kernel_file(records.app_kernel(recipe.id))
    result = run(recipe, kernel, paths.rootfs_image(recipe.name, recipe.rootfs.format),
                 boot_dir(recipe.id), accel=accel)
    entropy = {True: "random pool seeded before the app", False: "app started before the random pool was seeded",
               None: "app exec not seen"}[result["entropy_before_app"]]
    print(f"[boot:{recipe.id}] PASS ({result['accel']}, {result['boot_method']}; {entropy}): "
          f"init after {result['time_to_init_s']} s, "
          f"ready after {result['time_to_ready_s']} s; {result['probe']['detail'] or recipe.test.probe.type}",
          file=sys.stderr)
    return result
