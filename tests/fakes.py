"""Stage outputs written the way the stages write them (through tailor.records), for tests that fake a
built pipeline instead of building it. Only what a test names differs from a plausible default."""

from __future__ import annotations

from pathlib import Path

from tailor import paths, records
from tailor.records.bench import BENCH, save_bench
from tailor.records.discovery import (DiscoverySummary, DiscoverySyscalls, DiscoveryTrace, DiscoveryTrials, FitsReport,
                                      NullTrace)
from tailor.records.release import ReleaseManifest
from tailor.records.stages import BootTiming, RunState, SlimDropped, SlimKept, SnapshotRecord, SourceStamp
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


def discovery_summary(app: str, **changes) -> DiscoverySummary:
    """Write ``out/discover/<app>/discover.json`` (two options: NET traced, NETDEVICES by deps)."""
    data = {"app": app, "recipe": f"recipes/{app}.yaml", "base": ["lupine-base"], "probe_kernel": "p" * 64,
            "kernel": "k" * 64, "bzImage": 1_400_000,
            "options": [{"option": "NET", "from": "trace", "class": "syscall", "why": "traced: system calls socket"},
                        {"option": "NETDEVICES", "from": "deps", "class": "deps",
                         "why": "needed by VIRTIO_NET (resolve: deps)"}],
            "not_taken": [], "minimised": True, "dropped_by_minimise": [], "kept_by_deps": [], "untried": [],
            "minimise_trials": 3, "budget": None, "syscalls": 40,
            "mapping": {"objects": ["NET"], "lines": [], "lines_only": []},
            "trace": {"seconds": 9.0, "lines": 1000, "bytes": 50_000, "pcs_boot": 10, "pcs_setup": 5, "pcs_app": 7,
                      "capped": False, "functions_app": 4, "unmapped_app": 0, "map_seconds": 1.0,
                      "lines_seconds": 0.5},
            "builds": 2, "boots": 3, "trials": 3, "seconds": 120.5}
    data.update(changes)
    path = DiscoverySummary.path(app)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = DiscoverySummary.from_dict(data, str(path), with_format=False)
    record.save(path)
    return record


def discovery_trials(app: str, **changes) -> DiscoveryTrials:
    """Write ``out/discover/<app>/trials.json`` with one passing trial."""
    data = {"app": app, "trials": [{"trial": 1, "why": "candidates from the trace", "options": ["NET"],
                                    "identity": "k" * 64, "added_by_deps": ["NETDEVICES"], "enabled": 300,
                                    "build_s": 60.0, "bzImage": 1_400_000, "result": "pass", "reason": "",
                                    "boot_s": 2.0}]}
    data.update(changes)
    path = DiscoveryTrials.path(app)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = DiscoveryTrials.from_dict(data, str(path), with_format=False)
    record.save(path)
    return record


def discovery_syscalls(app: str, app_phase: list | None = None, **changes) -> DiscoverySyscalls:
    """Write ``out/discover/<app>/syscalls.json`` (the app phase ran *app_phase*)."""
    calls = sorted(app_phase if app_phase is not None else ["socket", "bind"])
    data = {"app": app, "probe_kernel": "p" * 64, "app_phase": calls, "app_exec": calls, "boot_phase": ["execve"],
            "all": sorted(set(calls) | {"execve"})}
    data.update(changes)
    path = DiscoverySyscalls.path(app)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = DiscoverySyscalls.from_dict(data, str(path), with_format=False)
    record.save(path)
    return record


def discovery_trace(app: str, evidence: dict | None = None, **changes) -> DiscoveryTrace:
    """Write ``out/discover/<app>/trace.json`` whose candidates ran *evidence* (option -> functions)."""
    evidence = {"NET": ["__x64_sys_socket", "sock_alloc"]} if evidence is None else evidence
    data = {"app": app, "probe_kernel": "p" * 64, "functions": {"app": {}, "boot": {}},
            "by_option": {"app": evidence, "boot": {}}, "evidence": evidence, "by_line": {},
            "classes": {o: {"class": "syscall", "why": "traced"} for o in evidence}, "entered": {}}
    data.update(changes)
    path = DiscoveryTrace.path(app)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = DiscoveryTrace.from_dict(data, str(path), with_format=False)
    record.save(path)
    return record


def null_trace(path: Path, **changes) -> NullTrace:
    """Write the null app's functions on a probe kernel at *path*."""
    data = {"probe_kernel": "p" * 64, "functions": ["do_exit", "do_sys_open"], "trace_lines": 1000}
    data.update(changes)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = NullTrace.from_dict(data, str(path), with_format=False)
    record.save(path)
    return record


def fits_report(app: str, **changes) -> FitsReport:
    """Write ``out/fits/<app>.json``: one need, one baseline built that lacks it."""
    data = {"app": app, "needs_from": f"out/discover/{app}",
            "needs": [{"option": "NET", "source": "trace", "why": "traced", "syscalls": ["socket"], "functions": [],
                       "cls": "syscall"}],
            "baselines": {"firecracker": {"config": "out/baseline/firecracker/.config", "built": True,
                                          "fits": False, "missing": [{"option": "NET", "state": "not set",
                                                                      "needed_by": "needed by system call socket"}]}}}
    data.update(changes)
    path = FitsReport.path(app)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = FitsReport.from_dict(data, str(path), with_format=False)
    record.save(path)
    return record


def release_manifest(path: Path, app: str = "hello", **changes) -> ReleaseManifest:
    """Write a release's ``manifest.json`` at *path* (``boot_test`` and ``snapshot`` among *changes*)."""
    data = {"app": app, "description": f"{app} as init", "version": "0.1.0", "tailor_version": "0.1.0",
            "source_date_epoch": 1672531200,
            "recipe": {"file": f"recipes/{app}.yaml", "sha256": "0" * 64, "text": "app:\n  command: /bin/true\n"},
            "kernel": {"release": "6.1.0", "arch": "x86_64", "image": "bzImage", "source": {"label": "fake", "kind": "debian", "sha256": "1" * 64,
                                                      "id": "fake", "patches": []},
                       "config_identity": "a" * 64, "config_sha256": "2" * 64, "enabled": 300, "cmdline": ""},
            "rootfs": {"format": "cpio", "command": f"/usr/bin/{app}", "sha256": "3" * 64, "packages": []},
            "toolchain": {"gcc": "gcc 12.2.0"},
            "artefacts": [{"path": "bzImage", "sha256": "4" * 64, "size": 1}],
            "deb": {"file": f"linux-image-6.1-tailor-{app}_0.1.0_amd64.deb", "maintainer": "t <t@example.org>"},
            "oci": {"layout": "oci", "ref": "0.1.0", "manifest_digest": "sha256:" + "5" * 64, "hypervisor": "qemu",
                    "annotations": {}},
            "firecracker": {"config": "firecracker.json", "run": "firecracker --no-api --config-file firecracker.json"},
            "boot_test": {"pass": True, "accel": "tcg", "time_to_init_s": 0.5, "time_to_ready_s": 0.8,
                          "boot_method": "pvh", "entropy_before_app": True, "probe": "none", "detail": "",
                          "memory_mib": 96, "note": "measured"},
            "reproduce": {"commit": None, "dirty": None, "environment": {}, "command": f"doit release:{app}"}}
    data.update(changes)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = ReleaseManifest.from_dict(data, str(path), with_format=False)
    record.save(path)
    return record


CONDITIONS = {"machine": "x86_64, test CPU, 2 cores, 4.0 GiB", "os": "Debian GNU/Linux 12 (bookworm)",
              "accel": "tcg", "qemu": "QEMU emulator version 7.2", "gcc": "gcc 12.2.0",
              "kernel": "linux-source-6.1 6.1.192-2", "load": [0.5, 0.4, 0.3], "date": "2024-01-01 00:00 UTC"}
"""What :func:`tailor.bench.conditions` records, for fake measurements."""

_SPREAD = {"median": 1.0, "min": 0.9, "max": 1.1, "n": 3, "samples": [0.9, 1.0, 1.1]}
_ROW = {"app": "hello", "variant": "specific", "label": "lupine-base (hello)", "kernel": "a" * 64}
_BENCH = {
    "size": {"kernels": [{"label": "lupine-base (hello)", "variant": "specific", "apps": ["hello"],
                          "identity": "a" * 64, "bzImage": 1_000_000, "vmlinux": 10_000_000,
                          "bzImage_xz_estimate": 800_000, "enabled": 300,
                          "syscalls": {"real": 250, "raw": 260, "stubs": 10}}], "missing": []},
    "boot": {"runs": 3, "cmdline_extra": "quiet", "marker": "tailor-init: exec", "accel_used": ["tcg"],
             "results": [{**_ROW, "init_s": _SPREAD, "ready_s": _SPREAD, "errors": []}]},
    "initcalls": {"cmdline_extra": "initcall_debug", "top": 5,
                  "results": [{**_ROW, "count": 100, "total_us": 50_000, "top": []}]},
    "memory": {"cmdline_extra": "quiet", "results": [{**_ROW, "min_mib": 30, "tried": {"30": True}, "range": [8, 256]}],
               "alternatives": []},
    "throughput": {"stall_ms": 100, "params": {}, "results": [{**_ROW, "tool": "ab", "tests": {"GET /": _SPREAD}}]},
    "pipeline": {"app": "hello", "noop": {"doit_s": _SPREAD, "kbuild_s": _SPREAD, "doit_was_noop": True,
                                          "doit_cmd": "doit build:hello", "kbuild_cmd": "make bzImage"},
                 "clean": None},
    "snapshot": {"apps": {}},
    "slim": {"apps": {}},
    "discover": {"rows": [{"app": "hello", "trial_kernels": 3, "total_s": 300.0, "discovered": [], "recipe": [],
                           "bzImage": 900_000, "syscalls": 230, "hand_found": None, "minimised": True,
                           "untried": []}]},
    "scale": {"config": "allnoconfig", "identity": "a" * 64, "farm": {}, "builds": {}, "ratios": {},
              "identical_kernels": True, "serial": {}, "local_cpu_share_with_helpers": 0.5, "projection": [],
              "one_machine": True, "cores": 2},
}


def bench(kind: str, path: Path | None = None, **changes) -> records.Record:
    """Write a plausible ``out/bench/<kind>.json`` (or *path*) as the measurement of *kind* writes it."""
    data = {"kind": kind, **({} if kind in ("scale",) else {"conditions": CONDITIONS}), **_BENCH[kind]}
    data.update(changes)
    path = path or paths.bench_path(kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_bench(kind, data, path)
    return BENCH[kind].from_dict(data, str(path), with_format=False)


def _save(cls, path: Path, data: dict):
    """Write *data* (without ``format``) at *path* as record *cls*; return the record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = cls.from_dict(data, str(path), with_format=False)
    record.save(path)
    return record


def slim_dropped(app: str, **changes) -> SlimDropped:
    """Write ``out/rootfs/<app>/slim.json``: slim dropped /usr/share/doc whole."""
    data = {"app": app, "source": "packages", "kept": 10, "dropped": ["/usr/share/doc/x"],
            "dropped_dirs": ["/usr/share/doc"], **changes}
    return _save(SlimDropped, paths.rootfs_slim(app), data)


def slim_kept(app: str, **changes) -> SlimKept:
    """Write ``out/slim/<app>/kept.json``: the app's binary read, one file added back."""
    data = {"app": app, "paths": [{"path": f"/usr/bin/{app}", "why": "read"},
                                  {"path": "/etc/hosts", "why": "needed by the boot test (added back)"}],
            "added_back": 1, "trials": 2, "whole": {"bytes": 9_000_000, "files": 900, "content_bytes": 8_000_000},
            "slim": {"bytes": 1_000_000, "files": 20, "content_bytes": 800_000}, "probe": "answered",
            "writeback_s": 3.0, "seconds": 20.5, **changes}
    return _save(SlimKept, paths.slim_kept(app), data)


def snapshot_record(app: str, **changes) -> SnapshotRecord:
    """Write ``out/snapshot/<app>/snapshot.json`` (*changes* name the files, kernel, image, ... it fits)."""
    d = paths.snapshot_dir(app)
    data = {"app": app, "variant": "specific", "kernel_identity": "a" * 64, "rootfs_sha256": "f" * 64, "root": "ext2",
            "qemu_version": "QEMU emulator version 7.2.22", "machine": [], "cmdline": "tailor_reseed=61999",
            "memory": 256, "accel": "tcg", "reseed_port": 61999, "time_to_ready_s": 0.8, "save_s": 0.2,
            "probe": "answered",
            "files": {n: {"sha256": sha256_file(d / n), "bytes": (d / n).stat().st_size} if (d / n).is_file()
                      else {"sha256": "0" * 64, "bytes": 1} for n in ("state", "disk.qcow2")}, **changes}
    return _save(SnapshotRecord, paths.snapshot_record(app), data)


def run_state(name: str, app: str = "redis", **changes) -> RunState:
    """Write ``out/run/<name>/run.json`` of a detached VM (pid 0: not running unless *changes* say)."""
    from tailor.run import vm_dir

    data = {"name": name, "app": app, "variant": "specific", "kernel": "/k/vmlinux", "image": "/r/rootfs.ext2",
            "root": "ext2", "memory": 64, "forwards": [], "cmdline": "", "ready": "", "timeout": 60,
            "network": True, "layer": "", "keep": False, "accel": "tcg", "pid": 0, "started": 0.0,
            "detached": True, "snapshot": False, "reseed_port": 0, "reseed": True, "qemu": [], **changes}
    return _save(RunState, vm_dir(name) / "run.json", data)


def boot_timing(apps: dict | None = None, **changes) -> BootTiming:
    """Write ``out/catalogue/timing.json`` (hello timed three times on its own kernel unless *apps*)."""
    from tailor.catalogue import timing_path

    apps = {"hello": {"image": "f" * 64, "specific": {"kernel": "a" * 64, "ready_s": [0.9, 0.5, 0.7],
                                                      "median_s": 0.7, "failed": []}}} if apps is None else apps
    return _save(BootTiming, timing_path(), {"runs": 3, "baseline": "firecracker", "apps": apps, **changes})


def source_stamp(path: Path, **changes) -> SourceStamp:
    """Write a kernel source's ``stamp.json`` at *path*."""
    data = {"id": "1" * 64, "sha256": "1" * 64, "label": "linux-source-6.1 6.1.192-2", "version": "6.1.192-2",
            "patches": [], **changes}
    return _save(SourceStamp, path, data)
