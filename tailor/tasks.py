"""Glue between tailor's plain stage functions and doit.

dodo.py only wires: it loads the recipes and asks each stage module for its
tasks, passing :func:`action` so that every action reports a
:class:`~tailor.errors.TailorError` as one clear line instead of a traceback.
A recipe that does not validate still gets its tasks, which fail with its
error, so one broken recipe does not stop the others. A
:class:`~tailor.errors.TailorBug` is not caught: doit prints it with its
traceback, which a bug report needs.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

from tailor import config as cfg
from tailor import paths, source
from tailor.errors import TailorError
from tailor.kconfig import explain as explain_symbol
from tailor.kconfig import load_tree
from tailor.recipe import RECIPES_DIR, find, load
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
            r = load(path)
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


def _run(fn, *args, **kwargs):
    from doit.exceptions import TaskFailed

    try:
        fn(*args, **kwargs)
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
    """A doit python-action calling ``fn(*args, **kwargs)``; a TailorError fails the task cleanly."""
    return (_run, (fn,) + args, kwargs)


def _fail(message: str):
    raise TailorError(message)


def broken_tasks(basename: str, broken: dict[str, str]):
    """Tasks for recipes that did not validate: they fail with the recipe's error."""
    for name, err in sorted(broken.items()):
        yield {"basename": basename, "name": name, "doc": f"(invalid recipe) {err.splitlines()[0]}",
               "actions": [action(_fail, err)], "uptodate": [False], "verbosity": 2}


def explain(app: str, symbol: str) -> None:
    """Print why *symbol* has its value in *app*'s resolved config."""

    recipe = find(app)
    tree = load_tree(source.prepare(source.recipe_ref(recipe)))
    print(explain_symbol(tree, symbol, cfg.layers(recipe), recipe.kernel.resolve))


def _explain_pos(pos: list[str]) -> None:
    if len(pos) != 2:
        raise TailorError("usage: doit explain <app> <SYMBOL>")
    explain(pos[0], pos[1])


def _explain_action(pos):
    return _run(_explain_pos, pos)


def explain_task() -> dict:
    """``doit explain <app> <SYMBOL>``."""
    return {"basename": "explain", "actions": [_explain_action], "pos_arg": "pos",
            "uptodate": [False], "verbosity": 2}
