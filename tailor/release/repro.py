"""Bit for bit: build an app's release twice from scratch and compare the two trees byte for byte.

:func:`verify_reproducible` (the ``doit verify_reproducible`` task) copies the project once, builds
``doit release:<app>`` in two copies at two times (the second without ccache) and reports every
difference but the boot test's measurement, with diffoscope's view when it is installed.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tailor import recipe as recipe_mod
from tailor import paths, source
from tailor.errors import TailorError
from tailor.records.release import ReleaseManifest
from tailor.epoch import source_date_epoch
from tailor.release.names import MEASURED_KEYS, SUMS_NAME, check_version, release_version
from tailor.release.treediff import compare_trees, describe_difference, walk_files
from tailor.release.snapshot import is_snapshot_file
from tailor.util import PROJECT, display_path, makedirs, remove, sha256_file, sha256_text, write_json

REPRO_BUILDS = (("first", True), ("second-build", False))
"""verify_reproducible's two builds: directory under out/repro/ (different lengths, so a leaked path
shows), and whether ccache may serve objects (never for the second, so it is a real compile)."""

COPY_IGNORE = {"out", ".venv", ".git", "__pycache__", ".pytest_cache", ".benchmarks", ".hypothesis"}
"""What :func:`copy_project` leaves out at the project's top."""


def copy_project(dest: Path) -> None:
    """Copy the project's sources (not out/, .venv, .git or caches) to *dest*."""
    def ignore(directory, names):
        top = Path(directory) == PROJECT
        return [n for n in names if (top and n in COPY_IGNORE) or n in ("__pycache__", ".pytest_cache")
                or n.endswith(".pyc")]

    shutil.copytree(PROJECT, dest, symlinks=True, ignore=ignore)


def tree_digest(root: Path) -> str:
    """sha256 over the sorted (path, sha256) of every file under *root*: which sources a build used."""
    return sha256_text("".join(f"{rel}\0{sha256_file(root / rel)}\n" for rel in walk_files(root)
                               if not (root / rel).is_symlink()))


def _prepare_copy(dest: Path, ref, snapshot: Path) -> None:
    """A fresh copy of the project *snapshot* in *dest* whose out/ has its own kernel source tree (hard
    links) and shares only the verified .deb cache."""
    remove(dest)
    shutil.copytree(snapshot, dest, symlinks=True)
    out = makedirs(dest / "out")
    short = source.stamp_path(ref).parent
    makedirs(out / "src")
    proc = subprocess.run(["cp", "-al", str(short), str(out / "src" / short.name)], capture_output=True, text=True)
    if proc.returncode != 0:  # another file system (a tmpfs /tmp): hard links cannot cross it, so copy
        shutil.rmtree(out / "src" / short.name, ignore_errors=True)
        proc = subprocess.run(["cp", "-a", str(short), str(out / "src" / short.name)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise TailorError(f"cannot link the kernel source into {dest}: {proc.stderr.strip()[:200]}")
    makedirs(paths.cache_root())
    os.symlink(paths.cache_root(), out / "cache")


def _tail(path: Path, n: int = 20, head: bool = False) -> str:
    """The last (or, with *head*, first) *n* lines of a text file, indented for stderr."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("  | " + ln for ln in (lines[:n] if head else lines[-n:]))


def _cause_rank(diff: dict) -> tuple:
    """Sort key putting the likely cause of a difference first: the kernel and root image, then what
    is derived from them (.deb, OCI layout, Firecracker config), then the manifests and SHA256SUMS."""
    name = diff["path"].rsplit("/", 1)[-1]
    order = ["vmlinux", "System.map", "bzImage", "Image", "config", "rootfs.cpio", "rootfs.ext2", "recipe.yaml"]
    if name in order:
        rank = order.index(name)
    elif name.endswith(".deb") or name == "firecracker.json":
        rank = 10
    elif "/oci/" in f"/{diff['path']}":
        rank = 11
    elif name == "manifest.json":
        rank = 12
    else:
        rank = 13 if name == SUMS_NAME else 9
    return rank, diff["path"].encode()


def _build_copy(dest: Path, app: str, version: str, epoch: int, use_ccache: bool, label: str) -> dict:
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch), TAILOR_RELEASE_VERSION=version)
    env.pop("TAILOR_OUT", None)
    if not use_ccache:
        env["CCACHE_DISABLE"] = "1"
    log = dest / "doit.log"
    started = time.time()
    stamp = datetime.datetime.fromtimestamp(started, datetime.timezone.utc).strftime("%H:%M:%S UTC")
    print(f"[verify_reproducible] build {label} of {app} in {display_path(dest)} (started {stamp}, "
          f"ccache {'allowed' if use_ccache else 'disabled'}) ...", file=sys.stderr, flush=True)
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "doit", f"release:{app}"], cwd=dest, env=env, stdout=f,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    seconds = round(time.time() - started, 1)
    if proc.returncode != 0:
        sys.stderr.write(_tail(log) + "\n")
        raise TailorError(f"build {label} of {app} in {display_path(dest)} failed (doit exited {proc.returncode}); "
                          f"log: {display_path(log)}")
    return {"dir": display_path(dest), "started_utc": datetime.datetime.fromtimestamp(
        started, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "seconds": seconds, "ccache": use_ccache}


def measurement_only(a_root: Path, b_root: Path, diff: dict) -> bool:
    """True when *diff* is only what one run captured: a manifest.json equal without its
    :data:`~tailor.release.names.MEASURED_KEYS` sections, a file of an app's ready snapshot
    (:func:`~tailor.release.snapshot.is_snapshot_file`), or a SHA256SUMS equal but for the lines of those."""
    path = diff["path"]
    if diff["kind"] != "differs":
        return False
    if is_snapshot_file(path):
        return True
    if path.endswith("/manifest.json") or path == "manifest.json":
        ma, mb = (ReleaseManifest.load(r / path).without(MEASURED_KEYS) for r in (a_root, b_root))
        return ma == mb
    if path.endswith(SUMS_NAME):
        def rest(r: Path) -> list[str]:
            return [ln for ln in (r / path).read_text().splitlines()
                    if not ln.endswith("manifest.json") and not is_snapshot_file(ln.partition("  ")[2])]
        return rest(a_root) == rest(b_root)
    return False


def _diffoscope(a: Path, b: Path, rel: str, dest: Path) -> str | None:
    """diffoscope's text report for one differing file (saved under *dest*), when diffoscope is installed."""
    if not shutil.which("diffoscope"):
        return None
    out = dest / (rel.replace("/", "__") + ".txt")
    makedirs(dest)
    try:
        proc = subprocess.run(["diffoscope", "--text", str(out), "--max-report-size", "2000000", str(a / rel),
                               str(b / rel)], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return f"diffoscope timed out on {rel}"
    if proc.returncode not in (0, 1):
        return f"diffoscope failed on {rel}: {proc.stderr.strip()[:200]}"
    return display_path(out)


def verify_reproducible(app: str = "hello", version: str | None = None) -> dict:
    """Release *app* twice from scratch and compare the two release trees byte for byte.

    The builds run ``doit release:<app>`` in two fresh copies of one snapshot
    of the project (``out/repro/sources``, taken first, so edits made to the
    working tree meanwhile do not count) under ``out/repro/`` (directories of
    different lengths), one after the other, so at different times; each copy
    has its own hard-linked kernel
    source tree and its own kernel, rootfs and boot test. The first build may
    take compiled objects from ccache (compiled earlier in another directory);
    the second never uses ccache, so it is a real compile. Every file of the
    two ``out/release/<version>/`` trees must be identical; the one allowed
    difference is the boot test's measurement (see :func:`measurement_only`).
    Writes ``out/repro/report.json``; on a difference runs diffoscope (when
    installed) and raises a TailorError naming the file and its first
    differing byte offset.
    """
    version = check_version(version or release_version())
    recipe = recipe_mod.find(app)
    epoch = source_date_epoch()
    ref = source.recipe_ref(recipe)
    source.prepare(ref)
    base = makedirs(paths.repro_dir())
    for stale in ("report.json", "diffoscope"):
        remove(base / stale)
    # One snapshot of the project for both builds: the working tree may change while they run.
    snapshot = base / "sources"
    remove(snapshot)
    copy_project(snapshot)
    sources = tree_digest(snapshot)
    builds = []
    for name, use_ccache in REPRO_BUILDS:
        dest = base / name
        _prepare_copy(dest, ref, snapshot)
        builds.append(_build_copy(dest, app, version, epoch, use_ccache, f"{len(builds) + 1}/2"))
        # The copy's kernel source tree (a copy, not links, across file systems) is 1.4 GB and no
        # longer needed once the build is done; its kernel, rootfs and release stay for inspection.
        remove(dest / "out" / "src")
    a, b = (base / name / "out" / "release" / version for name, _ in REPRO_BUILDS)
    diffs = compare_trees(a, b)
    real = sorted((d for d in diffs if not measurement_only(a, b, d)), key=_cause_rank)
    measured = [d["path"] for d in diffs if not any(d is r for r in real)]
    files = len(walk_files(a))
    reports = {}
    for d in [d for d in real if d["kind"] == "differs"][:3]:
        reports[d["path"]] = _diffoscope(a, b, d["path"], base / "diffoscope")
    report = {
        "app": app, "version": version, "source_date_epoch": epoch, "sources_sha256": sources, "builds": builds,
        "trees": [display_path(a), display_path(b)], "files": files,
        "identical": files - len(diffs), "measurement_only": measured,
        "differences": real, "diffoscope": reports,
        "reproducible": not real,
    }
    write_json(base / "report.json", report)
    if real:
        for d in real[:20]:
            print(f"[verify_reproducible] {describe_difference(d)}", file=sys.stderr)
        for rel, where in reports.items():
            if where:
                print(f"[verify_reproducible] diffoscope on {rel}: {where}", file=sys.stderr)
        first_report = next((w for w in reports.values() if w and (PROJECT / w).is_file()), None)
        if first_report:
            sys.stderr.write(_tail(PROJECT / first_report, 40, head=True) + "\n")
        raise TailorError(f"{app} is not reproducible: {describe_difference(real[0])} ({len(real)} file(s) differ; "
                          f"report: {display_path(base / 'report.json')})")
    print(f"[verify_reproducible] {app}: reproducible; {files - len(measured)} of {files} release files "
          f"identical byte for byte in two builds "
          f"({builds[0]['dir']} at {builds[0]['started_utc']}, {builds[1]['dir']} at {builds[1]['started_utc']})"
          + (f"; {' and '.join(measured)} differ only in the boot-test measurement" if measured else ""),
          file=sys.stderr)
    return report
