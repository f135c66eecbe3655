"""The option searches against fake oracles: bisection (add back), ddmin (1-minimal, in group order,
within a budget) and options that only come back through a kept option's dependencies."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tailor.minimise import Memo, add_back, ddmin, split_kept_by_deps, unwrap_carriers


class FakeOracle:
    """Passes when every option of *needed* is in the set (after closing it under *deps*); records calls."""

    def __init__(self, needed, deps=None):
        self.needed = set(needed)
        self.deps = deps or {}
        self.calls: list[list[str]] = []

    def closure(self, options):
        out, todo = set(options), list(options)
        while todo:
            for d in self.deps.get(todo.pop(), ()):
                if d not in out:
                    out.add(d)
                    todo.append(d)
        return out

    def __call__(self, options):
        self.calls.append(list(options))
        return self.needed <= self.closure(options)


@pytest.mark.parametrize("needed", [["r3"], ["r0"], ["r31"], ["r5", "r20"], []])
def test_add_back_finds_the_missing_options(needed):
    rest = [f"r{i}" for i in range(32)]
    oracle = FakeOracle(set(needed) | {"c1"})
    added = add_back(["c1", "c2"], rest, Memo(oracle))
    assert added == [r for r in rest if r in needed]
    assert len(oracle.calls) <= 2 + len(needed) * (math.ceil(math.log2(32)) + 1)


def test_add_back_gives_up_when_even_everything_fails():
    assert add_back(["c1"], ["r1", "r2"], FakeOracle({"zz"})) is None


def test_memo_calls_each_set_once():
    oracle = FakeOracle({"a"})
    memo = Memo(oracle)
    assert memo(["a", "b"]) and memo(["b", "a"]) and not memo([])
    assert len(oracle.calls) == 2 and memo.trials == 2
    assert memo.known(["b", "a"]) is True and memo.known(["b"]) is None


def test_the_budget_counts_what_trials_cost_when_told():
    """Discovery's trials that resolve to a kernel already tried cost nothing: with *spent*, only the others
    use up the budget (here: sets without o0 resolve to the same kernel, as if a kept option selected it)."""
    options = [f"o{i}" for i in range(8)]
    real = []

    def oracle(opts):
        if "o0" in opts:  # a real kernel build and boot
            real.append(list(opts))
        return {"o1", "o5"} <= set(opts)

    out = ddmin([options], Memo(oracle, spent=lambda: len(real)), budget=3)
    counted = ddmin([options], Memo(oracle), budget=3)
    assert out.trials <= 3 and counted.trials <= 3
    assert len(out.kept) < len(counted.kept)  # the free calls let the same budget go further


def test_ddmin_keeps_exactly_what_is_needed():
    options = [f"o{i}" for i in range(16)]
    out = ddmin([options], FakeOracle({"o3", "o11"}))
    assert out.kept == ["o3", "o11"] and out.complete and out.needed == ["o3", "o11"] and not out.untried
    assert out.dropped == [o for o in options if o not in ("o3", "o11")]
    # far fewer trials than one per option and per round: groups of unneeded options go at once
    assert out.trials < 16


def test_ddmin_tries_the_most_suspicious_group_first():
    oracle = FakeOracle({"sys1"})
    out = ddmin([["hook1", "hook2", "hook3"], ["setup1"], ["sys1", "sys2"]], oracle)
    assert oracle.calls[0] == ["setup1", "sys1", "sys2"]  # the first group, dropped whole
    assert out.kept == ["sys1"] and out.dropped == ["hook1", "hook2", "hook3", "setup1", "sys2"]


def test_ddmin_is_one_minimal_when_removals_are_not_monotonic():
    # passes with (a and b) or c: after c is found droppable only because a and b stay, or the other way
    def oracle(opts):
        s = set(opts)
        return ("a" in s and "b" in s) or "c" in s
    out = ddmin([["a"], ["b"], ["c"], ["d"]], oracle)
    assert oracle(out.kept)
    for o in out.kept:
        assert not oracle([k for k in out.kept if k != o])
    assert out.complete and sorted(out.kept) in (["a", "b"], ["c"])


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=14).flatmap(lambda n: st.tuples(
    st.just([f"o{i}" for i in range(n)]),
    st.lists(st.sets(st.integers(min_value=0, max_value=n - 1), min_size=1, max_size=3), max_size=4))))
def test_ddmin_result_passes_and_is_one_minimal(case):
    options, clauses = case
    # passes when every clause has one of its options: a monotone CNF with alternatives
    def oracle(opts):
        s = set(opts)
        return all(any(f"o{i}" in s for i in c) for c in clauses)
    out = ddmin([options[: len(options) // 2], options[len(options) // 2:]], oracle)
    assert oracle(out.kept) and out.complete
    assert sorted(out.kept + out.dropped) == sorted(options)
    for o in out.kept:
        assert not oracle([k for k in out.kept if k != o])


def test_ddmin_budget_caps_trials_and_says_what_was_left():
    options = [f"o{i}" for i in range(20)]
    oracle = FakeOracle({"o1", "o7", "o13", "o19"})
    out = ddmin([options], oracle, budget=3)
    assert out.trials == 3 == len(oracle.calls)
    assert not out.complete and out.untried
    assert oracle(out.kept)  # what is kept still passes: only passing removals were taken
    assert set(out.needed) | set(out.untried) == set(out.kept)
    assert {"o1", "o7", "o13", "o19"} <= set(out.kept)


def test_ddmin_budget_zero_tries_nothing():
    out = ddmin([["a", "b"]], FakeOracle({"a"}), budget=0)
    assert out.trials == 0 and out.kept == ["a", "b"] and out.untried == ["a", "b"] and not out.complete


def test_options_back_through_dependencies_are_not_dropped():
    deps = {"VIRTIO_NET": ["NETDEVICES", "NET_CORE"], "INET": ["NET"]}
    oracle = FakeOracle({"VIRTIO_NET", "NETDEVICES", "NET_CORE", "INET"}, deps)
    out = ddmin([["NET", "NETDEVICES", "NET_CORE", "EPOLL"], ["INET", "VIRTIO_NET"]], oracle)
    assert out.kept == ["INET", "VIRTIO_NET"]
    dropped, by_deps = split_kept_by_deps(out.dropped, oracle.closure(out.kept))
    assert dropped == ["EPOLL"] and by_deps == ["NET", "NETDEVICES", "NET_CORE"]


def test_a_kept_option_that_only_carried_a_dropped_one_is_replaced_by_it():
    """TCP_MD5SIG depends on INET: ddmin drops INET (TCP_MD5SIG brings it back), then cannot drop
    TCP_MD5SIG (INET goes with it). The unwrap trial keeps INET instead, and only that."""
    deps = {"TCP_MD5SIG": ["INET"], "INET": ["NET"]}
    oracle = FakeOracle({"INET", "EPOLL"}, deps)
    out = ddmin([["INET", "NET"], ["TCP_MD5SIG", "EPOLL"]], oracle)
    assert out.kept == ["TCP_MD5SIG", "EPOLL"] and out.needed == ["TCP_MD5SIG", "EPOLL"]  # the wrong culprit
    memo = Memo(oracle)
    kept, swapped = unwrap_carriers(out.kept, out.needed, out.dropped, oracle.closure, memo)
    assert sorted(kept) == ["EPOLL", "INET"] and swapped == {"TCP_MD5SIG": ["INET"]} and memo.trials == 1
    # nothing carried, or no budget left: nothing tried
    assert unwrap_carriers(["EPOLL"], ["EPOLL"], ["NET"], oracle.closure, Memo(oracle)) == (["EPOLL"], {})
    assert unwrap_carriers(out.kept, out.needed, out.dropped, oracle.closure, Memo(oracle), budget=0) == \
        (out.kept, {})
    # a carrier that is needed for itself stays
    both = FakeOracle({"TCP_MD5SIG", "EPOLL"}, deps)
    assert unwrap_carriers(out.kept, out.needed, out.dropped, both.closure, Memo(both))[1] == {}
