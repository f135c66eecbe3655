"""The Kconfig engine: base fragments + recipe options -> a resolved, verified kernel ``.config``.

The kernel's own Kconfig tree decides every value. :func:`load_tree` parses it
with kconfiglib (through :class:`CompatKconfig`, a small compatibility layer
for syntax that kconfiglib 14.1.0 does not know) once per process and per
(source tree, arch). :func:`resolve` then

1. starts from all-no (every bool/tristate ``n``, ``y`` for the
   ``allnoconfig_y`` ones), exactly like ``make allnoconfig``;
2. applies the base fragments in order and the recipe's options last (a later
   assignment of the same symbol wins);
3. with ``resolve: deps``, enables the smallest set of dependencies that lets
   each asked symbol take its value and reports what it added;
4. verifies that every symbol a fragment or the recipe asks for ends with the
   asked value. A symbol that does not is a :class:`ResolveError` with one
   line per symbol: asked value, resolved value and why (the unmet
   ``depends on`` with the current values of its symbols, or what forces it).

The result carries the ``.config`` text (byte-identical to what
``make olddefconfig`` writes for it) and an identity hash: two recipes whose
resolved configs, kernel source and patches are identical get the same hash,
and later stages key the kernel build on it.

Over 400 lines because the resolution (about 420: the all-no start, the dependency solver, and the
"why" text that both :func:`resolve` and :func:`explain` give) is one piece of code over kconfiglib's
expressions; loading the tree, fragments and outputs around it are small.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import subprocess
import threading
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

import cachetools
import kconfiglib
from kconfiglib import (AND, BOOL, HEX, INT, OR, STRING, TRISTATE, Choice, Symbol,
                        expr_str, expr_value, split_expr)

from tailor.errors import TailorError
from tailor.kinds import Arch
from tailor.util import config_values, count_enabled, sha256_text, write_atomic, write_json

ARCHES = {"x86_64": "x86", "arm64": "arm64"}
"""Supported architectures and their SRCARCH (:class:`tailor.kinds.Arch`)."""

EMPTY = '""'
_BARE_MODULES = re.compile(r"^([ \t]*)modules[ \t]*$", re.M)


class ResolveError(TailorError):
    """Some asked symbols did not end with their asked value; ``outcomes`` says which and why."""

    def __init__(self, message: str, outcomes: list["Outcome"]):
        super().__init__(message)
        self.outcomes = outcomes


# --------------------------------------------------------------------------
# Loading the tree


class CompatKconfig(kconfiglib.Kconfig):
    """kconfiglib's parser, taught the Kconfig syntax that appeared after its last release.

    Linux 5.13 replaced ``option modules`` with a bare ``modules`` attribute
    (``kernel/module/Kconfig`` in 6.1); kconfiglib 14.1.0 fails on it. Every
    Kconfig file is read through :meth:`_open`, which rewrites that line to
    the old spelling, which kconfiglib understands and treats identically.
    """

    def _open(self, filename, mode):
        f = super()._open(filename, mode)
        if "r" not in mode or "b" in mode:
            return f
        with f:
            text = f.read()
        return StringIO(compat_text(text))


def compat_text(text: str) -> str:
    """Rewrite the post-14.1.0 Kconfig syntax in *text* into what kconfiglib parses."""
    if "modules" not in text:
        return text
    return _BARE_MODULES.sub(r"\1option modules", text)


def kernel_version(srctree: str | Path) -> str:
    """``VERSION.PATCHLEVEL.SUBLEVEL`` + ``EXTRAVERSION`` from the tree's top Makefile."""
    fields = {}
    try:
        with open(Path(srctree) / "Makefile") as f:
            for line in f:
                m = re.match(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=\s*(.*?)\s*$", line)
                if m:
                    fields.setdefault(m.group(1), m.group(2))
                if len(fields) == 4:
                    break
    except OSError as e:
        raise TailorError(f"{srctree}: not a kernel source tree ({e.strerror})") from None
    if not {"VERSION", "PATCHLEVEL"} <= fields.keys():
        raise TailorError(f"{srctree}/Makefile: no VERSION/PATCHLEVEL; not a kernel source tree")
    v = f"{fields['VERSION']}.{fields['PATCHLEVEL']}"
    if fields.get("SUBLEVEL"):
        v += f".{fields['SUBLEVEL']}"
    return v + fields.get("EXTRAVERSION", "")


@cachetools.cached(cachetools.LRUCache(maxsize=4))
def _cc_version_text(cc: str) -> str:
    try:
        out = subprocess.run(f"LC_ALL=C {cc} --version", shell=True, capture_output=True, text=True).stdout
    except OSError:
        return ""
    return out.splitlines()[0] if out else ""


def kbuild_env(srctree: str | Path, arch: str = "x86_64") -> dict[str, str]:
    """The variables kbuild's top Makefile exports to Kconfig, for parsing the tree like kbuild does."""
    if arch not in ARCHES:
        raise TailorError(f"arch {arch!r} is not supported; use one of {', '.join(ARCHES)}")
    cross = Arch(arch).cross_compile  # the cross gcc's version and flags decide CC_* symbols, as in kbuild
    cc = os.environ.get("TAILOR_CC", "gcc") if not cross else f"{cross}gcc"
    return {
        "srctree": str(Path(srctree).resolve()),
        "ARCH": arch, "SRCARCH": ARCHES[arch], "SUBARCH": "x86",
        "CC": cc, "LD": f"{cross}ld", "HOSTCC": "gcc", "HOSTCXX": "g++", "CROSS_COMPILE": cross,
        "OBJCOPY": f"{cross}objcopy", "NM": f"{cross}nm", "CLANG_FLAGS": "",
        "RUSTC": "rustc", "BINDGEN": "bindgen", "PAHOLE": "pahole", "HOSTPKG_CONFIG": "pkg-config",
        "KERNELVERSION": kernel_version(srctree),
        "CC_VERSION_TEXT": _cc_version_text(cc),
        "LC_ALL": "C",
        "KCONFIG_FUNCTIONS": "tailor._kconfig_functions",
    }


_environ_lock = threading.RLock()


@contextlib.contextmanager
def _environ(env: dict[str, str]):
    """Temporarily set *env* in os.environ (kconfiglib reads its variables from there)."""
    with _environ_lock:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


class Tree:
    """A parsed Kconfig tree; ``lock`` serialises resolutions, which mutate symbol values."""

    def __init__(self, srctree: Path, arch: str, kconf: CompatKconfig, env: dict[str, str]):
        self.srctree = srctree
        self.arch = arch
        self.kconf = kconf
        self.env = env
        self.lock = threading.RLock()
        self.version = env["KERNELVERSION"]
        self._names: list[str] | None = None

    @property
    def names(self) -> list[str]:
        if self._names is None:
            self._names = sorted(s.name for s in self.kconf.unique_defined_syms)
        return self._names

    def header(self) -> str:
        """The header kbuild's ``conf`` writes at the top of a .config."""
        return (f"#\n# Automatically generated file; DO NOT EDIT.\n"
                f"# {self.kconf.mainmenu_text}\n#\n")


_trees: cachetools.LRUCache = cachetools.LRUCache(maxsize=4)
_trees_lock = threading.Lock()
PARSE_COUNT = 0
"""How many times this process parsed a Kconfig tree (tests use it to check the cache)."""


def load_tree(srctree: str | Path, arch: str = "x86_64") -> Tree:
    """Parse the Kconfig tree of *srctree* for *arch*, once per process; later calls reuse it."""
    global PARSE_COUNT
    srctree = Path(srctree).resolve()
    key = (str(srctree), arch)
    with _trees_lock:
        tree = _trees.get(key)
        if tree is not None:
            return tree
        if not (srctree / "Kconfig").is_file():
            raise TailorError(f"{srctree}: no Kconfig file; not a kernel source tree")
        env = kbuild_env(srctree, arch)
        with _environ(env):
            try:
                kconf = CompatKconfig(str(srctree / "Kconfig"), warn=False, warn_to_stderr=False)
            except kconfiglib.KconfigError as e:
                first = str(e).strip().splitlines()[0]
                raise TailorError(f"{srctree}: kconfiglib cannot parse this kernel's Kconfig: {first}") from None
            except OSError as e:
                raise TailorError(f"{srctree}: cannot read Kconfig ({e})") from None
        PARSE_COUNT += 1
        tree = Tree(srctree, arch, kconf, env)
        _trees[key] = tree
        return tree


# --------------------------------------------------------------------------
# Fragments and assignments


@dataclass(frozen=True)
class Assign:
    """One requested value: ``name`` without ``CONFIG_``, the value as it appears in a .config
    (``y``, ``n``, a number, or a string without quotes), and where it was asked."""

    name: str
    value: str
    origin: str
    is_string: bool = False
    linux: "LinuxLines | None" = None
    """The kernel lines the assignment applies to (a ``# linux:`` guard in its fragment); None: every one."""


_LINE_SET = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
_LINE_UNSET = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set\s*$")
_LINE_GUARD = re.compile(r"^#\s*(fragment\s+)?linux:(.*)$")
_GUARD_TERM = re.compile(r"^(>=|<)?([0-9]+)\.([0-9]+)(?:\.([0-9]+))?$")


def version_tuple(version: str) -> tuple[int, ...]:
    """``6.12.118`` (or ``9.9.0-fake``) as ``(6, 12, 118)``, for comparing kernel versions."""
    m = re.match(r"^([0-9]+(?:\.[0-9]+)*)", version.strip())
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


@dataclass(frozen=True)
class LinuxLines:
    """Which kernel versions a fragment line (or a whole fragment) applies to: ``low <= v < high``.

    Written ``# linux: SPEC`` right above a ``CONFIG_`` line (that line only) or ``# fragment linux:
    SPEC`` before a fragment's first assignment (every line of it). SPEC is one or more of ``6.12``
    (that kernel line: 6.12.x), ``>=6.2`` and ``<6.2`` (``X.Y`` or ``X.Y.Z``), all of which must hold.
    """

    text: str
    origin: str
    whole: bool = False
    low: tuple[int, ...] = ()
    high: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, spec: str, origin: str, whole: bool = False) -> "LinuxLines":
        low, high = (), None
        terms = spec.replace(",", " ").split()
        if not terms:
            raise TailorError(f"{origin}: `# linux:` names no kernel line; write e.g. `# linux: 6.12` or `# linux: <6.2`")
        for term in terms:
            m = _GUARD_TERM.match(term)
            if not m:
                raise TailorError(f"{origin}: {term!r} is not a kernel line; write 6.12, >=6.2 or <6.2 "
                                  f"(versions as X.Y or X.Y.Z)")
            v = tuple(int(x) for x in m.groups()[1:] if x is not None)
            if m.group(1) in (None, ">="):
                low = max(low, v)
            if m.group(1) is None:
                v = (v[0], v[1] + 1) if len(v) == 2 else v[:2] + (v[2] + 1,)
            if m.group(1) in (None, "<"):
                high = v if high is None else min(high, v)
        if high is not None and low >= high:
            raise TailorError(f"{origin}: `linux: {spec.strip()}` matches no kernel version")
        return cls(" ".join(terms), origin, whole, low, high)

    def matches(self, version: str) -> bool:
        v = version_tuple(version)
        return v >= self.low and (self.high is None or v < self.high)

    def overlaps(self, other: "LinuxLines | None") -> bool:
        if other is None:
            return True
        return ((self.high is None or other.low < self.high) and (other.high is None or self.low < other.high))


def for_version(layers: list[list[Assign]], version: str) -> list[list[Assign]]:
    """*layers* with the assignments guarded off for Linux *version* left out.

    A whole fragment guarded off (``# fragment linux:``) is an error naming it, not an empty layer:
    a recipe that asks for a fragment meant for another kernel line should hear so."""
    out, problems = [], []
    for layer in layers:
        kept = []
        for a in layer:
            g = a.linux
            if g is None or g.matches(version):
                kept.append(a)
            elif g.whole and not problems:
                problems.append(f"{g.origin}: this fragment is for Linux {g.text} only (`# fragment linux: "
                                f"{g.text}`), this kernel is {version}; use a fragment for this kernel line")
        out.append(kept)
    if problems:
        raise TailorError(problems[0])
    return out


def _unquote(raw: str, where: str) -> str:
    if len(raw) < 2 or not raw.endswith('"'):
        raise TailorError(f"{where}: unterminated string value {raw}")
    body, out, i = raw[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            out.append(body[i + 1])
            i += 2
            continue
        if ch == '"':
            raise TailorError(f"{where}: unescaped quote in string value {raw}")
        out.append(ch)
        i += 1
    return "".join(out)


def parse_fragment(path: str | Path, label: str | None = None) -> list[Assign]:
    """Read a Kconfig fragment (``CONFIG_X=v`` and ``# CONFIG_X is not set`` lines).

    Comments and blank lines are skipped; anything else, ``=m``, or the same
    symbol given two different values in one fragment (on kernel lines both apply to) is an error
    naming the file and line. A ``# linux: SPEC`` comment guards the line right below it, a
    ``# fragment linux: SPEC`` before the first assignment every line (see :class:`LinuxLines`);
    :func:`resolve` leaves out what does not apply to the tree's version.
    """
    path = Path(path)
    label = label or path.name
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise TailorError(f"{label}: no such fragment; create it or remove it from kernel.base") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TailorError(f"{label}: cannot read ({e})") from None
    out: list[Assign] = []
    seen: dict[str, list[tuple[str, int, LinuxLines | None]]] = {}
    whole: LinuxLines | None = None
    guard: LinuxLines | None = None
    for no, line in enumerate(lines, 1):
        where = f"{label}:{no}"
        s = line.strip()
        g = _LINE_GUARD.match(s)
        if guard is not None and not (_LINE_SET.match(s) or _LINE_UNSET.match(s)):
            raise TailorError(f"{guard.origin}: a `# linux:` guard applies to the CONFIG_ line right below it; "
                              f"line {no} is not one")
        if g and g.group(1):
            if out or whole is not None:
                raise TailorError(f"{where}: `# fragment linux:` must come once, before the first assignment")
            whole = LinuxLines.parse(g.group(2), where, whole=True)
            continue
        if g:
            guard = LinuxLines.parse(g.group(2), where)
            continue
        m = _LINE_UNSET.match(s)
        if m:
            name, value, is_str = m.group(1), "n", False
        elif s.startswith("#") or not s:
            continue
        else:
            m = _LINE_SET.match(s)
            if not m:
                raise TailorError(f"{where}: not a Kconfig line (expected CONFIG_X=value or '# CONFIG_X is not set')")
            name, raw = m.group(1), m.group(2).strip()
            is_str = raw.startswith('"')
            value = _unquote(raw, where) if is_str else raw
            if value == "m":
                raise TailorError(f"{where}: CONFIG_{name}=m: tailor kernels have no modules; use y or n")
            if not is_str and not value:
                raise TailorError(f"{where}: CONFIG_{name} has no value")
        applies, guard = guard or whole, None
        for other, other_no, other_guard in seen.get(name, ()):
            if other != value and (applies is None or applies.overlaps(other_guard)):
                raise TailorError(f"{where}: CONFIG_{name}={value} conflicts with CONFIG_{name}={other} "
                                  f"on line {other_no} of the same fragment; keep one")
        seen.setdefault(name, []).append((value, no, applies))
        out.append(Assign(name, value, where, is_str, applies))
    if guard is not None:
        raise TailorError(f"{guard.origin}: a `# linux:` guard applies to the CONFIG_ line right below it; "
                          f"the fragment ends first")
    return out


def recipe_assigns(options, label: str, lines: dict[str, int] | None = None) -> list[Assign]:
    """Turn a recipe's ``kernel.options`` pairs into assignments (values as in a .config)."""
    out = []
    lines = lines or {}
    for name, value in options:
        where = f"{label}:{lines[name]}" if lines.get(name) else label
        if isinstance(value, bool):
            value = "y" if value else "n"
        is_str = isinstance(value, str) and value not in ("y", "n")
        out.append(Assign(name, str(value), where, is_str))
    return out


# --------------------------------------------------------------------------
# Resolution


@dataclass
class Outcome:
    """What happened to one asked symbol."""

    name: str
    asked: str
    resolved: str
    origin: str
    ok: bool
    why: str = ""

    def line(self) -> str:
        return f"{self.origin}: CONFIG_{self.name}: asked {self.asked}, got {self.resolved or '(unset)'}: {self.why}"


@dataclass
class Result:
    """A verified resolution."""

    config: str
    outcomes: list[Outcome]
    added: list[str] = field(default_factory=list)
    source_id: str = ""

    @property
    def identity(self) -> str:
        return config_identity(self.config, self.source_id)

    def enabled(self) -> int:
        return count_enabled(self.config)


def config_identity(config_text: str, source_id: str = "") -> str:
    """The kernel's identity: sha256 over the source identity and the config's assignments.

    Comment lines (the header, menu titles) do not count, so the same values
    always give the same identity.
    """
    body = "\n".join(line for line in config_text.splitlines() if line and not line.startswith("#"))
    return sha256_text(f"source {source_id}\n{body}\n")


def _sym_value_str(sym: Symbol) -> str:
    return sym.str_value if sym.orig_type in (STRING, INT, HEX) else kconfiglib.TRI_TO_STR[sym.tri_value]


def _expr_symbols(expr):
    """The symbols of *expr* in the order they are written (kconfiglib's expr_items is an unordered set,
    which made messages depend on the hash seed)."""
    if isinstance(expr, tuple):
        for sub in expr[1:]:
            yield from _expr_symbols(sub)
    else:
        yield expr


def _values_in(expr) -> str:
    """``A=y, B=n`` for the symbols of *expr* (constants left out)."""
    parts = []
    for item in _expr_symbols(expr):
        if isinstance(item, Symbol) and not item.is_constant and item.name not in ("y", "n", "m"):
            if not item.nodes:
                parts.append(f"{item.name}=undefined")
            else:
                parts.append(f"{item.name}={_sym_value_str(item) or EMPTY}")
    seen, out = set(), []
    for p in parts:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return ", ".join(out)


def _unmet(expr, need: int) -> str:
    """The conjuncts of *expr* whose value is below *need*, with their symbols' values."""
    terms = [t for t in split_expr(expr, AND) if expr_value(t) < need] or [expr]
    text = " && ".join(expr_str(t) for t in terms)
    vals = _values_in(expr_str_items(terms))
    return f"depends on {text}" + (f" ({vals})" if vals else "")


def expr_str_items(terms):
    """Combine several expressions into one AND expression (for listing their symbols)."""
    expr = terms[0]
    for t in terms[1:]:
        expr = (AND, expr, t)
    return expr


def _selectors(sym: Symbol, rev) -> list[str]:
    out = []
    for term in split_expr(rev, OR):
        if expr_value(term) > 0:
            first = split_expr(term, AND)[0]
            name = first.name if isinstance(first, Symbol) else expr_str(first)
            cond = split_expr(term, AND)[1:]
            out.append(name + (f" (if {' && '.join(expr_str(c) for c in cond)})" if cond else ""))
    return out


def _has_prompt(sym) -> bool:
    return any(node.prompt for node in sym.nodes)


def why(sym: Symbol, asked: str) -> str:
    """One phrase saying why *sym* does not have the value *asked*."""
    if sym.orig_type in (BOOL, TRISTATE):
        want = 2 if asked == "y" else 0
        if want:
            if sym.choice is not None:
                choice = sym.choice
                if expr_value(choice.direct_dep) < 2 or choice.visibility < 2 and not choice.is_optional:
                    return f"its choice {_choice_name(choice)} {_unmet(choice.direct_dep, 2)}"
                if choice.selection is not None and choice.selection is not sym:
                    if expr_value(sym.direct_dep) < 2:
                        return _unmet(sym.direct_dep, 2)
                    return (f"{choice.selection.name} is selected in choice {_choice_name(choice)}; "
                            f"ask for only one member of a choice")
            if expr_value(sym.direct_dep) < 2:
                return _unmet(sym.direct_dep, 2)
            if not _has_prompt(sym):
                return ("it has no prompt, so only a `select` from another symbol or its default can set it; "
                        "ask for a symbol that selects it")
            prompt_conds = [node.prompt[1] for node in sym.nodes if node.prompt]
            if prompt_conds and max(expr_value(c) for c in prompt_conds) < 2:
                return "its prompt is hidden: " + _unmet(prompt_conds[0], 2)
            if sym.orig_type == TRISTATE and sym.tri_value == 1:
                return "it can only be m here (depends on a module option); tailor kernels have no modules"
            return "kconfig refused the value"
        # asked n
        if expr_value(sym.rev_dep) > 0:
            return "selected by " + ", ".join(_selectors(sym, sym.rev_dep)) + "; turn those off too"
        if sym.choice is not None and sym.choice.selection is sym:
            return (f"it is the selected member of choice {_choice_name(sym.choice)}; "
                    f"ask for another member with =y instead")
        if not _has_prompt(sym):
            return "it has no prompt and its default is on; it cannot be turned off directly"
        if sym.is_allnoconfig_y:
            return "it is an allnoconfig_y symbol without a user value"
        return "kconfig refused the value"
    # string / int / hex
    if expr_value(sym.direct_dep) < 2 and sym.visibility == 0:
        return _unmet(sym.direct_dep, 2)
    if not _has_prompt(sym) or sym.visibility == 0:
        return "it has no visible prompt here, so it keeps its default"
    if sym.orig_type in (INT, HEX):
        for low, high, cond in sym.ranges:
            if expr_value(cond):
                return f"the value must be in the range {low.str_value}..{high.str_value}"
    return "kconfig refused the value"


def _choice_name(choice: Choice) -> str:
    for node in choice.nodes:
        if node.prompt:
            return f'"{node.prompt[0]}"'
    return choice.name or "<choice>"


def _check_value(sym: Symbol, a: Assign) -> str:
    """Normalise and type-check an asked value against *sym*'s type; return the value to set."""
    t = sym.orig_type
    tname = kconfiglib.TYPE_TO_STR.get(t, "unknown")
    if t in (BOOL, TRISTATE):
        if a.value not in ("y", "n") or a.is_string and a.value not in ("y", "n"):
            raise TailorError(f"{a.origin}: CONFIG_{a.name} is a {tname}; its value must be y or n, not {a.value!r}")
        return a.value
    if t == INT:
        if not re.fullmatch(r"-?[0-9]+", a.value):
            raise TailorError(f"{a.origin}: CONFIG_{a.name} is an int; {a.value!r} is not a whole number")
        return a.value
    if t == HEX:
        v = a.value
        if re.fullmatch(r"[0-9]+", v) and not a.is_string:
            v = hex(int(v))
        if not re.fullmatch(r"0[xX][0-9a-fA-F]+", v):
            raise TailorError(f"{a.origin}: CONFIG_{a.name} is a hex value; {a.value!r} is not like 0x1000")
        return v
    if t == STRING:
        if a.value in ("y", "n") and not a.is_string:
            raise TailorError(f'{a.origin}: CONFIG_{a.name} is a string; quote the value ("{a.value}") '
                              f"if you mean the text")
        return a.value
    raise TailorError(f"{a.origin}: CONFIG_{a.name} has no type in this kernel; it cannot be set")


def _same(sym: Symbol, asked: str) -> bool:
    got = _sym_value_str(sym)
    if sym.orig_type == HEX:
        try:
            return int(got, 16) == int(asked, 16)
        except ValueError:
            return False
    if sym.orig_type == INT:
        try:
            return int(got) == int(asked)
        except ValueError:
            return False
    return got == asked


def unknown_symbol_error(tree: Tree, a: Assign) -> str:
    close = difflib.get_close_matches(a.name, tree.names, n=3, cutoff=0.75)
    hint = f"did you mean {' or '.join(close)}?" if close else "check the spelling against the kernel's Kconfig"
    return f"{a.origin}: {a.name}: no such symbol in Linux {tree.version}; {hint}"


def _reset_allno(kconf) -> None:
    kconf.unset_values()
    kconf.warn = False
    for sym in kconf.unique_defined_syms:
        if sym.orig_type in (BOOL, TRISTATE):
            sym.set_value(2 if sym.is_allnoconfig_y else 0)


def _set(sym: Symbol, value: str) -> None:
    if sym.orig_type in (BOOL, TRISTATE):
        v = 2 if value == "y" else 0
        if sym.choice is not None and v == 2:
            sym.choice.set_value(2)
        sym.set_value(v)
    else:
        sym.set_value(value)


def _cost(expr, seen: set) -> int:
    """How many symbols would have to be turned on to make *expr* y (an estimate, for choosing OR branches)."""
    if expr_value(expr) == 2:
        return 0
    if isinstance(expr, Symbol):
        if expr in seen:
            return 0
        if expr.is_constant or not expr.nodes or expr.orig_type not in (BOOL, TRISTATE):
            return 10_000
        seen.add(expr)
        if not _has_prompt(expr):
            # Only a select can turn it on: the cheapest selector.
            return 1 + (_cost(expr.rev_dep, seen) if expr.rev_dep is not expr.kconfig.n else 10_000)
        return 1 + _cost(expr.direct_dep, seen)
    if isinstance(expr, Choice):  # a choice symbol's dependencies include its choice
        return _cost(expr.direct_dep, seen)
    if expr[0] == AND:
        return _cost(expr[1], seen) + _cost(expr[2], seen)
    if expr[0] == OR:
        return min(_cost(expr[1], set(seen)), _cost(expr[2], set(seen)))
    return 10_000


def _satisfy(expr, added: list[Symbol], depth: int = 0) -> bool:
    """Turn on the fewest symbols (by :func:`_cost`) that make *expr* y; record them in *added*."""
    if expr_value(expr) == 2:
        return True
    if depth > 64:
        return False
    if isinstance(expr, Symbol):
        sym = expr
        if sym.is_constant or not sym.nodes or sym.orig_type not in (BOOL, TRISTATE):
            return False
        if not _has_prompt(sym):
            # No prompt: turn on the cheapest symbol that selects it.
            if sym.rev_dep is sym.kconfig.n or not _satisfy(sym.rev_dep, added, depth + 1):
                return False
            return expr_value(sym.direct_dep) == 2 or _satisfy(sym.direct_dep, added, depth + 1)
        if not _satisfy(sym.direct_dep, added, depth + 1):
            return False
        for node in sym.nodes:
            if node.prompt and expr_value(node.prompt[1]) < 2:
                _satisfy(node.prompt[1], added, depth + 1)
        _set(sym, "y")
        if sym.tri_value == 2:
            added.append(sym)
            return True
        return False
    if isinstance(expr, Choice):  # a choice symbol's dependencies include its choice: satisfy the choice's
        return _satisfy(expr.direct_dep, added, depth + 1) and expr_value(expr) == 2
    if expr[0] == AND:
        return _satisfy(expr[1], added, depth + 1) and _satisfy(expr[2], added, depth + 1)
    if expr[0] == OR:
        first, second = sorted((expr[1], expr[2]), key=lambda e: _cost(e, set()))
        return _satisfy(first, added, depth + 1) or _satisfy(second, added, depth + 1)
    return False  # NOT and comparisons: would need turning something off or a non-bool value


def resolve(tree: Tree, layers: list[list[Assign]], mode: str = "strict", source_id: str = "") -> Result:
    """Resolve *layers* (base fragments in order, then the recipe's options) on *tree*.

    Raises TailorError for unknown symbols and badly typed values, and
    :class:`ResolveError` (one line per symbol) when an asked symbol does not
    end with its asked value.
    """
    if mode not in ("strict", "deps"):
        raise TailorError(f"resolve mode {mode!r}: use strict or deps")
    kconf = tree.kconf
    asks: dict[str, Assign] = {}
    order: list[Assign] = []
    problems = []
    for layer in for_version(layers, tree.version):
        for a in layer:
            sym = kconf.syms.get(a.name)
            if sym is None or not sym.nodes:
                problems.append(unknown_symbol_error(tree, a))
                continue
            a = Assign(a.name, _check_value(sym, a), a.origin, a.is_string)
            asks[a.name] = a
            order.append(a)
    if problems:
        raise TailorError("\n".join(problems))
    with tree.lock:
        _reset_allno(kconf)
        for a in order:
            _set(kconf.syms[a.name], a.value)
        added: list[Symbol] = []
        if mode == "deps":
            for _round in range(8):
                progress = False
                for a in asks.values():
                    sym = kconf.syms[a.name]
                    if _same(sym, a.value):
                        continue
                    if sym.orig_type in (BOOL, TRISTATE) and a.value == "y":
                        before = len(added)
                        _satisfy(sym.direct_dep, added)
                        for node in sym.nodes:
                            if node.prompt and expr_value(node.prompt[1]) < 2:
                                _satisfy(node.prompt[1], added)
                        if sym.choice is not None:
                            _satisfy(sym.choice.direct_dep, added)
                        _set(sym, a.value)
                        progress |= len(added) > before
                    elif sym.orig_type not in (BOOL, TRISTATE) and expr_value(sym.direct_dep) < 2:
                        before = len(added)
                        _satisfy(sym.direct_dep, added)
                        _set(sym, a.value)
                        progress |= len(added) > before
                if not progress:
                    break
        outcomes = []
        for a in asks.values():
            sym = kconf.syms[a.name]
            ok = _same(sym, a.value)
            outcomes.append(Outcome(a.name, a.value, _sym_value_str(sym), a.origin, ok,
                                    "" if ok else why(sym, a.value)))
        failed = [o for o in outcomes if not o.ok]
        if failed:
            hint = ("enable what it depends on, or use `resolve: deps`" if mode == "strict"
                    else "its dependencies cannot be enabled automatically; see `explain`")
            lines = [o.line() for o in failed]
            if len(failed) == 1:
                if failed[0].why.startswith("depends on"):
                    lines[0] += f"; {hint}"
            else:
                lines = [f"{len(failed)} asked options would be dropped by Kconfig (resolve: {mode}): "
                         f"{', '.join(o.name for o in failed)}"] + ["  " + ln for ln in lines]
            raise ResolveError("\n".join(lines), outcomes)
        config = kconf._config_contents(tree.header())
    added_names = []
    for s in added:
        if s.name not in asks and s.name not in added_names:
            added_names.append(s.name)
    return Result(config=config, outcomes=outcomes, added=added_names, source_id=source_id)


def explain(tree: Tree, name: str, layers: list[list[Assign]] | None = None, mode: str = "strict") -> str:
    """Say why *name* has its value: type, value, who asked, dependencies, selects and defaults.

    With *layers*, the tree is first resolved as :func:`resolve` would (a
    failed verification is shown, not raised), so the value is the recipe's.
    """
    name = name[7:] if name.startswith("CONFIG_") else name
    kconf = tree.kconf
    sym = kconf.syms.get(name)
    if sym is None or not sym.nodes:
        raise TailorError(unknown_symbol_error(tree, Assign(name, "", "explain")).split(": ", 1)[1])
    asked = None
    with tree.lock:
        if layers is not None:
            try:
                resolve(tree, layers, mode)
            except ResolveError:
                pass
            for layer in for_version(layers, tree.version):
                for a in layer:
                    if a.name == name:
                        asked = a
        t = kconfiglib.TYPE_TO_STR.get(sym.orig_type, "?")
        value = _sym_value_str(sym)
        out = [f"CONFIG_{name} = {value or '(empty)'}  [{t}]"]
        loc = ", ".join(f"{node.filename}:{node.linenr}" for node in sym.nodes)
        out.append(f"  defined at: {loc}")
        prompts = [node.prompt[0] for node in sym.nodes if node.prompt]
        out.append(f"  prompt: {prompts[0]!r}" if prompts else "  prompt: none (only select or default can set it)")
        if asked is not None:
            verdict = "ok" if _same(sym, asked.value) else f"NOT MET: {why(sym, asked.value)}"
            out.append(f"  asked: {asked.value} by {asked.origin} -> {verdict}")
        else:
            out.append("  asked: no (value comes from Kconfig defaults/selects)")
        if sym.direct_dep is not kconf.y:
            out.append(f"  depends on: {expr_str(sym.direct_dep)} = {kconfiglib.TRI_TO_STR[expr_value(sym.direct_dep)]}"
                       f" ({_values_in(sym.direct_dep)})")
        if sym.rev_dep is not kconf.n:
            sel = _selectors(sym, sym.rev_dep)
            out.append(f"  selected by: {', '.join(sel) if sel else 'nothing active'} "
                       f"(candidates: {expr_str(sym.rev_dep)})")
        if sym.weak_rev_dep is not kconf.n:
            imp = _selectors(sym, sym.weak_rev_dep)
            out.append(f"  implied by: {', '.join(imp) if imp else 'nothing active'}")
        for default, cond in sym.defaults:
            active = expr_value(cond) > 0
            out.append(f"  default: {expr_str(default)}"
                       + (f" if {expr_str(cond)}" if cond is not kconf.y else "")
                       + ("  (active)" if active else ""))
        if sym.choice is not None:
            sel = sym.choice.selection
            out.append(f"  in choice {_choice_name(sym.choice)}; selected: {sel.name if sel else 'none'}")
        if sym.selects:
            on = [expr_str(s) for s, c in sym.selects]
            out.append(f"  selects: {', '.join(on)}")
    return "\n".join(out)


# --------------------------------------------------------------------------
# Outputs, and comparing with kbuild's result


def write_outputs(result: Result, outdir: str | Path, extra: dict | None = None) -> dict[str, Path]:
    """Write ``.config``, ``asked.json`` (each asked symbol and its outcome) and ``identity`` atomically."""
    outdir = Path(outdir)
    paths = {"config": outdir / ".config", "asked": outdir / "asked.json", "identity": outdir / "identity"}
    write_atomic(paths["config"], result.config)
    write_json(paths["asked"], {
        "identity": result.identity,
        "source": result.source_id,
        "enabled": result.enabled(),
        "added_by_deps": result.added,
        "asked": [{"symbol": o.name, "asked": o.asked, "resolved": o.resolved, "origin": o.origin,
                   "ok": o.ok} for o in result.outcomes],
        **(extra or {}),
    })
    write_atomic(paths["identity"], result.identity + "\n")
    return paths


def config_diff(ours: str, theirs: str, limit: int = 8) -> list[str]:
    """The assignments that differ between two .config texts, as 'CONFIG_X: ours -> kbuild' lines."""
    def values(text):  # config_values, with "# CONFIG_X is not set" as n (not as absent)
        out = config_values(text)
        for line in text.splitlines():
            m = _LINE_UNSET.match(line)
            if m:
                out.setdefault(f"CONFIG_{m.group(1)}", "n")
        return out
    a, b = values(ours), values(theirs)
    diffs = [f"{k}: {a.get(k, 'absent')} -> {b.get(k, 'absent')}"
             for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    if not diffs and ours != theirs:
        diffs = ["(same values, different layout or comments)"]
    return diffs[:limit]
