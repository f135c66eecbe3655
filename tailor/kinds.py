"""The fixed values tailor passes between stages, as enums (:class:`enum.StrEnum`).

A member *is* its string (``RootFormat.EXT2 == "ext2"``, and JSON writes it as ``"ext2"``), so
records and recipe digests are unchanged by using them; code compares against members, never
against bare strings, so a misspelt value is an AttributeError at import time instead of a branch
that silently never runs.

:class:`RootFormat`
    How the root filesystem reaches the kernel: ``cpio`` (an initramfs) or ``ext2`` (a virtio-blk
    disk). :attr:`RootFormat.kernel_args` is the one place that says which kernel arguments each
    needs; the boot test's qemu command, Firecracker's config and urunc's OCI annotations use it.
:class:`BootMethod`
    How qemu starts a kernel: ``pvh`` (the ELF vmlinux at its PVH entry) or ``bzimage``.
:class:`Accel`
    qemu's accelerator: ``kvm`` or ``tcg``.
:class:`Variant`
    Which kernel of a recipe: ``specific`` (its own options) or ``general`` (the shared kernel).

Probe types come from the probe registry (:data:`tailor.probes.PROBE_TYPES`), not from here.
"""

from __future__ import annotations

from enum import StrEnum


class RootFormat(StrEnum):
    """The root image's format (``rootfs.format`` in a recipe)."""

    CPIO = "cpio"
    EXT2 = "ext2"

    @property
    def kernel_args(self) -> str:
        """The kernel command-line arguments that find and start this root's ``/init``: the
        initramfs's ``rdinit=``, or the first virtio-blk disk mounted read-write."""
        return "rdinit=/init" if self is RootFormat.CPIO else "root=/dev/vda rw init=/init"

    @property
    def is_disk(self) -> bool:
        """True for a root that is a block device (attached as a drive), False for an initramfs."""
        return self is RootFormat.EXT2

    @property
    def ramfs_cmdline(self) -> str:
        """``rootfstype=ramfs`` for an initramfs, else nothing: a kernel with TMPFS unpacks an
        initramfs into a tmpfs capped at half the memory (postgres's initdb runs out of space
        there), a base without TMPFS (lupine-base) into an uncapped ramfs; on a disk root the option
        would name the root's own type."""
        return "rootfstype=ramfs" if self is RootFormat.CPIO else ""


class BootMethod(StrEnum):
    """How qemu starts a kernel: ``pvh`` loads the uncompressed ELF vmlinux and jumps to its PVH entry
    point (no real-mode setup, no decompressor; Firecracker boots the same way), ``bzimage`` loads
    the compressed bzImage through its setup code and decompressor."""

    PVH = "pvh"
    BZIMAGE = "bzimage"


class Accel(StrEnum):
    """qemu's accelerator."""

    KVM = "kvm"
    TCG = "tcg"


class Variant(StrEnum):
    """Which kernel of a recipe a stage works on."""

    SPECIFIC = "specific"
    GENERAL = "general"


def choices(enum: type[StrEnum]) -> str:
    """The members of *enum* for an error message: ``cpio or ext2``, ``a, b or c``."""
    names = [m.value for m in enum]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
