"""Releases: a versioned, checksummed, bit-for-bit reproducible tree of everything an app ships as.

``doit release:<app>`` (and ``doit release`` for every recipe) runs the
pipeline first (the task depends on the app's kernel pointer, rootfs image
and boot result) and then :func:`release_app` writes
``out/release/<version>/<app>/``:

* ``bzImage``, ``vmlinux``, ``config``, ``System.map`` (the kernel) and
  ``rootfs.cpio`` or ``rootfs.ext2`` (the root image), byte copies of the
  pipeline's outputs, and ``recipe.yaml``;
* ``linux-image-<major.minor>-tailor-<app>_<version>_amd64.deb``
  (:func:`build_deb`): the kernel, its config and System.map in ``/boot``,
  built with ``dpkg-deb`` from a staging tree with clamped times and root
  ownership, and installed into a scratch root before the release is kept
  (:func:`install_deb`);
* ``oci/``: an OCI image layout for urunc (:func:`oci_layout`): kernel,
  rootfs and ``/urunc.json`` as uncompressed tar layers written
  deterministically, urunc's annotations on the manifest, the app's argv as
  Entrypoint/Cmd; every digest and size is checked again by walking the
  layout (:func:`verify_oci`);
* ``firecracker.json`` (:func:`firecracker_config`): a VM config for
  ``firecracker --no-api --config-file firecracker.json`` run from the
  app's release directory;
* ``manifest.json``: the recipe and its hash, the kernel source and its
  sha256, the resolved config's identity, the toolchain versions,
  SOURCE_DATE_EPOCH, every other file's sha256 and size, the boot-test
  result and time, and the command that reproduces the release.

``out/release/<version>/SHA256SUMS`` lists every file of every app released
under that version (:func:`write_sums`); ``sha256sum -c SHA256SUMS`` passes.

Everything but the boot test's measurement (``manifest.json``'s
``boot_test``: how long one boot took, on one machine) is a function of the
inputs: :func:`verify_reproducible` builds an app twice from scratch, in two
different directories and at two different times, and compares the two
release trees byte for byte (:func:`compare_trees`).

The release version is :data:`tailor.__version__` unless
``TAILOR_RELEASE_VERSION`` is set. Every generated text comes from a
template in ``templates/release/``; every file is written atomically, and an
app's release directory is built beside its final place and renamed into it.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from tailor import __version__
from tailor.errors import TailorError
from tailor.toolchain import IMAGE_TOOLS, first_line, versions
from tailor.util import (PROJECT, atomic_path, display_path, file_lock, makedirs, out_dir, read_json, remove,
                         replace_dir, sha256_file, sha256_text, write_atomic, write_json)

RELEASE_FORMAT = "1"
"""Bump when the release tree for the same inputs changes (invalidates release tasks)."""

TEMPLATE_DIR = "release"
"""Templates of this stage, under ``templates/``."""

VERSION_RE = re.compile(r"^[0-9][A-Za-z0-9.+~]*$")
"""A release version: a Debian upstream version without a revision (it is also a directory name)."""

DEFAULT_MAINTAINER = "tailor release <tailor@example.org>"
"""The .deb's Maintainer unless ``TAILOR_DEB_MAINTAINER`` says otherwise."""

KERNEL_FILES = ("bzImage", "vmlinux", "config", "System.map")
"""The kernel artefacts copied from ``out/kernel/<identity>/`` into a release."""

MEASURED_KEY = "boot_test"
"""The one section of manifest.json that is a measurement rather than a function of the inputs."""

SUMS_NAME = "SHA256SUMS"

FIRECRACKER_BOOT_ARGS = "console=ttyS0 reboot=k panic=1 pci=off"
"""Firecracker's usual guest command line: serial console, reboot ends the VM, no PCI probing."""

FIRECRACKER_TAP = "tap0"
FIRECRACKER_MAC = "06:00:0a:00:02:0f"
"""A fixed, locally administered unicast MAC for the guest's eth0."""

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
URUNC_KERNEL = "/.boot/kernel"
URUNC_ROOTFS = "/.boot/rootfs"

REPRO_BUILDS = (("first", True), ("second-build", False))
"""verify_reproducible's two builds: directory under out/repro/ (different lengths, so a leaked path
shows), and whether ccache may serve objects (never for the second, so it is a real compile)."""

COPY_IGNORE = {"out", ".venv", ".git", "__pycache__", ".pytest_cache", ".benchmarks", ".hypothesis"}


# --------------------------------------------------------------------------
# Names and places


def release_version() -> str:
    """The release version: ``$TAILOR_RELEASE_VERSION`` or tailor's own version."""
    version = os.environ.get("TAILOR_RELEASE_VERSION") or __version__
    check_version(version)
    return version


def check_version(version: str) -> str:
    """Return *version* if it can name a release (and a .deb version); else a TailorError."""
    if not VERSION_RE.match(version or ""):
        raise TailorError(f"TAILOR_RELEASE_VERSION={version!r}: a release version starts with a digit and has "
                          f"only letters, digits and . + ~ (e.g. 0.1.0)")
    return version


def release_root(version: str) -> Path:
    """``out/release/<version>``: every app released under *version*, and SHA256SUMS."""
    return out_dir() / "release" / version


def app_release_dir(app: str, version: str) -> Path:
    return release_root(version) / app


def manifest_path(app: str, version: str) -> Path:
    """An app's release manifest (the release task's target; written last but SHA256SUMS)."""
    return app_release_dir(app, version) / "manifest.json"


def repro_root() -> Path:
    """Where :func:`verify_reproducible` builds its two copies and writes its report."""
    return out_dir() / "repro"


def source_date_epoch() -> int:
    from tailor.kernel import source_date_epoch as epoch

    return epoch()


def maintainer() -> str:
    """The .deb's Maintainer field: ``$TAILOR_DEB_MAINTAINER`` or :data:`DEFAULT_MAINTAINER`."""
    value = os.environ.get("TAILOR_DEB_MAINTAINER") or DEFAULT_MAINTAINER
    if not re.match(r"^[^<>\n]+ <[^<>@\s]+@[^<>@\s]+>$", value):
        raise TailorError(f"TAILOR_DEB_MAINTAINER={value!r}: must look like 'Full Name <address@domain>'")
    return value


def render(template: str, **values) -> str:
    """Render ``templates/release/<template>`` (see :func:`tailor.rootfs.render`)."""
    from tailor.rootfs import render as render_template

    return render_template(f"{TEMPLATE_DIR}/{template}", **values)


def render_json(template: str, **values) -> bytes:
    """Render a JSON template and make sure the result is valid JSON; return its exact bytes."""
    text = render(template, **values)
    try:
        json.loads(text)
    except ValueError as e:
        raise TailorError(f"templates/{TEMPLATE_DIR}/{template}: renders invalid JSON ({e})") from None
    return text.encode()


def template_files() -> list[Path]:
    """Every template of this stage (a release task depends on them)."""
    from tailor.rootfs import TEMPLATES_DIR

    return sorted((TEMPLATES_DIR / TEMPLATE_DIR).glob("*.j2"))


# --------------------------------------------------------------------------
# Facts about the kernel and the machine


def kernel_release(bzimage: str | os.PathLike) -> str:
    """The kernel release (``uname -r``, e.g. ``6.1.192``) read from a bzImage's setup header."""
    try:
        with open(bzimage, "rb") as f:
            head = f.read(1 << 16)
    except OSError as e:
        raise TailorError(f"{bzimage}: cannot read ({e.strerror})") from None
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        raise TailorError(f"{bzimage}: not a bzImage (no HdrS setup header); rebuild the kernel")
    pointer = int.from_bytes(head[0x20E:0x210], "little")
    start = pointer + 0x200
    end = head.find(b"\0", start)
    if pointer == 0 or end < 0:
        raise TailorError(f"{bzimage}: the setup header has no kernel version string")
    words = head[start:end].decode("ascii", "replace").split()
    if not words or not re.match(r"^\d+\.\d+[A-Za-z0-9.+_-]*$", words[0]):
        raise TailorError(f"{bzimage}: unexpected kernel version string {head[start:end][:60]!r}")
    return words[0]


def config_has(config_text: str, symbol: str) -> bool:
    """True when ``CONFIG_<symbol>=y`` is set in a .config's text."""
    return f"\nCONFIG_{symbol}=y\n" in "\n" + config_text + "\n"


def urunc_hypervisor(config_text: str) -> str:
    """The monitor urunc should use for a kernel: ``qemu`` needs PCI virtio (urunc's qemu is a ``pc``
    machine), so a kernel without ``VIRTIO_PCI`` (tailor's virtio-mmio kernels) gets ``firecracker``."""
    return "qemu" if config_has(config_text, "PCI") and config_has(config_text, "VIRTIO_PCI") else "firecracker"


def source_commit() -> dict:
    """The git commit of the project and whether tracked files differ from it (None outside git)."""
    if not (PROJECT / ".git").exists():
        return {"commit": None, "dirty": None}
    commit = first_line(["git", "-C", str(PROJECT), "rev-parse", "HEAD"])
    if not commit or not re.match(r"^[0-9a-f]{40}$", commit):
        return {"commit": None, "dirty": None}
    try:
        proc = subprocess.run(["git", "-C", str(PROJECT), "status", "--porcelain", "--untracked-files=no"],
                              capture_output=True, text=True, timeout=60)
        dirty = bool(proc.stdout.strip()) if proc.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        dirty = None
    return {"commit": commit, "dirty": dirty}


# --------------------------------------------------------------------------
# Checksums and comparison


def _walk_files(root: Path, hidden: bool = True) -> list[str]:
    """Every file (and symlink) under *root*, as sorted POSIX relative paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        if not hidden:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            if hidden or not name.startswith("."):
                out.append((rel_dir / name).as_posix())
    return sorted(out, key=lambda p: p.encode())


def file_sums(root: str | os.PathLike, exclude: tuple[str, ...] = (SUMS_NAME,)) -> list[tuple[str, str]]:
    """``(relative path, sha256)`` of every visible file under *root*, sorted; dot-files and *exclude* left out."""
    root = Path(root)
    return [(rel, sha256_file(root / rel)) for rel in _walk_files(root, hidden=False) if rel not in exclude]


def write_sums(root: str | os.PathLike) -> Path:
    """Write ``<root>/SHA256SUMS`` over every file under *root* (``sha256sum -c`` format); return its path."""
    root = Path(root)
    text = render("checksums.j2", sums=file_sums(root))
    return write_atomic(root / SUMS_NAME, text)


def check_sums(root: str | os.PathLike) -> list[str]:
    """The problems ``sha256sum -c SHA256SUMS`` would report in *root* (empty when it passes)."""
    root = Path(root)
    problems = []
    try:
        lines = (root / SUMS_NAME).read_text().splitlines()
    except OSError as e:
        return [f"{SUMS_NAME}: cannot read ({e.strerror})"]
    for line in lines:
        digest, sep, rel = line.partition("  ")
        if not sep or not re.match(r"^[0-9a-f]{64}$", digest):
            problems.append(f"{SUMS_NAME}: malformed line {line!r}")
        elif not (root / rel).is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(root / rel) != digest:
            problems.append(f"{rel}: sha256 differs")
    return problems


def first_difference(a: str | os.PathLike, b: str | os.PathLike, chunk: int = 1 << 20) -> int | None:
    """The offset of the first byte where files *a* and *b* differ (a length difference counts); None if equal."""
    offset = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ba, bb = fa.read(chunk), fb.read(chunk)
            if ba != bb:
                n = min(len(ba), len(bb))
                step = 4096
                for i in range(0, n, step):
                    if ba[i:i + step] != bb[i:i + step]:
                        for j in range(i, min(i + step, n)):
                            if ba[j] != bb[j]:
                                return offset + j
                return offset + n
            if not ba:
                return None
            offset += len(ba)


def compare_trees(a: str | os.PathLike, b: str | os.PathLike) -> list[dict]:
    """Every difference between directory trees *a* and *b*, byte for byte, sorted by path.

    Each difference is ``{"path", "kind", "offset", "size_a", "size_b"}``:
    ``kind`` is ``differs`` (``offset`` is the first differing byte),
    ``only in a``, ``only in b`` or ``type`` (a file in one tree, a symlink or
    directory in the other). Identical trees give ``[]``.
    """
    a, b = Path(a), Path(b)
    for d in (a, b):
        if not d.is_dir():
            raise TailorError(f"{d}: not a directory; nothing to compare")
    files_a, files_b = set(_walk_files(a)), set(_walk_files(b))
    diffs = []
    for rel in sorted(files_a | files_b, key=lambda p: p.encode()):
        pa, pb = a / rel, b / rel
        entry = {"path": rel, "kind": "", "offset": None,
                 "size_a": pa.lstat().st_size if rel in files_a else None,
                 "size_b": pb.lstat().st_size if rel in files_b else None}
        if rel not in files_b:
            entry["kind"] = "only in a"
        elif rel not in files_a:
            entry["kind"] = "only in b"
        elif pa.is_symlink() or pb.is_symlink():
            if not (pa.is_symlink() and pb.is_symlink()):
                entry["kind"] = "type"
            elif os.readlink(pa) != os.readlink(pb):
                entry["kind"] = "differs"
                entry["offset"] = first_difference_bytes(os.readlink(pa).encode(), os.readlink(pb).encode())
        else:
            offset = first_difference(pa, pb)
            if offset is not None:
                entry["kind"], entry["offset"] = "differs", offset
        if entry["kind"]:
            diffs.append(entry)
    return diffs


def first_difference_bytes(x: bytes, y: bytes) -> int | None:
    """The first offset where byte strings *x* and *y* differ; None if equal."""
    for i, (p, q) in enumerate(zip(x, y)):
        if p != q:
            return i
    return None if len(x) == len(y) else min(len(x), len(y))


def describe_difference(d: dict) -> str:
    """One line for a :func:`compare_trees` entry."""
    if d["kind"] == "differs":
        return (f"{d['path']}: differs at byte offset {d['offset']} (0x{d['offset']:x}); "
                f"sizes {d['size_a']} and {d['size_b']}")
    return f"{d['path']}: {d['kind']}"


# --------------------------------------------------------------------------
# Debian package


def deb_package_name(app: str, kernel_rel: str) -> str:
    """``linux-image-<major.minor>-tailor-<app>`` (an ``_`` in the app name becomes ``-``)."""
    m = re.match(r"^(\d+)\.(\d+)", kernel_rel)
    if not m:
        raise TailorError(f"kernel release {kernel_rel!r}: does not start with <major>.<minor>")
    return f"linux-image-{m.group(1)}.{m.group(2)}-tailor-{app.replace('_', '-')}"


def deb_file_name(app: str, kernel_rel: str, version: str) -> str:
    return f"{deb_package_name(app, kernel_rel)}_{version}_amd64.deb"


def _deb_date(epoch: int) -> str:
    """An RFC 2822 date for debian/changelog, independent of the locale."""
    t = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    day = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[t.weekday()]
    month = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")[t.month - 1]
    return f"{day}, {t.day:02d} {month} {t.year} {t:%H:%M:%S} +0000"


def _wrap(text: str, width: int = 72) -> list[str]:
    """Words of *text* filled into lines of at most *width* characters."""
    lines, cur = [], ""
    for word in text.split():
        if cur and len(cur) + 1 + len(word) > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    return lines + ([cur] if cur else [])


def _clamp_tree(root: Path, epoch: int) -> None:
    from tailor.rootfs import normalise

    normalise(root, epoch)


def build_deb(dest_dir: str | os.PathLike, *, app: str, kernel_rel: str, version: str,
              bzimage: str | os.PathLike, config: str | os.PathLike, system_map: str | os.PathLike,
              epoch: int, description: str = "", source_label: str = "", source_sha256: str = "",
              config_identity: str = "", maintainer_field: str | None = None) -> Path:
    """Build the ``linux-image-*-tailor-<app>`` package of a kernel in *dest_dir*; return the .deb's path.

    The package holds ``/boot/vmlinuz-<kernel_rel>-tailor-<app>`` (the
    bzImage), ``/boot/config-...``, ``/boot/System.map-...``, and
    ``/usr/share/doc/<package>/`` with ``copyright`` and the compressed
    changelog. The staging tree has every time clamped to *epoch*, root
    ownership (``--root-owner-group``) and ``md5sums``; ``dpkg-deb`` runs with
    ``SOURCE_DATE_EPOCH=<epoch>``, xz and one compressor thread, so the same
    inputs give the same bytes on any machine.
    """
    dest_dir = makedirs(dest_dir)
    check_version(version)
    package = deb_package_name(app, kernel_rel)
    flavour = f"{kernel_rel}-tailor-{app.replace('_', '-')}"
    maint = maintainer_field or maintainer()
    doc = f"usr/share/doc/{package}"
    # Release versions have no Debian revision, so the package is native and its changelog is
    # changelog.gz (lintian: wrong-name-for-changelog-of-native-package for changelog.Debian.gz).
    changelog_name = "changelog.gz"
    stage = Path(tempfile.mkdtemp(prefix=".deb-stage-", dir=dest_dir))
    try:
        root = stage / package
        files = {
            f"boot/vmlinuz-{flavour}": Path(bzimage),
            f"boot/config-{flavour}": Path(config),
            f"boot/System.map-{flavour}": Path(system_map),
        }
        for rel, src in files.items():
            if not src.is_file():
                raise TailorError(f"{src}: missing; cannot package the kernel of {app}")
            makedirs((root / rel).parent)
            shutil.copyfile(src, root / rel)
        makedirs(root / doc)
        values = dict(package=package, version=version, app=app, kernel_release=kernel_rel,
                      maintainer=maint, tailor_version=__version__, source_label=source_label or "unknown",
                      source_sha256=source_sha256 or "unknown", config_identity=config_identity or "unknown",
                      date=_deb_date(epoch))
        (root / doc / "copyright").write_text(render("deb-copyright.j2", **values))
        changelog = render("deb-changelog.j2", **values).encode()
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
            gz.write(changelog)
        (root / doc / changelog_name).write_bytes(buf.getvalue())
        for dirpath, dirnames, filenames in os.walk(root):
            os.chmod(dirpath, 0o755)
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o644)
        payload = sorted((p for p in _walk_files(root)), key=lambda p: p.encode())
        installed = sum((root / p).stat().st_size // 1024 + (1 if (root / p).stat().st_size % 1024 else 0)
                        for p in payload)
        installed += sum(1 for _d, dirs, _f in os.walk(root) for _ in dirs)
        md5 = [(p, hashlib.md5((root / p).read_bytes()).hexdigest()) for p in payload]
        makedirs(root / "DEBIAN")
        os.chmod(root / "DEBIAN", 0o755)
        long_description = _wrap(
            f"The Linux {kernel_rel} kernel that tailor {__version__} configured and built for the app "
            f"{app}{': ' + description if description else ''}.") + ["."] + _wrap(
            "It ships the kernel image, its configuration and System.map in /boot; it has no modules and "
            "adds no boot loader entry: boot it as a microVM (qemu -M microvm or Firecracker) with the "
            "app's root image from the same tailor release.")
        (root / "DEBIAN" / "control").write_text(render("deb-control.j2", long_description=long_description,
                                                        installed_size=installed, **values))
        (root / "DEBIAN" / "md5sums").write_text(render("checksums.j2", sums=md5))
        for name in ("control", "md5sums"):
            os.chmod(root / "DEBIAN" / name, 0o644)
        _clamp_tree(root, epoch)
        deb = dest_dir / deb_file_name(app, kernel_rel, version)
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch), LC_ALL="C", TZ="UTC")
        with atomic_path(deb) as tmp:
            cmd = ["dpkg-deb", "--root-owner-group", "-Zxz", "--threads-max=1", "--build", str(root), str(tmp)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
            except OSError:
                raise TailorError("dpkg-deb not found; install dpkg (Debian has it)") from None
            if proc.returncode != 0:
                detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["?"]
                raise TailorError(f"dpkg-deb failed to build {package}: {detail[0]}")
    finally:
        remove(stage)
    return deb


def install_deb(deb: str | os.PathLike, root: str | os.PathLike) -> list[str]:
    """Install *deb* with ``dpkg --root`` into the scratch system *root*; return the files dpkg lists.

    *root* gets an empty dpkg database first. Works as root and, with
    ``--force-not-root``, as any user who owns *root*.
    """
    root = Path(root).resolve()
    admin = root / "var" / "lib" / "dpkg"
    for d in (admin / "info", admin / "updates", root / "var" / "log"):
        makedirs(d)
    for f in (admin / "status", admin / "available"):
        if not f.exists():
            f.write_text("")
    base = ["dpkg", f"--root={root}", f"--log={root / 'var/log/dpkg.log'}", "--force-not-root"]
    try:
        proc = subprocess.run(base + ["-i", str(Path(deb).resolve())], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, env=dict(os.environ, LC_ALL="C"))
    except OSError:
        raise TailorError("dpkg not found; the .deb install check needs it") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if "error" in ln.lower()] or \
            (proc.stderr + proc.stdout).strip().splitlines()[-1:] or ["?"]
        raise TailorError(f"{Path(deb).name}: dpkg cannot install it into a scratch root: {lines[0]}")
    info = subprocess.run(["dpkg-deb", "-f", str(deb), "Package"], capture_output=True, text=True)
    package = info.stdout.strip()
    listing = subprocess.run(base + ["-L", package], capture_output=True, text=True)
    if listing.returncode != 0:
        raise TailorError(f"{package}: installed, but dpkg -L fails: {listing.stderr.strip()[:200]}")
    return [ln for ln in listing.stdout.splitlines() if ln.strip() and ln != "/."]


# --------------------------------------------------------------------------
# OCI image layout for urunc


def deterministic_tar(members: list[tuple[str, str | os.PathLike | bytes, int]], dest: str | os.PathLike,
                      epoch: int) -> Path:
    """Write an uncompressed ustar archive of *members* to *dest*, atomically; same inputs, same bytes.

    Each member is ``(path inside the archive, source file or bytes, mode)``.
    Parent directories are added (mode 0755); entries are sorted by path;
    every time is *epoch*; owner and group are 0 with empty names.
    """
    entries: dict[str, tuple[str | os.PathLike | bytes | None, int]] = {}
    for name, src, mode in members:
        name = name.strip("/")
        if not name or ".." in name.split("/"):
            raise TailorError(f"{name!r}: not a relative path for an archive member")
        parts = name.split("/")
        for i in range(1, len(parts)):
            entries.setdefault("/".join(parts[:i]), (None, 0o755))
        entries[name] = (src, mode)
    with atomic_path(dest) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
            for name in sorted(entries, key=lambda n: n.encode()):
                src, mode = entries[name]
                info = tarfile.TarInfo(name)
                info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = epoch, mode, 0, 0, "", ""
                if src is None:
                    info.type = tarfile.DIRTYPE
                    tf.addfile(info)
                elif isinstance(src, bytes):
                    info.size = len(src)
                    tf.addfile(info, io.BytesIO(src))
                else:
                    info.size = os.stat(src).st_size
                    with open(src, "rb") as f:
                        tf.addfile(info, f)
    return Path(dest)


def _blob_dir(layout: Path) -> Path:
    return layout / "blobs" / "sha256"


def _put_blob(layout: Path, data: bytes) -> dict:
    """Store *data* as a content-addressed blob; return its ``{"digest", "size"}`` descriptor."""
    digest = hashlib.sha256(data).hexdigest()
    path = _blob_dir(layout) / digest
    if not path.exists():
        write_atomic(path, data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _put_tar_blob(layout: Path, members, epoch: int) -> dict:
    scratch = _blob_dir(layout) / f".layer-{os.getpid()}.tar"
    deterministic_tar(members, scratch, epoch)
    digest = sha256_file(scratch)
    size = scratch.stat().st_size
    os.replace(scratch, _blob_dir(layout) / digest)
    return {"digest": f"sha256:{digest}", "size": size}


def urunc_annotations(*, hypervisor: str, argv: list[str], rootfs_format: str) -> dict[str, str]:
    """urunc's annotations for a Linux kernel at /.boot/kernel with its root image at /.boot/rootfs."""
    out = {
        "com.urunc.unikernel.unikernelType": "linux",
        "com.urunc.unikernel.hypervisor": hypervisor,
        "com.urunc.unikernel.binary": URUNC_KERNEL,
        "com.urunc.unikernel.cmdline": shlex.join(argv),
    }
    if rootfs_format == "cpio":
        out["com.urunc.unikernel.initrd"] = URUNC_ROOTFS
    else:
        out["com.urunc.unikernel.block"] = URUNC_ROOTFS
        out["com.urunc.unikernel.blkMntPoint"] = "/"
    return out


def oci_layout(dest: str | os.PathLike, *, app: str, version: str, kernel: str | os.PathLike,
               rootfs: str | os.PathLike, rootfs_format: str, argv: list[str], env: list[str],
               workdir: str, hypervisor: str, epoch: int) -> dict:
    """Write an OCI image layout of *app* for urunc into the new directory *dest*; return its descriptors.

    Three uncompressed tar layers: ``.boot/kernel`` (*kernel*),
    ``.boot/rootfs`` (*rootfs*, a newc cpio used as initrd or an ext2 block
    image) and ``urunc.json`` (the urunc annotations, values base64-encoded).
    The config has *argv* as Entrypoint (argv[0]) and Cmd (the rest), *env*
    and *workdir*; the manifest carries the urunc annotations; ``index.json``
    names the manifest ``org.opencontainers.image.ref.name=<version>``.
    """
    if rootfs_format not in ("cpio", "ext2"):
        raise TailorError(f"rootfs format {rootfs_format!r}: an OCI image for urunc needs cpio or ext2")
    layout = Path(dest)
    if layout.exists() and any(layout.iterdir()):
        raise TailorError(f"{layout}: exists and is not empty; an OCI layout is written into a new directory")
    makedirs(_blob_dir(layout))
    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    annotations = urunc_annotations(hypervisor=hypervisor, argv=argv, rootfs_format=rootfs_format)
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in annotations.items()}
    urunc_json = render_json("urunc.json.j2", annotations=encoded)
    layers = []
    for what, members in (("kernel", [(URUNC_KERNEL, kernel, 0o644)]),
                          ("rootfs", [(URUNC_ROOTFS, rootfs, 0o644)]),
                          ("urunc.json", [("/urunc.json", urunc_json, 0o644)])):
        desc = _put_tar_blob(layout, members, epoch)
        desc["what"] = what
        layers.append(desc)
    config = _put_blob(layout, render_json(
        "oci-config.json.j2", created=created, entrypoint=argv[:1], cmd=list(argv[1:]), env=list(env),
        workdir=workdir, labels=annotations, diff_ids=[layer["digest"] for layer in layers], layers=layers,
        tailor_version=__version__))
    manifest_annotations = dict(annotations)
    manifest_annotations.update({
        "org.opencontainers.image.title": f"tailor-{app}",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.created": created,
    })
    manifest = _put_blob(layout, render_json("oci-manifest.json.j2", config=config, layers=layers,
                                             annotations=manifest_annotations))
    write_atomic(layout / "index.json", render_json("oci-index.json.j2", manifest=manifest, ref_name=version))
    write_atomic(layout / "oci-layout", render_json("oci-layout.j2"))
    return {"manifest": manifest, "config": config, "layers": layers, "annotations": manifest_annotations,
            "ref": version}


def _read_blob(layout: Path, desc: dict, what: str) -> bytes:
    digest = desc.get("digest", "")
    if not re.match(r"^sha256:[0-9a-f]{64}$", digest):
        raise TailorError(f"{layout}: {what} has a bad digest {digest!r}")
    path = _blob_dir(layout) / digest.split(":", 1)[1]
    try:
        data = path.read_bytes()
    except OSError:
        raise TailorError(f"{layout}: {what} blob {digest} is missing") from None
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise TailorError(f"{layout}: {what} blob {digest} does not match its digest")
    if len(data) != desc.get("size"):
        raise TailorError(f"{layout}: {what} blob {digest} has {len(data)} bytes, "
                          f"its descriptor says {desc.get('size')}")
    return data


def verify_oci(layout: str | os.PathLike) -> dict:
    """Walk an OCI image layout (oci-layout, index, manifest, config, layers) checking every digest and size.

    Returns ``{"index", "manifest", "config", "layers": [tar member names per layer]}``
    for the single image; raises a TailorError naming the first problem. A
    blob that nothing references is a problem too.
    """
    layout = Path(layout)
    try:
        marker = json.loads((layout / "oci-layout").read_text())
        index = json.loads((layout / "index.json").read_text())
    except (OSError, ValueError) as e:
        raise TailorError(f"{layout}: not an OCI image layout ({e})") from None
    if marker.get("imageLayoutVersion") != "1.0.0":
        raise TailorError(f"{layout}: oci-layout says {marker!r}, expected imageLayoutVersion 1.0.0")
    if index.get("schemaVersion") != 2 or len(index.get("manifests", [])) != 1:
        raise TailorError(f"{layout}: index.json must have schemaVersion 2 and one manifest")
    mdesc = index["manifests"][0]
    if mdesc.get("mediaType") != OCI_MANIFEST:
        raise TailorError(f"{layout}: index.json's manifest has mediaType {mdesc.get('mediaType')!r}")
    manifest = json.loads(_read_blob(layout, mdesc, "manifest"))
    if manifest.get("mediaType") != OCI_MANIFEST or manifest.get("schemaVersion") != 2:
        raise TailorError(f"{layout}: the manifest is not an OCI image manifest")
    cdesc = manifest.get("config", {})
    if cdesc.get("mediaType") != OCI_CONFIG:
        raise TailorError(f"{layout}: the config has mediaType {cdesc.get('mediaType')!r}")
    config = json.loads(_read_blob(layout, cdesc, "config"))
    seen = {mdesc["digest"], cdesc["digest"]}
    members = []
    for i, ldesc in enumerate(manifest.get("layers", [])):
        if ldesc.get("mediaType") != OCI_LAYER:
            raise TailorError(f"{layout}: layer {i} has mediaType {ldesc.get('mediaType')!r}")
        data = _read_blob(layout, ldesc, f"layer {i}")
        seen.add(ldesc["digest"])
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            members.append([m.name for m in tf.getmembers()])
    diff_ids = config.get("rootfs", {}).get("diff_ids")
    if diff_ids != [d["digest"] for d in manifest.get("layers", [])]:
        raise TailorError(f"{layout}: the config's rootfs.diff_ids do not match the (uncompressed) layers")
    on_disk = {"sha256:" + p.name for p in _blob_dir(layout).iterdir() if not p.name.startswith(".")}
    if on_disk - seen:
        raise TailorError(f"{layout}: unreferenced blob(s) {', '.join(sorted(on_disk - seen))}")
    return {"index": index, "manifest": manifest, "config": config, "layers": members}


# --------------------------------------------------------------------------
# Firecracker


def firecracker_config(*, kernel: str, rootfs: str, rootfs_format: str, memory: int, network: bool,
                       cmdline_extra: str = "", vcpus: int = 1) -> bytes:
    """The Firecracker VM config (``firecracker --no-api --config-file``) for an app, as JSON bytes.

    *kernel* is the ELF vmlinux and *rootfs* the image, as paths Firecracker
    opens (relative ones from its working directory). A cpio image is the
    initrd (``rdinit=/init``); an ext2 image is the root drive
    (``root=/dev/vda rw init=/init``). With *network*, eth0 is a tap device
    ``tap0`` with a fixed MAC; the guest configures itself as in the boot test.
    """
    if rootfs_format == "cpio":
        root_args, initrd, block = "rdinit=/init", rootfs, None
    elif rootfs_format == "ext2":
        root_args, initrd, block = "root=/dev/vda rw init=/init", None, rootfs
    else:
        raise TailorError(f"rootfs format {rootfs_format!r}: Firecracker boots cpio (initrd) or ext2 (drive)")
    boot_args = " ".join(x for x in (FIRECRACKER_BOOT_ARGS, root_args, cmdline_extra.strip()) if x)
    return render_json("firecracker.json.j2", kernel=kernel, initrd=initrd, block=block, boot_args=boot_args,
                       vcpus=vcpus, memory=memory, network=network, tap=FIRECRACKER_TAP, mac=FIRECRACKER_MAC)


def check_firecracker_config(data: dict) -> None:
    """Raise a TailorError unless *data* has Firecracker's documented config-file fields with their types."""
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise TailorError(f"firecracker config: {what}")

    boot = data.get("boot-source")
    need(isinstance(boot, dict), "boot-source must be an object")
    need(isinstance(boot.get("kernel_image_path"), str) and boot["kernel_image_path"], "boot-source.kernel_image_path")
    need(isinstance(boot.get("boot_args", ""), str), "boot-source.boot_args must be a string")
    need(isinstance(boot.get("initrd_path", ""), str), "boot-source.initrd_path must be a string")
    machine = data.get("machine-config")
    need(isinstance(machine, dict), "machine-config must be an object")
    for key in ("vcpu_count", "mem_size_mib"):
        need(isinstance(machine.get(key), int) and not isinstance(machine.get(key), bool) and machine[key] > 0,
             f"machine-config.{key} must be a positive integer")
    drives = data.get("drives", [])
    need(isinstance(drives, list), "drives must be a list")
    for d in drives:
        need(isinstance(d.get("drive_id"), str) and isinstance(d.get("path_on_host"), str)
             and isinstance(d.get("is_root_device"), bool) and isinstance(d.get("is_read_only"), bool),
             "each drive needs drive_id, path_on_host (strings), is_root_device, is_read_only (booleans)")
    need(sum(1 for d in drives if d["is_root_device"]) <= 1, "at most one root drive")
    need("initrd_path" in boot or any(d["is_root_device"] for d in drives), "a root: initrd_path or a root drive")
    for n in data.get("network-interfaces", []):
        need(all(isinstance(n.get(k), str) for k in ("iface_id", "host_dev_name", "guest_mac")),
             "each network interface needs iface_id, host_dev_name and guest_mac strings")
        need(re.match(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$", n["guest_mac"]) is not None, "guest_mac format")


# --------------------------------------------------------------------------
# One app's release


def _boot_result(recipe, pointer: dict, image: Path) -> dict:
    """The app's boot-test result, refusing a failed, missing or stale one."""
    from tailor import boot

    path = boot.result_path(recipe.name)
    if not path.exists():
        raise TailorError(f"release of {recipe.name} refused: it has no boot-test result; "
                          f"run `doit boot:{recipe.name}`")
    result = read_json(path)
    if not result.get("pass"):
        raise TailorError(f"release of {recipe.name} refused: its boot test did not pass "
                          f"({result.get('reason') or 'no reason recorded'}); fix it and run `doit boot:{recipe.name}`")
    kernel = Path(pointer["bzImage"])
    if result.get("kernel") != str(kernel) or result.get("image") != str(image):
        raise TailorError(f"release of {recipe.name} refused: its boot result is for another kernel or image; "
                          f"run `doit boot:{recipe.name}`")
    newest = max(kernel.stat().st_mtime, image.stat().st_mtime)
    if path.stat().st_mtime < newest:
        raise TailorError(f"release of {recipe.name} refused: its boot result is older than its kernel or image; "
                          f"run `doit boot:{recipe.name}`")
    return result


def _copy(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise TailorError(f"{src}: missing; run the stage that writes it")
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o644)


def release_app(recipe, version: str | None = None) -> dict:
    """Release *recipe*'s app under *version* (default :func:`release_version`); return its manifest.

    Refuses an app whose boot test did not pass (or is older than its kernel
    or image). Builds the app's directory beside its final place, checks the
    .deb by installing it into a scratch root and the OCI layout by walking
    it, renames the directory into ``out/release/<version>/<app>`` and
    rewrites that version's SHA256SUMS.
    """
    from tailor import config as config_stage
    from tailor import kernel as kernel_stage
    from tailor import rootfs, source

    version = check_version(version or release_version())
    app = recipe.name
    epoch = source_date_epoch()
    pointer = read_json(kernel_stage.app_pointer(app))
    identity = pointer["identity"]
    kdir = Path(pointer["dir"])
    kernel_meta = read_json(kdir / "kernel.json") if (kdir / "kernel.json").exists() else {}
    if not isinstance(kernel_meta.get("toolchain"), dict):
        raise TailorError(f"{display_path(kdir / 'kernel.json')}: no record of the toolchain that built "
                          f"the kernel; run `doit kernel:{app}` (kernels built before tailor recorded it are rebuilt)")
    image = rootfs.image_path(recipe)
    result = _boot_result(recipe, pointer, image)
    rootfs_manifest = read_json(rootfs.manifest_path(app))
    if not image.is_file() or sha256_file(image) != rootfs_manifest.get("sha256"):
        raise TailorError(f"{display_path(image)}: does not match {rootfs.manifest_path(app).name}; "
                          f"run `doit rootfs:{app}`")
    config_text = (kdir / "config").read_text()
    resolved = config_stage.config_paths(app)["config"]
    if resolved.exists() and resolved.read_text() != config_text:
        raise TailorError(f"kernel {identity[:16]} was not built from the current config of {app}; "
                          f"run `doit kernel:{app}`")
    kernel_rel = kernel_release(kdir / "bzImage")
    ref = source.recipe_ref(recipe)
    maint = maintainer()
    fmt = recipe.rootfs.format
    rootfs_name = f"rootfs.{fmt}"
    argv = [rootfs_manifest.get("command") or recipe.app.command] + list(recipe.app.args)
    hypervisor = urunc_hypervisor(config_text)
    root = makedirs(release_root(version))
    final = app_release_dir(app, version)
    tmp = Path(tempfile.mkdtemp(prefix=f".{app}.", suffix=".tmp", dir=root))
    try:
        (tmp / "recipe.yaml").write_bytes(Path(recipe.path).read_bytes())
        for name in KERNEL_FILES:
            _copy(kdir / name, tmp / name)
        _copy(image, tmp / rootfs_name)
        deb = build_deb(tmp, app=app, kernel_rel=kernel_rel, version=version, bzimage=tmp / "bzImage",
                        config=tmp / "config", system_map=tmp / "System.map", epoch=epoch,
                        description=recipe.description, source_label=ref.label, source_sha256=ref.sha256,
                        config_identity=identity, maintainer_field=maint)
        with tempfile.TemporaryDirectory(prefix="tailor-deb-root-") as scratch:
            listed = install_deb(deb, scratch)
            flavour = f"{kernel_rel}-tailor-{app.replace('_', '-')}"
            for prefix, src in (("vmlinuz", "bzImage"), ("config", "config"), ("System.map", "System.map")):
                installed = Path(scratch) / "boot" / f"{prefix}-{flavour}"
                if f"/boot/{prefix}-{flavour}" not in listed or not installed.is_file() \
                        or sha256_file(installed) != sha256_file(tmp / src):
                    raise TailorError(f"{deb.name}: /boot/{prefix}-{flavour} is not installed as built")
        from tailor.rootfs import PATH_DIRS

        env = [f"PATH={':'.join(PATH_DIRS)}", "HOME=/root"] + [f"{k}={v}" for k, v in recipe.app.env]
        oci = oci_layout(tmp / "oci", app=app, version=version,
                         kernel=tmp / ("bzImage" if hypervisor == "qemu" else "vmlinux"),
                         rootfs=tmp / rootfs_name, rootfs_format=fmt, argv=argv, env=env,
                         workdir=recipe.app.workdir, hypervisor=hypervisor, epoch=epoch)
        verify_oci(tmp / "oci")
        fc = firecracker_config(kernel="vmlinux", rootfs=rootfs_name, rootfs_format=fmt,
                                memory=recipe.test.memory, network=bool(recipe.app.network),
                                cmdline_extra=recipe.kernel.cmdline)
        check_firecracker_config(json.loads(fc))
        write_atomic(tmp / "firecracker.json", fc)
        _clamp_tree(tmp, epoch)
        artefacts = [{"path": rel, "sha256": digest, "size": (tmp / rel).stat().st_size}
                     for rel, digest in file_sums(tmp)]
        manifest = _manifest(recipe, version, epoch, identity, config_text, kernel_rel, ref, rootfs_manifest,
                             result, artefacts, deb.name, oci, hypervisor, maint, kernel_meta["toolchain"])
        write_json(tmp / "manifest.json", manifest)
        os.utime(tmp / "manifest.json", (epoch, epoch))
        os.utime(tmp, (epoch, epoch))
        with file_lock(root / ".lock", f"release {version}"):
            replace_dir(tmp, final)
            write_sums(root)
    finally:
        remove(tmp)
    problems = check_sums(root)
    if problems:
        raise TailorError(f"{display_path(root / SUMS_NAME)}: {problems[0]}")
    total = sum(a["size"] for a in artefacts)
    print(f"[release:{app}] {display_path(final)}: {len(artefacts) + 1} files, {total / 1e6:.1f} MB; "
          f"{deb.name}; OCI {oci['manifest']['digest'][:19]} ({hypervisor})", file=sys.stderr)
    return manifest


def _manifest(recipe, version, epoch, identity, config_text, kernel_rel, ref, rootfs_manifest, result,
              artefacts, deb_name, oci, hypervisor, maint, kernel_toolchain: dict) -> dict:
    """The release's manifest.json. Its ``toolchain`` names the compiler and binutils that built the
    kernel, copied from ``kernel.json`` (recorded at build time), and the image tools of this host."""
    app = recipe.name
    recipe_bytes = Path(recipe.path).read_bytes()
    commit = source_commit()
    env = {"SOURCE_DATE_EPOCH": str(epoch), "TAILOR_RELEASE_VERSION": version}
    if os.environ.get("TAILOR_DEB_MAINTAINER"):
        env["TAILOR_DEB_MAINTAINER"] = maint
    run = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + f" .venv/bin/doit release:{app}"
    steps = ([f"git checkout {commit['commit']}"] if commit["commit"] else []) + ["./setup.sh", run]
    return {
        "format": int(RELEASE_FORMAT),
        "app": app,
        "description": recipe.description,
        "version": version,
        "tailor_version": __version__,
        "source_date_epoch": epoch,
        "recipe": {"file": f"recipes/{Path(recipe.path).name}", "sha256": sha256_text(recipe_bytes),
                   "text": recipe_bytes.decode("utf-8", "replace")},
        "kernel": {
            "release": kernel_rel,
            "source": {"label": ref.label, "kind": ref.kind, "sha256": ref.sha256, "id": ref.id,
                       "patches": [{"file": Path(p.path).name, "sha256": p.sha256} for p in ref.patches]},
            "config_identity": identity,
            "config_sha256": sha256_text(config_text),
            "enabled": sum(1 for ln in config_text.splitlines() if ln.startswith("CONFIG_") and ln.endswith("=y")),
            "cmdline": recipe.kernel.cmdline,
        },
        "rootfs": {"format": rootfs_manifest.get("format"), "command": rootfs_manifest.get("command"),
                   "sha256": rootfs_manifest.get("sha256"), "packages": rootfs_manifest.get("packages", [])},
        "toolchain": {**versions(IMAGE_TOOLS), **kernel_toolchain},
        "artefacts": artefacts,
        "deb": {"file": deb_name, "maintainer": maint},
        "oci": {"layout": "oci", "ref": oci["ref"], "manifest_digest": oci["manifest"]["digest"],
                "hypervisor": hypervisor, "annotations": oci["annotations"]},
        "firecracker": {"config": "firecracker.json",
                        "run": "firecracker --no-api --config-file firecracker.json (from this directory)"},
        MEASURED_KEY: {
            "pass": bool(result.get("pass")),
            "accel": result.get("accel"),
            "time_to_init_s": result.get("time_to_init_s"),
            "time_to_ready_s": result.get("time_to_ready_s"),
            "probe": (result.get("probe") or {}).get("type"),
            "detail": (result.get("probe") or {}).get("detail"),
            "memory_mib": result.get("memory"),
            "note": "measured by the boot test of this build; it differs between runs and machines and is "
                    "the only part of a release left out of the bit-for-bit comparison",
        },
        "reproduce": {"commit": commit["commit"], "dirty": commit["dirty"], "environment": env,
                      "command": " && ".join(steps)},
    }


# --------------------------------------------------------------------------
# Bit for bit


def copy_project(dest: Path) -> None:
    """Copy the project's sources (not out/, .venv, .git or caches) to *dest*."""
    def ignore(directory, names):
        top = Path(directory) == PROJECT
        return [n for n in names if (top and n in COPY_IGNORE) or n in ("__pycache__", ".pytest_cache")
                or n.endswith(".pyc")]

    shutil.copytree(PROJECT, dest, symlinks=True, ignore=ignore)


def tree_digest(root: Path) -> str:
    """sha256 over the sorted (path, sha256) of every file under *root*: which sources a build used."""
    return sha256_text("".join(f"{rel}\0{sha256_file(root / rel)}\n" for rel in _walk_files(root)
                               if not (root / rel).is_symlink()))


def _prepare_copy(dest: Path, ref, snapshot: Path) -> None:
    """A fresh copy of the project *snapshot* in *dest* whose out/ has its own kernel source tree (hard
    links) and shares only the verified .deb cache."""
    from tailor import source

    remove(dest)
    shutil.copytree(snapshot, dest, symlinks=True)
    out = makedirs(dest / "out")
    short = source.stamp_path(ref).parent
    makedirs(out / "src")
    proc = subprocess.run(["cp", "-al", str(short), str(out / "src" / short.name)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise TailorError(f"cannot link the kernel source into {dest}: {proc.stderr.strip()[:200]}")
    makedirs(out_dir() / "cache")
    os.symlink(out_dir() / "cache", out / "cache")


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
    order = ["vmlinux", "System.map", "bzImage", "config", "rootfs.cpio", "rootfs.ext2", "recipe.yaml"]
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
    """True when *diff* is only the boot test's measurement: a manifest.json equal without its
    ``boot_test`` section, or a SHA256SUMS equal but for the manifests' lines."""
    path = diff["path"]
    if diff["kind"] != "differs":
        return False
    if path.endswith("/manifest.json") or path == "manifest.json":
        try:
            ma, mb = (json.loads((r / path).read_text()) for r in (a_root, b_root))
        except (OSError, ValueError):
            return False
        ma.pop(MEASURED_KEY, None)
        mb.pop(MEASURED_KEY, None)
        return ma == mb
    if path.endswith(SUMS_NAME):
        def rest(r: Path) -> list[str]:
            return [ln for ln in (r / path).read_text().splitlines() if not ln.endswith("manifest.json")]
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
    from tailor import recipe as recipe_mod
    from tailor import source

    version = check_version(version or release_version())
    recipe = recipe_mod.find(app)
    epoch = source_date_epoch()
    ref = source.recipe_ref(recipe)
    source.prepare(ref)
    base = makedirs(repro_root())
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
    a, b = (base / name / "out" / "release" / version for name, _ in REPRO_BUILDS)
    diffs = compare_trees(a, b)
    real = sorted((d for d in diffs if not measurement_only(a, b, d)), key=_cause_rank)
    measured = [d["path"] for d in diffs if not any(d is r for r in real)]
    files = len(_walk_files(a))
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


# --------------------------------------------------------------------------
# doit tasks


def tasks(recipes, action):
    """doit tasks ``release:<app>``: one per recipe, after its kernel, rootfs and boot test."""
    from doit.tools import config_changed

    from tailor import boot
    from tailor import kernel as kernel_stage
    from tailor import rootfs

    try:
        version = release_version()
    except TailorError as e:  # a bad TAILOR_RELEASE_VERSION fails the release tasks, not every doit command
        for r in recipes:
            yield {"basename": "release", "name": r.name, "doc": f"(cannot release) {e}",
                   "actions": [action(_refuse, str(e))], "uptodate": [False], "verbosity": 2}
        return
    for r in recipes:
        yield {
            "basename": "release", "name": r.name,
            "doc": f"release {r.name} {version}: kernel, rootfs, .deb, OCI layout, Firecracker config, "
                   f"manifest, SHA256SUMS",
            "actions": [action(release_app, r, version)],
            "file_dep": [str(kernel_stage.app_pointer(r.name)), str(rootfs.image_path(r)),
                         str(rootfs.manifest_path(r.name)), str(boot.result_path(r.name)), str(r.path)]
                        + [str(p) for p in template_files()],
            "targets": [str(manifest_path(r.name, version))],
            "uptodate": [config_changed({"version": version, "format": RELEASE_FORMAT,
                                         "epoch": source_date_epoch(),
                                         "maintainer": os.environ.get("TAILOR_DEB_MAINTAINER", "")})],
            "verbosity": 2,
        }


def _refuse(message: str) -> None:
    raise TailorError(message)


def _verify_action(action, app: str):
    """doit python-action for ``verify_reproducible``; doit passes the ``--app`` parameter as *app*."""
    fn, args, kwargs = action(verify_reproducible, app)
    return fn(*args, **kwargs)


def verify_tasks(action):
    """doit task ``verify_reproducible [--app APP]``: build an app's release twice and compare bit for bit."""
    yield {
        "basename": "verify_reproducible",
        "doc": "release an app (default hello) twice in two directories and compare every file byte for byte",
        "actions": [(_verify_action, (action,), {})],
        "params": [{"name": "app", "long": "app", "default": "hello", "type": str,
                    "help": "the recipe to build twice (default hello)"}],
        "uptodate": [False],
        "verbosity": 2,
    }
