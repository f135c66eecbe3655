"""Discover an app's kernel options: trace it on the probe kernel, map the code it ran, verify.

``doit discover:<app>`` and ``python -m tailor discover <app>`` run, for any
recipe with a boot test:

1. **probe kernel** (:mod:`tailor.probe`): the recipe's base + every app-facing
   option; built once per source and base, shared by every discovery;
2. **trace** (:mod:`tailor.trace`): the recipe's boot test on the probe kernel
   under TCG with qemu's ``translate_block`` trace, split at the init;
3. **map** (:mod:`tailor.kmap`): pc -> function (System.map) -> object file
   (nm over the build tree) -> the options its Makefile lines need. The
   candidates are the mapped options of code run in the app phase that the
   probe kernel has, the base lacks and that have a prompt; the executed
   ``__x64_sys_*`` entry points are the app's system calls;
   Each candidate gets a class from what the trace shows (:func:`classify`,
   :data:`CLASSES`): a system call the app ran, code reached from the app's
   work, a hook entered only from paths every process runs, or code that only
   the init's set-up ran;
4. **verify**: the base + the candidates, closed under dependencies by the
   engine (``resolve: deps``), built and boot-tested (the recipe's probe and
   its ``test.exercise``); when that fails, the rest of the probe fragment's
   options are added back by bisection with the boot test as the oracle
   (:func:`tailor.minimise.add_back`);
5. **minimise** (default; ``--no-minimise`` skips it): delta debugging
   (:func:`tailor.minimise.ddmin`) drops options by class, most suspicious
   first, until no single option can go, within ``--budget`` trial kernels.
   An option that comes back through a kept option's dependencies is reported
   as such (``kept_by_deps``), not as dropped.

Every trial is a kernel keyed by its config identity (reruns and identical
trials of other apps cost nothing). Outputs in ``out/discover/<app>/``:
``options.yaml`` (every option with its reason), ``syscalls.json``,
``trials.json`` (each trial's options, identity, result and times),
``trace.json`` (the trace's figures and the functions run per phase) and
``discover.json`` (totals). ``--write`` adds the options to the recipe with
their reasons as comments.

Over 400 lines because the pure steps (mapping, candidates, bisection,
minimisation) and the run that drives them share one record of trials and
reasons; the probe kernel, the trace and the map are modules of their own.
"""

from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

from tailor import boot, enosys, kernel, kmap, linemap, paths, probe, qemu, rootfs, source, trace
from tailor.minimise import (Memo, add_back, ddmin, first_removal, priors, probdd, split_kept_by_deps,
                             unwrap_carriers)
from tailor import config as cfg
from tailor.catalogue import lupine_options
from tailor.errors import TailorError
from tailor.kinds import RootFormat
from tailor.kconfig import Assign, ResolveError, load_tree, resolve
from tailor.recipe import AppSpec, RootfsSpec, TestSpec, find, option_notes, parse
from tailor.records.discovery import (DISCOVER_FORMAT, DiscoverySummary, DiscoverySyscalls, DiscoveryTrace,
                                      DiscoveryTrials, NullTrace)
from tailor.templates import render
from tailor.util import (PROJECT, display_path, enabled_symbols, makedirs, remove,
                         sha256_text, write_atomic)

FORMAT = DISCOVER_FORMAT
"""The format of every file of ``out/discover/<app>/`` (:mod:`tailor.records.discovery`)."""
SYSCALL_PREFIX = "__x64_sys_"


discover_dir = paths.discover_dir


def options_path(app: str) -> Path:
    return discover_dir(app) / "options.yaml"


# --------------------------------------------------------------------------
# Mapping a trace to options (pure functions over the kernel's files)


@dataclass
class Mapping:
    """What the code of one phase maps to."""

    functions: dict[str, int]
    """function -> number of pcs seen in it"""
    by_option: dict[str, list[str]] = field(default_factory=dict)
    """option -> functions under it (the option gates the object that defines the function)"""
    syscalls: list[str] = field(default_factory=list)
    unmapped: int = 0
    """functions whose object (or its Makefile line) was not found, or is ambiguous"""


def map_functions(functions: dict[str, int], index: dict[str, list[str]], gates: Callable[[str], frozenset | None]
                  ) -> Mapping:
    """Map *functions* to options: *index* gives the objects defining a symbol (nm), *gates* an
    object's options (Kbuild). A static function defined in several objects counts only when
    every one of them needs the same options."""
    m = Mapping(functions=dict(functions))
    for fn in sorted(functions):
        if fn.startswith(SYSCALL_PREFIX):
            m.syscalls.append(fn[len(SYSCALL_PREFIX):])
        objs = index.get(fn, [])
        sets = {gates(o) for o in objs}
        if not objs or None in sets or len(sets) != 1:
            m.unmapped += 1
            continue
        for opt in next(iter(sets)):
            m.by_option.setdefault(opt, []).append(fn)
    return m


def candidates(by_option: dict[str, list[str]], probe_on: set[str], base_on: set[str],
               has_prompt: Callable[[str], bool]) -> tuple[list[str], dict[str, str]]:
    """(options to try, {option left out: why}) from the options the app phase's code maps to."""
    take, skipped = [], {}
    for opt in sorted(by_option):
        if opt in base_on:
            continue
        if opt not in probe_on:
            skipped[opt] = "not in the probe kernel"
        elif not has_prompt(opt):
            skipped[opt] = "no prompt (only selected by other options)"
        else:
            take.append(opt)
    return take, skipped


# --------------------------------------------------------------------------
# Evidence: what the trace says about each candidate

CLASSES = ("setup", "hook", "reached", "bisection", "syscall")
"""The classes of candidate options, most suspicious first (the order minimisation drops them in):

``setup``     all its code first ran in the init's own set-up (mounts, the network), before the recipe's
              setup steps, services and the app's exec (:func:`tailor.trace.phase_after`);
``hook``      its code was entered only through calls that compile to an empty stub without it (a
              header's ``#else static inline`` stand-in), or only from functions the null app ran too
              (paths every process takes: fork, exec, exit, memory mapping): it ran as a hook of
              another subsystem;
``reached``   code reached from the app's own work (entered from code the null app never ran);
``bisection`` not traced: the boot test failed without it when the traced set was tried;
``syscall``   it gates a system call entry that the app executed after its exec.
"""


@dataclass(frozen=True)
class Evidence:
    """An option's class (one of :data:`CLASSES`) and the reason, in words."""

    cls: str
    why: str


def _names(items, n: int = 4) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f" (+{len(items) - n})" if len(items) > n else "")


def classify(functions: list[str], entered: dict[str, tuple[str | None, str]], common: set[str],
             stubs: dict[str, list[str]] | None = None) -> Evidence:
    """Classify an option from its evidence: *functions* (its code that ran after the init started and the
    null app did not run), *entered* (:func:`tailor.trace.entries`: each function's predecessor in the trace
    and the phase it first ran in), *common* (the null app's functions) and *stubs* (:func:`tailor.linemap.stubs`:
    header functions that compile to a stand-in when an option is off)."""
    own = set(functions)
    stubs = stubs or {}
    first = {f: entered.get(f, (None, "app")) for f in functions}
    calls = [f[len(SYSCALL_PREFIX):] for f in functions if f.startswith(SYSCALL_PREFIX) and first[f][1] == "app"]
    if calls:
        return Evidence("syscall", f"the app ran its system calls {_names(calls, 8)}")
    if all(phase == "setup" for _, phase in first.values()):
        return Evidence("setup", f"only the init's own set-up ran its code (mounts, the network): "
                                 f"{_names(sorted(functions))}")
    entries = {f: prev for f, (prev, _) in first.items() if prev is not None and prev not in own}
    callers = sorted(set(entries.values()))
    stubbed = sorted(f for f in entries if f in stubs)
    if entries and len(stubbed) == len(entries):
        return Evidence("hook", f"entered only through calls that compile to a stub without it "
                                f"({_names(f'{f} from {entries[f]}' for f in stubbed)})")
    if callers and all(c in common for c in callers):
        return Evidence("hook", f"entered only from paths every process runs ({_names(callers)}): "
                                f"{_names(sorted(functions))}")
    outside = [c for c in callers if c not in common] or callers
    return Evidence("reached", f"reached from the app's work (entered from {_names(outside) or 'its own code'}): "
                               f"{_names(sorted(functions))}")


def app_work(evidence: dict[str, list[str]], app_phase: dict[str, list[str]]) -> dict[str, int]:
    """For each option of *evidence*, how many of its functions ran first after the app's exec in objects
    the option gates (*app_phase*: the object-level mapping of the ``app`` phase): the weight of
    :func:`~tailor.minimise.priors`.

    Code the init's set-up ran first, and code found only through ``#if`` lines inside objects every
    kernel builds, count for nothing here: in the minimised discoveries of nginx, redis and lighttpd no
    needed option had such evidence alone (``NET_NS``, ``TCP_MD5SIG``, ``SHMEM`` had up to 39 functions of
    it and were all dropped), and counting it put them beside the needed ones. Replayed on those three
    apps' recorded traces, this weight takes probdd from 21, 13 and 11 trials to 14, 12 and 10."""
    return {o: len(set(fns) & set(app_phase.get(o, ()))) for o, fns in evidence.items()}


def minimise_groups(classes: dict[str, str], weights: dict[str, int] | None = None) -> list[list[str]]:
    """The options grouped by class, most suspicious class first (:data:`CLASSES`), for :func:`ddmin`.

    Within a class the options go by *weights* (how many of their functions the trace saw run), the
    thinnest evidence first: ddmin drops a group's first half whole before it splits further, so the
    options whose code barely ran are tried together, away from the ones the app's work went through."""
    weights = weights or {}
    return [sorted((o for o, c in classes.items() if c == cls), key=lambda o: (weights.get(o, 0), o))
            for cls in CLASSES if any(c == cls for c in classes.values())]


# --------------------------------------------------------------------------
# The whole discovery


TRIAL_TIMEOUT_FACTOR = 10
TRIAL_TIMEOUT_FLOOR = 30


def trial_timeout(recipe_timeout: int | float, passed_boot_s: Iterable[float]) -> int | float:
    """The boot test's time limit for a trial: the recipe's ``test.timeout`` until a trial has passed,
    then :data:`TRIAL_TIMEOUT_FACTOR` times the slowest passing trial's boot (probe and exercise
    included), at least :data:`TRIAL_TIMEOUT_FLOOR` seconds, never more than the recipe's.

    A kernel that lacks what the app needs often leaves it running but deaf (nginx's master logs
    "start worker processes", then fails to spawn them); waiting the recipe's whole timeout for that
    costs minutes per trial. A trial cut short by mistake only keeps options (the search is
    conservative about failures), never passes a kernel that fails."""
    slowest = max((s for s in passed_boot_s if s > 0), default=None)
    if slowest is None:
        return recipe_timeout
    return min(recipe_timeout, max(TRIAL_TIMEOUT_FLOOR, math.ceil(TRIAL_TIMEOUT_FACTOR * slowest)))


class _Run:
    """One discovery: the recipe, its source tree and base, the trial counter and the log."""

    def __init__(self, recipe, jobs: int | None = None):
        self.recipe = recipe
        self.app = recipe.name
        self.dir = makedirs(discover_dir(self.app))
        remove(self.dir / "trials")  # an earlier run's trials; this run numbers its own from 1
        self.jobs = jobs
        self.ref = source.recipe_ref(recipe)
        self.srctree = source.prepare(self.ref)
        self.tree = load_tree(self.srctree)
        self.base_layers = cfg.layers(recipe)[:-1]
        self.base = resolve(self.tree, self.base_layers, source_id=self.ref.id)
        self.base_on = enabled_symbols(self.base.config)
        self.trials: list[dict] = []
        self.trees: list[tuple[int, frozenset[str], Path]] = []  # (trial, its config's lines, its object tree)
        self.builds = 0
        self.boots = 0
        self.start = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[discover:{self.app}] {text}", file=sys.stderr, flush=True)

    def resolve(self, options: Iterable[str]):
        layer = [Assign(o, "y", "discover") for o in options]
        return resolve(self.tree, self.base_layers + [layer], "deps", source_id=self.ref.id)

    def enabled(self, options: list[str]) -> set[str]:
        """What base + *options* (deps closed) enables; nothing when the set does not resolve."""
        try:
            return set(enabled_symbols(self.resolve(options).config))
        except ResolveError:
            return set()

    def nearest_tree(self, config_text: str) -> tuple[int, Path] | None:
        """The trial kernel of this run whose ``.config`` differs from *config_text* in the fewest lines
        (the latest of equals), as (trial, object tree), to seed the next build from; None before the first."""
        mine = config_lines(config_text)
        best = None
        for n, lines, tree in self.trees:
            if kernel.seeds(tree, kernel.stage_dir()):  # built in the stage (a kernel of an earlier run may not be)
                d = len(mine ^ lines)
                if best is None or d <= best[0]:
                    best = (d, n, tree)
        return None if best is None else (best[1], best[2])

    def trial(self, options: list[str], why: str) -> bool:
        """Build base + *options* (deps closed) and run the boot test; record the trial.

        A set that resolves to a kernel already tried in this run takes that trial's result (the
        engine's dependency closure brought the removed options back): no build, no boot."""
        n = len(self.trials) + 1
        record = {"trial": n, "why": why, "options": sorted(options)}
        t0 = time.monotonic()
        try:
            result = self.resolve(options)
        except ResolveError as e:
            record.update(result="unresolvable", reason=str(e).splitlines()[0], identity=None,
                          build_s=0.0, boot_s=0.0)
            self.trials.append(record)
            self.say(f"trial {n} ({why}): {len(options)} options do not resolve: {record['reason']}")
            return False
        same = next((t for t in self.trials if t.get("identity") == result.identity and "same_as" not in t), None)
        if same is not None:
            record.update(identity=result.identity, added_by_deps=result.added, enabled=result.enabled(),
                          result=same["result"], reason=same["reason"], same_as=same["trial"],
                          bzImage=same.get("bzImage"), build_s=0.0, boot_s=0.0)
            self.trials.append(record)
            self.say(f"trial {n} ({why}): {len(options)} options resolve to trial {same['trial']}'s kernel "
                     f"(dependencies bring the rest back): {same['result'].upper()}")
            return same["result"] == "pass"
        tdir = makedirs(self.dir / "trials" / str(n))
        write_atomic(tdir / ".config", result.config)
        record.update(identity=result.identity, added_by_deps=result.added, enabled=result.enabled())
        self.say(f"trial {n} ({why}): {len(options)} options (+{len(result.added)} by deps), "
                 f"kernel {result.identity[:16]}")
        kdir = kernel.kernel_dir(kernel.kernel_identity(result.identity))
        had = (kdir / "kernel.json").is_file()
        seed = None if had else self.nearest_tree(result.config)
        meta = kernel.build(tdir / ".config", self.srctree, result.identity, self.ref.label, jobs=self.jobs,
                            label=f"discover:{self.app}", staged=True, seed=seed[1] if seed else None)
        self.trees.append((n, config_lines(result.config), kdir / "build"))
        self.builds += 0 if had else 1
        if not had:  # the seed, when the build was seeded (it is not when another build held the stage)
            seeded = seed is not None and kernel.seeded_from(kdir / "build") == seed[1]
            record.update(objects=meta.objects_compiled, seed=seed[0] if seeded else None)
        record["build_s"] = round(time.monotonic() - t0, 1)
        record["bzImage"] = meta.sizes["bzImage"]
        t1 = time.monotonic()
        self.boots += 1
        limit = trial_timeout(self.recipe.test.timeout,
                              (t["boot_s"] for t in self.trials if t["result"] == "pass" and "same_as" not in t))
        try:
            boot.run(replace(self.recipe, test=replace(self.recipe.test, timeout=limit)),
                     qemu.kernel_file(kernel.describe(meta))[0], rootfs.image_path(self.recipe), tdir,
                     image_known_good=True)  # it passed on the probe kernel: a failure is the kernel's
            record.update(result="pass", reason="")
        except TailorError as e:
            record.update(result="fail", reason=str(e).splitlines()[0])
            if limit < self.recipe.test.timeout and time.monotonic() - t1 >= limit:  # it ran out of time
                record["reason"] += (f" (a trial's time limit: {limit} s, {TRIAL_TIMEOUT_FACTOR}x the slowest passing "
                                     f"trial, not the recipe's {self.recipe.test.timeout} s)")
        record["boot_s"] = round(time.monotonic() - t1, 1)
        self.trials.append(record)
        DiscoveryTrials(self.app, self.trials).save(self.dir / DiscoveryTrials.FILE)
        self.say(f"trial {n}: {record['result'].upper()}" + (f" ({record['reason']})" if record["reason"] else "")
                 + f"; build {record['build_s']} s" + _objects_note(record) + f", boot {record['boot_s']} s")
        return record["result"] == "pass"


def _check_calls(run: _Run, recipe, probe_kdir: Path, image: Path, cands: list[str], classes: dict,
                 by_object: dict[str, list[str]], app_phase: dict[str, list[str]], reasons: dict[str, dict]
                 ) -> tuple[list[dict] | None, list[str], set[str]]:
    """Boot the app on the probe kernel with each system-call option's calls failing (:mod:`tailor.enosys`):
    (the checks' records or None when there was nothing to check, the options it cannot do without, the
    options whose calls it survived without). Each option's reason says which. Only options found by
    object (their calls' code is built only with them) whose class is ``syscall`` are checked, with every
    call of theirs the app phase ran (the null app's too: a kernel without the option fails those for all)."""
    calls = {o: enosys.calls_of(app_phase.get(o, [])) for o in cands
             if classes[o].cls == "syscall" and o in by_object}
    calls = {o: c for o, c in calls.items() if c}
    if not calls:
        return None, [], set()
    t = time.monotonic()
    run.say(f"checking {len(calls)} options by booting the probe kernel with their system calls failing (ENOSYS): "
            + ", ".join(calls))
    checks = enosys.check(recipe, probe_kdir / "bzImage", image, calls, run.srctree, run.dir / "enosys",
                          limit=lambda s: trial_timeout(recipe.test.timeout, [s]), say=run.say)
    needed, survived = [], set()
    for c in checks[1:]:
        calls_text = ", ".join(c.calls)
        if c.result == "fail":
            needed.append(c.option)
            reasons[c.option]["why"] += (f"; the boot test fails with {calls_text} failing as on a kernel without "
                                         f"it (ENOSYS, on the probe kernel): needed, no trial kernel built")
        elif c.result == "pass":
            survived.add(c.option)
            reasons[c.option]["why"] += f"; the boot test passes with {calls_text} failing (ENOSYS)"
    booted = [c for c in checks if c.result in ("pass", "fail")]
    run.boots += len(booted)  # before minimisation: its budget counts from where it starts
    run.say(f"system call checks: {len(needed)} needed ({', '.join(needed) or 'none'}), {len(survived)} survived "
            f"({', '.join(sorted(survived)) or 'none'}); {len(booted)} boots in {time.monotonic() - t:.1f} s, "
            f"no kernel built")
    return [c.record() for c in checks], needed, survived


def _objects_note(record: dict) -> str:
    if "objects" not in record:
        return " (kernel already built)"
    seeded = f" recompiled from trial {record['seed']}'s tree" if record["seed"] else " compiled"
    return f" ({record['objects']} objects{seeded})"


def config_lines(config_text: str) -> frozenset[str]:
    """A ``.config``'s assignments (``CONFIG_X=...`` and ``# CONFIG_X is not set`` lines), to compare two."""
    return frozenset(ln for ln in config_text.splitlines() if ln.startswith(("CONFIG_", "# CONFIG_")))


NULL_DONE = "tailor-discover: null app done"
NULL_APP = "discover-null"
NULL_SCRIPT = f"/bin/true; /bin/echo null app; /bin/busybox true; /bin/true; echo {NULL_DONE}"
"""What the null app runs (its trace is cached per probe kernel under this script's digest)."""


def null_recipe(recipe):
    """A recipe on *recipe*'s kernel whose app does nothing but run a few small dynamically linked
    programs (coreutils' true and echo) and print a line.

    Every process runs the kernel's process hooks (cgroups, accounting, seccomp, AIO and IPC cleanup
    on exit, memory-map hooks of the dynamic loader, the tty ioctls of stdio); code that this null
    app also runs is no evidence that an app needs its option. (Opening a TCP socket here as well
    removed only MEMCG from redis's candidates: the socket hooks that remain run on accept.)
    """

    script = NULL_SCRIPT
    return replace(recipe, name=NULL_APP, description="the null app of discovery", variant="", general=False,
                   rootfs=RootfsSpec(packages=("coreutils",), files=("/bin/true", "/bin/echo"),
                                     format=RootFormat.CPIO),
                   app=AppSpec(command="/bin/busybox", args=("sh", "-c", script)),
                   test=TestSpec(ready=NULL_DONE, memory=64, timeout=120), digests={})


def null_cache(probe_identity: str) -> Path:
    """Where the null app's functions on a probe kernel are kept (keyed by :data:`NULL_SCRIPT`)."""
    return probe.probe_dir(probe_identity) / f"null-{sha256_text(NULL_SCRIPT)[:12]}.json"


def null_functions(recipe, probe_kernel: dict, srctree: Path) -> set[str]:
    """The kernel functions the null app runs on the probe kernel (whole run), traced once per probe kernel."""
    cache = null_cache(probe_kernel["identity"])
    if cache.is_file():
        try:
            return set(NullTrace.load(cache).functions)
        except TailorError as e:  # a cache: trace again
            print(f"tailor: discover: {e}; tracing the null app again", file=sys.stderr)
    null = null_recipe(recipe)
    rootfs.build(null)  # once per probe kernel and null script (its /init holds the script)
    kdir = Path(probe_kernel["dir"])
    tr = trace.run(null, kdir / "bzImage", rootfs.image_path(null), cache.with_suffix(""))
    if tr.error:
        raise TailorError(f"discover: the null app fails on the probe kernel ({tr.error}); "
                          f"see {display_path(cache.with_suffix('') / 'console.log')}")
    symbols = kmap.parse_system_map((kdir / "System.map").read_text())
    functions = sorted(kmap.functions_of(tr.pcs, symbols))
    NullTrace(probe_kernel["identity"], functions, tr.lines).save(cache)
    return set(functions)


def beyond(by_option: dict[str, list[str]], common: set[str]) -> dict[str, list[str]]:
    """*by_option* without the functions in *common*; options left with none are dropped."""
    out = {}
    for opt, fns in by_option.items():
        own = [f for f in fns if f not in common]
        if own:
            out[opt] = own
    return out


def _has_prompt(tree, name: str) -> bool:
    sym = tree.kconf.syms.get(name)
    return bool(sym and any(node.prompt for node in sym.nodes))


@dataclass
class TraceMap:
    """What a trace maps to: ``maps`` for ``boot``, ``user`` (the init's set-up and the app: everything after
    the kernel started the init) and ``app`` (after the app's exec); where each function was first entered
    from (:func:`tailor.trace.entries`); and ``lines``: option -> functions, from the ``#if`` conditions
    around the source lines of the pcs run after the init started in functions the null app did not run."""

    maps: dict[str, Mapping]
    entered: dict[str, tuple[str | None, str]]
    lines: dict[str, list[str]] = field(default_factory=dict)
    lines_seconds: float = 0.0
    stubs: dict[str, list[str]] = field(default_factory=dict)


def map_trace(pcs: dict[int, str], kernel_dir: Path, srctree: Path, common: set[str] = frozenset()) -> TraceMap:
    """Map a trace's pcs with the probe kernel in *kernel_dir* (objects, and lines when its vmlinux has line
    tables); *common* are the null app's functions, whose lines are not looked up."""
    try:
        symbols = kmap.parse_system_map((kernel_dir / "System.map").read_text())
    except OSError as e:
        raise TailorError(f"{kernel_dir / 'System.map'}: cannot read ({e.strerror}); rebuild the probe kernel") from None
    index = kmap.nm_index(kernel_dir / "build", cache=kernel_dir / "symbols-2.json")  # 2: weak stubs apart
    kb = kmap.Kbuild(srctree)
    out = {}
    for name, phases in (("boot", ("boot",)), ("user", trace.USER_PHASES), ("app", ("app",))):
        functions = kmap.functions_of((pc for pc, p in pcs.items() if p in phases), symbols)
        out[name] = map_functions(functions, index, kb.gates)
    t = time.monotonic()
    own = [pc for pc, p in pcs.items() if p in trace.USER_PHASES and symbols.function(pc) not in common]
    lines = linemap.source_lines(kernel_dir / "vmlinux", own) if own else {}
    by_line = linemap.options_by_function(lines, symbols.function, srctree, kernel_dir / "build")
    stubs = linemap.stubs(srctree, cache=kernel_dir / "stubs.json")
    return TraceMap(out, trace.entries(pcs, symbols.function), by_line, time.monotonic() - t, stubs)


def _reason_for(opt: str, mapping: Mapping) -> str:
    fns = mapping.by_option.get(opt, [])
    calls = [f[len(SYSCALL_PREFIX):] for f in fns if f.startswith(SYSCALL_PREFIX)]
    others = [f for f in fns if not f.startswith(SYSCALL_PREFIX)]
    parts = []
    if calls:
        parts.append(f"system calls {', '.join(calls[:8])}" + (f" (+{len(calls) - 8})" if len(calls) > 8 else ""))
    if others:
        shown = sorted(others, key=lambda f: -mapping.functions.get(f, 0))[:4]
        parts.append(f"{len(others)} function{'s' if len(others) > 1 else ''} ran: {', '.join(shown)}"
                     + (", ..." if len(others) > len(shown) else ""))
    return "traced: " + "; ".join(parts)


DEFAULT_BUDGET = 40
"""Trial kernels minimisation may try at most, unless ``--budget`` says otherwise."""


SEARCHES = ("probdd", "ddmin")
"""How minimisation searches: :func:`~tailor.minimise.probdd` (the default) or :func:`~tailor.minimise.ddmin`."""


def discover(recipe, *, minimise_set: bool = True, budget: int | None = DEFAULT_BUDGET,
             jobs: int | None = None, search: str = "probdd") -> dict:
    """Discover *recipe*'s options; write ``out/discover/<app>/`` and return the summary.

    With *minimise_set* (the default) the passing set is then reduced within *budget* trial kernels (None:
    no cap), by *search*: ``probdd`` drops first the options the trace gives the weakest evidence for
    (:func:`~tailor.minimise.priors` from each one's class and traced functions), ``ddmin`` by class, most
    suspicious first, in halves. Both take the boot test as monotonic (a set inside one that failed is not
    built: it fails too)."""
    if recipe.variant:
        raise TailorError(f"discover: {recipe.id} is a variant; discover {recipe.name} itself")
    if budget is not None and budget < 0:
        raise TailorError(f"discover {recipe.name}: --budget {budget}: give a number of trial kernels, 0 or more")
    if search not in SEARCHES:
        raise TailorError(f"discover {recipe.name}: search {search!r}: use one of {', '.join(SEARCHES)}")
    run = _Run(recipe, jobs)
    run.say(f"base {'+'.join(recipe.kernel.base) or '(none)'}: {len(run.base_on)} options on; "
            f"probe fragment: {len(probe.options())} app-facing options")

    # 1. the probe kernel and the app's image
    t = time.monotonic()
    probe_kernel = probe.build(recipe, jobs)
    probe_kdir = Path(probe_kernel["dir"])
    probe_on = enabled_symbols((probe_kdir / "config").read_text())
    image = rootfs.image_path(recipe)
    if not image.is_file():
        rootfs.build(recipe)
    run.say(f"phase 1/5 probe kernel {probe_kernel['identity'][:16]} and image ready "
            f"({time.monotonic() - t:.1f} s)")

    # 2. trace
    t = time.monotonic()
    tr = trace.run(recipe, probe_kdir / "bzImage", image, run.dir / "probe-boot")
    run.boots += 1
    if tr.error:
        raise TailorError(f"discover {run.app}: the boot test fails even on the probe kernel ({tr.error}); "
                          f"see {display_path(run.dir / 'probe-boot' / 'console.log')}")
    counts = {p: sum(1 for v in tr.pcs.values() if v == p) for p in trace.PHASES}
    run.say(f"phase 2/5 traced the boot test in {tr.seconds:.1f} s: {tr.lines} trace lines "
            f"({tr.bytes_read / 1e6:.1f} MB), {len(tr.pcs)} kernel pcs "
            f"({', '.join(f'{n} {p}' for p, n in counts.items())})" + (" [capped]" if tr.truncated else ""))
    trace_s = tr.seconds

    # 3. map, and classify each candidate by what the trace shows
    t = time.monotonic()
    traced_null = not null_cache(probe_kernel["identity"]).is_file()
    common = null_functions(recipe, probe_kernel, run.srctree)
    run.boots += 1 if traced_null else 0
    tm = map_trace(tr.pcs, probe_kdir, run.srctree, common)
    maps, entered = tm.maps, tm.entered
    user = maps["user"]
    by_object = beyond(user.by_option, common)
    by_line = {o: fns for o, fns in tm.lines.items() if o not in by_object}
    evidence = Mapping(functions=user.functions, by_option={**by_object, **by_line},
                       syscalls=user.syscalls, unmapped=user.unmapped)
    with run.tree.lock:
        cands, skipped = candidates(evidence.by_option, probe_on, run.base_on, lambda o: _has_prompt(run.tree, o))
    for opt in sorted(set(user.by_option) - set(evidence.by_option)):
        if opt not in run.base_on and opt in probe_on:
            skipped[opt] = "only code the null app ran too (process hooks, the init's own mounts)"
    classes = {o: classify(evidence.by_option[o], entered, common, tm.stubs) for o in cands}
    found = {"objects": sorted(o for o in cands if o in by_object),
             "lines": sorted(o for o in cands if o in tm.lines),
             "lines_only": sorted(o for o in cands if o in by_line)}
    all_calls = sorted(set(maps["boot"].syscalls) | set(user.syscalls))
    DiscoverySyscalls(app=run.app, probe_kernel=probe_kernel["identity"], app_phase=user.syscalls,
                      app_exec=maps["app"].syscalls, boot_phase=maps["boot"].syscalls,
                      all=all_calls).save(run.dir / DiscoverySyscalls.FILE)
    map_s = time.monotonic() - t
    run.say(f"phase 3/5 mapped {len(user.functions)} functions run after the init started ({user.unmapped} "
            f"unmapped or ambiguous) in {map_s:.1f} s ({tm.lines_seconds:.1f} s of it source lines): "
            f"{len(user.syscalls)} system calls, {len(cands)} candidate options ({len(found['objects'])} by objects, "
            f"{len(found['lines'])} by #if lines, {len(found['lines_only'])} only by lines): "
            + (", ".join(f"{o} ({classes[o].cls})" for o in cands) or "none"))

    # 4. verify (and add back by bisection when the candidates are not enough)
    reasons: dict[str, dict] = {o: {"from": "trace", "class": classes[o].cls,
                                    "why": f"{classes[o].why}; {_reason_for(o, evidence)}"
                                           + ("; found only by the #if conditions around the lines it ran"
                                              if o in by_line else "")} for o in cands}
    memo = Memo(lambda opts: run.trial(opts, why), spent=lambda: run.boots,  # the budget counts real trials
                monotonic=True)
    chosen = list(cands)

    app_own = app_work(evidence.by_option, maps["app"].by_option)

    # 3b. the system calls the app cannot do without: boots on the probe kernel with them failing, no build
    known_needed: list[str] = []
    survived: set[str] = set()
    checked: list[dict] | None = None
    if minimise_set and search == "probdd" and budget != 0:
        checked, known_needed, survived = _check_calls(run, recipe, probe_kdir, image, cands, classes, by_object,
                                                       user.by_option, reasons)
        for o, need in rootfs.init_needs(recipe).items():
            if o in cands and o not in known_needed:
                known_needed.append(o)
                reasons[o]["why"] += f"; {need}: kept without a trial kernel"
        if known_needed:
            run.say(f"kept without trying: {', '.join(known_needed)}")

    def odds_of(options: list[str]) -> dict[str, float]:
        """Each option's odds of being needed (:func:`priors`), from its class and how much of its own code
        the app's work ran (:func:`app_work`); an option whose system calls the app survived without is
        taken as reached code only."""
        return priors({o: "reached" if o in survived else reasons[o]["class"] for o in options},
                      {o: app_own.get(o, 0) for o in options})

    early = 0
    if minimise_set and search == "probdd" and len(chosen) > 1 and budget != 0:
        # probdd's first step before the whole set: when it passes, so does the whole set (the boot test is
        # monotonic), and that kernel is never built
        why = "minimise"
        before = memo.trials
        rest = [o for o in chosen if o not in known_needed]
        first = first_removal(odds_of(rest), rest) if rest else []
        if first and memo([o for o in chosen if o not in first]):
            run.say(f"the first minimisation step passed without {len(first)} options: the whole set passes too")
        early = memo.trials - before
    why = "candidates from the trace"
    if not memo(chosen):
        rest = [o for o in probe.options() if o not in chosen and o not in run.base_on]
        why = "bisection over the probe fragment"
        run.say(f"the candidates fail the boot test; adding back from {len(rest)} more probe options by bisection")
        added = add_back(chosen, rest, memo)
        if added is None:
            raise TailorError(f"discover {run.app}: even all probe options fail the boot test as a trial kernel; "
                              f"see {display_path(run.dir / 'trials.json')}")
        for o in added:
            reasons[o] = {"from": "bisection", "class": "bisection",
                          "why": "the boot test fails without it (found by bisection)"}
        chosen += added
    run.say(f"phase 4/5 {len(chosen)} options pass the boot test")

    # 5. minimise: drop options by class, most suspicious first, until none can go (ddmin)
    dropped: list[str] = []
    by_deps: list[str] = []
    untried: list[str] = []
    minimise_trials = 0
    if minimise_set and chosen:
        why = "minimise"
        trials_before = memo.trials
        within = "" if budget is None else f", within {budget} trial kernels"
        if search == "ddmin":
            groups = minimise_groups({o: reasons[o]["class"] for o in chosen},
                                     {o: len(evidence.by_option.get(o, ())) for o in chosen})
            run.say(f"minimising {len(chosen)} options by delta debugging, groups " +
                    ", ".join(f"{reasons[g[0]]['class']} ({len(g)})" for g in groups) + within)
            out = ddmin(groups, memo, budget=budget)
        else:
            odds = odds_of(chosen)
            run.say(f"minimising {len(chosen)} options by probabilistic delta debugging, least likely needed "
                    f"first: " + ", ".join(f"{o} {odds[o]:.2f}" for o in sorted(odds, key=odds.get)) + within)
            out = probdd(odds, memo, budget=None if budget is None else max(0, budget - early), needed=known_needed)
        needed = list(out.needed)
        if out.complete:  # a kept option needed only for what its dependencies carried in gives way to that
            left = None if budget is None else max(0, budget - early - out.trials)
            kept, swapped = unwrap_carriers(out.kept, out.needed, out.dropped, run.enabled, memo, left)
            for y, carried in swapped.items():
                run.say(f"{y} was needed only for {', '.join(carried)}, which its dependencies brought in: "
                        f"kept {', '.join(carried)} instead")
                needed = [o for o in needed if o != y] + carried
                for o in carried:
                    reasons[o]["why"] += (f"; kept in place of {y}, which the boot test needed only because its "
                                          f"dependencies brought this in (minimise)")
        else:
            kept, swapped = out.kept, {}
        minimise_trials = memo.trials - trials_before + early
        chosen, untried = kept, out.untried
        gone = [o for o in out.dropped if o not in chosen] + list(swapped)
        final = run.resolve(chosen)
        dropped, by_deps = split_kept_by_deps(gone, enabled_symbols(final.config))
        for o in gone:
            reasons.pop(o, None)
        for o in needed:
            if o not in known_needed:
                reasons[o]["why"] += "; the boot test fails without it (minimise)"
        for o in untried:
            reasons[o]["why"] += "; not tried without it (the minimisation budget ran out)"
        run.say(f"phase 5/5 minimised in {minimise_trials} trials: kept {len(chosen)}, dropped {len(dropped)}"
                + (f", {len(by_deps)} back through dependencies of kept options ({', '.join(by_deps)})"
                   if by_deps else "")
                + ("" if out.complete else f"; budget spent, left untried: {', '.join(untried)}"))
    else:
        run.say("phase 5/5 minimisation skipped (--no-minimise)" if chosen else "phase 5/5 nothing to minimise")
    final = run.resolve(chosen)
    for o in final.added:
        if o not in reasons:
            needers = [c for c in chosen if _depends_on(run.tree, c, o)]
            reasons[o] = {"from": "deps", "class": "deps",
                          "why": f"needed by {', '.join(needers) or 'the options above'} (resolve: deps)"
                                 + (" (minimise dropped it; the dependencies bring it back)" if o in by_deps else "")}
    passing = next(t for t in run.trials if t["result"] == "pass" and t["identity"] == final.identity)
    options = [{"option": o, "from": reasons[o]["from"], "class": reasons[o]["class"], "why": reasons[o]["why"]}
               for o in chosen + [a for a in final.added if a not in chosen]]
    summary = {
        "app": run.app,
        "recipe": display_path(recipe.path),
        "base": list(recipe.kernel.base),
        "probe_kernel": probe_kernel["identity"],
        "kernel": final.identity,
        "bzImage": passing.get("bzImage"),
        "options": options,
        "not_taken": [{"option": o, "why": w} for o, w in sorted(skipped.items())],
        "minimised": bool(minimise_set),
        "search": search if minimise_set else None,
        "dropped_by_minimise": dropped,
        "kept_by_deps": by_deps,
        "untried": untried,
        "minimise_trials": minimise_trials,
        "budget": budget,
        "syscalls": len(all_calls),
        "mapping": {k: v for k, v in found.items()},
        "trace": {"seconds": round(trace_s, 1), "lines": tr.lines, "bytes": tr.bytes_read,
                  "pcs_boot": counts["boot"], "pcs_setup": counts["setup"], "pcs_app": counts["app"],
                  "capped": tr.truncated, "functions_app": len(user.functions), "unmapped_app": user.unmapped,
                  "map_seconds": round(map_s, 1), "lines_seconds": round(tm.lines_seconds, 1)},
        "builds": run.builds,
        "boots": run.boots,
        "trials": len(run.trials),
        "seconds": round(time.monotonic() - run.start, 1),
    }
    if checked is not None:  # optional in the record: left out when nothing was checked
        summary["calls_checked"] = checked
    record = DiscoverySummary.from_dict(summary, display_path(run.dir / DiscoverySummary.FILE), with_format=False)
    DiscoveryTrace(
        app=run.app, probe_kernel=probe_kernel["identity"],
        functions={phase: m.functions for phase, m in maps.items()},
        by_option={phase: m.by_option for phase, m in maps.items()},
        evidence=evidence.by_option,
        by_line=tm.lines,
        classes={o: {"class": e.cls, "why": e.why} for o, e in classes.items()},
        entered={f: list(entered[f]) for o in cands for f in evidence.by_option[o] if f in entered},
    ).save(run.dir / DiscoveryTrace.FILE)
    DiscoveryTrials(run.app, run.trials).save(run.dir / DiscoveryTrials.FILE)
    summary = record.save(run.dir / DiscoverySummary.FILE)

    write_atomic(options_path(run.app), render("discover-options.yaml.j2", s=summary))
    run.say(f"{len(options)} options ({len(chosen)} asked, {len(final.added)} by deps) pass the boot "
            f"test on kernel {final.identity[:16]}: {', '.join(o['option'] for o in options) or 'none'}")
    run.say(f"total {summary['seconds']} s: {run.builds} kernel builds, {run.boots} boots, "
            f"{len(run.trials)} trials; {display_path(options_path(run.app))}")
    return summary


def _depends_on(tree, name: str, dep: str) -> bool:
    """True when *dep* appears in *name*'s dependencies (direct, or through its prompt's condition)."""
    from kconfiglib import expr_items

    sym = tree.kconf.syms.get(name)
    if sym is None:
        return False
    seen, todo = set(), [sym]
    while todo:
        s = todo.pop()
        if s in seen or not hasattr(s, "direct_dep"):
            continue
        seen.add(s)
        for item in expr_items(s.direct_dep):
            if getattr(item, "name", None) == dep:
                return True
            todo.append(item)
    return False


# --------------------------------------------------------------------------
# Writing the options into the recipe

_KERNEL_LINE = re.compile(r"^kernel:\s*(#.*)?$")


def write_recipe(recipe, summary: dict | None = None) -> Path:
    """Add the discovered options to *recipe*'s file as ``kernel.options`` with their reasons as comments.

    Refuses when the recipe already has options (remove them first). The new text is validated
    before it replaces the file.
    """

    summary = summary or DiscoverySummary.load(DiscoverySummary.path(recipe.name)).dump()
    if recipe.kernel.options:
        raise TailorError(f"{display_path(recipe.path)}: kernel.options already has {len(recipe.kernel.options)} "
                          f"options; remove them to write the discovered ones")
    block = render("discover-recipe-options.yaml.j2", s=summary)
    lines = recipe.path.read_text().splitlines(keepends=True)
    at = next((i for i, ln in enumerate(lines) if _KERNEL_LINE.match(ln.rstrip("\n"))), None)
    if at is None:
        if any(ln.startswith("kernel:") for ln in lines):
            raise TailorError(f"{display_path(recipe.path)}: kernel: is written inline; write it as a block "
                              f"mapping to add options")
        text = "".join(lines).rstrip("\n") + "\nkernel:\n" + block
    else:
        text = "".join(lines[:at + 1]) + block + "".join(lines[at + 1:])
    parse(text, recipe.path)  # must still validate
    return write_atomic(recipe.path, text)


# --------------------------------------------------------------------------
# The comparison in docs/discovery.md: discovered vs hand-found vs Lupine, from the committed measurement


def hand_found(name: str) -> dict | None:
    """The recipe's own kernel, from its hand-found ``kernel.options``, when it is built (``doit
    kernel:<app>``): ``{"identity", "bzImage", "syscalls"}`` (system calls compiled in, from its
    System.map), else None."""
    from tailor import records
    from tailor.measure import count_syscalls

    if not kernel.app_pointer(name).is_file():
        return None
    pointer = records.KernelPointer.load(kernel.app_pointer(name))
    try:
        calls = count_syscalls((pointer.files.dir / "System.map").read_text())["real"]
    except OSError:
        return None
    return {"identity": pointer.identity, "bzImage": pointer.sizes["bzImage"], "syscalls": calls}


_FALLBACK = re.compile(r"ENOSYS|Function not implemented|errno:? ?38\b|fall(?:ing)? ?back", re.I)
_CONSOLE_TIME = re.compile(r"^\s*\[\s*\d+\.\d+\]\s*")
_VARYING = [(re.compile(r"\d{4}-\d\d-\d\d[ T]+\d?\d:\d\d:\d\d(?:\.\d+)?\s+(?:\d+\s+)?"), ""),  # the app's clock (and thread)
            (re.compile(r"0x[0-9a-f]+"), "0x..."), (re.compile(r"\bsize \d+"), "size ...")]


def fallback_lines(console: str, probe_console: str = "", most: int = 6) -> list[str]:
    """What the app said on a kernel's console about calls the kernel does not provide, and that it
    did without (``native AIO failed: falling back to ...``, ``Function not implemented``): the
    console lines naming ENOSYS, errno 38 or a fallback, with the console's timestamp, the app's own
    clock and addresses taken out so repeats collapse, less those the app said on the probe kernel too
    (*probe_console*), which has every option discovery could find. At most *most* lines, in order."""
    def clean(line: str) -> str:
        line = _CONSOLE_TIME.sub("", line)
        for pattern, by in _VARYING:
            line = pattern.sub(by, line)
        return line.strip()

    already = {clean(line) for line in probe_console.splitlines() if _FALLBACK.search(line)}
    out: list[str] = []
    for line in console.splitlines():
        text = clean(line)
        if _FALLBACK.search(text) and text not in already and text not in out:
            out.append(text)
    return out[:most]


def discovered_fallbacks(app: str, identity: str) -> list[str]:
    """:func:`fallback_lines` of discovery's last passing trial of kernel *identity* (the discovered
    one) in ``out/discover/<app>/``, against its boot on the probe kernel; empty when either console
    log is gone."""
    from tailor.records.discovery import DiscoveryTrials

    run = paths.discover_dir(app)
    try:
        trials = DiscoveryTrials.load(DiscoveryTrials.path(app)).trials
        passed = [t for t in trials if t["result"] == "pass" and t.get("identity") == identity]
        console = (run / "trials" / str(passed[-1]["trial"]) / "console.log").read_text(errors="replace")
        probe_console = (run / "probe-boot" / "console.log").read_text(errors="replace")
    except (OSError, IndexError, TailorError):
        return []
    return fallback_lines(console, probe_console)


def comparison_rows(measured: list[dict]) -> list[dict]:
    """The table of docs/discovery.md (rendered by ``python -m tailor docs`` from the newest snapshot's
    ``discover.json``): one row per app that benchmarks/discover.py measured, its discovered options
    against the recipe's (as they were when measured) and Lupine's, its kernel against the hand-found
    one. An option only discovered carries its reason when the measurement recorded it."""
    lupine = lupine_options()
    rows = []
    for m in sorted(measured, key=lambda m: m["app"]):
        why = {o["option"]: o for o in m.get("options", [])}
        lup = lupine.get(m["app"])
        rows.append({
            "app": m["app"], "discovered": list(m["discovered"]), "recipe": list(m["recipe"]),
            "lupine": None if lup is None else list(lup),
            "only_discovered": [why.get(o, {"option": o, "class": m.get("classes", {}).get(o)})
                                for o in m["discovered"] if o not in m["recipe"]],
            "only_recipe": [o for o in m["recipe"] if o not in m["discovered"]],
            "bzimage": m["bzImage"], "trials": m["trials"], "builds": m["builds"], "minimised": m["minimised"],
            "search": m.get("search") or ("ddmin" if m["minimised"] else None), "hand": m.get("hand_found"),
            "measured": m.get("measured"), "exercise": _exercise_steps(m), "notes": _recipe_notes(m["app"]),
            "fallbacks": m.get("fallbacks", []),
        })
    return rows


def _recipe_notes(app: str) -> dict[str, str]:
    """The comments of catalogue recipe *app*'s ``kernel.options`` (:func:`recipe.option_notes`): what
    the hand-found options were chosen for, beside what discovery did without (empty for no such recipe)."""
    try:
        return option_notes(find(app))
    except TailorError:
        return {}


def _exercise_steps(measured: dict) -> int:
    """How many ``test.exercise`` steps ran in measurement row *measured*: as recorded, or for a row from
    before the benchmark recorded it, the steps of the catalogue recipe of that name (0 when it has none)."""
    if "exercise" in measured:
        return measured["exercise"]
    try:
        return len(find(measured["app"]).test.exercise)
    except TailorError:
        return 0


# --------------------------------------------------------------------------
# doit


def discover_action(recipe) -> None:
    discover(recipe)
