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
:class:`Arch`
    The guest's architecture (``arch`` in a recipe): ``x86_64`` or ``arm64``, with what each one means
    to kbuild, apt, the ELF reader and qemu.

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
    IMAGE = "image"
    """arm64: the kernel's ``Image`` (what ``-kernel`` loads on qemu's virt machine and Firecracker on aarch64)."""


class Accel(StrEnum):
    """qemu's accelerator."""

    KVM = "kvm"
    TCG = "tcg"


class Variant(StrEnum):
    """Which kernel of a recipe a stage works on."""

    SPECIFIC = "specific"
    GENERAL = "general"


class Arch(StrEnum):
    """The guest's architecture (``arch`` in a recipe). Everything tailor does differently per
    architecture is a property here: kbuild's ``ARCH``/``SRCARCH`` and cross prefix, the boot
    artefact, Debian's architecture and multiarch triplet, the ELF machine and dynamic loader, qemu's
    binary, machine and console."""

    X86_64 = "x86_64"
    ARM64 = "arm64"

    @property
    def srcarch(self) -> str:
        """kbuild's ``SRCARCH``: the directory under ``arch/``."""
        return "x86" if self is Arch.X86_64 else "arm64"

    @property
    def cross_compile(self) -> str:
        """kbuild's ``CROSS_COMPILE`` on an x86_64 host: Debian's cross gcc and binutils prefix."""
        return "" if self is Arch.X86_64 else "aarch64-linux-gnu-"

    @property
    def boot_image(self) -> tuple[str, str]:
        """The compressed kernel qemu boots: (artefact name, its path in the object tree)."""
        return ("bzImage", "arch/x86/boot/bzImage") if self is Arch.X86_64 else ("Image", "arch/arm64/boot/Image")

    @property
    def debian(self) -> str:
        """Debian's name for the architecture (``dpkg --print-architecture``)."""
        return "amd64" if self is Arch.X86_64 else "arm64"

    @property
    def goarch(self) -> str:
        """The OCI image's ``architecture`` (Go's ``GOARCH``), which for amd64 and arm64 is Debian's name."""
        return self.debian

    @property
    def firecracker_kernel(self) -> str:
        """The kernel artefact Firecracker boots: the ELF ``vmlinux`` on x86_64, the uncompressed
        ``Image`` (with its PE header) on aarch64."""
        return "vmlinux" if self is Arch.X86_64 else "Image"

    @property
    def machine(self) -> str:
        """qemu's machine for the microVM, as a reader would name it in a package's description."""
        return "qemu -M microvm" if self is Arch.X86_64 else "qemu-system-aarch64 -M virt"

    @property
    def triplet(self) -> str:
        """The multiarch triplet: Debian's library directories ``/usr/lib/<triplet>``."""
        return "x86_64-linux-gnu" if self is Arch.X86_64 else "aarch64-linux-gnu"

    @property
    def elf_machine(self) -> int:
        """The ELF header's ``e_machine`` (EM_X86_64 62, EM_AARCH64 183)."""
        return 62 if self is Arch.X86_64 else 183

    @property
    def qemu(self) -> str:
        """The qemu system emulator (Debian: qemu-system-x86 / qemu-system-arm)."""
        return "qemu-system-x86_64" if self is Arch.X86_64 else "qemu-system-aarch64"

    @property
    def console(self) -> str:
        """The serial console's device: the 8250 (``ttyS0``) on microvm, the PL011 (``ttyAMA0``) on virt."""
        return "ttyS0" if self is Arch.X86_64 else "ttyAMA0"


def parse_arch(value: object) -> Arch:
    """*value* as an :class:`Arch`; anything else is a ValueError that lists the supported values."""
    try:
        return Arch(value)
    except (ValueError, TypeError):
        raise ValueError(f"{value!r} is not a supported architecture; use {choices(Arch)}") from None


def choices(enum: type[StrEnum]) -> str:
    """The members of *enum* for an error message: ``cpio or ext2``, ``a, b or c``."""
    names = [m.value for m in enum]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
