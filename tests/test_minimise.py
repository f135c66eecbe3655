"""The option searches against fake oracles: bisection (add back), ddmin (1-minimal, in group order,
within a budget), probabilistic ddmin (guided by priors, 1-minimal for monotonic oracles), the memo's
monotonic inference and options that only come back through a kept option's dependencies."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tailor.minimise import (CLASS_PRIOR, PRIOR_CEILING, Memo, add_back, ddmin, first_removal, priors, probdd,
                             split_kept_by_deps, unwrap_carriers)


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


def check_one_minimal(out, oracle, options):
    """*out* passes, partitions *options*, and no single kept option can go."""
    assert oracle(out.kept) and out.complete
    assert sorted(out.kept + out.dropped) == sorted(options)
    for o in out.kept:
        assert not oracle([k for k in out.kept if k != o])


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
    check_one_minimal(ddmin([options[: len(options) // 2], options[len(options) // 2:]], oracle), oracle, options)


SEARCHES = {"ddmin": lambda options, oracle, budget: ddmin([options], oracle, budget=budget),
            "probdd": lambda options, oracle, budget: probdd({o: 0.1 for o in options}, oracle, budget=budget)}


@pytest.mark.parametrize("search", SEARCHES)
def test_the_budget_caps_trials_and_says_what_was_left(search):
    options = [f"o{i}" for i in range(20)]
    oracle = FakeOracle({"o1", "o7", "o13", "o19"})
    out = SEARCHES[search](options, oracle, 3)
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
    # INET "carries" TCP_CONG_CUBIC (a default when INET is on) which depends on INET: swapping them would
    # only add an option, so it is not tried
    cubic = FakeOracle({"INET", "EPOLL"}, {"TCP_CONG_CUBIC": ["INET"], "INET": ["NET"]})

    def with_defaults(options):
        on = cubic.closure(options)
        return on | {"TCP_CONG_CUBIC"} if "INET" in on else on
    memo = Memo(cubic)
    kept, swapped = unwrap_carriers(["INET", "EPOLL"], ["INET", "EPOLL"], ["TCP_CONG_CUBIC"], with_defaults, memo)
    assert (kept, swapped, memo.trials) == (["INET", "EPOLL"], {}, 0)
    # a carrier that is needed for itself stays
    both = FakeOracle({"TCP_MD5SIG", "EPOLL"}, deps)
    assert unwrap_carriers(out.kept, out.needed, out.dropped, both.closure, Memo(both))[1] == {}


def test_a_monotonic_memo_infers_instead_of_trying():
    """A set inside one that failed fails; a set holding one that passed passes: no oracle call for either."""
    oracle = FakeOracle({"a", "b"})
    memo = Memo(oracle, monotonic=True)
    assert memo(["a", "b", "c"]) is True and memo(["a", "c"]) is False
    assert len(oracle.calls) == 2
    assert memo.known(["a"]) is False and memo(["c"]) is False  # inside the failed {a, c}
    assert memo.known(["a", "b", "c", "d"]) is True and memo(["a", "b", "c", "d"]) is True
    assert memo.known(["b", "c"]) is None  # neither inside a failure nor holding a pass
    assert len(oracle.calls) == 2 and memo.trials == 2
    plain = Memo(oracle)
    plain(["a", "c"])
    assert plain.known(["a"]) is None  # without monotonic, only what was tried is known


def test_priors_order_by_class_then_by_traced_functions():
    p = priors({"s": "setup", "h": "hook", "r": "reached", "r2": "reached", "y": "syscall", "u": "unheard-of"},
               {"r": 0, "r2": 200, "y": 3})
    assert p["s"] == CLASS_PRIOR["setup"] and p["r"] == CLASS_PRIOR["reached"]
    assert p["h"] < p["r"] < p["y"] and p["r"] < p["r2"] < PRIOR_CEILING
    assert 0 < min(p.values()) and max(p.values()) < 1
    assert p["u"] == 0.5  # a class it does not know: even odds


def test_probdd_keeps_exactly_what_is_needed_and_drops_the_unlikely_first():
    options = [f"o{i}" for i in range(24)]
    prior = {o: (0.6 if o in ("o3", "o11", "o20") else 0.03) for o in options}
    oracle = FakeOracle({"o3", "o11"})
    out = probdd(prior, oracle)
    assert out.kept == ["o3", "o11"] and out.complete and out.needed == ["o3", "o11"] and not out.untried
    assert out.dropped == [o for o in options if o not in ("o3", "o11")]
    first_dropped = set(options) - set(oracle.calls[0])
    assert first_dropped and not first_dropped & {"o3", "o11", "o20"}  # the unlikely ones go first
    assert len(oracle.calls) == out.trials


def test_probdd_with_telling_priors_needs_fewer_trials_than_ddmin():
    options = [f"o{i}" for i in range(32)]
    needed = {"o5", "o17", "o28"}
    prior = {o: (0.5 if o in needed else 0.03) for o in options}
    guided = probdd(prior, FakeOracle(needed))
    halved = ddmin([options], FakeOracle(needed))
    assert sorted(guided.kept) == sorted(halved.kept) == sorted(needed)
    assert guided.trials < halved.trials


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=14).flatmap(lambda n: st.tuples(
    st.just([f"o{i}" for i in range(n)]),
    st.lists(st.sets(st.integers(min_value=0, max_value=n - 1), min_size=1, max_size=3), max_size=4),
    st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=n, max_size=n))))
def test_probdd_result_passes_and_is_one_minimal(case):
    options, clauses, odds = case
    def oracle(opts):  # a monotone CNF with alternatives, as in the ddmin property above
        s = set(opts)
        return all(any(f"o{i}" in s for i in c) for c in clauses)
    check_one_minimal(probdd(dict(zip(options, odds)), Memo(oracle, monotonic=True)), oracle, options)


def test_probdd_budget_zero_tries_nothing():
    none = probdd({"a": 0.1, "b": 0.1}, FakeOracle({"a"}), budget=0)
    assert none.trials == 0 and none.kept == ["a", "b"] and none.untried == ["a", "b"] and not none.complete


def test_probdd_options_back_through_dependencies_are_not_dropped():
    deps = {"VIRTIO_NET": ["NETDEVICES", "NET_CORE"], "INET": ["NET"]}
    oracle = FakeOracle({"VIRTIO_NET", "NETDEVICES", "NET_CORE", "INET"}, deps)
    prior = {"NET": 0.2, "NETDEVICES": 0.2, "NET_CORE": 0.2, "EPOLL": 0.2, "INET": 0.5, "VIRTIO_NET": 0.5}
    out = probdd(prior, oracle)
    assert sorted(out.kept) == ["INET", "VIRTIO_NET"]
    dropped, by_deps = split_kept_by_deps(out.dropped, oracle.closure(out.kept))
    assert dropped == ["EPOLL"] and sorted(by_deps) == ["NET", "NETDEVICES", "NET_CORE"]


def test_the_first_removal_takes_the_least_likely_as_far_as_it_pays():
    # 0.05 each: removing n of them is expected to remove n * 0.95**n, best at n = 19 or 20
    odds = {f"o{i}": 0.05 for i in range(30)}
    odds.update(likely=0.9)
    first = first_removal(odds)
    assert len(first) in (19, 20) and "likely" not in first and first == [f"o{i}" for i in range(len(first))]
    # one option with even odds among sure-unneeded ones: removing it too is not worth the risk
    assert first_removal({"a": 0.01, "b": 0.5, "c": 0.01}) == ["a", "c"]
    assert first_removal({}) == []
    # it is probdd's own first step
    oracle = FakeOracle(set())
    probdd(odds, oracle)
    assert set(odds) - set(oracle.calls[0]) == set(first)
