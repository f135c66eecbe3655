"""Trace which kernel code a guest runs, under TCG, with qemu's stock ``translate_block`` event.

Debian's qemu 7.2 has no TCG plugins, but ``-d trace:translate_block -D FILE``
writes one ``translate_block ... pc:0x...`` line each time TCG translates a
block of guest code. :func:`run` boots a recipe on the probe kernel through
:func:`tailor.boot.run` (its qemu argv, probes and process supervision) with
that trace written into a FIFO, and :class:`TraceFilter` keeps only what
matters as the stream is written: each kernel pc once, with the phase in
which it was first seen. ``boot`` lasts until the console shows ``Run /init
as init process``; ``setup`` is the generated init's own work (mounts, the
network) until it starts the recipe's first setup step or service, or prints
``tailor-init: exec``; everything after is ``app``: the recipe's setup steps
and services (mariadb-install-db, postgres's initdb: the app's own work, run
before it), the app, the probe and the exercise (:func:`phase_after`).
The pcs keep the order in which they were first seen, so the function run
just before a function was first entered is known (:func:`entries`). A guest that panics and runs garbage makes the stream grow by
megabytes a second: the filter only counts those bytes, and stops recording
new pcs after :data:`MAX_PCS`.

A block is translated once, so code first run at boot does not show again in
the app phase: the app phase is what user space ran *new*.
"""

from __future__ import annotations

import os
import re
import select
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tailor import boot
from tailor.console import EXEC_RE
from tailor.errors import TailorError
from tailor.kinds import RootFormat
from tailor.kmap import KERNEL_TEXT_START

PHASES = ("boot", "setup", "app")
"""The phases of a traced boot, in order."""
USER_PHASES = ("setup", "app")
"""The phases after the kernel started the init."""

MAX_PCS = 2_000_000
"""Unique kernel pcs recorded at most (a real boot has tens of thousands)."""

_PC = re.compile(rb"pc:0x([0-9a-fA-F]+)")
INIT_MARK = "Run /init as init process"
RECIPE_WORK_RE = re.compile(r"tailor-init: (setup |starting service )")
"""The generated init's line before each of the recipe's setup steps and services (templates/init.sh.j2)."""


def phase_after(line: str) -> str | None:
    """The phase a console *line* starts (``setup`` at the init's start, ``app`` at the recipe's first
    setup step or service, or at the app's exec), or None."""
    if INIT_MARK in line:
        return "setup"
    if RECIPE_WORK_RE.search(line) or EXEC_RE.search(line):
        return "app"
    return None


TRACE_CMDLINE = "nokaslr tailor.trace"
"""Kernel arguments of every traced boot: System.map's addresses are the running kernel's, and the generated
init pauses for 0.3 s after printing ``tailor-init: exec`` (templates/init.sh.j2), so that the console line
reaches the host and the trace is marked ``app`` before the app runs (qemu flushes each trace line as it is
written; the console line is what lags)."""


def trace_cmdline(fmt: str) -> str:
    """The kernel arguments of a traced boot of a *fmt* (``cpio`` or ``ext2``) root: the probe kernel has
    TMPFS, so an initramfs is unpacked into ramfs as on lupine-base (:attr:`~tailor.kinds.RootFormat.ramfs_cmdline`)."""
    return f"{TRACE_CMDLINE} {RootFormat(fmt).ramfs_cmdline}".strip()


@dataclass
class TraceFilter:
    """Keeps each kernel pc of a translate_block stream once, with the phase it was first seen in.

    Feed it bytes with :meth:`feed` (any chunking) and call :meth:`enter` when the guest reaches
    the next phase; ``pcs`` maps each pc to one of :data:`PHASES`, in the order first seen.
    """

    lo: int = KERNEL_TEXT_START
    cap: int = MAX_PCS
    pcs: dict[int, str] = field(default_factory=dict)
    phase: str = "boot"
    bytes_read: int = 0
    lines: int = 0
    truncated: bool = False
    _rest: bytes = b""

    def enter(self, phase: str) -> None:
        """Count what is seen from now on in *phase* (never back to an earlier phase)."""
        if PHASES.index(phase) > PHASES.index(self.phase):
            self.phase = phase

    def feed(self, chunk: bytes) -> None:
        self.bytes_read += len(chunk)
        self.lines += chunk.count(b"\n")
        data = self._rest + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._rest = data[-4096:]
            return
        self._rest = data[cut + 1:][-4096:]
        self._scan(data[:cut])

    def _scan(self, block: bytes) -> None:
        pcs, phase = self.pcs, self.phase
        for m in _PC.finditer(block):
            pc = int(m.group(1), 16)
            if pc < self.lo or pc in pcs:
                continue
            if len(pcs) >= self.cap:
                self.truncated = True
                continue
            pcs[pc] = phase

    def finish(self) -> None:
        if self._rest:
            rest, self._rest = self._rest, b""
            self.lines += 1
            self._scan(rest)

    def count(self, phase: str) -> int:
        return sum(1 for p in self.pcs.values() if p == phase)


class FifoReader(threading.Thread):
    """Reads a FIFO into a :class:`TraceFilter` until :meth:`stop`, then drains what is left.

    The FIFO is opened read-write, so opening never blocks and qemu's ``fopen`` of it returns at once.
    """

    def __init__(self, path: Path, filt: TraceFilter):
        super().__init__(name="tailor-trace", daemon=True)
        self.path, self.filt = path, filt
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self._halt = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        try:
            while True:
                ready, _, _ = select.select([self.fd], [], [], 0.1)
                if ready:
                    self._read_available()
                elif self._halt.is_set():
                    break
        finally:
            os.close(self.fd)

    def _read_available(self) -> None:
        with self.lock:
            self._drain()

    def _drain(self) -> None:
        """Feed everything the FIFO holds now (the caller holds the lock)."""
        while True:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except (BlockingIOError, OSError):
                return
            if not chunk:
                return
            self.filt.feed(chunk)

    def enter(self, phase: str) -> None:
        """Mark the start of *phase*: what the FIFO already holds was written before, so it is the last phase's."""
        with self.lock:
            self._drain()
            self.filt.enter(phase)

    def stop(self) -> None:
        self._halt.set()
        self.join(30)
        with self.lock:
            self.filt.finish()


@dataclass
class Trace:
    """What a traced boot recorded: kernel pcs by phase (in the order first seen), stream size, and the
    boot test's result."""

    pcs: dict[int, str]
    bytes_read: int
    lines: int
    truncated: bool
    seconds: float
    result: dict | None
    error: str = ""


def run(recipe, kernel: Path, image: Path, outdir: Path) -> Trace:
    """Boot *recipe* on *kernel* with *image*, run its boot test (probe included) and trace it.

    ``nokaslr`` keeps the kernel at its System.map addresses. qemu is dead when this returns
    (``boot.run`` sees to that); a failed boot test is returned in ``error``, not raised.
    """
    outdir = Path(outdir)
    filt = TraceFilter()
    with tempfile.TemporaryDirectory(prefix="tailor-trace-") as tmp:
        fifo = Path(tmp) / "trace.fifo"
        os.mkfifo(fifo, 0o600)
        reader = FifoReader(fifo, filt)
        reader.start()

        def on_line(line: str) -> None:
            phase = phase_after(line)
            if phase:
                reader.enter(phase)

        start = time.monotonic()
        result, error = None, ""
        try:
            result = boot.run(recipe, kernel, image, outdir, accel="tcg",
                              qemu_extra=("-d", "trace:translate_block", "-D", str(fifo)),
                              cmdline_extra=trace_cmdline(recipe.rootfs.format), on_line=on_line)
        except TailorError as e:
            error = str(e)
        finally:
            reader.stop()
        seconds = time.monotonic() - start
    return Trace(pcs=dict(filt.pcs), bytes_read=filt.bytes_read, lines=filt.lines, truncated=filt.truncated,
                 seconds=seconds, result=result, error=error)


def entries(pcs: dict[int, str], function) -> dict[str, tuple[str | None, str]]:
    """``{function: (function run just before it was first entered, phase)}`` over *pcs* in the order
    first seen; *function* maps a pc to its function (None outside the text).

    TCG translates a block when it first runs, so the block translated just before a function's first
    block is usually its caller's (or, after a return, a sibling callee's): an approximation of where
    the function was first called from, good enough to tell code entered from another subsystem's
    paths from code of the option's own.
    """
    out: dict[str, tuple[str | None, str]] = {}
    prev = None
    for pc, phase in pcs.items():
        fn = function(pc)
        if fn is None:
            continue
        if fn not in out:
            out[fn] = (prev, phase)
        prev = fn
    return out
