"""Tests for tailor.boot: accelerator choice, qemu argv, console logic, probes on real sockets, and run().

Everything except the ``slow`` test runs without a VM: run() is exercised with
a fake ``qemu-system-x86_64`` shell script on PATH that prints a console
transcript (and one test starts the real qemu paused, to check how it parses
the argv). The slow test boots hello's real kernel (built through doit, shared
with the other slow tests through out/kernel) with a busybox initramfs.
"""

import http.server
import json
import os
import shutil
import socket
import socketserver
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fakes  # noqa: E402
from tailor import boot, console, paths, probes, qemu  # noqa: E402
from tailor.console import ConsoleState, assess, split_lines  # noqa: E402
from tailor.errors import ProbeFailed, QemuError  # noqa: E402
from tailor.errors import TailorError  # noqa: E402
from tailor.recipe import parse  # noqa: E402

from conftest import project_copy, run_doit  # noqa: E402

CPUINFO_VMX = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme de pse tsc msr vmx sse2\n\n"
CPUINFO_SVM = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu vme svm sse2 lm\n\n"
CPUINFO_NONE = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme de pse tsc msr sse2 hypervisor\n\n"


def make_recipe(yaml_text, tmp_path):
    return parse(yaml_text, tmp_path / "t.yaml")


# --------------------------------------------------------------------------
# detect_accel


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("TAILOR_ACCEL", raising=False)


@pytest.fixture
def kvm_dev(tmp_path):
    """A stand-in for /dev/kvm that opens read-write."""
    p = tmp_path / "kvm"
    p.write_bytes(b"")
    return p


def cpuinfo(tmp_path, text):
    p = tmp_path / "cpuinfo"
    p.write_text(text)
    return p


def test_accel_kvm_needs_device_and_virt_flags(no_env, tmp_path, kvm_dev):
    assert qemu.detect_accel(cpuinfo_path=cpuinfo(tmp_path, CPUINFO_VMX), kvm_path=kvm_dev) == "kvm"
    assert qemu.detect_accel(cpuinfo_path=cpuinfo(tmp_path, CPUINFO_SVM), kvm_path=kvm_dev) == "kvm"


def test_accel_paravirtual_kvm_without_flags_is_tcg(no_env, tmp_path, kvm_dev):
    assert qemu.detect_accel(cpuinfo_path=cpuinfo(tmp_path, CPUINFO_NONE), kvm_path=kvm_dev) == "tcg"


def test_accel_missing_device_is_tcg(no_env, tmp_path):
    info = cpuinfo(tmp_path, CPUINFO_VMX)
    assert qemu.detect_accel(cpuinfo_path=info, kvm_path=tmp_path / "nope") == "tcg"
    assert qemu.detect_accel(cpuinfo_path=tmp_path / "no-cpuinfo", kvm_path=tmp_path / "nope") == "tcg"


def test_accel_env_and_force_override(monkeypatch, tmp_path, kvm_dev):
    info = cpuinfo(tmp_path, CPUINFO_NONE)
    monkeypatch.setenv("TAILOR_ACCEL", "kvm")
    assert qemu.detect_accel(cpuinfo_path=info, kvm_path=kvm_dev) == "kvm"
    assert qemu.detect_accel("tcg", cpuinfo_path=info, kvm_path=kvm_dev) == "tcg"
    monkeypatch.setenv("TAILOR_ACCEL", "TCG")
    assert qemu.detect_accel(cpuinfo_path=cpuinfo(tmp_path, CPUINFO_VMX), kvm_path=kvm_dev) == "tcg"
    monkeypatch.setenv("TAILOR_ACCEL", "hvf")
    with pytest.raises(TailorError, match="TAILOR_ACCEL='hvf' is not an accelerator"):
        qemu.detect_accel()


def test_accel_on_this_machine_is_fast(no_env):
    t = time.monotonic()
    accel = qemu.detect_accel()
    assert time.monotonic() - t < 0.5
    assert accel in ("kvm", "tcg")
    with open("/proc/cpuinfo") as f:
        flags = set(" ".join(l for l in f if l.startswith("flags")).split())
    if not flags & {"vmx", "svm"}:
        assert accel == "tcg"


# --------------------------------------------------------------------------
# qemu_command


def qemu_accepts(cmd: list[str]) -> str | None:
    """Start the real qemu with *cmd* paused (``-S``, so no guest runs): None when it is still up after
    1.5 s (it parsed every option and opened every file), else what it printed before it gave up."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    i = cmd.index("-append")
    proc = subprocess.Popen(cmd[:i] + ["-S"] + cmd[i:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        proc.wait(1.5)
    except subprocess.TimeoutExpired:
        return None
    finally:
        qemu.kill(proc)
        err = proc.stderr.read().decode()
        proc.stderr.close()
    return err or f"qemu exited with status {proc.returncode}"


def fake_bzimage(path: Path) -> Path:
    """A file with just enough of a bzImage's setup header (boot protocol 2.15, loads high, takes an
    initrd) for qemu to load it; the guest never runs it."""
    header = bytearray(64 * 1024)
    header[0x1F1] = 4  # setup sectors
    header[0x1FE:0x200] = b"\x55\xaa"
    header[0x202:0x208] = b"HdrS" + (0x020F).to_bytes(2, "little")
    header[0x211] = 0x01  # LOADED_HIGH
    header[0x22C:0x230] = (0x37FFFFFF).to_bytes(4, "little")  # initrd_addr_max
    path.write_bytes(bytes(header))
    return path


@pytest.fixture
def boot_files(tmp_path):
    """A kernel file and two root images for qemu to open (the guest never runs: qemu starts paused)."""
    kernel, cpio, ext2 = fake_bzimage(tmp_path / "bzImage"), tmp_path / "rootfs.cpio", tmp_path / "root.ext2"
    cpio.write_bytes(bytes(512))
    with open(ext2, "wb") as f:
        f.truncate(1 << 20)
    return kernel, cpio, ext2


def test_qemu_command_cpio_tcg(boot_files):
    kernel, cpio, _ = boot_files
    cmd = qemu.qemu_command(kernel, cpio, "cpio", 128, "", "tcg", None, False)
    assert qemu_accepts(cmd) is None
    assert cmd[cmd.index("-accel") + 1] == "tcg" and cmd[cmd.index("-m") + 1] == "128"
    assert cmd[cmd.index("-kernel") + 1] == str(kernel) and cmd[cmd.index("-initrd") + 1] == str(cpio)
    assert cmd[cmd.index("-append") + 1] == "console=ttyS0 reboot=t panic=-1 rdinit=/init tsc=unstable"
    assert "-netdev" not in cmd and "-drive" not in cmd


def test_qemu_command_ext2_kvm_extra_args(boot_files):
    kernel, _, ext2 = boot_files
    assert qemu_accepts(qemu.qemu_command(kernel, ext2, "ext2", 64, "", "tcg", None, False)) is None
    cmd = qemu.qemu_command(kernel, ext2, "ext2", 64, "  quiet  loglevel=3 ", "kvm", None, False, name="tailor-x")
    assert cmd[cmd.index("-accel") + 1] == "kvm" and cmd[cmd.index("-cpu") + 1] == "host"
    assert cmd[cmd.index("-name") + 1] == "tailor-x"
    assert "-initrd" not in cmd
    assert cmd[cmd.index("-append") + 1] == ("console=ttyS0 reboot=t panic=-1 root=/dev/vda rw init=/init "
                                             "quiet loglevel=3")


def test_qemu_command_network_forwards_the_host_ports(boot_files):
    kernel, cpio, _ = boot_files
    ports = [(qemu.free_port(), 6379), (qemu.free_port(), 80)]
    cmd = qemu.qemu_command(kernel, cpio, "cpio", 256, "", "tcg", ports, True)
    assert qemu_accepts(cmd) is None
    # started paused, qemu already listens on every forwarded host port (the guest answers later)
    i = cmd.index("-append")
    proc = subprocess.Popen(cmd[:i] + ["-S"] + cmd[i:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        for host_port, _ in ports:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", host_port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"qemu does not listen on {host_port}"
                    time.sleep(0.1)
    finally:
        qemu.kill(proc)
    plain = qemu.qemu_command(kernel, cpio, "cpio", 256, "", "tcg", None, True)
    assert qemu_accepts(plain) is None and "-netdev" in plain


def test_qemu_command_rejects_bad_input():
    with pytest.raises(ValueError):
        qemu.qemu_command("/k", "/r", "squashfs", 256, "", "tcg", None, False)
    with pytest.raises(ValueError):
        qemu.qemu_command("/k", "/r", "cpio", 256, "", "hvf", None, False)
    with pytest.raises(ValueError):
        qemu.qemu_command("/k", "/r", "cpio", 256, "", "tcg", [(1, 2)], False)


def test_qemu_parses_an_image_path_with_a_comma(tmp_path):
    # qemu splits option lists at commas (a doubled comma is a literal one): started paused (-S), real
    # qemu stays up only when it opened the disk image at exactly this path
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    d = tmp_path / "a,b=c"
    d.mkdir()
    kernel, image = d / "bzImage", d / "root,x.ext2"
    kernel.write_bytes(bytes(4096))
    with open(image, "wb") as f:
        f.truncate(1 << 20)
    cmd = qemu.qemu_command(kernel, image, "ext2", 64, "", "tcg", None, False, name="tailor-comma,test",
                            extra=("-S",))
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(1.5)
    finally:
        qemu.kill(proc)
        err = proc.stderr.read().decode()
        proc.stderr.close()
    assert "Could not open" not in err and "Invalid parameter" not in err, err


def _up_or_exited(vm, port):
    """A session's ready check for a fake VM: ``up`` once it printed a line, ``exited`` when it ended first."""
    return vm.watch(lambda now, status: "up" if vm.console.lines else ("exited" if status is not None else None))


def test_session_starts_again_on_a_new_port_when_the_host_port_was_taken():
    starts = []

    def command(accel, port):
        starts.append(port)
        if len(starts) == 1:  # what qemu says when another process bound the port since free_port()
            return ["sh", "-c", f"echo 'qemu-system-x86_64: -netdev user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:80: "
                                "could not set up host forwarding rule' >&2; exit 1"]
        return ["sh", "-c", "echo up; exec sleep 30"]

    with qemu.session(command, ConsoleState, "tcg", _up_or_exited, guest_port=80,
                      failure=lambda r: None if r == "up" else r) as s:
        assert s.result == "up" and s.port == starts[-1] and s.accel == "tcg"
        pid = s.vm.proc.pid
    assert len(starts) == 2 and starts[0] != starts[1]
    assert_dead(pid)


def test_session_reruns_a_silent_kvm_failure_under_tcg():
    accels = []

    def command(accel, port):
        accels.append(accel)
        return ["sh", "-c", "exit 1"] if accel == "kvm" else ["sh", "-c", "echo up; exec sleep 30"]

    with qemu.session(command, ConsoleState, "kvm", _up_or_exited,
                      failure=lambda r: None if r == "up" else r) as s:
        assert s.result == "up" and s.accel == "tcg" and s.kvm_failure == "exited" and s.fallback_from_kvm
    assert accels == ["kvm", "tcg"]


def test_a_vm_that_cannot_start_is_a_qemu_error():
    with pytest.raises(QemuError, match="no-such-qemu-tailor not found"):
        with qemu.VM(["no-such-qemu-tailor"], ConsoleState()):
            pass


def test_free_port_is_bindable():
    port = qemu.free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


# --------------------------------------------------------------------------
# Console parsing and the verdict


def test_split_lines_keeps_partial_rest_and_drops_cr():
    lines, rest = split_lines(b"one\r\ntwo\n\xffbad\r\nthr")
    assert lines == ["one", "two", "\ufffdbad"]
    assert rest == b"thr"
    assert split_lines(b"") == ([], b"")
    assert split_lines(b"\n") == ([""], b"")


def feed_all(con, lines, t0=0.0, step=0.1):
    for i, line in enumerate(lines):
        con.feed(line, t0 + i * step)
    return con


KERNEL = ["Linux version 6.1", "Serial: 8250/16550 driver", "Freeing unused kernel image"]


def test_console_state_init_and_ready():
    con = feed_all(ConsoleState(ready=r"Ready to accept"), KERNEL + [
        "Run /init as init process", "tailor-init: eth0 up", "1:M * Ready to accept connections"])
    assert con.init_path == "/init" and con.init_index == 3 and con.init_s == pytest.approx(0.3)
    assert con.ready_index == 5 and con.ready_s == pytest.approx(0.5)
    assert con.first_output_s == 0.0 and con.panic is None
    assert "[   0.300] Run /init as init process\n" in con.text()


@pytest.mark.parametrize("lines, before", [
    (["random: crng init done", "Run /init as init process", "tailor-init: exec /usr/bin/redis-server"], True),
    (["Run /init as init process", "tailor-init: exec /usr/bin/redis-server", "random: crng init done"], False),
    (["Run /init as init process", "tailor-init: exec /usr/bin/redis-server"], False),
    (["random: crng init done", "Run /init as init process", "tailor-init: setup /bin/false"], None),
])
def test_console_state_tells_whether_the_pool_was_seeded_before_the_app(lines, before):
    con = feed_all(ConsoleState(), KERNEL + lines)
    assert con.entropy_before_app() is before
    if "random: crng init done" in lines:
        assert con.crng_index == len(KERNEL) + lines.index("random: crng init done")


def test_kernel_file_boots_by_pvh_only_when_the_config_has_it(tmp_path):
    kdir = tmp_path / "k"
    kdir.mkdir()
    kernel = {"dir": str(kdir), "bzImage": str(kdir / "bzImage"), "vmlinux": str(kdir / "vmlinux")}
    (kdir / "config").write_text("CONFIG_64BIT=y\n# CONFIG_PVH is not set\n")
    assert qemu.kernel_file(kernel) == (kdir / "bzImage", "bzimage")
    with pytest.raises(TailorError, match=r"k/config: CONFIG_PVH is not set.*boot the bzImage"):
        qemu.kernel_file(kernel, "pvh")
    (kdir / "config").write_text("CONFIG_64BIT=y\nCONFIG_PVH=y\n")
    assert qemu.kernel_file(kernel) == (kdir / "vmlinux", "pvh")
    assert qemu.kernel_file(kernel, "bzimage") == (kdir / "bzImage", "bzimage")
    with pytest.raises(TailorError, match="boot method 'elf'"):
        qemu.kernel_file(kernel, "elf")
    (kdir / "vmlinux").write_bytes(b"\x7fELF\x02\x01\x01" + bytes(57))
    (kdir / "bzImage").write_bytes(bytes(0x202) + b"HdrS")
    assert qemu.boot_method(kdir / "vmlinux") == "pvh" and qemu.boot_method(kdir / "bzImage") == "bzimage"


def test_console_state_empty_ready_means_init_any_path():
    con = feed_all(ConsoleState(), ["[    0.41] Run /sbin/myapp as init process"])
    assert con.init_path == "/sbin/myapp" and con.ready_index == 0 and con.ready_s == 0.0


def test_hello_world_panic_after_ready_passes():
    con = feed_all(ConsoleState(ready="hello world"), KERNEL + [
        "Run /init as init process", "hello world", "Kernel panic - not syncing: Attempted to kill init! "
        "exitcode=0x00000000"])
    assert con.panic.startswith("Attempted to kill init")
    assert assess(con, "none", 1.0, 30) == console.Verdict("pass")


def test_panic_before_ready_fails_with_reason():
    con = feed_all(ConsoleState(ready="never"), KERNEL + [
        "Run /init as init process", "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100"])
    v = assess(con, "none", 1.0, 30)
    assert v.state == "fail"
    assert v.reason == "init exited before ready (kernel panic: Attempted to kill init! exitcode=0x00000100)"
    con = feed_all(ConsoleState(), KERNEL + ["Kernel panic - not syncing: VFS: Unable to mount root fs"])
    assert assess(con, "none", 1.0, 30).reason == "kernel panic before init: VFS: Unable to mount root fs"


def test_console_probe_expect_then_panic_passes_but_not_the_reverse():
    con = feed_all(ConsoleState(ready="", expect=r"result=\d+"), [
        "Run /init as init process", "result=42", "Kernel panic - not syncing: Attempted to kill init!"])
    assert assess(con, "console", 1.0, 30).state == "pass"
    con = feed_all(ConsoleState(expect=r"result=\d+"), [
        "Run /init as init process", "Kernel panic - not syncing: Attempted to kill init!", "result=42"])
    v = assess(con, "console", 1.0, 30)
    assert v.state == "fail" and "console probe: pattern 'result=\\\\d+' not seen before a kernel panic" in v.reason
    waiting = feed_all(ConsoleState(expect="x{3}"), ["Run /init as init process"])
    assert assess(waiting, "console", 1.0, 30) is None
    v = assess(waiting, "console", 30.0, 30)
    assert v.reason == "console probe: pattern 'x{3}' not seen within 30 s"


def test_network_probe_waits_for_ready_and_fails_on_later_panic():
    con = feed_all(ConsoleState(ready="Ready"), ["Run /init as init process"])
    assert assess(con, "redis", 1.0, 30) is None
    con.feed("Ready", 1.1)
    assert assess(con, "redis", 1.2, 30) == console.Verdict("probe")
    con.feed("Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000b00", 1.3)
    v = assess(con, "redis", 1.4, 30)
    assert v.state == "fail" and v.reason.startswith("init exited after ready (kernel panic: Attempted")


def test_no_output_timeouts_and_exit():
    empty = ConsoleState(ready="x")
    assert assess(empty, "none", 9.9, 30, no_output_s=10) is None
    v = assess(empty, "none", 10.0, 30, no_output_s=10)
    assert v.no_output and v.reason == "no console output within 10 s"
    partial = ConsoleState(ready="x")
    partial.output(0.5)  # bytes without a newline still count as output
    assert assess(partial, "none", 11.0, 30, no_output_s=10) is None
    kernel_only = feed_all(ConsoleState(ready="zzz"), KERNEL)
    assert assess(kernel_only, "none", 30.0, 30).reason == "kernel did not reach init within 30 s"
    at_init = feed_all(ConsoleState(ready="Ready to go"), KERNEL + ["Run /init as init process"])
    assert assess(at_init, "none", 30.0, 30).reason == "ready pattern 'Ready to go' not seen within 30 s"
    assert assess(at_init, "none", 2.0, 30, exit_status=0).reason == "qemu exited with status 0 before ready"
    assert assess(at_init, "none", 2.0, 30, exit_status=-6).reason == "qemu was killed by SIGABRT before ready"


# --------------------------------------------------------------------------
# Probes against real sockets on loopback


class _Server:
    """A threaded TCP server on 127.0.0.1 for one test, shut down afterwards."""

    def __init__(self, handler):
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def fake_redis(corrupt_get=False):
    """A RESP server that knows PING, SET and GET (GET answers garbage with corrupt_get)."""
    store = {}

    class Handler(socketserver.StreamRequestHandler):
        def read_command(self):
            head = self.rfile.readline()
            if not head:
                return None
            assert head.startswith(b"*"), head
            args = []
            for _ in range(int(head[1:])):
                size = int(self.rfile.readline()[1:])
                args.append(self.rfile.read(size + 2)[:-2])
            return args

        def handle(self):
            while (args := self.read_command()) is not None:
                name = args[0].upper()
                if name == b"PING":
                    self.wfile.write(b"+PONG\r\n")
                elif name == b"SET":
                    store[args[1]] = args[2]
                    self.wfile.write(b"+OK\r\n")
                elif name == b"GET":
                    value = b"wrong" if corrupt_get else store.get(args[1])
                    if value is None:
                        self.wfile.write(b"$-1\r\n")
                    else:
                        self.wfile.write(b"$%d\r\n%s\r\n" % (len(value), value))
                else:
                    self.wfile.write(b"-ERR unknown command\r\n")

    return _Server(Handler)


@pytest.fixture
def quick_grace(monkeypatch):
    monkeypatch.setattr(probes, "MISMATCH_GRACE_S", 0.3)


def test_redis_probe_times_out_when_nothing_listens():
    port = qemu.free_port()
    t = time.monotonic()
    with pytest.raises(ProbeFailed) as info:
        probes.probe_redis(port, time.monotonic() + 0.6)
    assert time.monotonic() - t < 3
    assert info.value.last == "Connection refused"
    assert str(info.value).startswith("no answer within")


class _HTTPHandler(http.server.BaseHTTPRequestHandler):
    hosts = []

    def do_GET(self):
        self.hosts.append(self.headers.get("Host"))
        body = b"hello tailor\n" if self.path == "/ok" else b"missing\n"
        self.send_response(200 if self.path == "/ok" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HTTPHandler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_http_probe_passes_and_sends_host(http_server):
    detail = probes.probe_http(http_server, time.monotonic() + 5, path="/ok", status=200, body="hello tailor")
    assert detail == "GET /ok -> 200, 13 bytes"
    assert _HTTPHandler.hosts[-1] == f"127.0.0.1:{http_server}"
    assert probes.probe_http(http_server, time.monotonic() + 5, path="/gone", status=404).startswith("GET /gone -> 404")


def test_http_probe_status_and_body_mismatch(http_server, quick_grace):
    with pytest.raises(ProbeFailed, match="GET /gone returned status 404, expected 200"):
        probes.probe_http(http_server, time.monotonic() + 5, path="/gone")
    with pytest.raises(ProbeFailed, match="GET /ok body does not contain 'bye'"):
        probes.probe_http(http_server, time.monotonic() + 5, path="/ok", body="bye")


def test_http_probe_wrong_answer_at_deadline_is_not_a_timeout(http_server):
    with pytest.raises(ProbeFailed, match="^GET /gone returned status 404, expected 200$") as info:
        probes.probe_http(http_server, time.monotonic() + 0.3, path="/gone")
    assert info.value.last is None


def test_tcp_probe_open_versus_closed_at_once():
    class Hold(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.recv(1)  # keep the connection open until the client goes

    class Slam(socketserver.BaseRequestHandler):
        def handle(self):
            pass  # close at once, like user-mode networking with nothing listening in the guest

    hold, slam = _Server(Hold), _Server(Slam)
    try:
        assert probes.probe_tcp(hold.port, time.monotonic() + 5, hold=0.3) == "connected; still open after 0.3 s"
        with pytest.raises(ProbeFailed) as info:
            probes.probe_tcp(slam.port, time.monotonic() + 0.8, hold=0.3)
        assert info.value.last == "peer closed the connection at once"
    finally:
        hold.close()
        slam.close()


def test_probe_abort_stops_retrying():
    port = qemu.free_port()
    t = time.monotonic()
    with pytest.raises(ProbeFailed, match="^qemu exited with status 1 during the probe$"):
        probes.probe_tcp(port, time.monotonic() + 30, abort=lambda: "qemu exited with status 1 during the probe")
    assert time.monotonic() - t < 1


# --------------------------------------------------------------------------
# run() with a fake qemu (a shell script printing a console transcript)


FAKE_QEMU = r"""#!/bin/sh
# fake qemu for tailor's tests: behaviour chosen by $FAKE_QEMU_MODE
case "$*" in *"-accel kvm"*) accel=kvm ;; *) accel=tcg ;; esac
echo "$$ $accel" >> "$FAKE_QEMU_LOG"
if [ "$accel" = kvm ] && [ "$FAKE_QEMU_KVM" = hang ]; then exec sleep 30; fi
case "$FAKE_QEMU_MODE" in
  hello)
    printf 'Linux version 6.1 (fake)\r\nRun /init as init process\r\nhello from init\r\n'
    printf 'Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000000\r\n'
    exec sleep 30 ;;
  panic)
    printf 'Linux version 6.1 (fake)\r\nRun /init as init process\r\n'
    printf 'Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\r\n'
    exit 0 ;;
  nowww)
    printf 'Linux version 6.1 (fake)\r\nRun /init as init process\r\n'
    printf "httpd: can't change directory to '/www': No such file or directory\r\n"
    printf 'Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\r\n'
    exit 0 ;;
  nonet)
    printf 'Linux version 6.1 (fake)\r\nRun /init as init process\r\n'
    printf "ip: can't find device 'eth0'\r\n"
    printf 'tailor-init: network setup failed (does the kernel have INET and VIRTIO_NET?)\r\n'
    exec sleep 30 ;;
  silent) exec sleep 30 ;;
  error) echo "qemu-system-x86_64: -kernel /x: could not load kernel" >&2; exit 1 ;;
  slow) printf 'Linux version 6.1 (fake)\r\nRun /init as init process\r\n'; exec sleep 30 ;;
  listen)
    port=$(echo "$*" | sed -n 's/.*hostfwd=tcp:127.0.0.1:\([0-9]*\)-.*/\1/p')
    printf 'Linux version 6.1 (fake)\r\nRun /init as init process\r\nlistening\r\n'
    exec python3 -c "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', $port)); s.listen(); time.sleep(30)" ;;
esac
"""


@pytest.fixture
def fake_qemu(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "qemu-system-x86_64"
    script.write_text(FAKE_QEMU)
    script.chmod(0o755)
    log = tmp_path / "fake-qemu.log"
    log.write_text("")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_QEMU_LOG", str(log))
    monkeypatch.delenv("TAILOR_ACCEL", raising=False)
    monkeypatch.setattr(boot, "NO_OUTPUT_S", 0.7)
    kernel, image = tmp_path / "bzImage", tmp_path / "rootfs.cpio"
    kernel.write_bytes(b"k")
    image.write_bytes(b"i")

    def starts():
        return [line.split() for line in log.read_text().splitlines()]

    return kernel, image, starts


def assert_dead(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return
    raise AssertionError(f"fake qemu {pid} is still running")


def test_run_passes_and_kills_vm(tmp_path, fake_qemu, monkeypatch):
    kernel, image, starts = fake_qemu
    monkeypatch.setenv("FAKE_QEMU_MODE", "hello")
    recipe = make_recipe("app: {command: /init}\ntest: {ready: hello from init, memory: 64, timeout: 20}\n",
                         tmp_path)
    t = time.monotonic()
    result = boot.run(recipe, kernel, image, tmp_path / "out", accel="tcg")
    assert time.monotonic() - t < 5
    assert result["pass"] is True and result["reason"] == "" and result["accel"] == "tcg"
    assert result["time_to_init_s"] > 0 and result["time_to_ready_s"] >= result["time_to_init_s"]
    assert result["memory"] == 64 and result["qemu"][0] == "qemu-system-x86_64"
    on_disk = json.loads((tmp_path / "out" / "result.json").read_text())
    assert on_disk == result
    log = (tmp_path / "out" / "console.log").read_text()
    assert "] hello from init\n" in log and "\r" not in log
    [(pid, accel)] = starts()
    assert_dead(pid)


def test_run_failure_writes_result_then_raises(tmp_path, fake_qemu, monkeypatch, capsys):
    kernel, image, starts = fake_qemu
    monkeypatch.setenv("FAKE_QEMU_MODE", "panic")
    recipe = make_recipe("app: {command: /init}\ntest: {ready: never, timeout: 20}\n", tmp_path)
    with pytest.raises(TailorError) as info:
        boot.run(recipe, kernel, image, tmp_path / "out", accel="tcg")
    assert str(info.value) == ("boot test of t failed: init exited before ready "
                               "(kernel panic: Attempted to kill init! exitcode=0x00000100)")
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["pass"] is False and result["reason"].startswith("init exited before ready")
    assert "Attempted to kill init" in capsys.readouterr().err


def test_slim_hint_names_only_paths_the_console_says_are_missing(tmp_path, monkeypatch):
    """A path the app merely mentions (initdb creating its data directory, which slim's record lists because
    the package ships the empty directory) is not blamed; one on a "No such file" line is."""
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "o"))
    recipe = make_recipe("app: {command: /bin/busybox}\nrootfs: {slim: true}\n", tmp_path)
    fakes.slim_dropped(recipe.name, source="packages", dropped=["/var/lib/pg/data/x", "/usr/share/z/a.txt"],
                       dropped_dirs=["/usr/share/z", "/var/lib/pg/data"])
    mentioned = "creating directory /var/lib/pg/data ... ok\nERROR:  VACUUM cannot run inside a transaction block\n"
    hint = boot.slim_hint(recipe, mentioned, boot.ProbeFailed)
    assert "rootfs.slim dropped 2 of the packages' files: set rootfs.slim: false" in hint
    assert "the console names" not in hint
    assert boot.slim_hint(recipe, "Kernel panic - not syncing: System is deadlocked on memory\n",
                          boot.KernelPanicked) == ""  # out of memory (the memory benchmark's small guests)
    no_network = f"{boot.NETWORK_FAILED} (does the kernel have INET and VIRTIO_NET?)\n"
    assert boot.slim_hint(recipe, no_network, boot.ProbeFailed) == ""  # a kernel without the network, not a file
    missing = mentioned + "app: cannot open '/usr/share/z/a.txt': No such file or directory\n"
    assert "the console names /usr/share/z/a.txt, which slim dropped; " in boot.slim_hint(recipe, missing)


def test_a_guest_without_network_fails_its_probe_at_once(tmp_path, fake_qemu, monkeypatch):
    """The init says eth0 could not be set up: the probe stops waiting (it used to wait out the whole test
    timeout, three minutes per such trial kernel in discovery)."""
    kernel, image, starts = fake_qemu
    monkeypatch.setenv("FAKE_QEMU_MODE", "nonet")
    recipe = make_recipe("app: {command: /init, network: true}\ntest: {probe: {type: tcp, port: 80}, timeout: 25}\n",
                         tmp_path)
    with pytest.raises(TailorError) as info:
        boot.run(recipe, kernel, image, tmp_path / "out", accel="tcg")
    assert "test timeout" not in str(info.value)  # it stopped on the init's line, not at the deadline
    assert "tcp probe: the guest has no network, so nothing can answer (tailor-init: network setup failed" \
        in str(info.value)


@pytest.mark.parametrize("dropped, dirs, named", [
    (["/www/index.html", "/www/about.html", "/usr/share/doc/x"], ["/www", "/usr/share/doc"], True),
    (["/usr/share/doc/x"], ["/usr/share/doc"], False),
])
def test_a_failing_slim_root_names_what_slim_dropped_and_the_fix(tmp_path, fake_qemu, monkeypatch, dropped, dirs,
                                                                named):
    kernel, image, starts = fake_qemu
    monkeypatch.setenv("FAKE_QEMU_MODE", "nowww")
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "o"))
    recipe = make_recipe("app: {command: /bin/busybox}\nrootfs: {slim: true}\ntest: {ready: never, timeout: 20}\n",
                         tmp_path)
    fakes.slim_dropped(recipe.name, source="image", dropped=dropped, dropped_dirs=dirs)
    with pytest.raises(TailorError) as info:
        boot.run(recipe, kernel, image, tmp_path / "out", accel="tcg")
    message = str(info.value)
    assert "\n" not in message and message.startswith("boot test of t failed: init exited before ready")
    assert f"(rootfs.slim dropped {len(dropped)} of the image's files: " in message
    assert ("the console names /www, which slim dropped; " in message) is named
    assert "set rootfs.slim: false in " in message and "slim.json lists them)" in message
    # a discovery trial: the image passed on another kernel, so a failure says nothing about slim
    with pytest.raises(TailorError) as info:
        boot.run(recipe, kernel, image, tmp_path / "out", accel="tcg", image_known_good=True)
    assert str(info.value).startswith("boot test of t failed: init exited before ready") and "slim" not in str(info.value)
    # a damaged record: the boot test's verdict stands, the record is named beside it in the same line
    paths.rootfs_slim(recipe.name).write_text(json.dumps({**fakes.slim_dropped(recipe.name).dump(), "dropped": {}}))
    with pytest.raises(TailorError) as info:
        boot.run(recipe, kernel, image, tmp_path / "out", accel="tcg")
    assert "\n" not in str(info.value) and str(info.value).startswith("boot test of t failed: init exited before ready")
    assert f"({paths.rootfs_slim(recipe.name)}: key 'dropped' is dict, expected list; rebuild the root" in str(info.value)
    # not slim: no word about it, whatever an old record says
    plain = make_recipe("app: {command: /bin/busybox}\nrootfs: {slim: false}\ntest: {ready: never, timeout: 20}\n",
                        tmp_path)
    with pytest.raises(TailorError) as info:
        boot.run(plain, kernel, image, tmp_path / "out", accel="tcg")
    assert "slim" not in str(info.value)


def test_run_timeout_kills_vm(tmp_path, fake_qemu, monkeypatch):
    kernel, image, starts = fake_qemu
    monkeypatch.setenv("FAKE_QEMU_MODE", "slow")
    recipe = make_recipe("app: {command: /init}\ntest: {ready: Ready, timeout: 1}\n", tmp_path)
    with pytest.raises(TailorError, match="ready pattern 'Ready' not seen within 1 s"):
        boot.run(recipe, kernel, image, tmp_path / "out", accel="tcg")
    assert_dead(starts()[0][0])


def test_run_qemu_error_names_stderr(tmp_path, fake_qemu, monkeypatch):
    kernel, image, starts = fake_qemu
    monkeypatch.setenv("FAKE_QEMU_MODE", "error")
    recipe = make_recipe("app: {command: /init}\ntest: {timeout: 20}\n", tmp_path)
    with pytest.raises(TailorError, match="qemu exited with status 1 before ready: qemu-system-x86_64: -kernel"):
        boot.run(recipe, kernel, image, tmp_path / "out", accel="tcg")


def test_run_probes_the_forwarded_port(tmp_path, fake_qemu, monkeypatch):
    kernel, image, starts = fake_qemu
    monkeypatch.setenv("FAKE_QEMU_MODE", "listen")
    recipe = make_recipe("app: {command: /init, network: true}\n"
                         "test: {ready: listening, probe: {type: tcp, port: 80}, timeout: 20}\n", tmp_path)
    result = boot.run(recipe, kernel, image, tmp_path / "out", accel="tcg")
    netdev = result["qemu"][result["qemu"].index("-netdev") + 1]
    host_port = netdev.split("hostfwd=tcp:127.0.0.1:")[1].split("-")[0]
    assert result["pass"] is True and result["probe"]["type"] == "tcp"
    assert result["probe"]["detail"].endswith(f"(guest port 80 via 127.0.0.1:{host_port})")
    assert_dead(starts()[0][0])


def test_run_silent_kvm_falls_back_to_tcg(tmp_path, fake_qemu, monkeypatch):
    kernel, image, starts = fake_qemu
    monkeypatch.setenv("FAKE_QEMU_MODE", "hello")
    monkeypatch.setenv("FAKE_QEMU_KVM", "hang")
    recipe = make_recipe("app: {command: /init}\ntest: {timeout: 20}\n", tmp_path)
    result = boot.run(recipe, kernel, image, tmp_path / "out", accel="kvm")
    assert result["pass"] is True and result["accel"] == "tcg" and result["fallback_from_kvm"] is True
    assert result["kvm_failure"] == "no console output within 0.7 s"
    assert [a for _, a in starts()] == ["kvm", "tcg"]
    for pid, _ in starts():
        assert_dead(pid)


def test_run_silent_tcg_fails(tmp_path, fake_qemu, monkeypatch):
    kernel, image, starts = fake_qemu
    monkeypatch.setenv("FAKE_QEMU_MODE", "silent")
    recipe = make_recipe("app: {command: /init}\ntest: {timeout: 20}\n", tmp_path)
    with pytest.raises(TailorError, match="no console output within 0.7 s"):
        boot.run(recipe, kernel, image, tmp_path / "out", accel="tcg")
    assert len(starts()) == 1


def test_run_kills_vm_on_keyboard_interrupt(tmp_path, fake_qemu, monkeypatch):
    kernel, image, starts = fake_qemu
    monkeypatch.setenv("FAKE_QEMU_MODE", "slow")
    recipe = make_recipe("app: {command: /init}\ntest: {ready: never, timeout: 20}\n", tmp_path)
    real_assess = boot.assess

    def interrupting(con, *a, **k):
        if con.init_s is not None:
            raise KeyboardInterrupt
        return real_assess(con, *a, **k)

    monkeypatch.setattr(boot, "assess", interrupting)
    with pytest.raises(KeyboardInterrupt):
        boot.run(recipe, kernel, image, tmp_path / "out", accel="tcg")
    assert_dead(starts()[0][0])
    assert "Run /init as init process" in (tmp_path / "out" / "console.log").read_text()


def test_run_missing_qemu_and_kernel(tmp_path, monkeypatch):
    recipe = make_recipe("app: {command: /init}\n", tmp_path)
    image = tmp_path / "rootfs.cpio"
    image.write_bytes(b"i")
    with pytest.raises(TailorError, match=r"kernel .*/nope not found"):
        boot.run(recipe, tmp_path / "nope", image, tmp_path / "out", accel="tcg")
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"k")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(TailorError, match="^boot test of t failed: qemu-system-x86_64 not found; run ./setup.sh$"):
        boot.run(recipe, kernel, image, tmp_path / "out", accel="tcg")
    assert json.loads((tmp_path / "out" / "result.json").read_text())["pass"] is False


# --------------------------------------------------------------------------
# A real boot


def busybox_initramfs(path: Path) -> Path:
    """A newc initramfs: static busybox, /dev/console and an /init that prints a line and reboots."""
    from tailor.cpio import Entry, device_entry, write_archive

    bb = shutil.which("busybox")
    if bb is None or b"statically linked" not in subprocess.run(["file", "-L", bb], capture_output=True).stdout:
        pytest.skip("needs a static busybox (busybox-static) and file(1)")
    init = (b"#!/bin/busybox sh\n/bin/busybox echo 'tailor-init: exec /bin/busybox'\n"
            b"/bin/busybox echo 'tailor slow test: init is up'\n/bin/busybox sleep 1\n/bin/busybox reboot -f\n")
    d = stat.S_IFDIR | 0o755
    entries = [Entry("bin", d), Entry("bin/busybox", stat.S_IFREG | 0o755, source=bb), Entry("dev", d),
               device_entry("dev/console", 5, 1), Entry("init", stat.S_IFREG | 0o755, data=init),
               Entry("proc", d)]
    write_archive(path, entries)
    return path


@pytest.fixture(scope="module")
def real_kernel(tmp_path_factory, linux_tree) -> dict:
    """hello's kernel (lupine-base: serial console, initramfs), built through doit in a project copy whose
    out/ shares kernel/ with the project's: the kernel the pipeline tests build, compiled once. Returns
    its pointer (bzImage, vmlinux, dir)."""
    project = project_copy(tmp_path_factory.mktemp("boot-project") / "tailor")
    proc = run_doit(project, "kernel:hello")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((project / "out" / "kernels" / "hello.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("method", qemu.BOOT_METHODS)
def test_real_boot(tmp_path, real_kernel, method):
    """lupine-base boots both ways (PVH from the ELF vmlinux, and the bzImage), and its random pool is
    seeded (RDRAND trusted) before init execs the app."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    image = busybox_initramfs(tmp_path / "rootfs.cpio")
    recipe = make_recipe("app: {command: /init}\nrootfs: {format: cpio}\n"
                         "test: {ready: 'tailor slow test: init is up', memory: 128, timeout: 60}\n", tmp_path)
    kernel, how = qemu.kernel_file(real_kernel, method)
    assert how == method and kernel.name == {"pvh": "vmlinux", "bzimage": "bzImage"}[method]
    result = boot.run(recipe, kernel, image, tmp_path / "out")
    assert result["pass"] is True and result["boot_method"] == method
    assert result["time_to_init_s"] > 0
    assert result["time_to_ready_s"] >= result["time_to_init_s"]
    assert result["entropy_before_app"] is True
    assert result["crng_init_s"] < result["time_to_init_s"] <= result["app_exec_s"]
    name = result["qemu"][result["qemu"].index("-name") + 1]
    assert name.startswith("tailor-t-")
    left = subprocess.run(["pgrep", "-f", name], capture_output=True, text=True)
    assert left.stdout == "", f"qemu still running: {left.stdout}"


def fake_memcached(lose_values=False):
    """A memcached text-protocol server knowing set and get (get finds nothing with lose_values)."""
    store = {}

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            while line := self.rfile.readline():
                parts = line.split()
                if parts[0] == b"set":
                    data = self.rfile.read(int(parts[4]) + 2)[:-2]
                    store[parts[1]] = data
                    self.wfile.write(b"STORED\r\n")
                elif parts[0] == b"get":
                    value = None if lose_values else store.get(parts[1])
                    if value is not None:
                        self.wfile.write(b"VALUE %s 0 %d\r\n%s\r\n" % (parts[1], len(value), value))
                    self.wfile.write(b"END\r\n")

    return _Server(Handler)


KV_PROBES = [
    pytest.param(fake_redis, "probe_redis", "PING, SET and GET answered correctly", {"corrupt_get": True},
                 r"^GET returned b'wrong', expected b'[0-9a-f]{16}'$", id="redis"),
    pytest.param(fake_memcached, "probe_memcached", "set and get answered correctly", {"lose_values": True},
                 r"^get returned b'END\\r\\n'", id="memcached"),
]
"""(fake server, probe, its detail on success, how the server misbehaves, the probe's error then)."""


@pytest.mark.parametrize("serve, probe, passed, _bad, _error", KV_PROBES)
def test_key_value_probe_passes_against_a_fake_server(serve, probe, passed, _bad, _error):
    srv = serve()
    try:
        assert getattr(probes, probe)(srv.port, time.monotonic() + 5) == passed
    finally:
        srv.close()


@pytest.mark.parametrize("serve, probe, _passed, bad, error", KV_PROBES)
def test_key_value_probe_reports_a_wrong_answer(quick_grace, serve, probe, _passed, bad, error):
    srv = serve(**bad)
    try:
        with pytest.raises(ProbeFailed, match=error):
            getattr(probes, probe)(srv.port, time.monotonic() + 5)
    finally:
        srv.close()


def test_command_probe_substitutes_the_address_and_checks_output(quick_grace):
    srv = fake_redis()
    script = ("import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2])));"
              "s.sendall(b'*1\\r\\n$4\\r\\nPING\\r\\n'); print(s.recv(100).decode().strip())")
    try:
        detail = probes.probe_command([sys.executable, "-c", script, "{host}", "{port}"], srv.port,
                                    time.monotonic() + 5, expect="^[+]PONG$")
        assert detail.endswith("output matched '^[+]PONG$'")
        with pytest.raises(ProbeFailed, match="output does not match"):
            probes.probe_command([sys.executable, "-c", script, "{host}", "{port}"], srv.port,
                               time.monotonic() + 5, expect="^nope$")
    finally:
        srv.close()


def test_command_probe_retries_a_failing_command_until_the_deadline():
    t = time.monotonic()
    with pytest.raises(ProbeFailed, match="no answer within"):
        probes.probe_command([sys.executable, "-c", "import sys; sys.exit(3)"], 1, time.monotonic() + 1)
    assert time.monotonic() - t < 10


def test_command_probe_names_a_missing_client():
    with pytest.raises(ProbeFailed, match="no-such-client-tailor not found on this host"):
        probes.probe_command(["no-such-client-tailor", "{port}"], 1, time.monotonic() + 1)


def test_ctrl_c_during_a_boot_is_raised_at_a_safe_point():
    import signal as _signal

    before = _signal.getsignal(_signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with qemu.CtrlC():
            os.kill(os.getpid(), _signal.SIGINT)
            time.sleep(0.05)  # the handler only records it; nothing is raised here
            reached = True
            qemu.check_interrupt()
    assert reached
    assert _signal.getsignal(_signal.SIGINT) is before


def test_a_full_ext2_root_is_named_in_the_failure(tmp_path):
    from dataclasses import replace as _replace

    from tailor.boot import full_root_hint
    from tailor.recipe import load

    (tmp_path / "db.yaml").write_text("app: {command: /bin/true}\n")
    r = load(tmp_path / "db.yaml")
    full = "[ 2.1] InnoDB: Error number 28 means 'No space left on device'\n"
    assert "give recipe db a rootfs.size_mib" in full_root_hint(r, full)
    assert full_root_hint(r, "ready\n") == ""
    cpio = _replace(r, rootfs=_replace(r.rootfs, format="cpio"))
    assert full_root_hint(cpio, full) == ""  # an initramfs has no size to raise


# --------------------------------------------------------------------------
# test.exercise: host commands run once each after the probe passed


def _steps(*specs):
    from tailor.recipe import Exercise

    return tuple(Exercise(run=tuple(run), **kw) for run, kw in specs)


def test_exercise_substitutes_the_address_and_checks_status_and_output():
    steps = _steps((["sh", "-c", "echo served {host}:{port}"], {"expect": r"served 127\.0\.0\.1:4242"}),
                   (["sh", "-c", "exit 3"], {"status": 3}))
    assert probes.run_exercise(steps, 4242) == "2 exercise steps passed (sh, sh)"


@pytest.mark.parametrize("spec, message", [
    ((["sh", "-c", "echo oops; exit 1"], {}), "exercise step 1 (sh -c echo oops; exit 1) exited 1, expected 0: oops"),
    ((["sh", "-c", "echo fine"], {"expect": "PONG"}), "exercise step 1 (sh -c echo fine): output does not match 'PONG': fine"),
    ((["sleep", "5"], {"timeout": 1}), "exercise step 1 (sleep 5) did not end within 1 s"),
    ((["no-such-client-xyz"], {}), "exercise step 1: no-such-client-xyz not found on this host; install it"),
])
def test_exercise_names_the_step_that_fails(spec, message):
    with pytest.raises(ProbeFailed) as e:
        probes.run_exercise(_steps(spec), 4242)
    assert str(e.value).startswith(message)


def test_exercise_stops_when_the_vm_is_gone():
    calls = []

    def abort():
        calls.append(1)
        return "qemu exited" if len(calls) == 2 else None

    with pytest.raises(ProbeFailed, match=r"^exercise step 2 \(true\): qemu exited$"):
        probes.run_exercise(_steps((["true"], {}), (["true"], {}), (["false"], {})), 1, abort=abort)
    assert len(calls) == 2  # the third step never ran


def test_exercise_keys_parse_with_defaults():
    text = ("app: {command: redis-server, network: true}\n"
            "test:\n  probe: {type: redis, port: 6379}\n  exercise:\n"
            "    - run: [redis-benchmark, -p, '{port}', -q]\n    - {run: [redis-cli, BGSAVE], timeout: 5, "
            "status: 0, expect: started}\n")
    ex = parse(text, Path("x.yaml")).test.exercise
    assert [e.run[0] for e in ex] == ["redis-benchmark", "redis-cli"]
    assert (ex[0].timeout, ex[0].status, ex[0].expect) == (60, 0, None)
    assert (ex[1].timeout, ex[1].expect) == (5, "started")
