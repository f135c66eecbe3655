"""The pipeline's own cost: ``out/bench/pipeline.json``.

:func:`measure_pipeline` times a no-op ``doit build:<app>`` against kbuild's
own no-op ``make bzImage`` in that kernel's object tree and, with
``clean``, a clean build against the raw compile of the same config
(:func:`measure_clean`). It runs doit itself, so it is a script
(``python benchmarks/pipeline.py``), never a doit task.
"""

from __future__ import annotations

import fcntl
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from tailor import config as config_stage
from tailor import kernel as kernel_stage
from tailor import paths, records, source
from tailor.bench import conditions, load_apps, say, spread
from tailor.errors import TailorError
from tailor.recipe import Recipe
from tailor.records.bench import save_bench
from tailor.util import PROJECT, makedirs, out_dir, write_atomic

NOOP_RUNS = 3


def timed(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, str, int]:
    """Run *cmd*; (seconds it took, its stdout and stderr, its exit status)."""
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return time.monotonic() - t0, proc.stdout + proc.stderr, proc.returncode


def wait_for_doit(log: Callable[[str], None] = say, limit_s: float = 3600) -> None:
    """Wait until no other doit run holds the project's lock, so that a timed run does not wait for it."""
    path = paths.doit_lock()
    if not path.exists():
        return
    start, said = time.monotonic(), False
    with open(path, "a") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                if not said:
                    log("another doit run is using this project; waiting for it to finish before timing")
                    said = True
                if time.monotonic() - start > limit_s:
                    raise TailorError(f"another doit run held the project for {limit_s:.0f} s; measure later")
                time.sleep(0.5)


def doit_noop_ran_nothing(output: str) -> bool:
    """True when a doit run's output shows every task up to date (``-- name``) and none executed (``. name``)."""
    lines = [ln for ln in output.splitlines() if ln.strip()]
    return any(ln.startswith("-- ") for ln in lines) and not any(ln.startswith(". ") for ln in lines)


def measure_pipeline(app: str = "redis", runs: int = NOOP_RUNS, clean: bool = False,
                     log: Callable[[str], None] = say) -> dict:
    """Time a no-op ``doit build:<app>`` and kbuild's no-op ``make bzImage`` in that kernel's tree.

    Must run outside doit (the inner doit would wait for the outer one's
    lock). Both are warmed up once and then timed *runs* times. With
    *clean*, also times a clean ``doit build:<app>`` in a scratch output
    directory against ``make olddefconfig bzImage`` of the same config in a
    scratch object tree, both with ccache disabled; writes ``pipeline.json``.
    """
    doit = [sys.executable, "-m", "doit"]
    data: dict = {"kind": "pipeline", "conditions": conditions(), "app": app}
    # As a user runs it: Python keeps its compiled modules (a shell with PYTHONDONTWRITEBYTECODE set
    # would time compiling every module of tailor and doit instead of the no-op).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    wait_for_doit(log)
    _, out, rc = timed(doit + [f"build:{app}"], env=env, cwd=PROJECT)
    if rc != 0:
        last = (out.strip().splitlines() or ["no output"])[-1]
        raise TailorError(f"doit build:{app} failed; build it first ({last})")
    doit_s, noop_ok = [], True
    for _ in range(runs):
        wait_for_doit(log)
        t, out, rc = timed(doit + [f"build:{app}"], env=env, cwd=PROJECT)
        noop_ok &= rc == 0 and doit_noop_ran_nothing(out)
        doit_s.append(t)
    log(f"no-op doit build:{app}: {statistics.median(doit_s):.3f} s" + ("" if noop_ok else " (NOT a no-op!)"))
    kdir = records.app_kernel(app).files.dir
    recipe = load_apps((app,))[app]
    if isinstance(recipe, str):
        raise TailorError(f"{app}: {recipe}")
    srctree = source.prepare(source.recipe_ref(recipe))
    cmd, env = kernel_stage.make_command(srctree, kdir / "build", ["bzImage"], os.cpu_count())
    timed(cmd, env)
    make_s = []
    for _ in range(runs):
        t, out, rc = timed(cmd, env)
        if rc != 0:
            raise TailorError(f"no-op make bzImage failed in {kdir / 'build'}")
        make_s.append(t)
    log(f"no-op make bzImage ({app}'s kernel): {statistics.median(make_s):.3f} s")
    data["noop"] = {"doit_s": spread(doit_s), "kbuild_s": spread(make_s), "doit_was_noop": noop_ok,
                    "doit_cmd": f"doit build:{app}", "kbuild_cmd": "make -C <src> O=<objdir> bzImage"}
    data["clean"] = measure_clean(app, recipe, srctree, log) if clean else None
    return save_bench("pipeline", data)


def measure_clean(app: str, recipe: Recipe, srctree: Path, log: Callable[[str], None] = say) -> dict:
    """A clean ``doit build:<app>`` in a scratch out/ (sharing only the .deb cache) against
    ``make olddefconfig && make bzImage`` of the same .config in a scratch object tree, both
    with ccache disabled (the first would otherwise fill the cache for the second)."""
    config_text = config_stage.config_paths(recipe.id)["config"].read_text()
    with tempfile.TemporaryDirectory(prefix="tailor-clean-", dir=out_dir()) as tmp:
        tmp = Path(tmp)
        objdir = makedirs(tmp / "raw")
        write_atomic(objdir / ".config", config_text)
        cmd, env = kernel_stage.make_command(srctree, objdir, ["olddefconfig", "bzImage"], os.cpu_count())
        env["CCACHE_DISABLE"] = "1"
        raw_s, _, rc = timed(cmd, env)
        if rc != 0:
            raise TailorError("raw kernel compile failed")
        log(f"raw compile of {app}'s config: {raw_s:.1f} s")
        scratch = makedirs(tmp / "out")
        makedirs(scratch / "cache")
        os.symlink(paths.cache_dir("debs").resolve(), scratch / "cache" / "debs")
        env2 = dict(os.environ, TAILOR_OUT=str(scratch), CCACHE_DISABLE="1")
        total_s, out, rc = timed([sys.executable, "-m", "doit", f"build:{app}"], env=env2, cwd=PROJECT)
        if rc != 0:
            raise TailorError(f"clean doit build:{app} failed: {out.strip().splitlines()[-1:]}")
        log(f"clean doit build:{app}: {total_s:.1f} s")
    return {"doit_s": round(total_s, 3), "raw_make_s": round(raw_s, 3),
            "note": "both without ccache (CCACHE_DISABLE=1); the clean build also unpacks the source, "
                    "resolves the config, builds the rootfs and boots"}
