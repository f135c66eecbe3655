"""Releases: checksums, tree comparison, the .deb, the OCI layout for urunc, the Firecracker config.

The fast tests use small fake artefacts (a fake bzImage with a real setup
header, a fake rootfs, a fake boot result) and need no kernel build. The
slow ones run ``doit release:hello`` and ``doit verify_reproducible`` for
real in a copy of the project, like tests/test_pipeline.py.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import fakes
from conftest import project_copy, run_doit

from tailor import boot, kernel, release, rootfs
from tailor.tasks import publish
from tailor.release import repro as release_repro
from tailor.errors import TailorError
from tailor.kinds import Arch
from tailor.recipe import load

ROOT = Path(__file__).resolve().parent.parent
EPOCH = 1672531200
IDENTITY = "ab" * 32
KREL = "6.1.99"

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")


def fake_bzimage(path: Path, version: str = KREL) -> Path:
    """A file with a bzImage setup header whose kernel_version string says *version*."""
    data = bytearray(0x1000)
    data[0x202:0x206] = b"HdrS"
    data[0x20E:0x210] = (0x300 - 0x200).to_bytes(2, "little")
    text = f"{version} (tailor@tailor) #1 Sun Jan  1 00:00:00 UTC 2023".encode() + b"\0"
    data[0x300:0x300 + len(text)] = text
    path.write_bytes(bytes(data) + b"payload" * 100)
    return path


def fake_arm64_image(path: Path, version: str = KREL) -> Path:
    """A file with an arm64 Image header (``ARM\\x64`` at 0x38) and the kernel's banner further in."""
    data = bytearray(0x2000)
    data[0x38:0x3C] = b"ARM\x64"
    banner = f"Linux version {version} (tailor@tailor) (aarch64-linux-gnu-gcc 12.2.0) #1 SMP\n".encode()
    data[0x1800:0x1800 + len(banner)] = banner
    path.write_bytes(bytes(data) + b"payload" * 100)
    return path


def fake_kernel_files(d: Path, arch: str = "x86_64") -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    boot = {"bzImage": fake_bzimage(d / "bzImage")} if arch == "x86_64" else {"Image": fake_arm64_image(d / "Image")}
    files = {**boot, "vmlinux": d / "vmlinux", "System.map": d / "System.map", "config": d / "config"}
    files["vmlinux"].write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    files["System.map"].write_text("ffffffff81000000 T _text\nffffffff81000040 T startup_64\n")
    files["config"].write_text("# fake\nCONFIG_VIRTIO_MMIO=y\nCONFIG_PRINTK=y\n")
    return files


# --------------------------------------------------------------------------
# Checksums and tree comparison


def test_write_sums_passes_sha256sum_c(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one").write_bytes(b"1" * 5000)
    (tmp_path / "two words.txt").write_text("x")
    (tmp_path / ".lock").write_text("")
    sums = release.write_sums(tmp_path)
    text = sums.read_text()
    assert ".lock" not in text and "SHA256SUMS" not in text
    assert text.splitlines() == [f"{hashlib.sha256(b'1' * 5000).hexdigest()}  a/one",
                                 f"{hashlib.sha256(b'x').hexdigest()}  two words.txt"]
    proc = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert release.check_sums(tmp_path) == []
    (tmp_path / "a" / "one").write_bytes(b"2")
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path, capture_output=True).returncode != 0
    assert release.check_sums(tmp_path) == ["a/one: sha256 differs"]


def test_compare_trees_reports_the_first_differing_offset(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "sub").mkdir(parents=True)
        (d / "same").write_bytes(b"s" * 10)
    data = bytes(range(256)) * 40
    (a / "sub" / "big").write_bytes(data)
    (b / "sub" / "big").write_bytes(data[:5000] + b"\xff" + data[5001:])
    (a / "short").write_bytes(b"abc")
    (b / "short").write_bytes(b"abcdef")
    (a / "only-a").write_text("1")
    (b / "only-b").write_text("1")
    diffs = {d["path"]: d for d in release.compare_trees(a, b)}
    assert set(diffs) == {"sub/big", "short", "only-a", "only-b"}
    assert diffs["sub/big"]["kind"] == "differs" and diffs["sub/big"]["offset"] == 5000
    assert diffs["short"]["offset"] == 3 and (diffs["short"]["size_a"], diffs["short"]["size_b"]) == (3, 6)
    assert diffs["only-a"]["kind"] == "only in a" and diffs["only-b"]["kind"] == "only in b"
    assert "differs at byte offset 5000 (0x1388)" in release.describe_difference(diffs["sub/big"])
    assert release.compare_trees(a / "sub", a / "sub") == []
    assert release.first_difference(a / "same", b / "same") is None


def test_measurement_only_allows_the_boot_time_and_nothing_else(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, t in ((a, 0.71), (b, 0.93)):
        measured = fakes.release_manifest(d / "x" / "manifest.json", "x").boot_test
        fakes.release_manifest(d / "x" / "manifest.json", "x", boot_test={**measured, "time_to_init_s": t})
        (d / "SHA256SUMS").write_text(f"{'1' * 64}  x/bzImage\n{hashlib.sha256(str(t).encode()).hexdigest()}"
                                      f"  x/manifest.json\n")
    diffs = release.compare_trees(a, b)
    assert len(diffs) == 2 and all(release.measurement_only(a, b, d) for d in diffs)
    fakes.release_manifest(b / "x" / "manifest.json", "y")
    manifest_diff = [d for d in release.compare_trees(a, b) if d["path"] == "x/manifest.json"][0]
    assert not release.measurement_only(a, b, manifest_diff)
    (b / "x" / "manifest.json").write_text('{"app": "x"}')  # damaged: named, not taken for a difference
    with pytest.raises(TailorError, match=r"x/manifest.json: no 'format' key"):
        release.measurement_only(a, b, manifest_diff)


def fake_repro(monkeypatch, tmp_path, vmlinux_b: bytes):
    """verify_reproducible with the two doit builds replaced by writing small release trees."""
    from tailor import source

    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    monkeypatch.setattr(source, "prepare", lambda ref: None)
    monkeypatch.setattr(release_repro, "copy_project", lambda dest: (dest / "x").mkdir(parents=True))
    monkeypatch.setattr(release_repro, "_prepare_copy", lambda dest, ref, snap: dest.mkdir(parents=True, exist_ok=True))
    builds = []

    def build(dest, app, version, epoch, use_ccache, label):
        app_dir = dest / "out" / "release" / version / app
        app_dir.mkdir(parents=True)
        (app_dir / "vmlinux").write_bytes(vmlinux_b if builds else b"\x7fELF" + b"\0" * 100)
        measured = fakes.release_manifest(app_dir / "manifest.json", app).boot_test
        fakes.release_manifest(app_dir / "manifest.json", app, boot_test={**measured, "time_to_init_s": len(builds)})
        release.write_sums(app_dir.parent)
        builds.append(dest)
        return {"dir": str(dest), "started_utc": f"2023-01-01T00:00:0{len(builds)}Z", "seconds": 1,
                "ccache": use_ccache}

    monkeypatch.setattr(release_repro, "_build_copy", build)
    return tmp_path / "out" / "repro"


def test_verify_reproducible_passes_when_only_the_boot_time_differs(monkeypatch, tmp_path):
    repro = fake_repro(monkeypatch, tmp_path, b"\x7fELF" + b"\0" * 100)
    report = release.verify_reproducible("hello", "0.1.0")
    assert report["reproducible"] and report["differences"] == []
    assert report["measurement_only"] == ["SHA256SUMS", "hello/manifest.json"]
    assert json.loads((repro / "report.json").read_text())["identical"] == 1


def test_verify_reproducible_names_the_file_and_offset(monkeypatch, tmp_path):
    repro = fake_repro(monkeypatch, tmp_path, b"\x7fELF" + b"\0" * 10 + b"\1" + b"\0" * 89)
    with pytest.raises(TailorError, match=r"^hello is not reproducible: hello/vmlinux: differs at byte offset 14 "
                                          r"\(0xe\); sizes 104 and 104 \(2 file\(s\) differ"):
        release.verify_reproducible("hello", "0.1.0")
    report = json.loads((repro / "report.json").read_text())
    assert [d["path"] for d in report["differences"]] == ["hello/vmlinux", "SHA256SUMS"]
    if shutil.which("diffoscope"):
        assert (repro / "diffoscope" / "hello__vmlinux.txt").is_file()


# --------------------------------------------------------------------------
# Deterministic tar and the OCI layout


def test_deterministic_tar_ignores_times_and_owners(tmp_path):
    src = tmp_path / "kernel"
    src.write_bytes(b"k" * 3000)
    one = release.deterministic_tar([("/.boot/kernel", src, 0o644), ("urunc.json", b"{}", 0o644)],
                                    tmp_path / "one.tar", EPOCH)
    an_hour_later = src.stat().st_mtime + 3600
    os.utime(src, (an_hour_later, an_hour_later))
    two = release.deterministic_tar([("urunc.json", b"{}", 0o644), ("/.boot/kernel", src, 0o644)],
                                    tmp_path / "two.tar", EPOCH)
    assert one.read_bytes() == two.read_bytes()
    with tarfile.open(one) as tf:
        members = tf.getmembers()
    assert [m.name for m in members] == [".boot", ".boot/kernel", "urunc.json"]
    assert all(m.mtime == EPOCH and m.uid == 0 and m.gid == 0 and m.uname == "" and m.gname == "" for m in members)
    assert members[0].isdir() and members[1].size == 3000


def walk_layout(layout: Path) -> dict:
    """Walk an OCI layout by hand: index -> manifest -> config and layers, checking every digest and size."""
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["schemaVersion"] == 2 and len(index["manifests"]) == 1

    def blob(desc):
        algo, hexdigest = desc["digest"].split(":")
        data = (layout / "blobs" / algo / hexdigest).read_bytes()
        assert algo == "sha256" and hashlib.sha256(data).hexdigest() == hexdigest
        assert len(data) == desc["size"]
        return data

    mdesc = index["manifests"][0]
    assert mdesc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    manifest = json.loads(blob(mdesc))
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == mdesc["mediaType"]
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    config = json.loads(blob(manifest["config"]))
    layers = {}
    for ldesc in manifest["layers"]:
        assert ldesc["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
        with tarfile.open(fileobj=io.BytesIO(blob(ldesc))) as tf:
            for m in tf.getmembers():
                if m.isfile():
                    layers[m.name] = tf.extractfile(m).read()
    assert config["rootfs"] == {"type": "layers", "diff_ids": [d["digest"] for d in manifest["layers"]]}
    referenced = {mdesc["digest"], manifest["config"]["digest"]} | {d["digest"] for d in manifest["layers"]}
    assert {"sha256:" + p.name for p in (layout / "blobs" / "sha256").iterdir()} == referenced
    return {"index": index, "manifest": manifest, "config": config, "files": layers}


@pytest.mark.parametrize("fmt", ["cpio", "ext2"])
def test_oci_layout_for_urunc(tmp_path, fmt):
    kfile = fake_kernel_files(tmp_path / "k")["vmlinux"]
    image = tmp_path / f"rootfs.{fmt}"
    image.write_bytes(b"070701" + b"r" * 2000)
    argv = ["/usr/bin/redis-server", "--save", "", "--port", "6379"]

    def make(dest):
        return release.oci_layout(dest, app="redis", version="0.1.0", kernel=kfile, rootfs=image,
                                  rootfs_format=fmt, argv=argv, env=["HOME=/root", "A=b c"], workdir="/",
                                  hypervisor="firecracker", epoch=EPOCH)

    info = make(tmp_path / "oci")
    walked = walk_layout(tmp_path / "oci")
    assert release.verify_oci(tmp_path / "oci")["manifest"] == walked["manifest"]
    ann = walked["manifest"]["annotations"]
    assert ann["com.urunc.unikernel.unikernelType"] == "linux"
    assert ann["com.urunc.unikernel.hypervisor"] == "firecracker"
    assert ann["com.urunc.unikernel.binary"] == "/.boot/kernel"
    assert ann["com.urunc.unikernel.cmdline"] == "/usr/bin/redis-server --save '' --port 6379"
    if fmt == "cpio":
        assert ann["com.urunc.unikernel.initrd"] == "/.boot/rootfs" and "com.urunc.unikernel.block" not in ann
    else:
        assert ann["com.urunc.unikernel.block"] == "/.boot/rootfs"
        assert ann["com.urunc.unikernel.blkMntPoint"] == "/" and "com.urunc.unikernel.initrd" not in ann
    assert walked["files"][".boot/kernel"] == kfile.read_bytes()
    assert walked["files"][".boot/rootfs"] == image.read_bytes()
    urunc = json.loads(walked["files"]["urunc.json"])
    urunc_plain = {k: base64.b64decode(v).decode() for k, v in urunc.items()}
    assert urunc_plain == {k: v for k, v in ann.items() if k.startswith("com.urunc.")}
    cfg = walked["config"]
    assert cfg["config"]["Entrypoint"] == argv[:1] and cfg["config"]["Cmd"] == argv[1:]
    assert cfg["config"]["Env"] == ["HOME=/root", "A=b c"] and cfg["architecture"] == "amd64"
    assert cfg["created"] == "2023-01-01T00:00:00Z"
    ref = walked["index"]["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
    assert ref == "0.1.0" == info["ref"] and info["manifest"]["digest"] == walked["index"]["manifests"][0]["digest"]
    # same inputs, another directory, later: the same bytes
    make(tmp_path / "again")
    assert release.compare_trees(tmp_path / "oci", tmp_path / "again") == []


def test_verify_oci_finds_a_corrupt_blob(tmp_path):
    files = fake_kernel_files(tmp_path / "k")
    release.oci_layout(tmp_path / "oci", app="x", version="1.0", kernel=files["bzImage"], rootfs=files["config"],
                       rootfs_format="cpio", argv=["/x"], env=[], workdir="/", hypervisor="qemu", epoch=EPOCH)
    manifest = json.loads((tmp_path / "oci" / "index.json").read_text())["manifests"][0]
    blob = json.loads((tmp_path / "oci" / "blobs" / "sha256" / manifest["digest"].split(":")[1]).read_text())
    layer = tmp_path / "oci" / "blobs" / "sha256" / blob["layers"][0]["digest"].split(":")[1]
    layer.write_bytes(layer.read_bytes()[:-1] + b"\1")
    with pytest.raises(TailorError, match=r"oci: layer 0 sha256:[0-9a-f]{12} is corrupt \(its content has sha256:"):
        release.verify_oci(tmp_path / "oci")


# --------------------------------------------------------------------------
# Firecracker


def check_firecracker_fields(cfg: dict) -> None:
    """The config-file fields of Firecracker's API description, with their JSON types."""
    assert set(cfg) <= {"boot-source", "drives", "machine-config", "network-interfaces", "vsock", "logger",
                        "metrics", "balloon", "mmds-config", "entropy"}
    bs = cfg["boot-source"]
    assert set(bs) <= {"kernel_image_path", "boot_args", "initrd_path"} and isinstance(bs["kernel_image_path"], str)
    assert isinstance(bs["boot_args"], str)
    mc = cfg["machine-config"]
    assert type(mc["vcpu_count"]) is int and type(mc["mem_size_mib"]) is int and type(mc["smt"]) is bool
    for d in cfg["drives"]:
        assert set(d) == {"drive_id", "path_on_host", "is_root_device", "is_read_only"}
        assert type(d["is_root_device"]) is bool and type(d["is_read_only"]) is bool
    for n in cfg["network-interfaces"]:
        assert set(n) == {"iface_id", "host_dev_name", "guest_mac"}
        assert all(isinstance(v, str) for v in n.values())
    release.check_firecracker_config(cfg)


def test_firecracker_config_initrd_with_network():
    cfg = json.loads(release.firecracker_config(kernel="vmlinux", rootfs="rootfs.cpio", rootfs_format="cpio",
                                                memory=256, network=True, cmdline_extra="quiet"))
    check_firecracker_fields(cfg)
    assert cfg["boot-source"] == {"kernel_image_path": "vmlinux", "initrd_path": "rootfs.cpio",
                                  "boot_args": "console=ttyS0 reboot=k panic=1 pci=off rdinit=/init quiet"}
    assert cfg["drives"] == [] and cfg["machine-config"]["mem_size_mib"] == 256
    assert cfg["machine-config"]["vcpu_count"] == 1
    assert cfg["network-interfaces"] == [{"iface_id": "eth0", "host_dev_name": "tap0",
                                          "guest_mac": "06:00:0a:00:02:0f"}]


def test_firecracker_config_block_root_without_network():
    cfg = json.loads(release.firecracker_config(kernel="vmlinux", rootfs="rootfs.ext2", rootfs_format="ext2",
                                                memory=64, network=False))
    check_firecracker_fields(cfg)
    assert "initrd_path" not in cfg["boot-source"]
    assert cfg["boot-source"]["boot_args"].endswith("root=/dev/vda rw init=/init")
    assert cfg["drives"] == [{"drive_id": "rootfs", "path_on_host": "rootfs.ext2", "is_root_device": True,
                              "is_read_only": False}]
    assert cfg["network-interfaces"] == []


# --------------------------------------------------------------------------
# The Debian package


def test_kernel_release_from_the_setup_header(tmp_path):
    assert release.kernel_release(fake_bzimage(tmp_path / "bz", "6.1.192")) == "6.1.192"
    assert release.kernel_release(fake_arm64_image(tmp_path / "Image", "6.12.118")) == "6.12.118"
    (tmp_path / "not").write_bytes(b"\0" * 4096)
    with pytest.raises(TailorError, match="neither a bzImage .* nor an arm64 Image"):
        release.kernel_release(tmp_path / "not")
    (tmp_path / "bannerless").write_bytes(fake_arm64_image(tmp_path / "x").read_bytes().replace(b"Linux version", b"L"))
    with pytest.raises(TailorError, match="without a 'Linux version' banner"):
        release.kernel_release(tmp_path / "bannerless")


def build_fake_deb(dest: Path, files: dict[str, Path], app: str = "redis", arch: Arch = Arch.X86_64) -> Path:
    return release.build_deb(dest, app=app, kernel_rel=KREL, version="0.1.0", image=files[arch.boot_image[0]],
                             config=files["config"], system_map=files["System.map"], epoch=EPOCH,
                             description="a test", source_label="linux-source-6.1 6.1.99-1",
                             source_sha256="0" * 64, config_identity=IDENTITY, arch=arch)


def deb_times(deb: Path) -> dict[str, int]:
    """{name: mtime} of a .deb's ar members and of every entry of its tar members ("member:entry")."""
    blob = deb.read_bytes()
    assert blob.startswith(b"!<arch>\n")
    times, pos = {}, 8
    while pos < len(blob):
        header = blob[pos:pos + 60]
        name, mtime, size = header[:16].decode().strip().rstrip("/"), int(header[16:28]), int(header[48:58])
        times[name] = mtime
        if ".tar" in name:
            with tarfile.open(fileobj=io.BytesIO(blob[pos + 60:pos + 60 + size])) as tf:
                times.update((f"{name}:{m.name}", int(m.mtime)) for m in tf.getmembers())
        pos += 60 + size + size % 2
    return times


@needs_dpkg
def test_deb_is_reproducible_and_installs_into_a_scratch_root(tmp_path):
    files = fake_kernel_files(tmp_path / "k")
    one = build_fake_deb(tmp_path / "one", files)
    assert one.name == "linux-image-6.1-tailor-redis_0.1.0_amd64.deb"
    for f in files.values():
        an_hour_later = f.stat().st_mtime + 3600
        os.utime(f, (an_hour_later, an_hour_later))
    two = build_fake_deb(tmp_path / "second-dir", files)
    assert one.read_bytes() == two.read_bytes()
    # ... and nothing in it depends on when it was built: every time in the package is the epoch
    times = deb_times(one)
    assert {"debian-binary", "control.tar.xz", "data.tar.xz", "data.tar.xz:./boot"} <= times.keys()
    assert set(times.values()) == {EPOCH}, {k: v for k, v in times.items() if v != EPOCH}
    fields = subprocess.run(["dpkg-deb", "-f", str(one)], capture_output=True, text=True, check=True).stdout
    assert "Package: linux-image-6.1-tailor-redis\n" in fields and "Version: 0.1.0\n" in fields
    assert "Architecture: amd64\n" in fields and "Section: kernel\n" in fields
    listing = subprocess.run(["dpkg-deb", "-c", str(one)], capture_output=True, text=True, check=True).stdout
    assert all(" root/root " in ln and " 2023-01-01 00:00 " in ln for ln in listing.splitlines())
    scratch = tmp_path / "scratch"
    installed = release.install_deb(one, scratch)
    for name, src in (("vmlinuz", "bzImage"), ("config", "config"), ("System.map", "System.map")):
        path = f"/boot/{name}-{KREL}-tailor-redis"
        assert path in installed
        assert (scratch / path.lstrip("/")).read_bytes() == files[src].read_bytes()
    doc = scratch / "usr/share/doc/linux-image-6.1-tailor-redis"
    assert "GPL-2" in (doc / "copyright").read_text()
    import gzip

    changelog = gzip.decompress((doc / "changelog.gz").read_bytes()).decode()
    assert changelog.startswith("linux-image-6.1-tailor-redis (0.1.0) unstable; urgency=medium")
    assert "Sun, 01 Jan 2023 00:00:00 +0000" in changelog
    status = (scratch / "var/lib/dpkg/status").read_text()
    assert "Package: linux-image-6.1-tailor-redis\nStatus: install ok installed" in status


@needs_dpkg
def test_arm64_deb_says_its_architecture_and_ships_the_image(tmp_path):
    files = fake_kernel_files(tmp_path / "k", "arm64")
    deb = build_fake_deb(tmp_path / "d", files, arch=Arch.ARM64)
    assert deb.name == "linux-image-6.1-tailor-redis_0.1.0_arm64.deb"
    fields = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "Architecture: arm64\n" in fields and "qemu-system-aarch64 -M virt" in fields
    listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(listing)) as tf:
        vmlinuz = tf.extractfile(f"./boot/vmlinuz-{KREL}-tailor-redis").read()
    assert vmlinuz == files["Image"].read_bytes()


@needs_dpkg
@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian not installed")
@pytest.mark.parametrize("arch", list(Arch))
def test_lintian_reports_no_errors_or_warnings(tmp_path, arch):
    deb = build_fake_deb(tmp_path, fake_kernel_files(tmp_path / "k", str(arch)), app="my_app", arch=arch)
    proc = subprocess.run(["lintian", "--pedantic", "-I", str(deb)], capture_output=True, text=True)
    tags = [ln for ln in proc.stdout.splitlines() if ln[:2] in ("E:", "W:", "I:", "P:")]
    assert tags == [] and proc.returncode == 0, proc.stdout + proc.stderr


def test_version_and_maintainer_are_checked(monkeypatch):
    monkeypatch.setenv("TAILOR_RELEASE_VERSION", "1.0-beta/2")
    with pytest.raises(TailorError, match="TAILOR_RELEASE_VERSION='1.0-beta/2'"):
        release.release_version()
    monkeypatch.setenv("TAILOR_RELEASE_VERSION", "2.0~rc1")
    assert release.release_version() == "2.0~rc1"
    monkeypatch.setenv("TAILOR_DEB_MAINTAINER", "nobody")
    with pytest.raises(TailorError, match="Full Name <address@domain>"):
        release.maintainer()


# --------------------------------------------------------------------------
# A whole app's release from fake pipeline outputs


RECIPE = """\
description: a fake app for the release tests
kernel:
  base: [lupine-base]
rootfs:
  packages: [hello]
  format: cpio
app:
  command: /usr/bin/hello
  args: [--greeting, "hi there"]
  network: true
test:
  ready: hi
  memory: 96
"""


FAKE_TOOLCHAIN = {"gcc": {"version": "gcc (Debian 99.1.0-1) 99.1.0", "package": "gcc-99 99.1.0-1"},
                  "binutils": {"version": "GNU ld (GNU Binutils for Debian) 9.99", "package": "binutils 9.99-1"}}
"""What the fake kernel's kernel.json says built it: no host has it, so a manifest that shows it
copied it from kernel.json rather than asking the host."""


ARM64_RECIPE = RECIPE.replace("kernel:\n", "arch: arm64\ngeneral: false\nkernel:\n", 1)

ARM64_TOOLCHAIN = {"gcc": {"version": "aarch64-linux-gnu-gcc (Debian 99.1.0-1) 99.1.0",
                           "package": "gcc-99-aarch64-linux-gnu 99.1.0-1cross1"},
                   "binutils": {"version": "GNU ld (GNU Binutils for Debian) 9.99",
                                "package": "binutils-aarch64-linux-gnu 9.99-1"}}


def fake_pipeline(out: Path, tmp: Path, passed: bool = True, arch: Arch = Arch.X86_64):
    """Fake outputs of every stage for the recipe ``fakeapp`` (an *arch* recipe) under TAILOR_OUT=*out*;
    return the recipe."""
    recipes = tmp / "recipes"
    recipes.mkdir(parents=True, exist_ok=True)
    (recipes / "fakeapp.yaml").write_text(RECIPE if arch is Arch.X86_64 else ARM64_RECIPE)
    recipe = load(recipes / "fakeapp.yaml")
    boot_name = arch.boot_image[0]
    fake_kernel_files(kernel.kernel_dir(IDENTITY), str(arch))
    kdir = kernel.kernel_dir(IDENTITY)
    meta = fakes.kernel_build(kdir, IDENTITY, toolchain=FAKE_TOOLCHAIN if arch is Arch.X86_64 else ARM64_TOOLCHAIN,
                              enabled=2, sizes={n: (kdir / n).stat().st_size for n in (boot_name, "vmlinux", "System.map")},
                              artefacts={n: n for n in (boot_name, "vmlinux", "System.map", "config")})
    kernel.link_app("fakeapp", meta)
    image = rootfs.image_path(recipe)
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"070701" + b"\0" * 4000)
    fakes.rootfs_manifest("fakeapp", image, command="/usr/bin/hello",
                          packages=[{"name": "hello", "version": "2.10-3", "arch": "amd64"}])
    result = boot.result_path("fakeapp")
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps({
        "format": "2", "app": "fakeapp", "variant": "specific", "pass": passed,
        "reason": "" if passed else "ready pattern not seen in 96 s",
        "accel": "tcg", "fallback_from_kvm": False, "kvm_failure": "", "time_to_init_s": 0.7, "time_to_ready_s": 0.8,
        "memory": 96, "probe": {"type": "none", "detail": "ready pattern matched at 0.8 s"},
        "console": "console.log", "qemu": ["qemu-system-x86_64"], "qemu_stderr": "",
        "kernel": str(kernel.kernel_dir(IDENTITY) / boot_name), "image": str(image), "boot_method": "bzimage",
        "crng_init_s": 0.3, "app_exec_s": 0.75, "entropy_before_app": True}))
    return recipe


@needs_dpkg
def test_release_app_from_fake_outputs(tmp_path, monkeypatch):
    trees = []
    for name in ("a", "second"):
        out = tmp_path / name / "out"
        monkeypatch.setenv("TAILOR_OUT", str(out))
        recipe = fake_pipeline(out, tmp_path / name)
        manifest = release.release_app(recipe, "0.1.0")
        trees.append(out / "release" / "0.1.0")
    root = trees[0]
    app = root / "fakeapp"
    names = {p.relative_to(app).as_posix() for p in app.rglob("*") if p.is_file()}
    assert {"bzImage", "vmlinux", "config", "System.map", "rootfs.cpio", "recipe.yaml", "manifest.json",
            "firecracker.json", "oci/index.json", "oci/oci-layout",
            "linux-image-6.1-tailor-fakeapp_0.1.0_amd64.deb"} <= names
    assert (app / "recipe.yaml").read_text() == RECIPE
    proc = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0 and "fakeapp/manifest.json: OK" in proc.stdout, proc.stdout + proc.stderr
    assert json.loads((app / "manifest.json").read_text()) == manifest
    assert manifest["kernel"]["release"] == KREL and manifest["kernel"]["config_identity"] == IDENTITY
    assert manifest["kernel"]["source"]["kind"] == "debian" and len(manifest["kernel"]["source"]["sha256"]) == 64
    assert manifest["recipe"]["sha256"] == hashlib.sha256(RECIPE.encode()).hexdigest()
    assert manifest["source_date_epoch"] == EPOCH
    assert set(manifest["toolchain"]) == {"gcc", "binutils", "qemu", "e2fsprogs", "dpkg"}
    assert {k: manifest["toolchain"][k] for k in ("gcc", "binutils")} == FAKE_TOOLCHAIN  # from kernel.json
    assert manifest["boot_test"]["pass"] is True and manifest["boot_test"]["time_to_ready_s"] == 0.8
    assert "doit release:fakeapp" in manifest["reproduce"]["command"]
    assert "SOURCE_DATE_EPOCH=1672531200" in manifest["reproduce"]["command"]
    listed = {a["path"]: a for a in manifest["artefacts"]}
    assert set(listed) == names - {"manifest.json"}
    assert all(listed[p]["size"] == (app / p).stat().st_size for p in listed)
    assert manifest["oci"]["hypervisor"] == "firecracker"  # a virtio-mmio kernel without PCI
    walked = walk_layout(app / "oci")
    assert walked["files"][".boot/kernel"] == (app / "vmlinux").read_bytes()
    assert walked["config"]["config"]["Cmd"] == ["--greeting", "hi there"]
    fc = json.loads((app / "firecracker.json").read_text())
    check_firecracker_fields(fc)
    assert fc["machine-config"]["mem_size_mib"] == 96 and fc["network-interfaces"]
    # no path of the machine in the release: two output directories give the same bytes
    assert release.compare_trees(trees[0], trees[1]) == []


@needs_dpkg
def test_release_of_an_arm64_app(tmp_path, monkeypatch):
    """An arm64 release: the Image in place of the bzImage, an arm64 .deb, an OCI image for linux/arm64,
    Firecracker's aarch64 config booting the Image, a manifest naming the arch and the cross toolchain."""
    out = tmp_path / "out"
    monkeypatch.setenv("TAILOR_OUT", str(out))
    recipe = fake_pipeline(out, tmp_path, arch=Arch.ARM64)
    manifest = release.release_app(recipe, "0.1.0")
    app = out / "release" / "0.1.0" / "fakeapp"
    names = {p.relative_to(app).as_posix() for p in app.rglob("*") if p.is_file()}
    assert {"Image", "vmlinux", "config", "System.map", "rootfs.cpio", "firecracker.json",
            "linux-image-6.1-tailor-fakeapp_0.1.0_arm64.deb"} <= names and "bzImage" not in names
    assert manifest["kernel"]["arch"] == "arm64" and manifest["kernel"]["image"] == "Image"
    assert {k: manifest["toolchain"][k] for k in ("gcc", "binutils")} == ARM64_TOOLCHAIN
    assert manifest["deb"]["file"].endswith("_arm64.deb")
    fields = subprocess.run(["dpkg-deb", "-f", str(app / manifest["deb"]["file"]), "Architecture"],
                            capture_output=True, text=True, check=True).stdout
    assert fields.strip() == "arm64"
    walked = walk_layout(app / "oci")
    assert walked["config"]["architecture"] == "arm64" and walked["config"]["os"] == "linux"
    index = json.loads((app / "oci" / "index.json").read_text())
    assert index["manifests"][0]["platform"] == {"architecture": "arm64", "os": "linux"}
    assert walked["files"][".boot/kernel"] == (app / "Image").read_bytes()  # Firecracker on aarch64 boots the Image
    fc = json.loads((app / "firecracker.json").read_text())
    check_firecracker_fields(fc)
    assert fc["boot-source"]["kernel_image_path"] == "Image"


@needs_dpkg
def test_release_refuses_an_app_whose_boot_test_failed(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("TAILOR_OUT", str(out))
    recipe = fake_pipeline(out, tmp_path, passed=False)
    with pytest.raises(TailorError, match=r"^release of fakeapp refused: its boot test did not pass "
                                          r"\(ready pattern not seen in 96 s\); fix it and run `doit boot:fakeapp`$"):
        release.release_app(recipe, "0.1.0")
    assert not (out / "release" / "0.1.0" / "fakeapp").exists()
    fake_pipeline(out, tmp_path, passed=True)
    image = rootfs.image_path(recipe)
    later = time.time() + 5
    os.utime(image, (later, later))
    with pytest.raises(TailorError, match="boot result is older than its kernel or image"):
        release.release_app(recipe, "0.1.0")


def test_release_tasks_depend_on_the_pipeline(monkeypatch, tmp_path):
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    monkeypatch.delenv("TAILOR_RELEASE_VERSION", raising=False)
    recipe = load(ROOT / "recipes" / "hello.yaml")
    (task,) = publish.release_tasks([recipe])
    assert task["basename"] == "release" and task["name"] == "hello"
    deps = set(task["file_dep"])
    assert {str(kernel.app_pointer("hello")), str(rootfs.image_path(recipe)),
            str(boot.result_path("hello"))} <= deps
    assert task["targets"] == [str(tmp_path / "out" / "release" / release.__version__ / "hello" / "manifest.json")]
    (verify,) = publish.verify_tasks()
    assert verify["basename"] == "verify_reproducible" and verify["params"][0]["default"] == "hello"


# --------------------------------------------------------------------------
# Slow: the real thing


@pytest.fixture(scope="module")
def project(tmp_path_factory, linux_tree):
    """A copy of the project whose out/ shares the kernel source, kernels and .deb cache with the real out/."""
    return project_copy(tmp_path_factory.mktemp("release-project") / "tailor")


def doit(project, *args, timeout=5400):
    return run_doit(project, *args, timeout=timeout,
                    env_drop=("TAILOR_OUT", "TAILOR_RELEASE_VERSION", "TAILOR_DEB_MAINTAINER"))


@pytest.mark.slow
def test_doit_release_hello(project, tmp_path):
    proc = doit(project, "release:hello")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = project / "out" / "release" / release.__version__
    app = root / "hello"
    deb = app / "linux-image-6.1-tailor-hello_0.1.0_amd64.deb"
    for name in ("bzImage", "vmlinux", "config", "System.map", "rootfs.cpio", "manifest.json", "firecracker.json",
                 "oci/index.json"):
        assert (app / name).is_file(), name
    assert deb.is_file()
    proc = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((app / "manifest.json").read_text())
    assert manifest["boot_test"]["pass"] is True and manifest["kernel"]["release"].startswith("6.1.")
    walk_layout(app / "oci")
    check_firecracker_fields(json.loads((app / "firecracker.json").read_text()))
    installed = release.install_deb(deb, tmp_path / "scratch")
    assert f"/boot/vmlinuz-{manifest['kernel']['release']}-tailor-hello" in installed
    if shutil.which("lintian"):
        lint = subprocess.run(["lintian", str(deb)], capture_output=True, text=True)
        assert not [ln for ln in lint.stdout.splitlines() if ln.startswith(("E:", "W:"))], lint.stdout
    again = doit(project, "release:hello")
    assert again.returncode == 0 and "-- release:hello" in again.stdout.splitlines(), again.stdout


@pytest.mark.slow
def test_verify_reproducible_hello(project):
    proc = doit(project, "verify_reproducible")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-5000:]
    report = json.loads((project / "out" / "repro" / "report.json").read_text())
    assert report["reproducible"] is True and report["differences"] == []
    assert report["identical"] + len(report["measurement_only"]) == report["files"] > 10
    first, second = report["builds"]
    assert first["dir"] != second["dir"] and first["started_utc"] < second["started_utc"]


@pytest.mark.slow
def test_release_and_reproduce_hello_arm64(project, tmp_path):
    """An arm64 release end to end: ``doit release:hello-arm64`` (the cross-compiled kernel the arm64 build
    test made), an arm64 .deb that lintian passes, an OCI layout skopeo reads as linux/arm64, and
    ``verify_reproducible --app hello-arm64`` (the second build cross-compiles without ccache)."""
    if shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-system-aarch64") is None:
        pytest.skip("the arm64 cross compiler or qemu-system-aarch64 is not installed (./setup.sh installs them)")
    proc = doit(project, "release:hello-arm64")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    app = project / "out" / "release" / release.__version__ / "hello-arm64"
    manifest = json.loads((app / "manifest.json").read_text())
    assert manifest["kernel"]["arch"] == "arm64" and (app / "Image").is_file() and not (app / "bzImage").exists()
    assert manifest["toolchain"]["gcc"]["version"].startswith("aarch64-linux-gnu-gcc")
    deb = app / manifest["deb"]["file"]
    assert deb.name.endswith("_arm64.deb")
    assert subprocess.run(["dpkg-deb", "-f", str(deb), "Architecture"], capture_output=True, text=True,
                          check=True).stdout.strip() == "arm64"
    if shutil.which("lintian"):
        lint = subprocess.run(["lintian", "--pedantic", "-I", str(deb)], capture_output=True, text=True)
        assert not [ln for ln in lint.stdout.splitlines() if ln[:2] in ("E:", "W:", "I:", "P:")], lint.stdout
    if shutil.which("skopeo"):
        seen = subprocess.run(["skopeo", "inspect", f"oci:{app / 'oci'}:{release.__version__}"],
                              capture_output=True, text=True)
        assert seen.returncode == 0, seen.stderr
        assert json.loads(seen.stdout)["Architecture"] == "arm64" and json.loads(seen.stdout)["Os"] == "linux"
    assert json.loads((app / "firecracker.json").read_text())["boot-source"]["kernel_image_path"] == "Image"
    proc = doit(project, "verify_reproducible", "--app", "hello-arm64")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads((project / "out" / "repro" / "report.json").read_text())
    assert report["app"] == "hello-arm64" and report["reproducible"] is True and report["differences"] == []
    assert report["identical"] + len(report["measurement_only"]) == report["files"] > 10
