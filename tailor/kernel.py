"""The kernel stage: build a resolved ``.config`` out of tree, keyed by the kernel's identity.

A kernel's identity is its config's identity (the resolved assignments and
the source) together with the toolchain that compiles it (gcc's and
binutils' version lines, :func:`tailor.toolchain.kernel_toolchain`): a gcc
upgrade rebuilds, an unchanged toolchain does not. Kernels live in
``out/kernel/<kernel identity>/``: the kbuild object tree in ``build/`` and
the artefacts beside it (``bzImage``, ``vmlinux``, ``System.map``,
``config``, ``build.log``, ``kernel.json``, which records the toolchain and
the make command). Recipes whose resolved configs (and sources) are
identical share one directory, so the second one costs nothing. ``kernel.json`` is written last: a directory
without it is an unfinished build, which the next run simply continues in the
same object tree (kbuild is incremental).

A *staged* kernel is built in one fixed directory, ``out/kernel/.stage/``, and its object tree then
moves to the kernel's own ``build/``. Such a tree can *seed* the next staged build (same source, arch
and toolchain): it is copied back into the stage and kbuild recompiles only the objects whose
sources, headers or config symbols changed, instead of a whole new tree through ccache (which still
preprocesses every file). The directory must be the same because kbuild reruns any command whose
text changed, and the file-prefix maps in every command name the object directory; a tree built
elsewhere does not seed (the build starts from nothing). Discovery's trial kernels, which differ from
an earlier trial by a few options, are built this way.

Over 400 lines because a build is one sequence under one lock (the reuse check, the stage and its
seed, kbuild's olddefconfig check, the compile, the artefacts and ``kernel.json``) and the make
environment it runs in must be the one every kernel is built with.

Before compiling, kbuild's own ``make olddefconfig`` must reproduce the
engine's ``.config`` byte for byte; otherwise the build stops, because the
engine and kbuild disagree about what this kernel is.

The environment is fixed for reproducible output: SOURCE_DATE_EPOCH and
KBUILD_BUILD_TIMESTAMP, KBUILD_BUILD_USER/HOST/VERSION, file-prefix maps,
LC_ALL=C and TZ=UTC. ccache is used when installed; a shared ccache and
distcc helpers are used as tailor.farm's settings say.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import subprocess
import sys
from collections import deque
from pathlib import Path

from tailor import config, farm, paths, source, toolchain
from tailor.epoch import source_date_epoch
from tailor.errors import TailorBug, TailorError
from tailor.kconfig import config_diff
from tailor.kinds import Arch
from tailor.records import KernelBuild, KernelPointer
from tailor.toolchain import debian_package, kernel_toolchain, kernel_tools
from tailor.util import (Progress, atomic_path, canonical_json, count_enabled, file_lock, human_size, makedirs,
                         display_path, out_dir, read_json, remove, sha256_text,
                         write_json)

BUILD_SETTINGS = toolchain.BUILD_SETTINGS

ARTEFACTS = {
    "bzImage": "arch/x86/boot/bzImage",
    "vmlinux": "vmlinux",
    "System.map": "System.map",
}
"""An x86_64 kernel's artefacts: name in ``out/kernel/<identity>/`` -> path in the object tree."""


def artefacts(arch: str = Arch.X86_64) -> dict[str, str]:
    """The artefacts of a kernel of *arch*: its boot image (``bzImage``; ``Image`` on arm64), ``vmlinux``
    and ``System.map``."""
    name, rel = Arch(arch).boot_image
    return {name: rel, "vmlinux": "vmlinux", "System.map": "System.map"}


_COMPILE_LINE = re.compile(r"^\s+(CC|AS)\s+\S")


kernel_root = paths.kernel_root
kernel_dir = paths.kernel_dir
"""The directory of the kernel whose kernel identity (see :func:`kernel_identity`) is *key*."""


def kernel_identity(config_identity: str, toolchain: dict | None = None, arch: str = Arch.X86_64) -> str:
    """The identity of the kernel built from the config *config_identity* by *toolchain*
    (default: this host's for *arch*, :func:`tailor.toolchain.kernel_toolchain`: the cross gcc and
    binutils for arm64)."""
    toolchain = kernel_toolchain(arch) if toolchain is None else toolchain
    return sha256_text(f"{config_identity}\n{canonical_json(toolchain)}")


def toolchain_record(arch: str = Arch.X86_64) -> dict:
    """What ``kernel.json`` records of the toolchain: each tool's version line and Debian package."""
    tools = kernel_tools(arch)
    return {name: {"version": line, "package": debian_package(tools[name][0])}
            for name, line in kernel_toolchain(arch).items()}


app_pointer = paths.kernel_pointer
"""Per-app file naming the kernel an app uses (the kernel task's target)."""


def make_env(srctree: Path, objdir: Path, farm_plan: farm.Plan | None = None,
             arch: str = Arch.X86_64) -> tuple[dict[str, str], list[str]]:
    """The environment and make variables for a reproducible kbuild run (through the farm of *farm_plan*)
    of a kernel of *arch* (arm64: ``ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-``, Debian's cross gcc)."""
    arch = Arch(arch)
    cross = arch.cross_compile
    epoch = source_date_epoch()
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%a %b %d %H:%M:%S UTC %Y")
    env = dict(os.environ)
    for var in ("KCONFIG_FUNCTIONS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "CFLAGS", "LDFLAGS", "ARCH"):
        env.pop(var, None)
    env.update({
        "SOURCE_DATE_EPOCH": str(epoch),
        "KBUILD_BUILD_TIMESTAMP": stamp,
        "KBUILD_BUILD_USER": "tailor",
        "KBUILD_BUILD_HOST": "tailor",
        "KBUILD_BUILD_VERSION": "1",
        "LC_ALL": "C",
        "TZ": "UTC",
    })
    # ccache (CCACHE_BASEDIR) hands gcc the source path relative to the object directory, so map
    # that form too: otherwise __FILE__ keeps "../../../src/<id>/tree/" and ccache builds differ.
    rel_src = os.path.relpath(srctree.resolve(), objdir.resolve())
    maps = (f"-ffile-prefix-map={objdir.resolve()}/= -ffile-prefix-map={srctree.resolve()}/= "
            f"-ffile-prefix-map={rel_src}/=")
    make_vars = [f"ARCH={arch}"] + ([f"CROSS_COMPILE={cross}"] if cross else [])
    make_vars += ["LOCALVERSION=", f"KCFLAGS={maps}", f"KAFLAGS={maps}"]
    if shutil.which("ccache"):
        env.setdefault("CCACHE_BASEDIR", str(out_dir().resolve()))
        env.setdefault("CCACHE_NOHASHDIR", "1")
        make_vars += [f"CC=ccache {cross}gcc", "HOSTCC=ccache gcc"]
    if farm_plan is not None:
        farm_plan.apply(env, make_vars)
    return env, make_vars


def make_command(srctree: Path, objdir: Path, targets: list[str], jobs: int | None = None,
                 farm_plan: farm.Plan | None = None, arch: str = Arch.X86_64) -> tuple[list[str], dict]:
    """The kbuild command (``make -C <srctree> O=<objdir> ... [-jN] <targets>``) and its environment,
    for a reproducible out-of-tree build of *targets* for *arch* (through the farm of *farm_plan*, if any)."""
    env, make_vars = make_env(srctree, objdir, farm_plan, arch)
    cmd = ["make", "-C", str(srctree.resolve()), f"O={objdir.resolve()}"] + make_vars
    if jobs:
        cmd.append(f"-j{jobs}")
    return cmd + targets, env


def _make_record(cmd: list[str]) -> list[str]:
    """The make command as kernel.json records it: without the machine's paths (``-C <tree>``,
    ``O=``) and the path-mapping flags, which differ between checkouts and not between kernels."""
    out, skip = [], False
    for arg in cmd:
        if skip:
            skip = False
        elif arg == "-C":
            skip = True
        elif not arg.startswith(("O=", "KCFLAGS=", "KAFLAGS=")):
            out.append(arg)
    return out


def kbuild_olddefconfig(srctree: Path, objdir: Path, config_text: str, arch: str = Arch.X86_64) -> str:
    """Put *config_text* in *objdir*, run kbuild's ``make olddefconfig`` there; return the .config it writes."""
    makedirs(objdir)
    cfg = objdir / ".config"
    cfg.write_text(config_text)
    cmd, env = make_command(srctree, objdir, ["-s", "olddefconfig"], arch=arch)
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise TailorError(f"cannot run make ({e.strerror}); run ./setup.sh") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise TailorError(f"make olddefconfig failed in {objdir}: {' | '.join(tail) or 'no output'}")
    return cfg.read_text()


def olddefconfig_check(srctree: Path, objdir: Path, config_text: str, arch: str = Arch.X86_64) -> None:
    """Fail unless kbuild's olddefconfig reproduces *config_text* byte for byte."""
    theirs = kbuild_olddefconfig(srctree, objdir, config_text, arch)
    if theirs != config_text:
        diffs = config_diff(config_text, theirs)
        raise TailorBug(f"kbuild's olddefconfig disagrees with tailor's resolved config ({'; '.join(diffs)})")


def _estimate(enabled: int) -> int:
    """Estimated objects to compile, from earlier builds of this project (nearest by option count)."""
    hist = kernel_root() / "objects.json"
    try:
        data = read_json(hist) if hist.exists() else {}
    except TailorError:
        data = {}
    if data:
        near = min(data, key=lambda k: abs(int(k) - enabled))
        return max(1, round(int(data[near]) * enabled / max(1, int(near))))
    return max(200, int(enabled * 1.6))


def _record_estimate(enabled: int, objects: int) -> None:
    hist = kernel_root() / "objects.json"
    try:
        data = read_json(hist) if hist.exists() else {}
    except TailorError:
        data = {}
    data[str(enabled)] = objects
    write_json(hist, data)


def compile_kernel(srctree: Path, objdir: Path, log_path: Path, enabled: int, jobs: int | None = None,
                   label: str = "kernel", arch: str = Arch.X86_64, seeded: bool = False) -> int:
    """Run ``make bzImage`` (``make Image`` on arm64) in *objdir*, logging to *log_path* and showing progress;
    return objects compiled (in a *seeded* tree: recompiled, of which no estimate is shown).

    The farm settings (tailor.farm: a shared ccache, distcc helpers) are checked first."""
    plan = farm.plan(label=label)
    jobs = jobs or plan.jobs or os.cpu_count() or 1
    cmd, env = make_command(srctree, objdir, [Arch(arch).boot_image[0]], jobs, plan, arch)
    estimate = _estimate(enabled)
    progress = Progress(f"[{label}]")
    tail: deque[str] = deque(maxlen=40)
    compiled = 0
    makedirs(log_path.parent)
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        if plan.remotes or plan.helpers:
            log.write(f"# farm: {plan.summary()}\n")
        try:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1)
        except OSError as e:
            raise TailorError(f"cannot run make ({e.strerror}); run ./setup.sh") from None
        try:
            for line in proc.stdout:
                log.write(line)
                tail.append(line.rstrip("\n"))
                if _COMPILE_LINE.match(line):
                    compiled += 1
                    estimate = max(estimate, compiled)
                    progress.update(f"{compiled} objects recompiled" if seeded
                                    else f"{compiled}/~{estimate} objects compiled")
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if rc != 0:
        progress.done("FAILED")
        sys.stderr.write("".join(f"  | {t}\n" for t in list(tail)[-25:]))
        raise TailorError(f"kernel build failed (make exited {rc}); full log: {log_path}")
    progress.done(f"done, {compiled} objects {'recompiled' if seeded else 'compiled'}")
    return compiled


STAGE = ".stage"
"""The directory under ``out/kernel/`` where staged kernels are built (see the module's docstring)."""
BUILT_IN = ".tailor-built-in"
"""A file in a staged object tree: the directory it was built in (only a tree built in the stage seeds)."""
SEEDED_FROM = ".tailor-seeded-from"
"""A file in a seeded object tree: the tree it was seeded from."""


def seed_tree(seed: Path, stage: Path) -> None:
    """Copy the object tree *seed* to *stage* (replacing what is there), keeping modification times, so
    that kbuild sees what it built as up to date and rebuilds only what a new ``.config`` changes."""
    remove(stage)
    partial = stage.with_name(stage.name + ".partial")
    remove(partial)
    try:
        shutil.copytree(seed, partial, symlinks=True, copy_function=shutil.copy2)
    except (OSError, shutil.Error) as e:
        remove(partial)
        raise TailorError(f"cannot copy the object tree {display_path(seed)} to seed a build ({e}); "
                          f"delete {display_path(seed.parent)} and rerun") from None
    os.replace(partial, stage)


def seeded_from(tree: Path) -> Path | None:
    """The object tree that the staged tree *tree* was seeded from; None when it was built from nothing."""
    try:
        return Path((Path(tree) / SEEDED_FROM).read_text().strip())
    except OSError:
        return None


def stage_dir() -> Path:
    """``out/kernel/.stage/``: where staged kernels are built."""
    return kernel_root() / STAGE


def seeds(seed: Path | None, stage: Path) -> bool:
    """Whether the object tree *seed* was built in *stage* (so that its commands are the stage's)."""
    try:
        return seed is not None and (Path(seed) / BUILT_IN).read_text().strip() == str(stage)
    except OSError:
        return False


def build(config_path: Path, srctree: Path, identity: str, source_label: str = "",
          jobs: int | None = None, label: str = "kernel", arch: str = Arch.X86_64,
          staged: bool = False, seed: Path | None = None) -> KernelBuild:
    """Build the kernel of *arch* for *config_path* (unless one with this identity exists); return its
    ``kernel.json``.

    *staged* builds it in ``out/kernel/.stage/`` (see the module's docstring), from a copy of *seed*
    (another staged kernel's ``build/``) when given, so that only what the config changes recompiles.
    A build is not staged when this kernel's own unfinished tree exists (that one is continued), nor
    when another process holds the stage at the moment (no wait: it builds in its own directory).
    """
    config_text = Path(config_path).read_text()
    key = kernel_identity(identity, arch=arch)
    made = artefacts(arch)
    boot_name = Arch(arch).boot_image[0]
    kdir = kernel_dir(key)
    meta_path = kdir / "kernel.json"
    with file_lock(kernel_root() / f".{key[:16]}.lock", f"kernel build {key[:16]}"):
        if meta_path.exists():
            try:
                meta = KernelBuild.load(meta_path)
            except TailorError:  # written by an older tailor or damaged: finish the build again (incremental)
                meta = None
            if (meta is not None and meta.kernel_identity == key and meta.build_settings == BUILD_SETTINGS
                    and all((kdir / a).exists() for a in made)):
                print(f"[{label}] reusing kernel {key[:16]} (identical config and toolchain)", file=sys.stderr)
                return meta
        objdir = kdir / "build"
        seeded = False
        with contextlib.ExitStack() as held:
            workdir = objdir
            if staged and not objdir.exists():
                stage = stage_dir()
                try:
                    held.enter_context(file_lock(kernel_root() / f"{STAGE}.lock", "the kernel stage", wait=False))
                except TailorError:
                    print(f"[{label}] another staged build is running: building in {display_path(objdir)}",
                          file=sys.stderr)
                else:
                    workdir = stage
                    seeded = seeds(seed, stage)
                    if seeded:
                        print(f"[{label}] seeded from {display_path(seed)}: recompiling what the config changes",
                              file=sys.stderr)
                        seed_tree(Path(seed), stage)
                        (stage / SEEDED_FROM).write_text(f"{Path(seed)}\n")
                    else:
                        if seed is not None:
                            print(f"[{label}] {display_path(seed)} was not built in the stage: building from "
                                  f"nothing", file=sys.stderr)
                        remove(stage)
                        makedirs(stage)
                        (stage / BUILT_IN).write_text(f"{stage}\n")
            olddefconfig_check(srctree, workdir, config_text, arch)
            enabled = count_enabled(config_text)
            log_tmp = kdir / "build.log.partial"
            makedirs(kdir)
            compiled = compile_kernel(srctree, workdir, log_tmp, enabled, jobs, label, arch, seeded=seeded)
            for name, rel in made.items():
                with atomic_path(kdir / name) as tmp:
                    shutil.copyfile(workdir / rel, tmp)
            with atomic_path(kdir / "config") as tmp:
                shutil.copyfile(workdir / ".config", tmp)
            if workdir != objdir:
                os.replace(workdir, objdir)
        os.replace(log_tmp, kdir / "build.log")
        total = sum(1 for ln in (kdir / "build.log").read_text(errors="replace").splitlines()
                    if _COMPILE_LINE.match(ln))
        if compiled == total and compiled > 0 and not seeded:
            _record_estimate(enabled, compiled)
        cmd, _ = make_command(srctree, objdir, [boot_name], jobs or os.cpu_count() or 1, arch=arch)
        meta = KernelBuild(
            identity=identity, kernel_identity=key, toolchain=toolchain_record(arch), make=_make_record(cmd),
            build_settings=BUILD_SETTINGS, source=source_label, enabled=enabled, objects_compiled=compiled,
            source_date_epoch=source_date_epoch(), sizes={name: (kdir / name).stat().st_size for name in made},
            artefacts={name: name for name in list(made) + ["config", "build.log"]})
        meta.save(meta_path)
    sizes = meta.sizes
    print(f"[{label}] {boot_name} {human_size(sizes[boot_name])}, vmlinux {human_size(sizes['vmlinux'])} "
          f"in {kdir}", file=sys.stderr)
    return meta


def describe(meta: KernelBuild) -> dict:
    """Where the kernel of *meta* lives and what it is: the keys every pointer to a kernel carries
    (:class:`~tailor.records.KernelPointer`'s, without ``app``), for records that embed them."""
    kdir = kernel_dir(meta.kernel_identity)
    return {
        "identity": meta.identity,
        "kernel_identity": meta.kernel_identity,
        "dir": str(kdir),
        "bzImage": str(kdir / ("Image" if "Image" in meta.sizes else "bzImage")),  # the boot image (arm64: Image)
        "vmlinux": str(kdir / "vmlinux"),
        "sizes": meta.sizes,
        "enabled": meta.enabled,
    }


def link_app(app: str, meta: KernelBuild) -> Path:
    """Write the per-app pointer (:class:`~tailor.records.KernelPointer`) to the kernel *meta* describes."""
    path = app_pointer(app)
    KernelPointer.from_dict({"app": app, **describe(meta)}, display_path(path), with_format=False).save(path)
    return path


def clean_app(app: str) -> None:
    """Remove *app*'s kernel pointer, and its kernel when no other app's pointer names it."""
    pointer = app_pointer(app)
    try:
        key = KernelPointer.load(pointer).kernel_identity
    except TailorError:
        return
    pointer.unlink(missing_ok=True)
    for other in pointer.parent.glob("*.json"):
        try:
            if KernelPointer.load(other).kernel_identity == key:
                return
        except TailorError:
            continue
    remove(kernel_dir(key))


def build_for(recipe) -> KernelBuild:
    """The kernel stage for one recipe: build (or reuse) the kernel of its resolved config."""

    cfg_paths = config.config_paths(recipe.id)
    try:
        identity = cfg_paths["identity"].read_text().strip()
    except FileNotFoundError:
        raise TailorError(f"{cfg_paths['identity']}: missing; run `doit config:{recipe.id}` first") from None
    ref = source.recipe_ref(recipe)
    srctree = source.prepare(ref)
    meta = build(cfg_paths["config"], srctree, identity, ref.label, label=f"kernel:{recipe.id}", arch=recipe.arch)
    link_app(recipe.id, meta)
    return meta
