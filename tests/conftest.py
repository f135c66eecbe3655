"""Shared fixtures.

The real kernel source (Debian's linux-source-6.1, pinned in
kernel-sources.lock) is unpacked once into the project's out/ and its Kconfig
tree parsed once per test session. Tests that compile kernels or boot VMs
are marked ``slow`` and share one build per kernel config through out/
(identical configs are built once, as in the pipeline).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tailor import kconfig, source  # noqa: E402
from tailor.recipe import Source  # noqa: E402


@pytest.fixture(scope="session")
def linux_tree() -> Path:
    """The unpacked, verified Linux 6.1 source tree (shared with the pipeline in out/src)."""
    return source.prepare(source.ref_for(Source()))


@pytest.fixture(scope="session")
def ktree(linux_tree) -> kconfig.Tree:
    """The parsed Kconfig tree of the real kernel source."""
    return kconfig.load_tree(linux_tree)


@pytest.fixture
def run_tailor():
    """Run ``python -m tailor ...`` in the project; returns the CompletedProcess."""

    def run(*args, env=None, cwd=ROOT, timeout=600):
        full_env = dict(os.environ, **(env or {}))
        return subprocess.run([sys.executable, "-m", "tailor", *args], cwd=cwd, env=full_env,
                              capture_output=True, text=True, timeout=timeout)

    return run


FAKELINUX = Path(__file__).resolve().parent / "fakelinux"
"""The committed fake kernel tree (Kconfig, kbuild-like Makefiles, C files): see tests/fakelinux/README.md."""

collect_ignore = ["fakelinux"]


@pytest.fixture
def fake_tree(tmp_path) -> Path:
    """A copy of tests/fakelinux, for engine tests where the real kernel tree is not the point
    (a fresh path per test: the Kconfig tree is parsed anew)."""
    return Path(shutil.copytree(FAKELINUX, tmp_path / "fake-linux"))


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll *predicate* until it returns something true, and return that; after *timeout* seconds,
    fail naming *what* was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(interval)


def project_copy(dest: Path, shared=("src", "kernel", "cache")) -> Path:
    """A copy of the project's sources in *dest* whose out/ links the named parts of the real out/
    (the unpacked kernel source, the kernel builds, the .deb cache), so copies never recompile what
    the project already built."""
    from tailor.release import copy_project

    copy_project(dest)
    real_out = ROOT / "out"
    (dest / "out").mkdir()
    for name in shared:
        (real_out / name).mkdir(parents=True, exist_ok=True)
        (dest / "out" / name).symlink_to(real_out / name)
    return dest


def run_doit(project: Path, *args, timeout=3600, env_drop=("TAILOR_OUT",)):
    """Run doit in *project* (a :func:`project_copy`) and return the CompletedProcess."""
    env = dict(os.environ)
    for var in env_drop:
        env.pop(var, None)
    return subprocess.run([sys.executable, "-m", "doit", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=timeout)
