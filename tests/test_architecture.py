"""docs/architecture.md's architecture section names every module of the tailor package, and the package's
module-level imports form no cycle."""

import ast
import re
from pathlib import Path

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
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".") if package else []
                parent = parent[:len(parent) - (node.level - 1)] if node.level > 1 else parent
                base = ".".join(parent + ([base] if base else []))
            elif base == "tailor" or base.startswith("tailor."):
                base = base[len("tailor."):] if base != "tailor" else ""
            else:
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}".strip(".")
                if full in mods:
                    out.add(full)
                elif base in mods:
                    out.add(base)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tailor."):
                    out.add(alias.name[len("tailor."):])
    out.discard(name)
    return out


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
