"""Does an app need the system calls an option provides? Boot it with those calls failing, no kernel built.

A kernel without ``EPOLL`` answers ``epoll_create1``, ``epoll_ctl`` and ``epoll_wait`` with ``ENOSYS``
(the kernel's ``sys_ni_syscall``); so does a seccomp filter. Discovery uses that to learn, before it
builds a single trial kernel, which options the app cannot do without: for each candidate whose
traced code includes system call entries, it boots the app on the probe kernel (which has
``SECCOMP_FILTER``) with exactly those calls failing and runs the recipe's boot test and exercise.

- The boot test **fails**: the app needs the option. A kernel without it fails the same way, as the
  calls fail there too (and more is missing), so minimisation keeps the option without building the
  kernel that would prove it.
- The boot test **passes**: the app survives without those calls. What it may still need of the
  option is code reached another way, so minimisation tries it like any option reached only that way.

The guest side is ``rootfs/_tailor/enosys.c``, a freestanding helper compiled once
(:func:`tailor.rootfs.compile_helper`). :func:`image_with_helper` copies the app's root image with the
helper added as :data:`GUEST` (e2fsprogs' ``debugfs`` writes it into an ext2 copy; a second cpio
archive is appended to an initramfs, which the kernel unpacks after the first). The kernel starts the
helper as init (:func:`cmdline`: ``init=`` or ``rdinit=``, and ``tailor_enosys=NR,...``, which Linux
hands to init as an environment variable); it installs the filter and execs ``/init``. System call
numbers come from the pinned kernel source's ``syscall_64.tbl`` (:func:`syscall_numbers`). A control
boot with an empty list comes first: if the helper itself breaks the boot, nothing is concluded.
"""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from tailor import boot
from tailor.cpio import Entry, write_archive
from tailor.errors import TailorError
from tailor.kinds import RootFormat
from tailor.recipe import ENOSYS_SOURCE
from tailor.util import atomic_path, display_path, makedirs, remove

SOURCE = ENOSYS_SOURCE
"""The guest helper's source."""
GUEST = "/.tailor/enosys"
"""Where the helper is in the image copy the checks boot."""
TABLE = Path("arch/x86/entry/syscalls/syscall_64.tbl")
"""The x86-64 system call table of a kernel source tree: ``NR ABI NAME ENTRY`` per line."""
SYSCALL_PREFIX = "__x64_sys_"
"""How a traced system call entry is named (as :mod:`tailor.discover` names them)."""
SYS_NI = Path("kernel/sys_ni.c")
"""Where a kernel source names, with ``COND_SYSCALL(name)``, each system call that becomes
``sys_ni_syscall`` (``-ENOSYS``) when the code that defines it is not built."""
MAX_CALLS = 64
"""The most calls the helper takes in one boot (its filter's size)."""


def _source_file(srctree: Path, name: Path) -> tuple[Path, str]:
    path = Path(srctree) / name
    try:
        return path, path.read_text()
    except OSError as e:
        raise TailorError(f"{display_path(path)}: cannot read it ({e.strerror}); is {display_path(srctree)} a "
                          f"kernel source tree?") from None


def syscall_numbers(srctree: Path) -> dict[str, int]:
    """System call name -> x86-64 number, from *srctree*'s table (ABIs ``common`` and ``64``; x32's left out)."""
    path, text = _source_file(srctree, TABLE)
    out: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 3 and fields[0].isdigit() and fields[1] in ("common", "64"):
            out.setdefault(fields[2], int(fields[0]))
    if not out:
        raise TailorError(f"{display_path(path)}: no x86-64 system calls in it; is it the kernel's syscall_64.tbl?")
    return out


def absent_calls(srctree: Path) -> frozenset[str]:
    """The system calls that answer ENOSYS when their code is not built: *srctree*'s ``COND_SYSCALL`` names.
    Others have a stand-in when their option is off (``clock_gettime`` without ``POSIX_TIMERS`` is
    ``posix-stubs.c``'s), so making them fail would not be what a kernel without the option does."""
    _, text = _source_file(srctree, SYS_NI)
    return frozenset(re.findall(r"^COND_SYSCALL\((\w+)\)", text, re.M))


def calls_of(functions: list[str]) -> list[str]:
    """The system calls among traced *functions* (``__x64_sys_NAME`` -> ``NAME``), sorted."""
    return sorted({f[len(SYSCALL_PREFIX):] for f in functions if f.startswith(SYSCALL_PREFIX)})


def cmdline(fmt: str, numbers: list[int]) -> str:
    """The kernel arguments that start :data:`GUEST` as init with *numbers* failing (empty: a control boot)."""
    start = "rdinit" if RootFormat(fmt) is RootFormat.CPIO else "init"
    return f"{start}={GUEST} tailor_enosys={','.join(str(n) for n in numbers)}"


def helper() -> Path:
    """The compiled helper (cached under a digest of its source and the compiler)."""
    from tailor.rootfs import compile_helper  # the rootfs module's compiler; imported when it is needed

    return compile_helper(SOURCE, "enosys", "discovery compiles its system call helper with it")


def image_with_helper(image: Path, fmt: str, dest: Path) -> Path:
    """A copy of root *image* (format *fmt*) at *dest* with the helper at :data:`GUEST`, written atomically."""
    binary, image, dest = helper(), Path(image), Path(dest)
    makedirs(dest.parent)
    if RootFormat(fmt) is RootFormat.CPIO:
        with atomic_path(dest) as tmp:
            extra = tmp.with_name(tmp.name + ".extra")
            try:
                write_archive(extra, [Entry(".tailor", stat.S_IFDIR | 0o755),
                                      Entry(GUEST.lstrip("/"), stat.S_IFREG | 0o755, source=str(binary))])
                with open(tmp, "wb") as out:
                    for part in (image, extra):  # the kernel unpacks concatenated archives in turn
                        with open(part, "rb") as f:
                            shutil.copyfileobj(f, out, 1 << 20)
            finally:
                remove(extra)
        return dest
    debugfs = shutil.which("debugfs") or shutil.which("debugfs", path="/usr/sbin:/sbin")
    if debugfs is None:
        raise TailorError("debugfs (e2fsprogs) not found; run ./setup.sh")
    with atomic_path(dest) as tmp:
        shutil.copyfile(image, tmp)
        script = tmp.with_name(tmp.name + ".cmds")
        # mkdir fails harmlessly when a network image has /.tailor already; debugfs goes on
        script.write_text(f"mkdir /.tailor\nwrite \"{binary}\" {GUEST}\nsif {GUEST} mode 0100755\n"
                          f"sif {GUEST} uid 0\nsif {GUEST} gid 0\n")
        try:
            subprocess.run([debugfs, "-w", "-f", str(script), str(tmp)], capture_output=True, text=True)
            check = subprocess.run([debugfs, "-R", f"stat {GUEST}", str(tmp)], capture_output=True, text=True)
        finally:
            remove(script)
        if "Mode:  0755" not in check.stdout or f"Size: {binary.stat().st_size}" not in check.stdout:
            raise TailorError(f"{display_path(image)}: debugfs could not add {GUEST} to a copy of it "
                              f"({(check.stderr.strip() or 'no such file').splitlines()[-1]})")
    return dest


@dataclass(frozen=True)
class Check:
    """One boot with some system calls failing: the option, its calls (names and numbers), the result
    (``pass``, ``fail`` or ``skipped`` with why), the boot test's reason and how long the boot took."""

    option: str
    calls: tuple[str, ...]
    numbers: tuple[int, ...]
    result: str
    reason: str = ""
    boot_s: float = 0.0

    def record(self) -> dict:
        return {"option": self.option, "calls": list(self.calls), "numbers": list(self.numbers),
                "result": self.result, "reason": self.reason, "boot_s": self.boot_s}


def boot_with(recipe, kernel: Path, image: Path, outdir: Path, numbers: list[int], timeout: float) -> tuple[bool, str, float]:
    """Boot-test *recipe* on *kernel* with *image* (holding the helper) and *numbers* failing, within
    *timeout* seconds: (passed, the failure's first line, seconds)."""
    t0 = time.monotonic()
    quick = replace(recipe, test=replace(recipe.test, timeout=timeout))
    extra = " ".join(filter(None, (cmdline(recipe.rootfs.format, numbers),
                                   RootFormat(recipe.rootfs.format).ramfs_cmdline)))
    try:
        boot.run(quick, kernel, image, outdir, cmdline_extra=extra, image_known_good=True)
        return True, "", round(time.monotonic() - t0, 1)
    except TailorError as e:
        return False, str(e).splitlines()[0], round(time.monotonic() - t0, 1)


def check(recipe, kernel: Path, image: Path, calls: dict[str, list[str]], srctree: Path, workdir: Path,
          limit: Callable[[float], float] | None = None, say: Callable[[str], None] = lambda text: None) -> list[Check]:
    """For each option of *calls* (option -> the system calls the app ran that it provides), whether
    *recipe*'s boot test passes on *kernel* (the probe kernel) with those calls failing with ENOSYS.

    A control boot with no call failing comes first, as the list's first :class:`Check` (option ``""``,
    result ``pass`` or ``fail``); when it fails, every option is ``skipped`` (nothing can be concluded).
    Options whose calls all have a stand-in without them (:func:`absent_calls`), are not in the source's
    table or are more than :data:`MAX_CALLS` are ``skipped`` too; without any option to boot for, there is
    no control boot either. *limit* gives each boot's time limit from the control boot's seconds (default:
    the recipe's ``test.timeout``). *workdir* holds the image copy (removed at the end) and each boot's
    console log. *say* reports progress."""
    numbers, absent = syscall_numbers(srctree), absent_calls(srctree)
    plan: list[tuple[str, list[str], list[int] | None, str]] = []
    for option, traced in calls.items():
        names = [c for c in traced if c in absent]
        unknown = [c for c in names if c not in numbers]
        why = (f"its system calls ({', '.join(traced)}) exist without it (no COND_SYSCALL in {SYS_NI})" if not names
               else f"not in {TABLE}: {', '.join(unknown)}" if unknown
               else f"{len(names)} calls, more than {MAX_CALLS}" if len(names) > MAX_CALLS else "")
        plan.append((option, names or traced, None if why else sorted(numbers[c] for c in names), why))
    if not any(p[2] for p in plan):
        return [Check(o, tuple(n), (), "skipped", why or "no system calls") for o, n, _, why in plan]
    workdir = makedirs(Path(workdir))
    copy = workdir / f"root.{RootFormat(recipe.rootfs.format).value}"
    try:
        image_with_helper(image, recipe.rootfs.format, copy)
        ok, reason, secs = boot_with(recipe, kernel, copy, workdir / "control", [], recipe.test.timeout)
        control = Check("", (), (), "pass" if ok else "fail", reason, secs)
        if not ok:
            say(f"system call checks skipped: the control boot (helper as init, nothing failing) failed: {reason}")
            return [control] + [Check(o, tuple(n), tuple(nums or ()), "skipped", f"the control boot failed: {reason}")
                                for o, n, nums, _ in plan]
        timeout = limit(secs) if limit else recipe.test.timeout
        out = [control]
        for option, names, nums, why in plan:
            if nums is None:
                out.append(Check(option, tuple(names), (), "skipped", why))
                continue
            ok, reason, secs = boot_with(recipe, kernel, copy, workdir / option, nums, timeout)
            out.append(Check(option, tuple(names), tuple(nums), "pass" if ok else "fail", reason, secs))
            say(f"{option}: with {', '.join(names)} failing (ENOSYS) the boot test "
                + ("passes" if ok else f"fails ({reason})") + f"; {secs} s")
        return out
    finally:
        remove(copy)
