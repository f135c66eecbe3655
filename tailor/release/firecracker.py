"""The Firecracker VM config of a release: ``firecracker --no-api --config-file firecracker.json``.

:func:`firecracker_config` writes it (key-sorted JSON) and :func:`check_firecracker_config` checks
the fields and types Firecracker documents.
"""

from __future__ import annotations

import re

from tailor.errors import TailorError
from tailor.kinds import RootFormat
from tailor.util import json_bytes

FIRECRACKER_BOOT_ARGS = "console=ttyS0 reboot=k panic=1 pci=off"
"""Firecracker's usual guest command line: serial console, reboot ends the VM, no PCI probing."""

FIRECRACKER_TAP = "tap0"
"""The host's tap device for the guest's eth0."""

FIRECRACKER_MAC = "06:00:0a:00:02:0f"
"""A fixed, locally administered unicast MAC for the guest's eth0."""


def firecracker_config(*, kernel: str, rootfs: str, rootfs_format: str, memory: int, network: bool,
                       cmdline_extra: str = "", vcpus: int = 1) -> bytes:
    """The Firecracker VM config (``firecracker --no-api --config-file``) for an app, as JSON bytes.

    *kernel* is the ELF vmlinux and *rootfs* the image, as paths Firecracker
    opens (relative ones from its working directory). A cpio image is the
    initrd (``rdinit=/init``); an ext2 image is the root drive
    (``root=/dev/vda rw init=/init``). With *network*, eth0 is a tap device
    ``tap0`` with a fixed MAC; the guest configures itself as in the boot test.
    """
    try:
        fmt = RootFormat(rootfs_format)
    except ValueError:
        raise TailorError(f"rootfs format {rootfs_format!r}: Firecracker boots cpio (initrd) or ext2 (drive)") from None
    root_args = fmt.kernel_args
    initrd, block = (None, rootfs) if fmt.is_disk else (rootfs, None)
    boot_args = " ".join(x for x in (FIRECRACKER_BOOT_ARGS, root_args, cmdline_extra.strip()) if x)
    boot_source = {"kernel_image_path": kernel, "boot_args": boot_args}
    if initrd:
        boot_source["initrd_path"] = initrd
    return json_bytes({
        "boot-source": boot_source,
        "drives": [{"drive_id": "rootfs", "path_on_host": block, "is_root_device": True, "is_read_only": False}]
                  if block else [],
        "machine-config": {"vcpu_count": vcpus, "mem_size_mib": memory, "smt": False},
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": FIRECRACKER_TAP, "guest_mac": FIRECRACKER_MAC}]
                              if network else [],
    })


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
