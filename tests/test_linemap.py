"""Line-level mapping: addr2line's output parsed, and traced lines credited to the options of the #if
conditions around them (a small source tree written here; the real probe kernel is the e2e tests')."""

import shutil
import subprocess

import pytest

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


SOCK_C = """\
int sk_alloc(void)
{
	int x = 0;
#ifdef CONFIG_CGROUPS
	cgroup_sk_alloc();
#endif
#if IS_ENABLED(CONFIG_MEMCG) && defined(CONFIG_INET)
	mem_cgroup_sk_alloc();
#else
	x++;
#endif
	return x;
}
"""
HEADER = """\
static inline void hook(void)
{
#ifndef CONFIG_SECURITY
	return;
#else
	security_hook();
#endif
}
"""


def test_options_by_function_credits_the_function_of_each_pc(tmp_path):
    (tmp_path / "net" / "core").mkdir(parents=True)
    (tmp_path / "net" / "core" / "sock.c").write_text(SOCK_C)
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "hook.h").write_text(HEADER)
    lines = {
        1: [("net/core/sock.c", 5)],                                  # under CONFIG_CGROUPS
        2: [("net/core/sock.c", 8)],                                  # MEMCG && INET
        3: [("net/core/sock.c", 10)],                                 # the #else: requires nothing
        4: [("./include/hook.h", 6), ("net/core/sock.c", 3)],         # inlined: SECURITY, called outside any #if
        5: [("/usr/lib/gcc/include/stddef.h", 4), ("../outside.c", 1)],  # outside the tree: skipped
        6: [("net/core/sock.c", 5)],                                  # a pc of no known function
    }
    function = {1: "sk_alloc", 2: "sk_alloc", 3: "sk_alloc", 4: "tcp_connect", 5: "memcpy"}.get
    assert linemap.options_by_function(lines, function, tmp_path) == {
        "CGROUPS": ["sk_alloc"], "INET": ["sk_alloc"], "MEMCG": ["sk_alloc"], "SECURITY": ["tcp_connect"]}


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
    tree = tmp_path / "tree"
    (tree / "net" / "core").mkdir(parents=True)
    (tree / "net" / "core" / "sock.c").write_text(SOCK_C)
    objdir = tmp_path / "kernel" / "build"
    lines = {1: [(f"{objdir}/net/core/sock.c", 5)], 2: [(f"{tmp_path}/elsewhere/sock.c", 5)]}
    assert linemap.options_by_function(lines, {1: "sk_alloc", 2: "x"}.get, tree, objdir) == {"CGROUPS": ["sk_alloc"]}
