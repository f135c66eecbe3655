"""Which Kconfig options a C source line needs: the ``#if`` conditions around it.

Discovery maps traced PCs to ``file:line``; this turns code under ``#ifdef CONFIG_X``
in an always-built file into option ``X``.

* :func:`conditions` parses a file with a condition stack (``#if``, ``#ifdef``,
  ``#ifndef``, ``#elif``, ``#elifdef``, ``#elifndef``, ``#else``, ``#endif`` to
  any depth; ``#  if``; continued lines; ``/* */`` and ``//`` comments, so an
  ``#endif`` in a comment or string is none). ``.at(line)`` gives one condition
  per enclosing group: the ``#if``'s, or for an ``#elif``/``#else`` branch its
  own and the negations of the earlier ones. Directive lines get the outer ones.
* :func:`parse_expr` builds an :data:`Expr` from ``defined(CONFIG_X)``, ``defined
  CONFIG_X``, ``IS_ENABLED``/``IS_BUILTIN``/``IS_REACHABLE``/``IS_MODULE``,
  bare ``CONFIG_X``, ``!``, ``&&``, ``||``, parentheses and integers; the rest
  (comparisons, ``BITS_PER_LONG``, ``__GNUC__``, bad syntax) is :class:`Unknown`.
* :func:`required_options`, :func:`forbidden_options`, :func:`alternatives`: the
  options (no ``CONFIG_``) that conditions need =y, need not =y, and groups
  needing one =y at least; unknown parts add nothing. :func:`evaluate` gives a
  condition's value, :func:`options_for_line` the three for a file's line.

Limits: tailor kernels have no modules, so every test but ``IS_MODULE`` and
``defined(CONFIG_X_MODULE)`` (false) means =y. Macros are not expanded, nor
includes read. Only a disjunction whose every branch needs a positive option
makes a group; groups met by a required option are dropped. Lines that can
never be compiled (``#if 0``, contradictions) are not flagged.
"""

from __future__ import annotations

import bisect
import functools
import os
import re
from dataclasses import dataclass
from typing import AbstractSet, Iterable, Iterator, Union


@dataclass(frozen=True)
class Option:
    """A test of ``CONFIG_<name>``; *test*: defined, value (bare), enabled, builtin, reachable, module."""
    name: str
    test: str = "defined"


@dataclass(frozen=True)
class Not:
    """``!term``."""
    term: Expr


@dataclass(frozen=True)
class And:
    """``a && b && ...``: every term holds."""
    terms: tuple[Expr, ...]


@dataclass(frozen=True)
class Or:
    """``a || b || ...``: at least one term holds."""
    terms: tuple[Expr, ...]


@dataclass(frozen=True)
class Unknown:
    """A subexpression this module does not understand, with its source text."""
    text: str


Expr = Union[Option, Not, And, Or, Unknown]
"""A parsed ``#if`` condition. An integer is ``And(())`` (the empty conjunction: true) when
non-zero, ``Or(())`` (false) when zero."""


def _join(kind: type[And] | type[Or], terms: Iterable[Expr]) -> Expr:
    """*terms* joined by *kind*, with nested joins of the same kind flattened."""
    flat = [u for t in terms for u in (t.terms if isinstance(t, kind) else (t,))]
    return flat[0] if len(flat) == 1 else kind(tuple(flat))


_TESTS = {"defined": "defined", **{f"IS_{t.upper()}": t for t in ("enabled", "builtin", "module", "reachable")}}
_EXPR_TOKEN = re.compile(r"0[xX][0-9a-fA-F]+[uUlL]*|\d+[uUlL]*|[A-Za-z_]\w*|'(?:\\.|[^'\\])*'"
                         r"|&&|\|\||<<|>>|[<>=!]=|\S")
_BINARY = [("?", ":"), ("||",), ("&&",), tuple("| ^ & == != < > <= >= << >> + - * / %".split())]
"""Binary operators, loosest first; all but ``||`` and ``&&`` make one unknown node of their chain."""


def _config(ident: str, test: str) -> Expr:
    """The *test* of macro *ident*: an :class:`Option` for ``CONFIG_*``, else unknown."""
    if not ident.startswith("CONFIG_") or len(ident) == 7:
        return Unknown(ident if test == "value" else f"{test}({ident})")
    if test in ("defined", "value") and ident.endswith("_MODULE"):
        return Option(ident[7:-7], "module")
    return Option(ident[7:], test)


def parse_expr(text: str) -> Expr:
    """Parse the expression of an ``#if``/``#elif`` (comments removed); never raises."""
    toks = [(m.group(), m.start(), m.end()) for m in _EXPR_TOKEN.finditer(text)] + [("", 0, 0)] * 3
    pos = 0

    def take(expected: str = "") -> str:
        nonlocal pos
        tok = toks[pos][0]
        if not tok or (expected and tok != expected):
            raise ValueError(f"expected {expected or 'more'}")
        pos += 1
        return tok

    def span(first: int) -> Unknown:  # the tokens from index *first* to the last one taken
        return Unknown(text[toks[first][1]:toks[pos - 1][2]])

    def binary(level: int) -> Expr:
        if level == len(_BINARY):
            return unary()
        first, terms = pos, [binary(level + 1)]
        while toks[pos][0] in _BINARY[level]:
            take()
            terms.append(binary(level + 1))
        if len(terms) == 1:
            return terms[0]
        return _join((Or, And)[level - 1], terms) if level in (1, 2) else span(first)

    def unary() -> Expr:
        nonlocal pos
        first, tok = pos, take()
        word, after = tok[0].isalpha() or tok[0] == "_", toks[pos][0]
        if tok == "!":
            return Not(unary())
        if tok == "(":
            inner = binary(0)
            take(")")
            return inner
        if tok in ("-", "+", "~"):
            unary()
        elif tok[0].isdigit():
            return (And if tok.rstrip("uUlL").lstrip("0xX") else Or)(())
        elif tok in _TESTS and after == "(" and toks[pos + 2][0] == ")":
            pos += 3
            return _config(toks[pos - 2][0], _TESTS[tok])
        elif tok == "defined" and (after[:1].isalpha() or after[:1] == "_"):
            return _config(take(), "defined")
        elif word and after == "(":  # a function-like macro: skip its arguments
            depth = 0
            while depth or pos == first + 1:
                depth += {"(": 1, ")": -1}.get(take(), 0)
        elif word:
            return _config(tok, "value")
        elif tok[0] != "'":
            raise ValueError(tok)
        return span(first)

    try:
        expr = binary(0)
        return Unknown(text.strip()) if toks[pos][0] else expr  # not all of it parsed
    except (ValueError, RecursionError):
        return Unknown(text.strip())


_SOURCE_TOKEN = re.compile(  # comments, literals (ending at a newline), splices, newlines, rest
    r"""/\*.*?(?:\*/|\Z)|//(?:\\[ \t]*\n|[^\n])*|"(?:\\.|[^"\\\n])*"?|'(?:\\.|[^'\\\n])*'?"""
    r"""|\\[ \t]*\n|\n|[^/"'\\\n]+|.""", re.S)
_DIRECTIVE = re.compile(r"\s*#\s*([A-Za-z_]\w*)(.*)", re.S)


def _logical_lines(text: str) -> Iterator[tuple[int, int, str]]:
    """(first line, last line, text) of each logical line: splices joined, comments blanked."""
    line = first = 1
    parts: list[str] = []
    for m in _SOURCE_TOKEN.finditer(text.replace("\r\n", "\n")):
        tok = m.group()
        if tok == "\n":
            yield first, line, "".join(parts)
            first, parts = line + 1, []
        elif tok[:2] in ("/*", "//"):
            parts.append(" ")
        elif tok[0] != "\\" or len(tok) == 1:
            parts.append(tok)
        line += tok.count("\n")
    yield first, line, "".join(parts)


@dataclass(frozen=True)
class LineConditions:
    """A file's condition regions: ``conds[i]`` holds from line ``starts[i]`` to the next start."""
    starts: tuple[int, ...]
    conds: tuple[tuple[Expr, ...], ...]

    def at(self, line: int) -> tuple[Expr, ...]:
        """The conditions enclosing 1-based *line*, outermost first (empty outside any group)."""
        return self.conds[max(bisect.bisect_right(self.starts, line) - 1, 0)]


def conditions(text: str) -> LineConditions:
    """The conditions of each line of C source *text*; stray ``#elif``/``#else``/``#endif`` are ignored."""
    starts, conds = [1], [()]
    stack: list[tuple[tuple[Expr, ...], list[Expr]]] = []  # (outside, branches so far)

    def region(line: int, new: tuple[Expr, ...]) -> None:  # at equal starts, the last one counts
        starts.append(line)
        conds.append(new)

    for first, last, logical in _logical_lines(text):
        directive, rest = m.groups() if (m := _DIRECTIVE.match(logical)) else ("", "")
        if directive in ("if", "ifdef", "ifndef"):
            stack.append((conds[-1], []))
            directive = "el" + directive
        if directive in ("elif", "elifdef", "elifndef", "else") and stack:
            outside, earlier = stack[-1]
            branch = [Not(e) for e in earlier]
            if directive != "else":
                words = rest.split() or [""]
                own = parse_expr(rest) if directive == "elif" else _config(words[0], "defined")
                earlier.append(Not(own) if directive == "elifndef" else own)
                branch.append(earlier[-1])
            region(first, outside)
            region(last + 1, outside + (_join(And, branch),))
        elif directive == "endif" and stack:
            region(first, stack.pop()[0])
    return LineConditions(tuple(starts), tuple(conds))


def evaluate(expr: Expr, enabled: AbstractSet[str]) -> bool | None:
    """*expr*'s value when exactly the options in *enabled* are =y, or ``None`` when an unknown
    node decides it (``0 && unknown`` is false). ``And(conds)`` evaluates a whole line."""
    if isinstance(expr, Option):
        return expr.test != "module" and expr.name in enabled
    if isinstance(expr, Not):
        value = evaluate(expr.term, enabled)
        return None if value is None else not value
    if isinstance(expr, (And, Or)):
        values, decisive = [evaluate(t, enabled) for t in expr.terms], isinstance(expr, Or)
        return decisive if decisive in values else None if None in values else not decisive
    return None


def _nnf(expr: Expr, negate: bool = False) -> Expr:
    """*expr* (negated if *negate*) with negations pushed down to options and constants folded."""
    if isinstance(expr, Option) and expr.test == "module":
        return (And if negate else Or)(())
    if isinstance(expr, Not):
        return _nnf(expr.term, not negate)
    if isinstance(expr, (And, Or)):
        kind = And if isinstance(expr, And) != negate else Or
        terms = [_nnf(t, negate) for t in expr.terms]
        zero = (Or if kind is And else And)(())  # a false term in a conjunction, a true one in a disjunction
        return zero if zero in terms else _join(kind, terms)
    return Not(expr) if negate else expr


@functools.lru_cache(maxsize=4096)
def _analyse(conds: tuple[Expr, ...]) -> tuple[frozenset[str], frozenset[str], tuple[frozenset[str], ...]]:
    """(required, forbidden, alternative groups) for the conjunction of *conds*."""
    top = _nnf(And(conds))
    required, forbidden, groups = set(), set(), []
    for term in top.terms if isinstance(top, And) else (top,):
        if isinstance(term, Option):
            required.add(term.name)
        elif isinstance(term, Not) and isinstance(term.term, Option):
            forbidden.add(term.term.name)
        elif isinstance(term, Or):
            needs = [{t.name for t in (d.terms if isinstance(d, And) else (d,)) if isinstance(t, Option)}
                     for d in term.terms]
            if needs and all(needs) and frozenset().union(*needs) not in groups:
                groups.append(frozenset().union(*needs))
    return frozenset(required), frozenset(forbidden), tuple(g for g in groups if not g & required)


def required_options(conds: Iterable[Expr]) -> set[str]:
    """Options (without ``CONFIG_``) that must be =y for all of *conds* to hold."""
    return set(_analyse(tuple(conds))[0])


def forbidden_options(conds: Iterable[Expr]) -> set[str]:
    """Options that must not be =y for all of *conds* to hold (``#ifndef``, ``#else``)."""
    return set(_analyse(tuple(conds))[1])


def alternatives(conds: Iterable[Expr]) -> list[set[str]]:
    """Groups of options of which at least one must be =y (``defined(A) || defined(B)``)."""
    return [set(g) for g in _analyse(tuple(conds))[2]]


@functools.lru_cache(maxsize=256)
def _cached(source: str, stamp: tuple[int, int] | None) -> LineConditions:
    """The conditions of text *source*, or with a *stamp* of the file at path *source*."""
    if stamp is None:
        return conditions(source)
    with open(source, encoding="utf-8", errors="replace") as f:
        return conditions(f.read())


def options_for_line(source: str | os.PathLike, line: int) -> tuple[set[str], set[str], list[set[str]]]:
    """(required, forbidden, alternatives) for 1-based *line* of *source*: a path, or a C file's
    text when *source* is a ``str`` holding a newline. Raises OSError for an unreadable path."""
    st = None if isinstance(source, str) and "\n" in source else os.stat(source)
    found = _cached(os.fspath(source), st and (st.st_mtime_ns, st.st_size))
    required, forbidden, groups = _analyse(found.at(line))
    return set(required), set(forbidden), [set(g) for g in groups]
