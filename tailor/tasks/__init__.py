"""The task graph: every doit task of tailor, and the glue between the plain stage functions and doit.

dodo.py only wires: it loads the recipes (:func:`load_recipes`) and asks
:mod:`tailor.tasks.build`, :mod:`tailor.tasks.study` and :mod:`tailor.tasks.publish` for
the tasks of each stage. Those modules are the one place where ``file_dep``, ``task_dep``,
``targets`` and ``uptodate`` are written; the stage modules do the work and never import doit.

An action names its stage function as ``"module:function"`` (:func:`action`): the stage module
is imported only when one of its tasks runs, so a no-op ``doit build:<app>`` does not import
discovery, the release or the report. Every action reports a :class:`~tailor.errors.TailorError`
as one clear line instead of a traceback. A recipe that does not validate still gets its tasks,
which fail with its error, so one broken recipe does not stop the others. A
:class:`~tailor.errors.TailorBug` is not caught: doit prints it with its traceback, which a bug
report needs.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

import importlib

from tailor import paths, source
from tailor.errors import TailorBug, TailorError
from tailor.recipe import RECIPES_DIR, load_cached
from tailor.util import makedirs, os_error, out_dir

_READ_ONLY_COMMANDS = {"list", "help", "info", "dumpdb", "tabcompletion"}
_lock_fd = None


def state_file() -> Path:
    """doit's state database (sqlite3, which is safe for two processes)."""
    return paths.doit_db()


def _state_db_errors_in_one_line() -> None:
    """doit writes its state database once, at the end of a run, and prints a traceback when it cannot
    (a full disk): make that one line. sqlite3 rolls the write back, so the database stays intact."""
    import sqlite3

    from doit.dependency import SqliteDB

    if getattr(SqliteDB.dump, "tailor", False):
        return
    dump = SqliteDB.dump

    def guarded_dump(self):
        try:
            dump(self)
        except (sqlite3.Error, OSError) as e:
            raise SystemExit(f"tailor: error: {self.name}: doit cannot record what it built ({e}); "
                             f"free some space (e.g. `doit clean`) and rerun") from None

    guarded_dump.tailor = True
    SqliteDB.dump = guarded_dump
    opener = SqliteDB._sqlite3

    def guarded_open(self, name):
        from doit.dependency import DatabaseException

        try:
            return opener(self, name)
        except (sqlite3.Error, DatabaseException, OSError) as e:
            if "full" in str(e) or getattr(e, "errno", None) == 28:
                raise SystemExit(f"tailor: error: {name}: doit cannot open its state database (the disk is "
                                 f"full); free some space (e.g. `doit clean`) and rerun") from None
            raise SystemExit(f"tailor: error: {name}: doit cannot open its state database "
                             f"({str(e).splitlines()[-1][:200]}); remove it and rerun (what is out of date is "
                             f"rebuilt)") from None

    SqliteDB._sqlite3 = guarded_open


def guard_concurrent_runs(argv: list[str]) -> None:
    """Let one doit run at a time work in this project's out/; a second one waits and says so.

    Also makes a state database that cannot be written (a full disk) one line instead of doit's traceback.
    """
    global _lock_fd
    cmd = next((a for a in argv[1:] if not a.startswith("-")), "run")
    if cmd in _READ_ONLY_COMMANDS or _lock_fd is not None:
        return
    _state_db_errors_in_one_line()
    try:
        makedirs(out_dir())
        fd = os.open(paths.doit_lock(), os.O_RDWR | os.O_CREAT, 0o644)
    except (TailorError, OSError) as e:
        sys.exit(f"tailor: error: {os_error(e) if isinstance(e, OSError) else e}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("tailor: another doit run is using this project's out/; waiting for it to finish ...",
              file=sys.stderr, flush=True)
        fcntl.flock(fd, fcntl.LOCK_EX)
    _lock_fd = fd  # held until the process exits


def load_recipes(recipes_dir: Path = RECIPES_DIR):
    """(valid recipes, {name: error}) for every recipes/*.yaml."""
    good, broken = [], {}
    for path in sorted(recipes_dir.glob("*.yaml")):
        try:
            r = load_cached(path)
        except TailorError as e:
            broken[path.stem] = str(e)
            continue
        try:

            source.recipe_ref(r)
        except TailorError as e:
            broken[path.stem] = f"recipes/{path.name}: {e}"
            continue
        if any(g.name == r.name for g in good):
            broken[path.stem] = f"recipes/{path.name}: name {r.name!r} is used by another recipe"
            continue
        good.append(r)
    return good, broken


def stage_function(ref):
    """The function *ref* names: a callable as it is, or ``"module:function"`` of the tailor package
    (``"kernel:build_for"``, ``"image.build:build_local"``), imported now."""
    if callable(ref):
        return ref
    module, _, name = ref.partition(":")
    try:
        return getattr(importlib.import_module(f"tailor.{module}"), name)
    except (ImportError, AttributeError) as e:
        raise TailorBug(f"task action {ref!r}: {e}") from None


def _run(fn, *args, **kwargs):
    from doit.exceptions import TaskFailed

    try:
        stage_function(fn)(*args, **kwargs)
    except (TailorError, OSError) as e:
        if isinstance(e, OSError):  # e.g. a disk full while copying: one line, not a traceback
            e = os_error(e)
        print(f"tailor: error: {e}", file=sys.stderr, flush=True)
        return TaskFailed(str(e).splitlines()[0])
    except KeyboardInterrupt:  # Ctrl-C: one line, not doit's traceback (doit still saves its state)
        print("tailor: interrupted; run the same command again to continue", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    return None


def action(fn, *args, **kwargs):
    """A doit python-action calling ``fn(*args, **kwargs)``; a TailorError fails the task cleanly.

    *fn* is a callable or ``"module:function"`` (see :func:`stage_function`), imported when the task runs."""
    return (_run, (fn,) + args, kwargs)


def call(fn, *args):
    """A doit ``clean`` entry calling the stage function *fn* (as :func:`action` names it) with *args*."""
    return (_call, [fn, *args])


def _call(fn, *args):
    stage_function(fn)(*args)


def _fail(message: str):
    raise TailorError(message)


def broken_tasks(basename: str, broken: dict[str, str]):
    """Tasks for recipes that did not validate: they fail with the recipe's error."""
    for name, err in sorted(broken.items()):
        yield {"basename": basename, "name": name, "doc": f"(invalid recipe) {err.splitlines()[0]}",
               "actions": [action(_fail, err)], "uptodate": [False], "verbosity": 2}


def by_arch(recipes: list) -> tuple[list, list]:
    """*recipes* split into the x86_64 ones (every task takes them) and the others (arm64: built,
    boot-tested and released so far; discovery, fits, slim and snapshots do not take them yet)."""
    from tailor.kinds import Arch

    return [r for r in recipes if r.arch is Arch.X86_64], [r for r in recipes if r.arch is not Arch.X86_64]


def not_yet_tasks(basename: str, recipes: list):
    """Tasks ``<basename>:<app>`` for recipes of an architecture that task does not support yet: each fails
    with one line saying so."""
    for r in recipes:
        msg = (f"{basename}:{r.name}: not supported for arch {r.arch} yet (only config, kernel, rootfs, boot, "
               f"build and release are); use doit build:{r.name}")
        yield {"basename": basename, "name": r.name, "doc": f"(not for {r.arch} yet)",
               "actions": [action(_fail, msg)], "uptodate": [False], "verbosity": 2}


def _explain_pos(pos: list[str]) -> None:
    if len(pos) != 2:
        raise TailorError("usage: doit explain <app> <SYMBOL>")
    stage_function("config:explain")(pos[0], pos[1])


def _explain_action(pos):
    return _run(_explain_pos, pos)


def explain_task() -> dict:
    """``doit explain <app> <SYMBOL>``."""
    return {"basename": "explain", "actions": [_explain_action], "pos_arg": "pos",
            "uptodate": [False], "verbosity": 2}
