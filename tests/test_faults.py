"""Faults: interrupted builds, a full disk, an unwritable out/, runaway VMs, two doit runs at once.

What must hold, whatever happens to a build:

* no partially written file ever stands at a final path, and the rerun of an
  interrupted build gives bytes identical to an uninterrupted build;
* a full disk or an out/ that cannot be written is one clear line (the path
  and what to do), never a traceback, and leaves no partial file behind;
* no qemu process outlives the boot test, whatever ends its parent
  (Ctrl-C, SIGTERM, SIGKILL), and every boot ends within its timeout;
* doit's state database stays intact.

The kernel compile is simulated by the fake kernel tree tests/fakelinux (a
Makefile that compiles a few C files and writes kbuild's outputs, slowed down
where a build is killed midway), so no real kernel is compiled here. Tests
that boot VMs or build real root filesystems are marked ``slow``; they run in
a copy of the project whose out/ shares the kernel builds, the unpacked
source and the .deb cache with the project's out/, like tests/test_pipeline.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAKELINUX, project_copy, wait_until
import yaml

from tailor import kernel, util
from tailor.errors import TailorBug, TailorError
from tailor.recipe import load

ROOT = Path(__file__).resolve().parent.parent
REAL_OUT = ROOT / "out"


# ---------------------------------------------------------------------------
# Helpers


def child_env(out: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TAILOR_OUT", None)
    if out is not None:
        env["TAILOR_OUT"] = str(out)
    return env


def start_python(code: str, *args: str, out: Path) -> subprocess.Popen:
    """Run tailor code in a child process of its own session (so its orphans can be found)."""
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=child_env(out),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> bool:
    """SIGKILL *proc* (only it, not its children) as soon as ``ready()`` is true; False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    raise AssertionError("the kill point was never reached")


def group_members(pgid: int) -> list[int]:
    """The processes of group *pgid* still running (a zombie has exited: it only waits for init to reap it)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError):
            continue
        if int(pgrp) == pgid and state != "Z":
            pids.append(int(stat.parent.name))
    return pids


def reap_group(proc: subprocess.Popen) -> None:
    """After killing *proc*: its orphans (make, the shell) must die on their own, soon."""
    try:
        wait_until(lambda: not group_members(proc.pid), 15, "the children of the killed build to exit")
    finally:
        if group_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def db_intact(path: Path) -> bool:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def lines_of(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()


# ---------------------------------------------------------------------------
# SIGKILL during the kernel compile (the fake kernel tree: a few C files, no real kernel)

IDENTITY = "f00d" * 16
KERNEL_KEY = kernel.kernel_identity(IDENTITY)
"""The kernel identity of IDENTITY built by this host's toolchain: its directory under out/kernel/."""
KERNEL_FILES = ("bzImage", "vmlinux", "System.map", "config")
BUILD_KERNEL = """\
import sys
from pathlib import Path
from tailor import kernel, util
from tailor.errors import TailorError
try:
    kernel.build(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], "fake", jobs=1)
except TailorError as e:
    sys.exit(f"tailor: error: {e}")
"""


OBJECTS = len(list(FAKELINUX.rglob("*.c")))
"""The objects a build of the fake kernel compiles: one per C file."""


@pytest.fixture
def fake_kernel(tmp_path, monkeypatch):
    """(source tree, .config) of the fake kernel, a copy of tests/fakelinux that a test may change;
    its objects go to a ccache of the test's own."""
    tree = Path(shutil.copytree(FAKELINUX, tmp_path / "fake-linux"))
    config = tmp_path / "config"
    config.write_text('CONFIG_NET=y\nCONFIG_INET=y\nCONFIG_CGROUPS=y\nCONFIG_MEMCG=y\nCONFIG_FUTEX=y\n'
                      'CONFIG_PROC_FS=y\nCONFIG_LOG_SHIFT=14\nCONFIG_HOSTNAME="fake"\n# CONFIG_SECURITY is not set\n')
    monkeypatch.setenv("CCACHE_DIR", str(tmp_path / "ccache"))
    return tree, config


def test_sigkill_during_kernel_compile_then_rerun_is_identical(fake_kernel, tmp_path, monkeypatch):
    tree, config = fake_kernel
    monkeypatch.setenv("FAKE_KBUILD_DELAY", "0.05")  # each compile and each piece of a link: time to kill it
    ref_out, out = tmp_path / "ref", tmp_path / "out"
    ref = start_python(BUILD_KERNEL, str(config), str(tree), IDENTITY, out=ref_out)
    assert ref.wait(120) == 0, ref.stderr.read().decode()
    ref_dir = ref_out / "kernel" / KERNEL_KEY[:16]
    want = {name: digest(ref_dir / name) for name in KERNEL_FILES}
    assert all(want.values())

    kdir = out / "kernel" / KERNEL_KEY[:16]

    def compiled(n):  # objects finished so far, over every run: each run continues the last
        return lambda: len(list((kdir / "build").rglob("*.o"))) >= n

    def writing(rel):  # the fake kbuild writes its link outputs in place, piece by piece
        return lambda: (kdir / "build" / rel).exists()

    kill_points = {"first object": compiled(1), "mid compile": compiled(OBJECTS // 2),
                   "late compile": compiled(OBJECTS - 1),
                   "linking": writing("vmlinux"), "bzImage": writing("arch/x86/boot/bzImage"),
                   "copying out": lambda: (kdir / "bzImage").exists()}
    killed = []
    for what, ready in kill_points.items():
        proc = start_python(BUILD_KERNEL, str(config), str(tree), IDENTITY, out=out)
        if kill_when(proc, ready):
            killed.append(what)
        reap_group(proc)
        # Whatever the moment, a final path holds the complete file or nothing.
        for name in KERNEL_FILES:
            assert digest(kdir / name) in (None, want[name]), f"{name} partial after a kill at {what}"
        if (kdir / "kernel.json").exists():
            assert all((kdir / name).exists() for name in KERNEL_FILES)
    assert len(killed) >= 4, f"only killed at {killed}"

    rerun = start_python(BUILD_KERNEL, str(config), str(tree), IDENTITY, out=out)
    assert rerun.wait(120) == 0, rerun.stderr.read().decode()
    assert {name: digest(kdir / name) for name in KERNEL_FILES} == want
    meta = json.loads((kdir / "kernel.json").read_text())
    ref_meta = json.loads((ref_dir / "kernel.json").read_text())
    assert meta["identity"] == IDENTITY and meta["sizes"] == ref_meta["sizes"]
    assert "  LD      vmlinux" in (kdir / "build.log").read_text()


def test_kernel_build_failure_leaves_no_artefacts(fake_kernel, tmp_path):
    tree, config = fake_kernel
    with open(tree / "kernel" / "fork.c", "a") as f:
        f.write('#error "broken"\n')
    proc = start_python(BUILD_KERNEL, str(config), str(tree), IDENTITY, out=tmp_path / "out")
    assert proc.wait(60) == 1
    err = proc.stderr.read().decode()
    assert "Traceback" not in err
    assert re.search(r"kernel build failed \(make exited 2\); full log: \S+build\.log\.partial", err), err
    kdir = tmp_path / "out" / "kernel" / KERNEL_KEY[:16]
    assert not any((kdir / name).exists() for name in KERNEL_FILES + ("kernel.json", "build.log"))


# ---------------------------------------------------------------------------
# An unwritable out/ and a full disk


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, name) -> a fresh tmpfs (root only); every mount is undone after the test."""
    mounted = []

    def mount(size: str, name: str = "mnt") -> Path:
        d = tmp_path / name
        d.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(d)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'not root'})")
        mounted.append(d)
        return d

    yield mount
    for d in reversed(mounted):
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def fill(fs: Path, leave: int) -> None:
    """Fill the file system of *fs* until about *leave* bytes are free."""
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize
    with open(fs / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def run_cli(*args, out: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tailor", *args], cwd=ROOT, env=child_env(out),
                          capture_output=True, text=True, timeout=timeout)


def run_doit(*args, out: Path | None, cwd: Path = ROOT, timeout: float = 3600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "doit", *args], cwd=cwd, env=child_env(out),
                          capture_output=True, text=True, timeout=timeout)


def shared_out(out: Path, *shared: str) -> Path:
    """*out* with the named parts of the project's out/ (src, kernel, cache/debs) linked in."""
    out.mkdir(parents=True, exist_ok=True)
    for name in shared:
        (REAL_OUT / name).mkdir(parents=True, exist_ok=True)
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).symlink_to(REAL_OUT / name)
    return out


def test_read_only_out_is_one_line(tmpfs, linux_tree):
    mnt = tmpfs("4m")
    out = shared_out(mnt / "out", "src")
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    proc = run_cli("config", "hello", out=out)
    assert proc.returncode == 1
    assert lines_of(proc.stderr) == [f"tailor: error: {out}/config/hello: not writable (Read-only file system); "
                                     f"fix the permissions of the output directory"]
    proc = run_doit("config:hello", out=out)
    assert proc.returncode != 0
    assert lines_of(proc.stderr) == [f"tailor: error: {out}/.doit.lock: not writable (Read-only file system); "
                                     f"fix the permissions of the output directory"]


def test_out_behind_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a directory\n")
    out = tmp_path / "file" / "out"
    proc = run_cli("config", "hello", out=out)
    assert proc.returncode == 1
    [line] = lines_of(proc.stderr)
    assert line.startswith(f"tailor: error: {out}") and line.endswith(
        ": a file is in the way (Not a directory); remove it, or set TAILOR_OUT to a directory"), line
    proc = run_doit("config:hello", out=out)
    assert proc.returncode != 0
    assert lines_of(proc.stderr) == [f"tailor: error: {out}: a file is in the way (Not a directory); "
                                     f"remove it, or set TAILOR_OUT to a directory"]


def test_full_disk_in_the_config_stage(tmpfs, linux_tree):
    mnt = tmpfs("2m")
    out = shared_out(mnt / "out", "src")
    assert run_doit("list", out=out).returncode == 0  # the validated recipes and import graph are cached now
    fill(mnt, 16 * 1024)  # the .config alone is ~35 kB
    proc = run_cli("config", "hello", out=out)
    assert proc.returncode == 1
    assert lines_of(proc.stderr) == [f"tailor: error: {out}/config/hello/.config: no space left on device; "
                                     f"free some space (e.g. `doit clean`) and rerun"]
    assert not [p for p in (out / "config").rglob("*") if p.is_file()], "a partial file was left behind"

    # Through doit: the task fails with that line, and doit's own state write (which also finds the
    # disk full) is one line too; the state database stays intact.
    proc = run_doit("config:hello", out=out)
    assert proc.returncode != 0
    err = lines_of(proc.stderr)
    assert f"tailor: error: {out}/config/hello/.config: no space left on device; free some space " \
           f"(e.g. `doit clean`) and rerun" in err
    assert not [p for p in (out / "config").rglob("*") if p.is_file()]
    if (out / ".doit.db").exists():
        assert db_intact(out / ".doit.db")

    (mnt / "filler").unlink()
    proc = run_doit("config:hello", out=out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "config/hello/.config").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.parametrize("free_mib", [2, 18, 22], ids=["while-unpacking", "while-staging", "while-packing"])
def test_full_disk_in_the_rootfs_stage(tmpfs, free_mib):
    mnt = tmpfs("40m")
    out = shared_out(mnt / "out", "cache/debs")
    fill(mnt, free_mib << 20)
    proc = run_cli("rootfs", "hello", out=out)
    assert proc.returncode == 1, proc.stderr
    first = lines_of(proc.stderr)[-1]
    assert first.startswith(f"tailor: error: {out}/rootfs/hello/") and "no space left on device" in first, first
    rdir = out / "rootfs" / "hello"
    assert not [p.name for p in rdir.iterdir()], "a partial image, manifest or work tree was left behind"


# ---------------------------------------------------------------------------
# SIGKILL during the rootfs stage (real packages: slow)

BUILD_ROOTFS = "from tailor import rootfs; from tailor.recipe import find; rootfs.build(find('hello'))"


@pytest.mark.slow
def test_sigkill_during_rootfs_then_rerun_is_identical(tmp_path):
    ref_out = shared_out(tmp_path / "ref", "cache/debs")
    ref = start_python(BUILD_ROOTFS, out=ref_out)
    assert ref.wait(600) == 0, ref.stderr.read().decode()
    ref_dir = ref_out / "rootfs" / "hello"
    want_image, want_manifest = digest(ref_dir / "rootfs.cpio"), digest(ref_dir / "rootfs.json")

    out = shared_out(tmp_path / "out", "cache/debs")
    rdir = out / "rootfs" / "hello"
    started = time.monotonic()
    kill_points = {
        "unpacking packages": lambda: (rdir / "work" / "packages").exists(),
        "staging": lambda: (rdir / "work" / "image").exists(),
        "normalising": lambda: (rdir / "work" / "image" / "init").exists(),
        "packing": lambda: (rdir / "rootfs.cpio.tmp").exists(),
        "before the manifest": lambda: (rdir / "rootfs.cpio").exists() and not (rdir / "rootfs.json").exists(),
        "after 1 s": lambda: time.monotonic() - started > 1.0,
    }
    killed = []
    for what, ready in kill_points.items():
        started = time.monotonic()
        proc = start_python(BUILD_ROOTFS, out=out)
        if kill_when(proc, ready):
            killed.append(what)
        reap_group(proc)
        assert digest(rdir / "rootfs.cpio") in (None, want_image), f"partial image after a kill while {what}"
        if (rdir / "rootfs.json").exists():
            manifest = json.loads((rdir / "rootfs.json").read_text())
            assert manifest["sha256"] == digest(rdir / "rootfs.cpio")
    assert len(killed) >= 4, f"only killed at {killed}"

    rerun = start_python(BUILD_ROOTFS, out=out)
    assert rerun.wait(600) == 0, rerun.stderr.read().decode()
    assert digest(rdir / "rootfs.cpio") == want_image
    assert digest(rdir / "rootfs.json") == want_manifest
    assert sorted(p.name for p in rdir.iterdir()) == ["rootfs.cpio", "rootfs.json", "slim.json"]


# ---------------------------------------------------------------------------
# Real VMs (slow): literal argv and environment, bounded boots, no qemu left behind, concurrent runs

NASTY_ARGS = ["two words", "single'quote", 'double"quote', "$HOME ${PATH} $1", "`reboot -f`", "$(reboot -f)",
              "semi;colon", "pipe|and&", "glob*?[a]", "new\nline", "tab\there", "é 日本", "", "--", "-n",
              "back\\slash", "#hash", "~", "trailing space ", "{a,b}", "!bang", "%s%n"]
NASTY_ENV = {"FOO": "a'b\"c $HOME `x` $(y) ;|&*?\n\té日本 ", "EMPTY": ""}
# Unquoted YAML numbers, which must reach the app as written, not as YAML reads them.
RAW_ARGS = ["0755", "1.10", "0x1F", "1_000", "+1"]

ECHO_SCRIPT = (
    "hex() { printf %s \"$1\" | /bin/busybox od -An -v -tx1 | /bin/busybox tr -d ' \\n'; }; "
    "out=\"ARGV$#\"; for a in \"$@\"; do out=\"$out<$(hex \"$a\")>\"; done; "
    "out=\"$out{$(hex \"$FOO\")}{$(hex \"${EMPTY-unset}\")}\"; echo \"$out\""
)


def expected_echo() -> str:
    args = NASTY_ARGS + RAW_ARGS
    hexed = "".join(f"<{a.encode().hex()}>" for a in args)
    return f"ARGV{len(args)}{hexed}{{{NASTY_ENV['FOO'].encode().hex()}}}{{{NASTY_ENV['EMPTY'].encode().hex()}}}"


def argv_recipe() -> str:
    data = {
        "description": "busybox sh printing its argv and environment in hex, to prove they arrive literally",
        "general": False,
        "kernel": {"base": ["lupine-base"]},
        "rootfs": {"packages": ["hello"], "overlay": []},
        "app": {"command": "/bin/busybox", "args": ["sh", "-c", ECHO_SCRIPT, "argv0"] + NASTY_ARGS,
                "env": NASTY_ENV},
        "test": {"probe": {"type": "console", "expect": "^" + re.escape(expected_echo()) + "$"},
                 "memory": 64, "timeout": 120},
    }
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=1 << 20)
    # Append the unquoted numbers to the args list, as a person would write them.
    head, sep, rest = text.partition("  env:")
    return head + "".join(f"  - {raw}\n" for raw in RAW_ARGS) + sep + rest


SLEEPER = """\
description: prints one line and then sleeps; never shows its ready pattern
general: false
kernel:
  base: [lupine-base]
rootfs:
  packages: [hello]
  overlay: []
app:
  command: /bin/busybox
  args: [sh, -c, "echo sleeper-up; exec /bin/busybox sleep 3600"]
test:
  ready: this line never comes
  memory: 64
  timeout: 8
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory, linux_tree):
    """A copy of the project (plus the argv and sleeper recipes) sharing src/, kernel/ and cache/ with out/."""
    d = project_copy(tmp_path_factory.mktemp("faults-project") / "tailor")
    (d / "recipes" / "argv.yaml").write_text(argv_recipe())
    (d / "recipes" / "sleeper.yaml").write_text(SLEEPER)
    return d


def qemu_of(app: str, parent: int) -> list[int]:
    """pids of the qemu processes started by process *parent* for *app* (its -name marker)."""
    proc = subprocess.run(["pgrep", "-f", f"tailor-{app}-specific-{parent}-"], capture_output=True, text=True)
    return [int(p) for p in proc.stdout.split()]


def no_qemu_within(app: str, parent: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while qemu_of(app, parent):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.slow
def test_args_and_env_reach_the_app_literally(project):
    r = load(project / "recipes" / "argv.yaml")
    assert r.app.args[4:] == tuple(NASTY_ARGS + RAW_ARGS) and dict(r.app.env) == NASTY_ENV
    proc = run_doit("build:argv", out=None, cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((project / "out/boot/argv/result.json").read_text())
    assert result["pass"] is True and result["probe"]["type"] == "console"
    console = (project / "out/boot/argv/console.log").read_text()
    assert re.search(r"^\[[ 0-9.]+\] " + re.escape(expected_echo()) + "$", console, re.M)


@pytest.mark.slow
def test_a_boot_that_never_gets_ready_ends_within_its_timeout(project):
    prep = run_doit("kernel:sleeper", "rootfs:sleeper", out=None, cwd=project)
    assert prep.returncode == 0, prep.stdout + prep.stderr
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "doit", "boot:sleeper"], cwd=project, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 8 + 12, f"a boot with an 8 s timeout took {elapsed:.1f} s"
    assert "Traceback" not in err
    reason = re.search(r"tailor: error: boot test of sleeper failed: (.*)", err)
    assert reason and reason.group(1) in ("ready pattern 'this line never comes' not seen within 8 s",
                                          "kernel did not reach init within 8 s"), err
    result = json.loads((project / "out/boot/sleeper/result.json").read_text())
    assert result["pass"] is False and result["reason"] == reason.group(1)
    assert no_qemu_within("sleeper", proc.pid, 5)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_no_qemu_outlives_an_interrupted_boot(project, sig):
    # the sleeper's boot lasts its whole 8 s timeout, so the signal always lands mid-boot (a redis boot
    # is over in about 2.5 s under TCG: a fixed delay raced it, and a finished boot is up to date)
    prep = run_doit("kernel:sleeper", "rootfs:sleeper", out=None, cwd=project)
    assert prep.returncode == 0, prep.stdout + prep.stderr
    proc = subprocess.Popen([sys.executable, "-m", "doit", "boot:sleeper"], cwd=project, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not qemu_of("sleeper", proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, "qemu never started"
            time.sleep(0.05)
        time.sleep(1.5)  # the guest is booting
        assert proc.poll() is None, "the boot ended before it could be interrupted"
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == (130 if sig == signal.SIGINT else -sig), err
    assert no_qemu_within("sleeper", proc.pid, 5), f"qemu outlived doit after {sig.name}"
    if sig == signal.SIGINT:
        assert lines_of(err)[-1] == "tailor: interrupted; run the same command again to continue"
    result = project / "out/boot/sleeper/result.json"
    if result.exists():  # written atomically: complete, or not there
        json.loads(result.read_text())


@pytest.mark.slow
def test_rerun_after_interrupted_boots_passes_and_state_is_intact(project):
    proc = run_doit("boot:redis", out=None, cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((project / "out/boot/redis/result.json").read_text())["pass"] is True
    assert db_intact(project / "out/.doit.db")


@pytest.mark.slow
def test_two_doit_runs_at_once(project):
    """The second run waits for the first and says so; both succeed and the database stays intact."""
    runs = [subprocess.Popen([sys.executable, "-m", "doit", "--always-execute", "config:redis"], cwd=project,
                             env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [p.communicate(timeout=600) for p in runs]
    assert [p.returncode for p in runs] == [0, 0], results
    waited = [err for _out, err in results if "another doit run is using this project's out/; waiting" in err]
    assert len(waited) == 1, results
    assert db_intact(project / "out/.doit.db")
    assert run_doit("build:redis", out=None, cwd=project).returncode == 0


def test_toolchain_is_part_of_the_kernel_identity(fake_kernel, tmp_path, monkeypatch, capfd):
    """Same config, same toolchain: reused. Same config, another gcc: a new kernel identity, a new
    directory and a real compile; kernel.json records the toolchain that built each."""
    tree, config = fake_kernel
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    old = {"gcc": "gcc (Debian 12.2.0-14+deb12u1) 12.2.0", "binutils": "GNU ld (GNU Binutils for Debian) 2.40"}
    new = dict(old, gcc="gcc (Debian 12.2.0-14+deb12u2) 12.2.0")
    monkeypatch.setattr(kernel, "kernel_toolchain", lambda arch="x86_64": old)
    first = kernel.build(config, tree, IDENTITY, "fake", jobs=2)
    assert first.objects_compiled == OBJECTS and first.toolchain["gcc"]["version"] == old["gcc"]
    log = kernel.kernel_dir(first.kernel_identity) / "build.log"
    stamp = log.stat().st_mtime_ns
    capfd.readouterr()
    assert kernel.build(config, tree, IDENTITY, "fake", jobs=2) == first
    assert "reusing kernel" in capfd.readouterr().err and log.stat().st_mtime_ns == stamp

    monkeypatch.setattr(kernel, "kernel_toolchain", lambda arch="x86_64": new)
    second = kernel.build(config, tree, IDENTITY, "fake", jobs=2)
    assert second.identity == first.identity == IDENTITY  # the config's identity is unchanged
    assert second.kernel_identity != first.kernel_identity
    assert second.objects_compiled == OBJECTS and second.toolchain["gcc"]["version"] == new["gcc"]
    assert kernel.kernel_dir(first.kernel_identity).is_dir()  # the old kernel is not overwritten
    on_disk = json.loads((kernel.kernel_dir(second.kernel_identity) / "kernel.json").read_text())
    assert on_disk["toolchain"] == second.toolchain and on_disk["format"] == "tailor-kernel/1"
    assert on_disk["make"][0] == "make" and "bzImage" in on_disk["make"]
    assert not [a for a in on_disk["make"] if str(tmp_path) in a]  # no machine path in the record


def test_a_staged_build_seeds_the_next_recompiling_only_what_changed(fake_kernel, tmp_path, monkeypatch, capfd):
    """Staged kernels are built in out/kernel/.stage (one fixed path) and end in their own build/. A staged
    tree seeds the next staged build: a copy of it recompiles only what the config changes, and the kernel
    is the one a build from nothing gives; the seed is not touched. A tree built elsewhere does not seed,
    and while another process holds the stage the build runs in its own directory instead of waiting."""
    tree, config = fake_kernel
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    first = kernel.build(config, tree, IDENTITY, "fake", jobs=2, staged=True)
    assert first.objects_compiled == OBJECTS
    seed = kernel.kernel_dir(first.kernel_identity) / "build"
    assert kernel.seeds(seed, kernel.stage_dir()) and kernel.seeded_from(seed) is None
    assert not kernel.stage_dir().exists()
    before = {p: p.stat().st_mtime_ns for p in seed.rglob("*") if p.is_file()}

    # the same options under another identity (as two discovery trials whose resolved configs agree):
    # the copied tree is up to date, nothing recompiles, and the kernel is the first one
    capfd.readouterr()
    same = kernel.build(config, tree, "5eed" * 16, "fake", jobs=2, staged=True, seed=seed)
    assert same.objects_compiled == 0 and "seeded from" in capfd.readouterr().err
    kdir = kernel.kernel_dir(same.kernel_identity)
    for name in KERNEL_FILES:
        assert digest(kdir / name) == digest(kernel.kernel_dir(first.kernel_identity) / name), name
    assert kernel.seeded_from(kdir / "build") == seed and not kernel.stage_dir().exists()
    assert {p: p.stat().st_mtime_ns for p in seed.rglob("*") if p.is_file()} == before

    # another option: the fake kbuild's autoconf.h changes, so (unlike Linux's, which tracks each
    # symbol) every object recompiles; the result equals a build of that config from nothing
    other = tmp_path / "other-config"
    other.write_text(config.read_text().replace("CONFIG_FUTEX=y\n", ""))
    changed = kernel.build(other, tree, "c0ffee00" * 8, "fake", jobs=2, staged=True, seed=seed)
    assert changed.objects_compiled == OBJECTS
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "fresh"))
    fresh = kernel.build(other, tree, "c0ffee00" * 8, "fake", jobs=2)
    assert fresh.sizes == changed.sizes and fresh.kernel_identity == changed.kernel_identity
    unstaged = kernel.kernel_dir(fresh.kernel_identity) / "build"
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))

    # a tree built in its own directory does not seed; a busy stage: the build's own directory, no wait
    capfd.readouterr()
    alone = kernel.build(other, tree, "a1a1" * 16, "fake", jobs=2, staged=True, seed=unstaged)
    assert alone.objects_compiled == OBJECTS and "was not built in the stage" in capfd.readouterr().err
    with util.file_lock(kernel.kernel_root() / f"{kernel.STAGE}.lock", "test"):
        busy = kernel.build(other, tree, "b0b0" * 16, "fake", jobs=2, staged=True, seed=seed)
    assert busy.objects_compiled == OBJECTS and "another staged build is running" in capfd.readouterr().err
    assert not kernel.seeds(kernel.kernel_dir(busy.kernel_identity) / "build", kernel.stage_dir())


def test_kernel_task_is_out_of_date_when_the_toolchain_changes(monkeypatch):
    """doit's up-to-date check for kernel:<app> carries the toolchain, so a gcc upgrade reruns it."""
    from doit.tools import config_changed

    from tailor import toolchain
    from tailor.recipe import find
    from tailor.tasks import build

    def uptodate(tc):
        monkeypatch.setattr(toolchain, "kernel_toolchain", lambda arch="x86_64": tc)
        task = next(t for t in build.kernel_tasks([find("hello")]) if t["name"] == "hello")
        check = task["uptodate"][0]
        assert isinstance(check, config_changed)
        return check._calc_digest()

    a = {"gcc": "gcc 12.2.0-14", "binutils": "ld 2.40"}
    assert uptodate(a) == uptodate(dict(a))
    assert uptodate(a) != uptodate(dict(a, gcc="gcc 12.2.0-15"))
    assert uptodate(a) != uptodate(dict(a, binutils="ld 2.41"))


def test_kbuild_disagreeing_with_the_engine_is_reported_as_a_tailor_bug(fake_kernel, tmp_path):
    """Not the user's fault: a TailorBug (not a TailorError) naming the symbol that differs."""
    tree, config = fake_kernel
    agreeing = (tree / "Makefile").read_text()
    keep = '\t@test -f "$(O)/.config"\n'  # the fake kbuild's olddefconfig keeps the .config as it is
    assert agreeing.count(keep) == 1
    (tree / "Makefile").write_text(agreeing.replace(keep, '\t@echo "CONFIG_EXTRA=y" >> "$(O)/.config"\n'))
    with pytest.raises(TailorBug) as err:
        kernel.olddefconfig_check(tree, tmp_path / "obj", config.read_text())
    assert not isinstance(err.value, TailorError)
    assert "EXTRA" in str(err.value) and "this is a bug in tailor" in str(err.value)
    # the same tree and config, agreeing, passes
    (tree / "Makefile").write_text(agreeing)
    kernel.olddefconfig_check(tree, tmp_path / "obj2", config.read_text())
