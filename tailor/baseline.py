"""Baseline kernels: general-purpose microVM configs that tailor's kernels are measured against.

Two baselines exist, each built from the same pinned kernel source as the
recipes and stored like any kernel in ``out/kernel/<identity>/``:

* ``microvm``: ``base_configs/microvm.config`` (the kernel's own
  ``x86_64_defconfig`` + ``kvm_guest.config``, no modules, virtio-mmio),
  resolved by tailor's engine from all-no like a recipe's fragments and
  verified line by line (kbuild's olddefconfig writes one more ``is not set``
  comment than kconfiglib, for an implied symbol with unmet dependencies; the
  values are identical, so kbuild's layout is kept, with the same identity);
* ``firecracker``: Firecracker's recommended 6.1 guest config, read at run
  time from ``../shared/reference/firecracker-microvm-6.1.config`` beside the
  project when that file exists (it is never copied into the repository).
  It does not verify in tailor's engine (six of its lines name symbols that
  Debian's 6.1 does not have, e.g. ``SYSGENID`` and ``AMAZON_DRIVER_UPDATES``
  from Amazon's kernel), so it is derived with kbuild's own ``make
  olddefconfig`` from the file as it is, plus the one option qemu's microvm
  needs to find its virtio devices (:data:`FIRECRACKER_EXTRA`); the result
  says so (``method``);
* ``kata``: Kata Containers' generic guest kernel, merged at run time from
  Kata's fragments in ``../shared/reference/kata-guest-config/`` (when that
  folder exists) by the kernel's own ``merge_config.sh -r -n``, as Kata does
  (:mod:`tailor.kata`), then normalised by ``make olddefconfig``; the symbols
  Linux 6.1 lacks are listed in ``baseline.json`` (``missing``), not fatal.

A baseline is written to ``out/baseline/<name>/`` (``.config``,
``identity``, ``baseline.json`` naming the kernel). Baselines take tens of
minutes to compile, so they have their own doit tasks (``baseline:<name>``)
and are not part of ``doit build``. Everything that uses a baseline treats a
missing one as "not measured".
"""

from __future__ import annotations

import sys
from pathlib import Path

from tailor import kata, kernel, paths, source
from tailor.errors import TailorError
from tailor.kconfig import config_diff, config_identity, load_tree, parse_fragment, resolve
from tailor.kernel import kbuild_olddefconfig
from tailor.recipe import BASE_CONFIGS_DIR, Source
from tailor.records import BaselineKernel
from tailor.util import PROJECT, config_values, display_path, makedirs, write_atomic

FIRECRACKER_CONFIG = PROJECT.parent / "shared" / "reference" / "firecracker-microvm-6.1.config"
"""Firecracker's 6.1 guest config, when the shared reference folder is beside the project."""

FIRECRACKER_EXTRA = ("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y",)
"""Added to Firecracker's config: it has VIRTIO_MMIO but not the command-line device option,
so under qemu's microvm with ``acpi=off`` (which lists the virtio-mmio devices on the kernel
command line) it would find no network card and the network apps could not be measured."""

KATA_EXTRA = ("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y",)
"""Added to Kata's merged config only if the merge did not already set it (Kata's ``mmio.conf``
asks for it, for Firecracker): qemu's microvm lists its virtio-mmio devices on the command line."""

BASELINES = {
    "microvm": "the kernel's x86_64_defconfig + kvm_guest.config (base_configs/microvm.config)",
    "firecracker": "Firecracker's recommended 6.1 guest config (read from ../shared/reference)",
    "kata": "Kata Containers' generic guest kernel: its x86_64 fragments merged as Kata does (../shared/reference)",
}
"""Every baseline's name and what it is."""


baseline_dir = paths.baseline_dir


def meta_path(name: str) -> Path:
    """``baseline.json``: which kernel the baseline is (the baseline task's target)."""
    return baseline_dir(name) / "baseline.json"


def available(name: str) -> bool:
    """True when the baseline's input exists (Firecracker's config is optional)."""
    if name == "microvm":
        return (BASE_CONFIGS_DIR / "microvm.config").is_file()
    if name == "firecracker":
        return FIRECRACKER_CONFIG.is_file()
    if name == "kata":
        return kata.available()
    return False


def input_path(name: str) -> Path:
    """The file (for kata: the folder) a baseline is derived from."""
    if name == "microvm":
        return BASE_CONFIGS_DIR / "microvm.config"
    if name == "firecracker":
        return FIRECRACKER_CONFIG
    if name == "kata":
        return kata.KATA_CONFIG_DIR
    raise TailorError(f"{name!r}: no such baseline; baselines: {', '.join(BASELINES)}")


def source_ref():
    """The kernel source of every baseline: the default pinned source of the recipes."""

    return source.ref_for(Source())


def input_files(name: str) -> list[Path]:
    """The files a baseline's config is made from (its doit task's file dependencies)."""
    if name == "kata":
        return [p for p in sorted(kata.KATA_CONFIG_DIR.rglob("*")) if p.is_file()]
    return [input_path(name)]


def not_found(name: str) -> str:
    """The one-line outcome for a baseline whose optional input is not on this machine."""
    path = input_path(name)
    return f"baseline {name}: {path.name} not found beside the project (../shared/reference); not measured, skip it"


def resolve_config(name: str, srctree: Path, source_id: str) -> tuple[str, str, str, dict]:
    """Resolve the baseline *name* on *srctree*; return ``(config text, identity, method, extra)``.

    ``microvm`` goes through the engine (all-no start, every line verified);
    ``firecracker`` through kbuild's ``make olddefconfig`` on the file as is;
    ``kata`` through the kernel's ``merge_config.sh -r -n`` on Kata's fragments, then
    ``make olddefconfig``. *extra* is written into ``baseline.json`` (kata: the fragments
    merged, the symbols 6.1 lacks and the requested values that did not take).
    """

    if not available(name):
        raise TailorError(not_found(name))

    scratch = baseline_dir(name) / "olddefconfig"
    path = input_path(name)
    if name == "kata":
        return _resolve_kata(srctree, source_id, scratch)
    if name == "microvm":
        tree = load_tree(srctree)
        result = resolve(tree, [parse_fragment(path, label=f"base_configs/{path.name}")], "strict",
                         source_id=source_id)
        theirs = kbuild_olddefconfig(srctree, scratch, result.config)
        if theirs == result.config:
            return result.config, result.identity, "engine (all-no + base_configs/microvm.config, verified)", {}
        if config_values(theirs) != config_values(result.config):
            diffs = "; ".join(config_diff(result.config, theirs))
            raise TailorError(f"baseline {name}: kbuild's olddefconfig changes the engine's values ({diffs})")
        # Same values; kbuild only writes an extra "is not set" comment (an implied symbol
        # with unmet dependencies, which kconfiglib leaves out). The identity ignores comments.
        return (theirs, config_identity(theirs, source_id),
                "engine (all-no + base_configs/microvm.config, verified); layout from kbuild olddefconfig", {})
    text = path.read_text().rstrip("\n") + "\n" + "".join(f"{line}\n" for line in FIRECRACKER_EXTRA)
    text = kbuild_olddefconfig(srctree, scratch, text)
    return (text, config_identity(text, source_id),
            f"kbuild olddefconfig of the file as is + {', '.join(FIRECRACKER_EXTRA)}", {})


def _resolve_kata(srctree: Path, source_id: str, scratch: Path) -> tuple[str, str, str, dict]:
    """Kata's fragments merged by merge_config.sh -r -n (Kata's method), then kbuild's olddefconfig
    with the build's own make variables; the summary of what 6.1 lacks is printed as one line."""

    frags = kata.fragments()
    merged, output = kata.merge(srctree, scratch / "merge", frags)
    missing = kata.missing_symbols(frags, load_tree(srctree).names)
    unmet = kata.not_in_final(output)
    text = kbuild_olddefconfig(srctree, scratch, merged)
    lacking = [line for line in KATA_EXTRA if line not in text.splitlines()]
    if lacking:
        text = kbuild_olddefconfig(srctree, scratch, text + "".join(f"{line}\n" for line in lacking))
    print(f"[baseline:kata] {kata.summary(missing, unmet)}", file=sys.stderr)
    root = kata.KATA_CONFIG_DIR
    extra = {"fragments": [str(p.relative_to(root)) for p in frags], "missing": missing,
             "not_in_final": unmet, "added": lacking}
    method = (f"merge_config.sh -r -n of {len(frags)} Kata fragments (allnoconfig start) + kbuild olddefconfig"
              + (f" + {', '.join(lacking)}" if lacking else ""))
    return text, config_identity(text, source_id), method, extra


def build_baseline(name: str, jobs: int | None = None) -> BaselineKernel:
    """Resolve and build the baseline *name* (or reuse its kernel); write and return ``baseline.json``."""

    if not available(name):
        raise TailorError(not_found(name))
    ref = source_ref()
    srctree = source.prepare(ref)
    text, identity, method, extra = resolve_config(name, srctree, ref.id)
    bdir = makedirs(baseline_dir(name))
    write_atomic(bdir / ".config", text)
    write_atomic(bdir / "identity", identity + "\n")
    meta = kernel.build(bdir / ".config", srctree, identity, ref.label, jobs=jobs, label=f"baseline:{name}")
    info = BaselineKernel.from_dict({"name": name, "description": BASELINES[name], "method": method,
                                     **kernel.describe(meta), "source": ref.label, "details": extra},
                                    display_path(meta_path(name)), with_format=False)
    info.save(meta_path(name))
    print(f"[baseline:{name}] kernel {identity[:16]} ({method})", file=sys.stderr)
    return info


def load(name: str) -> BaselineKernel | None:
    """The baseline's ``baseline.json`` when it was built and its kernel is still there, else None (a
    damaged or outdated file is a TailorError naming it)."""
    path = meta_path(name)
    if not path.is_file():
        return None
    info = BaselineKernel.load(path)
    return info if info.files.bzimage.is_file() else None
