"""Building on many machines (tailor.farm): settings, checks and fallbacks, against real servers.

The parsers are tested on their own; the checks run against a real
redis-server and real distccd helpers on loopback (tailor.farmlab, a second
each to start), and the kbuild hook is tested with a small make tree whose
"kernel" is four C files compiled through ``$(CC)``, so the objects really
travel to a helper. Real kernels built through the farm are in
tests/test_farm_build.py (slow).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAKELINUX

from tailor import elf, farm, farmlab, kernel
from tailor.errors import TailorError

ROOT = Path(__file__).resolve().parent.parent
OTHER_GCC = "/usr/bin/gcc-11"


# ---------------------------------------------------------------------------
# Settings


def test_host_specs_follow_distcc_syntax_and_defaults():
    helpers, randomize = farm.parse_hosts("10.0.0.5 build-2.lan:3700/8,lzo localhost/3 --randomize")
    assert randomize
    assert [(h.host, h.port, h.slots, h.local) for h in helpers] == [
        ("10.0.0.5", 3632, 4, False), ("build-2.lan", 3700, 8, False), ("localhost", 3632, 3, True)]
    assert [h.spec for h in helpers] == ["10.0.0.5", "build-2.lan:3700/8,lzo", "localhost/3"]
    assert farm.parse_hosts(["a/2 b", "c:1"])[0][2].name == "c:1"
    assert farm.parse_hosts("localhost")[0][0].slots == 2
    assert farm.parse_hosts("")[0] == ()


def one_line_error(fn, *args) -> str:
    """The message of the TailorError that ``fn(*args)`` raises, checked to be one line."""
    with pytest.raises(TailorError) as e:
        fn(*args)
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


@pytest.mark.parametrize("spec, says", [
    ("me@box", "ssh helpers are not supported"),
    ("box,cpp", "pump mode (,cpp) is not supported"),
    ("box,gzip", "unknown option 'gzip'"),
    ("box:0", "port must be a number from 1 to 65535"),
    ("box:http", "port must be a number from 1 to 65535"),
    ("box/0", "slots must be a number from 1 to 1024"),
    ("box/many", "slots must be a number from 1 to 1024"),
    ("localhost:3632", "localhost takes no port"),
    ("box box:3632", "box:3632 is listed twice"),
    ("--localslots=4", "not supported"),
    ("+zeroconf", "not supported"),
    ("bad_host!", "not a distcc host"),
])
def test_bad_host_specs_are_one_line_naming_the_setting(spec, says):
    message = one_line_error(farm.parse_hosts, spec)
    assert message.startswith("TAILOR_DISTCC_HOSTS: ") and says in message


def test_remote_urls_of_each_backend():
    r, h, u, f = farm.parse_remotes("redis://user:s3cret@cache:6380/2|read-only=true http://web/ccache "
                                    "redis+unix:/run/redis.sock file:/srv/ccache")
    assert (r.scheme, r.host, r.port, r.db, r.username, r.password) == ("redis", "cache", 6380, 2, "user", "s3cret")
    assert r.url.endswith("|read-only=true")
    assert r.shown == "redis://user:***@cache:6380/2"
    assert (h.host, h.port) == ("web", 80)
    assert (u.scheme, u.path) == ("redis+unix", "/run/redis.sock")
    assert (f.scheme, f.path) == ("file", "/srv/ccache")
    assert farm.parse_remotes("redis://cache")[0].port == 6379
    assert farm.parse_remotes("redis://:pw@cache")[0].shown == "redis://:***@cache"


@pytest.mark.parametrize("url, says", [
    ("cache:6379", "unsupported storage"),
    ("ftp://cache/x", "unsupported storage 'ftp'"),
    ("redis://", "no host"),
    ("redis://cache/db1", "must be a database number"),
    ("redis://cache:99999", "not a URL"),
    ("redis://cache|readonly", "is not NAME=VALUE"),
    ("file:relative/dir", "needs an absolute path"),
])
def test_bad_remote_urls_are_one_line_naming_the_setting(url, says):
    message = one_line_error(farm.parse_remotes, url)
    assert message.startswith("TAILOR_CCACHE_REMOTE: ") and says in message, message


def test_settings_file_and_environment(tmp_path):
    f = tmp_path / "farm.yaml"
    f.write_text("ccache_remote: redis://cache:6379\ndistcc_hosts: [h1/8, 'h2:3700/4']\n")
    s = farm.load_settings({}, f)
    assert [r.host for r in s.remotes] == ["cache"] and [h.name for h in s.helpers] == ["h1:3632", "h2:3700"]
    assert s.remote_origin.endswith("farm.yaml: ccache_remote")
    # The environment wins; an empty variable turns the file's setting off.
    s = farm.load_settings({"TAILOR_DISTCC_HOSTS": "", "TAILOR_CCACHE_REMOTE": "redis://other"}, f)
    assert s.helpers == () and s.remotes[0].host == "other" and s.hosts_origin == "TAILOR_DISTCC_HOSTS"
    assert farm.load_settings({}, tmp_path / "missing.yaml").empty


@pytest.mark.parametrize("text, says", [
    ("distcc_host: h1\n", "'distcc_host': unknown key; the keys are ccache_remote, distcc_hosts"),
    ("distcc_hosts: [h1\n", "farm.yaml:2: not valid YAML"),
    ("- h1\n", "must be a mapping"),
    ("distcc_hosts: {h1: 2}\n", "farm.yaml: distcc_hosts: must be a string or a list of strings"),
    ("distcc_hosts: me@h1\n", "farm.yaml: distcc_hosts: 'me@h1': ssh helpers are not supported"),
])
def test_bad_settings_file_is_one_line_naming_file_and_key(tmp_path, text, says):
    f = tmp_path / "farm.yaml"
    f.write_text(text)
    message = one_line_error(farm.load_settings, {}, f)
    assert says in message, message


def test_nothing_set_is_a_local_build_that_changes_nothing():
    plan = farm.plan(farm.Settings(), say=pytest.fail)
    env, make_vars = {}, ["CC=ccache gcc"]
    plan.apply(env, make_vars)
    assert (env, make_vars, plan.jobs) == ({}, ["CC=ccache gcc"], None)


def test_plan_goes_into_the_kbuild_environment():
    helpers, _ = farm.parse_hosts("h1:3700/8 h2/4")
    plan = farm.Plan(remotes=farm.parse_remotes("redis://cache"), helpers=helpers, jobs=14,
                     compiler="/usr/bin/gcc")
    env, make_vars = {}, ["ARCH=x86_64", "CC=ccache gcc", "HOSTCC=ccache gcc"]
    plan.apply(env, make_vars)
    assert env == {"CCACHE_REMOTE_STORAGE": "redis://cache", "CCACHE_COMPILERCHECK": "content",
                   "DISTCC_HOSTS": "h1:3700/8 h2/4", "CCACHE_PREFIX": "distcc"}
    assert make_vars == ["ARCH=x86_64", "CC=ccache gcc", "HOSTCC=ccache gcc"]
    # Without ccache, distcc is the compiler itself.
    env, make_vars = {}, ["ARCH=x86_64"]
    plan.apply(env, make_vars)
    assert make_vars == ["ARCH=x86_64", "CC=distcc /usr/bin/gcc"] and "CCACHE_PREFIX" not in env
    assert plan.summary() == "distcc on 2 helpers (12 slots), -j14; ccache remote redis://cache"


def test_compiler_ident_reads_the_comment_section(tmp_path):
    obj = farm.probe_local(tmp_path, farm.local_compiler())
    version = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True).stdout.strip()
    assert farm.compiler_ident(obj).startswith("GCC: (") and version in farm.compiler_ident(obj)
    assert b"GCC: (" in elf.section(obj, ".comment") and elf.section(obj, ".bss") == b""
    assert elf.section(b"not an object", ".comment") is None and elf.section(obj, ".no-such") is None
    assert elf.section(obj[:len(obj) // 2], ".comment") is None  # section headers cut off: nothing readable


# ---------------------------------------------------------------------------
# Checks against real servers on loopback


@pytest.fixture(scope="module")
def lab():
    with farmlab.Lab() as lab:
        yield lab


@pytest.fixture(scope="module")
def redis(lab):
    return lab.redis()


@pytest.fixture(scope="module")
def helper(lab):
    return lab.distccd("127.0.0.2", slots=3)


def dead_port(address: str = "127.0.0.1") -> int:
    return farmlab.free_port(address)


def test_redis_check_answers_and_explains(lab, redis):
    assert farm.check_remote(farm.parse_remotes(redis.url)[0]) is None
    assert farm.check_remote(farm.parse_remotes(f"redis://127.0.0.1:{dead_port()}")[0]) == "connection refused"
    secured = lab.redis()
    subprocess.run(["redis-cli", "-p", str(secured.port), "config", "set", "requirepass", "pw"],
                   check=True, capture_output=True)
    assert "NOAUTH" in farm.check_remote(farm.parse_remotes(secured.url)[0])
    assert farm.check_remote(farm.parse_remotes(f"redis://:pw@127.0.0.1:{secured.port}/3")[0]) is None
    assert "WRONGPASS" in farm.check_remote(farm.parse_remotes(f"redis://:no@127.0.0.1:{secured.port}")[0])
    # Something that is not Redis (a distccd) is told apart from a cache server.
    helper = lab.distccd("127.0.0.4")
    why = farm.check_remote(farm.parse_remotes(f"redis://{helper.address}:{helper.port}")[0])
    assert why in ("it closed the connection",) or why.startswith("it is not a Redis server"), why


def plan_lines(settings: farm.Settings) -> tuple[farm.Plan, list[str]]:
    lines: list[str] = []
    return farm.plan(settings, say=lines.append), lines


def test_dead_cache_server_and_dead_helper_are_left_out_with_one_line_each(redis, helper):
    dead_redis, dead_helper = dead_port(), dead_port("127.0.0.3")
    settings = farm.load_settings({
        "TAILOR_CCACHE_REMOTE": f"redis://127.0.0.1:{dead_redis} {redis.url}",
        "TAILOR_DISTCC_HOSTS": f"127.0.0.3:{dead_helper}/2 {helper.spec}"})
    plan, lines = plan_lines(settings)
    assert [r.url for r in plan.remotes] == [redis.url]
    assert [h.spec for h in plan.helpers] == [helper.spec]
    assert plan.jobs == (os.cpu_count() or 1) + 3
    assert lines == [
        f"ccache remote redis://127.0.0.1:{dead_redis} is not usable (connection refused); "
        f"building with the local cache only",
        f"distcc helper 127.0.0.3:{dead_helper} is not reachable (connection refused); building without it",
        f"farm: distcc on 1 helper (3 slots), -j{plan.jobs}; ccache remote {redis.url}",
    ]


def test_localhost_slots_replace_the_local_cores_in_jobs(helper):
    plan, _ = plan_lines(farm.load_settings({"TAILOR_DISTCC_HOSTS": f"localhost/5 {helper.spec}"}))
    assert plan.jobs == 5 + 3 and [h.name for h in plan.helpers] == ["localhost", f"127.0.0.2:{helper.port}"]


def test_no_usable_helper_means_a_plain_local_build():
    plan, lines = plan_lines(farm.load_settings({"TAILOR_DISTCC_HOSTS": f"127.0.0.3:{dead_port('127.0.0.3')}"}))
    env, make_vars = {}, ["CC=ccache gcc"]
    plan.apply(env, make_vars)
    assert plan.helpers == () and plan.jobs is None and env == {}
    assert lines[-1] == "no distcc helper is usable; compiling on this machine only"


def test_helper_that_refuses_this_client_is_left_out(lab):
    picky = lab.distccd("127.0.0.5", allow="127.0.0.99/32")
    plan, lines = plan_lines(farm.load_settings({"TAILOR_DISTCC_HOSTS": picky.spec}))
    assert plan.helpers == ()
    assert re.fullmatch(rf"distcc helper 127\.0\.0\.5:{picky.port} did not take a probe compile \(.+\); "
                        r"building without it", lines[0]), lines


def test_helper_with_another_gcc_is_refused_in_one_line(lab, helper):
    other = lab.distccd("127.0.0.6", compiler=OTHER_GCC)
    settings = farm.load_settings({"TAILOR_DISTCC_HOSTS": f"{helper.spec} {other.spec}"})
    with pytest.raises(TailorError) as e:
        farm.plan(settings, say=lambda line: None)
    mine = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True).stdout.strip()
    theirs = subprocess.run([OTHER_GCC, "-dumpfullversion"], capture_output=True, text=True).stdout.strip()
    msg = str(e.value)
    assert msg.startswith(f"TAILOR_DISTCC_HOSTS: distcc helper 127.0.0.6:{other.port} compiles with 'GCC: (")
    assert f") {theirs}', this machine with 'GCC: (" in msg and msg.count(mine) >= 1
    assert msg.endswith("(mixed compilers give different kernels)") and "\n" not in msg
    # The helper really ran the other compiler: its log names it.
    assert f"cc-127.0.0.6-{other.port}/gcc tailor-probe.c" in other.log_text()


# ---------------------------------------------------------------------------
# The kbuild hook: the fake kernel tree (tests/fakelinux), whose bzImage compiles its C files through $(CC)

C_FILES = sorted(p.relative_to(FAKELINUX).as_posix() for p in FAKELINUX.rglob("*.c"))


@pytest.fixture
def c_tree() -> Path:
    """The fake kernel tree, built in place: its Makefile writes only under O=."""
    return FAKELINUX


def compile_through_tailor(tree: Path, objdir: Path, env: dict, capsys) -> tuple[int, str, str]:
    """kernel.compile_kernel in *objdir* with *env* added to the environment; (objects, log, stderr)."""
    log = objdir.parent / "build.log"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        n = kernel.compile_kernel(tree, objdir, log, enabled=4, label="k")
    return n, log.read_text(), capsys.readouterr().err


def test_kbuild_compiles_on_the_helper_through_ccache(tmp_path, c_tree, helper, capsys):
    env = {"TAILOR_DISTCC_HOSTS": helper.spec, "TAILOR_CCACHE_REMOTE": "",
           "CCACHE_DIR": str(tmp_path / "ccache"), "DISTCC_DIR": str(tmp_path / "distcc")}
    before = farmlab.compiled_jobs(helper)
    n, log, err = compile_through_tailor(c_tree, tmp_path / "farm" / "o", env, capsys)
    assert n == len(C_FILES)
    jobs = (os.cpu_count() or 1) + 3
    assert f"[k] farm: distcc on 1 helper (3 slots), -j{jobs}" in err
    assert f" -j{jobs} bzImage" in log.splitlines()[0] and "CC=ccache gcc" in log.splitlines()[0]
    # The probe and every object were compiled by the helper.
    assert farmlab.compiled_jobs(helper) - before == 1 + len(C_FILES)
    assert all(f"fakelinux/{name}" in helper.log_text() for name in C_FILES)
    # ... and are the objects this machine compiles.
    local = tmp_path / "local" / "o"
    compile_through_tailor(c_tree, local, {"TAILOR_DISTCC_HOSTS": "", "CCACHE_DISABLE": "1"}, capsys)
    for name in C_FILES:
        obj = name.removesuffix(".c") + ".o"
        assert (local / obj).read_bytes() == (tmp_path / "farm" / "o" / obj).read_bytes()


def test_kbuild_with_a_dead_helper_and_cache_server_builds_locally(tmp_path, c_tree, capsys):
    dead = dead_port("127.0.0.3")
    env = {"TAILOR_DISTCC_HOSTS": f"127.0.0.3:{dead}/4", "TAILOR_CCACHE_REMOTE": f"redis://127.0.0.1:{dead_port()}",
           "CCACHE_DIR": str(tmp_path / "ccache")}
    n, log, err = compile_through_tailor(c_tree, tmp_path / "o", env, capsys)
    assert n == len(C_FILES) and (tmp_path / "o" / "arch/x86/boot/bzImage").exists()
    lines = err.strip().splitlines()
    assert sum("is not usable (connection refused); building with the local cache only" in ln for ln in lines) == 1
    assert sum(f"127.0.0.3:{dead} is not reachable (connection refused)" in ln for ln in lines) == 1
    assert f"-j{os.cpu_count() or 1} bzImage" in log.splitlines()[0] and "# farm" not in log


BUILD = """\
import sys
from pathlib import Path
from tailor import kernel
from tailor.errors import TailorError
try:
    kernel.compile_kernel(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), 4, label="k")
except TailorError as e:
    sys.exit(f"tailor: error: {e}")
"""


def test_kbuild_refuses_a_helper_with_another_gcc_before_compiling(tmp_path, c_tree, lab):
    other = lab.distccd("127.0.0.7", compiler=OTHER_GCC)
    env = dict(os.environ, TAILOR_DISTCC_HOSTS=other.spec, CCACHE_DIR=str(tmp_path / "ccache"))
    proc = subprocess.run([sys.executable, "-c", BUILD, str(c_tree), str(tmp_path / "o"), str(tmp_path / "log")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"tailor: error: TAILOR_DISTCC_HOSTS: distcc helper 127.0.0.7:{other.port} "
                                  f"compiles with 'GCC: (")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_lab_stops_its_daemons(tmp_path):
    with farmlab.Lab() as lab:
        r, h = lab.redis(), lab.distccd("127.0.0.2")
        pids = [r.proc.pid, h.proc.pid]
        lab_dir = lab.dir
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not lab_dir.exists()
    assert farm.reach("127.0.0.1", r.port, timeout=0.5) and farm.reach("127.0.0.2", h.port, timeout=0.5)



LAB_SCRIPT = """
import sys, time
from tailor import farmlab
with farmlab.Lab() as lab:
    h = lab.distccd("127.0.0.2")
    print(h.proc.pid, lab.dir, flush=True)
    time.sleep(60)
"""


def test_a_lab_stopped_by_sigterm_stops_its_daemons():
    """SIGTERM to the process that opened a lab (as a CI runner's timeout or ``kill`` sends) still stops
    its distccd and removes its scratch directory; before, the helpers outlived the process."""
    proc = subprocess.Popen([sys.executable, "-c", LAB_SCRIPT], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    pid, lab_dir = proc.stdout.readline().split()
    try:
        assert os.path.isdir(lab_dir)
        proc.terminate()
        proc.wait(30)
        left = subprocess.run(["pgrep", "-f", f"distccd.*{lab_dir}"], capture_output=True, text=True).stdout.split()
        assert not left, f"distccd processes left running: {left}"
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
        assert not os.path.exists(lab_dir)
        assert "KeyboardInterrupt" in proc.stderr.read()
    finally:
        subprocess.run(["pkill", "-f", f"distccd.*{lab_dir}"])
        shutil.rmtree(lab_dir, ignore_errors=True)
