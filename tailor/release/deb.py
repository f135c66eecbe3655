"""The Debian package of a release's kernel: ``linux-image-<major.minor>-tailor-<app>``.

:func:`build_deb` stages the kernel, its config and System.map in ``/boot`` and builds the .deb with
``dpkg-deb`` reproducibly; :func:`install_deb` installs it into a scratch root to prove it installs.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tailor import __version__
from tailor.errors import TailorError
from tailor.kinds import Arch
from tailor.release.names import check_version, maintainer, render
from tailor.release.treediff import walk_files
from tailor.rootfs import normalise
from tailor.util import atomic_path, makedirs, remove


def kernel_release(image: str | os.PathLike) -> str:
    """The kernel release (``uname -r``, e.g. ``6.1.192``) of a boot image: read from an x86 bzImage's
    setup header, or from the ``Linux version ...`` banner in an arm64 ``Image`` (uncompressed)."""
    try:
        with open(image, "rb") as f:
            head = f.read(1 << 16)
            data = head if head[0x202:0x206] == b"HdrS" else head + f.read()
    except OSError as e:
        raise TailorError(f"{image}: cannot read ({e.strerror})") from None
    if len(head) >= 0x210 and head[0x202:0x206] == b"HdrS":
        pointer = int.from_bytes(head[0x20E:0x210], "little")
        start = pointer + 0x200
        end = head.find(b"\0", start)
        if pointer == 0 or end < 0:
            raise TailorError(f"{image}: the setup header has no kernel version string")
        found = head[start:end]
    elif len(head) >= 0x40 and head[0x38:0x3C] == b"ARM\x64":
        m = re.search(rb"Linux version (\S+) \(", data)
        if not m:
            raise TailorError(f"{image}: an arm64 Image without a 'Linux version' banner; rebuild the kernel")
        found = m.group(1)
    else:
        raise TailorError(f"{image}: neither a bzImage (no HdrS setup header) nor an arm64 Image "
                          f"(no ARM\\x64 magic); rebuild the kernel")
    words = found.decode("ascii", "replace").split()
    if not words or not re.match(r"^\d+\.\d+[A-Za-z0-9.+_-]*$", words[0]):
        raise TailorError(f"{image}: unexpected kernel version string {found[:60]!r}")
    return words[0]


def deb_package_name(app: str, kernel_rel: str) -> str:
    """``linux-image-<major.minor>-tailor-<app>`` (an ``_`` in the app name becomes ``-``)."""
    m = re.match(r"^(\d+)\.(\d+)", kernel_rel)
    if not m:
        raise TailorError(f"kernel release {kernel_rel!r}: does not start with <major>.<minor>")
    return f"linux-image-{m.group(1)}.{m.group(2)}-tailor-{app.replace('_', '-')}"


def deb_file_name(app: str, kernel_rel: str, version: str, architecture: str = "amd64") -> str:
    """``<package>_<version>_<architecture>.deb``, *architecture* in Debian's names (``amd64``, ``arm64``)."""
    return f"{deb_package_name(app, kernel_rel)}_{version}_{architecture}.deb"


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


def build_deb(dest_dir: str | os.PathLike, *, app: str, kernel_rel: str, version: str,
              image: str | os.PathLike, config: str | os.PathLike, system_map: str | os.PathLike,
              epoch: int, description: str = "", source_label: str = "", source_sha256: str = "",
              config_identity: str = "", maintainer_field: str | None = None,
              arch: Arch = Arch.X86_64) -> Path:
    """Build the ``linux-image-*-tailor-<app>`` package of a kernel in *dest_dir*; return the .deb's path.

    The package (``Architecture:`` *arch*'s Debian name) holds
    ``/boot/vmlinuz-<kernel_rel>-tailor-<app>`` (the bzImage, or on arm64 the
    ``Image``, as Debian's arm64 kernels ship it), ``/boot/config-...``, ``/boot/System.map-...``, and
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
            f"boot/vmlinuz-{flavour}": Path(image),
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
                      date=_deb_date(epoch), architecture=arch.debian)
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
        payload = sorted((p for p in walk_files(root)), key=lambda p: p.encode())
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
            f"adds no boot loader entry: boot it as a microVM ({arch.machine} or Firecracker) with the "
            "app's root image from the same tailor release.")
        (root / "DEBIAN" / "control").write_text(render("deb-control.j2", long_description=long_description,
                                                        installed_size=installed, **values))
        (root / "DEBIAN" / "md5sums").write_text(render("checksums.j2", sums=md5))
        for name in ("control", "md5sums"):
            os.chmod(root / "DEBIAN" / name, 0o644)
        normalise(root, epoch)
        deb = dest_dir / deb_file_name(app, kernel_rel, version, arch.debian)
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
    ``--force-not-root``, as any user who owns *root*. A package of another
    architecture than the host's (an arm64 kernel on an amd64 host) is installed
    with ``--force-architecture``: the scratch root stands for a machine of its
    architecture, and the package holds no program the host would run.
    """
    root = Path(root).resolve()
    admin = root / "var" / "lib" / "dpkg"
    for d in (admin / "info", admin / "updates", root / "var" / "log"):
        makedirs(d)
    for f in (admin / "status", admin / "available"):
        if not f.exists():
            f.write_text("")
    base = ["dpkg", f"--root={root}", f"--log={root / 'var/log/dpkg.log'}", "--force-not-root"]
    arch = subprocess.run(["dpkg-deb", "-f", str(deb), "Architecture"], capture_output=True, text=True)
    host = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True)
    if arch.returncode == 0 and host.returncode == 0 and arch.stdout.strip() not in ("all", host.stdout.strip()):
        base.append("--force-architecture")
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
