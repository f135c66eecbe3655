"""tailor run / ps / stop / logs: the fast parts against fakes (forwards, plans, the QMP client, stopping a
process that ignores quit), and slow tests with the real redis VM (foreground, detached, the disk layer)."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import fakes
from tailor import paths, run
from tailor.errors import ProbeFailed, TailorError
from tailor.recipe import find
from tailor.util import write_json

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def out(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    return tmp_path / "out"


@pytest.mark.parametrize("spec, fwd", [("6379:6379", run.Forward("127.0.0.1", 6379, 6379)),
                                       ("0.0.0.0:8080:80", run.Forward("0.0.0.0", 8080, 80))])
def test_parse_forward(spec, fwd):
    assert run.parse_forward(spec) == fwd


@pytest.mark.parametrize("spec, message", [
    ("6379", "-p 6379: expected HOST:GUEST or ADDR:HOST:GUEST"),
    ("localhost:1:2", "-p localhost:1:2: 'localhost' is not an IPv4 address"),
    ("1.2.3:1:2", "-p 1.2.3:1:2: '1.2.3' is not an IPv4 address"),
    ("0:80", "-p 0:80: '0' is not a TCP port (1-65535)"),
    ("80:x", "-p 80:x: 'x' is not a TCP port"),
])
def test_parse_forward_errors_are_one_line(spec, message):
    with pytest.raises(TailorError) as e:
        run.parse_forward(spec)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def fake_built(out: Path, app="redis", fmt="ext2"):
    """A kernel pointer and root image where the pipeline puts them (contents do not matter to plan())."""
    kdir = out / "kernel" / app
    kdir.mkdir(parents=True)
    for f in ("bzImage", "vmlinux"):
        (kdir / f).write_bytes(b"x")
    (kdir / "config").write_text("CONFIG_PVH=y\n")
    fakes.kernel_pointer(app, kdir)
    image = paths.rootfs_image(app, fmt)
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"\0" * 4096)
    return image


def test_plan_names_what_is_missing_and_what_is_taken(out):
    redis = find("redis")
    with pytest.raises(TailorError, match=r"^redis: its kernel is not built; run `doit build:redis` first$"):
        run.plan(redis)
    with pytest.raises(TailorError, match=r"^redis@general: its kernel is not built; run `doit build:redis@general`"):
        run.plan(redis, general=True)
    fake_built(out)
    p = run.plan(redis, forwards=[run.parse_forward("16379:6379")], memory=96)
    assert (p.name, p.memory, p.root, p.layer) == ("redis", 96, "ext2", str(out / "run" / "redis" / "root.qcow2"))
    assert p.kernel.endswith("vmlinux")  # PVH in the config: the ELF is booted, as in the boot test
    with socket.socket() as s:  # a port in use is named
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        with pytest.raises(TailorError, match=rf"^-p 127.0.0.1:{taken}->6379: host port 127.0.0.1:{taken} is in use"):
            run.plan(redis, forwards=[run.Forward("127.0.0.1", taken, 6379)])
    with pytest.raises(TailorError, match="is given twice"):
        run.plan(redis, forwards=[run.parse_forward("16379:6379"), run.parse_forward("16379:80")])
    with pytest.raises(TailorError, match=r"^--name 'a b'"):
        run.plan(redis, name="a b")
    with pytest.raises(TailorError, match="app.network is false"):
        fake_built(out, app="hello", fmt="cpio")
        run.plan(find("hello"), forwards=[run.parse_forward("16380:80")])


def test_the_qemu_command_boots_the_layer_and_has_a_qmp_socket(out):
    fake_built(out)
    p = run.plan(find("redis"), forwards=[run.parse_forward("0.0.0.0:16379:6379")])
    p.accel = "tcg"
    cmd = run.command(p, detach=True)
    joined = " ".join(cmd)
    assert f"file={p.layer},format=qcow2,if=none " in joined + " " and "snapshot=on" not in joined
    assert "hostfwd=tcp:0.0.0.0:16379-:6379" in joined and "-daemonize" in cmd
    assert cmd[cmd.index("-serial") + 1] == f"file:{out / 'run' / 'redis' / 'console.log'}"
    assert cmd[cmd.index("-qmp") + 1] == f"unix:{out / 'run' / 'redis' / 'qmp.sock'},server=on,wait=off"
    assert cmd[cmd.index("-name") + 1] == "tailor-run-redis"


def test_make_layer_writes_never_reach_the_image(tmp_path):
    image = tmp_path / "root.ext2"
    image.write_bytes(b"A" * 65536)
    layer = tmp_path / "layer.qcow2"
    run.make_layer(image, layer)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x42 0 4096", str(layer)], check=True,
                   capture_output=True)
    read = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x42 0 4096", str(layer)], capture_output=True,
                          text=True)
    assert "Pattern verification failed" not in read.stdout + read.stderr and read.returncode == 0
    assert image.read_bytes() == b"A" * 65536


class FakeQMP(threading.Thread):
    """A QMP server on a unix socket that answers qmp_capabilities and records what it was asked."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(str(path))
        self.srv.listen()
        self.asked = []

    def run(self):
        conn, _ = self.srv.accept()
        f = conn.makefile("rwb")
        f.write(b'{"QMP": {"version": {}, "capabilities": []}}\n')
        f.flush()
        for line in f:
            cmd = json.loads(line)["execute"]
            self.asked.append(cmd)
            f.write(b'{"event": "SOMETHING"}\n{"return": {}}\n')
            f.flush()
            if cmd == "quit":
                break
        conn.close()


def test_qmp_client_negotiates_and_skips_events(tmp_path):
    srv = FakeQMP(tmp_path / "q.sock")
    srv.start()
    assert run.qmp(tmp_path / "q.sock", "stop") == {"return": {}}
    srv.join(5)
    assert srv.asked == ["qmp_capabilities", "stop"]


def test_stop_escalates_to_signals_and_cleans_up(out, monkeypatch):
    monkeypatch.setattr(run, "QUIT_WAIT_S", 0.5)
    d = run.vm_dir("stubborn")
    d.mkdir(parents=True)
    # a process that ignores SIGTERM and carries the VM's name marker, as qemu's -name does
    proc = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                             "signal.SIG_IGN); time.sleep(60)", "-name", "tailor-run-stubborn"])
    deadline = time.monotonic() + 10  # Popen may return before the child's exec shows in /proc
    while b"tailor-run-stubborn" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    layer = out / "layer.qcow2"
    layer.write_bytes(b"x")
    rec = fakes.run_state("stubborn", pid=proc.pid, layer=str(layer), memory=64, started=time.time() - 75,
                          forwards=[{"addr": "127.0.0.1", "host": 16379, "guest": 6379}])
    vms = run.list_vms()
    assert [v["running"] for v in vms] == [True]
    table = run.ps_table(vms, now=rec.started + 75)
    assert table.splitlines()[1].split() == ["stubborn", "redis", str(proc.pid), "127.0.0.1:16379->6379", "64",
                                             "MiB", "1m15s"]
    assert run.stop("stubborn") is True
    assert proc.wait(5) == -signal.SIGKILL  # quit found no socket, SIGTERM was ignored
    assert not d.exists() and not layer.exists()
    with pytest.raises(TailorError, match=r"^no VM named 'stubborn'"):
        run.stop("stubborn")


def test_a_dead_vm_is_listed_as_exited_and_its_name_reused(out):
    fake_built(out)
    d = run.vm_dir("redis")
    fakes.run_state("redis", pid=2 ** 22 - 1)
    assert "exited" in run.ps_table(run.list_vms())
    run.plan(find("redis"))  # the stale state is cleaned, the name is free again
    assert not d.exists()


def test_a_damaged_vm_state_is_one_line_naming_the_file_and_key(out):
    fake_built(out)
    state = run.vm_dir("redis") / "run.json"
    good = fakes.run_state("redis", pid=2 ** 22 - 1).dump()
    write_json(state, {**good, "pid": "4711"})
    for call in (run.list_vms, lambda: run.stop("redis"), lambda: run.plan(find("redis"))):
        with pytest.raises(TailorError) as e:
            call()
        assert str(e.value).startswith(f"{state}: key 'pid' is str, expected int") and "\n" not in str(e.value)
    assert state.is_file()  # not cleaned up blindly: its qemu may still run


# --------------------------------------------------------------------------
# The real redis VM (slow): built once in a project copy that shares kernels with the project's out/


@pytest.fixture(scope="module")
def built_redis(tmp_path_factory, linux_tree):
    from conftest import project_copy, run_doit

    project = project_copy(tmp_path_factory.mktemp("run") / "tailor")
    proc = run_doit(project, "build:redis")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return project


def tailor(project, *args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "TAILOR_OUT"}
    return subprocess.run([sys.executable, "-m", "tailor", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=timeout)


def no_qemu(name):
    return subprocess.run(["pgrep", "-f", f"tailor-run-{name}"], capture_output=True).returncode == 1


def redis_ping(port, deadline_s=60):
    from tailor.probes import probe_redis

    return probe_redis(port, time.monotonic() + deadline_s)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_foreground_run_answers_and_stops_on_ctrl_c(built_redis):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "TAILOR_OUT"}
    proc = subprocess.Popen([sys.executable, "-m", "tailor", "run", "redis", "-p", f"{port}:6379", "--name", "fg"],
                            cwd=built_redis, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            if "Ready to accept connections" in line or not line:
                break
        assert any("Ready to accept connections" in ln for ln in seen), "".join(seen)
        assert "PING" in redis_ping(port)
        assert (built_redis / "out/run/fg/run.json").is_file()
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "tailor: fg stopped" in rest
    assert no_qemu("fg") and not (built_redis / "out/run/fg").exists()


@pytest.mark.slow
def test_detached_run_ps_logs_stop_and_the_image_stays_as_built(built_redis, tmp_path):

    image = built_redis / "out/rootfs/redis/rootfs.ext2"
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    port = free_port()
    keep = tmp_path / "kept.qcow2"
    proc = tailor(built_redis, "run", "redis", "-p", f"{port}:6379", "--name", "bg", "--detach", "--keep", str(keep))
    assert proc.returncode == 0, proc.stderr
    assert "running detached" in proc.stderr
    try:
        redis_ping(port)
        # the app writes to its disk: SAVE puts dump.rdb on the root
        from tailor.probes import resp_command, resp_reply
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            f = s.makefile("rb")
            s.sendall(resp_command(b"SET", b"k", b"v" * 4096) + resp_command(b"SAVE"))
            assert resp_reply(f) == b"+OK" and resp_reply(f) == b"+OK"
        ps = tailor(built_redis, "ps")
        row = next(ln for ln in ps.stdout.splitlines() if ln.startswith("bg "))
        assert f"127.0.0.1:{port}->6379" in row and "256 MiB" in row and "exited" not in row
        logs = tailor(built_redis, "logs", "bg")
        assert "Ready to accept connections" in logs.stdout and "DB saved on disk" in logs.stdout
        taken = tailor(built_redis, "run", "redis", "--name", "bg", "--detach")
        assert taken.returncode == 1 and "a VM named bg is running" in taken.stderr
    finally:
        stop = tailor(built_redis, "stop", "bg")
    assert stop.returncode == 0 and "bg stopped" in stop.stdout
    assert no_qemu("bg") and not (built_redis / "out/run/bg").exists()
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before  # the built image stays as built
    assert keep.stat().st_size > 0  # the writes went to the kept layer
    info = subprocess.run(["qemu-img", "info", "--output=json", str(keep)], capture_output=True, text=True)
    assert json.loads(info.stdout)["backing-filename"] == str(image.resolve())


@pytest.mark.slow
def test_snapshot_restore_passes_the_probe_and_refuses_a_changed_root(built_redis):
    snap = tailor(built_redis, "snapshot", "redis", timeout=600)
    assert snap.returncode == 0, snap.stderr
    rec = json.loads((built_redis / "out/snapshot/redis/snapshot.json").read_text())
    assert rec["format"] == "tailor-snapshot/2" and rec["files"]["state"]["bytes"] > 1_000_000
    port = free_port()
    proc = tailor(built_redis, "run", "redis", "-p", f"{port}:6379", "--from-snapshot", "--detach", "--name", "snap")
    try:
        assert proc.returncode == 0, proc.stderr
        assert "restored from its snapshot and reseeded" in proc.stderr
        assert "PING" in redis_ping(port, 30)  # a forward given at restore time serves new connections
    finally:
        tailor(built_redis, "stop", "snap")
    assert no_qemu("snap")
    # a truncated state file is refused in one line, and nothing is left behind
    state = built_redis / "out/snapshot/redis/state"
    saved = state.read_bytes()
    state.write_bytes(saved[: len(saved) // 2])
    bad = tailor(built_redis, "run", "redis", "--from-snapshot", "--detach", "--name", "snap")
    assert bad.returncode == 1 and "state is damaged" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (built_redis / "out/run/snap").exists()
    state.write_bytes(saved)
    # a snapshot from another root image is refused
    image = built_redis / "out/rootfs/redis/rootfs.ext2"
    original, stat = image.read_bytes(), image.stat()
    image.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        bad = tailor(built_redis, "run", "redis", "--from-snapshot", "--detach", "--name", "snap")
        assert bad.returncode == 1 and "was taken with another root image" in bad.stderr
    finally:
        image.write_bytes(original)
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as built: later tests release it


@pytest.mark.slow
def test_four_detached_vms_from_the_snapshot_answer_load_and_stop_clean(built_redis):
    if not (built_redis / "out/snapshot/redis/snapshot.json").is_file():
        assert tailor(built_redis, "snapshot", "redis", timeout=600).returncode == 0
    names = [f"load{i}" for i in range(4)]
    ports = {}
    try:
        for n in names:
            ports[n] = free_port()
            proc = tailor(built_redis, "run", "redis", "-p", f"{ports[n]}:6379", "--name", n, "--detach",
                          "--from-snapshot")
            assert proc.returncode == 0, proc.stderr
        for n in names:
            bench = subprocess.run(["redis-benchmark", "-p", str(ports[n]), "-q", "-n", "2000", "-t", "set,get"],
                                   capture_output=True, text=True, timeout=300)
            assert bench.returncode == 0 and "GET: " in bench.stdout, bench.stdout + bench.stderr
    finally:
        stop = tailor(built_redis, "stop", *ports)
    assert stop.returncode == 0
    for n in names:
        assert no_qemu(n) and not (built_redis / "out/run" / n).exists()
    assert not list((built_redis / "out/run").glob("*"))


@pytest.mark.slow
def test_a_release_with_the_snapshot_restores_by_its_script(built_redis):
    """release.snapshot: true ships the ready snapshot; its restore.sh, run from the release directory with
    nothing but bash and qemu, serves redis, reseeds, and leaves the release as it was."""
    recipe = built_redis / "recipes/redis.yaml"
    recipe.write_text(recipe.read_text() + "release:\n  snapshot: true\n")
    from conftest import run_doit
    from tailor import __version__
    proc = run_doit(built_redis, "release:redis")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rel = built_redis / "out/release" / __version__ / "redis"
    manifest = json.loads((rel / "manifest.json").read_text())
    snap = manifest["snapshot"]
    assert snap["qemu_version"].startswith("QEMU emulator version") and snap["files"]["state"]["size"] > 1_000_000
    assert not any(a["path"].startswith("snapshot/") for a in manifest["artefacts"])
    sums = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=rel.parent, capture_output=True, text=True)
    assert sums.returncode == 0, sums.stdout + sums.stderr
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (rel / "snapshot").iterdir()}
    port = free_port()
    qemu = subprocess.Popen(["bash", "snapshot/restore.sh", str(port)], cwd=rel, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(qemu.stderr), daemon=True)
    reader.start()
    try:
        try:
            answer = redis_ping(port, 60)
        except ProbeFailed as e:
            pytest.fail(f"restore.sh: {e}; exit status {qemu.poll()}; its output: {''.join(lines)[-3000:]}")
        assert "PING" in answer
        # the guest answers as soon as its state is loaded; the script reseeds it just after
        deadline = time.monotonic() + 60
        while not any("restored and reseeded" in ln for ln in lines) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        os.killpg(qemu.pid, signal.SIGTERM)
        qemu.wait(timeout=60)
        reader.join(timeout=10)
    err = "".join(lines)
    assert "restored and reseeded" in err, err[-2000:]
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (rel / "snapshot").iterdir()} == before


RANDWEB = """\
# busybox httpd whose CGI prints 16 bytes of /dev/urandom: what a restored VM reads first
description: random bytes over HTTP (the snapshot randomness test)
kernel:
  base: [lupine-base]
  options: {NET: y, INET: y, NETDEVICES: y, NET_CORE: y, VIRTIO_NET: y, EPOLL: y, FUTEX: y, PROC_FS: y,
            PROC_SYSCTL: y}
rootfs: {overlay: [randweb]}
app:
  command: /bin/busybox
  args: [httpd, -f, -p, "80", -h, /www]
  network: true
test:
  probe: {type: http, port: 80, path: /cgi-bin/rand, status: 200}
  memory: 128
"""
RAND_CGI = "#!/bin/sh\necho 'Content-Type: text/plain'\necho\n/bin/busybox od -An -tx1 -N16 /dev/urandom\n"


@pytest.mark.slow
def test_restores_read_fresh_randomness_only_with_the_reseed(built_redis):
    """A snapshot taken after 130 s of uptime (the kernel then reseeds once a minute); two restores read 16 bytes
    of /dev/urandom first thing: different with the reseed, identical without it (so the reseed does it)."""
    import urllib.request

    (built_redis / "recipes/randweb.yaml").write_text(RANDWEB)
    cgi = built_redis / "rootfs/randweb/www/cgi-bin/rand"
    cgi.parent.mkdir(parents=True)
    cgi.write_text(RAND_CGI)
    cgi.chmod(0o755)
    from conftest import run_doit
    proc = run_doit(built_redis, "build:randweb")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    snap = tailor(built_redis, "snapshot", "randweb", "--settle", "130", timeout=900)
    assert snap.returncode == 0, snap.stderr

    def first_read(reseed: bool) -> str:
        port = free_port()
        args = ["run", "randweb", "-p", f"{port}:80", "--from-snapshot", "--detach", "--name", "rnd"]
        started = tailor(built_redis, *args + ([] if reseed else ["--no-reseed"]))
        try:
            assert started.returncode == 0, started.stderr
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/cgi-bin/rand", timeout=30) as r:
                return r.read().decode().strip()
        finally:
            tailor(built_redis, "stop", "rnd")

    with_reseed = [first_read(True), first_read(True)]
    without = [first_read(False), first_read(False)]
    assert all(len(x.split()) == 16 for x in with_reseed + without)
    assert with_reseed[0] != with_reseed[1]
    assert without[0] == without[1]
