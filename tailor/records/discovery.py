"""The records discovery writes (``doit discover:<app>``, :mod:`tailor.discover`) and reads back, and
the fits check's result (:mod:`tailor.fits`).

Every file of ``out/discover/<app>/`` has ``format`` :data:`DISCOVER_FORMAT` (one version for all of
them: they are written by one run and change together; the discover tasks rerun when it changes):

``discover.json`` (:class:`DiscoverySummary`; read by ``--write``, the comparison table, fits and a benchmark)
    ``app``, ``recipe`` (its path), ``base`` (fragments), ``probe_kernel`` and ``kernel`` (identities),
    ``bzImage`` (bytes of the passing kernel, null if unknown), ``options`` (``{"option", "from", "class",
    "why"}`` each), ``not_taken`` (``{"option", "why"}``), ``minimised``, ``dropped_by_minimise``,
    ``kept_by_deps``, ``untried``, ``minimise_trials``, ``budget`` (null: no limit), ``syscalls`` (how
    many the app ran), ``mapping`` (candidates found by ``objects``, ``lines``, ``lines_only``),
    ``trace`` (the trace's figures), ``builds``, ``boots``, ``trials`` (counts) and ``seconds``.
``trials.json`` (:class:`DiscoveryTrials`)
    ``app`` and ``trials``: each trial's ``trial`` (number), ``why``, ``options``, ``result`` (``pass``,
    ``fail`` or ``unresolvable``), ``reason``, ``identity``, ``build_s`` and ``boot_s``, and, when it was
    built or borrowed, ``added_by_deps``, ``enabled``, ``bzImage`` and ``same_as``.
``syscalls.json`` (:class:`DiscoverySyscalls`)
    ``app``, ``probe_kernel`` and the system calls run in each phase: ``app_phase`` (after the init
    started), ``app_exec`` (after it exec'd the app), ``boot_phase`` and ``all``.
``trace.json`` (:class:`DiscoveryTrace`)
    ``app``, ``probe_kernel``, ``functions`` (phase -> function -> pcs run), ``by_option`` (phase ->
    option -> functions), ``evidence`` (candidate -> functions), ``by_line`` (option -> functions found by
    ``#if`` lines), ``classes`` (candidate -> ``{"class", "why"}``) and ``entered`` (function -> callers).
``null-<script digest>.json`` beside the probe kernel (:class:`NullTrace`, a cache: a damaged one is traced again)
    ``probe_kernel``, ``functions`` (the null app's) and ``trace_lines``.

``out/fits/<app>.json`` (:class:`FitsReport`, ``tailor-fits/1``, written by ``doit fits:<app>``)
    ``app``, ``needs_from`` (where the needs were read), ``needs`` (each need's ``option``, ``source``,
    ``why``, ``syscalls``, ``functions``, ``cls``) and ``baselines`` (name -> ``{"config", "built"}`` and,
    when built, ``fits`` and ``missing``).

Rows (options, trials, needs) stay dicts: their readers take a few keys each, which ``ROWS`` makes sure
are there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tailor import paths
from tailor.records import Record

DISCOVER_FORMAT = "tailor-discover/1"
"""The ``format`` of every file discovery writes; change it when a key is added, removed, renamed or
changes meaning (the discover tasks rerun)."""

_INT_OR_NONE = (int, type(None))
_NUMBER = (int, float)


class _InDiscoverDir:
    """A record with a fixed file name in ``out/discover/<app>/``."""

    FILE: ClassVar[str]

    @classmethod
    def path(cls, app: str) -> Path:
        return paths.discover_dir(app) / cls.FILE


@dataclass(frozen=True)
class DiscoverySummary(_InDiscoverDir, Record):
    """A discovery's outcome: ``out/discover/<app>/discover.json``."""

    FORMAT: ClassVar[str] = DISCOVER_FORMAT
    FILE: ClassVar[str] = "discover.json"
    app: str
    recipe: str
    base: list
    probe_kernel: str
    kernel: str
    bzimage: int | None
    options: list
    not_taken: list
    minimised: bool
    dropped_by_minimise: list
    kept_by_deps: list
    untried: list
    minimise_trials: int
    budget: int | None
    syscalls: int
    mapping: dict
    trace: dict
    builds: int
    boots: int
    trials: int
    seconds: int | float
    search: str | None = None
    """How minimisation searched (``probdd``, ``ddmin``); records written before it existed leave it out
    (they used ddmin), so it is optional and the format stays."""
    calls_checked: list | None = None
    """The system call checks before minimisation (:mod:`tailor.enosys`): per option, its calls made to
    fail, the result and the boot's seconds; the control boot's row has option ``""``. Optional: records
    written before the checks existed have none."""

    KEYS: ClassVar[dict] = {
        "app": ("app", str), "recipe": ("recipe", str), "base": ("base", list), "probe_kernel": ("probe_kernel", str),
        "kernel": ("kernel", str), "bzImage": ("bzimage", _INT_OR_NONE), "options": ("options", list),
        "not_taken": ("not_taken", list), "minimised": ("minimised", bool),
        "dropped_by_minimise": ("dropped_by_minimise", list), "kept_by_deps": ("kept_by_deps", list),
        "untried": ("untried", list), "minimise_trials": ("minimise_trials", int), "budget": ("budget", _INT_OR_NONE),
        "syscalls": ("syscalls", int), "mapping": ("mapping", dict), "trace": ("trace", dict),
        "builds": ("builds", int), "boots": ("boots", int), "trials": ("trials", int), "seconds": ("seconds", _NUMBER),
        "search": ("search", str), "calls_checked": ("calls_checked", list),
    }
    OPTIONAL: ClassVar[frozenset] = frozenset({"search", "calls_checked"})
    NESTED: ClassVar[dict] = {
        "mapping": ("objects", "lines", "lines_only"),
        "trace": ("seconds", "lines", "bytes", "pcs_boot", "pcs_setup", "pcs_app", "capped", "functions_app",
                  "unmapped_app", "map_seconds", "lines_seconds"),
    }
    ROWS: ClassVar[dict] = {"options": ("option", "from", "class", "why"), "not_taken": ("option", "why"),
                            "calls_checked": ("option", "calls", "result", "reason", "boot_s")}


@dataclass(frozen=True)
class DiscoveryTrials(_InDiscoverDir, Record):
    """Every trial kernel of a discovery: ``out/discover/<app>/trials.json`` (rewritten after each trial)."""

    FORMAT: ClassVar[str] = DISCOVER_FORMAT
    FILE: ClassVar[str] = "trials.json"
    app: str
    trials: list

    KEYS: ClassVar[dict] = {"app": ("app", str), "trials": ("trials", list)}
    ROWS: ClassVar[dict] = {"trials": ("trial", "why", "options", "result", "reason", "identity", "build_s",
                                       "boot_s")}


@dataclass(frozen=True)
class DiscoverySyscalls(_InDiscoverDir, Record):
    """The system calls a discovery's trace ran, by phase: ``out/discover/<app>/syscalls.json``."""

    FORMAT: ClassVar[str] = DISCOVER_FORMAT
    FILE: ClassVar[str] = "syscalls.json"
    app: str
    probe_kernel: str
    app_phase: list
    app_exec: list
    boot_phase: list
    all: list

    KEYS: ClassVar[dict] = {"app": ("app", str), "probe_kernel": ("probe_kernel", str),
                            "app_phase": ("app_phase", list), "app_exec": ("app_exec", list),
                            "boot_phase": ("boot_phase", list), "all": ("all", list)}


@dataclass(frozen=True)
class DiscoveryTrace(_InDiscoverDir, Record):
    """What a discovery's trace ran and how it mapped to options: ``out/discover/<app>/trace.json``."""

    FORMAT: ClassVar[str] = DISCOVER_FORMAT
    FILE: ClassVar[str] = "trace.json"
    app: str
    probe_kernel: str
    functions: dict
    by_option: dict
    evidence: dict
    by_line: dict
    classes: dict
    entered: dict

    KEYS: ClassVar[dict] = {"app": ("app", str), "probe_kernel": ("probe_kernel", str),
                            "functions": ("functions", dict), "by_option": ("by_option", dict),
                            "evidence": ("evidence", dict), "by_line": ("by_line", dict),
                            "classes": ("classes", dict), "entered": ("entered", dict)}


@dataclass(frozen=True)
class NullTrace(Record):
    """The kernel functions the null app ran on a probe kernel (a cache beside the probe kernel)."""

    FORMAT: ClassVar[str] = DISCOVER_FORMAT
    probe_kernel: str
    functions: list
    trace_lines: int

    KEYS: ClassVar[dict] = {"probe_kernel": ("probe_kernel", str), "functions": ("functions", list),
                            "trace_lines": ("trace_lines", int)}


@dataclass(frozen=True)
class FitsReport(Record):
    """An app's needs against every baseline's .config: ``out/fits/<app>.json``."""

    FORMAT: ClassVar[str] = "tailor-fits/1"
    app: str
    needs_from: str
    needs: list
    baselines: dict

    KEYS: ClassVar[dict] = {"app": ("app", str), "needs_from": ("needs_from", str), "needs": ("needs", list),
                            "baselines": ("baselines", dict)}
    ROWS: ClassVar[dict] = {"needs": ("option", "source", "why")}

    @classmethod
    def path(cls, app: str) -> Path:
        return paths.fits_path(app)
