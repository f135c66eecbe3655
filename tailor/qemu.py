"""Running qemu: the accelerator, the command line, and one VM context manager that leaves no qemu behind.

* :func:`detect_accel` picks KVM only when ``/dev/kvm`` opens read-write and
  the CPU flags show ``vmx`` or ``svm``; a paravirtual nested KVM without
  them (where a guest hangs silently) gives TCG at once.
* :func:`qemu_command` builds the ``qemu-system-x86_64 -M microvm`` argv;
  values inside qemu's ``key=value,...`` option lists go through
  :func:`option_value` (a comma is doubled, as qemu's parser wants).
* :class:`VM` is one qemu process: started with its serial console read
  line by line into a :class:`~tailor.console.ConsoleState` (host
  timestamps), killed with its process group and reaped when the block ends.
* :func:`session` is what the boot test and the benchmarks use: a VM with a
  free host port forwarded to the guest, started again on a new port when
  another process took that port first (:data:`PORT_TRIES`), and rerun under
  TCG when it failed under KVM before the guest printed anything (qemu 7.2
  aborts with "failed to set MSR" for ``-cpu host`` on a nested KVM, or the
  guest hangs silently).

The VM never outlives its block:

* qemu runs in its own session (so a Ctrl-C on the terminal reaches only
  Python) and is killed with ``SIGKILL`` to its process group when the block
  ends, whatever ends it: pass, failure, timeout, ``KeyboardInterrupt`` or
  any other exception;
* qemu gets ``PR_SET_PDEATHSIG = SIGKILL``, so the kernel kills it when the
  thread that started it goes away. That covers the cases where no
  ``finally`` runs: ``SIGKILL`` of Python, and ``SIGTERM`` with its default
  action (the process ends, so its threads end). This module installs no
  ``SIGTERM`` handler: a caller that handles ``SIGTERM`` itself (doit does
  not) must raise or exit from it so that the ``finally`` runs. Because the
  death signal follows the creating *thread*, qemu is started, waited for
  and reaped in one thread.
* While the main thread waits for a VM inside :class:`CtrlC`, a ``SIGINT``
  handler is installed that only records Ctrl-C; :func:`check_interrupt`
  raises ``KeyboardInterrupt`` at the wait loops' safe points.

Over 400 lines because starting, reading, waiting for and killing qemu must stay in one place:
the parent-death signal and the Ctrl-C deferral tie the process to the thread that runs it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from tailor.console import NO_OUTPUT_S, ConsoleState, decode, exit_text, panic_reason, split_lines
from tailor.errors import (BootFailure, HostPortTaken, KernelPanicked, NoConsoleOutput, QemuError, QemuExited,
                           TailorBug, TailorError)
from tailor.kinds import Accel, Arch, BootMethod, RootFormat, choices
from tailor.records import BaselineKernel, KernelFiles, KernelPointer
from tailor.util import enabled_symbols

QEMU = "qemu-system-x86_64"
MACHINE = "microvm,acpi=off,x-option-roms=off,isa-serial=on,rtc=on"
"""The machine: all four options are accepted by qemu 7.2 (checked with ``-M microvm,help``
and a boot). ``acpi=off`` makes qemu list the virtio-mmio devices on the kernel command line."""

BASE_CMDLINE = "console=ttyS0 reboot=t panic=-1"
"""Serial console; a reboot or a panic ends qemu at once (with ``-no-reboot``)."""

MACHINES = {Arch.X86_64: MACHINE, Arch.ARM64: "virt"}
"""qemu's machine per architecture: microvm for x86_64, ``virt`` for arm64 (its devices, the PL011, GIC,
timer and virtio-mmio transports, are in the device tree qemu hands the kernel)."""

CMDLINES = {Arch.X86_64: BASE_CMDLINE, Arch.ARM64: "console=ttyAMA0 panic=-1"}
"""The kernel command line's start per architecture: the serial console (arm64: the PL011) and
``panic=-1``; a reboot ends qemu under ``-no-reboot`` (arm64 resets through PSCI)."""


TCG_CMDLINE = {Arch.X86_64: "tsc=unstable"}
"""Added to the command line of a guest under TCG. An x86_64 guest's TSC under TCG is the host's raw
counter; the guest calibrates it against the PIT only on some boots, and on one boot in about thirty
here its clocksource watchdog then caught it jumping (the guest's clock ran 70 s ahead in a few seconds)
and switched clocks while redis-benchmark ran, which reset its connections. ``tsc=unstable`` makes
every TCG boot keep time by the timer interrupt, as the boots whose calibration fails always did."""


def qemu_binary(arch: str = Arch.X86_64) -> str:
    """The qemu system emulator for guests of *arch*."""
    return Arch(arch).qemu


def host_arch() -> Arch | None:
    """The host's architecture as an :class:`~tailor.kinds.Arch` (None for one tailor has no guests of)."""
    return {"x86_64": Arch.X86_64, "aarch64": Arch.ARM64}.get(os.uname().machine)

PORT_TRIES = 3
"""How often :func:`session` starts qemu on a new host port when the last one was taken meanwhile."""

PR_SET_PDEATHSIG = 1


# --------------------------------------------------------------------------
# Accelerator


def detect_accel(force: str | None = None, *, cpuinfo_path: str | os.PathLike = "/proc/cpuinfo",
                 kvm_path: str | os.PathLike = "/dev/kvm", arch: str = Arch.X86_64) -> Accel:
    """Return :attr:`Accel.KVM` or :attr:`Accel.TCG`.

    *force* (or else the ``TAILOR_ACCEL`` environment variable) decides when
    set. Otherwise the answer is ``"kvm"`` only when *kvm_path* opens
    read-write and a ``flags`` line of *cpuinfo_path* has ``vmx`` or ``svm``;
    a KVM device without them is a paravirtual nested KVM on which a normal
    guest hangs without output, so it gives ``"tcg"``. No VM is started. A guest of another *arch* than
    the host's always runs under TCG.
    """
    if Arch(arch) is not host_arch():
        return Accel.TCG
    choice = force or os.environ.get("TAILOR_ACCEL") or ""
    if choice:
        choice = choice.strip().lower()
        try:
            return Accel(choice)
        except ValueError:
            src = "accel" if force else "TAILOR_ACCEL"
            raise TailorError(f"{src}={choice!r} is not an accelerator; use tcg or kvm") from None
    try:
        fd = os.open(kvm_path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return Accel.TCG
    os.close(fd)
    return Accel.KVM if has_virt_flags(cpuinfo_path) else Accel.TCG


def has_virt_flags(cpuinfo_path: str | os.PathLike) -> bool:
    """True when a ``flags`` line of the cpuinfo file lists ``vmx`` (Intel) or ``svm`` (AMD)."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "flags":
                    flags = set(value.split())
                    return bool(flags & {"vmx", "svm"})
    except OSError:
        return False
    return False


# --------------------------------------------------------------------------
# The qemu command line


def option_value(value: object) -> str:
    """*value* as one value inside a qemu ``key=value,...`` option list: each comma doubled."""
    return str(value).replace(",", ",,")


def qemu_command(kernel: str | os.PathLike, image: str | os.PathLike, fmt: str, memory: int,
                 cmdline_extra: str, accel: str, hostfwd: list[tuple] | None,
                 network: bool, *, name: str | None = None, extra: tuple[str, ...] = (),
                 serial: str = "stdio", disk_format: str = "raw", arch: str = Arch.X86_64) -> list[str]:
    """The qemu argv that boots *kernel* with root *image* on a microvm machine (*arch* ``arm64``:
    ``qemu-system-aarch64 -M virt``, the same virtio-mmio devices, the console on ttyAMA0).

    *fmt* is ``cpio`` (the image is the initramfs, init is ``/init``) or
    ``ext2`` (the image is a virtio-blk disk ``/dev/vda``, opened with
    ``snapshot=on`` so the guest never changes the file). *memory* is in MiB,
    *cmdline_extra* is appended to the kernel command line, *accel* is
    ``tcg`` or ``kvm``. With *network*, a user-mode (slirp) network with
    ``restrict=on`` (the guest cannot reach the host or the outside) is
    attached as ``virtio-net-device``; each ``(host_port, guest_port)`` of
    *hostfwd* forwards ``127.0.0.1:host_port`` to the guest's TCP port, which
    ``restrict=on`` still allows (an ``(address, host_port, guest_port)`` item
    listens on that host address instead). *name* becomes ``-name`` (a marker to find
    the process by); *extra* arguments go before ``-append`` (e.g. qemu's ``-d``/``-D`` for a trace).
    *serial* is the console's chardev (``stdio``, or ``file:PATH`` for a VM that runs detached).
    An ext2 root whose *disk_format* is ``qcow2`` (a copy-on-write layer over the image, which
    :mod:`tailor.run` makes) is opened as it is, without ``snapshot=on``.
    Paths and names inside option lists are escaped (:func:`option_value`), so any path works.
    """
    fmt, accel, arch = RootFormat(fmt), Accel(accel), Arch(arch)  # ValueError for anything else
    if hostfwd and not network:
        raise ValueError("port forwarding needs network=True")
    cmd = [qemu_binary(arch), "-M", MACHINES[arch]]
    cmd += ["-accel", "kvm", "-cpu", "host"] if accel is Accel.KVM else ["-accel", "tcg", "-cpu", "max"]
    cmd += ["-m", str(int(memory)), "-smp", "1"]
    if name:
        cmd += ["-name", option_value(name)]
    cmd += ["-nodefaults", "-no-user-config", "-display", "none", "-serial", serial, "-no-reboot"]
    cmd += ["-kernel", str(kernel)]
    if fmt.is_disk:
        snapshot = ",snapshot=on" if disk_format == "raw" else ""
        cmd += ["-drive", f"id=root,file={option_value(image)},format={disk_format},if=none{snapshot}",
                "-device", "virtio-blk-device,drive=root"]
    else:
        cmd += ["-initrd", str(image)]
    if network:
        netdev = "user,id=n0,restrict=on"
        for fwd in hostfwd or ():
            addr, host_port, guest_port = fwd if len(fwd) == 3 else ("127.0.0.1", *fwd)
            netdev += f",hostfwd=tcp:{option_value(addr)}:{int(host_port)}-:{int(guest_port)}"
        cmd += ["-netdev", netdev, "-device", "virtio-net-device,netdev=n0"]
    cmd += [str(a) for a in extra]
    append = f"{CMDLINES[arch]} {fmt.kernel_args}"
    if accel is Accel.TCG and arch in TCG_CMDLINE:
        append += " " + TCG_CMDLINE[arch]
    if cmdline_extra and cmdline_extra.strip():
        append += " " + " ".join(cmdline_extra.split())
    cmd += ["-append", append]
    return cmd


BOOT_METHODS = (BootMethod.PVH, BootMethod.BZIMAGE)
"""How qemu starts an x86_64 kernel (:class:`~tailor.kinds.BootMethod`; an arm64 kernel boots its ``Image``)."""

ARM64_IMAGE_MAGIC = (0x38, b"ARM\x64")
"""Where an arm64 ``Image`` carries its magic (Documentation/arm64/booting.rst)."""
ELF_MAGIC = b"\x7fELF"


def kernel_files(kernel) -> KernelFiles:
    """*kernel* as :class:`~tailor.records.KernelFiles`: a :class:`~tailor.records.KernelPointer`, a
    KernelFiles, or a record that embeds a kernel's description (a baseline's, a discovery probe's:
    a mapping with ``dir``, ``bzImage`` and ``vmlinux``)."""
    if isinstance(kernel, KernelFiles):
        return kernel
    if isinstance(kernel, (KernelPointer, BaselineKernel)):
        return kernel.files
    try:
        return KernelFiles(Path(kernel["dir"]), Path(kernel["bzImage"]), Path(kernel["vmlinux"]))
    except (KeyError, TypeError):
        raise TailorBug(f"not a kernel description: {kernel!r}") from None


def kernel_file(kernel, method: str | None = None) -> tuple[Path, str]:
    """The file qemu boots for a built *kernel* and the boot method: ``(path, method)``.

    *kernel* is anything :func:`kernel_files` takes (an app's kernel pointer, a baseline's record).
    *method* ``pvh`` or ``bzimage`` forces one; by default a kernel built
    with ``CONFIG_PVH=y`` boots by PVH and any other by its bzImage. Asking
    for ``pvh`` of a kernel without it is a TailorError naming the config.
    """
    if method is not None:
        try:
            method = BootMethod(method)
        except ValueError:
            raise TailorError(f"boot method {method!r}: expected {choices(BootMethod)}") from None
    files = kernel_files(kernel)
    pvh = has_pvh(files.config)
    if method is BootMethod.PVH and not pvh:
        raise TailorError(f"{files.config}: CONFIG_PVH is not set, so qemu cannot boot its vmlinux directly; "
                          f"add PVH=y to the kernel or boot the bzImage")
    if method is BootMethod.PVH or (method is None and pvh):
        return files.vmlinux, BootMethod.PVH
    return files.bzimage, boot_method(files.bzimage)


def has_pvh(config: str | os.PathLike) -> bool:
    """True when the .config at *config* has ``CONFIG_PVH=y`` (False when it or the file is missing)."""
    try:
        return "PVH" in enabled_symbols(Path(config).read_text(errors="replace"))
    except OSError:
        return False


def boot_method(kernel: str | os.PathLike) -> BootMethod:
    """``pvh`` when the file at *kernel* is an ELF (a vmlinux), ``image`` when it is an arm64 ``Image``,
    else ``bzimage``."""
    try:
        with open(kernel, "rb") as f:
            head = f.read(64)
    except OSError:
        return BootMethod.BZIMAGE
    if head[:4] == ELF_MAGIC:
        return BootMethod.PVH
    at, magic = ARM64_IMAGE_MAGIC
    return BootMethod.IMAGE if head[at:at + len(magic)] == magic else BootMethod.BZIMAGE


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# Processes


def pdeathsig_preexec() -> Callable[[], None]:
    """A preexec_fn that makes the child get SIGKILL when the thread that forked it exits.

    libc's prctl is looked up here, in the parent, so the child does no
    dynamic loading; the child also kills itself if its parent already died
    between fork and prctl.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL a process's whole process group (it leads its own session) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        proc.kill()
        proc.wait()


_INTERRUPTED = threading.Event()


class CtrlC:
    """While a VM runs in the main thread, Ctrl-C (SIGINT) only sets a flag;
    :func:`check_interrupt` turns it into ``KeyboardInterrupt`` at the wait loops' safe points.

    Python raises ``KeyboardInterrupt`` wherever the main thread happens to be, and
    one raised inside a finaliser is printed and lost: the boot then ran on to its
    timeout and the task failed instead of stopping. Outside the main thread this does nothing.
    """

    def __enter__(self):
        self.old = None
        if threading.current_thread() is threading.main_thread():
            _INTERRUPTED.clear()
            self.old = signal.signal(signal.SIGINT, lambda signum, frame: _INTERRUPTED.set())
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
            if exc[0] is None:
                check_interrupt()
        return False


def check_interrupt() -> None:
    """Raise ``KeyboardInterrupt`` when a Ctrl-C arrived inside :class:`CtrlC`."""
    if _INTERRUPTED.is_set():
        _INTERRUPTED.clear()
        raise KeyboardInterrupt


class ConsoleReader(threading.Thread):
    """Reads qemu's stdout (the serial console) and feeds a :class:`ConsoleState` under a condition."""

    def __init__(self, fd: int, con: ConsoleState, cond: threading.Condition, t0: float):
        super().__init__(name="tailor-console", daemon=True)
        self.fd, self.con, self.cond, self.t0 = fd, con, cond, t0
        self.eof = False

    def run(self) -> None:
        rest = b""
        try:
            while True:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    chunk = b""
                t = time.monotonic() - self.t0
                with self.cond:
                    if not chunk:
                        if rest:
                            self.con.feed(decode(rest), t)
                        break
                    self.con.output(t)
                    lines, rest = split_lines(rest + chunk)
                    for line in lines:
                        self.con.feed(line, t)
                    self.cond.notify_all()
        finally:
            with self.cond:
                self.eof = True
                self.cond.notify_all()


# --------------------------------------------------------------------------
# One VM


class VM:
    """One qemu process running *cmd*, its console fed to *console*; a context manager.

    Entering starts qemu (raises :class:`~tailor.errors.QemuError` when it
    cannot be started) and the console reader; leaving kills qemu's process
    group, reaps it and keeps the start of its stderr in :attr:`stderr`.
    ``t0`` is the :func:`time.monotonic` time qemu was started; console times
    are seconds since then.
    """

    def __init__(self, cmd: list[str], console: ConsoleState):
        self.cmd, self.console = cmd, console
        self.cond = threading.Condition()
        self.proc: subprocess.Popen | None = None
        self.reader: ConsoleReader | None = None
        self.stderr = ""
        self.t0 = 0.0
        self._errf = None

    def __enter__(self) -> VM:
        self._errf = tempfile.TemporaryFile()
        preexec = pdeathsig_preexec()
        self.t0 = time.monotonic()
        try:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=self._errf, start_new_session=True, preexec_fn=preexec,
                                         close_fds=True)
        except OSError as e:
            self._errf.close()
            if isinstance(e, FileNotFoundError):
                raise QemuError(f"{self.cmd[0]} not found; run ./setup.sh") from None
            raise QemuError(f"cannot start {self.cmd[0]}: {e.strerror}") from None
        self.reader = ConsoleReader(self.proc.stdout.fileno(), self.console, self.cond, self.t0)
        self.reader.start()
        return self

    def __exit__(self, *exc) -> bool:
        try:
            kill(self.proc)
            self.reader.join(5)
            self.proc.stdout.close()
            self.stderr = self.stderr_text()
        finally:
            self._errf.close()
        return False

    def elapsed(self) -> float:
        """Seconds since qemu was started."""
        return time.monotonic() - self.t0

    def poll(self) -> int | None:
        """qemu's exit status, or None while it runs."""
        return self.proc.poll()

    def stderr_text(self, limit: int = 8192) -> str:
        """The first *limit* bytes qemu wrote to stderr so far, as text."""
        self._errf.flush()
        self._errf.seek(0)
        return self._errf.read(limit).decode("utf-8", errors="replace").strip()

    def watch(self, decide: Callable[[float, int | None], Any]) -> Any:
        """Call ``decide(seconds since start, exit status or None)`` with the console locked, each time
        console lines arrive (at least every 0.1 s), until it returns something other than None; return that.

        Once qemu has ended, its output is read to the end before *decide* is
        called. A Ctrl-C inside :class:`CtrlC` is raised here.
        """
        while True:
            check_interrupt()
            status = self.proc.poll()
            if status is not None:
                self.reader.join(5)  # read what qemu wrote before it ended
            with self.cond:
                answer = decide(self.elapsed(), status)
                if answer is not None:
                    return answer
                if status is None and not self.reader.eof:
                    self.cond.wait(0.1)
            if self.reader.eof and status is None:
                try:
                    self.proc.wait(0.1)
                except subprocess.TimeoutExpired:
                    pass

    def check(self, no_output_s: float | None = NO_OUTPUT_S) -> None:
        """Raise when the VM can no longer serve: a Ctrl-C (``KeyboardInterrupt``), a kernel panic
        (:class:`~tailor.errors.KernelPanicked`), qemu gone (:class:`~tailor.errors.QemuExited`) or,
        with *no_output_s*, no console byte within that many seconds
        (:class:`~tailor.errors.NoConsoleOutput`). Used as a probe's abort check."""
        check_interrupt()
        with self.cond:
            con = self.console
            if con.panic is not None:
                raise KernelPanicked(panic_reason(con, con.before_panic(con.ready_index)))
            silent = con.first_output_s is None
        status = self.proc.poll()
        if status is not None:
            raise QemuExited(f"{exit_text(status)} during the probe")
        if silent and no_output_s is not None and self.elapsed() >= no_output_s:
            raise NoConsoleOutput(f"no console output within {no_output_s:g} s")

    def port_taken(self) -> bool:
        """True when qemu has ended because it could not forward a host port (another process bound it)."""
        return self.proc.poll() is not None and isinstance(exit_error(self.stderr_text()), HostPortTaken)


def exit_error(stderr: str) -> TailorError | None:
    """What qemu's *stderr* says went wrong, as an error class: :class:`~tailor.errors.HostPortTaken`
    when a host forwarding rule could not be set up, else :class:`~tailor.errors.QemuError` with its
    first line, or None when it is empty. (qemu's own text is matched here and nowhere else.)"""
    if not stderr:
        return None
    first = stderr.splitlines()[0]
    if "host forwarding" in stderr:
        return HostPortTaken(first)
    return QemuError(first)


# --------------------------------------------------------------------------
# A VM session: port retry and KVM fallback


@dataclass
class Session:
    """What :func:`session` yields: the running VM, the host port forwarded (or None), what *ready*
    returned, the accelerator used and, after a fallback to TCG, the KVM attempt's failure."""

    vm: VM
    port: int | None
    result: Any
    accel: str
    kvm_failure: str = ""

    @property
    def fallback_from_kvm(self) -> bool:
        return bool(self.kvm_failure)


@contextmanager
def session(command: Callable[[str, int | None], list[str]], new_console: Callable[[], ConsoleState],
            accel: str, ready: Callable[[VM, int | None], Any], *, guest_port: int | None = None,
            failure: Callable[[Any], str | None] = lambda result: None) -> Iterator[Session]:
    """Start a VM and call ``ready(vm, host port)`` in it; yield a :class:`Session` while the VM runs.

    ``command(accel, host port)`` gives the qemu argv and ``new_console()``
    a fresh console for each start. With *guest_port*, a free host port is
    picked and passed on (the command forwards it). An attempt failed when
    *ready* raised a :class:`~tailor.errors.BootFailure` or ``failure(result)``
    gives a reason; then:

    * when qemu ended because the host port was taken meanwhile, start again
      on a new port (at most :data:`PORT_TRIES` starts);
    * when *accel* is ``kvm`` and the guest printed nothing, start again
      under ``tcg`` (once), and say so in ``kvm_failure``;
    * otherwise the failure stands: the exception is raised, or the failed
      result yielded.

    Every VM is killed when its attempt or the block ends; :class:`~tailor.errors.QemuError`
    (qemu cannot be started) passes through.
    """
    port = free_port() if guest_port else None
    kvm_failure, starts, accel = "", 0, Accel(accel)
    while True:
        with VM(command(accel, port), new_console()) as vm:
            starts += 1
            error: BootFailure | None = None
            try:
                result = ready(vm, port)
                why = failure(result)
            except BootFailure as e:
                result, error, why = None, e, str(e)
            if why is not None:
                if guest_port and starts < PORT_TRIES and vm.port_taken():
                    port = free_port()
                    continue
                if accel is Accel.KVM and vm.console.first_output_s is None:
                    accel, kvm_failure, starts = Accel.TCG, why, 0
                    continue
                if error is not None:
                    raise error
            yield Session(vm, port, result, accel, kvm_failure)
            return
