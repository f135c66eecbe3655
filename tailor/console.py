"""The boot test's console verdict: pure code, no I/O and no clock.

:func:`split_lines` cuts the serial console's bytes into lines;
:class:`ConsoleState` records, line by line with the host time each arrived,
when the kernel ran init, when the recipe's ready (and a console probe's
expect) pattern showed and whether the kernel panicked; :func:`assess` turns
that, the time and qemu's exit status into a :class:`Verdict` (pass, fail
with its reason and cause, or run the network probe).
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field
from typing import Callable

from tailor.errors import BootFailure, BootTimeout, KernelPanicked, NoConsoleOutput, QemuExited

NO_OUTPUT_S = 10.0
"""Seconds without a single console byte after which the guest is taken to be hung."""

INIT_RE = re.compile(r"Run (\S+) as init process")
PANIC_RE = re.compile(r"Kernel panic - not syncing:?\s*(.*)")
CRNG_RE = re.compile(r"random: crng init done")
"""The kernel's notice that its random pool is seeded (getrandom() stops blocking)."""
EXEC_RE = re.compile(r"tailor-init: exec ")
"""The generated init's last line before it execs the app (templates/init.sh.j2)."""


def split_lines(buf: bytes) -> tuple[list[str], bytes]:
    """Split *buf* into complete console lines and the unfinished rest.

    Lines end with ``\\n``; a ``\\r`` before it (the serial console sends
    ``\\r\\n``) and any other ``\\r`` are dropped; bytes that are not UTF-8
    become U+FFFD. Returns ``(lines, rest)`` where *rest* holds the bytes
    after the last newline.
    """
    *complete, rest = buf.split(b"\n")
    return [decode(b) for b in complete], rest


def decode(raw: bytes) -> str:
    """One console line's bytes as text: ``\\r`` dropped, bytes that are not UTF-8 as U+FFFD."""
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
    panic_index: int | None = None
    crng_s: float | None = None
    crng_index: int | None = None
    exec_s: float | None = None
    exec_index: int | None = None
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
        if self.crng_s is None and CRNG_RE.search(line):
            self.crng_s, self.crng_index = t, index
        if self.exec_s is None and EXEC_RE.search(line):
            self.exec_s, self.exec_index = t, index
        if self.panic is None and (m := PANIC_RE.search(line)):
            self.panic, self.panic_index = m.group(1).strip() or "no message", index

    def before_panic(self, index: int | None) -> bool:
        """True when the event at line *index* happened, and before any panic."""
        return index is not None and (self.panic_index is None or index < self.panic_index)

    def entropy_before_app(self) -> bool | None:
        """Whether the random pool was seeded before the init exec'd the app.

        True when ``random: crng init done`` came before ``tailor-init: exec``;
        False when the app was exec'd first (it may block in getrandom() until
        the pool is seeded) or the notice never came; None when the init never
        reached its exec (the console cannot tell).
        """
        if self.exec_index is None:
            return None
        return self.crng_index is not None and self.crng_index < self.exec_index

    def text(self) -> str:
        """The console as console.log holds it: each line after its host time in seconds."""
        return "".join(f"[{t:8.3f}] {line}\n" for t, line in self.lines)


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`assess`: ``state`` is ``pass``, ``fail`` or ``probe`` (run the network probe).

    A failure has its ``reason`` and its ``cause``, the :class:`~tailor.errors.BootFailure`
    subclass that says what kind of failure it is (not part of equality).
    """

    state: str
    reason: str = ""
    cause: type[BootFailure] | None = field(default=None, compare=False)

    @property
    def no_output(self) -> bool:
        """True when the guest printed nothing in time (the sign of a silently hanging KVM)."""
        return self.cause is NoConsoleOutput


def fail(cause: type[BootFailure], reason: str) -> Verdict:
    """A failed verdict of kind *cause*."""
    return Verdict("fail", reason, cause)


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
            return fail(KernelPanicked, f"console probe: pattern {con.expect!r} not seen before a kernel panic "
                                        f"({con.panic})")
        return fail(KernelPanicked, panic_reason(con, ready))
    if exit_status is not None:
        when = "before the console probe matched" if ready else "before ready"
        return fail(QemuExited, f"{exit_text(exit_status)} {when}")
    if con.first_output_s is None and now >= no_output_s:
        return fail(NoConsoleOutput, f"no console output within {no_output_s:g} s")
    if now >= timeout:
        if ready:
            return fail(BootTimeout, f"console probe: pattern {con.expect!r} not seen within {round(timeout, 1):g} s")
        if con.init_s is None:
            return fail(BootTimeout, f"kernel did not reach init within {round(timeout, 1):g} s")
        return fail(BootTimeout, f"ready pattern {con.ready!r} not seen within {round(timeout, 1):g} s")
    return None


def exit_text(status: int) -> str:
    """``qemu exited with status N``, or ``qemu was killed by SIGX`` for a negative Popen status."""
    if status < 0:
        try:
            return f"qemu was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"qemu was killed by signal {-status}"
    return f"qemu exited with status {status}"


def panic_reason(con: ConsoleState, ready: bool) -> str:
    """Why a kernel panic fails the test: init exited (before or after ready), or a panic and when."""
    if "Attempted to kill init" in con.panic:
        what = "init exited after ready" if ready else "init exited before ready"
        return f"{what} (kernel panic: {con.panic})"
    if ready:
        return f"kernel panic after ready: {con.panic}"
    if con.init_s is None:
        return f"kernel panic before init: {con.panic}"
    return f"kernel panic before ready: {con.panic}"


def pass_detail(con: ConsoleState, probe_type: str) -> str:
    """The result's probe detail for a test the console alone passed (``none`` and ``console`` probes)."""
    if probe_type == "console":
        return f"matched {con.expect!r} at {con.expect_s:.3f} s"
    if con.ready:
        return f"ready pattern matched at {con.ready_s:.3f} s"
    return f"init ran at {con.init_s:.3f} s"
