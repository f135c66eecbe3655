"""Search over option sets with the boot test as the oracle: add back by bisection, remove by delta debugging.

Discovery (:mod:`tailor.discover`) first asks for the options its trace found; the
functions here then decide, with whole option lists handed to an *oracle*
(``oracle(options) -> bool``: build base + options, boot-test it), which
options are needed. They are pure: the oracle is any function, so the tests
drive them with fake oracles and discovery with real kernels.

:func:`add_back`
    when the traced set fails, the options of a larger set that make it pass,
    found by bisection (about log2 N oracle calls per option added).

:func:`ddmin`
    delta debugging (Zeller's ddmin, in the "drop a group; keep it dropped if the
    test still passes, else split it" form): the options come in groups, most
    suspicious first; a group whose removal still passes is dropped whole, one
    that fails is split in halves and each half tried, down to single options.
    Then single options are tried again until a whole round drops nothing, so
    the result is *1-minimal*: removing any one kept option fails the test
    (removals are not monotonic: an option needed beside a since-dropped one may
    become droppable). A *budget* caps the oracle calls that need a new trial;
    when it runs out the options whose need was not shown are returned as
    ``untried``.

:func:`unwrap_carriers`
    after ddmin: a kept option needed only because its dependencies carried dropped ones in is
    replaced by those options (one trial each).

:class:`Memo`
    wraps an oracle so that each distinct option set is tried once, and counts
    the trials; :func:`ddmin` asks it whether a set is already known, so a
    re-check that costs nothing is made even with no budget left.

Options that the oracle's own dependency closure brings back (a kept option
``depends on`` a dropped one) make a removal pass without changing the
kernel; :func:`split_kept_by_deps` tells those apart from options really
dropped, given what the final kernel enables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

Oracle = Callable[[list[str]], bool]


class Memo:
    """Wraps an oracle so that each distinct option set is tried once; ``trials`` counts the real calls.

    *spent*, when given, counts what a call really cost instead (discovery: the kernels built and booted,
    so that a set whose dependencies resolve it to a kernel already tried costs nothing and does not use
    up the budget)."""

    def __init__(self, oracle: Oracle, spent: Callable[[], int] | None = None):
        self.oracle = oracle
        self.seen: dict[frozenset, bool] = {}
        self.calls = 0
        self.spent = spent

    @property
    def trials(self) -> int:
        """The oracle calls made so far, or what *spent* says they cost."""
        return self.spent() if self.spent is not None else self.calls

    def known(self, options: Iterable[str]) -> bool | None:
        """The result for *options* if it was tried, else None."""
        return self.seen.get(frozenset(options))

    def __call__(self, options: list[str]) -> bool:
        key = frozenset(options)
        if key not in self.seen:
            self.calls += 1
            self.seen[key] = bool(self.oracle(list(options)))
        return self.seen[key]


def add_back(base: list[str], rest: list[str], oracle: Oracle) -> list[str] | None:
    """Options of *rest* that make *base* pass, found by bisection (about log2 N oracle calls per option).

    The oracle is called with whole option lists. Returns None when even ``base + rest`` fails;
    otherwise the options added, in *rest*'s order.
    """
    order = list(rest)
    rest = list(rest)
    if not oracle(base + rest):
        return None
    needed: list[str] = []
    while not oracle(base + needed):
        lo, hi = 0, len(rest)  # base + needed + rest[:hi] passes; with rest[:lo] it fails
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if oracle(base + needed + rest[:mid]):
                hi = mid
            else:
                lo = mid
        needed.append(rest[hi - 1])
        rest = rest[:hi - 1]
    return [o for o in order if o in needed]


@dataclass
class Outcome:
    """What :func:`ddmin` found.

    ``kept`` and ``dropped`` partition the options (in their first order); ``needed`` are the kept
    options whose removal from the final set was tried and failed (all of ``kept`` when the search
    finished); ``untried`` the kept ones whose removal the budget left untried; ``complete`` says the
    result is 1-minimal; ``trials`` counts the oracle calls that were new.
    """

    kept: list[str]
    dropped: list[str]
    needed: list[str] = field(default_factory=list)
    untried: list[str] = field(default_factory=list)
    complete: bool = True
    trials: int = 0


def ddmin(groups: list[list[str]], oracle: Oracle | Memo, budget: int | None = None) -> Outcome:
    """Remove options from the union of *groups* while the oracle passes; see the module docstring.

    *groups* are tried in order (most suspicious first), each whole before it is split. The oracle
    must pass on the union (it is not called for it). *budget* caps new oracle calls (None: no cap).
    """
    memo = oracle if isinstance(oracle, Memo) else Memo(oracle)
    start = memo.trials
    order = [o for g in groups for o in g]
    kept = list(dict.fromkeys(order))
    memo.seen.setdefault(frozenset(kept), True)

    def left() -> bool:
        return budget is None or memo.trials - start < budget

    def attempt(remove: set[str]) -> bool | None:
        """Try *kept* without *remove*: True/False, or None when the budget allows no new trial."""
        trial = [o for o in kept if o not in remove]
        known = memo.known(trial)
        if known is None and not left():
            return None
        return memo(trial)

    out_of_budget = False
    todo = [list(dict.fromkeys(g)) for g in groups if g]
    while todo and not out_of_budget:
        group = [o for o in todo.pop(0) if o in kept]
        if not group:
            continue
        passed = attempt(set(group))
        if passed is None:
            out_of_budget = True
        elif passed:
            kept = [o for o in kept if o not in group]
        elif len(group) > 1:
            half = len(group) // 2
            todo[:0] = [group[:half], group[half:]]

    # single options until a whole round drops nothing: then removing any one kept option fails
    changed = not out_of_budget
    while changed:
        changed = False
        for opt in list(kept):
            passed = attempt({opt})
            if passed is None:
                out_of_budget = True
                break
            if passed:
                kept.remove(opt)
                changed = True
        if out_of_budget:
            break

    needed = [o for o in kept if memo.known([k for k in kept if k != o]) is False]
    untried = [o for o in kept if o not in needed]
    return Outcome(kept=kept, dropped=[o for o in order if o not in kept], needed=needed, untried=untried,
                   complete=not untried, trials=memo.trials - start)


def unwrap_carriers(kept: list[str], needed: list[str], dropped: list[str],
                    closure: Callable[[list[str]], set[str]], oracle: Oracle | Memo,
                    budget: int | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """Replace each kept option that was needed only as a *carrier* of dropped ones by what it carried.

    ddmin may drop option X while a kept option Y's dependencies still bring X in (``TCP_MD5SIG``
    ``depends on INET``): the trial "without X" is not without X, so X goes, and removing Y later fails,
    because it takes X along. Then Y looks needed although X is. For each *needed* Y whose removal takes
    *dropped* options out of the :func:`closure` (what a set enables), the set without Y but with those
    options is tried (one oracle call each, within *budget* new trials); if it passes, Y is replaced.
    Returns the new kept list and ``{Y: [the options that replaced it]}``."""
    memo = oracle if isinstance(oracle, Memo) else Memo(oracle)
    start = memo.trials
    swapped: dict[str, list[str]] = {}
    for y in list(needed):
        if y not in kept:
            continue
        without = [k for k in kept if k != y]
        carried = [o for o in dropped if o in closure(kept) and o not in closure(without) and o not in kept]
        carried = [o for o in carried if not any(o in closure([c]) for c in carried if c != o)]  # the tops only
        if not carried:
            continue
        trial = without + carried
        if memo.known(trial) is None and budget is not None and memo.trials - start >= budget:
            break
        if memo(trial):
            kept, swapped[y] = trial, carried
    return kept, swapped


def split_kept_by_deps(dropped: list[str], enabled: Iterable[str]) -> tuple[list[str], list[str]]:
    """(really dropped, back through dependencies): options of *dropped* that the final kernel still
    *enables* (the closure of a kept option's dependencies brought them back) are not dropped."""
    on = set(enabled)
    return [o for o in dropped if o not in on], [o for o in dropped if o in on]
