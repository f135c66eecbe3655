"""Tests for tailor.ifdef: #if condition stacks, expressions and the options a source line needs.

The snippets are written in the style of Linux kernel source. Lines under test
carry a marker comment (``/* @name */``); :func:`line_of` finds its number, so
the snippets can change without renumbering the assertions.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tailor.ifdef import (  # noqa: E402
    And, Not, Option, Or, Unknown, alternatives, conditions, evaluate, forbidden_options,
    options_for_line, parse_expr, required_options,
)
from tailor.util import out_dir  # noqa: E402


def line_of(text: str, marker: str) -> int:
    """The 1-based number of the only line of *text* holding ``/* @marker */``."""
    hits = [n for n, line in enumerate(text.splitlines(), 1) if f"/* @{marker} */" in line]
    assert len(hits) == 1, f"marker {marker!r} found {len(hits)} times"
    return hits[0]


def opts(text: str, marker: str) -> tuple[set[str], set[str], list[set[str]]]:
    return options_for_line(text, line_of(text, marker))


# --------------------------------------------------------------------------
# Nested groups, #elif and #else

NESTED = """\
// SPDX-License-Identifier: GPL-2.0
#include <linux/percpu.h>

static int plain_counter;			/* @plain */

#ifdef CONFIG_SMP
static DEFINE_PER_CPU(int, cpu_hits);		/* @smp */
#if defined(CONFIG_NUMA) && IS_ENABLED(CONFIG_SCHED_DEBUG)
static int numa_debug;				/* @numa_debug */
#ifdef CONFIG_PROC_FS
static int numa_proc;				/* @numa_proc */
#endif /* CONFIG_PROC_FS */
#elif IS_ENABLED(CONFIG_HOTPLUG_CPU)		/* @elif_line */
static int hotplug_only;			/* @hotplug */
#else
static int neither;				/* @neither */
#endif
#else /* !CONFIG_SMP */
static int up_only;				/* @up */
#endif /* CONFIG_SMP */

void sched_tail(void)				/* @tail */
{
}
"""


def test_line_outside_any_condition_needs_nothing():
    assert conditions(NESTED).at(line_of(NESTED, "plain")) == ()
    assert opts(NESTED, "plain") == (set(), set(), [])
    assert opts(NESTED, "tail") == (set(), set(), [])


def test_nested_ifdef_and_if_accumulate_required_options():
    assert opts(NESTED, "smp") == ({"SMP"}, set(), [])
    assert opts(NESTED, "numa_debug") == ({"SMP", "NUMA", "SCHED_DEBUG"}, set(), [])
    assert opts(NESTED, "numa_proc") == ({"SMP", "NUMA", "SCHED_DEBUG", "PROC_FS"}, set(), [])


def test_elif_branch_is_its_condition_and_not_the_earlier_ones():
    conds = conditions(NESTED).at(line_of(NESTED, "hotplug"))
    assert conds == (
        Option("SMP"),
        And((Not(And((Option("NUMA"), Option("SCHED_DEBUG", "enabled")))),
             Option("HOTPLUG_CPU", "enabled"))),
    )
    # !(NUMA && SCHED_DEBUG) forbids neither option on its own
    assert opts(NESTED, "hotplug") == ({"SMP", "HOTPLUG_CPU"}, set(), [])
    assert evaluate(And(conds), {"SMP", "HOTPLUG_CPU", "NUMA"}) is True
    assert evaluate(And(conds), {"SMP", "HOTPLUG_CPU", "NUMA", "SCHED_DEBUG"}) is False


def test_else_branches_forbid_the_earlier_conditions():
    assert opts(NESTED, "neither") == ({"SMP"}, {"HOTPLUG_CPU"}, [])
    assert opts(NESTED, "up") == (set(), {"SMP"}, [])


def test_directive_lines_get_the_conditions_outside_their_group():
    assert conditions(NESTED).at(line_of(NESTED, "elif_line")) == (Option("SMP"),)


# --------------------------------------------------------------------------
# Disjunctions, #ifndef and modules

CHOICES = """\
#if defined(CONFIG_X86_64) || defined(CONFIG_ARM64)
static bool wide_pointers = true;		/* @wide */
#ifndef CONFIG_COMPAT
static bool no_compat;				/* @nocompat */
#endif
#endif

#if IS_ENABLED(CONFIG_IPV6) || IS_BUILTIN(CONFIG_INET)
#ifdef CONFIG_INET
int inet_and_maybe_v6;				/* @inet */
#endif
#endif

#if !defined(CONFIG_SLOB) || defined(CONFIG_SLUB_DEBUG)
int implication;				/* @implies */
#endif

#if IS_BUILTIN(CONFIG_NETFILTER) || IS_MODULE(CONFIG_NETFILTER)
int nf_hooks;					/* @module_or_builtin */
#endif
#if defined(CONFIG_NF_CONNTRACK_MODULE)
int conntrack_as_module;			/* @module_only */
#endif

#ifdef CONFIG_NET
#elifdef CONFIG_UNIX
int unix_without_net;				/* @elifdef */
#elifndef CONFIG_INET
int neither_net_nor_unix;			/* @elifndef */
#endif
"""


def test_or_of_options_is_an_alternative_group():
    assert opts(CHOICES, "wide") == (set(), set(), [{"X86_64", "ARM64"}])


def test_ifndef_nested_in_alternatives():
    assert opts(CHOICES, "nocompat") == (set(), {"COMPAT"}, [{"X86_64", "ARM64"}])


def test_group_met_by_a_required_option_is_dropped():
    assert opts(CHOICES, "inet") == ({"INET"}, set(), [])


def test_disjunction_with_a_negative_branch_gives_no_group():
    assert opts(CHOICES, "implies") == (set(), set(), [])


def test_modules_are_always_off():
    assert opts(CHOICES, "module_or_builtin") == ({"NETFILTER"}, set(), [])
    assert parse_expr("defined(CONFIG_NF_CONNTRACK_MODULE)") == Option("NF_CONNTRACK", "module")
    conds = conditions(CHOICES).at(line_of(CHOICES, "module_only"))
    assert evaluate(And(conds), {"NF_CONNTRACK"}) is False


def test_elifdef_and_elifndef():
    assert opts(CHOICES, "elifdef") == ({"UNIX"}, {"NET"}, [])
    assert opts(CHOICES, "elifndef") == (set(), {"NET", "UNIX", "INET"}, [])


# --------------------------------------------------------------------------
# Continuations, comments and strings

LEXICAL = """\
#if defined(CONFIG_NET) && \\
    (defined(CONFIG_INET) || \\
     defined(CONFIG_UNIX))
int sock_stuff;					/* @continued */
#endif
/*
 * Once this file had
 * #endif
 * #ifdef CONFIG_BOGUS
 * here; a comment is no directive.
 */
int after_comment;				/* @after_comment */
#  ifdef   CONFIG_PRINTK	/* blanks after the hash */
int with_printk;				/* @printk */
#  endif
#if IS_ENABLED(CONFIG_BLOCK) /* the block layer,
				  #else is still a comment */ && defined(CONFIG_BLK_DEV)
int blockdev;					/* @blk */
#else
int noblock;					/* @noblk */
#endif
// #ifdef CONFIG_LINE_COMMENT
int line_comment;				/* @line_comment */
#ifdef CONFIG_DEBUG_FS
static const char *banner = "/* not a comment";
static const char quote = '"';
#endif
int after_string;				/* @after_string */
#ifdef CONFIG_TRACING // a line comment continued \\
#endif
int traced;					/* @spliced_comment */
#endif
#if 0
int dead;					/* @if0 */
#else
int alive;					/* @if0_else */
#endif
"""


def test_backslash_continued_condition():
    assert opts(LEXICAL, "continued") == ({"NET"}, set(), [{"INET", "UNIX"}])


def test_directives_inside_comments_are_ignored():
    assert conditions(LEXICAL).at(line_of(LEXICAL, "after_comment")) == ()
    assert opts(LEXICAL, "line_comment") == (set(), set(), [])


def test_blanks_after_hash():
    assert opts(LEXICAL, "printk") == ({"PRINTK"}, set(), [])


def test_comment_spanning_lines_inside_a_directive():
    assert opts(LEXICAL, "blk") == ({"BLOCK", "BLK_DEV"}, set(), [])
    noblk = And(conditions(LEXICAL).at(line_of(LEXICAL, "noblk")))
    assert evaluate(noblk, {"BLOCK"}) is True
    assert evaluate(noblk, {"BLOCK", "BLK_DEV"}) is False


def test_comment_opener_inside_a_string_is_text():
    assert conditions(LEXICAL).at(line_of(LEXICAL, "after_string")) == ()


def test_continued_line_comment_swallows_the_next_line():
    assert opts(LEXICAL, "spliced_comment") == ({"TRACING"}, set(), [])


def test_if_0():
    assert conditions(LEXICAL).at(line_of(LEXICAL, "if0")) == (Or(()),)
    assert evaluate(And(conditions(LEXICAL).at(line_of(LEXICAL, "if0"))), {"X"}) is False
    assert opts(LEXICAL, "if0_else") == (set(), set(), [])
    assert evaluate(And(conditions(LEXICAL).at(line_of(LEXICAL, "if0_else"))), set()) is True


# --------------------------------------------------------------------------
# Expressions the parser does not understand

UNKNOWN = """\
#if BITS_PER_LONG == 64 && defined(CONFIG_X)
int wide_x;					/* @bits */
#endif
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 1, 0)
int new_api;					/* @version */
#elif defined(CONFIG_OLD_API)
int old_api;					/* @old_api */
#endif
#if defined(__GNUC__) || defined(CONFIG_Y)
int gnu_or_y;					/* @gnu */
#endif
#if !(defined(CONFIG_A) || IS_ENABLED(CONFIG_B)) && __has_attribute(__fallthrough__)
int neither_a_nor_b;				/* @de_morgan */
#endif
"""


def test_unknown_and_option_still_requires_the_option():
    conds = conditions(UNKNOWN).at(line_of(UNKNOWN, "bits"))
    assert conds == (And((Unknown("BITS_PER_LONG == 64"), Option("X"))),)
    assert opts(UNKNOWN, "bits") == ({"X"}, set(), [])
    assert evaluate(conds[0], {"X"}) is None
    assert evaluate(conds[0], set()) is False


def test_unknown_alone_contributes_nothing():
    assert conditions(UNKNOWN).at(line_of(UNKNOWN, "version")) == (
        Unknown("LINUX_VERSION_CODE >= KERNEL_VERSION(6, 1, 0)"),)
    assert opts(UNKNOWN, "version") == (set(), set(), [])
    assert opts(UNKNOWN, "old_api") == ({"OLD_API"}, set(), [])


def test_unknown_in_a_disjunction_gives_no_group():
    assert opts(UNKNOWN, "gnu") == (set(), set(), [])
    conds = conditions(UNKNOWN).at(line_of(UNKNOWN, "gnu"))
    assert evaluate(conds[0], {"Y"}) is True
    assert evaluate(conds[0], set()) is None


def test_negated_disjunction_forbids_each_option():
    assert opts(UNKNOWN, "de_morgan") == (set(), {"A", "B"}, [])


@pytest.mark.parametrize("text, expected", [
    ("defined(CONFIG_A)", Option("A")),
    ("defined CONFIG_A", Option("A")),
    ("IS_ENABLED(CONFIG_A)", Option("A", "enabled")),
    ("IS_BUILTIN(CONFIG_A)", Option("A", "builtin")),
    ("IS_REACHABLE(CONFIG_A)", Option("A", "reachable")),
    ("IS_MODULE(CONFIG_A)", Option("A", "module")),
    ("CONFIG_A", Option("A", "value")),
    ("!defined(CONFIG_A) && (CONFIG_B || IS_ENABLED(CONFIG_C))",
     And((Not(Option("A")), Or((Option("B", "value"), Option("C", "enabled")))))),
    ("defined(CONFIG_A) || defined(CONFIG_B) || defined(CONFIG_C)",
     Or((Option("A"), Option("B"), Option("C")))),
    ("0", Or(())),
    ("1", And(())),
    ("0x10UL", And(())),
    ("CONFIG_NR_CPUS > 1", Unknown("CONFIG_NR_CPUS > 1")),
    ("__GNUC__", Unknown("__GNUC__")),
    ("defined(DEBUG)", Unknown("defined(DEBUG)")),
    ("__GNUC__ > 4 || (__GNUC__ == 4 && __GNUC_MINOR__ >= 8)",
     Or((Unknown("__GNUC__ > 4"), And((Unknown("__GNUC__ == 4"), Unknown("__GNUC_MINOR__ >= 8")))))),
    ("-1 ? defined(CONFIG_A) : 0", Unknown("-1 ? defined(CONFIG_A) : 0")),
    ("IS_ENABLED(CONFIG_A) && __has_builtin(__builtin_foo)",
     And((Option("A", "enabled"), Unknown("__has_builtin(__builtin_foo)")))),
])
def test_parse_expr(text, expected):
    assert parse_expr(text) == expected


@pytest.mark.parametrize("text", [
    "", "defined(", "defined(CONFIG_A", "defined (", "(CONFIG_A", "CONFIG_A)", "&&", "1 +", "CONFIG_A CONFIG_B", "@", "# if",
    "(" * 5000 + "1" + ")" * 5000,
])
def test_malformed_expression_is_unknown(text):
    assert parse_expr(text) == Unknown(text.strip())


def test_analysis_functions_take_a_list_of_conditions():
    conds = [parse_expr("defined(CONFIG_A) || defined(CONFIG_B)"), Not(Option("C")), Option("D", "enabled")]
    assert required_options(conds) == {"D"}
    assert forbidden_options(conds) == {"C"}
    assert alternatives(conds) == [{"A", "B"}]
    assert evaluate(And(tuple(conds)), {"B", "D"}) is True
    assert evaluate(And(tuple(conds)), {"B", "C", "D"}) is False


def test_constants_and_modules_fold():
    # a false term makes a conjunction false: nothing can be required of a line never compiled
    assert required_options([parse_expr("IS_MODULE(CONFIG_X) && defined(CONFIG_Y)")]) == set()
    assert required_options([parse_expr("0 && defined(CONFIG_Y)")]) == set()
    # a false branch of a disjunction drops out, a true one satisfies it
    assert required_options([parse_expr("defined(CONFIG_A) || 0")]) == {"A"}
    assert alternatives([parse_expr("defined(CONFIG_A) || 1 || defined(CONFIG_B)")]) == []
    assert forbidden_options([parse_expr("!(defined(CONFIG_A) || IS_MODULE(CONFIG_B))")]) == {"A"}


def test_unbalanced_directives_do_not_crash():
    text = "#endif\n#else\nint a; /* @a */\n#if defined(CONFIG_Z)\nint z; /* @z */\n"
    assert opts(text, "a") == (set(), set(), [])
    assert opts(text, "z") == ({"Z"}, set(), [])
    assert conditions(text).at(10_000) == (Option("Z"),)


def test_options_for_line_reads_a_path_and_notices_changes(tmp_path):
    path = tmp_path / "demo.c"
    path.write_text("#ifdef CONFIG_FOO\nint foo;\n#endif\n")
    assert options_for_line(path, 2) == ({"FOO"}, set(), [])
    assert options_for_line(str(path), 2) == ({"FOO"}, set(), [])
    path.write_text("#ifndef CONFIG_BARBAZ\nint foo;\n#endif\n")
    assert options_for_line(path, 2) == (set(), {"BARBAZ"}, [])
    required, _, _ = options_for_line(path, 2)
    required.add("MUTATED")  # the answer is the caller's to change, not the cache's
    assert options_for_line(path, 2) == (set(), {"BARBAZ"}, [])


# --------------------------------------------------------------------------
# The real kernel source


@pytest.mark.slow
def test_real_kernel_sources():
    trees = sorted(p.parent.parent for p in out_dir().glob("src/*/tree/kernel/fork.c"))
    if not trees:
        pytest.skip(f"no prepared kernel source tree under {out_dir() / 'src'} (run `doit source`)")
    tree = trees[0]
    files = sorted((tree / "kernel").rglob("*.c")) + sorted((tree / "net" / "core").rglob("*.c"))
    assert len(files) > 100
    for path in files:
        found = conditions(path.read_text(encoding="utf-8", errors="replace"))
        assert found.conds[-1] == (), f"{path}: a group is still open at the end"

    fork = tree / "kernel" / "fork.c"
    lines = fork.read_text().splitlines()
    starts = [n for n, line in enumerate(lines, 1)
              if line.split("/*")[0].split() == ["#ifdef", "CONFIG_MMU"]
              and not lines[n].lstrip().startswith("#")]
    assert starts, "kernel/fork.c has no #ifdef CONFIG_MMU block"
    required, forbidden, _ = options_for_line(fork, starts[0] + 1)
    assert "MMU" in required and "MMU" not in forbidden
    assert "MMU" not in options_for_line(fork, starts[0])[0]  # the directive line itself
