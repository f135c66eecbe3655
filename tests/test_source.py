"""The Debian kernel source pin: fetched by exact version, checked by sha256, whatever is installed.

The fast tests serve real .deb files (built here with dpkg-deb) through a fake ``apt-get`` and
``apt-cache`` on PATH, so every path of the source stage runs in seconds: the installed tarball
differs from the pin, the pinned version is fetched and checked, a corrupt cache is fetched
again, the archive serves another build, the version has left the archive, and pin-source picks
the newest version by Debian's ordering. One slow test fetches the real pinned package from
Debian's archive.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tailor import debian, source
from tailor.errors import TailorError
from tailor.recipe import Source

PACKAGE = "linux-source-9.9"

FAKE_APT_GET = """#!{python}
import os, shutil, sys
from pathlib import Path
archive = Path(os.environ["FAKE_ARCHIVE"])
with open(archive / "calls.log", "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
spec = sys.argv[-1]
package, _, version = spec.partition("=")
deb = archive / f"{{package}}_{{version}}_all.deb"
if sys.argv[1] != "download" or not deb.exists():
    print(f"E: Version '{{version}}' for '{{package}}' was not found", file=sys.stderr)
    sys.exit(100)
shutil.copyfile(deb, Path.cwd() / deb.name)
"""

FAKE_APT_CACHE = """#!{python}
import os, sys
from pathlib import Path
archive = Path(os.environ["FAKE_ARCHIVE"])
package = sys.argv[-1]
for deb in sorted(archive.glob(f"{{package}}_*_all.deb")):
    version = deb.name[len(package) + 1:-len("_all.deb")]
    print(f"{{package}} | {{version}} | fake://archive main amd64 Packages")
"""


def fake_kernel_tarball(path: Path, marker: str) -> str:
    """A tiny kernel-like tar.xz (Kconfig, Makefile and a marker file) at *path*; returns its sha256."""
    top = path.parent / f"src-{marker}"
    (top / "linux").mkdir(parents=True)
    (top / "linux" / "Kconfig").write_text('mainmenu "fake"\n')
    (top / "linux" / "Makefile").write_text("VERSION = 9\n")
    (top / "linux" / "MARKER").write_text(marker + "\n")
    with tarfile.open(path, "w:xz") as tf:
        tf.add(top / "linux", arcname="linux")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_deb(archive: Path, version: str, marker: str) -> tuple[str, str]:
    """A real .deb of PACKAGE at *version* carrying a fake tarball; returns (deb sha256, tarball sha256)."""
    root = archive / f"root-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr" / "src").mkdir(parents=True)
    tar_sha = fake_kernel_tarball(root / "usr" / "src" / f"{PACKAGE}.tar.xz", marker)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {PACKAGE}\nVersion: {version}\nArchitecture: all\nMaintainer: tailor tests <t@example.org>\n"
        f"Description: fake kernel source\n")
    deb = archive / f"{PACKAGE}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    return hashlib.sha256(deb.read_bytes()).hexdigest(), tar_sha


@pytest.fixture
def archive(tmp_path, monkeypatch):
    """A fake Debian archive with PACKAGE at three versions, a fake apt on PATH, an empty out/,
    and an 'installed' /usr/src holding a tarball that is none of them."""
    arch = tmp_path / "archive"
    arch.mkdir()
    builds = {v: build_deb(arch, v, f"v{v}") for v in ("9.9.1-1", "9.9.1-2", "9.9.1-10")}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("apt-get", FAKE_APT_GET), ("apt-cache", FAKE_APT_CACHE)):
        (bin_dir / name).write_text(text.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ARCHIVE", str(arch))
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    installed = tmp_path / "usr-src"
    installed.mkdir()
    fake_kernel_tarball(installed / f"{PACKAGE}.tar.xz", "installed-newer")
    monkeypatch.setattr(source, "DEBIAN_SRC_DIR", installed)
    lock = tmp_path / "kernel-sources.lock"
    deb_sha, tar_sha = builds["9.9.1-2"]
    lock.write_text(json.dumps({PACKAGE: {"version": "9.9.1-2", "sha256": tar_sha, "deb_sha256": deb_sha}}))
    return {"dir": arch, "builds": builds, "lock": lock, "installed": installed}


def calls(arch) -> list[str]:
    log = arch["dir"] / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def ref(arch) -> source.SourceRef:
    return source.ref_for(Source(package=PACKAGE), lock_path=arch["lock"])


def test_installed_tarball_that_differs_is_not_used(archive):
    """The installed tarball is another version: the pinned one is fetched, checked and unpacked."""
    tree = source.prepare(ref(archive))
    assert (tree / "MARKER").read_text() == "v9.9.1-2\n"
    cached = source.cached_tarball(PACKAGE, "9.9.1-2")
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == archive["builds"]["9.9.1-2"][1]
    (call,) = calls(archive)  # one apt-get download, of exactly the pinned version, under debian's sandbox rule
    assert call == " ".join(["download", "-q", *debian.apt_options(), "linux-source-9.9=9.9.1-2"])
    assert not [p for p in cached.parent.parent.iterdir() if p.name.startswith(".")]  # no download left over


def test_cached_tarball_is_reused_and_rechecked(archive):
    r = ref(archive)
    first = source.fetch(r)
    assert len(calls(archive)) == 1
    assert source.fetch(r) == first and len(calls(archive)) == 1  # reused, not fetched again
    first.write_bytes(b"not the pinned tarball")  # a corrupt cache is detected by its sha256 ...
    again = source.fetch(r)  # ... and fetched again
    assert len(calls(archive)) == 2
    assert hashlib.sha256(again.read_bytes()).hexdigest() == r.sha256


def test_installed_tarball_that_matches_is_used_without_download(archive):
    deb_sha, tar_sha = archive["builds"]["9.9.1-2"]
    pinned = source.download_debian(PACKAGE, "9.9.1-2", deb_sha, tar_sha)[0]
    os.replace(pinned, archive["installed"] / f"{PACKAGE}.tar.xz")
    before = len(calls(archive))
    assert source.fetch(ref(archive)) == archive["installed"] / f"{PACKAGE}.tar.xz"
    assert len(calls(archive)) == before


def test_deb_of_another_build_is_refused(archive):
    """The archive serves a .deb whose sha256 is not the pinned one: refused, nothing cached."""
    data = json.loads(archive["lock"].read_text())
    data[PACKAGE]["deb_sha256"] = "0" * 64
    archive["lock"].write_text(json.dumps(data))
    with pytest.raises(TailorError, match=r"linux-source-9.9_9.9.1-2_all.deb: sha256 is [0-9a-f]{64}, "
                                          r"kernel-sources.lock pins 0{64}"):
        source.fetch(ref(archive))
    assert not source.cached_tarball(PACKAGE, "9.9.1-2").exists()


def test_tarball_that_is_not_the_pinned_one_is_refused(archive):
    data = json.loads(archive["lock"].read_text())
    data[PACKAGE]["sha256"] = "f" * 64
    data[PACKAGE].pop("deb_sha256")
    archive["lock"].write_text(json.dumps(data))
    with pytest.raises(TailorError, match=r"its tarball's sha256 is [0-9a-f]{64}, kernel-sources.lock pins f{64}"):
        source.fetch(ref(archive))
    cache = source.debian_cache()
    assert not source.cached_tarball(PACKAGE, "9.9.1-2").exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]


def test_version_gone_from_the_archive_names_what_it_offers(archive):
    data = json.loads(archive["lock"].read_text())
    data[PACKAGE]["version"] = "9.9.0-1"
    archive["lock"].write_text(json.dumps(data))
    with pytest.raises(TailorError) as e:
        source.fetch(ref(archive))
    msg = str(e.value)
    assert msg == ("kernel-sources.lock pins linux-source-9.9 9.9.0-1, which Debian's archive does not offer "
                   "(it offers 9.9.1-10, 9.9.1-2, 9.9.1-1); run `apt-get update` if the package lists are old, "
                   "else re-pin with `python -m tailor pin-source linux-source-9.9` (newest) or "
                   "`python -m tailor pin-source linux-source-9.9=VERSION`")


def test_pin_source_takes_the_newest_by_debian_order(archive):
    lock = archive["lock"]
    entry = source.pin(PACKAGE, lock)
    assert entry["version"] == "9.9.1-10"  # newer than 9.9.1-2 for dpkg, older as a string
    assert (entry["deb_sha256"], entry["sha256"]) == archive["builds"]["9.9.1-10"]
    assert json.loads(lock.read_text())[PACKAGE] == entry
    # the pinned tarball is already in the cache: the next build downloads nothing
    before = len(calls(archive))
    source.fetch(ref(archive))
    assert len(calls(archive)) == before


def test_pin_source_exact_version_and_unknown_version(archive):
    lock = archive["lock"]
    assert source.pin(f"{PACKAGE}=9.9.1-1", lock)["version"] == "9.9.1-1"
    before = lock.read_text()
    with pytest.raises(TailorError, match=r"does not offer linux-source-9.9 9.9.2-1; it offers 9.9.1-10, "):
        source.pin(f"{PACKAGE}=9.9.2-1", lock)
    assert lock.read_text() == before


def test_pin_source_command_line(archive, tmp_path):
    """``python -m tailor pin-source`` prints what it pinned; a bad version is one line, exit 1."""
    env = dict(os.environ)
    code = ("import sys; from pathlib import Path; from tailor import source; "
            f"source.LOCK_FILE = Path({str(archive['lock'])!r}); "
            f"source.DEBIAN_SRC_DIR = Path({str(archive['installed'])!r}); "
            "from tailor.__main__ import main; sys.exit(main(sys.argv[1:]))")
    root = Path(__file__).resolve().parent.parent
    project_lock = (root / "kernel-sources.lock").read_bytes()
    ok = subprocess.run([sys.executable, "-c", code, "pin-source", PACKAGE], cwd=root, env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert f"pinned {PACKAGE} 9.9.1-10 in " in ok.stdout
    bad = subprocess.run([sys.executable, "-c", code, "pin-source", f"{PACKAGE}=1-1"], cwd=root, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        f"tailor: error: pin-source: Debian's archive does not offer {PACKAGE} 1-1; it offers 9.9.1-10, "
        "9.9.1-2, 9.9.1-1"]
    assert PACKAGE in json.loads(archive["lock"].read_text())  # the lock it was pointed at ...
    assert (root / "kernel-sources.lock").read_bytes() == project_lock  # ... and never the project's


@pytest.mark.slow
def test_real_archive_serves_the_pinned_source(tmp_path, monkeypatch):
    """The project's own pin, fetched from Debian's archive into an empty cache with nothing
    installed, has the pinned sha256 (the CI machine may have any linux-source-6.1 installed)."""
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    monkeypatch.setattr(source, "DEBIAN_SRC_DIR", tmp_path / "nothing-installed")
    r = source.ref_for(Source())
    tarball = source.fetch(r)
    assert tarball == source.cached_tarball(r.package, r.version)
    assert hashlib.sha256(tarball.read_bytes()).hexdigest() == r.sha256
