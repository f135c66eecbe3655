"""Discovery's logic without kernels or VMs: mapping code to options over tests/fakelinux, the
trace filter, the bisection and minimisation with fake oracles, writing the recipe, and the probe
fragment against the real Kconfig tree."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tailor import discover, kernel, kmap, probe
from tailor.errors import TailorError
from tailor.recipe import load
from tailor.trace import TraceFilter
from tailor.util import enabled_symbols

FAKE = Path(__file__).parent / "fakelinux"


@pytest.fixture
def kb():
    return kmap.Kbuild(FAKE)


@pytest.mark.parametrize("obj, options", [
    ("kernel/sys.o", set()),                          # obj-y, continued line
    ("kernel/fork.o", set()),                         # after a backslash continuation
    ("kernel/posix-timers.o", {"POSIX_TIMERS"}),
    ("kernel/seccomp.o", {"SECCOMP"}),                # ifdef block
    ("kernel/noseccomp.o", set()),                    # its else branch needs nothing
    ("kernel/aio_ipc.o", {"AIO", "SYSVIPC"}),         # ifeq ($(CONFIG_AIO),y) around obj-$(CONFIG_SYSVIPC)
    ("kernel/futex/core.o", {"FUTEX"}),               # obj-y += futex/ then obj-$(CONFIG_FUTEX)
    ("fs/eventpoll.o", {"EPOLL"}),
    ("fs/proc/base.o", {"PROC_FS"}),                  # part of the composite proc.o, directory gate
    ("fs/proc/proc_sysctl.o", {"PROC_FS", "PROC_SYSCTL"}),
    ("fs/pty.o", set()),                              # built by either of two options: neither is needed
    ("net/ipv4/tcp.o", {"NET", "INET"}),              # top Kbuild gate + net/Makefile gate
    ("net/ipv4/syncookies.o", {"NET", "INET", "SYN_COOKIES"}),
    ("lib/string.o", set()),                          # libs-y in the top Makefile
    ("lib/nlattr.o", {"NLATTR"}),
    ("arch/x86/lib/memcpy_64.o", set()),              # libs-y in arch/x86/Makefile
    ("arch/x86/entry/vsyscall/vsyscall_64.o", {"X86_VSYSCALL_EMULATION"}),  # arch/$(SRCARCH)/ and arch Kbuild
])
def test_kbuild_gates(kb, obj, options):
    assert kb.gates(obj) == frozenset(options)


def test_kbuild_unknown_object_is_none(kb):
    assert kb.gates("kernel/generated.o") is None
    assert kb.gates("nowhere/x.o") is None


def test_parse_makefile_conditionals():
    rules = kmap.parse_makefile("ifneq ($(CONFIG_A),)\nobj-y += a.o\nendif\n"
                                "ifndef CONFIG_B\nobj-y += b.o\nendif\n"
                                "ifeq ($(CONFIG_C),n)\nobj-y += c.o\nendif\n"
                                "obj-$(subst m,y,$(CONFIG_D)) += d.o # comment x.o\n")
    assert rules["a.o"][0].gates == {"A"}
    assert rules["b.o"][0].gates == frozenset()
    assert rules["c.o"][0].gates == frozenset()
    assert rules["d.o"][0].gates == {"D"}
    assert "x.o" not in rules


SYSTEM_MAP = """\
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff81000100 t secondary_startup
ffffffff81000200 D some_data
ffffffff81000300 T __x64_sys_epoll_wait
ffffffff81000400 W weak_fn
ffffffff81000500 T _etext
"""


def test_system_map_and_functions():
    sm = kmap.parse_system_map(SYSTEM_MAP)
    assert sm.function(0xffffffff81000000) in ("_stext", "startup_64")
    assert sm.function(0xffffffff81000150) == "secondary_startup"
    assert sm.function(0xffffffff81000250) == "secondary_startup"  # data symbols are not functions
    assert sm.function(0xffffffff81000310) == "__x64_sys_epoll_wait"
    assert sm.function(0xffffffff81000600) is None  # past _etext
    assert sm.function(0x400000) is None
    fns = kmap.functions_of([0xffffffff81000310, 0xffffffff81000320, 0xffffffff81000410], sm)
    assert fns == {"__x64_sys_epoll_wait": 2, "weak_fn": 1}


def test_parse_nm_keeps_text_symbols():
    index = {}
    kmap.parse_nm("fs/eventpoll.o:0000000000000000 T __x64_sys_epoll_wait\n"
                  "fs/eventpoll.o:0000000000000010 t ep_poll\n"
                  "fs/eventpoll.o:0000000000000000 D ep_data\n"
                  "fs/proc/base.o:0000000000000000 t show\n"
                  "fs/sysfs/file.o:0000000000000000 t show\n", index)
    assert index == {"__x64_sys_epoll_wait": ["fs/eventpoll.o"], "ep_poll": ["fs/eventpoll.o"],
                     "show": ["fs/proc/base.o", "fs/sysfs/file.o"]}


def test_weak_system_call_stubs_give_way_to_the_real_entry():
    """kernel/sys_ni.c defines a weak __x64_sys_* for every conditional system call: the strong definition
    is the one linked, so the entry maps to its subsystem's object (it was ambiguous, and so unmapped)."""
    index, weak = {}, {}
    kmap.parse_nm("kernel/sys_ni.o:0000000000000000 W __x64_sys_epoll_wait\n"
                  "kernel/sys_ni.o:0000000000000010 W __x64_sys_io_uring_setup\n"
                  "fs/eventpoll.o:0000000000000000 T __x64_sys_epoll_wait\n", index, weak)
    kmap.merge_weak(index, weak)
    assert index == {"__x64_sys_epoll_wait": ["fs/eventpoll.o"], "__x64_sys_io_uring_setup": ["kernel/sys_ni.o"]}


def test_nm_index_over_real_objects(tmp_path):
    if not shutil.which("gcc"):
        pytest.skip("gcc not installed")
    (tmp_path / "fs").mkdir()
    (tmp_path / "fs" / "a.c").write_text("int a_fn(void) { return 1; }\nstatic int s(void) { return 2; }\n"
                                         "int (*keep)(void) = s;\n")
    (tmp_path / "b.c").write_text("int b_fn(int x) { return x + 1; }\n")
    for src in ("fs/a.c", "b.c"):
        subprocess.run(["gcc", "-c", "-O1", src, "-o", src[:-2] + ".o"], cwd=tmp_path, check=True)
    (tmp_path / "fs" / "comp.o").write_bytes(b"!<thin>\n")  # a composite object: skipped
    cache = tmp_path / "symbols.json"
    index = kmap.nm_index(tmp_path, cache=cache)
    assert index["a_fn"] == ["fs/a.o"] and index["s"] == ["fs/a.o"] and index["b_fn"] == ["b.o"]
    assert "keep" not in index  # data
    assert cache.is_file() and kmap.nm_index(tmp_path / "nonexistent", cache=cache) == index


def test_map_functions_and_candidates(kb):
    index = {"__x64_sys_epoll_wait": ["fs/eventpoll.o"], "ep_poll": ["fs/eventpoll.o"],
             "proc_sys_read": ["fs/proc/proc_sysctl.o"], "tcp_sendmsg": ["net/ipv4/tcp.o"],
             "show": ["fs/proc/base.o", "net/ipv4/tcp.o"],      # ambiguous static: not counted
             "vfs_read": ["fs/read_write.o"], "nla_parse": ["lib/nlattr.o"]}
    fns = {"__x64_sys_epoll_wait": 3, "ep_poll": 5, "proc_sys_read": 1, "tcp_sendmsg": 9, "show": 1,
           "vfs_read": 4, "nla_parse": 1, "not_in_any_object": 1}
    m = discover.map_functions(fns, index, kb.gates)
    assert m.syscalls == ["epoll_wait"]
    assert m.unmapped == 2
    assert m.by_option == {"EPOLL": ["__x64_sys_epoll_wait", "ep_poll"], "PROC_FS": ["proc_sys_read"],
                           "PROC_SYSCTL": ["proc_sys_read"], "INET": ["tcp_sendmsg"], "NET": ["tcp_sendmsg"],
                           "NLATTR": ["nla_parse"]}
    take, skipped = discover.candidates(m.by_option, probe_on={"EPOLL", "PROC_FS", "PROC_SYSCTL", "INET", "NET",
                                                               "NLATTR"},
                                        base_on={"PROC_FS"}, has_prompt=lambda o: o != "NLATTR")
    assert take == ["EPOLL", "INET", "NET", "PROC_SYSCTL"]
    assert skipped == {"NLATTR": "no prompt (only selected by other options)"}
    reason = discover._reason_for("EPOLL", m)
    assert reason.startswith("traced: system calls epoll_wait") and "ep_poll" in reason


def test_the_recipes_setup_steps_and_services_are_traced_as_the_apps_work():
    """mariadb's set-up step (mariadb-install-db) and haproxy's service are the app's work: the trace's
    ``app`` phase starts at the first of them, not at the exec; the init's mounts and network stay ``setup``."""
    import subprocess

    from tailor import rootfs
    from tailor.recipe import find
    from tailor.trace import phase_after

    assert phase_after("[    0.4] Run /init as init process") == "setup"
    assert phase_after("tailor-init: eth0 up, 10.0.2.15/24") is None
    assert phase_after("tailor-init: exec /usr/sbin/nginx") == "app"
    for app, first in (("mariadb", "tailor-init: setup /bin/busybox"),
                       ("haproxy", "tailor-init: starting service ")):
        script = rootfs.init_script(find(app), "/app")
        # the lines the init prints, as the console shows them (each echo of the script, run by sh)
        echoes = [line for line in script.splitlines() if line.startswith('echo "tailor-init: ')]
        printed = [subprocess.run(["sh", "-c", line], capture_output=True, text=True).stdout.strip()
                   for line in echoes]
        phases = [phase_after(line) for line in printed]
        start = next(i for i, p in enumerate(phases) if p == "app")
        assert printed[start].startswith(first), printed
        assert all(p is None for p in phases[:start])


def test_trace_filter_keeps_unique_kernel_pcs_by_phase():
    f = TraceFilter()
    stream = (b"translate_block tb:0x7f00, pc:0xfff0, tb_code:0x7f01\n"           # firmware: not kernel
              b"translate_block tb:0x7f02, pc:0xffffffff81000000, tb_code:0x7f03\n"
              b"translate_block tb:0x7f04, pc:0xffffffff81000010, tb_code:0x7f05\n")
    for i in range(0, len(stream), 7):  # any chunking
        f.feed(stream[i:i + 7])
    f.enter("setup")
    f.feed(b"123@1.5:translate_block tb:0x1, pc:0xffffffff81000010, tb_code:0x2\n"   # seen at boot already
           b"translate_block tb:0x1, pc:0x401000, tb_code:0x2\n"                     # user space
           b"translate_block tb:0x1, pc:0xffffffff81000030, tb_code:0x2\n")
    f.enter("app")
    f.enter("setup")  # never back to an earlier phase
    f.feed(b"translate_block tb:0x1, pc:0xffffffff81000020, tb_code:0x2")            # no newline yet
    f.finish()
    assert f.pcs == {0xffffffff81000000: "boot", 0xffffffff81000010: "boot", 0xffffffff81000030: "setup",
                     0xffffffff81000020: "app"}
    assert f.lines == 7 and f.count("app") == 1 and f.count("setup") == 1 and not f.truncated
    # the order first seen is kept: which function ran just before each was first entered
    from tailor.trace import entries
    names = {0xffffffff81000000: "start_kernel", 0xffffffff81000010: "do_mount",
             0xffffffff81000030: "sk_alloc", 0xffffffff81000020: "cgroup_sk_alloc"}
    assert entries(f.pcs, names.get) == {"start_kernel": (None, "boot"), "do_mount": ("start_kernel", "boot"),
                                         "sk_alloc": ("do_mount", "setup"), "cgroup_sk_alloc": ("sk_alloc", "app")}


def test_trace_filter_caps():
    f = TraceFilter(cap=2)
    f.feed(b"".join(b"translate_block pc:0x%x\n" % (0xffffffff81000000 + i) for i in range(5)))
    assert len(f.pcs) == 2 and f.truncated and f.bytes_read > 0


SUMMARY = {"format": discover.FORMAT, "app": "newapp", "recipe": "recipes/newapp.yaml", "base": ["lupine-base"],
           "probe_kernel": "p" * 64, "kernel": "k" * 64, "trials": 1, "options": [
               {"option": "NET", "from": "trace", "class": "syscall", "why": "traced: system calls socket, bind"},
               {"option": "NETDEVICES", "from": "deps", "class": "deps", "why": "needed by VIRTIO_NET (resolve: deps)"}],
           "not_taken": [], "minimised": True, "dropped_by_minimise": ["EPOLL"], "kept_by_deps": ["NETDEVICES"],
           "untried": [], "minimise_trials": 3, "budget": 40, "syscalls": 40, "builds": 1, "boots": 2,
           "seconds": 9.5}


def test_write_recipe_adds_options_with_reasons(tmp_path):
    path = tmp_path / "newapp.yaml"
    path.write_text("# a new app\ndescription: x\nkernel:\n  base: [lupine-base]\napp:\n  command: /bin/true\n")
    discover.write_recipe(load(path), SUMMARY)
    text = path.read_text()
    assert "    NET: y  # trace: traced: system calls socket, bind\n" in text
    r = load(path)
    assert r.kernel.options == (("NET", "y"), ("NETDEVICES", "y")) and r.kernel.base == ("lupine-base",)
    with pytest.raises(TailorError, match="already has 2 options"):
        discover.write_recipe(r, SUMMARY)


def test_write_recipe_without_kernel_section(tmp_path):
    path = tmp_path / "newapp.yaml"
    path.write_text("app:\n  command: /bin/true\n")
    discover.write_recipe(load(path), SUMMARY)
    assert load(path).kernel.options == (("NET", "y"), ("NETDEVICES", "y"))


def test_options_yaml_renders_as_yaml():
    import yaml

    from tailor.rootfs import render

    data = yaml.safe_load(render("discover-options.yaml.j2", s=SUMMARY))
    assert data["search"] is None  # a record from before --search
    assert yaml.safe_load(render("discover-options.yaml.j2", s={**SUMMARY, "search": "probdd"}))["search"] == "probdd"
    assert [o["option"] for o in data["options"]] == ["NET", "NETDEVICES"]
    assert [o["class"] for o in data["options"]] == ["syscall", "deps"]
    assert all(o["why"] for o in data["options"]) and data["not_taken"] == []
    assert data["dropped_by_minimise"] == ["EPOLL"] and data["kept_by_deps"] == ["NETDEVICES"]
    assert data["minimise_trials"] == 3 and data["budget"] == 40


def test_probe_fragment_resolves_on_lupine_base(ktree):
    """The committed probe fragment: every option exists, and lupine-base + probe resolves in deps
    mode without undoing lupine-base (no SMP, no modules, no PCI)."""
    from tailor.config import layers
    from tailor.kconfig import parse_fragment, resolve
    from tailor.recipe import find

    opts = probe.options()
    assert len(opts) > 50 and {"NET", "EPOLL", "FUTEX", "PROC_FS", "VIRTIO_NET"} <= set(opts)
    result = resolve(ktree, layers(find("hello"))[:-1] + [parse_fragment(probe.PROBE_FRAGMENT)], "deps")
    on = enabled_symbols(result.config)
    assert set(opts) <= on and not {"SMP", "MODULES", "PCI", "ACPI"} & on


def test_beyond_drops_what_the_null_app_ran():
    by_option = {"AIO": ["exit_aio"], "EPOLL": ["__x64_sys_epoll_wait", "ep_poll"], "FUTEX": ["exit_robust_list",
                                                                                          "futex_wait"]}
    assert discover.beyond(by_option, {"exit_aio", "exit_robust_list"}) == {
        "EPOLL": ["__x64_sys_epoll_wait", "ep_poll"], "FUTEX": ["futex_wait"]}


def test_null_recipe_keeps_the_kernel_and_runs_small_programs():
    from tailor.recipe import find

    hello = find("hello")
    null = discover.null_recipe(hello)
    assert null.kernel == hello.kernel and null.name == discover.NULL_APP and not null.app.network
    assert null.test.ready == discover.NULL_DONE and null.test.probe.type == "none"
    assert "coreutils" in null.rootfs.packages and "/bin/true" in null.app.args[-1]


def test_comparison_table_from_the_measured_rows():
    """docs/discovery.md's table comes from benchmarks/discover.py's rows (the committed snapshot), not from
    out/: each app against the recipe's options as measured, Lupine's count, the hand-found kernel, and why
    each difference (a row from before the benchmark recorded reasons says so)."""
    from tailor.templates import render

    row = {"app": "redis", "discovered": ["NET", "ADVISE_SYSCALLS"], "recipe": ["NET", "EPOLL"], "bzImage": 1_400_000,
           "trials": 3, "builds": 2, "minimised": True, "search": None, "hand_found": None, "measured": "2026-12-03",
           "options": [{"option": "NET", "from": "trace", "class": "syscall", "why": "traced: system calls socket"},
                       {"option": "ADVISE_SYSCALLS", "from": "trace", "class": "syscall",
                        "why": "traced: system calls madvise"}]}
    older = {"app": "nginx", "discovered": ["NET", "UNIX"], "recipe": ["NET"], "bzImage": 1_360_000, "trials": 22,
             "builds": 21, "minimised": True, "search": "probdd", "classes": {"NET": "syscall", "UNIX": "reached"},
             "hand_found": {"bzImage": 1_700_000, "syscalls": 263, "identity": "x"}}
    rows = discover.comparison_rows([row, older])
    assert [r["app"] for r in rows] == ["nginx", "redis"]
    text = render("docs/discovery-table.md.j2", discovery_table=rows, dir="measurements/2026-12-03")
    assert "| redis | 2 | 2 |" in text
    assert "| 1.40 MB, minimised (ddmin), 3 trials (2 kernels compiled) | not built |" in text
    assert "| 1.36 MB, minimised (probdd), 22 trials (21 kernels compiled) | 1.70 MB: discovered 0.80x |" in text
    assert "- redis, ADVISE_SYSCALLS (only discovered; trace): traced: system calls madvise\n" in text
    assert ("- redis, EPOLL (only in the recipe, whose comment says: redis's event loop (ae_epoll)): the discovered "
            "kernel passes the boot test and its exercise without it") in text
    # an app whose recipe has no exercise (recorded by the benchmark, or read from the recipe for older rows)
    plain = discover.comparison_rows([{**row, "app": "httpd", "exercise": 0}])
    plain_text = render("docs/discovery-table.md.j2", discovery_table=plain, dir="x")
    assert ("- httpd, EPOLL (only in the recipe, whose comment says: the event MPM): the discovered kernel passes "
            "the boot test without it") in plain_text
    unknown = discover.comparison_rows([{**row, "app": "not-a-recipe", "exercise": 0}])
    assert ("- not-a-recipe, EPOLL (only in the recipe): the discovered kernel passes the boot test without it"
            in render("docs/discovery-table.md.j2", discovery_table=unknown, dir="x"))
    assert "where the recipe has one (none), its exercise" in plain_text
    assert discover.comparison_rows([{**row, "app": "php"}])[0]["exercise"] == 0  # php's recipe has none
    assert "- nginx, UNIX (only discovered): class reached; its reason is not in this measurement" in text
    said = discover.comparison_rows([{**row, "fallbacks": ["native AIO failed: falling back", "no `x`"]}])
    assert ("- redis on its discovered kernel (and not on the probe kernel) logged: `native AIO failed: falling back`; "
            "`no 'x'`\n") in render("docs/discovery-table.md.j2", discovery_table=said, dir="x")
    assert "logged:" not in text  # rows without (or from before recording) fallbacks say nothing
    assert "No minimised discovery" in render("docs/discovery-table.md.j2", discovery_table=[], dir="x")


def test_fifo_reader_filters_a_real_fifo(tmp_path):
    import os

    from tailor.trace import FifoReader

    fifo = tmp_path / "trace.fifo"
    os.mkfifo(fifo)
    f = TraceFilter()
    reader = FifoReader(fifo, f)
    reader.start()
    with open(fifo, "wb") as w:  # as qemu does: open for writing, write lines, close
        w.write(b"translate_block tb:0x1, pc:0xffffffff81000000, tb_code:0x2\n" * 1000)
        w.flush()
        reader.enter("app")
        w.write(b"translate_block tb:0x1, pc:0xffffffff81000040, tb_code:0x2\n")
    reader.stop()
    assert not reader.is_alive()
    assert f.pcs == {0xffffffff81000000: "boot", 0xffffffff81000040: "app"} and f.lines == 1001


def test_qemu_command_takes_trace_arguments():
    from tailor.qemu import qemu_command

    cmd = qemu_command("bzImage", "rootfs.cpio", "cpio", 64, "nokaslr", "tcg", None, False,
                       extra=("-d", "trace:translate_block", "-D", "/tmp/x.fifo"))
    assert cmd[cmd.index("-d") + 1] == "trace:translate_block" and cmd[cmd.index("-D") + 1] == "/tmp/x.fifo"
    assert cmd[-2] == "-append" and cmd[-1].endswith(" nokaslr")


def test_a_traced_initramfs_unpacks_into_ramfs_and_an_ext2_root_mounts_as_itself():
    """``rootfstype=ramfs`` keeps the probe kernel's initramfs uncapped; on an ext2 root it would mount an
    empty ramfs as / (the app's init missing), so it is only added for cpio."""
    from tailor.trace import trace_cmdline

    assert trace_cmdline("cpio").split() == ["nokaslr", "tailor.trace", "rootfstype=ramfs"]
    assert trace_cmdline("ext2").split() == ["nokaslr", "tailor.trace"]


def test_classify_on_a_recorded_trace():
    """The evidence of redis's traced boot test on the probe kernel (tests/data/discover/redis-evidence.json:
    each option's functions, where each was first entered from and in which phase, the null app's functions
    among those callers, the header stubs): the classes follow from the trace alone."""
    data = json.loads((Path(__file__).parent / "data" / "discover" / "redis-evidence.json").read_text())
    entered = {f: tuple(v) for f, v in data["entered"].items()}
    got = {o: discover.classify(fns, entered, set(data["common"]), data["stubs"]).cls
           for o, fns in data["evidence"].items()}
    assert got == data["classes"]  # the recorded run's classes, reproduced
    # what the trace shows, in words: redis's own system calls ...
    assert {o for o, c in got.items() if c == "syscall"} >= {"EPOLL", "FUTEX", "NET", "POSIX_TIMERS", "ADVISE_SYSCALLS"}
    # ... hooks that compile to stubs without their option (LSM, socket cgroup data, userfaultfd on madvise)
    assert {"SECURITY", "SOCK_CGROUP_DATA", "USERFAULTFD"} <= {o for o, c in got.items() if c == "hook"}
    # ... code only the init's set-up ran (its `ip` commands: netlink attributes, AF_UNIX, multicast joins)
    assert {"UNIX", "NLATTR", "IP_MULTICAST"} <= {o for o, c in got.items() if c == "setup"}
    # ... and the network card and TCP, reached from the app's work
    assert got["VIRTIO_NET"] == got["INET"] == "reached"
    order = discover.minimise_groups({o: got[o] for o in ("UNIX", "SECURITY", "INET", "EPOLL")})
    assert order == [["UNIX"], ["SECURITY"], ["INET"], ["EPOLL"]]
    # within a class, the options whose code barely ran come first (ddmin drops them together)
    reached = {o: c for o, c in got.items() if c == "reached"}
    weights = {o: len(data["evidence"][o]) for o in reached}
    (group,) = discover.minimise_groups(reached, weights)
    assert [weights[o] for o in group] == sorted(weights.values())
    assert group.index("INET") > len(group) // 2  # TCP's hundreds of functions: in the half tried last


def test_classify_rules_on_small_cases():
    common = {"do_exit"}
    entered = {"__x64_sys_epoll_wait": ("entry_SYSCALL_64", "app"), "do_epoll_wait": ("__x64_sys_epoll_wait", "app"),
               "taskstats_exit": ("do_exit", "app"), "unix_create": ("__sock_create", "setup"),
               "cgroup_sk_alloc": ("sk_alloc", "app"), "start_xmit": ("dev_hard_start_xmit", "app")}
    assert discover.classify(["__x64_sys_epoll_wait", "do_epoll_wait"], entered, common).cls == "syscall"
    assert discover.classify(["taskstats_exit"], entered, common).cls == "hook"
    assert discover.classify(["unix_create"], entered, common).cls == "setup"
    assert discover.classify(["cgroup_sk_alloc"], entered, common, {"cgroup_sk_alloc": ["SOCK_CGROUP_DATA"]}).cls == "hook"
    assert discover.classify(["cgroup_sk_alloc"], entered, common).cls == "reached"
    assert discover.classify(["start_xmit"], entered, common).cls == "reached"
    # a system call entry first run by the init's set-up is not the app's
    assert discover.classify(["__x64_sys_socket"], {"__x64_sys_socket": ("x", "setup")}, common).cls == "setup"


@pytest.mark.parametrize("recipe_timeout, passed, limit", [
    (180, [], 180),             # nothing passed yet: the recipe's own limit
    (180, [0.0], 180),          # a trial that took another's result (no boot) says nothing
    (180, [1.2, 2.0], 30),      # fast boots: the floor
    (180, [1.2, 7.35], 74),     # ten times the slowest passing boot, rounded up
    (60, [9.0], 60),            # never more than the recipe allows
])
def test_trial_timeout(recipe_timeout, passed, limit):
    assert discover.trial_timeout(recipe_timeout, passed) == limit


def test_app_work_counts_only_the_apps_own_code():
    evidence = {"NET_NS": ["net_ns_get", "sock_net_set"], "EPOLL": ["do_epoll_wait", "ep_poll", "ep_insert"]}
    app_phase = {"EPOLL": ["do_epoll_wait", "ep_poll", "not_evidence"], "INET": ["tcp_v4_rcv"]}
    assert discover.app_work(evidence, app_phase) == {"NET_NS": 0, "EPOLL": 2}


def test_app_work_odds_replayed_on_recorded_minimisations():
    """probdd against an oracle that needs what the real runs found needed (tests/data/discover/minimised.json),
    with odds from all traced functions against odds from the app's own code: the same sets, fewer trials."""
    from tailor.minimise import Memo, priors, probdd

    data = json.loads((Path(__file__).parent / "data" / "discover" / "minimised.json").read_text())["apps"]
    trials = {}
    for app, d in data.items():
        needed = set(d["needed"])
        weights = {"all": {o: len(f) for o, f in d["evidence"].items()},
                   "app": discover.app_work(d["evidence"], d["app_phase"])}
        for name, w in weights.items():
            out = probdd(priors(d["classes"], w), Memo(lambda opts: needed <= set(opts), monotonic=True))
            assert set(out.kept) == needed and out.complete, (app, name)
            trials[app, name] = out.trials
        assert trials[app, "app"] <= trials[app, "all"], app
    assert sum(trials[a, "app"] for a in data) < sum(trials[a, "all"] for a in data)
    assert max(trials[a, "app"] for a in data) <= 14  # nginx: 21 with every traced function counted


def test_a_trial_is_seeded_from_the_nearest_earlier_trial_kernel(tmp_path):
    """The next trial's build starts from the object tree of the run's kernel whose .config differs
    least (the latest of equals); trees that are gone, or were not built in the stage, are passed over."""
    def tree(name, text, stage=kernel.stage_dir()):
        d = tmp_path / name
        d.mkdir()
        (d / ".config").write_text(text)
        (d / kernel.BUILT_IN).write_text(f"{stage}\n")
        return d

    base = "CONFIG_NET=y\nCONFIG_INET=y\nCONFIG_EPOLL=y\n# CONFIG_FUTEX is not set\n"
    run = object.__new__(discover._Run)
    run.trees = []
    assert run.nearest_tree(base) is None
    run.trees.append((1, discover.config_lines(base + "CONFIG_FUTEX=y\nCONFIG_UNIX=y\n"), tree("1", base)))
    run.trees.append((2, discover.config_lines("CONFIG_NET=y\n"), tree("2", "CONFIG_NET=y\n")))
    run.trees.append((3, discover.config_lines(base.replace("CONFIG_EPOLL=y", "# CONFIG_EPOLL is not set")),
                      tmp_path / "gone"))
    run.trees.append((5, discover.config_lines(base), tree("elsewhere", base, stage=tmp_path / "other")))
    assert run.nearest_tree(base) == (1, tmp_path / "1")  # the same config, but not built in the stage
    run.trees.append((4, discover.config_lines(base + "CONFIG_FUTEX=y\nCONFIG_SHMEM=y\n"), tree("4", base)))
    assert run.nearest_tree(base) == (4, tmp_path / "4")
    # comments and blank lines are not assignments
    assert discover.config_lines("#\n# Networking\n#\n\nCONFIG_NET=y\n") == {"CONFIG_NET=y"}


MARIADB_CONSOLE = """\
[    2.101] tailor-init: exec /usr/sbin/mariadbd
[    2.727] 2026-12-04  6:57:23 0 [Warning] mariadbd: io_uring_queue_init() failed with ENOSYS: check seccomp filters
[    2.732] create_uring failed: falling back to libaio
[    2.733] Warning: io_setup(2048) returned Function not implemented (errno: 38). See man 3 io_setup.
[    2.733] 2026-12-04  6:57:23 0 [Warning] InnoDB: native AIO failed: falling back to innodb_use_native_aio=OFF
[    4.335] 2026-12-04  6:57:24 0 [Warning] InnoDB: Failed to set memory to MADV_DONTDUMP: Function not implemented ptr 0x772bef000000 size 16777216
[    4.336] 2026-12-04  6:57:24 0 [Warning] InnoDB: Failed to set memory to MADV_DONTDUMP: Function not implemented ptr 0x772bee000000 size 16777216
[    5.010] 2026-12-04  6:57:25 0 [Note] mariadbd: ready for connections.
"""


def test_fallback_lines_are_what_the_app_did_without_on_the_discovered_kernel_only():
    """The console lines in which the app says a call is missing and it does without, repeats collapsed
    (clock, thread, addresses), less what it said on the probe kernel too (there io_uring was missing as well)."""
    probe = "[    2.5] 2026-12-04  6:40:01 0 [Warning] mariadbd: io_uring_queue_init() failed with ENOSYS: check seccomp filters\n"
    lines = discover.fallback_lines(MARIADB_CONSOLE, probe)
    assert lines == ["create_uring failed: falling back to libaio",
                     "Warning: io_setup(2048) returned Function not implemented (errno: 38). See man 3 io_setup.",
                     "[Warning] InnoDB: native AIO failed: falling back to innodb_use_native_aio=OFF",
                     "[Warning] InnoDB: Failed to set memory to MADV_DONTDUMP: Function not implemented ptr 0x... size ..."]
    assert discover.fallback_lines(MARIADB_CONSOLE, MARIADB_CONSOLE) == []
    assert len(discover.fallback_lines(MARIADB_CONSOLE, most=2)) == 2
    assert discover.discovered_fallbacks("no-such-app", "0" * 64) == []  # no record: nothing to say
