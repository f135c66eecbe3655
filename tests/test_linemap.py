"""Line-level mapping: addr2line's output parsed, and traced lines credited to the options of the #if
conditions around them (over the C files of tests/fakelinux; the real probe kernel is the e2e tests')."""

import shutil
import subprocess

import pytest
from conftest import FAKELINUX

from tailor import linemap

ADDR2LINE_OUT = """0xffffffff81001000
kernel/fork.c:1201
0xffffffff81002000
./include/linux/sched/mm.h:88 (discriminator 2)
net/core/sock.c:2011
0xffffffff81003000
??:0
0xffffffff81004000
/usr/lib/gcc/x86_64-linux-gnu/12/include/stddef.h:4
"""


def test_parse_addr2line_keeps_inline_chains_and_drops_unknowns():
    assert linemap.parse_addr2line(ADDR2LINE_OUT) == {
        0xffffffff81001000: [("kernel/fork.c", 1201)],
        0xffffffff81002000: [("./include/linux/sched/mm.h", 88), ("net/core/sock.c", 2011)],
        0xffffffff81003000: [],
        0xffffffff81004000: [("/usr/lib/gcc/x86_64-linux-gnu/12/include/stddef.h", 4)],
    }


def line_with(rel: str, text: str) -> int:
    """The 1-based number of the only line of tests/fakelinux/*rel* that holds *text*."""
    lines = (FAKELINUX / rel).read_text().splitlines()
    hits = [n for n, line in enumerate(lines, 1) if text in line]
    assert len(hits) == 1, f"{rel}: {text!r} is on lines {hits}"
    return hits[0]


SOCK = "net/core/sock.c"


def test_options_by_function_credits_the_function_of_each_pc():
    lines = {
        1: [(SOCK, line_with(SOCK, "nr_cgroup_socks++"))],                # under CONFIG_CGROUPS
        2: [(SOCK, line_with(SOCK, "= mem_cgroup_charge_skmem(sk)"))],   # MEMCG && INET
        3: [(SOCK, line_with(SOCK, "charged = 1;"))],                     # the #else: requires nothing
        4: [("./include/linux/security.h", line_with("include/linux/security.h", "return security_check(sk)")),
            ("net/ipv4/tcp.c", line_with("net/ipv4/tcp.c", "if (security_sk_alloc(sk))"))],
        # ^ inlined: SECURITY, called outside any #if
        5: [("/usr/lib/gcc/include/stddef.h", 4), ("../outside.c", 1)],  # outside the tree: skipped
        6: [(SOCK, line_with(SOCK, "nr_cgroup_socks++"))],                # a pc of no known function
    }
    function = {1: "sk_alloc", 2: "sk_alloc", 3: "sk_alloc", 4: "tcp_connect", 5: "memcpy"}.get
    assert linemap.options_by_function(lines, function, FAKELINUX) == {
        "CGROUPS": ["sk_alloc"], "INET": ["sk_alloc"], "MEMCG": ["sk_alloc"], "SECURITY": ["tcp_connect"]}


def test_stubs_are_the_static_inlines_compiled_without_their_option(tmp_path):
    """include/linux/cgroup.h has a stand-in for cgroup_sk_alloc when CGROUPS is off; security.h's
    inline function is compiled whatever SECURITY is (only its body depends on it): not a stub."""
    cache = tmp_path / "stubs.json"
    assert linemap.stubs(FAKELINUX, cache) == {"cgroup_sk_alloc": ["CGROUPS"]}
    assert linemap.stubs(tmp_path / "no-tree", cache) == {"cgroup_sk_alloc": ["CGROUPS"]}  # read back


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("addr2line") is None, reason="needs gcc and binutils")
def test_source_lines_reads_a_real_binarys_line_tables(tmp_path):
    src = tmp_path / "prog.c"
    src.write_text("int f(int x)\n{\n\treturn x * 3;\n}\nint main(void) { return f(2); }\n")
    subprocess.run(["gcc", "-g1", "-O0", "-o", str(tmp_path / "prog"), str(src)], check=True)
    nm = subprocess.run(["nm", str(tmp_path / "prog")], capture_output=True, text=True, check=True).stdout
    f = next(int(line.split()[0], 16) for line in nm.splitlines() if line.endswith(" T f"))
    lines = linemap.source_lines(tmp_path / "prog", [f])
    assert lines[f] and lines[f][0][0].endswith("prog.c") and lines[f][0][1] in (1, 2)


def test_absolute_names_under_the_build_directory_are_the_trees(tmp_path):
    """addr2line joins the line tables' relative names with the compilation directory (kbuild's O=)."""
    objdir = tmp_path / "kernel" / "build"
    n = line_with(SOCK, "nr_cgroup_socks++")
    lines = {1: [(f"{objdir}/{SOCK}", n)], 2: [(f"{tmp_path}/elsewhere/sock.c", n)]}
    assert linemap.options_by_function(lines, {1: "sk_alloc", 2: "x"}.get, FAKELINUX, objdir) == {
        "CGROUPS": ["sk_alloc"]}


def test_a_kernel_built_in_another_checkout_keeps_its_line_tables(tmp_path):
    """A probe kernel built in another checkout (its out/ copied or shared) names that checkout's build
    directory in its line tables: names under any tailor kernel's build directory are the tree's too,
    while other absolute paths stay outside it."""
    objdir = tmp_path / "here" / "out" / "kernel" / "0123456789abcdef" / "build"
    n = line_with(SOCK, "nr_cgroup_socks++")
    there = f"{tmp_path}/there/out/kernel/fedcba9876543210/build/{SOCK}"
    lines = {1: [(there, n)], 2: [(f"{tmp_path}/there/out/kernel/.stage/{SOCK}", n)],
             3: [(f"{tmp_path}/there/src/{SOCK}", n)]}
    assert linemap.options_by_function(lines, {1: "sk_alloc", 2: "sk_clone", 3: "x"}.get, FAKELINUX, objdir) == {
        "CGROUPS": ["sk_alloc", "sk_clone"]}
