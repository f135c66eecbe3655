"""Pre-flight check: does a kernel .config have what an app needs?

Before running a workload on a kernel you did not tailor (Kata's guest kernel,
Firecracker's, a distribution's), ask whether it fits::

    python -m tailor fits redis --config /path/to/.config
    python -m tailor fits redis --config /path/to/.config --from-recipe
    doit fits:redis        # against every baseline built in out/baseline/<name>/.config

**What an app needs** comes from its discovery record, ``out/discover/<app>/``
(``doit discover:<app>``): every option of ``discover.json``'s ``options`` with
its ``from`` (``trace``, ``deps``, ``bisection``) and ``why``; ``trace.json``'s
``evidence`` (option -> functions the app ran under it; else ``by_option.app``)
names the system calls (``__x64_sys_NAME`` -> ``NAME``) and other functions
behind each option. Without ``trace.json`` the ``why`` is all there is. With
``--from-recipe`` the needs are the recipe's own ``kernel.options`` set to
``y``, each with its comment in the recipe as the reason (before any discovery).

**Fitting** means every needed option is ``=y``; ``=m`` does not count (the
microVMs here boot without modules); ``# CONFIG_X is not set`` and an absent
line are "not set". One line per missing option says what needs it (system
calls first, then functions); the last says ``<app> fits <config>`` or ``<app>
does not fit <config>: N options missing``. Only options *on top of* the
recipe's base are checked (what discovery and ``kernel.options`` record), not
the base fragments themselves.

``python -m tailor fits`` exits 0 when it fits, 3 when it does not, 1 on an
error (one line). ``doit fits:<app>`` prints the report per baseline (one not
built is named with the command that builds it), writes ``out/fits/<app>.json``
and succeeds either way; without a discovery record it checks the recipe's
options and says so.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from tailor import paths
from tailor.errors import TailorError
from tailor.records.discovery import DiscoverySummary, DiscoverySyscalls, DiscoveryTrace, FitsReport
from tailor.util import config_values, display_path

FORMAT = FitsReport.FORMAT
EXIT_DOES_NOT_FIT = 3
SYSCALL_PREFIX = "__x64_sys_"  # as tailor.discover (not imported: it pulls in the whole build pipeline)
MODULE = "is a module (=m); microVMs here boot without modules"
SHOW_CALLS, SHOW_FUNCTIONS = 6, 4


@dataclass(frozen=True)
class Need:
    """One option an app needs; *source*: ``trace``, ``deps``, ``bisection`` or ``recipe``; *cls*: the
    record's ``class`` of the option, if any."""

    option: str
    source: str
    why: str
    syscalls: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    cls: str | None = None


@dataclass(frozen=True)
class Needs:
    """An app's needs; *origin*: where they were read; *syscalls*: the app phase's (syscalls.json)."""

    app: str
    origin: str
    options: tuple[Need, ...]
    syscalls: tuple[str, ...] = ()


@dataclass(frozen=True)
class Missing:
    """A needed option that is not ``=y``; *state*: ``not set``, :data:`MODULE` or ``is =VALUE``."""

    option: str
    state: str
    needed_by: str


def _expect(value, kind: type, path: Path, key: str, what: str):
    if not isinstance(value, kind):
        got = "nothing" if value is None else type(value).__name__
        raise TailorError(f"{display_path(path)}: {key}: expected {what}, got {got}; "
                          f"the discovery record is damaged, run its `doit discover` again")
    return value


def _lists(value, path: Path, key: str) -> dict[str, list[str]]:
    """An ``{option: [function, ...]}`` mapping of trace.json, checked."""
    _expect(value, dict, path, key, "a mapping of option to functions")
    for opt, fns in value.items():
        _expect(fns, list, path, f"{key}.{opt}", "a list of function names")
        for i, fn in enumerate(fns):
            _expect(fn, str, path, f"{key}.{opt}[{i}]", "a function name")
    return value


def _split(functions: list[str], counts: dict[str, int]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(system calls, other functions): calls by name, functions by pcs run (most first)."""
    calls = sorted({f[len(SYSCALL_PREFIX):] for f in functions if f.startswith(SYSCALL_PREFIX)})
    others = sorted({f for f in functions if not f.startswith(SYSCALL_PREFIX)}, key=lambda f: (-counts.get(f, 0), f))
    return tuple(calls), tuple(others)


def needs(app: str) -> Needs:
    """What *app* needs, from its discovery record in ``out/discover/<app>/``."""
    d = paths.discover_dir(app)
    record = DiscoverySummary.path(app)
    if not record.is_file():
        raise TailorError(f"{display_path(record)}: no discovery record of {app}; run `doit discover:{app}` first "
                          f"(or check the recipe's own kernel.options with --from-recipe)")
    entries = DiscoverySummary.load(record).options
    evidence, by_app, counts, calls = {}, {}, {}, []
    trace, sc = DiscoveryTrace.path(app), DiscoverySyscalls.path(app)
    if trace.is_file():  # optional: without it, each option's why is all there is
        t = DiscoveryTrace.load(trace)
        evidence = _lists(t.evidence, trace, "evidence")
        by_app = _lists(t.by_option.get("app", {}), trace, "by_option.app")
        counts = t.functions.get("app", {})
        counts = {f: n for f, n in counts.items() if isinstance(n, int)} if isinstance(counts, dict) else {}
    if sc.is_file():
        calls = DiscoverySyscalls.load(sc).app_phase
    out = []
    for i, e in enumerate(entries):
        at = f"options[{i}]"
        _expect(e, dict, record, at, "an object {option, from, why}")
        name = _expect(e.get("option"), str, record, f"{at}.option", "an option name").removeprefix("CONFIG_")
        why = _expect(e.get("why", ""), str, record, f"{at}.why", "a reason")
        source = _expect(e.get("from", "?"), str, record, f"{at}.from", "trace, deps or bisection")
        syscalls, functions = _split(evidence.get(name) or by_app.get(name) or [], counts)
        cls = e.get("class")
        out.append(Need(name, source, why, syscalls, functions, cls if isinstance(cls, str) else None))
    return Needs(app, display_path(d), tuple(out), tuple(str(c) for c in calls))


def from_recipe(recipe) -> Needs:
    """What *recipe* asks for itself: its ``kernel.options`` set to ``y``, each with its comment as the reason."""
    lines = dict(recipe.kernel.option_lines)
    text = recipe.path.read_text().splitlines() if recipe.path.is_file() else []
    out = []
    for name, value in recipe.kernel.options:
        n = lines.get(name, 0)
        note = text[n - 1].split(" #", 1)[1].strip() if 0 < n <= len(text) and " #" in text[n - 1] else ""
        if value == "y":
            out.append(Need(name, "recipe", "recipe kernel.options" + (f" ({note})" if note else "")))
    return Needs(recipe.name, f"{display_path(recipe.path)} kernel.options", tuple(out))


def read_config(path: Path) -> str:
    """A .config's text; a one-line error when it cannot be read or is no kernel config."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        raise TailorError(f"{display_path(path)}: cannot read ({e.strerror})") from None
    if not any(ln.startswith(("CONFIG_", "# CONFIG_")) for ln in text.splitlines()):
        raise TailorError(f"{display_path(path)}: no CONFIG_ lines; not a kernel .config")
    return text


def _some(names: tuple[str, ...], at_most: int) -> str:
    return ", ".join(names[:at_most]) + (f" (+{len(names) - at_most} more)" if len(names) > at_most else "")


def needed_by(need: Need) -> str:
    """What needs *need*: its system calls and functions when the trace named them, else its reason."""
    parts = []
    if need.syscalls:
        parts.append(f"system call{'s' if len(need.syscalls) > 1 else ''} {_some(need.syscalls, SHOW_CALLS)}")
    if need.functions:
        parts.append(f"function{'s' if len(need.functions) > 1 else ''} {_some(need.functions, SHOW_FUNCTIONS)}")
    return "needed by " + "; ".join(parts) if parts else (need.why or f"found by {need.source}")


def check(needs: Needs, config_text: str) -> list[Missing]:
    """Every needed option that is not ``=y`` in *config_text*, in the order of the needs."""
    values = config_values(config_text)
    out = []
    for need in needs.options:
        value = values.get(f"CONFIG_{need.option}")
        if value != "y":
            state = "not set" if value is None else MODULE if value == "m" else f"is ={value}"
            out.append(Missing(need.option, state, needed_by(need)))
    return out


def format_report(app: str, config_label: str, missing: list[Missing]) -> str:
    """One line per missing option and a verdict line."""
    lines = [f"{app}: CONFIG_{m.option} {m.state}: {m.needed_by}" for m in missing]
    n = len(missing)
    verdict = f"does not fit {config_label}: {n} option{'s' if n > 1 else ''} missing" if n else f"fits {config_label}"
    return "\n".join(lines + [f"{app} {verdict}"])


def against_baselines(recipe) -> dict:
    """Check *recipe*'s needs against every baseline's .config; print the report, write ``out/fits/<app>.json``."""
    from tailor import baseline

    app, lines, results = recipe.name, [], {}
    recorded = (paths.discover_dir(app) / "discover.json").is_file()
    need = needs(app) if recorded else from_recipe(recipe)
    if not recorded:
        lines.append(f"{app}: no discovery record (doit discover:{app}); checking {need.origin} instead")
    for name in baseline.BASELINES:
        config = baseline.baseline_dir(name) / ".config"
        entry = {"config": display_path(config), "built": config.is_file()}
        if not config.is_file():
            how = (f"doit baseline:{name}" if baseline.available(name)
                   else f"{baseline.input_path(name).name} not found beside the project")
            lines.append(f"{app}: baseline {name} not built ({how})")
        else:
            missing = check(need, read_config(config))
            lines.append(format_report(app, f"the {name} baseline ({display_path(config)})", missing))
            entry.update(fits=not missing, missing=[asdict(m) for m in missing])
        results[name] = entry
    print("\n".join(lines), flush=True)
    return FitsReport(app=app, needs_from=need.origin, needs=[asdict(n) for n in need.options],
                      baselines=results).save(FitsReport.path(app))


# --------------------------------------------------------------------------
# The table in docs/discovery.md (and its summary line in the README): every catalogue app on the
# baselines' configs

TABLE_BASELINES = ("firecracker", "kata", "microvm")
"""The configs the table checks: the guest kernels people run containers in today, and the kernel's own
x86_64_defconfig + kvm_guest.config."""
TABLE_START = "<!-- fits:start (generated by `doit fits_table`; do not edit by hand) -->"
TABLE_END = "<!-- fits:end -->"
SUMMARY_START = "<!-- fits-summary:start (generated by `doit fits_table`; do not edit by hand) -->"
SUMMARY_END = "<!-- fits-summary:end -->"


def baseline_config(name: str) -> str | None:
    """The baseline *name*'s resolved .config: the built one in ``out/baseline/<name>/``, else resolved now
    (kbuild's olddefconfig, no compile); None when its input is not beside the project."""
    from tailor import baseline, source

    built = baseline.baseline_dir(name) / ".config"
    if built.is_file():
        return read_config(built)
    if not baseline.available(name):
        return None
    ref = baseline.source_ref()
    return baseline.resolve_config(name, source.prepare(ref), ref.id)[0]


def measured_needs(app: str, row: dict, where: str) -> Needs:
    """What *app* needs by its row of a measurement snapshot's ``discover.json`` (*where*: that file):
    the row's ``discovered`` options, each with its ``classes`` entry and, where the row has ``options``
    (rows measured before 2026-12-03 do not), its origin and reason."""
    names = _expect(row.get("discovered"), list, Path(where), f"rows[{app}].discovered", "a list of options")
    classes = row.get("classes") if isinstance(row.get("classes"), dict) else {}
    detail = {e.get("option"): e for e in row.get("options") or () if isinstance(e, dict)}
    out = []
    for i, name in enumerate(names):
        _expect(name, str, Path(where), f"rows[{app}].discovered[{i}]", "an option name")
        e = detail.get(name, {})
        cls = classes.get(name, e.get("class"))
        out.append(Need(name.removeprefix("CONFIG_"), str(e.get("from", "discovery")), str(e.get("why", "")),
                        cls=cls if isinstance(cls, str) else None))
    return Needs(app, where, tuple(out))


def table_rows(recipes, configs: dict[str, str | None], measured: dict[str, dict] | None = None,
               where: str = "discover.json") -> list[dict]:
    """One row per recipe: where its needs come from and, per config of *configs*, the options it lacks
    (None: that config is not available). An app with a row in *measured* (``discover.json``'s rows of a
    committed measurement snapshot, by app; *where* names that file) needs what its minimised discovery
    kept; any other app what its recipe's ``kernel.options`` ask for. Records in ``out/discover/`` are not
    read: the table is the same on every machine."""
    measured = measured or {}
    rows = []
    for r in recipes:
        row = measured.get(r.name)
        need = measured_needs(r.name, row, where) if row else from_recipe(r)
        rows.append({"app": r.name, "from": f"discovery ({str(row.get('measured', '?'))[:10]})" if row else "recipe",
                     "needs": [n.option for n in need.options],
                     "missing": {name: None if text is None else [m.option for m in check(need, text)]
                                 for name, text in configs.items()}})
    return rows


def measured_rows() -> tuple[dict[str, dict], str]:
    """The discover rows of the newest measurement snapshot by app (none when it has no discover
    measurement), and that file's name for messages."""
    from tailor.figures import load_snapshot, newest_snapshot

    snap = newest_snapshot()
    results, _ = load_snapshot(snap)
    rows = (results.get("discover") or {}).get("rows") or []
    return {r["app"]: r for r in rows if isinstance(r, dict) and "app" in r}, display_path(snap / "discover.json")


def write_table(recipes, doc: Path | None = None, readme: Path | None = None) -> None:
    """Write the fits table between the fits markers of docs/discovery.md and its summary line in the README."""
    from tailor.templates import render
    from tailor.util import PROJECT, replace_marked

    recipes = [r for r in recipes if not r.variant]
    configs = {name: baseline_config(name) for name in TABLE_BASELINES}
    measured, where = measured_rows()
    rows = table_rows(recipes, configs, measured, where)
    doc = doc or PROJECT / "docs" / "discovery.md"
    readme = readme or PROJECT / "README.md"
    replace_marked(doc, TABLE_START, TABLE_END, render("fits.md.j2", rows=rows, configs=configs), "fits")
    fit = {name: None if text is None else sum(1 for r in rows if r["missing"][name] == [])
           for name, text in configs.items()}
    replace_marked(readme, SUMMARY_START, SUMMARY_END, render("fits-summary.md.j2", total=len(rows), fit=fit),
                   "fits-summary")
    print(f"tailor: fits table of {len(rows)} apps written to {display_path(doc)} (summary: {display_path(readme)})",
          file=sys.stderr)
