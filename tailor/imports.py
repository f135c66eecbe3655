"""Which tailor modules a module imports, and the digest of a stage's code from its import closure.

A doit task reruns when the code that does its work changes. Instead of a hand-kept list of
modules per stage (which goes stale when a stage starts using a new module), :func:`code_digest`
hashes every file of the stage's *import closure*: the stage module, every tailor module it imports
(at module level or inside a function), and theirs, transitively. A package import
(``from tailor import image``) counts as the package's ``__init__``; ``from tailor.image import
build`` counts as ``image.build`` (and, as Python runs it, the package's ``__init__`` too).

Reading imports parses Python (:mod:`ast`), which costs about 2 ms per file; the parsed imports
of each file are kept in ``out/cache/imports.json`` keyed by the file's sha256, so a no-op
``doit`` run reads and hashes the files and parses none. :func:`imports_of` is also what
``tests/test_architecture.py`` checks for cycles and upward arrows.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from pathlib import Path

from tailor.errors import TailorBug, TailorError
from tailor.util import out_dir, write_atomic

PACKAGE = Path(__file__).resolve().parent
CACHE_FORMAT = "tailor-imports/2"


def modules() -> dict[str, Path]:
    """``{"image.layers": path, "boot": path, "image": path of image/__init__.py, ...}`` for every
    module file of the package (the package's own ``__init__`` is left out)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out[".".join(parts)] = path
    return out


def imports_of(name: str, source: str | bytes, mods: dict[str, Path], top_level: bool = False) -> set[str]:
    """The tailor modules (keys of *mods*) the module *name* with *source* imports: at module level
    only with *top_level*, else anywhere (functions included, and a string that names a module, such
    as ``"tailor._kconfig_functions"``, which kconfiglib imports by name). ``from tailor import x``
    counts as ``x`` when x is a module, else as the package it was imported from."""
    tree = ast.parse(source)
    package = name if (mods.get(name) and mods[name].name == "__init__.py") else name.rpartition(".")[0]
    nodes = tree.body if top_level else ast.walk(tree)
    out = set()
    for node in nodes:
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
                if alias.name.startswith("tailor.") and alias.name[len("tailor."):] in mods:
                    out.add(alias.name[len("tailor."):])
        elif (not top_level and isinstance(node, ast.Constant) and isinstance(node.value, str)
              and node.value.startswith("tailor.") and node.value[len("tailor."):] in mods):
            out.add(node.value[len("tailor."):])  # imported by name (kconfiglib's KCONFIG_FUNCTIONS)
    out.discard(name)
    return out


def _cache_path() -> Path:
    return out_dir() / "cache" / "imports.json"


@functools.lru_cache(maxsize=1)
def graph() -> dict[str, tuple[set[str], str]]:
    """``{module: (the tailor modules it imports anywhere, sha256 of its file)}`` for the package,
    parsed once per file content (see the module docstring)."""
    mods = modules()
    try:
        cached = json.loads(_cache_path().read_text())
        known = cached["files"] if cached.get("format") == CACHE_FORMAT else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        known = {}
    out, fresh, changed = {}, {}, False
    for name, path in mods.items():
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        key = f"{name}:{digest}"
        deps = known.get(key)
        if not isinstance(deps, list):
            deps = sorted(imports_of(name, data, mods))
            changed = True
        fresh[key] = deps
        out[name] = (set(deps) & set(mods), digest)
    if changed or len(fresh) != len(known):
        try:
            write_atomic(_cache_path(), json.dumps({"format": CACHE_FORMAT, "files": fresh}, sort_keys=True))
        except (OSError, TailorError):  # a read-only out/ only costs the parse next time
            pass
    return out


def _parents(name: str) -> list[str]:
    """The packages Python runs the ``__init__`` of before module *name* (``image.build``: ``image``)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def closure(*names: str) -> list[str]:
    """The modules *names* and every tailor module they import, transitively, sorted."""
    g = graph()
    seen: set[str] = set()
    todo = list(names)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        if n not in g:
            raise TailorBug(f"imports.closure: no module tailor.{n}")
        seen.add(n)
        todo += [d for d in g[n][0] | set(_parents(n)) if d in g and d not in seen]
    return sorted(seen)


def code_digest(*names: str) -> str:
    """A digest of every file in the import closure of the modules *names*: part of a task's
    up-to-date check, so that a stage runs again when any code it runs changes."""
    g = graph()
    h = hashlib.sha256()
    for n in closure(*names):
        h.update(f"{n}\0{g[n][1]}\n".encode())
    return h.hexdigest()
