"""The ready snapshot in a release (``release.snapshot: true``): ``<app>/snapshot/`` and its restore script.

:func:`add_snapshot` checks the app's snapshot (:func:`tailor.snapshot.check`:
the qemu, kernel, root image and files it was taken with) and copies it into
the release being built: ``snapshot/state`` (the saved VM), ``snapshot/disk.qcow2``
(the disk layer the VM had written, rebased onto ``../rootfs.ext2`` by a
relative name so the release directory can move), ``snapshot/snapshot.json``
(the record) and ``snapshot/restore.sh`` (from ``templates/release/restore-snapshot.sh.j2``):
one qemu command that loads the state (the guest runs as soon as it is loaded,
:data:`tailor.snapshot.AUTOSTART`) and the reseed step of :mod:`tailor.snapshot`
done with bash alone.

A snapshot is a capture of one run, like the boot test's times: it is not a
function of the inputs, so its files and the manifest's ``snapshot`` section
are left out of the bit-for-bit comparison of :func:`tailor.release.verify_reproducible`
(:func:`is_snapshot_file`, :data:`tailor.release.names.MEASURED_KEYS`), and the manifest says which
qemu a restore needs.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

from tailor import snapshot as snap
from tailor.errors import TailorError
from tailor.kinds import RootFormat, Variant
from tailor.qemu import QEMU
from tailor.run import QEMU_IMG
from tailor.release.names import render
from tailor.util import sha256_file, write_atomic

SNAPSHOT_DIR = "snapshot"
"""The directory of an app's release that holds its snapshot."""


def restore_command(rec: dict, *, kernel: str, state: str, guest_port: int | None) -> str:
    """The shell text of the qemu command that restores *rec*'s VM from the release directory: the
    snapshot's machine arguments with *kernel*, the disk layer ``$layer``, the forwards ``$port`` ->
    *guest_port* and ``$reseed_port`` -> the reseed helper, the console on stdio and ``-incoming``."""
    out, args, i = [QEMU], rec["machine"], 0
    while i < len(args):
        a = args[i]
        value = args[i + 1] if i + 1 < len(args) else None
        if a == "-kernel":
            out += [a, shlex.quote(kernel)]
            i += 2
        elif a == "-drive" and "file=ROOT" in value.split(","):
            parts = ["file=$layer" if p == "file=ROOT" else p for p in value.split(",")]
            out += [a, '"' + ",".join(parts) + '"']
            i += 2
        elif a == "-netdev":
            fwd = [f"hostfwd=tcp:127.0.0.1:${{port}}-:{int(guest_port)}"] if guest_port else []
            fwd.append(f"hostfwd=tcp:127.0.0.1:${{reseed_port}}-:{int(rec['reseed_port'])}")
            out += [a, '"' + ",".join([value] + fwd) + '"']
            i += 2
        else:
            out.append(shlex.quote(a))
            i += 1
    out += ["-serial", "stdio", "-incoming", shlex.quote(f"exec:cat {state}")]
    return " ".join(out)


def add_snapshot(recipe, dest: Path, *, image: Path, kernel_name: str, version: str) -> dict:
    """Copy *recipe*'s checked snapshot into ``dest/snapshot/``; return the manifest's ``snapshot`` section."""
    app = recipe.name
    if not recipe.release.snapshot:
        raise ValueError(f"{app}: release.snapshot is false")
    plan = SimpleNamespace(variant=Variant.SPECIFIC, image=str(image), memory=recipe.test.memory)
    try:
        rec = snap.check(recipe, plan)
    except TailorError as e:
        raise TailorError(f"release of {app} (release.snapshot: true): {e}") from None
    if rec.root != RootFormat.EXT2 or "disk.qcow2" not in rec.files:
        raise TailorError(f"release of {app}: release.snapshot needs an ext2 root (rootfs.format: ext2)")
    src = snap.snapshot_dir(app)
    d = dest / SNAPSHOT_DIR
    d.mkdir()
    shutil.copyfile(src / "state", d / "state")
    shutil.copyfile(src / "disk.qcow2", d / "disk.qcow2")
    proc = subprocess.run([QEMU_IMG, "rebase", "-u", "-F", "raw", "-b", "../rootfs.ext2", str(d / "disk.qcow2")],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise TailorError(f"{QEMU_IMG} rebase of the snapshot's disk layer: "
                          f"{(proc.stderr.strip().splitlines() or ['failed'])[-1]}")
    rec.save(d / "snapshot.json")
    guest_port = recipe.test.probe.port
    script = render("restore-snapshot.sh.j2", app=app, version=version, qemu_version=rec.qemu_version,
                    guest_port=guest_port or 0, reseed_port=rec.reseed_port,
                    qemu=restore_command(rec.dump(), kernel=kernel_name, state=f"{SNAPSHOT_DIR}/state",
                                         guest_port=guest_port))
    write_atomic(d / "restore.sh", script)
    (d / "restore.sh").chmod(0o755)
    files = {name: {"sha256": sha256_file(d / name), "size": (d / name).stat().st_size}
             for name in ("state", "disk.qcow2", "snapshot.json", "restore.sh")}
    return {
        "dir": SNAPSHOT_DIR, "qemu_version": rec.qemu_version, "accel": rec.accel, "memory_mib": rec.memory,
        "kernel_identity": rec.kernel_identity, "rootfs_sha256": rec.rootfs_sha256,
        "time_to_ready_s": rec.time_to_ready_s, "save_s": rec.save_s, "reseed_port": rec.reseed_port,
        "files": files,
        "restore": f"bash {SNAPSHOT_DIR}/restore.sh [HOST_PORT] (from this directory)",
        "note": "taken by one run of this build, ready to serve; it loads only in the qemu named here and is "
                "left out of the bit-for-bit comparison of releases",
    }


def is_snapshot_file(rel: str, *, in_app: bool = False) -> bool:
    """True for *rel*, a path relative to a release version (``<app>/snapshot/<file>``) or, *in_app*, to
    one app's release (``snapshot/<file>``), that is a file of the app's snapshot."""
    parts = Path(rel).parts
    return parts[:-1] == (SNAPSHOT_DIR,) if in_app else len(parts) == 3 and parts[1] == SNAPSHOT_DIR
