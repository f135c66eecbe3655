"""The boot test: start the microVM under qemu, watch its console, probe the app from the host.

:func:`run` boots ``kernel`` with ``image`` (a cpio initramfs or an ext2 root)
under ``qemu-system-x86_64 -M microvm``, reads the serial console line by line
with host timestamps, waits for the kernel's ``Run /init as init process``
line and for the recipe's ready pattern, then checks the app the way the
recipe's probe says (redis, http, tcp, console or none). It writes
``console.log`` and ``result.json`` to the output directory and raises a
one-line :class:`TailorError` when the test fails.

The VM never outlives the test:

* qemu runs in its own session (so a Ctrl-C on the terminal reaches only
  Python) and is killed with ``SIGKILL`` to its process group in a
  ``finally`` block, whatever ends the test: pass, failure, timeout,
  ``KeyboardInterrupt`` or any other exception;
* qemu gets ``PR_SET_PDEATHSIG = SIGKILL``, so the kernel kills it when the
  thread that started it goes away. That covers the cases where no
  ``finally`` runs: ``SIGKILL`` of Python, and ``SIGTERM`` with its default
  action (the process ends, so its threads end). This module installs no
  signal handler; a caller that handles ``SIGTERM`` itself (doit does not)
  must raise or exit from it so that the ``finally`` runs. Because the
  death signal follows the creating *thread*, qemu is started, waited for and
  reaped in the one thread that calls :func:`run`.

Accelerator: :func:`detect_accel` picks KVM only when ``/dev/kvm`` opens
read-write and the CPU flags show ``vmx`` or ``svm``; a paravirtual nested
KVM without them (where a guest hangs silently) gives TCG at once. If KVM was
chosen anyway and the guest prints nothing within :data:`NO_OUTPUT_S`
seconds, or qemu fails under KVM before the guest prints anything (qemu 7.2
aborts with "failed to set MSR" for ``-cpu host`` on that nested KVM), the
boot is rerun under TCG and the result says so (``fallback_from_kvm``, with
the KVM attempt's failure in ``kvm_failure``).
"""

from __future__ import annotations

import ctypes
import http.client
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tailor.errors import TailorError
from tailor.records import save_boot_result
from tailor.util import makedirs, out_dir, read_json, remove, write_atomic, write_json

from tailor.recipe import NETWORK_PROBES, Recipe, with_variants

QEMU = "qemu-system-x86_64"
MACHINE = "microvm,acpi=off,x-option-roms=off,isa-serial=on,rtc=on"
"""The machine: all four options are accepted by qemu 7.2 (checked with ``-M microvm,help``
and a boot). ``acpi=off`` makes qemu list the virtio-mmio devices on the kernel command line."""

BASE_CMDLINE = "console=ttyS0 reboot=t panic=-1"
"""Serial console; a reboot or a panic ends qemu at once (with ``-no-reboot``)."""

NO_OUTPUT_S = 10.0
"""Seconds without a single console byte after which the guest is taken to be hung."""

MISMATCH_GRACE_S = 5.0
"""How long a probe keeps retrying once the app answers, but wrongly (e.g. a 503 while warming up)."""

TCP_HOLD_S = 1.0
"""A tcp probe passes when the connection is still open this long after connecting."""

CONSOLE_TAIL = 15
"""Console lines printed to stderr when the test fails."""

INIT_RE = re.compile(r"Run (\S+) as init process")
PANIC_RE = re.compile(r"Kernel panic - not syncing:?\s*(.*)")

PR_SET_PDEATHSIG = 1


# --------------------------------------------------------------------------
# Accelerator


def detect_accel(force: str | None = None, *, cpuinfo_path: str | os.PathLike = "/proc/cpuinfo",
                 kvm_path: str | os.PathLike = "/dev/kvm") -> str:
    """Return ``"kvm"`` or ``"tcg"``.

    *force* (or else the ``TAILOR_ACCEL`` environment variable) decides when
    set. Otherwise the answer is ``"kvm"`` only when *kvm_path* opens
    read-write and a ``flags`` line of *cpuinfo_path* has ``vmx`` or ``svm``;
    a KVM device without them is a paravirtual nested KVM on which a normal
    guest hangs without output, so it gives ``"tcg"``. No VM is started.
    """
    choice = force or os.environ.get("TAILOR_ACCEL") or ""
    if choice:
        choice = choice.strip().lower()
        if choice not in ("kvm", "tcg"):
            src = "accel" if force else "TAILOR_ACCEL"
            raise TailorError(f"{src}={choice!r} is not an accelerator; use tcg or kvm")
        return choice
    try:
        fd = os.open(kvm_path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return "tcg"
    os.close(fd)
    return "kvm" if _has_virt_flags(cpuinfo_path) else "tcg"


def _has_virt_flags(cpuinfo_path: str | os.PathLike) -> bool:
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


def qemu_command(kernel: str | os.PathLike, image: str | os.PathLike, fmt: str, memory: int,
                 cmdline_extra: str, accel: str, hostfwd: list[tuple[int, int]] | None,
                 network: bool, *, name: str | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    """The qemu argv that boots *kernel* with root *image* on a microvm machine.

    *fmt* is ``cpio`` (the image is the initramfs, init is ``/init``) or
    ``ext2`` (the image is a virtio-blk disk ``/dev/vda``, opened with
    ``snapshot=on`` so the guest never changes the file). *memory* is in MiB,
    *cmdline_extra* is appended to the kernel command line, *accel* is
    ``tcg`` or ``kvm``. With *network*, a user-mode (slirp) network with
    ``restrict=on`` (the guest cannot reach the host or the outside) is
    attached as ``virtio-net-device``; each ``(host_port, guest_port)`` of
    *hostfwd* forwards ``127.0.0.1:host_port`` to the guest's TCP port, which
    ``restrict=on`` still allows. *name* becomes ``-name`` (a marker to find
    the process by); *extra* arguments go before ``-append`` (e.g. qemu's ``-d``/``-D`` for a trace).
    """
    if fmt not in ("cpio", "ext2"):
        raise ValueError(f"image format {fmt!r}: expected cpio or ext2")
    if accel not in ("tcg", "kvm"):
        raise ValueError(f"accelerator {accel!r}: expected tcg or kvm")
    if hostfwd and not network:
        raise ValueError("port forwarding needs network=True")
    cmd = [QEMU, "-M", MACHINE]
    cmd += ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    cmd += ["-m", str(int(memory)), "-smp", "1"]
    if name:
        cmd += ["-name", name]
    cmd += ["-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot"]
    cmd += ["-kernel", str(kernel)]
    if fmt == "cpio":
        cmd += ["-initrd", str(image)]
        root_args = "rdinit=/init"
    else:
        cmd += ["-drive", f"id=root,file={image},format=raw,if=none,snapshot=on",
                "-device", "virtio-blk-device,drive=root"]
        root_args = "root=/dev/vda rw init=/init"
    if network:
        netdev = "user,id=n0,restrict=on"
        for host_port, guest_port in hostfwd or ():
            netdev += f",hostfwd=tcp:127.0.0.1:{int(host_port)}-:{int(guest_port)}"
        cmd += ["-netdev", netdev, "-device", "virtio-net-device,netdev=n0"]
    cmd += [str(a) for a in extra]
    append = f"{BASE_CMDLINE} {root_args}"
    if cmdline_extra and cmdline_extra.strip():
        append += " " + " ".join(cmdline_extra.split())
    cmd += ["-append", append]
    return cmd


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# Console parsing (pure: no I/O, no clock)


def split_lines(buf: bytes) -> tuple[list[str], bytes]:
    """Split *buf* into complete console lines and the unfinished rest.

    Lines end with ``\\n``; a ``\\r`` before it (the serial console sends
    ``\\r\\n``) and any other ``\\r`` are dropped; bytes that are not UTF-8
    become U+FFFD. Returns ``(lines, rest)`` where *rest* holds the bytes
    after the last newline.
    """
    *complete, rest = buf.split(b"\n")
    return [_decode(b) for b in complete], rest


def _decode(raw: bytes) -> str:
    return raw.replace(b"\r", b"").decode("utf-8", errors="replace")


@dataclass
class ConsoleState:
    """What the console showed so far, fed one line at a time with :meth:`feed`.

    Times are seconds since qemu started; indices count lines from 0, so the
    order of two events is the order of their indices. An empty *ready*
    pattern means the app is ready when the kernel runs init.
    """

    ready: str = ""
    expect: str | None = None
    lines: list[tuple[float, str]] = field(default_factory=list)
    first_output_s: float | None = None
    init_s: float | None = None
    init_path: str | None = None
    init_index: int | None = None
    ready_s: float | None = None
    ready_index: int | None = None
    expect_s: float | None = None
    expect_index: int | None = None
    panic: str | None = None
    panic_s: float | None = None
    panic_index: int | None = None
    on_line: Callable[[str], None] | None = None
    """Called with each console line as it is fed (e.g. to mark where user space starts in a trace)."""

    def __post_init__(self):
        self._ready_re = re.compile(self.ready) if self.ready else None
        self._expect_re = re.compile(self.expect) if self.expect else None

    def output(self, t: float) -> None:
        """Note that console bytes (perhaps not yet a whole line) arrived at time *t*."""
        if self.first_output_s is None:
            self.first_output_s = t

    def feed(self, line: str, t: float) -> None:
        """Record one console line seen at time *t* and the first init, ready, expect and panic matches."""
        self.output(t)
        index = len(self.lines)
        self.lines.append((t, line))
        if self.on_line is not None:
            self.on_line(line)
        if self.init_s is None and (m := INIT_RE.search(line)):
            self.init_s, self.init_path, self.init_index = t, m.group(1), index
            if self._ready_re is None and self.ready_s is None:
                self.ready_s, self.ready_index = t, index
        if self._ready_re is not None and self.ready_s is None and self._ready_re.search(line):
            self.ready_s, self.ready_index = t, index
        if self._expect_re is not None and self.expect_s is None and self._expect_re.search(line):
            self.expect_s, self.expect_index = t, index
        if self.panic is None and (m := PANIC_RE.search(line)):
            self.panic, self.panic_s, self.panic_index = m.group(1).strip() or "no message", t, index

    def before_panic(self, index: int | None) -> bool:
        """True when the event at line *index* happened, and before any panic."""
        return index is not None and (self.panic_index is None or index < self.panic_index)

    def text(self) -> str:
        """The console as console.log holds it: each line after its host time in seconds."""
        return "".join(f"[{t:8.3f}] {line}\n" for t, line in self.lines)


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`assess`: ``state`` is ``pass``, ``fail`` or ``probe`` (run the network probe)."""

    state: str
    reason: str = ""
    no_output: bool = False


def assess(con: ConsoleState, probe_type: str, now: float, timeout: float, *,
           exit_status: int | None = None, no_output_s: float = NO_OUTPUT_S) -> Verdict | None:
    """Decide the boot test from the console alone, or return None to keep waiting.

    *now* and *timeout* are seconds since qemu started; *exit_status* is
    qemu's exit status once it has ended and its output has been read to the
    end. Rules, in order:

    * the app is ready (and, for a console probe, *expect* was seen) before
      any kernel panic: ``pass`` for ``none``/``console`` probes (a program
      that prints and exits makes the kernel panic with "Attempted to kill
      init" afterwards, which is fine), ``probe`` for network probes unless a
      panic already came after it;
    * a kernel panic before that fails, naming the panic;
    * qemu ended before ready; nothing on the console within *no_output_s*;
      *timeout* passed: each fails with its own reason.
    """
    ready = con.before_panic(con.ready_index)
    if ready:
        if probe_type == "none":
            return Verdict("pass")
        if probe_type == "console":
            if con.before_panic(con.expect_index):
                return Verdict("pass")
        elif con.panic is None:
            return Verdict("probe")
    if con.panic is not None:
        if ready and probe_type == "console":
            return Verdict("fail", f"console probe: pattern {con.expect!r} not seen before a kernel panic "
                                   f"({con.panic})")
        return Verdict("fail", _panic_reason(con, ready))
    if exit_status is not None:
        when = "before the console probe matched" if ready else "before ready"
        return Verdict("fail", f"{_exit_text(exit_status)} {when}")
    if con.first_output_s is None and now >= no_output_s:
        return Verdict("fail", f"no console output within {no_output_s:g} s", no_output=True)
    if now >= timeout:
        if ready:
            return Verdict("fail", f"console probe: pattern {con.expect!r} not seen within {round(timeout, 1):g} s")
        if con.init_s is None:
            return Verdict("fail", f"kernel did not reach init within {round(timeout, 1):g} s")
        return Verdict("fail", f"ready pattern {con.ready!r} not seen within {round(timeout, 1):g} s")
    return None


def _exit_text(status: int) -> str:
    """``qemu exited with status N``, or ``qemu was killed by SIGX`` for a negative Popen status."""
    if status < 0:
        try:
            return f"qemu was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"qemu was killed by signal {-status}"
    return f"qemu exited with status {status}"


def _panic_reason(con: ConsoleState, ready: bool) -> str:
    if "Attempted to kill init" in con.panic:
        what = "init exited after ready" if ready else "init exited before ready"
        return f"{what} (kernel panic: {con.panic})"
    if ready:
        return f"kernel panic after ready: {con.panic}"
    if con.init_s is None:
        return f"kernel panic before init: {con.panic}"
    return f"kernel panic before ready: {con.panic}"


# --------------------------------------------------------------------------
# Probes (from the host, through the forwarded port)


class ProbeFailed(Exception):
    """A probe gave up; str() is the detail (without the ``<type> probe:`` prefix).

    When nothing answered properly before the deadline, ``last`` holds the
    last error seen (and str() says how long the probe tried).
    """

    def __init__(self, detail: str, last: str | None = None):
        super().__init__(detail)
        self.last = last


class _Mismatch(Exception):
    """The app answered, but not as expected."""


class _Closed(Exception):
    """The peer closed the connection without answering (e.g. nothing listens in the guest yet)."""


def _retry(attempt: Callable[[float], str], deadline: float,
           abort: Callable[[], str | None] | None) -> str:
    """Call ``attempt(socket_timeout)`` until it returns a detail string.

    Connection problems (refused, reset, closed at once: user-mode networking
    accepts on the host even before the guest listens) are retried until
    *deadline* (a :func:`time.monotonic` value); wrong answers for at most
    :data:`MISMATCH_GRACE_S`. *abort*, checked before each try, returns a
    reason to give up early (the VM died).
    """
    start = time.monotonic()
    mismatch_since = None
    last, answered = "no attempt made", False
    while True:
        if abort is not None and (why := abort()):
            raise ProbeFailed(why)
        try:
            return attempt(max(0.2, min(5.0, deadline - time.monotonic())))
        except _Mismatch as e:
            now = time.monotonic()
            mismatch_since = mismatch_since or now
            last, answered = str(e), True
            if now - mismatch_since >= MISMATCH_GRACE_S:
                raise ProbeFailed(last) from None
        except (OSError, http.client.HTTPException, _Closed) as e:
            last, answered = _describe(e), False
        if time.monotonic() >= deadline:
            if answered:
                raise ProbeFailed(last)
            raise ProbeFailed(f"no answer within {deadline - start:.0f} s (last error: {last})", last=last)
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def _describe(e: BaseException) -> str:
    if isinstance(e, socket.timeout):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _resp_command(*args: bytes) -> bytes:
    """Encode one Redis command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _resp_reply(f) -> bytes | None:
    """Read one RESP reply: a simple string, error or integer as its whole line
    (``b"+OK"``, ``b"-ERR ..."``), a bulk string as its payload, a null bulk as None."""
    line = f.readline(65536)
    if not line:
        raise _Closed("connection closed without a reply")
    if not line.endswith(b"\r\n"):
        raise _Mismatch(f"malformed reply {line[:80]!r}")
    line = line[:-2]
    if line[:1] == b"$":
        try:
            n = int(line[1:])
        except ValueError:
            raise _Mismatch(f"malformed reply {line[:80]!r}") from None
        if n < 0:
            return None
        data = f.read(n + 2)
        if len(data) < n + 2:
            raise _Closed("connection closed in the middle of a reply")
        return data[:n]
    return line


def probe_redis(port: int, deadline: float, *, host: str = "127.0.0.1",
                abort: Callable[[], str | None] | None = None) -> str:
    """Check a Redis server at *host*:*port*: PING -> +PONG, SET of a random value -> +OK, GET -> that value.

    Returns a short detail; raises :class:`ProbeFailed` (e.g. ``GET returned b'x'``).
    """
    value = secrets.token_hex(8).encode()

    def attempt(timeout: float) -> str:
        with socket.create_connection((host, port), timeout=timeout) as s:
            f = s.makefile("rb")

            def call(*args: bytes):
                s.sendall(_resp_command(*args))
                return _resp_reply(f)

            r = call(b"PING")
            if r != b"+PONG":
                raise _Mismatch(f"PING returned {r!r}")
            r = call(b"SET", b"tailor-probe", value)
            if r != b"+OK":
                raise _Mismatch(f"SET returned {r!r}")
            r = call(b"GET", b"tailor-probe")
            if r != value:
                raise _Mismatch(f"GET returned {r!r}, expected {value!r}")
        return "PING, SET and GET answered correctly"

    return _retry(attempt, deadline, abort)


def probe_http(port: int, deadline: float, *, path: str = "/", status: int = 200, body: str | None = None,
               host: str = "127.0.0.1", abort: Callable[[], str | None] | None = None) -> str:
    """GET *path* from *host*:*port*; the status must be *status* and the body contain *body* if given.

    Returns a short detail; raises :class:`ProbeFailed`.
    """
    def attempt(timeout: float) -> str:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Host": f"{host}:{port}", "User-Agent": "tailor-boot-test",
                                               "Connection": "close"})
            resp = conn.getresponse()
            data = resp.read(1 << 20)
        finally:
            conn.close()
        if resp.status != status:
            raise _Mismatch(f"GET {path} returned status {resp.status}, expected {status}")
        if body is not None and body.encode() not in data:
            raise _Mismatch(f"GET {path} body does not contain {body!r} (starts {data[:60]!r})")
        return f"GET {path} -> {resp.status}, {len(data)} bytes"

    return _retry(attempt, deadline, abort)


def probe_tcp(port: int, deadline: float, *, host: str = "127.0.0.1",
              abort: Callable[[], str | None] | None = None, hold: float = TCP_HOLD_S) -> str:
    """Connect to *host*:*port*; pass when the peer keeps the connection open *hold* seconds or sends data.

    A connection the peer closes at once counts as failed and is retried
    (user-mode networking accepts on the host even when nothing listens in the
    guest, then closes). Returns a short detail; raises :class:`ProbeFailed`.
    """
    def attempt(timeout: float) -> str:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(hold)
            try:
                data = s.recv(1)
            except socket.timeout:
                return f"connected; still open after {hold:g} s"
            if not data:
                raise _Closed("peer closed the connection at once")
            return "connected; peer sent data"

    return _retry(attempt, deadline, abort)


def probe_memcached(port: int, deadline: float, *, host: str = "127.0.0.1",
                    abort: Callable[[], str | None] | None = None) -> str:
    """Check a memcached server over its text protocol: ``set`` a random value, ``get`` it back."""
    value = secrets.token_hex(8).encode()

    def attempt(timeout: float) -> str:
        with socket.create_connection((host, port), timeout=timeout) as s:
            f = s.makefile("rb")
            s.sendall(b"set tailor-probe 0 60 %d\r\n%s\r\n" % (len(value), value))
            line = f.readline(1024)
            if not line:
                raise _Closed("connection closed without a reply")
            if line != b"STORED\r\n":
                raise _Mismatch(f"set returned {line[:80]!r}")
            s.sendall(b"get tailor-probe\r\n")
            header = f.readline(1024)
            if not header.startswith(b"VALUE tailor-probe "):
                raise _Mismatch(f"get returned {header[:120]!r}")
            data, end = f.readline(1024), f.readline(1024)
            if data != value + b"\r\n" or end != b"END\r\n":
                raise _Mismatch(f"get returned {(header + data + end)[:120]!r}")
        return "set and get answered correctly"

    return _retry(attempt, deadline, abort)


def probe_command(run: tuple[str, ...] | list[str], port: int, deadline: float, *, host: str = "127.0.0.1",
                  expect: str | None = None, abort: Callable[[], str | None] | None = None) -> str:
    """Run a host command (``{host}``/``{port}`` replaced by the forwarded address) until it exits 0 and,
    with *expect*, its output matches that regular expression."""
    argv = [a.replace("{host}", host).replace("{port}", str(port)) for a in run]
    if shutil.which(argv[0]) is None:
        raise ProbeFailed(f"{argv[0]} not found on this host; install it (./setup.sh installs the probe clients)")

    def attempt(timeout: float) -> str:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL,
                                  timeout=max(5.0, timeout * 4))
        except subprocess.TimeoutExpired:
            raise _Closed(f"{argv[0]} timed out") from None
        out = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise _Closed(f"{argv[0]} exited {proc.returncode}: {(out.strip().splitlines() or ['no output'])[-1]}")
        if expect is not None and not re.search(expect, proc.stdout, re.M):
            raise _Mismatch(f"{argv[0]} output does not match {expect!r}: {proc.stdout.strip()[:120]!r}")
        return f"{argv[0]} succeeded" + (f", output matched {expect!r}" if expect else "")

    return _retry(attempt, deadline, abort)


# --------------------------------------------------------------------------
# Running qemu


def _pdeathsig_preexec() -> Callable[[], None]:
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


class _Reader(threading.Thread):
    """Reads qemu's stdout (the serial console) and feeds :class:`ConsoleState` under a condition."""

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
                            self.con.feed(_decode(rest), t)
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


@dataclass
class _Attempt:
    """One qemu run: its console, the verdict, the probe detail and qemu's stderr."""

    con: ConsoleState
    cmd: list[str]
    verdict: Verdict | None = None
    probe_detail: str = ""
    stderr: str = ""


def _new_console(recipe: Recipe, on_line: Callable[[str], None] | None = None) -> ConsoleState:
    probe = recipe.test.probe
    return ConsoleState(ready=recipe.test.ready, expect=probe.expect if probe.type == "console" else None,
                        on_line=on_line)


_INTERRUPTED = threading.Event()


class _CtrlC:
    """While a boot runs in the main thread, Ctrl-C (SIGINT) only sets :data:`_INTERRUPTED`;
    :func:`_check_interrupt` turns it into ``KeyboardInterrupt`` at the wait loops' safe points.

    Python raises ``KeyboardInterrupt`` wherever the main thread happens to be, and
    one raised inside a finaliser is printed and lost: the boot then ran on to its
    timeout and the task failed instead of stopping.
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
                _check_interrupt()
        return False


def _check_interrupt() -> None:
    if _INTERRUPTED.is_set():
        _INTERRUPTED.clear()
        raise KeyboardInterrupt


def _boot_once(recipe: Recipe, cmd: list[str], con: ConsoleState, hostport: int | None, timeout: float,
               no_output_s: float) -> _Attempt:
    """Start qemu with *cmd*, feed its console to *con*, probe the app; qemu is dead when this returns."""
    probe = recipe.test.probe
    att = _Attempt(con=con, cmd=cmd)
    cond = threading.Condition()
    preexec = _pdeathsig_preexec()
    with tempfile.TemporaryFile() as errf:
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf,
                                    start_new_session=True, preexec_fn=preexec, close_fds=True)
        except FileNotFoundError:
            att.verdict = Verdict("fail", f"{QEMU} not found; run ./setup.sh")
            return att
        except OSError as e:
            att.verdict = Verdict("fail", f"cannot start {QEMU}: {e.strerror}")
            return att
        reader = _Reader(proc.stdout.fileno(), con, cond, t0)
        try:
            reader.start()
            att.verdict = _watch(proc, reader, con, cond, t0, timeout, no_output_s, probe.type)
            if att.verdict.state == "probe":
                att.verdict, att.probe_detail = _probe(recipe, proc, con, cond, hostport, t0, timeout)
            elif att.verdict.state == "pass":
                att.probe_detail = _console_detail(con, probe.type)
        finally:
            _kill(proc)
            reader.join(5)
            proc.stdout.close()
            errf.seek(0)
            att.stderr = errf.read(8192).decode("utf-8", errors="replace").strip()
    if att.verdict.state == "fail" and att.verdict.reason.startswith("qemu ") and att.stderr:
        first = att.stderr.splitlines()[0]
        att.verdict = Verdict("fail", f"{att.verdict.reason}: {first}")
    return att


def _watch(proc: subprocess.Popen, reader: _Reader, con: ConsoleState, cond: threading.Condition,
           t0: float, timeout: float, no_output_s: float, probe_type: str) -> Verdict:
    """Wait, console line by console line, until :func:`assess` decides."""
    while True:
        _check_interrupt()
        status = proc.poll()
        if status is not None:
            reader.join(5)  # read what qemu wrote before it ended
        with cond:
            now = time.monotonic() - t0
            verdict = assess(con, probe_type, now, timeout, exit_status=status, no_output_s=no_output_s)
            if verdict is not None:
                return verdict
            if status is None and not reader.eof:
                cond.wait(0.1)
        if reader.eof and status is None:
            try:
                proc.wait(0.1)
            except subprocess.TimeoutExpired:
                pass


def _probe(recipe: Recipe, proc: subprocess.Popen, con: ConsoleState, cond: threading.Condition,
           hostport: int, t0: float, timeout: float) -> tuple[Verdict, str]:
    """Run the recipe's network probe against 127.0.0.1:*hostport* until *timeout* s after *t0* (monotonic)."""
    p = recipe.test.probe
    deadline = t0 + timeout

    def abort() -> str | None:
        _check_interrupt()
        with cond:
            if con.panic is not None:
                return _panic_reason(con, True)
        status = proc.poll()
        if status is not None:
            return f"{_exit_text(status)} during the probe"
        return None

    try:
        if p.type == "redis":
            detail = probe_redis(hostport, deadline, abort=abort)
        elif p.type == "http":
            detail = probe_http(hostport, deadline, path=p.path, status=p.status, body=p.body, abort=abort)
        elif p.type == "memcached":
            detail = probe_memcached(hostport, deadline, abort=abort)
        elif p.type == "command":
            detail = probe_command(p.run, hostport, deadline, expect=p.expect, abort=abort)
        else:
            detail = probe_tcp(hostport, deadline, abort=abort)
    except ProbeFailed as e:
        why = str(e)
        if why.startswith(("qemu ", "kernel panic", "init exited")):
            return Verdict("fail", why), why
        if e.last is not None:
            why = (f"no answer from guest port {p.port} within the {round(timeout, 1):g} s test timeout "
                   f"(last error: {e.last})")
        return Verdict("fail", f"{p.type} probe: {why}"), why
    return Verdict("pass"), f"{detail} (guest port {p.port} via 127.0.0.1:{hostport})"


def _console_detail(con: ConsoleState, probe_type: str) -> str:
    if probe_type == "console":
        return f"matched {con.expect!r} at {con.expect_s:.3f} s"
    if con.ready:
        return f"ready pattern matched at {con.ready_s:.3f} s"
    return f"init ran at {con.init_s:.3f} s"


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL qemu's whole process group (it leads its own session) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------
# The boot test


def run(recipe: Recipe, kernel: Path, image: Path, outdir: Path, *, accel: str | None = None,
        qemu_extra: tuple[str, ...] = (), cmdline_extra: str = "",
        on_line: Callable[[str], None] | None = None) -> dict:
    """Boot-test *recipe*'s VM: *kernel* (bzImage) with *image* (``recipe.rootfs.format``).

    Writes ``outdir/console.log`` and ``outdir/result.json`` (both atomically)
    and returns the result dict. On failure, prints the last console lines to
    stderr and raises ``TailorError("boot test of <app> failed: <reason>")``
    after writing both files. *accel* forces ``tcg`` or ``kvm`` (default:
    :func:`detect_accel`). The whole test, including a KVM-to-TCG rerun, is
    bounded by ``recipe.test.timeout`` seconds; qemu is dead when this returns
    or raises. *qemu_extra* (qemu arguments), *cmdline_extra* (kernel
    arguments) and *on_line* (called with each console line) serve tracing.
    """
    kernel, image, outdir = Path(kernel), Path(image), Path(outdir)
    makedirs(outdir)
    test, probe = recipe.test, recipe.test.probe
    chosen = detect_accel(accel)
    network = bool(recipe.app.network)
    forward = probe.type in NETWORK_PROBES and network
    name = f"tailor-{recipe.name}-{recipe.variant or 'specific'}-{os.getpid()}-{secrets.token_hex(4)}"
    start = time.monotonic()
    fallback, fallback_reason = False, ""
    att: _Attempt | None = None
    con = _new_console(recipe, on_line)
    hostport = free_port() if forward else None
    reason = ""

    def command() -> list[str]:
        hostfwd = [(hostport, probe.port)] if forward else None
        return qemu_command(kernel, image, recipe.rootfs.format, test.memory,
                            " ".join(filter(None, (recipe.kernel.cmdline, cmdline_extra))), chosen,
                            hostfwd, network, name=name, extra=qemu_extra)

    def boot() -> _Attempt:
        # One boot under `chosen`; a new port if another process took ours first (free_port races).
        nonlocal con, cmd, hostport
        for _ in range(3):
            con = _new_console(recipe, on_line)
            cmd = command()
            remaining = max(1.0, test.timeout - (time.monotonic() - start))
            result = _boot_once(recipe, cmd, con, hostport, remaining, NO_OUTPUT_S)
            if not (forward and result.verdict.state == "fail" and "host forwarding" in result.stderr):
                break
            hostport = free_port()
        return result

    cmd = command()
    try:
        if probe.type in NETWORK_PROBES and not network:
            reason = f"a {probe.type} probe needs app.network: true"
        elif not kernel.is_file():
            reason = f"kernel {kernel} not found; build the kernel first"
        elif not image.is_file():
            reason = f"root image {image} not found; build the rootfs first"
        elif shutil.which(QEMU) is None:
            reason = f"{QEMU} not found; run ./setup.sh"
        else:
            with _CtrlC():
                att = boot()
                if chosen == "kvm" and att.verdict.state == "fail" and att.con.first_output_s is None:
                    # KVM that hangs silently (nested paravirtual KVM) or that qemu cannot use
                    # (e.g. "failed to set MSR" with -cpu host): rerun under TCG.
                    fallback, fallback_reason, chosen = True, att.verdict.reason, "tcg"
                    att = boot()
            reason = att.verdict.reason if att.verdict.state != "pass" else ""
    finally:  # also on KeyboardInterrupt: keep what the console showed
        write_atomic(outdir / "console.log", con.text())
    passed = att is not None and att.verdict.state == "pass"
    result = {
        "app": recipe.name,
        "variant": recipe.variant or "specific",
        "pass": passed,
        "reason": "" if passed else reason,
        "accel": chosen,
        "fallback_from_kvm": fallback,
        "kvm_failure": fallback_reason,
        "time_to_init_s": _round(con.init_s),
        "time_to_ready_s": _round(con.ready_s),
        "probe": {"type": probe.type, "detail": att.probe_detail if att else ""},
        "console": "console.log",
        "qemu": cmd,
        "qemu_stderr": att.stderr if att else "",
        "memory": test.memory,
        "kernel": str(kernel),
        "image": str(image),
    }
    result = save_boot_result(outdir / "result.json", result)
    if not passed:
        _print_tail(recipe.id, con, outdir)
        raise TailorError(f"boot test of {recipe.id} failed: {reason}")
    return result


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


def boot_dir(app: str) -> Path:
    return out_dir() / "boot" / app


def result_path(app: str) -> Path:
    return boot_dir(app) / "result.json"


def boot_app(recipe: Recipe, accel: str | None = None) -> dict:
    """Boot-test *recipe* with the kernel its kernel stage recorded and its rootfs image."""
    from tailor import kernel as kernel_stage
    from tailor import rootfs

    pointer = read_json(kernel_stage.app_pointer(recipe.id))
    result = run(recipe, Path(pointer["bzImage"]), rootfs.image_path(recipe), boot_dir(recipe.id), accel=accel)
    print(f"[boot:{recipe.id}] PASS ({result['accel']}): init after {result['time_to_init_s']} s, "
          f"ready after {result['time_to_ready_s']} s; {result['probe']['detail'] or recipe.test.probe.type}",
          file=sys.stderr)
    return result


def tasks(recipes, action):
    """doit tasks ``boot:<app>``: rerun when the kernel, the image or the recipe's test section change."""
    from doit.tools import config_changed

    from tailor import kernel as kernel_stage
    from tailor import rootfs

    for r in with_variants(recipes):
        yield {
            "basename": "boot", "name": r.id,
            "doc": f"boot {r.id} under qemu microvm and probe it ({r.test.probe.type})",
            "actions": [action(boot_app, r)],
            "file_dep": [str(kernel_stage.app_pointer(r.id)), str(rootfs.image_path(r))],
            # an image recipe fetches its image first: an unreachable registry fails before any compile
            "task_dep": [f"rootfs:{r.name}"] if r.rootfs.image else [],
            "targets": [str(result_path(r.id))],
            "clean": [(remove, [boot_dir(r.id)])],
            "uptodate": [config_changed({"test": r.digests["test"], "app": r.digests["app"],
                                         "cmdline": r.kernel.cmdline})],
            "verbosity": 2,
        }
