"""Debian packages from apt's archive: dependency closures, downloads, extraction and versions.

This is tailor's one apt client. Over 400 lines as one module on purpose: the sandbox rule below holds
for every apt command only because they all run here. The rootfs stage (:mod:`tailor.rootfs`) and images built from
packages (:mod:`tailor.image.build`) call :func:`closure`, :func:`download` and :func:`extract`;
the kernel source (:mod:`tailor.source`) calls :func:`fetch_exact`, :func:`extract_member` and
:func:`archive_versions`.

Vocabulary used in the docstrings:

spec
  ``name=version``, as ``apt-get download`` and ``apt-cache show`` take it.

closure
  The packages (:class:`Package`: name, version, architecture) apt would install on an *empty*
  system to have the packages asked for: their Depends and Pre-Depends, recursively, without
  Recommends or Suggests, and without the Essential set unless something depends on it.

The sandbox rule
----------------

Every apt command of this module runs with the same options (:func:`apt_options`) and follows
one rule: **apt reads the host's apt configuration, sources and package lists, and writes
nothing that belongs to the host.** In detail:

- ``Dir::State::status=/dev/null``: dpkg's database is never opened, so no package counts as
  installed. A closure is the same on every host whatever the host has installed, and no apt
  command of tailor can read or change the host's dpkg state.
- ``Dir::Cache::pkgcache=""`` and ``Dir::Cache::srcpkgcache=""``: apt builds its cache of the
  lists in memory. Without them, apt running as root would write a cache built against the empty
  status file into ``/var/cache/apt``, and the host's next apt command would rebuild it.
- Downloads land in a fresh temporary directory under tailor's ``out/cache/`` and are renamed into
  place only once complete (and, where tailor has a digest to check, once checked). They run as
  the caller: as root, ``APT::Sandbox::User=root``, because apt's ``_apt`` user cannot write into
  ``out/``. What arrives is verified all the same: ``apt-get download`` checks each file against
  the signed index, :func:`download` checks cached files against the index's SHA256 again, and the
  kernel source checks the .deb and its tarball against ``kernel-sources.lock``.
- tailor never runs ``apt-get update`` on the host's lists (only on its own lists of a foreign
  architecture, below), ``install`` or ``dpkg --install``/``--unpack``: packages
  are unpacked with ``dpkg-deb``, which reads nothing but the .deb.

Before this module, the two clients differed: the rootfs stage resolved with the empty status
but looked up hashes and downloaded with the host's; the kernel source read the host's status for
``apt-cache madison`` and ``apt-get download``; neither kept apt from writing its cache into
``/var/cache/apt``; only one of them dropped the ``_apt`` sandbox user conditionally. The rule
above takes the stricter choice of each, which changes no result: the same lists give the same
closures, versions and files.

Another architecture than the host's (``arch: arm64`` on an amd64 host, whose dpkg knows no foreign
architecture and is not changed) gets tailor's own apt state under ``out/cache/apt/<arch>/``: apt's
options (:func:`apt_options` with *arch*) add ``APT::Architecture`` and ``APT::Architectures`` for it
and ``Dir::State::Lists`` and ``Dir::Cache`` in that directory, keep the host's sources, keyrings and
configuration, and :func:`foreign_lists` runs ``apt-get update`` into it (checked against the
archive's signature like the host's) when it has no lists or the host's lists are newer (so both views
of the archive are of the same date). Measured here: 19 MB of lists, about 1.3 s (Debian 12's main,
updates and security suites for arm64). That is the only ``apt-get update`` tailor runs, and it
writes only under ``out/``.

The host's package lists are the host's, as its last ``apt-get update`` left them (fetched and checked
against the archive's signature by apt). A separate apt state under ``out/`` (tailor's own
sources.list, keyring, lists and ``apt-get update``) would give a second view of the archive,
of a different date than the host's, that the user would have to refresh apart from the host's;
so errors that stale lists can cause say to run ``apt-get update``.

Version comparison
------------------

:func:`compare_versions` asks ``dpkg --compare-versions``, one process per comparison: dpkg's
ordering is the definition of Debian's (epochs, ``~``, letters before non-letters), dpkg is
needed anyway for ``dpkg-deb``, and tailor only ever sorts the few versions of one package that
the archive offers (:func:`archive_versions`). A reimplementation would be a second definition
to keep in step; python-debian is not in tailor's stack.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import NamedTuple

from tailor import paths
from tailor.errors import TailorError
from tailor.util import file_lock, makedirs, remove, sha256_file

NOT_FOUND = ("was not found", "Unable to locate", "has no installation candidate", "no candidate")
"""What apt says (in C locale) when its lists have no such package or version."""


class Package(NamedTuple):
    """One package of a closure, exactly: equal to the plain ``(name, version, arch)`` tuple."""

    name: str
    version: str
    arch: str

    @property
    def spec(self) -> str:
        """``name=version``."""
        return f"{self.name}={self.version}"

    @property
    def deb_name(self) -> str:
        """The file name ``apt-get download`` gives the .deb (an epoch's ``:`` written ``%3a``)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


class NotInArchive(TailorError):
    """apt's lists have no candidate for one of the specs asked for (:attr:`specs`)."""

    def __init__(self, message: str, specs: tuple[str, ...]):
        super().__init__(message)
        self.specs = specs


def deb_cache() -> Path:
    """``out/cache/debs``: the .debs of every closure, shared by all recipes and images."""
    return paths.cache_dir("debs")


@functools.lru_cache(maxsize=None)
def host_arch() -> str:
    """The host dpkg's architecture (``amd64``), whose packages the host's lists describe."""
    try:
        out = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    except OSError:
        out = ""
    return out or "amd64"


def foreign(arch: str | None) -> bool:
    """True when *arch* (a Debian architecture, or None for the host's) needs tailor's own apt state."""
    return bool(arch) and arch != host_arch()


def apt_state(arch: str) -> Path:
    """``out/cache/apt/<arch>``: tailor's own apt lists and cache for the foreign architecture *arch*."""
    return paths.cache_dir("apt") / arch


def apt_options(arch: str | None = None) -> list[str]:
    """The ``-o`` options of the sandbox rule (see the module's docstring), for every apt command; for a
    foreign *arch* (Debian's name, e.g. ``arm64``) also the options that point apt at tailor's own lists
    for that architecture."""
    opts = ["-o", "Dir::State::status=/dev/null", "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache="]
    if os.geteuid() == 0:
        opts += ["-o", "APT::Sandbox::User=root"]
    if foreign(arch):
        state = apt_state(arch)
        opts += ["-o", f"APT::Architecture={arch}", "-o", f"APT::Architectures::={arch}",
                 "-o", f"Dir::State::Lists={state / 'lists'}", "-o", f"Dir::Cache={state / 'cache'}",
                 "-o", "Acquire::Languages=none"]
    return opts


def _host_lists_time() -> float:
    """When the host's lists were last updated: the newest ``*Release`` file under apt's lists directory."""
    lists = Path("/var/lib/apt/lists")
    try:
        return max((p.stat().st_mtime for p in lists.iterdir() if p.name.endswith("Release")), default=0.0)
    except OSError:
        return 0.0


def foreign_lists(arch: str) -> Path:
    """tailor's own lists of *arch*'s packages, fetched with ``apt-get update`` (from the host's sources,
    checked with the host's keyrings) when there are none or the host's lists are newer; return the
    directory. Only ``out/cache/apt/<arch>/`` is written."""
    state = apt_state(arch)
    lists, stamp = state / "lists", state / "updated"

    def fresh() -> bool:
        return stamp.exists() and stamp.stat().st_mtime >= _host_lists_time()

    if fresh():
        return lists
    with file_lock(makedirs(state) / ".lock", f"tailor's {arch} apt lists"):
        if fresh():
            return lists
        makedirs(lists / "partial")
        makedirs(state / "cache" / "archives" / "partial")
        print(f"tailor: apt-get update for {arch} into {state} (tailor's own lists; the host's are untouched)",
              file=sys.stderr, flush=True)
        proc = _apt("apt-get", "update", [], arch=arch)
        if proc.returncode != 0 or _errors(proc):
            detail = (_errors(proc) or proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise TailorError(f"apt-get update for {arch} failed ({detail}); check the network and the apt "
                              f"sources, then rerun")
        stamp.write_text(f"{arch}\n")
    return lists


def _apt(tool: str, command: str, args: list[str], cwd: Path | None = None,
         arch: str | None = None) -> subprocess.CompletedProcess:
    """Run ``<tool> <command> -q <sandbox options> <args>`` in C locale (with *arch*'s own lists for a
    foreign architecture); *tool* missing is one line."""
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    if foreign(arch) and command != "update":
        foreign_lists(arch)
    try:
        return subprocess.run([tool, command, "-q", *apt_options(arch), *args], cwd=cwd, capture_output=True,
                              text=True, env=env, stdin=subprocess.DEVNULL)
    except OSError:
        raise TailorError(f"{tool} not found: tailor takes packages and kernel sources from Debian's archive "
                          f"with apt; run it on Debian 12 (./setup.sh)") from None


def _errors(proc: subprocess.CompletedProcess) -> list[str]:
    return [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.startswith(("E:", "Err"))]


# --------------------------------------------------------------------------
# Closures


def closure(packages: list[str], origin: str = "rootfs.packages", arch: str | None = None) -> list[Package]:
    """The closure of *packages* (see the module's docstring) for the Debian architecture *arch*
    (default the host's), sorted by name.

    Asks ``apt-get -s install`` (a simulation: nothing is installed or downloaded). A package apt
    does not know, or a conflict apt cannot solve, is a TailorError starting with *origin*; a package
    the host's architecture has and *arch* has not is one naming both."""
    proc = _apt("apt-get", "-s", ["-o", "APT::Install-Recommends=false", "-o", "APT::Install-Suggests=false",
                                  "-o", "pkgCacheGen::Essential=none", "install", *packages], arch=arch)
    if proc.returncode != 0:
        text = proc.stdout + proc.stderr
        m = re.search(r"Unable to locate package (\S+)", text) or re.search(
            r"Package '?([^' ]+)'? has no installation candidate", text)
        if m and foreign(arch) and host_has(m.group(1)):
            raise TailorError(f"{origin}: package {m.group(1)!r} is not built for {arch} (Debian has it for "
                              f"{host_arch()} only); use a package that {arch} has")
        if m:
            raise TailorError(f"{origin}: package {m.group(1)!r} does not exist in the apt sources; "
                              f"check the name (apt-cache search) or run apt-get update")
        lines = [ln for ln in text.splitlines() if ln.startswith("E:")] or text.strip().splitlines()[-1:]
        raise TailorError(f"{origin}: apt cannot resolve {' '.join(packages)}: {lines[0] if lines else '?'}")
    out = []
    for line in proc.stdout.splitlines():
        m = re.match(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) .*\[(\S+)\]\)", line)
        if m:
            out.append(Package(m.group(1).split(":")[0], m.group(2), m.group(3)))
    if not out:
        raise TailorError(f"{origin}: apt resolved nothing to install for {' '.join(packages)}")
    return sorted(out)


def host_has(package: str) -> bool:
    """True when the host's lists (its own architecture's) have *package* at all."""
    return bool(_apt("apt-cache", "show", ["--no-all-versions", package]).stdout.strip())


def index_sha256(specs: list[str], arch: str | None = None) -> dict[str, str]:
    """``{spec: sha256}`` of the .debs the package lists (signed, checked by apt) describe for *specs*
    (*arch*'s lists for a foreign architecture); a spec the lists do not have is absent."""
    proc = _apt("apt-cache", "show", ["--no-all-versions", *specs], arch=arch)
    out, pkg, ver = {}, None, None
    for line in proc.stdout.splitlines():
        if line.startswith("Package: "):
            pkg = line.split(None, 1)[1]
        elif line.startswith("Version: "):
            ver = line.split(None, 1)[1]
        elif line.startswith("SHA256: ") and pkg and ver:
            out[f"{pkg}={ver}"] = line.split(None, 1)[1].strip()
    return out


# --------------------------------------------------------------------------
# Downloads


def _download(specs: list[str], into: Path, arch: str | None = None) -> None:
    """``apt-get download`` *specs* (of *arch*, default the host's) into the directory *into*; apt's
    failure is one TailorError (:class:`NotInArchive` when its lists have no such package or version)."""
    proc = _apt("apt-get", "download", specs, cwd=into, arch=arch)
    if proc.returncode == 0:
        return
    errors = _errors(proc)
    what = " ".join(specs) if len(specs) <= 3 else f"{len(specs)} packages"
    if any(n in " ".join(errors) for n in NOT_FOUND):
        raise NotInArchive(f"apt-get download {what}: the apt lists do not offer it ({errors[0]}); run "
                           f"`apt-get update` if they are old, then rerun", tuple(specs))
    detail = errors[-1] if errors else (proc.stderr.strip().splitlines() or ["no .deb written"])[-1]
    raise TailorError(f"apt-get download {what} failed ({detail}); check the network and the apt sources, "
                      f"then rerun")


def download(packages: list[Package], cache: Path | None = None, arch: str | None = None) -> list[Path]:
    """The .debs of *packages* (a closure for the Debian architecture *arch*, default the host's) in *cache*
    (default :func:`deb_cache`; a .deb's name says its architecture), in order, fetching the missing ones.

    A cached .deb whose sha256 is not the one the lists give is fetched again. Missing files are
    fetched together into a temporary directory beside the cache (under the cache's lock) and
    renamed into place, so the cache never holds a partial file."""
    cache = makedirs(cache or deb_cache())
    debs = [cache / p.deb_name for p in packages]
    want = index_sha256([p.spec for p in packages], arch)

    def missing() -> list[str]:
        out = []
        for p, path in zip(packages, debs):
            if path.exists() and want.get(p.spec) and sha256_file(path) != want[p.spec]:
                path.unlink()
            if not path.exists():
                out.append(p.spec)
        return out

    if missing():
        with file_lock(cache / ".lock", "the .deb cache"):
            specs = missing()  # another process may have fetched some while this one waited
            if specs:
                scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
                try:
                    print(f"tailor: downloading {len(specs)} package(s) with apt", file=sys.stderr, flush=True)
                    _download(specs, scratch, arch)
                    for f in sorted(scratch.iterdir()):
                        os.replace(f, cache / f.name)
                finally:
                    remove(scratch)
    for path in debs:
        if not path.exists():
            raise TailorError(f"{path.name}: apt did not download it; run apt-get update and retry")
    return debs


def fetch_exact(package: str, version: str, into: Path) -> Path:
    """Download *package* at exactly *version* into the (temporary) directory *into*; return the .deb.

    Nothing is checked here but that apt wrote it: the caller checks it against its pin and renames
    what it keeps into place. :class:`NotInArchive` when the lists do not offer that version."""
    _download([f"{package}={version}"], into)
    debs = sorted(into.glob(f"{package}_*.deb"))
    if not debs:
        raise TailorError(f"apt-get download {package}={version} wrote no .deb; check the apt sources, then rerun")
    return debs[0]


# --------------------------------------------------------------------------
# Extraction


def extract(debs: list[Path], dest: Path) -> None:
    """Unpack every .deb into *dest* with ``dpkg-deb -x`` (in order; later files win). No maintainer
    script runs and nothing is recorded as installed: *dest* is a plain tree."""
    makedirs(dest)
    for deb in debs:
        proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True)
        if proc.returncode != 0:
            if "No space left on device" in proc.stderr:  # not the .deb's fault: say so, in one line
                raise TailorError(f"{dest}: no space left on device; free some space (e.g. `doit clean`) and rerun")
            first = (proc.stderr.strip().splitlines() or ["no message"])[0][:200]
            raise TailorError(f"{deb.name}: dpkg-deb cannot extract it ({first}); "
                              f"delete it from {deb.parent} and retry")


def extract_member(deb: Path, member: str, dest: Path, hint: str = "") -> str:
    """Copy the one file *member* (an in-package path such as ``usr/src/linux-source-6.1.tar.xz``) out
    of *deb* to *dest*, a temporary name the caller renames once it has checked the file; return its
    sha256. A .deb without that file is a TailorError ending with *hint* (what that means)."""
    names = {member.lstrip("/"), "./" + member.lstrip("/")}
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    digest = hashlib.sha256()
    found = False
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
            for info in tf:
                if info.name not in names or not info.isfile():
                    continue
                src = tf.extractfile(info)
                with open(dest, "wb") as f:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        f.write(block)
                found = True
                break
    except tarfile.TarError as e:
        raise TailorError(f"{deb.name}: not a readable Debian package ({e})") from None
    finally:
        proc.stdout.close()
        proc.kill()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.wait()
    if not found:
        why = f" (dpkg-deb: {err.splitlines()[-1]})" if err else ""
        raise TailorError(f"{deb.name}: holds no {member.lstrip('/')}{why}" + (f"; {hint}" if hint else ""))
    return digest.hexdigest()


# --------------------------------------------------------------------------
# Versions


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as Debian orders versions *a* and *b* (``dpkg --compare-versions``)."""
    if a == b:
        return 0
    try:
        lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b], capture_output=True).returncode == 0
    except OSError:
        raise TailorError("dpkg not found: comparing Debian versions needs it; run tailor on Debian 12") from None
    return -1 if lt else 1


def archive_versions(package: str) -> list[str]:
    """The versions of *package* the apt lists offer, newest first (empty if they know none)."""
    proc = _apt("apt-cache", "madison", [package])
    versions = set()
    for line in proc.stdout.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) >= 3 and parts[0] == package and parts[1]:
            versions.add(parts[1])
    return sorted(versions, key=functools.cmp_to_key(compare_versions), reverse=True)
