"""The Kata Containers baseline: Kata's generic guest kernel config, merged the way Kata merges it.

Kata keeps its guest kernel config as fragments (``common/*.conf`` and one
folder per architecture); its ``build-kernel.sh`` takes every ``common/*.conf``
that does not contain the tag ``!x86_64``, then every ``x86_64/*.conf`` (top
level only), and merges them with the kernel's own
``scripts/kconfig/merge_config.sh -r -n`` (an allnoconfig start). tailor reads
the fragments at run time from ``../shared/reference/kata-guest-config/``
beside the project (never copied into the repository) and runs that same
script, in an out-of-tree object directory, on the pinned 6.1 source.

Kata targets a newer kernel, so some fragment lines name symbols Linux 6.1
does not define; they are reported (``missing`` in ``baseline.json`` and one
summary line), not fatal, as merge_config.sh itself only warns about them.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tailor.errors import TailorError
from tailor.kernel import kbuild_olddefconfig, make_env
from tailor.util import PROJECT

KATA_CONFIG_DIR = PROJECT.parent / "shared" / "reference" / "kata-guest-config"
"""Kata's x86_64 guest config fragments, when the shared reference folder is beside the project."""

ARCH = "x86_64"
"""The architecture whose fragments are merged (Kata's name for its folder and its exclusion tag)."""

_SYMBOL = re.compile(r"^(?:CONFIG_([A-Za-z0-9_]+)=|# CONFIG_([A-Za-z0-9_]+) is not set)")
_NOT_IN_FINAL = re.compile(r"^Value requested for CONFIG_([A-Za-z0-9_]+) not in final \.config")


def fragments(folder: Path = KATA_CONFIG_DIR, arch: str = ARCH) -> list[Path]:
    """Kata's fragments for *arch* in Kata's merge order: every ``common/*.conf`` (sorted by name)
    whose text does not contain ``!<arch>``, then every ``<arch>/*.conf`` directly in that folder
    (sorted; subfolders such as the confidential or GPU sets are not taken)."""

    common, own = folder / "common", folder / arch
    if not common.is_dir() or not own.is_dir():
        raise TailorError(f"{folder}: needs common/ and {arch}/ fragment folders; "
                          f"put Kata's tools/packaging/kernel/configs/fragments there, or skip the kata baseline")
    tag = f"!{arch}"
    chosen = [p for p in sorted(common.glob("*.conf")) if p.is_file() and tag not in p.read_text()]
    return chosen + [p for p in sorted(own.glob("*.conf")) if p.is_file()]


def requested_symbols(paths: list[Path]) -> list[str]:
    """Every symbol the fragments set (``CONFIG_X=...`` or ``# CONFIG_X is not set``), in first-seen order."""
    seen: dict[str, None] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            m = _SYMBOL.match(line.strip())
            if m:
                seen.setdefault(m.group(1) or m.group(2), None)
    return list(seen)


def missing_symbols(paths: list[Path], defined: list[str] | set[str]) -> list[str]:
    """The symbols the fragments name that the kernel does not define (*defined*: the tree's names), sorted."""
    known = set(defined)
    return sorted(s for s in requested_symbols(paths) if s not in known)


def not_in_final(merge_output: str) -> list[str]:
    """The symbols merge_config.sh reports as "Value requested for CONFIG_X not in final .config", sorted."""
    return sorted({m.group(1) for line in merge_output.splitlines() if (m := _NOT_IN_FINAL.match(line))})


def merge(srctree: Path, objdir: Path, paths: list[Path]) -> tuple[str, str]:
    """Run the kernel's ``scripts/kconfig/merge_config.sh -r -n`` on *paths* in the object directory
    *objdir* (out of tree, ``ARCH=x86_64``); return the ``.config`` it leaves and its output.

    merge_config.sh runs a bare ``make`` in its working directory and keeps its temporary files
    there, so it runs inside *objdir*, whose ``Makefile`` kbuild writes on a first ``olddefconfig``
    (it forwards to the source tree): the source tree is never written to.
    """

    script = srctree / "scripts" / "kconfig" / "merge_config.sh"
    if not script.is_file():
        raise TailorError(f"{script}: not found; the kernel source is incomplete, remove out/src and rerun")
    kbuild_olddefconfig(srctree, objdir, "")  # writes objdir/Makefile (and a throwaway .config)
    env, make_vars = make_env(srctree, objdir)
    env["ARCH"] = next(v.split("=", 1)[1] for v in make_vars if v.startswith("ARCH="))
    env.pop("KCONFIG_CONFIG", None)
    (objdir / ".config").unlink(missing_ok=True)
    cmd = ["sh", str(script), "-r", "-n"] + [str(p.resolve()) for p in paths]
    try:
        proc = subprocess.run(cmd, cwd=objdir, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise TailorError(f"cannot run {script.name} ({e.strerror}); run ./setup.sh") from None
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 or not (objdir / ".config").is_file():
        tail = " | ".join(output.strip().splitlines()[-3:]) or "no output"
        raise TailorError(f"{script.name} failed in {objdir}: {tail}")
    return (objdir / ".config").read_text(), output


def summary(missing: list[str], unmet: list[str]) -> str:
    """The one line printed after the merge: how many requested symbols 6.1 lacks and how many did not take."""
    shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
    return (f"{len(missing)} fragment symbols not in this kernel ({shown or 'none'}); "
            f"{len(unmet)} requested values not in the final .config (details in baseline.json)")


def available() -> bool:
    """True when Kata's fragment folder is beside the project."""
    return KATA_CONFIG_DIR.is_dir()

