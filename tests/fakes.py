"""Stage outputs written the way the stages write them (through tailor.records), for tests that fake a
built pipeline instead of building it. Only what a test names differs from a plausible default."""

from __future__ import annotations

from pathlib import Path

from tailor import paths, records
from tailor.util import sha256_file


def kernel_pointer(app: str, kdir: Path, identity: str = "a" * 64, **changes) -> records.KernelPointer:
    """Write ``out/kernels/<app>.json`` naming the kernel in *kdir* (its files need not exist)."""
    data = {"app": app, "identity": identity, "kernel_identity": identity, "dir": str(kdir),
            "bzImage": str(kdir / "bzImage"), "vmlinux": str(kdir / "vmlinux"),
            "sizes": {"bzImage": 900_000, "vmlinux": 9_000_000, "System.map": 300_000}, "enabled": 300}
    data.update(changes)
    path = paths.kernel_pointer(app)
    path.parent.mkdir(parents=True, exist_ok=True)
    pointer = records.KernelPointer.from_dict(data, str(path), with_format=False)
    pointer.save(path)
    return pointer


def kernel_build(kdir: Path, identity: str = "a" * 64, **changes) -> records.KernelBuild:
    """Write *kdir*/kernel.json for a kernel whose artefacts a test made (sizes read from them when present)."""
    sizes = {n: (kdir / n).stat().st_size if (kdir / n).is_file() else 1 for n in ("bzImage", "vmlinux", "System.map")}
    data = {"identity": identity, "kernel_identity": identity, "toolchain": {}, "make": ["make", "bzImage"],
            "build_settings": "2", "source": "fake", "enabled": 300, "objects_compiled": 0,
            "source_date_epoch": 1700000000, "sizes": sizes,
            "artefacts": {n: n for n in ("bzImage", "vmlinux", "System.map", "config", "build.log")}}
    data.update(changes)
    record = records.KernelBuild.from_dict(data, str(kdir / "kernel.json"), with_format=False)
    record.save(kdir / "kernel.json")
    return record


def rootfs_manifest(app: str, image: Path | None = None, **changes) -> records.RootfsManifest:
    """Write ``out/rootfs/<app>/rootfs.json`` for *image* (its size and sha256 when it exists)."""
    exists = image is not None and image.is_file()
    data = {"app": app, "image_format": image.suffix.lstrip(".") if image else "cpio",
            "file": image.name if image else "rootfs.cpio", "size": image.stat().st_size if exists else 1,
            "sha256": sha256_file(image) if exists else "f" * 64, "slim": True, "slim_dropped": 0, "files": 1,
            "content_bytes": 1, "command": f"/usr/bin/{app}", "argv": [f"/usr/bin/{app}"], "packages": [],
            "image": None, "source_date_epoch": 1700000000, "reseed": None}
    data.update(changes)
    path = paths.rootfs_manifest(app)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = records.RootfsManifest.from_dict(data, str(path), with_format=False)
    record.save(path)
    return record


def boot_result(path: Path, app: str = "hello", **changes) -> records.BootResult:
    """Write a passing boot test's ``result.json`` at *path*, with *changes* (``passed=False`` and so on)."""
    data = {"app": app, "variant": "specific", "pass": True, "reason": "", "accel": "tcg",
            "fallback_from_kvm": False, "kvm_failure": "", "time_to_init_s": 0.5, "time_to_ready_s": 0.8,
            "probe": {"type": "none", "detail": ""}, "console": "console.log", "qemu": ["qemu-system-x86_64"],
            "qemu_stderr": "", "memory": 96, "kernel": "/k/vmlinux", "image": "/r/rootfs.cpio", "boot_method": "pvh",
            "crng_init_s": 0.3, "app_exec_s": 0.6, "entropy_before_app": True}
    data.update({("pass" if k == "passed" else k): v for k, v in changes.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    record = records.BootResult.from_dict(data, str(path), with_format=False)
    record.save(path)
    return record


def baseline_kernel(name: str, kdir: Path, identity: str = "b" * 64, **changes) -> records.BaselineKernel:
    """Write ``out/baseline/<name>/baseline.json`` for a baseline whose kernel is in *kdir*."""
    data = {"name": name, "description": f"the {name} baseline", "method": "kbuild olddefconfig", "source": "fake",
            "identity": identity, "kernel_identity": identity, "dir": str(kdir), "bzImage": str(kdir / "bzImage"),
            "vmlinux": str(kdir / "vmlinux"), "sizes": {"bzImage": 5_000_000, "vmlinux": 40_000_000}, "enabled": 900,
            "details": {}}
    data.update(changes)
    path = paths.baseline_dir(name) / "baseline.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = records.BaselineKernel.from_dict(data, str(path), with_format=False)
    record.save(path)
    return record
