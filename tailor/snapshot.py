"""Snapshots: boot an app once, save the VM when it is ready, and start from that point instead of booting.

:func:`take` (``doit snapshot:<app>``) boots the app's built VM as ``tailor
run`` does (its own copy-on-write layer over the built image), waits for the
recipe's ready pattern and probe (not its exercise: the saved app should be
fresh), optionally lets it run *settle_s* seconds more and probes it again,
pauses it over QMP (``stop``) and saves its state with ``migrate`` to
``exec:cat > state``. ``out/snapshot/<app>/`` then holds ``state`` (the
migration stream; zero pages are not written), ``disk.qcow2`` (the layer the
VM wrote, backed by the built image) and ``snapshot.json`` (:data:`FORMAT`):
the kernel identity, the root image's sha256, the qemu version and the
normalised machine arguments (:func:`machine_args`), the memory size and
accelerator, the checksums of both files, and the times to ready and to save.
It is written to a ``.partial`` directory and renamed into place.

:func:`check` is what ``tailor run <app> --from-snapshot`` asks first: a
snapshot is tied to the qemu that made it (microvm does not migrate across
qemu versions), to the kernel, the root image, the memory size and the machine
arguments; anything else, or a file whose checksum differs, is refused in one
line that says to take it again.

**Fresh randomness.** A restored VM would repeat the snapshot's random state:
after a restore Linux 6.1 reseeds its crng only on its own schedule (every
minute once the first minutes of uptime are over). The snapshot's boot passes
``tailor_reseed=PORT`` on the kernel command line (Linux passes it to init as an
environment variable, so a kernel without ``PROC_FS`` works too), so the generated init starts
a small helper (``/.tailor/reseed``, a freestanding program compiled into every
network app's image) that takes bytes on that guest port, adds them with
``RNDADDENTROPY`` and forces a reseed with ``RNDRESEEDCRNG``. After every
restore :func:`reseed` sends it 64 fresh bytes from the host's ``os.urandom``
through a forward of its own, before the run is reported ready. (Linux reseeds
lazily, at the first read after the interval: a snapshot saved while a reseed
is due would reseed, differently, at each restore's first read. The probe after
the settle time reads the app's randomness, so a due reseed happens before the
save.)
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from tailor import boot, paths, records
from tailor.errors import TailorError
from tailor.qemu import QEMU, VM, CtrlC, free_port
from tailor.records.stages import SnapshotRecord
from tailor.util import display_path, remove, sha256_file

FORMAT = SnapshotRecord.FORMAT
RESEED_PORT = 61999
"""The guest TCP port of the reseed helper (``tailor_reseed=`` on the snapshot's kernel command line)."""
RESEED_BYTES = 64
MIGRATE_TIMEOUT_S = 120.0
AUTOSTART = ("-global", "migration.store-global-state=off")
"""Given to the saving qemu and to every restore: the state is saved without the paused run state of the
VM it came from, so a qemu loading it starts the guest as soon as it is loaded (no ``cont`` needed, which
lets a release restore the VM with one qemu command and no QMP client)."""


snapshot_dir = paths.snapshot_dir


def qemu_version() -> str:
    """The first line of ``qemu-system-x86_64 --version``."""
    try:
        out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=30).stdout
    except FileNotFoundError:
        raise TailorError(f"{QEMU} not found; run ./setup.sh") from None
    return (out.strip().splitlines() or ["unknown"])[0]


_VARIABLE = {"-name", "-qmp", "-serial", "-pidfile", "-incoming"}


def machine_args(cmd: list[str]) -> list[str]:
    """*cmd* without what may differ between the snapshot and a restore: the qemu binary, its name, QMP,
    console and pid file, ``-daemonize``, ``-incoming``, the host side of port forwards, and the file
    names of the kernel and the disk (their identities are checked on their own)."""
    out, i = [], 1
    while i < len(cmd):
        a = cmd[i]
        if a in _VARIABLE:
            i += 2
            continue
        if a == "-daemonize":
            i += 1
            continue
        if a == "-kernel":
            out += [a, "KERNEL"]
            i += 2
            continue
        if a == "-netdev":
            out += [a, ",".join(p for p in cmd[i + 1].split(",") if not p.startswith("hostfwd="))]
            i += 2
            continue
        if a == "-drive":
            out += [a, ",".join("file=ROOT" if p.startswith("file=") else p for p in cmd[i + 1].split(","))]
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _qmp_wait(sock: Path, done, timeout: float, what: str) -> dict:
    from tailor.run import qmp

    deadline = time.monotonic() + timeout
    while True:
        reply = qmp(sock, what)["return"]
        if done(reply):
            return reply
        if time.monotonic() > deadline:
            raise TailorError(f"QMP {what}: still {reply.get('status')} after {timeout:.0f} s")
        time.sleep(0.01)


def take(recipe, *, general: bool = False, settle_s: float = 0.0) -> dict:
    """Boot *recipe*'s built VM, wait until it is ready (and *settle_s* more), save it into
    ``out/snapshot/<app>/`` and return the record."""
    from tailor import run
    from tailor.run import qmp

    if not recipe.app.network:
        raise TailorError(f"{recipe.name}: a snapshot needs app.network: true (the host reseeds the restored "
                          f"VM's random pool over the network)")
    final = snapshot_dir(recipe.name)
    tmp = final.with_name(final.name + ".partial")
    remove(tmp)
    tmp.mkdir(parents=True)
    probe = recipe.test.probe
    forwards = [run.Forward("127.0.0.1", free_port(), probe.port)] if probe.port else []
    p = run.plan(recipe, name=f"snapshot-{recipe.name}", forwards=forwards, general=general,
                 keep=str(tmp / "disk.qcow2"))
    p.cmdline = " ".join(filter(None, (p.cmdline, f"tailor_reseed={RESEED_PORT}")))
    fresh = replace(recipe, test=replace(recipe.test, exercise=()))
    try:
        from tailor.qemu import detect_accel

        p.accel = detect_accel()
        remove(p.dir)
        p.dir.mkdir(parents=True)
        run.make_layer(Path(p.image), Path(p.layer))
        cmd = run.command(p, detach=False) + list(AUTOSTART)
        sock = p.dir / "qmp.sock"
        with CtrlC(), VM(cmd, boot.new_console(fresh)) as vm:
            verdict, detail = boot.decide(fresh, vm, forwards[0].host if forwards else None, recipe.test.timeout)
            if verdict.state != "pass":
                raise TailorError(f"snapshot of {recipe.name}: the boot test failed: {verdict.reason}")
            if not any(f"reseed helper on port {RESEED_PORT}" in line for _, line in vm.console.lines):
                raise TailorError(f"snapshot of {recipe.name}: the init did not start the reseed helper; rebuild "
                                  f"the root image (doit rootfs:{recipe.name})")
            ready_s = time.monotonic() - vm.t0
            if settle_s > 0:  # let it run, then probe it again: the app still answers, and the work of that
                time.sleep(settle_s)  # last request (a random read makes a due crng reseed happen) is saved
                if forwards:
                    from tailor import probes

                    probes.run_probe(probe, forwards[0].host, time.monotonic() + recipe.test.timeout,
                                     abort=lambda: vm.check(no_output_s=None))
            t = time.monotonic()
            qmp(sock, "stop")
            state = tmp / "state"
            qmp(sock, "migrate", {"uri": f"exec:cat > {shlex.quote(str(state))}"})
            status = _qmp_wait(sock, lambda r: r.get("status") in ("completed", "failed", "cancelled"),
                               MIGRATE_TIMEOUT_S, "query-migrate")
            if status["status"] != "completed":
                raise TailorError(f"snapshot of {recipe.name}: saving the VM {status['status']}: "
                                  f"{status.get('error-desc', '')}".rstrip(": "))
            save_s = time.monotonic() - t
            run.quit_vm(sock, vm.proc.pid)
        record = {
            "app": recipe.name, "variant": p.variant,
            "kernel_identity": _kernel_identity(recipe, general),
            "rootfs_sha256": sha256_file(p.image), "root": p.root,
            "qemu_version": qemu_version(), "machine": machine_args(cmd), "cmdline": p.cmdline,
            "memory": p.memory, "accel": p.accel, "reseed_port": RESEED_PORT,
            "time_to_ready_s": round(ready_s, 3), "save_s": round(save_s, 3), "probe": detail,
            "files": {name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
                      for name in ("state", "disk.qcow2") if (tmp / name).is_file()},  # a cpio root has no disk
        }
        record = SnapshotRecord.from_dict(record, display_path(tmp / "snapshot.json"), with_format=False).save(
            tmp / "snapshot.json")
        remove(final)
        os.replace(tmp, final)
    finally:
        remove(tmp)
        remove(p.dir)
    return record


def _kernel_identity(recipe, general: bool) -> str:
    from tailor.recipe import general_variant

    r = general_variant(recipe) if general else recipe
    return records.app_kernel(r.id).kernel_identity


def check(recipe, plan) -> SnapshotRecord:
    """The snapshot of *recipe* (its record, read strictly), checked against what *plan* would run; a
    one-line TailorError when it does not fit or is damaged."""
    d = snapshot_dir(recipe.name)
    path = paths.snapshot_record(recipe.name)
    if not path.is_file():
        raise TailorError(f"{recipe.name} has no snapshot; take one with `doit snapshot:{recipe.name}`")
    rec = SnapshotRecord.load(path)
    again = f"take it again (doit snapshot:{recipe.name})"
    wanted = "general" if plan.variant == "general" else "specific"
    if rec.variant != wanted:
        raise TailorError(f"the snapshot of {recipe.name} is of its {rec.variant} kernel, not the {wanted} one")
    if rec.qemu_version != qemu_version():
        raise TailorError(f"the snapshot of {recipe.name} was made by {rec.qemu_version!r}, this is "
                          f"{qemu_version()!r}: a snapshot is tied to the qemu that made it; {again}")
    if rec.kernel_identity != _kernel_identity(recipe, plan.variant == "general"):
        raise TailorError(f"the snapshot of {recipe.name} was taken on another kernel than the one built now; {again}")
    if rec.rootfs_sha256 != sha256_file(plan.image):
        raise TailorError(f"the snapshot of {recipe.name} was taken with another root image than "
                          f"{display_path(plan.image)}; {again}")
    if plan.memory != rec.memory:
        raise TailorError(f"the snapshot of {recipe.name} has {rec.memory} MiB of memory; restore it "
                          f"with that (-m {rec.memory}) or {again}")
    for name, want in rec.files.items():
        f = d / name
        if not (isinstance(want, dict) and isinstance(want.get("bytes"), int) and isinstance(want.get("sha256"), str)):
            raise TailorError(f"{display_path(path)}: key 'files.{name}' is not {{'sha256', 'bytes'}}; {again}")
        if not f.is_file() or f.stat().st_size != want["bytes"] or sha256_file(f) != want["sha256"]:
            raise TailorError(f"{display_path(f)} is damaged (size or sha256 differs from snapshot.json); {again}")
    return rec


def restore_args(recipe) -> list[str]:
    """The qemu arguments that load the snapshot's state."""
    return [*AUTOSTART, "-incoming", f"exec:cat {shlex.quote(str(snapshot_dir(recipe.name) / 'state'))}"]


def copy_disk(recipe, layer: Path) -> None:
    """This run's own copy of the snapshot's disk layer (the snapshot stays as taken)."""
    layer.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(snapshot_dir(recipe.name) / "disk.qcow2", layer)


def wait_running(sock: Path, timeout: float = 60.0) -> None:
    """Until the restored VM runs: qemu starts it once the state is loaded (:data:`AUTOSTART`); a state
    saved with its paused run state (or a qemu that keeps it paused) is continued (``cont``)."""
    from tailor.run import qmp

    status = _qmp_wait(sock, lambda r: r.get("status") in ("paused", "running", "postmigrate", "internal-error",
                                                           "shutdown"), timeout, "query-status")["status"]
    if status == "paused":
        qmp(sock, "cont")
        status = _qmp_wait(sock, lambda r: r.get("status") != "paused", timeout, "query-status")["status"]
    if status != "running":
        raise TailorError(f"the restored VM is {status}, not running")


def reseed(port: int, timeout: float = 30.0) -> None:
    """Send fresh host randomness to the guest's reseed helper through 127.0.0.1:*port*; raise unless it
    answers ``reseeded``."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(os.urandom(RESEED_BYTES))
                answer = s.makefile("rb").readline().decode(errors="replace").strip()
            if answer == "reseeded":
                return
            last = answer or "no answer"
        except OSError as e:
            last = e.strerror or str(e)
        time.sleep(0.02)
    raise TailorError(f"the restored VM's random pool was not reseeded ({last})")


def take_action(recipe, settle_s: float = 0.0) -> None:
    rec = take(recipe, settle_s=settle_s)
    files = rec["files"]
    disk = files.get("disk.qcow2", {}).get("bytes", 0)
    print(f"[snapshot:{recipe.name}] ready after {rec['time_to_ready_s']} s, saved in {rec['save_s']} s: state "
          f"{files['state']['bytes'] / 1e6:.1f} MB, disk layer {disk / 1e6:.1f} MB "
          f"({display_path(snapshot_dir(recipe.name))}; python -m tailor run {recipe.name} --from-snapshot)")
