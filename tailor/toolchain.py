"""Host tool facts: which compiler, binutils and image tools build tailor's outputs.

One place for what a kernel's identity, ``kernel.json``, a release manifest and the
measurement report say about the host's tools. :func:`kernel_toolchain` is part of
every kernel's identity (a gcc or binutils upgrade rebuilds; an unchanged toolchain
does not), so it is read once per process and kept cheap: two ``--version`` calls.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

from tailor.kinds import Arch

BUILD_SETTINGS = "2"
"""Version of the kernel build environment (:func:`tailor.kernel.make_env`): a kernel built with other settings is rebuilt.
2: relative file-prefix map, so ccache's relative paths do not leak into vmlinux."""

KERNEL_TOOLS = {
    "gcc": ("gcc", "--version"),
    "binutils": ("ld", "--version"),
}
"""The tools whose versions are part of a kernel's identity: name -> command whose first line is the version."""

IMAGE_TOOLS = {
    "qemu": ("qemu-system-x86_64", "--version"),
    "e2fsprogs": ("mke2fs", "-V"),
    "dpkg": ("dpkg-deb", "--version"),
}
"""Other tools a release records: they pack and boot the image, not the kernel."""


def first_line(cmd) -> str | None:
    """The first non-empty line *cmd* prints (stdout, then stderr), or None if it cannot run."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              env=dict(os.environ, LC_ALL="C"), timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [ln.strip() for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.strip()]
    return lines[0] if lines else None


def debian_package(program: str) -> str | None:
    """``<package> <version>`` of the Debian package that ships *program*'s real file, or None."""
    path = shutil.which(program)
    if not path:
        return None
    real = os.path.realpath(path)
    candidates = [real] + ([real.removeprefix("/usr")] if real.startswith("/usr/") else [])
    for candidate in candidates:
        owner = first_line(["dpkg-query", "-S", candidate])
        if owner and ":" in owner and not owner.startswith("dpkg-query:"):
            package = owner.split(":", 1)[0].split(",")[0].strip()
            version = first_line(["dpkg-query", "-W", "-f", "${Version}\n", package])
            return f"{package} {version}" if version else package
    return None


def kernel_tools(arch: str = Arch.X86_64) -> dict[str, tuple[str, ...]]:
    """:data:`KERNEL_TOOLS` for a kernel of *arch*: the cross gcc and binutils (``aarch64-linux-gnu-gcc``,
    Debian's gcc-aarch64-linux-gnu and binutils-aarch64-linux-gnu) for another architecture than the host's."""
    cross = Arch(arch).cross_compile
    return {name: (cross + cmd[0], *cmd[1:]) for name, cmd in KERNEL_TOOLS.items()}


@functools.lru_cache(maxsize=None)
def kernel_toolchain(arch: str = Arch.X86_64) -> dict[str, str]:
    """``{"gcc": first line of gcc --version, "binutils": first line of ld --version}``: the part of
    a kernel's identity that is not its config. Debian's version lines carry the package revision
    (``gcc (Debian 12.2.0-14+deb12u1) 12.2.0``), so a rebuilt package changes them too. For arm64 the
    cross tools' lines (``aarch64-linux-gnu-gcc (Debian 12.2.0-14+deb12u1) 12.2.0``)."""
    return {name: first_line(cmd) or "not installed" for name, cmd in kernel_tools(arch).items()}


def versions(tools: dict) -> dict:
    """``{tool: {"version": its own first version line, "package": Debian package and version}}``."""
    out = {}
    for name, cmd in tools.items():
        line = first_line(cmd) if shutil.which(cmd[0]) else None
        out[name] = {"version": line or "not installed", "package": debian_package(cmd[0])}
    return out
