"""Shared fixtures.

The real kernel source (Debian's linux-source-6.1, pinned in
kernel-sources.lock) is unpacked once into the project's out/ and its Kconfig
tree parsed once per test session. Tests that compile kernels or boot VMs
are marked ``slow`` and share one build per kernel config through out/
(identical configs are built once, as in the pipeline).
"""

from __future__ import annotations

import os
import subprocess
import sys
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


FAKE_KCONFIG = """\
mainmenu "Fake $(ARCH) $(KERNELVERSION) Kernel Configuration"

config MODULES
\tbool "Enable loadable module support"
\tmodules
\thelp
\t  The attribute above is the bare 'modules' that kconfiglib 14.1.0 cannot parse.

config NET
\tbool "Networking support"

config INET
\tbool "TCP/IP networking"
\tdepends on NET

config NETDEVICES
\tbool "Network device support"
\tdepends on NET

config VIRTIO
\tbool

config VIRTIO_MMIO
\tbool "Platform bus driver for memory mapped virtio devices"
\tselect VIRTIO

config VIRTIO_NET
\ttristate "Virtio network driver"
\tdepends on VIRTIO && NETDEVICES

config LOG_SHIFT
\tint "Log buffer size"
\trange 12 25
\tdefault 17

config HOSTNAME
\tstring "Default hostname"
\tdefault "(none)"

config TINY
\tbool "Tiny"
\toption allnoconfig_y

choice
\tprompt "Compression"
\tdefault GZIP
config GZIP
\tbool "gzip"
config XZ
\tbool "xz"
endchoice
"""


@pytest.fixture
def fake_tree(tmp_path) -> Path:
    """A tiny kernel-like tree (Kconfig + Makefile) for engine tests where the real one is not the point."""
    d = tmp_path / "fake-linux"
    d.mkdir()
    (d / "Kconfig").write_text(FAKE_KCONFIG)
    (d / "Makefile").write_text("VERSION = 9\nPATCHLEVEL = 9\nSUBLEVEL = 0\nEXTRAVERSION = -fake\n")
    return d


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
