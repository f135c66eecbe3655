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
    up the budget). With *monotonic*, a result is also inferred, not tried: a set inside one that failed
    fails, a set holding one that passed passes (true of an oracle where options only add code)."""

    def __init__(self, oracle: Oracle, spent: Callable[[], int] | None = None, monotonic: bool = False):
        self.oracle = oracle
        self.seen: dict[frozenset, bool] = {}
        self.calls = 0
        self.spent = spent
        self.monotonic = monotonic

    @property
    def trials(self) -> int:
        """The oracle calls made so far, or what *spent* says they cost."""
        return self.spent() if self.spent is not None else self.calls

    def known(self, options: Iterable[str]) -> bool | None:
        """The result for *options* if it was tried (or, *monotonic*, follows from one tried), else None."""
        key = frozenset(options)
        if key in self.seen or not self.monotonic:
            return self.seen.get(key)
        for tried, passed in self.seen.items():
            if not passed and key <= tried:
                return False
            if passed and tried <= key:
                return True
        return None

    def __call__(self, options: list[str]) -> bool:
        key = frozenset(options)
        if key not in self.seen:
            inferred = self.known(key)
            if inferred is not None:
                return inferred
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


def priors(classes: dict[str, str], weights: dict[str, int] | None = None) -> dict[str, float]:
    """Each option's prior probability of being needed, for :func:`probdd`, from what the trace showed.

    The class sets the floor (:data:`CLASS_PRIOR`: set-up and hook code is rarely needed, a system call
    the app ran often is); the more of the option's functions the trace saw the app run (*weights*), the nearer
    the prior comes to :data:`PRIOR_CEILING` (half way at :data:`PRIOR_HALF` functions). The numbers are
    generic, the same for every app and option: they order the search, they never decide it (only a
    failed trial keeps an option)."""
    weights = weights or {}
    out = {}
    for opt, cls in classes.items():
        floor = CLASS_PRIOR.get(cls, 0.5)
        w = max(0, weights.get(opt, 0))
        out[opt] = floor + (PRIOR_CEILING - floor) * w / (w + PRIOR_HALF)
    return out


CLASS_PRIOR = {"setup": 0.02, "hook": 0.02, "reached": 0.05, "bisection": 0.3, "syscall": 0.3}
"""The prior probability that an option of a class is needed, before its traced functions are counted."""
PRIOR_CEILING = 0.9
PRIOR_HALF = 50


def first_removal(odds: dict[str, float], order: list[str] | None = None) -> list[str]:
    """The options :func:`probdd` removes next, given each one's *odds* of being needed: the least likely
    first, as many as maximise the expected number removed (how many, times the chance none is needed);
    ties go by *order* (default: *odds*' own)."""
    order = order or list(odds)
    undecided = sorted(odds, key=lambda o: (odds[o], order.index(o)))
    best, best_gain, none_needed = [], -1.0, 1.0
    for i, o in enumerate(undecided):
        none_needed *= 1.0 - odds[o]
        if (i + 1) * none_needed > best_gain:
            best, best_gain = undecided[: i + 1], (i + 1) * none_needed
    return best


def probdd(prior: dict[str, float], oracle: Oracle | Memo, budget: int | None = None,
           needed: Iterable[str] = ()) -> Outcome:
    """Remove options while the oracle passes, guided by each option's probability of being needed.

    Probabilistic delta debugging (after Wang et al., FSE 2021): each round removes the set of undecided
    options, least likely needed first, that maximises the expected number removed (its size times the
    probability that none of them is needed). A pass drops them; a failure raises their probabilities by
    Bayes' rule (one of them is needed), and a single option that fails is needed. The search ends when
    every kept option has failed alone, so the result is 1-minimal for a monotonic oracle (one where
    taking options away never turns a failure into a pass), as the boot test is when options only add
    code. A failure of a larger set is not re-tried on a smaller one: with fewer options kept, the option
    is still needed. Priors come from :func:`priors`; the oracle must pass on all of *prior*'s options.
    *budget* caps new oracle calls; what is left undecided is returned as ``untried``. Options of *needed*
    are known to be needed already (discovery's system call checks): they are kept and never tried
    without."""
    memo = oracle if isinstance(oracle, Memo) else Memo(oracle)
    start = memo.trials
    order = list(prior)
    kept = list(order)
    memo.seen.setdefault(frozenset(kept), True)
    p = {o: min(0.99, max(0.01, float(prior[o]))) for o in order}
    needed = {o for o in needed if o in p}
    complete = True
    while True:
        best = first_removal({o: p[o] for o in kept if o not in needed}, order)
        if not best:
            break
        trial = [o for o in kept if o not in best]
        if memo.known(trial) is None and budget is not None and memo.trials - start >= budget:
            complete = False
            break
        if memo(trial):
            kept = trial
        elif len(best) == 1:
            needed.add(best[0])
        else:
            none_needed = 1.0
            for o in best:
                none_needed *= 1.0 - p[o]
            for o in best:
                p[o] = min(0.99, p[o] / max(1e-9, 1.0 - none_needed))
    untried = [o for o in kept if o not in needed]
    return Outcome(kept=kept, dropped=[o for o in order if o not in kept], needed=[o for o in kept if o in needed],
                   untried=untried, complete=complete and not untried, trials=memo.trials - start)


def unwrap_carriers(kept: list[str], needed: list[str], dropped: list[str],
                    closure: Callable[[list[str]], set[str]], oracle: Oracle | Memo,
                    budget: int | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """Replace each kept option that was needed only as a *carrier* of dropped ones by what it carried.

    ddmin may drop option X while a kept option Y's dependencies still bring X in (``TCP_MD5SIG``
    ``depends on INET``): the trial "without X" is not without X, so X goes, and removing Y later fails,
    because it takes X along. Then Y looks needed although X is. For each *needed* Y whose removal takes
    *dropped* options out of the :func:`closure` (what a set enables), the set without Y but with those
    options is tried (one oracle call each, within *budget* new trials) when it enables fewer options than the
    kept set (not when those options depend on Y and bring it back); if it passes, Y is replaced.
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
        if not closure(trial) < closure(kept):
            continue  # what it carried brings it back (INET carries TCP_CONG_CUBIC, a default, which depends on INET)
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
