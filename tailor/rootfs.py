"""The rootfs stage: Debian packages + overlays + a generated init -> a deterministic image.

Steps, each a plain function:

1. :mod:`tailor.debian` (the one apt client, under its sandbox rule) resolves
   the packages' dependency closure with apt as if nothing were installed (so
   the result does not depend on the host), fetches the .debs into
   ``out/cache/debs`` with ``apt-get download`` (apt verifies them against the
   signed archive indexes; cached files are checked against the index's SHA256
   again) and unpacks them with ``dpkg-deb -x`` (no root needed).
2. :func:`stage` builds the image tree: with ``slim`` (the default) only the
   entrypoint, its ELF shared-library closure resolved inside the extracted
   tree, the recipe's ``files`` and busybox; otherwise the whole tree. Then
   the overlays (``rootfs/common``, ``rootfs/<app>``) and ``/init``, rendered
   from ``templates/init.sh.j2`` with every recipe value shell-quoted; a network
   recipe also gets ``/.tailor/reseed`` (:func:`reseed_helper`, for snapshot restores).
3. :func:`pack_cpio` / :func:`pack_ext2` write the image: same inputs, same
   bytes (sorted entries, times clamped to SOURCE_DATE_EPOCH, owner 0:0,
   fixed UUID and hash seed).

Over 400 lines because the three steps are one pipeline over one staged tree and share its
conventions (in-tree paths, symlinks recreated, times clamped); split, each part would import the rest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

from tailor import cpio, debian, paths
from tailor import image as oci
from tailor.elf import library_closure, read_dynamic, resolve_in_root
from tailor.errors import TailorError
from tailor.fstree import (add_users, apply_overlay, copy_in, elf_files, expand_files, has_user, make_dir_in,
                           normalise)
from tailor.epoch import source_date_epoch
from tailor.kinds import Arch, RootFormat
from tailor.recipe import RESEED_SOURCE, ROOTFS_DIR, Recipe
from tailor.records import RootfsManifest
from tailor.records.stages import SlimDropped, SlimKept
from tailor.templates import INIT_TEMPLATE, render
from tailor.util import atomic_path, display_path, makedirs, remove, sha256_file, sha256_text


ALWAYS_PACKAGES = ("busybox-static",)
"""Packages every rootfs gets: busybox provides the few tools the init uses."""

IMAGE_ETC = ("/etc/passwd", "/etc/group", "/etc/hosts", "/etc/nsswitch.conf")
"""An image's files kept in a slim tree (rootfs/common fills them in only where the image has none)."""

GUEST_ADDRESS = "10.0.2.15/24"
GUEST_GATEWAY = "10.0.2.2"
NETWORK_NEEDS = ("INET", "VIRTIO_NET")
"""What the init's network set-up (an IPv4 address on eth0, the microVM's virtio-net device) needs of
every kernel: a network recipe's boot test cannot pass without them. The init names them when the
set-up fails; discovery keeps them without building the kernels that would show it."""
READY_PORT_NEEDS = ("PROC_FS",)
"""What the init's wait for a service's ``ready_port`` needs: busybox ``netstat`` reads ``/proc/net/tcp``."""
STAGE_SHELL = "/bin/sh"
"""Always in an image: the stage links it to busybox when the packages lack it (dash is Essential, so
no package depends on it and apt's closure never has it)."""
ALWAYS_THERE = ("/bin/busybox", STAGE_SHELL)
"""Programs every staged image has, whatever its packages."""
PATH_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
RESEED_GUEST = "/.tailor/reseed"
RESEED_FLAGS = ("-nostdlib", "-static", "-ffreestanding", "-fno-stack-protector", "-Os", "-fno-pie", "-no-pie",
                "-fno-asynchronous-unwind-tables", "-fno-tree-loop-distribute-patterns", "-fno-ident",
                "-Wall", "-Wl,--build-id=none", "-s")
"""No libc, no build id, no symbols, no unwind tables: the same source and gcc give the same bytes."""
SKELETON_DIRS = {"dev": 0o755, "proc": 0o555, "sys": 0o555, "tmp": 0o1777, "run": 0o755,
                 "root": 0o700, "etc": 0o755, "var": 0o755, "var/tmp": 0o1777}


rootfs_dir = paths.rootfs_dir
manifest_path = paths.rootfs_manifest


def image_path(recipe: Recipe) -> Path:
    """The root image of *recipe* (``out/rootfs/<app>/rootfs.<format>``)."""
    return paths.rootfs_image(recipe.name, recipe.rootfs.format)


# --------------------------------------------------------------------------
# Staging


def find_command(tree: Path, command: str, origin: str, what: str = "packages") -> str:
    """The in-tree absolute path of the app's command (a path, or a name looked up in PATH)."""
    candidates = [command] if command.startswith("/") else [f"{d}/{command}" for d in PATH_DIRS]
    for c in candidates:
        real = resolve_in_root(tree, c)
        host = tree / real.lstrip("/")
        if host.is_file() and os.access(host, os.X_OK):
            return c
    where = "" if command.startswith("/") else f" (searched PATH in the {what}' files)"
    if what == "image":
        raise TailorError(f"{origin}: {command!r} is not in the image{where}; "
                          f"fix the image's Entrypoint/Cmd or set app.command")
    raise TailorError(f"{origin}: {command!r} is not in the packages{where}; "
                      f"add the package that provides it to rootfs.packages")


def interpreters(tree: Path, command: str, origin: str, what: str = "packages") -> list[str]:
    """The in-tree interpreter of a ``#!`` script *command* (and the program of ``#!/usr/bin/env X``)."""
    host = tree / resolve_in_root(tree, command).lstrip("/")
    try:
        with open(host, "rb") as f:
            first = f.readline(256)
    except OSError:
        return []
    if not first.startswith(b"#!"):
        return []
    words = first[2:].decode("utf-8", "replace").split()
    if not words:
        return []
    where = f"{origin} (the #! interpreter of {command})"
    if os.path.basename(words[0]) == "env" and len(words) > 1 and not words[1].startswith("-"):
        words = [words[0], words[1]]
    else:
        words = words[:1]
    out = []
    for word in words:
        try:
            out.append(find_command(tree, word, where, what))
        except TailorError:
            if word not in (STAGE_SHELL, os.path.basename(STAGE_SHELL)) or what == "image":
                raise
    return out


def load_traced(recipe: Recipe) -> list[dict]:
    """The kept list ``doit slim:<app>`` wrote for a ``rootfs.slim: traced`` recipe (:mod:`tailor.slim`)."""
    path = paths.slim_kept(recipe.name)
    if not path.is_file():
        raise TailorError(f"{display_path(recipe.path)}: rootfs.slim: traced needs the list of what the app used; "
                          f"run `doit slim:{recipe.name}` (or build with `doit build:{recipe.name}`)")
    entries = SlimKept.load(path).paths
    for i, e in enumerate(entries):
        if not isinstance(e["path"], str) or not e["path"].startswith("/"):
            raise TailorError(f"{display_path(path)}: key 'paths[{i}]' has path {e['path']!r}, not an absolute "
                              f"path; run `doit slim:{recipe.name}` again")
    return entries


def run_build_step(step, stage_dir: Path, origin: str) -> None:
    """Run a recipe's host build step in ``rootfs/<cwd>`` with ``{stage}`` replaced by the image tree."""
    cwd = ROOTFS_DIR / step.cwd
    if not cwd.is_dir():
        raise TailorError(f"{origin}: cwd rootfs/{step.cwd} does not exist")
    argv = [a.replace("{stage}", str(stage_dir)) for a in step.run]
    cache = makedirs(paths.cache_dir("build"))
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(source_date_epoch()), LC_ALL="C", TZ="UTC",
               HOME=str(cache), GOCACHE=str(cache / "go"), GOFLAGS="-trimpath", CGO_ENABLED="0")
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    except OSError as e:
        raise TailorError(f"{origin}: cannot run {argv[0]!r} ({e.strerror}); install it on the build host") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise TailorError(f"{origin}: {' '.join(step.run)} failed with status {proc.returncode}: {tail[0]}")


def reseed_helper() -> Path:
    """The compiled :data:`RESEED_SOURCE` (:func:`compile_helper`)."""
    return compile_helper(RESEED_SOURCE, "reseed", "a network recipe's rootfs compiles this helper with it")


def compile_helper(source: Path, name: str, why: str) -> Path:
    """The freestanding helper *source* compiled with :data:`RESEED_FLAGS`, cached in ``out/cache/<name>``
    under a digest of the source, the gcc version line and the flags (compiled once, not at every use);
    *why* says, when gcc is missing, what needs it."""
    origin = display_path(source)
    try:
        gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True, env=dict(os.environ, LC_ALL="C"))
    except OSError:
        raise TailorError(f"{origin}: gcc not found; {why}") from None
    key = sha256_text("\0".join([sha256_file(source), gcc.stdout.partition("\n")[0], *RESEED_FLAGS]))
    binary = paths.cache_dir(name) / f"{name}-{key[:16]}"
    if not binary.is_file():
        with atomic_path(binary, mode=0o755) as tmp:
            proc = subprocess.run(["gcc", *RESEED_FLAGS, "-o", str(tmp), str(source)], capture_output=True,
                                  text=True, env=dict(os.environ, LC_ALL="C"))
            if proc.returncode != 0:
                lines = proc.stderr.strip().splitlines() or [f"status {proc.returncode}"]
                first = next((ln for ln in lines if "error" in ln), lines[-1])
                raise TailorError(f"{origin}: gcc cannot compile it: {first.strip()}")
    return binary


def init_script(recipe: Recipe, command_path: str) -> str:
    """The app-as-init script for *recipe* (every recipe value shell-quoted by the template)."""
    app = recipe.app
    return render(INIT_TEMPLATE, name=recipe.name, command=command_path, args=list(app.args),
                  env=list(app.env), workdir=app.workdir, network=app.network, user=app.user,
                  setup=list(app.setup), services=list(app.services), reseed=RESEED_GUEST,
                  address=GUEST_ADDRESS, gateway=GUEST_GATEWAY, network_needs=NETWORK_NEEDS,
                  path=":".join(PATH_DIRS))


def init_needs(recipe: Recipe) -> dict[str, str]:
    """The options the generated init itself needs to run *recipe*, each with why: a network recipe's
    set-up (:data:`NETWORK_NEEDS`), a wait for a service's port (:data:`READY_PORT_NEEDS`). Without
    them the boot test cannot pass whatever the app needs, so discovery keeps them untried."""
    needs: dict[str, str] = {}
    if recipe.app.network:
        needs.update(dict.fromkeys(NETWORK_NEEDS, "the init's network set-up needs it (an IPv4 address on eth0, "
                                                  "the microVM's virtio-net device)"))
    if any(svc.ready_port for svc in recipe.app.services):
        needs.update(dict.fromkeys(READY_PORT_NEEDS, "the init waits for a service's ready_port with netstat, "
                                                     "which reads /proc/net/tcp"))
    return needs


def stage(recipe: Recipe, tree: Path, dest: Path, *, traced: list[dict] | None = None) -> dict:
    """Build the image tree of *recipe* in *dest* from the extracted packages in *tree* (*traced*: the
    kept list of a ``slim: traced`` root instead of :func:`load_traced`'s)."""
    origin = display_path(recipe.path)
    what = "image" if recipe.rootfs.image else "packages"
    built = bool(recipe.rootfs.build or recipe.rootfs.overlay) and not recipe.rootfs.image
    try:
        command = find_command(tree, recipe.app.command, f"{origin}: app.command", what)
    except TailorError:
        if not built:
            raise
        command = None  # may come from an overlay or a build step: checked once those ran
    helpers = []
    for key in ("setup", "services"):
        for i, step in enumerate(getattr(recipe.app, key)):
            if step.run[0] not in ALWAYS_THERE:
                helpers.append(find_command(tree, step.run[0], f"{origin}: app.{key}.{i}.run", what))
    remove(dest)
    dropped_paths = ([], [])
    if recipe.rootfs.slim:
        dest.mkdir(parents=True)
        keep = {"/bin/busybox", *helpers} | ({command} if command else set())
        if command:
            keep.update(interpreters(tree, command, f"{origin}: app.command", what))
        patterns = recipe.rootfs.files
        if recipe.rootfs.image:  # the image's own users and name service files win over rootfs/common's
            patterns += tuple(f for f in IMAGE_ETC if (tree / f[1:]).is_file() and not (tree / f[1:]).is_symlink())
        files = expand_files(tree, patterns, f"{origin}: rootfs.files")
        traced_dirs = []
        if recipe.rootfs.slim == "traced":
            for entry in traced if traced is not None else load_traced(recipe):
                host = tree / entry["path"].lstrip("/")
                if not os.path.lexists(host):
                    continue  # made by the app while it ran: it makes it again
                (traced_dirs if host.is_dir() and not host.is_symlink() else files).append(entry["path"])
        programs = sorted(keep) + elf_files(tree, files)
        try:
            keep.update(library_closure(tree, programs))
        except TailorError as e:
            raise TailorError(f"{origin}: {e}") from None
        keep.update(files)
        for p in sorted(keep):
            copy_in(tree, dest, p)
        for d in traced_dirs:  # listed or entered by the app: the directory, not all it holds
            make_dir_in(tree, dest, d)
        dropped_paths = dropped(tree, dest)
    else:
        shutil.copytree(tree, dest, symlinks=True)
    for d, mode in SKELETON_DIRS.items():
        p = dest / d
        if not p.exists() and not p.is_symlink():
            p.mkdir(parents=True)
        if not p.is_symlink():
            os.chmod(p, mode)
    sh = dest / STAGE_SHELL.lstrip("/")
    if not sh.exists() and not sh.is_symlink():
        makedirs(sh.parent)
        os.symlink("busybox", sh)
    for name in recipe.rootfs.overlay:
        # rootfs/common only fills what an image lacks: an image brings its own /etc/passwd (its users)
        apply_overlay(dest, ROOTFS_DIR / name, f"{origin}: rootfs.overlay",
                      keep_existing=bool(recipe.rootfs.image) and name == "common")
    add_users(dest, recipe.rootfs.users)
    for i, step in enumerate(recipe.rootfs.build):
        run_build_step(step, dest, f"{origin}: rootfs.build.{i}")
    if command is None:
        command = find_command(dest, recipe.app.command, f"{origin}: app.command")
        info = read_dynamic(dest / command.lstrip("/")) if recipe.rootfs.slim else None
        if info is not None and (info.interp or info.needed):
            raise TailorError(f"{origin}: app.command {command} comes from an overlay or build step and is "
                              f"dynamically linked; link it statically or list its libraries in rootfs.files")
    for who in [recipe.app.user] + [s.user for s in recipe.app.setup + recipe.app.services]:
        if who and not has_user(dest, who):
            raise TailorError(f"{origin}: user {who!r} is not in the image's /etc/passwd; add it to rootfs.users")
    workdir = dest / recipe.app.workdir.lstrip("/")
    if recipe.app.workdir != "/" and not workdir.is_dir():
        raise TailorError(f"{origin}: app.workdir {recipe.app.workdir!r} is not a directory in the rootfs; "
                          f"create it with an overlay or fix the path")
    if recipe.app.network and recipe.arch is Arch.X86_64:  # a restored snapshot's fresh entropy comes in
        # through it (templates/init.sh.j2); x86-64 code, and arm64 VMs have no snapshots yet
        helper = dest / RESEED_GUEST.lstrip("/")
        if helper.parent.is_symlink() or helper.is_symlink():
            raise TailorError(f"{origin}: {RESEED_GUEST} is a symlink in the image; tailor will not write through it")
        os.chmod(makedirs(helper.parent), 0o755)
        shutil.copyfile(reseed_helper(), helper)
        os.chmod(helper, 0o755)
    init = dest / "init"
    if init.exists() or init.is_symlink():
        init.unlink()
    init.write_text(init_script(recipe, command), encoding="utf-8")  # args and env as UTF-8, whatever the locale
    os.chmod(init, 0o755)
    return {"command": command, "dropped": dropped_paths}


def dropped(tree: Path, dest: Path) -> tuple[list[str], list[str]]:
    """What a slim *dest* left out of *tree*, as sorted in-tree paths: every file and symlink, and the
    directories it has none of (the topmost only)."""
    files, dirs = [], []
    for root, subdirs, names in os.walk(tree):
        rel = Path(root).relative_to(tree)
        for name in names + [d for d in subdirs if (Path(root) / d).is_symlink()]:
            if not os.path.lexists(dest / rel / name):
                files.append(_in_tree(rel / name))
        for d in subdirs:
            if not (Path(root) / d).is_symlink() and not os.path.lexists(dest / rel / d) \
                    and os.path.lexists(dest / rel):
                dirs.append(_in_tree(rel / d))
    return sorted(files), sorted(dirs)


def _in_tree(rel: Path) -> str:
    return "/" + rel.as_posix().removeprefix("./")


def write_slim_record(recipe: Recipe, dropped_paths: tuple[list[str], list[str]], kept: int,
                      path: Path | None = None) -> None:
    """*path* (default ``out/rootfs/<app>/slim.json``): what slim dropped (removed when the root is not slim)."""
    path = path or paths.rootfs_slim(recipe.name)
    if not recipe.rootfs.slim:
        remove(path)
        return
    SlimDropped(app=recipe.name, source="image" if recipe.rootfs.image else "packages", kept=kept,
                dropped=dropped_paths[0], dropped_dirs=dropped_paths[1]).save(path)


# --------------------------------------------------------------------------
# Images


def pack_cpio(stage_dir: Path, image: Path, epoch: int, owners: bool = False) -> None:
    """Write an uncompressed newc cpio of *stage_dir*, with /dev/console, to *image* (atomically)."""
    entries = [e for e in cpio.entries_from_tree(str(stage_dir), epoch, owners=owners) if e.path != "dev/console"]
    entries.append(cpio.device_entry("dev/console", 5, 1, mode=0o600, mtime=epoch))
    entries.sort(key=lambda e: e.path.encode())
    cpio.write_archive(str(image), entries)


def _tree_size(stage_dir: Path) -> tuple[int, int]:
    blocks, inodes = 0, 1
    for dirpath, dirnames, filenames in os.walk(stage_dir):
        for name in dirnames + filenames:
            inodes += 1
            st = os.lstat(os.path.join(dirpath, name))
            blocks += (st.st_size + 4095) // 4096 + 1
    return blocks, inodes


SPARE_INODES_PER_MIB = 64
"""Inodes an ext2 image has beyond its tree's, per MiB of image (one per 16 KiB): room for the files an
app creates at start (a database's tables), not only for their bytes."""


def pack_ext2(stage_dir: Path, image: Path, epoch: int, name: str, size_mib: int | None = None,
              origin: str = "") -> None:
    """Write an ext2 image of *stage_dir* with ``mke2fs -d``, deterministic (fixed UUID, seed, times).

    *size_mib* is the recipe's ``rootfs.size_mib`` (None: computed from the tree); *origin* names
    the recipe in the error when the content does not fit."""
    blocks, inodes = _tree_size(stage_dir)
    computed = max(8, int(blocks * 4096 * 1.25 / (1 << 20)) + 8)
    asked = size_mib
    if size_mib is None:
        size_mib = computed
    fixed = str(uuid.uuid5(uuid.NAMESPACE_URL, f"tailor-rootfs:{name}"))
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(epoch), MKE2FS_CONFIG="/dev/null", LC_ALL="C", TZ="UTC")
    with atomic_path(image) as tmp:
        cmd = ["mke2fs", "-q", "-F", "-t", "ext2", "-b", "4096", "-I", "256", "-m", "0",
               "-N", str(inodes + max(64, size_mib * SPARE_INODES_PER_MIB)), "-O", "none,sparse_super,large_file,filetype,dir_index,ext_attr",
               "-U", fixed, "-E", f"hash_seed={fixed},root_owner=0:0,no_copy_xattrs",
               "-L", "tailor-root", "-d", str(stage_dir), str(tmp), f"{size_mib}M"]
        if os.geteuid() != 0 and shutil.which("fakeroot"):
            cmd = ["fakeroot"] + cmd
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        except OSError:
            raise TailorError("mke2fs not found; install e2fsprogs (./setup.sh does)") from None
        if proc.returncode != 0:
            detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["?"]
            low = detail[0].lower()
            if asked is not None and any(w in low for w in ("allocate", "space", "full", "inode")):
                raise TailorError(f"{origin or name}: rootfs.size_mib: {asked} MiB is too small for the image's "
                                  f"content (mke2fs: {detail[0].removeprefix('mke2fs: ')}); raise it to at least "
                                  f"{computed} or leave it out so it is computed")
            raise TailorError(f"mke2fs failed for {name} ({size_mib} MiB): {detail[0]}")
        _clamp_ext2_times(stage_dir, tmp, epoch, name)


def _clamp_ext2_times(stage_dir: Path, image: Path, epoch: int, name: str) -> None:
    """Set every inode's ctime and atime in *image* to *epoch* with ``debugfs -w``.

    ``mke2fs -d`` (e2fsprogs 1.47.0) copies each file's atime, mtime and ctime from the host's
    ``lstat``. The staged tree's mtimes are clamped, but a host ctime is the moment the tree was
    normalised, and a directory's atime moves when it is listed: two builds a second apart differ."""
    lines = []
    for rel in ["/"] + sorted("/" + p.relative_to(stage_dir).as_posix() for p in stage_dir.rglob("*")):
        if "\n" in rel:
            raise TailorError(f"{name}: {rel!r}: a file name with a newline cannot go into an ext2 image; "
                              "remove it from the rootfs")
        quoted = '"' + rel.replace('"', '""') + '"'
        lines += [f"sif {quoted} ctime @{epoch}", f"sif {quoted} atime @{epoch}"]
    script = image.with_name(image.name + ".debugfs")
    script.write_text("\n".join(lines) + "\n")
    try:
        proc = subprocess.run(["debugfs", "-w", "-f", str(script), str(image)], capture_output=True, text=True,
                              env=dict(os.environ, LC_ALL="C"))
    except OSError:
        raise TailorError("debugfs not found; install e2fsprogs (./setup.sh does)") from None
    finally:
        script.unlink(missing_ok=True)
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("debugfs ")]
    if proc.returncode != 0 or errors:
        raise TailorError(f"debugfs could not set the times in {name}'s ext2 image: "
                          f"{(errors or proc.stderr.strip().splitlines() or ['?'])[0]}")


def build(recipe: Recipe, *, into: Path | None = None, traced: list[dict] | None = None) -> RootfsManifest:
    """The rootfs stage for one recipe: packages -> staged tree -> image; returns its ``rootfs.json``.

    *into* writes the image, its manifest and its slim record into that directory instead of
    ``out/rootfs/<app>/``: :mod:`tailor.slim` builds its whole and trial images there. *traced* is the kept
    list of a ``slim: traced`` root (default: the one ``doit slim:<app>`` wrote)."""
    origin = display_path(recipe.path)
    img = None
    if recipe.rootfs.image:
        img = oci.obtain(recipe.rootfs.image, origin, recipe.arch.goarch)
    rdir = makedirs(into or rootfs_dir(recipe.name))
    epoch = source_date_epoch()
    packages = sorted(set(recipe.rootfs.packages) | set(ALWAYS_PACKAGES))
    closure = debian.closure(packages, f"{origin}: rootfs.packages", arch=recipe.arch.debian)
    debs = debian.download(closure, arch=recipe.arch.debian)
    work = rdir / "work"
    remove(work)
    try:
        full = work / "packages"
        if img is None:
            debian.extract(debs, full)
        else:
            skipped = oci.unpack(img, full, origin)
            if skipped:
                print(f"[rootfs:{recipe.name}] note: skipped {len(skipped)} device node(s) of the image "
                      f"({', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}); devtmpfs provides /dev",
                      file=sys.stderr)
            debian.extract(debs, work / "debs")
            oci.merge_tree(work / "debs", full, f"{origin}: rootfs.packages")
            where = f"{origin}: rootfs.image: {recipe.rootfs.image}"
            recipe = replace(recipe, app=oci.app_from_config(recipe.app, recipe.app.given, img.config, full, where))
        staged = work / "image"
        info = stage(recipe, full, staged, traced=traced)
        kept_files = sum(1 for p in staged.rglob("*") if not p.is_dir())
        normalise(staged, epoch, owners=img is not None)
        image = rdir / f"rootfs.{recipe.rootfs.format}"
        for other in RootFormat:
            if other != recipe.rootfs.format:
                remove(rdir / f"rootfs.{other}")
        if recipe.rootfs.format.is_disk:
            pack_ext2(staged, image, epoch, recipe.name, recipe.rootfs.size_mib, origin)
        else:
            pack_cpio(staged, image, epoch, owners=img is not None)
        files = sum(1 for _ in staged.rglob("*"))
        content = sum(p.lstat().st_size for p in staged.rglob("*") if p.is_file() and not p.is_symlink())
    finally:
        remove(work)
    manifest = RootfsManifest(
        app=recipe.name, image_format=recipe.rootfs.format, file=image.name, size=image.stat().st_size,
        sha256=sha256_file(image), slim=recipe.rootfs.slim, slim_dropped=len(info["dropped"][0]), files=files,
        content_bytes=content, command=info["command"],
        packages=[{"name": n, "version": v, "arch": a} for n, v, a in closure],
        image=oci.image_summary(img) if img is not None else None, argv=[info["command"]] + list(recipe.app.args),
        source_date_epoch=epoch, reseed=RESEED_GUEST if recipe.app.network and recipe.arch is Arch.X86_64 else None)
    manifest.save(rdir / "rootfs.json")
    write_slim_record(recipe, info["dropped"], kept_files, rdir / "slim.json")  # after the image: nothing half-made
    print(f"[rootfs:{recipe.name}] {image.name}: {manifest.size / 1e6:.2f} MB, {files} files, "
          f"{len(closure)} packages", file=sys.stderr)
    return manifest
