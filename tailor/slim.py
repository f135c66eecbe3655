"""Traced slim: a root filesystem that keeps what the app used (``rootfs.slim: traced``, ``doit slim:<app>``).

:func:`make` does it in four steps, all under ``out/slim/<app>/``:

1. **The whole tree.** The recipe's root is built with ``slim: false`` as an
   ext2 image (``whole/``), whatever the recipe's format: every file keeps the
   clamped times of a tailor image (atime = mtime = ctime = SOURCE_DATE_EPOCH).
2. **One traced boot.** The app's own kernel boots that image through a
   copy-on-write layer, and the recipe's boot test runs against it (ready
   pattern, probe, exercise). Linux's default ``relatime`` sets a file's atime
   at its first read after a change, and every file's atime equals its mtime
   here, so every file and directory the init, the services and the app
   opened, executed, mapped or listed gets the guest's current time; what
   they wrote gets a new mtime or ctime. The guest writes the dirty inodes
   back within its writeback interval (shortened on the kernel command line
   when the kernel has ``PROC_SYSCTL``, else waited for); then qemu quits
   over QMP, which flushes the layer.
3. **The list.** The layer is flattened to a raw image; :func:`touched_inodes`
   reads every inode's times straight from the ext2 inode tables and
   ``debugfs ncheck`` names the touched ones (:func:`inode_paths`). Every path
   whose times moved is kept with its reason (``read``: a file's atime;
   ``listed``: a directory's; ``written``: mtime or ctime) in ``kept.json``;
   the rootfs stage adds the ELF closure of every kept program (and a
   ``#!`` script's interpreter was executed, so it is on the list already).
4. **Verified.** The slim image is built from that list (``try/``) and put
   through the same boot test. If it fails (a file the app only ``stat``-ed,
   a directory it only entered), the dropped files are added back by
   bisection over their directories (:func:`tailor.minimise.add_back`),
   within a budget of trial images, and the list gains them with the reason
   ``needed by the boot test``. Once the list is verified, ``whole/`` and ``try/`` are removed (the
   record keeps the whole image's figures); a failed run leaves them for a look.

``kept.json`` is what ``rootfs:<app>`` of a ``slim: traced`` recipe keeps
(:func:`tailor.rootfs.load_traced`); ``--write`` copies the list into the
recipe as ``rootfs.files`` with ``slim: true``, for a recipe that should not
depend on a traced boot.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from tailor import boot, paths, records, run
from tailor import rootfs as rootfs_stage
from tailor.errors import TailorError
from tailor.kinds import RootFormat, Variant
from tailor.minimise import Memo, add_back
from tailor.qemu import VM, CtrlC, detect_accel, free_port, kernel_file
from tailor.run import QEMU_IMG
from tailor.recipe import Recipe
from tailor.records.stages import SlimDropped, SlimKept
from tailor.util import display_path, makedirs, remove

SKIP = ("/init", "/.tailor", "/dev", "/proc", "/sys", "/tmp", "/run")
"""Paths the list leaves out: tailor's own files (the stage writes them anyway) and the mount points."""
WRITEBACK_ARGS = "sysctl.vm.dirty_expire_centisecs=100 sysctl.vm.dirty_writeback_centisecs=20"
WRITEBACK_FAST_S = 3.0
WRITEBACK_DEFAULT_S = 36.0
"""Linux writes a dirty inode back once it is 30 s old, checked every 5 s (without PROC_SYSCTL the
command line cannot shorten that)."""
DEFAULT_BUDGET = 12
"""Trial images the add-back may build."""
NEEDED = "needed by the boot test (added back)"


# --------------------------------------------------------------------------
# Reading an ext2 image


def touched_inodes(image: Path, epoch: int) -> dict[int, str]:
    """The inodes of ext2 *image* in use whose atime, mtime or ctime is not *epoch*, with a reason each
    (``listed``, ``read``, ``written``). Reads the superblock, the group descriptors and the inode tables."""
    out = {}
    with open(image, "rb") as f:
        f.seek(1024)
        sb = f.read(1024)
        if len(sb) < 1024 or struct.unpack_from("<H", sb, 56)[0] != 0xEF53:
            raise TailorError(f"{display_path(image)}: not an ext2 image")
        inodes_count, blocks_count = struct.unpack_from("<II", sb, 0)
        first_data_block, log_block = struct.unpack_from("<II", sb, 20)
        blocks_per_group, _, inodes_per_group = struct.unpack_from("<III", sb, 32)
        rev = struct.unpack_from("<I", sb, 76)[0]
        first_ino, inode_size = (struct.unpack_from("<IH", sb, 84) if rev >= 1 else (11, 128))
        block = 1024 << log_block
        groups = (blocks_count - first_data_block + blocks_per_group - 1) // blocks_per_group
        f.seek((first_data_block + 1) * block)
        descriptors = f.read(32 * groups)
        for g in range(groups):
            table = struct.unpack_from("<I", descriptors, 32 * g + 8)[0]
            f.seek(table * block)
            data = f.read(inodes_per_group * inode_size)
            for i in range(inodes_per_group):
                ino = g * inodes_per_group + i + 1
                if ino > inodes_count or (ino < first_ino and ino != 2):
                    continue
                mode, _, _, atime, ctime, mtime = struct.unpack_from("<HHIIII", data, i * inode_size)
                links = struct.unpack_from("<H", data, i * inode_size + 26)[0]
                if mode == 0 or links == 0:
                    continue
                if mtime != epoch or ctime != epoch:
                    out[ino] = "written"
                elif atime != epoch:
                    out[ino] = "listed" if mode & 0xF000 == 0x4000 else "read"
    return out


def inode_paths(image: Path, inodes: list[int]) -> dict[int, list[str]]:
    """The paths of *inodes* in ext2 *image* (``debugfs ncheck``; a hard-linked inode has several)."""
    out: dict[int, list[str]] = {}
    if not inodes:
        return out
    script = "".join("ncheck " + " ".join(map(str, inodes[i:i + 400])) + "\n" for i in range(0, len(inodes), 400))
    proc = subprocess.run(["debugfs", "-f", "-", str(image)], input=script, capture_output=True, text=True)
    if proc.returncode != 0:
        raise TailorError(f"debugfs ncheck of {display_path(image)}: {proc.stderr.strip()[-200:]}")
    for line in proc.stdout.splitlines():
        ino, sep, path = line.partition("\t")
        if sep and ino.strip().isdigit():
            out.setdefault(int(ino), []).append("/" + path.lstrip("/"))  # ncheck writes //name at the top
    return out


def kept_list(touched: dict[int, str], names: dict[int, list[str]]) -> list[dict]:
    """``[{path, why}]`` of the touched inodes, sorted, without :data:`SKIP` and the root itself."""
    rows = {}
    for ino, why in touched.items():
        for path in names.get(ino, []):
            if path in ("", "/") or any(path == s or path.startswith(s + "/") for s in SKIP):
                continue
            rows[path] = why
    return [{"path": p, "why": rows[p]} for p in sorted(rows)]


# --------------------------------------------------------------------------
# The traced boot


def _kernel(recipe: Recipe) -> tuple[Path, str]:
    p = records.app_kernel(recipe.id)
    kernel, _ = kernel_file(p)
    config = p.files.config
    return kernel, config.read_text() if config.is_file() else ""


def trace(recipe: Recipe, work: Path) -> tuple[list[dict], dict]:
    """Boot the whole tree of *recipe* once with its boot test; return the kept list and what the boot showed."""
    kernel, config = _kernel(recipe)
    whole = replace(recipe, rootfs=replace(recipe.rootfs, slim=False, format=RootFormat.EXT2, size_mib=None))
    print(f"[slim:{recipe.name}] building the whole tree as an ext2 image", file=sys.stderr)
    manifest = rootfs_stage.build(whole, into=work / "whole")
    image = work / "whole" / "rootfs.ext2"
    fast = "CONFIG_PROC_SYSCTL=y" in config
    probe = recipe.test.probe
    forwards = [run.Forward("127.0.0.1", free_port(), probe.port)] if probe.port and recipe.app.network else []
    layer = work / "layer.qcow2"
    p = run.Plan(name=f"slim-{recipe.name}-{os.getpid()}", app=recipe.name, variant=Variant.SPECIFIC,
                 kernel=str(kernel), image=str(image), root=RootFormat.EXT2, memory=recipe.test.memory, forwards=forwards,
                 cmdline=" ".join(filter(None, (recipe.kernel.cmdline, WRITEBACK_ARGS if fast else ""))),
                 ready=recipe.test.ready, timeout=recipe.test.timeout, network=bool(recipe.app.network),
                 layer=str(layer), keep=True)
    p.accel = detect_accel()
    remove(p.dir)
    p.dir.mkdir(parents=True)
    try:
        run.make_layer(image, layer)
        cmd = run.command(p, detach=False)
        print(f"[slim:{recipe.name}] tracing what the app uses: boot test on the whole tree ({p.accel})",
              file=sys.stderr)
        with CtrlC(), VM(cmd, boot.new_console(recipe)) as vm:
            verdict, detail = boot.decide(recipe, vm, forwards[0].host if forwards else None, recipe.test.timeout)
            if verdict.state != "pass":
                raise TailorError(f"slim of {recipe.name}: the whole tree fails its boot test ({verdict.reason}); "
                                  f"fix the recipe first")
            time.sleep(WRITEBACK_FAST_S if fast else WRITEBACK_DEFAULT_S)  # the guest writes the atimes back
            run.quit_vm(p.dir / "qmp.sock", vm.proc.pid)
    finally:
        remove(p.dir)
    flat = work / "traced.raw"
    proc = subprocess.run([QEMU_IMG, "convert", "-f", "qcow2", "-O", "raw", str(layer), str(flat)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise TailorError(f"{QEMU_IMG} convert of the traced layer: {proc.stderr.strip()[-200:]}")
    try:
        touched = touched_inodes(flat, manifest.source_date_epoch)
        kept = kept_list(touched, inode_paths(flat, sorted(touched)))
    finally:
        remove(flat)
        remove(layer)
    return kept, {"probe": detail, "whole_bytes": manifest.size, "whole_files": manifest.files,
                  "whole_content": manifest.content_bytes,
                  "writeback_s": WRITEBACK_FAST_S if fast else WRITEBACK_DEFAULT_S}


# --------------------------------------------------------------------------
# Verifying, adding back


def _groups(record: SlimDropped) -> dict[str, list[str]]:
    """The dropped files of a slim record by group: each wholly dropped directory, else the file's parent."""
    dirs = sorted(record.dropped_dirs)
    groups: dict[str, list[str]] = {}
    for f in record.dropped:
        top = next((d for d in dirs if f.startswith(d + "/")), None)
        groups.setdefault(top or (f.rsplit("/", 1)[0] or "/"), []).append(f)
    return groups


class Trials:
    """Trial images of a kept list: build ``try/`` and boot-test it; count them against a budget."""

    def __init__(self, recipe: Recipe, work: Path, budget: int):
        self.recipe = replace(recipe, rootfs=replace(recipe.rootfs, slim="traced"))
        self.work, self.budget, self.count = work, budget, 0
        self.kernel, _ = _kernel(recipe)
        self.last: dict = {}

    def __call__(self, kept: list[dict]) -> bool:
        if self.count >= self.budget:
            raise TailorError(f"slim of {self.recipe.name}: no passing image within {self.budget} trial images; "
                              f"use rootfs.slim: true with rootfs.files, or rootfs.slim: false")
        self.count += 1
        d = self.work / "try"
        manifest = rootfs_stage.build(self.recipe, into=d, traced=kept)
        image = d / f"rootfs.{self.recipe.rootfs.format}"
        try:
            result = boot.run(self.recipe, self.kernel, image, d / "boot")
        except TailorError as e:
            result = {"pass": False, "reason": str(e)}
        self.last = {"manifest": manifest, "record": SlimDropped.load(d / "slim.json"), "result": result}
        print(f"[slim:{self.recipe.name}] trial {self.count}: {len(kept)} paths kept, "
              f"{manifest.size / 1e6:.2f} MB: {'PASS' if result['pass'] else 'FAIL'}", file=sys.stderr)
        return bool(result["pass"])


def make(recipe: Recipe, *, budget: int = DEFAULT_BUDGET, write: bool = False) -> dict:
    """Trace *recipe*'s app, verify the slim image of what it used (adding back by bisection what the test
    needs), write ``out/slim/<app>/kept.json`` and return the record."""
    work = makedirs(paths.slim_dir(recipe.name))
    t0 = time.monotonic()
    kept, seen = trace(recipe, work)
    trials = Trials(recipe, work, budget)
    added: list[str] = []
    if not trials(kept):
        groups = _groups(trials.last["record"])
        memo = Memo(lambda names: trials(kept + [{"path": f, "why": NEEDED} for n in names for f in groups[n]]))
        memo.seen[frozenset()] = False  # the list alone: the trial above
        found = add_back([], sorted(groups), memo)
        if found is None:
            raise TailorError(f"slim of {recipe.name}: even with every dropped file added back the image fails "
                              f"({trials.last['result'].get('reason', '?')})")
        added = [f for n in found for f in groups[n]]
        kept = kept + [{"path": f, "why": NEEDED} for f in added]
        if not trials(kept):
            raise TailorError(f"slim of {recipe.name}: the image with the files added back fails its boot test")
    final = trials.last
    record = SlimKept(
        app=recipe.name, paths=kept, added_back=len(added), trials=trials.count,
        whole={"bytes": seen["whole_bytes"], "files": seen["whole_files"], "content_bytes": seen["whole_content"]},
        slim={"bytes": final["manifest"].size, "files": final["manifest"].files,
              "content_bytes": final["manifest"].content_bytes},
        probe=seen["probe"], writeback_s=seen["writeback_s"], seconds=round(time.monotonic() - t0, 1),
    ).save(paths.slim_kept(recipe.name))
    remove(work / "try")
    remove(work / "whole")  # up to gigabytes for a big image; kept.json has its figures
    print(f"[slim:{recipe.name}] {len(kept)} paths kept ({len(added)} added back), {trials.count} trial image(s): "
          f"{record['slim']['content_bytes'] / 1e6:.1f} MB of files against {record['whole']['content_bytes'] / 1e6:.1f} "
          f"MB whole (images {record['slim']['bytes'] / 1e6:.1f} and {record['whole']['bytes'] / 1e6:.1f} MB); "
          f"{display_path(paths.slim_kept(recipe.name))}", file=sys.stderr)
    if write:
        write_files(recipe, kept)
    return record


def write_files(recipe: Recipe, kept: list[dict]) -> None:
    """Write *kept*'s file paths into the recipe as ``rootfs.files`` with ``slim: true`` (refuses a recipe that
    already has ``rootfs.files`` or a ``rootfs`` mapping written on one line)."""
    lines = Path(recipe.path).read_text().splitlines(keepends=True)
    where = display_path(recipe.path)
    if recipe.rootfs.files:
        raise TailorError(f"{where}: already has rootfs.files; merge {display_path(paths.slim_kept(recipe.name))} "
                          f"by hand")
    at = next((i for i, ln in enumerate(lines) if ln.rstrip() == "rootfs:"), None)
    if at is None:
        raise TailorError(f"{where}: no block `rootfs:` line to write under; add the files by hand")
    files = [e["path"] for e in kept if e["why"] != "listed"]
    block = ["  slim: true        # written by `python -m tailor slim --write`\n", "  files:\n"]
    block += [f"    - {json.dumps(f)}\n" for f in files]  # a JSON string is a YAML string
    # the rootfs block's own slim line goes (only rootfs has a slim key, indented under its section)
    rest = [ln for ln in lines[at + 1:] if not (ln.startswith("  ") and ln.lstrip().startswith("slim:"))]
    new = "".join(lines[:at + 1] + block + rest)
    from tailor.recipe import parse

    parse(new, Path(recipe.path))  # what is written must still be a valid recipe
    tmp = Path(str(recipe.path) + ".tmp")
    tmp.write_text(new)
    os.replace(tmp, recipe.path)
    print(f"[slim:{recipe.name}] {len(files)} paths written to {where} as rootfs.files", file=sys.stderr)


def slim_action(recipe: Recipe) -> None:
    make(recipe)
