"""Snapshots: the machine arguments a restore must share with the snapshot, and the one-line refusals of a
snapshot that does not fit (fakes); the real redis snapshot and restore are slow tests in test_run.py."""

import json
import os
import shlex

import pytest

import fakes
from tailor import paths, records, run, snapshot
from tailor.errors import TailorError
from tailor.recipe import find
from tailor.util import display_path, sha256_file, write_json

from test_run import fake_built, out  # noqa: F401  (the fixture)


def test_machine_args_drop_only_what_may_differ():
    cmd = ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-m", "256", "-name", "tailor-run-a",
           "-serial", "file:/x/console.log", "-kernel", "/k1/vmlinux",
           "-drive", "id=root,file=/x/root.qcow2,format=qcow2,if=none",
           "-netdev", "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:4000-:6379,hostfwd=tcp:127.0.0.1:4001-:61999",
           "-qmp", "unix:/x/qmp.sock,server=on,wait=off", "-daemonize", "-pidfile", "/x/pid",
           "-incoming", "exec:cat /s/state", "-append", "console=ttyS0 tailor_reseed=61999"]
    other = list(cmd)
    other[other.index("-kernel") + 1] = "/elsewhere/vmlinux"
    other[other.index("-netdev") + 1] = "user,id=n0,restrict=on,hostfwd=tcp:0.0.0.0:80-:6379"
    assert snapshot.machine_args(cmd) == snapshot.machine_args(other) == [
        "-M", "microvm,acpi=off", "-m", "256", "-kernel", "KERNEL", "-drive", "id=root,file=ROOT,format=qcow2,if=none",
        "-netdev", "user,id=n0,restrict=on", "-append", "console=ttyS0 tailor_reseed=61999"]
    other[other.index("-m") + 1] = "128"
    assert snapshot.machine_args(other) != snapshot.machine_args(cmd)


def fake_snapshot(out, redis, **changes):
    image = paths.rootfs_image("redis", "ext2")
    d = snapshot.snapshot_dir("redis")
    d.mkdir(parents=True, exist_ok=True)
    (d / "state").write_bytes(b"S" * 1000)
    (d / "disk.qcow2").write_bytes(b"D" * 100)
    fitting = {"kernel_identity": records.app_kernel("redis").kernel_identity, "rootfs_sha256": sha256_file(image),
               "memory": redis.test.memory}
    fakes.snapshot_record("redis", **{**fitting, **changes})
    return d


@pytest.fixture
def fits(out, monkeypatch):  # noqa: F811
    fake_built(out)
    monkeypatch.setattr(snapshot, "qemu_version", lambda: "QEMU emulator version 7.2.22")
    return find("redis")


def test_a_snapshot_that_fits_is_planned_with_its_reseed_forward(fits, out):  # noqa: F811
    fake_snapshot(out, fits)
    p = run.plan(fits, forwards=[run.parse_forward("16379:6379")], from_snapshot=True)
    assert p.snapshot and p.cmdline == "tailor_reseed=61999" and p.accel == "tcg"
    assert [f.guest for f in p.forwards] == [6379, 61999] and p.forwards[1].host == p.reseed_port
    args = snapshot.restore_args(fits)
    assert args[:2] == list(snapshot.AUTOSTART)  # the restored guest runs as soon as it is loaded
    assert args[2:] == ["-incoming", f"exec:cat {snapshot.snapshot_dir('redis') / 'state'}"]


@pytest.mark.parametrize("change, message", [
    ({"qemu_version": "QEMU emulator version 9.0.0"}, "was made by 'QEMU emulator version 9.0.0', this is"),
    ({"kernel_identity": "0" * 64}, "was taken on another kernel than the one built now"),
    ({"rootfs_sha256": "0" * 64}, "was taken with another root image than "),
    ({"memory": 64}, "has 64 MiB of memory; restore it with that (-m 64)"),
    ({"variant": "general"}, "is of its general kernel, not the specific one"),
])
def test_a_snapshot_that_does_not_fit_is_refused_in_one_line(fits, out, change, message):  # noqa: F811
    fake_snapshot(out, fits, **change)
    with pytest.raises(TailorError) as e:
        run.plan(fits, from_snapshot=True)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_damaged_or_missing_snapshot_is_refused(fits, out):  # noqa: F811
    with pytest.raises(TailorError, match=r"^redis has no snapshot; take one with `doit snapshot:redis`$"):
        run.plan(fits, from_snapshot=True)
    d = fake_snapshot(out, fits)
    with open(d / "state", "r+b") as f:  # truncated
        f.truncate(500)
    with pytest.raises(TailorError, match=r"snapshot/redis/state is damaged .*take it again \(doit snapshot:redis\)"):
        run.plan(fits, from_snapshot=True)
    d = fake_snapshot(out, fits)
    (d / "disk.qcow2").write_bytes(b"X" * 100)  # same size, other bytes
    with pytest.raises(TailorError, match=r"disk.qcow2 is damaged"):
        run.plan(fits, from_snapshot=True)
    d = fake_snapshot(out, fits)
    record = json.loads((d / "snapshot.json").read_text())
    for change, says in ((dict(format="tailor-snapshot/0"), "format 'tailor-snapshot/0', this tailor reads format "
                                                            "'tailor-snapshot/2'; take the snapshot again"),
                         (dict(memory="256"), "key 'memory' is str, expected int"),
                         (dict(files={"state": {"bytes": 1000}}), "key 'files.state' is not {'sha256', 'bytes'}")):
        write_json(d / "snapshot.json", {**record, **change})
        with pytest.raises(TailorError) as e:
            run.plan(fits, from_snapshot=True)
        assert str(e.value).startswith(f"{display_path(d / 'snapshot.json')}: {says}") and "\n" not in str(e.value)


def test_snapshot_needs_a_network_app(fits):
    with pytest.raises(TailorError, match="a snapshot needs app.network: true"):
        snapshot.take(find("hello"))


MACHINE = ["-M", "microvm,acpi=off", "-m", "256", "-kernel", "KERNEL",
           "-drive", "id=root,file=ROOT,format=qcow2,if=none", "-device", "virtio-blk-device,drive=root",
           "-netdev", "user,id=n0,restrict=on", "-append", "console=ttyS0 root=/dev/vda tailor_reseed=61999",
           *snapshot.AUTOSTART]


def test_the_release_restore_command_is_the_snapshots_machine_with_this_runs_files():
    from tailor.release import restore_command

    text = restore_command({"machine": MACHINE, "reseed_port": 61999}, kernel="vmlinux", state="snapshot/state",
                           guest_port=6379)
    argv = shlex.split(text.replace("$layer", "L").replace("${port}", "P").replace("${reseed_port}", "R"))
    assert argv[argv.index("-kernel") + 1] == "vmlinux"
    assert argv[argv.index("-drive") + 1] == "id=root,file=L,format=qcow2,if=none"
    assert argv[argv.index("-netdev") + 1] == ("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:P-:6379,"
                                               "hostfwd=tcp:127.0.0.1:R-:61999")
    assert argv[argv.index("-append") + 1] == "console=ttyS0 root=/dev/vda tailor_reseed=61999"
    assert argv[-2:] == ["-incoming", "exec:cat snapshot/state"]
    # what tailor run checks: the same machine as the snapshot's, once the per-run values are set aside
    assert snapshot.machine_args(argv) == MACHINE


@pytest.mark.parametrize("rel, in_app, expected", [
    ("redis/snapshot/state", False, True), ("redis/snapshot/restore.sh", False, True),
    ("redis/manifest.json", False, False), ("snapshot/manifest.json", False, False),  # an app named snapshot
    ("redis/oci/blobs/sha256/ab", False, False), ("snapshot/state", True, True), ("manifest.json", True, False),
    ("oci/snapshot/x", True, False),
])
def test_which_release_files_belong_to_the_snapshot(rel, in_app, expected):
    from tailor.release import is_snapshot_file

    assert is_snapshot_file(rel, in_app=in_app) is expected


def test_two_builds_may_differ_in_their_snapshots_only(tmp_path):
    from tailor.release import measurement_only

    a, b = tmp_path / "a", tmp_path / "b"
    for root, state, fast in ((a, b"1", 0.3), (b, b"2", 0.4)):
        (root / "redis/snapshot").mkdir(parents=True)
        (root / "redis/snapshot/state").write_bytes(state)
        measured = fakes.release_manifest(root / "redis/manifest.json", "redis").boot_test
        fakes.release_manifest(root / "redis/manifest.json", "redis", boot_test={**measured, "time_to_ready_s": fast},
                               snapshot={"files": {"state": {"sha256": state.hex()}}})
        (root / "SHA256SUMS").write_text(f"{'0' * 64}  redis/bzImage\n{state.hex() * 32}  redis/snapshot/state\n")
    for path in ("redis/snapshot/state", "redis/manifest.json", "SHA256SUMS"):
        assert measurement_only(a, b, {"kind": "differs", "path": path})
    (b / "SHA256SUMS").write_text(f"{'1' * 64}  redis/bzImage\n")
    assert not measurement_only(a, b, {"kind": "differs", "path": "SHA256SUMS"})
    fakes.release_manifest(b / "redis/manifest.json", "other", snapshot={})
    assert not measurement_only(a, b, {"kind": "differs", "path": "redis/manifest.json"})


def test_the_restore_script_picks_a_reseed_port_nothing_listens_on(tmp_path):
    """restore.sh sends random bytes to the reseed port: a port some other program listens on is
    skipped. The test seeds bash's RANDOM so that the script's first pick is a port it holds open."""
    import socket
    import subprocess

    from tailor.templates import render

    first = int(subprocess.run(["bash", "-c", "RANDOM=7; echo $((20000 + RANDOM % 20000))"],
                               capture_output=True, text=True, check=True).stdout)
    script = render("release/restore-snapshot.sh.j2", app="redis", version="1", qemu_version="QEMU", guest_port=6379,
                    reseed_port=61999, qemu='echo "$reseed_port" > picked; true')
    script = script.replace("set -euo pipefail\n", "set -euo pipefail\nRANDOM=7\n", 1)
    (tmp_path / "snapshot").mkdir()
    (tmp_path / "snapshot/disk.qcow2").write_bytes(b"")
    (tmp_path / "snapshot/restore.sh").write_text(script)
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", first))
        taken.listen()
        proc = subprocess.run(["bash", "snapshot/restore.sh"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "RESEED_HOST_PORT": ""})
    picked = int((tmp_path / "picked").read_text())
    assert proc.returncode == 0, proc.stderr
    assert picked != first and 20000 <= picked < 40000
