"""The pipeline end to end through doit: real kernels, real rootfs images, real VMs (slow).

The tests run doit in a copy of the project (so they can edit recipes) whose
out/ shares the unpacked kernel source, the kernel builds and the .deb cache
with the project's out/: each kernel config is compiled once, for the test
session and for the user.
"""

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import project_copy, run_doit, wait_until

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory, linux_tree):
    """A copy of the project with its own out/, sharing src/, kernel/ and cache/ with the real out/."""
    return project_copy(tmp_path_factory.mktemp("project") / "tailor")


def doit(project, *args, timeout=3600):
    return run_doit(project, *args, timeout=timeout)


@pytest.fixture(scope="module")
def built(project):
    """The project copy with hello and redis built: what the tests that change one part start from, so that
    each passes when run alone (``-k``) as well as after the tests that build them."""
    proc = doit(project, "build:hello", "build:redis")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return project


def ran(proc, task):
    """True when doit executed *task* ('.  task'), False when it was up to date ('-- task')."""
    lines = proc.stdout.splitlines()
    if f".  {task}" in lines:
        return True
    assert f"-- {task}" in lines, f"{task} not in doit's output:\n{proc.stdout}"
    return False


def test_build_hello(project):
    proc = doit(project, "build:hello")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((project / "out/boot/hello/result.json").read_text())
    assert result["pass"] is True and result["accel"] in ("tcg", "kvm")
    assert result["time_to_init_s"] > 0 and result["time_to_ready_s"] >= result["time_to_init_s"]
    console = (project / "out/boot/hello/console.log").read_text()
    assert "Run /init as init process" in console and "Hello, world!" in console
    kernel = json.loads((project / "out/kernels/hello.json").read_text())
    assert Path(kernel["bzImage"]).stat().st_size == kernel["sizes"]["bzImage"] > 100_000


def test_build_redis_answers_from_the_host(project):
    proc = doit(project, "build:redis")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((project / "out/boot/redis/result.json").read_text())
    assert result["pass"] is True
    assert result["probe"]["type"] == "redis" and "GET" in result["probe"]["detail"]
    assert "Ready to accept connections" in (project / "out/boot/redis/console.log").read_text()
    # qemu is gone after the test
    assert subprocess.run(["pgrep", "-f", "tailor-redis-"], capture_output=True).returncode == 1


def test_build_nginx_serves_the_overlay_page(project):
    proc = doit(project, "build:nginx")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((project / "out/boot/nginx/result.json").read_text())
    assert result["pass"] is True and result["probe"]["detail"].startswith("GET / -> 200")


@pytest.mark.parametrize("app", ["hello", "redis", "nginx"])
def test_general_variant_passes_on_the_shared_kernel(project, app):
    proc = doit(project, f"build:{app}@general", "kernel:hello@general")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((project / f"out/boot/{app}@general/result.json").read_text())
    assert result["pass"] is True and result["variant"] == "general"
    kernel = json.loads((project / f"out/kernels/{app}@general.json").read_text())
    hello = json.loads((project / "out/kernels/hello@general.json").read_text())
    assert kernel["identity"] == hello["identity"]  # one general kernel for every recipe


def test_nothing_changed_is_a_noop(built):
    project = built
    proc = doit(project, "build:redis")
    assert proc.returncode == 0, proc.stderr
    for task in ("config:redis", "kernel:redis", "rootfs:redis", "boot:redis"):
        assert not ran(proc, task)
    assert "[config:" not in proc.stderr and "apt" not in proc.stderr  # no Kconfig parse, no apt


def test_rootfs_is_byte_identical_across_builds(built):
    project = built
    image = project / "out/rootfs/redis/rootfs.ext2"
    before = image.read_bytes()
    proc = doit(project, "--always-execute", "rootfs:redis")
    assert proc.returncode == 0, proc.stderr
    assert ran(proc, "rootfs:redis")
    assert image.read_bytes() == before


def test_options_change_rebuilds_only_the_kernel_and_reuses_identical_configs(built):
    project = built
    recipe = project / "recipes/redis.yaml"
    original = recipe.read_text()
    # Give redis exactly hello's kernel: the config changes, and its identity equals hello's,
    # so the kernel task reruns and reuses hello's build instead of compiling.
    head, rest = original.split("  options:\n", 1)
    rest = rest[rest.index("rootfs:"):]
    recipe.write_text(head + rest)
    try:
        proc = doit(project, "kernel:redis", "rootfs:redis")
        assert proc.returncode == 0, proc.stderr
        assert ran(proc, "config:redis") and ran(proc, "kernel:redis")
        assert not ran(proc, "rootfs:redis")
        assert "reusing kernel" in proc.stderr
        hello = json.loads((project / "out/kernels/hello.json").read_text())
        redis = json.loads((project / "out/kernels/redis.json").read_text())
        assert hello["identity"] == redis["identity"]
    finally:
        recipe.write_text(original)
    proc = doit(project, "kernel:redis")
    assert proc.returncode == 0 and ran(proc, "kernel:redis") and "reusing kernel" in proc.stderr


def test_rootfs_change_rebuilds_only_the_rootfs(built):
    project = built
    recipe = project / "recipes/hello.yaml"
    original = recipe.read_text()
    recipe.write_text(original.replace("packages: [hello]", "packages: [hello, netbase]\n  files: [/etc/services]"))
    try:
        proc = doit(project, "build:hello")
        assert proc.returncode == 0, proc.stderr
        assert not ran(proc, "config:hello") and not ran(proc, "kernel:hello")
        assert ran(proc, "rootfs:hello") and ran(proc, "boot:hello")
        manifest = json.loads((project / "out/rootfs/hello/rootfs.json").read_text())
        assert "netbase" in {p["name"] for p in manifest["packages"]}
        listing = subprocess.run(["cpio", "-t"], stdin=open(project / "out/rootfs/hello/rootfs.cpio", "rb"),
                                 capture_output=True, text=True).stdout.split()
        assert "etc/services" in listing
    finally:
        recipe.write_text(original)


def test_overlay_change_rebuilds_the_rootfs(project):
    extra = project / "rootfs/common/etc/tailor-test"
    extra.write_text("x\n")
    try:
        proc = doit(project, "rootfs:hello")
        assert proc.returncode == 0 and ran(proc, "rootfs:hello")
    finally:
        extra.unlink()


def flock_waiters(path: Path) -> set[int]:
    """The pids that wait for an flock of *path*: the lines of /proc/locks marked "->" for its inode."""
    inode = f":{os.stat(path).st_ino}"
    fields = (line.split() for line in Path("/proc/locks").read_text().splitlines())
    return {int(f[5]) for f in fields if len(f) > 6 and f[1:3] == ["->", "FLOCK"] and f[6].endswith(inode)}


def test_second_run_waits_for_the_first(project):
    lock = project / "out/.doit.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    env = dict(os.environ)
    env.pop("TAILOR_OUT", None)
    proc = subprocess.Popen([sys.executable, "-m", "doit", "config:hello"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: proc.poll() is not None or flock_waiters(lock) & {proc.pid}, 120,
                   "the second doit run to wait for the lock on out/.doit.lock")
        assert proc.poll() is None, "the second run must wait while the first holds the project"
    finally:
        os.close(fd)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "another doit run is using this project's out/; waiting" in err


def test_bad_recipe_fails_its_own_tasks_only(project):
    bad = project / "recipes/broken.yaml"
    bad.write_text("app:\n  command: x\nkernel:\n  options: {FUTEX: m}\n")
    try:
        listing = doit(project, "list")
        assert listing.returncode == 0 and "build" in listing.stdout
        proc = doit(project, "config:broken")
        assert proc.returncode != 0
        assert "recipes/broken.yaml:4: kernel.options.FUTEX: `m` (module) is not allowed" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert doit(project, "build:hello").returncode == 0
    finally:
        bad.unlink()


def test_clean_removes_outputs_and_keeps_shared_kernels(project):
    assert doit(project, "build:hello").returncode == 0
    pointer = json.loads((project / "out/kernels/hello.json").read_text())
    proc = doit(project, "clean", "boot:hello", "rootfs:hello", "config:hello")
    assert proc.returncode == 0, proc.stderr
    assert not (project / "out/boot/hello").exists()
    assert not (project / "out/rootfs/hello").exists()
    assert not (project / "out/config/hello").exists()
    assert Path(pointer["bzImage"]).exists()  # kernels are shared; `clean kernel:<app>` drops the pointer
    proc = doit(project, "build:hello")
    assert proc.returncode == 0 and ran(proc, "rootfs:hello") and ran(proc, "boot:hello")


def test_parallel_threads(project):
    proc = doit(project, "-n", "2", "-P", "thread", "--always-execute", "boot:hello", "boot:redis")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ran(proc, "boot:hello") and ran(proc, "boot:redis")
    for app in ("hello", "redis"):
        assert json.loads((project / f"out/boot/{app}/result.json").read_text())["pass"] is True
