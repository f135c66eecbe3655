"""The system call checks of discovery (tailor.enosys): the helper that makes calls fail with ENOSYS, the
image copies that carry it, the kernel source's tables, the checks' plan with a fake boot, and probdd
keeping what the checks found needed."""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tailor import enosys, minimise
from tailor.errors import TailorError
from tailor.util import out_dir

BUSYBOX = Path("/bin/busybox")
TABLE = """\
# comment line
0\tcommon\tread\t\t\tsys_read
28\tcommon\tmadvise\t\t\tsys_madvise
202\tcommon\tfutex\t\t\tsys_futex
213\t64\tepoll_create\t\tsys_epoll_create
228\tcommon\tclock_gettime\t\tsys_clock_gettime
232\tcommon\tepoll_wait\t\tsys_epoll_wait
512\tx32\trt_sigaction\t\tcompat_sys_rt_sigaction
"""
SYS_NI = """\
/* we can't #include <linux/syscalls.h> here */
COND_SYSCALL(epoll_create);
COND_SYSCALL(epoll_wait);
COND_SYSCALL(futex);
COND_SYSCALL(madvise);
COND_SYSCALL_COMPAT(futex);
"""


@pytest.fixture
def srctree(tmp_path):
    tree = tmp_path / "linux"
    (tree / enosys.TABLE).parent.mkdir(parents=True)
    (tree / enosys.TABLE).write_text(TABLE)
    (tree / enosys.SYS_NI).parent.mkdir(parents=True)
    (tree / enosys.SYS_NI).write_text(SYS_NI)
    return tree


@pytest.fixture
def out(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    return tmp_path / "out"


def test_tables_of_the_kernel_source(srctree, tmp_path):
    nums = enosys.syscall_numbers(srctree)
    assert nums == {"read": 0, "madvise": 28, "futex": 202, "epoll_create": 213, "clock_gettime": 228,
                    "epoll_wait": 232}  # x32's left out
    assert enosys.absent_calls(srctree) == {"epoll_create", "epoll_wait", "futex", "madvise"}
    with pytest.raises(TailorError, match=r"syscall_64.tbl: cannot read it \(.*\); is .* a kernel source tree"):
        enosys.syscall_numbers(tmp_path)
    (srctree / enosys.TABLE).write_text("# nothing\n")
    with pytest.raises(TailorError, match=r"syscall_64.tbl: no x86-64 system calls in it"):
        enosys.syscall_numbers(srctree)


def test_the_real_tables_name_epoll_and_not_clock_gettime():
    """On the pinned source (when it is here): EPOLL's calls answer ENOSYS without it, clock_gettime has
    posix-stubs.c's stand-in without POSIX_TIMERS."""
    trees = sorted(out_dir().glob("src/*/tree/kernel/sys_ni.c"))
    if not trees:
        pytest.skip("no kernel source prepared in out/src")
    tree = trees[0].parent.parent
    assert enosys.syscall_numbers(tree)["epoll_wait"] == 232
    absent = enosys.absent_calls(tree)
    assert {"epoll_wait", "futex", "eventfd2", "setuid", "socket"} <= absent and "clock_gettime" not in absent


def test_calls_of_and_cmdline():
    assert enosys.calls_of(["__x64_sys_futex", "do_futex", "__x64_sys_epoll_wait", "__x64_sys_futex"]) == [
        "epoll_wait", "futex"]
    assert enosys.cmdline("cpio", [232, 202]) == "rdinit=/.tailor/enosys tailor_enosys=232,202"
    assert enosys.cmdline("ext2", []) == "init=/.tailor/enosys tailor_enosys="


def _run_as_init(root: Path, value: str | None) -> subprocess.CompletedProcess:
    env = {} if value is None else {"tailor_enosys": value}
    return subprocess.run([shutil.which("chroot") or "/usr/sbin/chroot", str(root), enosys.GUEST], env=env,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(os.geteuid() != 0 or not BUSYBOX.is_file(), reason="needs root (chroot) and busybox-static")
def test_the_helper_makes_the_calls_fail_then_starts_init(out, tmp_path):
    """The compiled helper in a scratch root whose /init is a busybox script: uname(2) (63) failing leaves
    `uname -s` nothing to print; write(2) (1) failing silences the script; an empty list is the control;
    a bad list or none stops with a message before /init runs."""
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / ".tailor").mkdir()
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    shutil.copy(enosys.helper(), root / enosys.GUEST.lstrip("/"))
    (root / "init").write_text("#!/bin/busybox sh\n/bin/busybox uname -s\necho \"init ran with $# args\"\n")
    (root / "init").chmod(0o755)
    ok = _run_as_init(root, "63")
    assert ok.returncode == 0 and ok.stdout.splitlines() == [
        "tailor-enosys: system calls 63 fail with ENOSYS", "", "init ran with 0 args"]
    control = _run_as_init(root, "")
    assert control.stdout.splitlines() == ["tailor-enosys: no system calls fail (control)", "Linux",
                                           "init ran with 0 args"]
    silenced = _run_as_init(root, "1,63")
    assert silenced.stdout == "" and silenced.returncode != 0
    for bad in ("x", "63,", "63,,1", ",63", "1000"):
        proc = _run_as_init(root, bad)
        assert proc.returncode == 1 and "bad tailor_enosys=value" in proc.stdout and "init ran" not in proc.stdout
    proc = _run_as_init(root, None)
    assert proc.returncode == 1 and "no tailor_enosys=in the environment" in proc.stdout


def test_a_cpio_copy_carries_the_helper_after_the_image(out, tmp_path):
    from tailor.cpio import Entry, write_archive

    image = tmp_path / "rootfs.cpio"
    write_archive(image, [Entry("init", stat.S_IFREG | 0o755, data=b"#!/bin/sh\n")])
    copy = enosys.image_with_helper(image, "cpio", tmp_path / "copy" / "root.cpio")
    data, first = copy.read_bytes(), image.read_bytes()
    assert data.startswith(first)  # the image as it was, then a second archive the kernel unpacks after it
    second = data[len(first):]
    assert second.startswith(b"070701") and b".tailor/enosys\0" in second and b"TRAILER!!!" in second
    assert enosys.helper().read_bytes() in second
    assert [p.name for p in copy.parent.iterdir()] == ["root.cpio"]  # no temporary left


@pytest.mark.skipif(shutil.which("mke2fs", path="/usr/sbin:/sbin:/usr/bin:/bin") is None, reason="needs e2fsprogs")
def test_an_ext2_copy_carries_the_helper_and_the_image_is_untouched(out, tmp_path):
    tree = tmp_path / "tree"
    (tree / ".tailor").mkdir(parents=True)  # a network image has /.tailor already
    (tree / "init").write_text("#!/bin/sh\n")
    image = tmp_path / "rootfs.ext2"
    mke2fs = shutil.which("mke2fs", path="/usr/sbin:/sbin:/usr/bin:/bin")
    subprocess.run([mke2fs, "-q", "-t", "ext2", "-d", str(tree), str(image), "4M"], check=True)
    before = image.read_bytes()
    copy = enosys.image_with_helper(image, "ext2", tmp_path / "root.ext2")
    assert image.read_bytes() == before
    debugfs = shutil.which("debugfs", path="/usr/sbin:/sbin:/usr/bin:/bin")
    dumped = tmp_path / "dumped"
    subprocess.run([debugfs, "-R", f"dump {enosys.GUEST} {dumped}", str(copy)], check=True, capture_output=True)
    assert dumped.read_bytes() == enosys.helper().read_bytes()
    stat_out = subprocess.run([debugfs, "-R", f"stat {enosys.GUEST}", str(copy)], capture_output=True, text=True)
    assert "Mode:  0755" in stat_out.stdout and "User:     0" in stat_out.stdout
    # not an ext2 image: one line naming it, and nothing left at the destination
    junk = tmp_path / "junk.ext2"
    junk.write_bytes(b"\0" * 4096)
    with pytest.raises(TailorError, match=r"junk.ext2: debugfs could not add /.tailor/enosys to a copy of it"):
        enosys.image_with_helper(junk, "ext2", tmp_path / "junk-copy.ext2")
    assert not (tmp_path / "junk-copy.ext2").exists() and not list(tmp_path.glob(".junk-copy*"))


class _Recipe:
    """Enough of a recipe for check(): a name, the root format and the test's timeout."""

    class rootfs:
        format = "cpio"

    class test:
        timeout = 60


def test_check_boots_a_control_then_each_option(out, tmp_path, srctree, monkeypatch):
    """A control with nothing failing, then one boot per option with its COND_SYSCALL calls failing;
    calls with a stand-in are left out, an option with only such calls is skipped, the limit comes from
    the control's seconds, and the image copy is gone at the end."""
    image = tmp_path / "rootfs.cpio"
    image.write_bytes(b"image")
    boots = []

    def fake_boot(recipe, kernel, img, outdir, numbers, timeout):
        boots.append((Path(outdir).name, list(numbers), timeout))
        assert img.read_bytes().startswith(b"image")
        return (202 not in numbers, "" if 202 not in numbers else "boot test of app failed: init exited", 2.0)

    monkeypatch.setattr(enosys, "boot_with", fake_boot)
    said = []
    checks = enosys.check(_Recipe, tmp_path / "bzImage", image,
                          {"EPOLL": ["epoll_wait", "epoll_create"], "FUTEX": ["futex"],
                           "POSIX_TIMERS": ["clock_gettime"], "ADVISE_SYSCALLS": ["madvise", "clock_gettime"]},
                          srctree, tmp_path / "work", limit=lambda s: 10 * s, say=said.append)
    assert boots == [("control", [], 60), ("EPOLL", [213, 232], 20.0), ("FUTEX", [202], 20.0),
                     ("ADVISE_SYSCALLS", [28], 20.0)]
    got = {c.option: (c.result, c.calls) for c in checks}
    assert got == {"": ("pass", ()), "EPOLL": ("pass", ("epoll_wait", "epoll_create")), "FUTEX": ("fail", ("futex",)),
                   "POSIX_TIMERS": ("skipped", ("clock_gettime",)), "ADVISE_SYSCALLS": ("pass", ("madvise",))}
    skipped = next(c for c in checks if c.option == "POSIX_TIMERS")
    assert "exist without it (no COND_SYSCALL in kernel/sys_ni.c)" in skipped.reason
    assert any(s.startswith("FUTEX: with futex failing (ENOSYS) the boot test fails") for s in said)
    assert not list((tmp_path / "work").glob("root.*"))


def test_check_concludes_nothing_when_the_control_fails(out, tmp_path, srctree, monkeypatch):
    image = tmp_path / "rootfs.cpio"
    image.write_bytes(b"image")
    monkeypatch.setattr(enosys, "boot_with", lambda *a: (False, "boot test of app failed: no console", 1.0))
    checks = enosys.check(_Recipe, tmp_path / "bzImage", image, {"FUTEX": ["futex"]}, srctree, tmp_path / "w")
    assert [(c.option, c.result) for c in checks] == [("", "fail"), ("FUTEX", "skipped")]
    assert checks[1].reason == "the control boot failed: boot test of app failed: no console"
    # nothing to boot for: no control boot either
    monkeypatch.setattr(enosys, "boot_with", lambda *a: pytest.fail("booted"))
    checks = enosys.check(_Recipe, tmp_path / "bzImage", image, {"POSIX_TIMERS": ["clock_gettime"]}, srctree,
                          tmp_path / "w")
    assert [(c.option, c.result) for c in checks] == [("POSIX_TIMERS", "skipped")]


def test_probdd_keeps_what_is_known_needed_without_trying_it():
    """Needed: A (known from the checks) and C. probdd never builds a set without A, finds C by trials and
    ends 1-minimal over the rest."""
    tried = []

    def oracle(opts):
        tried.append(frozenset(opts))
        return {"A", "C"} <= set(opts)

    prior = {"A": 0.3, "B": 0.05, "C": 0.3, "D": 0.05, "E": 0.1}
    out = minimise.probdd(prior, oracle, needed=["A"])
    assert set(out.kept) == {"A", "C"} and set(out.needed) == {"A", "C"} and out.complete
    assert all("A" in t for t in tried)
    plain = []
    minimise.probdd(prior, lambda o: plain.append(1) or {"A", "C"} <= set(o))
    assert len(tried) < len(plain)  # the check saved the trial that proves A


def test_discovery_checks_only_system_call_options_found_by_object(tmp_path, monkeypatch):
    """discover._check_calls: syscall-class options found by object are checked with every call the app
    phase ran under them; a failure makes the option needed, a pass a survivor, and each reason says so."""
    from types import SimpleNamespace

    from tailor import discover

    asked = {}

    def fake_check(recipe, kernel, image, calls, srctree, workdir, limit=None, say=None):
        asked.update(calls)
        return [enosys.Check("", (), (), "pass", "", 3.0), enosys.Check("EPOLL", ("epoll_wait",), (232,), "fail", "x"),
                enosys.Check("ADVISE_SYSCALLS", ("madvise",), (28,), "pass"),
                enosys.Check("POSIX_TIMERS", ("clock_gettime",), (), "skipped", "stand-in")]

    monkeypatch.setattr(enosys, "check", fake_check)
    run = SimpleNamespace(say=lambda text: None, srctree=tmp_path, dir=tmp_path, boots=2)
    cls = lambda c: SimpleNamespace(cls=c)  # noqa: E731
    classes = {"EPOLL": cls("syscall"), "ADVISE_SYSCALLS": cls("syscall"), "POSIX_TIMERS": cls("syscall"),
               "UNIX": cls("reached"), "MULTIUSER": cls("syscall")}
    by_object = {o: ["f"] for o in ("EPOLL", "ADVISE_SYSCALLS", "POSIX_TIMERS", "UNIX")}  # MULTIUSER: by lines
    app_phase = {"EPOLL": ["__x64_sys_epoll_wait", "ep_poll"], "ADVISE_SYSCALLS": ["__x64_sys_madvise"],
                 "POSIX_TIMERS": ["__x64_sys_clock_gettime"], "UNIX": ["__x64_sys_socketpair"],
                 "MULTIUSER": ["__x64_sys_setuid"]}
    reasons = {o: {"why": "traced"} for o in classes}
    records, needed, survived = discover._check_calls(run, None, tmp_path, tmp_path / "img", list(classes), classes,
                                                      by_object, app_phase, reasons)
    assert asked == {"EPOLL": ["epoll_wait"], "ADVISE_SYSCALLS": ["madvise"], "POSIX_TIMERS": ["clock_gettime"]}
    assert needed == ["EPOLL"] and survived == {"ADVISE_SYSCALLS"} and run.boots == 2 + 3
    assert [r["option"] for r in records] == ["", "EPOLL", "ADVISE_SYSCALLS", "POSIX_TIMERS"]
    assert reasons["EPOLL"]["why"].endswith("epoll_wait failing as on a kernel without it (ENOSYS, on the probe "
                                            "kernel): needed, no trial kernel built")
    assert reasons["ADVISE_SYSCALLS"]["why"].endswith("passes with madvise failing (ENOSYS)")
    assert reasons["POSIX_TIMERS"]["why"] == "traced" and reasons["UNIX"]["why"] == "traced"
    # nothing to check: no boot, no record
    assert discover._check_calls(run, None, tmp_path, tmp_path, ["UNIX"], classes, by_object, app_phase,
                                 reasons) == (None, [], set())
