"""Run what was built: ``python -m tailor run <app>``, and ``ps``, ``stop``, ``logs`` for VMs run detached.

After ``doit build:<app>`` the app's kernel and root image exist; :func:`start`
boots them for use, with the same machine the boot test uses
(:func:`tailor.qemu.qemu_command`: ``-M microvm``, KVM when it really works,
TCG otherwise) and:

* ``-p [ADDR:]HOST:GUEST`` TCP forwards (repeatable; ADDR defaults to
  127.0.0.1), checked free before qemu starts;
* ``-m MiB`` (default: the recipe's ``test.memory``), ``--kernel general`` for
  the shared general kernel, ``--name`` (default: the app's name);
* an ext2 root is never written in place: each run gets its own
  copy-on-write layer (a qcow2 file backed by the built image, made with
  ``qemu-img``) in ``out/run/<name>/``, removed when the VM stops unless
  ``--keep PATH`` names where to keep it; the built image, and a release made
  from it, stay as built. A cpio root is read-only anyway.

In the foreground the console is printed on the terminal (and kept in
``out/run/<name>/console.log`` while it runs); Ctrl-C asks qemu to quit over
its QMP socket and kills it if it does not, so no qemu is left. With
``--detach`` qemu daemonizes with its console in ``console.log``, a QMP socket
``qmp.sock`` and the state file ``run.json`` (:data:`FORMAT`) in
``out/run/<name>/``; :func:`start` returns once the console shows the recipe's
ready pattern (or the init, without one). :func:`list_vms` (``ps``) reads the
state files, :func:`stop` sends QMP ``quit``, then ``SIGTERM``, then
``SIGKILL``, and removes the socket, the layer and the state; :func:`logs`
gives the console.

Errors are one line (:class:`~tailor.errors.TailorError`) and leave nothing
behind: a kernel or image not built names the ``doit`` command, a port in use
names the port, a taken name says so, and a VM that dies at start is stopped
and its directory removed after its last console lines are printed.

Over 400 lines because a VM's whole life (the plan, the layer, qemu in the foreground or detached,
its state file, ps, stop and logs) shares one state record and one clean-up path: split, each half
would have to know how the other leaves ``out/run/<name>/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tailor import paths, records
from tailor.console import ConsoleState, panic_reason, split_lines
from tailor.errors import QemuError, TailorError
from tailor.kinds import Arch
from tailor.qemu import QEMU, VM, CtrlC, check_interrupt, detect_accel, kernel_file, qemu_command
from tailor.records.stages import RunState
from tailor.util import display_path, out_dir, remove

FORMAT = RunState.FORMAT
QEMU_IMG = "qemu-img"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
QUIT_WAIT_S = 5.0
"""How long :func:`stop` (and Ctrl-C in the foreground) waits for qemu to quit before it signals it."""


# --------------------------------------------------------------------------
# What to run


@dataclass(frozen=True)
class Forward:
    """One TCP port forward: the host's *addr*:*host* to the guest's port *guest*."""

    addr: str
    host: int
    guest: int

    def __str__(self) -> str:
        return f"{self.addr}:{self.host}->{self.guest}"


def parse_forward(spec: str) -> Forward:
    """``HOST:GUEST`` or ``ADDR:HOST:GUEST`` (an IPv4 address) -> :class:`Forward`; one-line errors."""
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise TailorError(f"-p {spec}: expected HOST:GUEST or ADDR:HOST:GUEST (e.g. -p 6379:6379)")
    addr = parts[0] if len(parts) == 3 else "127.0.0.1"
    try:
        socket.inet_aton(addr)
        if addr.count(".") != 3:
            raise OSError
    except OSError:
        raise TailorError(f"-p {spec}: {addr!r} is not an IPv4 address") from None
    ports = []
    for p in parts[-2:]:
        if not p.isdigit() or not 1 <= int(p) <= 65535:
            raise TailorError(f"-p {spec}: {p!r} is not a TCP port (1-65535)")
        ports.append(int(p))
    return Forward(addr, ports[0], ports[1])


def port_free(fwd: Forward) -> bool:
    """True when *fwd*'s host address and port can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((fwd.addr, fwd.host))
        except OSError:
            return False
    return True


def run_root() -> Path:
    """``out/run/``: one directory per VM started by :func:`start`."""
    return out_dir() / "run"


def vm_dir(name: str) -> Path:
    return run_root() / name


@dataclass
class Plan:
    """One VM to start: what it boots and where its files go (``run.json`` is this, plus the pid)."""

    name: str
    app: str
    variant: str
    kernel: str
    image: str
    root: str
    memory: int
    forwards: list[Forward]
    cmdline: str
    ready: str
    timeout: int
    network: bool
    layer: str = ""
    keep: bool = False
    accel: str = ""
    pid: int = 0
    started: float = 0.0
    detached: bool = False
    snapshot: bool = False
    """restored from ``out/snapshot/<app>/`` (:mod:`tailor.snapshot`) instead of booted"""
    reseed_port: int = 0
    """the host port forwarded to the guest's reseed helper, when restored"""
    reseed: bool = True
    """reseed a restored guest's random pool (off only to show what happens without)"""
    format: str = FORMAT
    qemu: list[str] = field(default_factory=list)

    @property
    def dir(self) -> Path:
        return vm_dir(self.name)

    def record(self) -> dict:
        d = asdict(self)
        d["forwards"] = [asdict(f) for f in self.forwards]
        return d

    def save(self) -> None:
        """Write ``run.json`` (:class:`tailor.records.stages.RunState`)."""
        path = self.dir / "run.json"
        RunState.from_dict(self.record(), display_path(path)).save(path)


def plan(recipe, *, name: str | None = None, memory: int | None = None, forwards: list[Forward] = (),
         general: bool = False, keep: str | None = None, from_snapshot: bool = False) -> Plan:
    """Check that *recipe*'s VM can start as asked (built, name free, ports free, the snapshot fits) and
    say how."""
    from tailor.recipe import general_variant

    r = general_variant(recipe) if general else recipe
    name = name or recipe.name
    if recipe.arch is not Arch.X86_64:  # the plan, its run.json and snapshots know x86_64's microvm only
        raise TailorError(f"{recipe.name}: tailor run does not run {recipe.arch} VMs yet; `doit build:{recipe.name}` "
                          f"boots and tests it")
    if not NAME_RE.match(name):
        raise TailorError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (at most 63)")
    if not paths.kernel_pointer(r.id).is_file():
        raise TailorError(f"{r.id}: its kernel is not built; run `doit build:{r.id}` first")
    kernel, _ = kernel_file(records.app_kernel(r.id))
    image = paths.rootfs_image(recipe.name, recipe.rootfs.format)
    if not image.is_file() or not kernel.is_file():
        missing = image if not image.is_file() else kernel
        raise TailorError(f"{display_path(missing)} is missing; run `doit build:{r.id}` first")
    if forwards and not recipe.app.network:
        raise TailorError(f"{recipe.name}: app.network is false, so the VM has no network to forward ports to")
    seen = set()
    for f in forwards:
        if (f.addr, f.host) in seen:
            raise TailorError(f"-p {f}: host port {f.addr}:{f.host} is given twice")
        seen.add((f.addr, f.host))
        if not port_free(f):
            raise TailorError(f"-p {f}: host port {f.addr}:{f.host} is in use; choose another")
    state = vm_dir(name) / "run.json"
    if state.is_file():
        old = _load(state)
        if alive(old):
            raise TailorError(f"a VM named {name} is running (pid {old['pid']}); stop it "
                              f"(python -m tailor stop {name}) or choose another --name")
        _cleanup(old)
    layer = ""
    if recipe.rootfs.format.is_disk:
        layer = str(Path(keep).resolve()) if keep else str(vm_dir(name) / "root.qcow2")
        if keep and Path(keep).exists():
            raise TailorError(f"--keep {keep}: the file exists; name a new file for this run's disk layer")
    p = Plan(name=name, app=recipe.name, variant=r.variant or "specific", kernel=str(kernel), image=str(image),
             root=recipe.rootfs.format, memory=memory or recipe.test.memory, forwards=list(forwards),
             cmdline=recipe.kernel.cmdline, ready=recipe.test.ready, timeout=recipe.test.timeout,
             network=bool(recipe.app.network), layer=layer, keep=bool(keep))
    if from_snapshot:
        from tailor import snapshot

        rec = snapshot.check(recipe, p)
        p.snapshot, p.cmdline = True, rec.cmdline
        p.reseed_port = _free_port()
        p.forwards.append(Forward("127.0.0.1", p.reseed_port, rec.reseed_port))
        p.accel = rec.accel
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_layer(image: Path, layer: Path) -> None:
    """A qcow2 file at *layer* that reads *image* and keeps every write to itself."""
    if shutil.which(QEMU_IMG) is None:
        raise TailorError(f"{QEMU_IMG} not found; run ./setup.sh (it installs qemu-utils)")
    layer.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(Path(image).resolve()),
                           str(layer)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise TailorError(f"{QEMU_IMG} create {layer}: {(proc.stderr.strip().splitlines() or ['failed'])[-1]}")


def command(p: Plan, *, detach: bool) -> list[str]:
    """The qemu argv for *p*: the boot test's machine plus a QMP socket, the layer as the root disk and,
    detached, the console in a file and qemu daemonized with a pid file."""
    d = p.dir
    root, disk = (p.layer, "qcow2") if p.layer else (p.image, "raw")
    serial = f"file:{d / 'console.log'}" if detach else "stdio"
    extra = ["-qmp", f"unix:{d / 'qmp.sock'},server=on,wait=off"]
    if detach:
        extra += ["-daemonize", "-pidfile", str(d / "qemu.pid")]
    return qemu_command(p.kernel, root, p.root, p.memory, p.cmdline, p.accel,
                        [(f.addr, f.host, f.guest) for f in p.forwards] or None, p.network,
                        name=f"tailor-run-{p.name}", extra=tuple(extra), serial=serial, disk_format=disk)


# --------------------------------------------------------------------------
# Starting


def start(p: Plan, *, detach: bool, accel: str | None = None, out=sys.stderr) -> int:
    """Start the VM of *p*: in the foreground until it ends or Ctrl-C (returns 0, or 130 when interrupted),
    or detached until it is ready (returns 0). Raises a one-line TailorError when it cannot start."""
    p.accel = p.accel if p.snapshot else detect_accel(accel)
    p.detached = detach
    remove(p.dir)
    p.dir.mkdir(parents=True)
    try:
        recipe = None
        if p.snapshot:
            from tailor import snapshot
            from tailor.recipe import find

            recipe = find(p.app)
            if p.layer:
                snapshot.copy_disk(recipe, Path(p.layer))
            p.qemu = command(p, detach=detach) + snapshot.restore_args(recipe)
            if snapshot.machine_args(p.qemu) != snapshot.check(recipe, p).machine:
                raise TailorError(f"the snapshot of {p.app} was taken with other machine arguments; take it again "
                                  f"(doit snapshot:{p.app})")
        else:
            if p.layer:
                make_layer(Path(p.image), Path(p.layer))
            p.qemu = command(p, detach=detach)
        ports = ", ".join(str(f) for f in p.forwards if f.host != p.reseed_port) or "no ports forwarded"
        if detach:
            t0 = time.monotonic()
            _start_detached(p)
            how = f"restored from its snapshot and reseeded in {time.monotonic() - t0:.2f} s, " if p.snapshot else ""
            print(f"tailor: {p.name} ({p.app}) running detached, {how}pid {p.pid}, {ports}, {p.memory} MiB; "
                  f"python -m tailor logs {p.name} / stop {p.name}", file=out)
            return 0
        print(f"tailor: starting {p.name} ({p.app}, {p.accel}), {ports}, {p.memory} MiB; Ctrl-C stops it", file=out)
        return _foreground(p, out)
    except BaseException:
        if not (detach and p.pid and alive(p.record())):
            _cleanup(p.record())
        raise


def _foreground(p: Plan, out) -> int:
    log = open(p.dir / "console.log", "w", encoding="utf-8", errors="replace")

    def echo(line: str) -> None:
        log.write(line + "\n")
        log.flush()
        print(line, file=out, flush=True)

    interrupted = False
    try:
        with CtrlC():
            try:
                with VM(p.qemu, ConsoleState(ready=p.ready, on_line=echo)) as vm:
                    p.pid, p.started = vm.proc.pid, time.time()
                    p.save()
                    if p.snapshot:
                        _restored(p)
                        print(f"tailor: {p.name} restored from its snapshot and reseeded in "
                              f"{time.monotonic() - vm.t0:.2f} s", file=out, flush=True)
                    try:
                        while vm.proc.poll() is None:
                            check_interrupt()
                            time.sleep(0.1)
                    except KeyboardInterrupt:
                        interrupted = True
                        quit_vm(p.dir / "qmp.sock", vm.proc.pid)
                    con = vm.console
            except QemuError as e:
                raise TailorError(f"{p.name}: {e}") from None
    finally:
        log.close()
        _cleanup(p.record())
    if interrupted:
        print(f"tailor: {p.name} stopped", file=out)
        return 130
    why = panic_reason(con, con.ready_index is not None) if con.panic else "qemu ended"
    print(f"tailor: {p.name} ended: {why}", file=out)
    return 0


def _start_detached(p: Plan) -> None:
    try:
        proc = subprocess.run(p.qemu, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise TailorError(f"{QEMU} not found; run ./setup.sh") from None
    except subprocess.TimeoutExpired:
        raise TailorError(f"{p.name}: qemu did not daemonize within 60 s") from None
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[0]
        raise TailorError(f"{p.name}: qemu could not start: {first}")
    try:
        p.pid = int((p.dir / "qemu.pid").read_text().strip())
    except (OSError, ValueError):
        raise TailorError(f"{p.name}: qemu wrote no pid file") from None
    p.started = time.time()
    p.save()
    if p.snapshot:
        _restored(p)
        return
    con = ConsoleState(ready=p.ready)
    deadline, done, rest = time.monotonic() + p.timeout, 0, b""
    while True:
        data = _read_from(p.dir / "console.log", done)
        done += len(data)
        lines, rest = split_lines(rest + data)
        for line in lines:
            con.feed(line, time.monotonic())
        if con.panic is not None or not alive(p.record()):
            why = panic_reason(con, con.ready_index is not None) if con.panic else "qemu ended"
            _tail(con)
            raise TailorError(f"{p.name} died at start: {why}")
        if con.ready_s is not None:
            return
        if time.monotonic() > deadline:
            _tail(con)
            raise TailorError(f"{p.name}: not ready within {p.timeout} s (test.timeout); stopped it")
        time.sleep(0.1)


def _restored(p: Plan) -> None:
    """Wait until the restored VM runs, then reseed its random pool from the host."""
    from tailor import snapshot

    snapshot.wait_running(p.dir / "qmp.sock")
    if p.reseed:
        snapshot.reseed(p.reseed_port)


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return b""


def _tail(con: ConsoleState, n: int = 10) -> None:
    for _, line in con.lines[-n:]:
        print(f"  {line}", file=sys.stderr)


# --------------------------------------------------------------------------
# Running VMs


def _load(path: Path) -> dict:
    """The state a ``run.json`` holds, read strictly (:class:`tailor.records.stages.RunState`)."""
    return RunState.load(path).dump()


def alive(record: dict) -> bool:
    """True when *record*'s qemu is still running (its pid runs qemu with this VM's name)."""
    pid = record.get("pid") or 0
    if pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"tailor-run-{record.get('name')}".encode() in cmdline


def list_vms() -> list[dict]:
    """The VMs under ``out/run/``: each ``run.json`` with ``running`` (True/False)."""
    out = []
    root = run_root()
    for state in sorted(root.glob("*/run.json")) if root.is_dir() else ():
        rec = _load(state)
        rec["running"] = alive(rec)
        out.append(rec)
    return out


def ps_table(vms: list[dict], now: float | None = None) -> str:
    """``ps``'s table: name, app, pid, ports, memory, uptime (or ``exited``)."""
    now = time.time() if now is None else now
    rows = [("NAME", "APP", "PID", "PORTS", "MEMORY", "UPTIME")]
    for v in vms:
        ports = ",".join(f"{f['addr']}:{f['host']}->{f['guest']}" for f in v["forwards"]) or "-"
        up = _duration(now - v["started"]) if v["running"] else "exited"
        app = v["app"] + ("@general" if v.get("variant") == "general" else "")
        rows.append((v["name"], app, str(v["pid"]), ports, f"{v['memory']} MiB", up))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _duration(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _record(name: str) -> dict:
    state = vm_dir(name) / "run.json"
    if not state.is_file():
        raise TailorError(f"no VM named {name!r} (python -m tailor ps lists them)")
    return _load(state)


def stop(name: str) -> bool:
    """Stop the VM *name*: QMP quit, then SIGTERM, then SIGKILL; remove its socket, layer and state.
    Returns whether it was still running."""
    rec = _record(name)
    running = alive(rec)
    if running:
        quit_vm(vm_dir(name) / "qmp.sock", rec["pid"], check=lambda: alive(rec))
    _cleanup(rec)
    return running


def logs(name: str) -> str:
    """The console of the VM *name* so far."""
    _record(name)
    try:
        return (vm_dir(name) / "console.log").read_text(errors="replace")
    except OSError:
        return ""


def quit_vm(sock: Path, pid: int, check=None) -> None:
    """QMP ``quit``; then SIGTERM and SIGKILL to *pid* while it still runs (*check*: is it still ours)."""
    check = check or (lambda: _pid_runs(pid))
    try:
        qmp(sock, "quit")
    except OSError:
        pass
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                return
        deadline = time.monotonic() + QUIT_WAIT_S
        while time.monotonic() < deadline:
            if not check():
                return
            time.sleep(0.05)


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours has ended
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _cleanup(rec: dict) -> None:
    """Remove what a VM left: its layer (unless kept), socket, pid file, console and state."""
    name = rec.get("name")
    if rec.get("layer") and not rec.get("keep"):
        remove(Path(rec["layer"]))
    if name:
        remove(vm_dir(name))


def qmp(sock: Path, cmd: str, arguments: dict | None = None, timeout: float = 5.0) -> dict:
    """Send one QMP command (with *arguments*) to the socket *sock* and return its answer (events are
    skipped); an ``error`` answer is raised as a TailorError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        f = s.makefile("rwb")

        def answer() -> dict:
            while True:
                line = f.readline()
                if not line:
                    raise ConnectionError("QMP closed")
                msg = json.loads(line)
                if "event" not in msg:
                    return msg

        answer()  # the greeting
        for c, args in (("qmp_capabilities", None), (cmd, arguments)):
            f.write(json.dumps({"execute": c, **({"arguments": args} if args else {})}).encode() + b"\n")
            f.flush()
            try:
                reply = answer()
            except ConnectionError:
                if c == "quit":
                    return {"return": {}}
                raise
            if "error" in reply:
                raise TailorError(f"QMP {c}: {reply['error'].get('desc', reply['error'])}")
        return reply
