"""docs/architecture.md's architecture section names every module of the tailor package, and the package's
module-level imports form no cycle."""

import re
import subprocess
import sys
from pathlib import Path

from tailor import imports

PROJECT = Path(__file__).resolve().parent.parent
PACKAGE = PROJECT / "tailor"


def _modules() -> dict[str, Path]:
    """``{"image.layers": path, "boot": path, ...}`` for every module file of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out[".".join(parts)] = path
    return out


def _architecture_section() -> str:
    text = (PROJECT / "docs" / "architecture.md").read_text()
    start = text.index("# Architecture")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_readme_architecture_names_every_module():
    named = set(re.findall(r"`([a-z_][a-z_.]*)`", _architecture_section()))
    missing = [m for m in _modules() if m.split(".")[-1] not in named and m not in named]
    assert not missing, f"docs/architecture.md's architecture section does not name: {', '.join(missing)}"


def _top_level_imports(path: Path, name: str, mods: dict[str, Path]) -> set[str]:
    """The tailor modules (among *mods*) *path* imports at module level (``from tailor import x`` counts as x)."""
    return imports.imports_of(name, path.read_text(), mods, top_level=True)


def test_no_import_cycle_among_tailor_modules():
    mods = _modules()
    graph = {name: _top_level_imports(path, name, mods) for name, path in mods.items()}
    # a package's __init__ importing its own submodules is not a cycle of layers
    for name in graph:
        graph[name] = {d for d in graph[name] if not d.startswith(name + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_image_package_does_not_import_the_rootfs_stage():
    """The rootfs stage uses tailor.image; the image package builds with tailor.debian and tailor.fstree,
    never with the stage above it (the arrow image -> rootfs ran back up the picture)."""
    mods = _modules()
    up = sorted(name for name, path in mods.items() if name.split(".")[0] == "image"
                and "rootfs" in _top_level_imports(path, name, mods))
    assert not up, f"imports the rootfs stage: {', '.join(up)}"


def test_fixed_values_are_compared_through_their_enum_only():
    """``"cpio"``/``"ext2"`` (and the other fixed values of tailor.kinds) appear as string literals in
    comparisons nowhere but kinds.py: code compares against the enum members."""
    pattern = re.compile(r"""(==|!=|\bin)\s*\(?\s*["'](cpio|ext2|pvh|bzimage|kvm|tcg)["']|["'](cpio|ext2|pvh|bzimage|kvm|tcg)["']\s*(==|!=)""")
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "kinds.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line.split("#")[0]):
                offenders.append(f"{path.relative_to(PROJECT)}:{n}: {line.strip()}")
    assert not offenders, "compare against tailor.kinds' members:\n" + "\n".join(offenders)


def test_the_schema_probe_types_are_the_probe_registry():
    from tailor import probes, schema

    assert schema.PROBES == probes.PROBE_TYPES and set(schema.NETWORK_PROBES) == set(probes.PROBES)


def test_no_stage_module_imports_doit():
    """The task graph (tailor/tasks/) is the only place that knows doit; stages are plain functions."""
    offenders = [f"{name}: {line.strip()}" for name, path in _modules().items() if not name.startswith("tasks")
                 for line in path.read_text().splitlines()
                 if re.match(r"\s*(from|import)\s+doit\b", line)]
    assert not offenders, "imports doit outside tailor/tasks/:\n" + "\n".join(offenders)


def test_making_every_task_imports_none_of_the_studying_stages():
    """Making the task list (every doit run) imports no discovery, report or measurement code: those are
    imported when one of their tasks runs."""
    code = ("import sys; sys.argv = ['doit', 'list']; import dodo\n"
            "for name in dir(dodo):\n"
            "    if name.startswith('task_'):\n"
            "        made = getattr(dodo, name)()\n"
            "        list(made) if not isinstance(made, dict) else made\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('tailor.'))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    assert "tailor.tasks.build" in loaded
    assert not loaded & {"tailor.discover", "tailor.trace", "tailor.report", "tailor.measure", "tailor.fits",
                         "tailor.slim"}, sorted(loaded)


def test_a_stage_digest_covers_its_import_closure_and_nothing_else(monkeypatch):
    """A change to any module a stage imports, however indirectly, changes that stage's code digest; a
    module outside the closure does not."""
    assert {"boot", "qemu", "console", "probes", "records", "kinds"} <= set(imports.closure("boot"))
    assert {"config", "kconfig", "_kconfig_functions", "source"} <= set(imports.closure("config"))
    assert "image.build" in imports.closure("image.build") and "image" in imports.closure("image.build")
    assert "discover" not in imports.closure("boot") and "qemu" not in imports.closure("config")
    before = {s: imports.code_digest(s) for s in ("boot", "config", "rootfs")}
    real = imports.graph()
    changed = {n: (deps, "0" * 64 if n == "console" else digest) for n, (deps, digest) in real.items()}
    monkeypatch.setattr(imports, "graph", lambda: changed)
    assert imports.code_digest("boot") != before["boot"]  # boot -> qemu -> console
    assert imports.code_digest("config") == before["config"]
    assert imports.code_digest("rootfs") == before["rootfs"]


def test_a_module_over_400_lines_says_why():
    """A long module is allowed when its docstring says why it is one module ("Over 400 lines ...")."""
    long = [f"{name} ({n} lines)" for name, path in _modules().items()
            if (n := len(path.read_text().splitlines())) > 400 and "Over 400 lines" not in path.read_text()[:4000]]
    assert not long, "over 400 lines without a reason in the docstring: " + ", ".join(long)


def _global_names_used(table) -> set[str]:
    """The names every function and class of a module's symbol table reads as globals."""
    used = set()
    for child in table.get_children():
        used |= {s.get_name() for s in child.get_symbols()
                 if s.is_global() and s.is_referenced() and not s.is_assigned() and not s.is_parameter()}
        used |= _global_names_used(child)
    return used


def test_every_global_name_a_module_uses_is_defined():
    """A name read as a global in a function must be defined in the module or be a builtin: an import
    lost in a move is otherwise a NameError on the first run of a rare path (rootfs's check of an
    overlay-provided app.command called read_dynamic, which a refactor had stopped importing)."""
    import builtins
    import importlib
    import symtable

    missing = []
    for name, path in _modules().items():
        module = importlib.import_module(f"tailor.{name}" if name else "tailor")
        table = symtable.symtable(path.read_text(), str(path), "exec")
        assigned = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}
        missing += [f"{name}: {n}" for n in sorted(_global_names_used(table))  # (a module may del its temporaries)
                    if not hasattr(module, n) and not hasattr(builtins, n) and n not in assigned]
    assert not missing, missing
