"""Typed, versioned records: the files one stage writes and a later stage reads back.

Each record is a frozen dataclass with a ``FORMAT`` string written as its ``format`` key. Its
``dump()`` gives exactly the keys the file has (sorted when written by
:func:`tailor.util.write_json`), and :func:`load_boot_result` reads a file back strictly: a
missing, unknown or renamed key, a value of the wrong type or another format is a TailorError
naming the file and the key, never a silent ``None``.

Records:

``result.json`` (:class:`BootResult`, written by the boot stage, read by the release)
    ``format``, ``app``, ``variant`` (``specific`` or ``general``), ``pass``, ``reason`` (empty when
    it passed), ``accel`` (``kvm`` or ``tcg``), ``fallback_from_kvm`` and ``kvm_failure`` (why KVM
    was given up), ``time_to_init_s`` and ``time_to_ready_s`` (seconds from starting qemu, or null),
    ``probe`` (``{"type", "detail"}``), ``console`` (the console log beside it), ``qemu`` (argv),
    ``qemu_stderr``, ``memory`` (MiB), ``kernel`` and ``image`` (the paths booted), ``boot_method``
    (``pvh``: the ELF vmlinux started at its PVH entry; ``bzimage``: the compressed image through its
    setup code), ``crng_init_s`` and ``app_exec_s`` (when ``random: crng init done`` and the init's
    ``tailor-init: exec`` line showed, or null) and ``entropy_before_app`` (true when the random pool
    was seeded before the app was exec'd, false when not, null when the init never exec'd it).

``kernel.json`` (:class:`KernelBuild`, written last by the kernel stage in ``out/kernel/<kernel identity>/``)
    ``format``, ``identity`` (the config's identity), ``kernel_identity`` (config and toolchain),
    ``toolchain`` (each tool's version line and Debian package), ``make`` (the make command without the
    machine's paths), ``build_settings``, ``source`` (the source's label), ``enabled`` (options set),
    ``objects_compiled``, ``source_date_epoch``, ``sizes`` (bytes of ``bzImage``, ``vmlinux`` and
    ``System.map``) and ``artefacts`` (artefact name -> file name in the directory).

``out/kernels/<app>.json`` (:class:`KernelPointer`, written by the kernel stage, read by every later stage)
    ``format``, ``app``, ``identity``, ``kernel_identity``, ``dir`` (the kernel's directory), ``bzImage``
    and ``vmlinux`` (paths), ``sizes`` and ``enabled`` (as in ``kernel.json``).

``rootfs.json`` (:class:`RootfsManifest`, written by the rootfs stage beside the image)
    ``format``, ``app``, ``image_format`` (``cpio`` or ``ext2``), ``file`` (the image's name),
    ``size`` and ``sha256`` of the image, ``slim`` (``true``, ``false`` or ``"traced"``),
    ``slim_dropped`` (files slim left out), ``files`` and ``content_bytes`` (entries and bytes of
    regular files in the tree), ``command`` (the app's path in the root), ``argv``, ``packages``
    (``{"name", "version", "arch"}`` of every Debian package unpacked), ``image`` (the OCI image's
    summary, or null), ``source_date_epoch`` and ``reseed`` (the reseed helper's path in the root, or
    null without a network).

``out/baseline/<name>/baseline.json`` (:class:`BaselineKernel`, written by ``doit baseline:<name>``)
    ``format``, ``name``, ``description``, ``method`` (how its config was made), ``source`` (the kernel
    source's label), the kernel's description as in a kernel pointer (``identity``,
    ``kernel_identity``, ``dir``, ``bzImage``, ``vmlinux``, ``sizes``, ``enabled``) and ``details``
    (what the method recorded: Kata's fragments and the symbols 6.1 lacks; empty for the others).

Every record class has ``load(path)`` (strict, as above) and ``save(path)`` (checked, written
atomically with sorted keys); a loader is the only way a later stage reads the file.

The records of discovery (``out/discover/<app>/*.json``, ``out/fits/<app>.json``) are in
:mod:`tailor.records.discovery`, the release manifest in :mod:`tailor.records.release`, the
measurements (``out/bench/<kind>.json``) in :mod:`tailor.records.bench`, and those of the later stages
(``slim.json``, ``kept.json``, ``snapshot.json``, ``run.json``, the catalogue's ``timing.json``, a kernel
source's ``stamp.json``) in :mod:`tailor.records.stages`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tailor import paths
from tailor.errors import TailorError
from tailor.util import display_path, read_json, write_json

_OPTIONAL_NUMBER = (int, float, type(None))


class Record:
    """What every record class shares: strict loading from a file, checked saving to one.

    A subclass is a frozen dataclass with ``FORMAT`` (the ``format`` key of its file) and ``KEYS``
    (file key -> (attribute, accepted types)); ``NESTED`` names the keys every object-valued key must
    have (e.g. ``sizes`` must have ``bzImage``); ``ROWS`` the keys every object of a list-valued key
    must have (each trial of ``trials``); ``OPTIONAL`` the keys a file may leave out (the attribute is
    then None, and a None attribute is left out of the file)."""

    FORMAT: ClassVar[str]
    KEYS: ClassVar[dict]
    NESTED: ClassVar[dict] = {}
    ROWS: ClassVar[dict] = {}
    OPTIONAL: ClassVar[frozenset] = frozenset()
    AGAIN: ClassVar[str] = "rerun the stage that writes it"
    """What a refusal tells the user to do (a record not written by a ``doit`` stage says what instead)."""

    @classmethod
    def from_dict(cls, data, where: str, with_format: bool = True):
        """The record of *data* (the file's object), checked; *where* names it in errors."""
        fields = _fields(cls, data, where, with_format)
        for key, wanted in cls.NESTED.items():
            value = fields[cls.KEYS[key][0]]
            if value is None:
                continue
            missing = [k for k in wanted if k not in value]
            if missing:
                raise TailorError(f"{where}: key {key!r} has no {missing[0]!r}; {cls.AGAIN}")
        for key, wanted in cls.ROWS.items():
            for i, row in enumerate(fields[cls.KEYS[key][0]] or ()):
                if not isinstance(row, dict):
                    raise TailorError(f"{where}: key '{key}[{i}]' is {type(row).__name__}, expected dict; "
                                      f"{cls.AGAIN}")
                missing = [k for k in wanted if k not in row]
                if missing:
                    raise TailorError(f"{where}: key '{key}[{i}]' has no {missing[0]!r}; {cls.AGAIN}")
        return cls(**fields)

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Read the record at *path* strictly; a missing file is a TailorError naming it."""
        return cls.from_dict(read_json(path), display_path(path))

    def dump(self) -> dict:
        """The file's content: the keys of ``KEYS`` and ``format``."""
        out = {key: getattr(self, attr) for key, (attr, _) in self.KEYS.items()
               if not (key in self.OPTIONAL and getattr(self, attr) is None)}
        out["format"] = self.FORMAT
        return out

    def save(self, path: str | os.PathLike) -> dict:
        """Write the record to *path* (atomically, sorted keys); return what was written."""
        data = self.dump()
        type(self).from_dict(data, display_path(path))  # a tailor bug when a field holds the wrong type
        write_json(path, data)
        return data


@dataclass(frozen=True)
class BootResult(Record):
    """One boot test's outcome: ``out/boot/<app>/result.json``."""

    FORMAT: ClassVar[str] = "2"
    """The ``format`` key of the file; change it when a key is added, removed, renamed or changes meaning."""

    app: str
    variant: str
    passed: bool
    reason: str
    accel: str
    fallback_from_kvm: bool
    kvm_failure: str
    time_to_init_s: float | None
    time_to_ready_s: float | None
    probe: dict
    console: str
    qemu: list
    qemu_stderr: str
    memory: int
    kernel: str
    image: str
    boot_method: str
    crng_init_s: float | None
    app_exec_s: float | None
    entropy_before_app: bool | None
    arch: str | None = None
    """The guest's architecture (``x86_64``, ``arm64``); files written before it existed leave it out
    (they were all x86_64), so it is optional and the format stays."""

    KEYS: ClassVar[dict] = {
        "app": ("app", str), "variant": ("variant", str), "pass": ("passed", bool), "reason": ("reason", str),
        "accel": ("accel", str), "fallback_from_kvm": ("fallback_from_kvm", bool), "kvm_failure": ("kvm_failure", str),
        "time_to_init_s": ("time_to_init_s", _OPTIONAL_NUMBER), "time_to_ready_s": ("time_to_ready_s", _OPTIONAL_NUMBER),
        "probe": ("probe", dict), "console": ("console", str), "qemu": ("qemu", list), "qemu_stderr": ("qemu_stderr", str),
        "memory": ("memory", int), "kernel": ("kernel", str), "image": ("image", str),
        "boot_method": ("boot_method", str), "crng_init_s": ("crng_init_s", _OPTIONAL_NUMBER),
        "app_exec_s": ("app_exec_s", _OPTIONAL_NUMBER), "entropy_before_app": ("entropy_before_app", (bool, type(None))),
        "arch": ("arch", str),
    }
    """File key -> (attribute, accepted types). ``pass`` is a Python keyword, hence ``passed``."""
    OPTIONAL: ClassVar[frozenset] = frozenset({"arch"})



def _fields(cls, data, where: str, with_format: bool) -> dict:
    """The dataclass keyword arguments for *data*, checked against ``cls.KEYS`` (and ``cls.FORMAT``)."""
    if not isinstance(data, dict):
        raise TailorError(f"{where}: not a JSON object; {cls.AGAIN}")
    data = dict(data)
    if with_format:
        if "format" not in data:
            raise TailorError(f"{where}: no 'format' key (written by an older tailor); {cls.AGAIN}")
        found = data.pop("format")
        if found != cls.FORMAT:
            raise TailorError(f"{where}: format {found!r}, this tailor reads format {cls.FORMAT!r}; "
                              f"{cls.AGAIN}")
    missing = [k for k in cls.KEYS if k not in data and k not in cls.OPTIONAL]
    unknown = sorted(k for k in data if k not in cls.KEYS)
    if missing:
        hint = f" (found unknown key {unknown[0]!r}: renamed?)" if unknown else ""
        raise TailorError(f"{where}: missing key {missing[0]!r}{hint}; {cls.AGAIN}")
    if unknown:
        raise TailorError(f"{where}: unknown key {unknown[0]!r}; {cls.AGAIN}")
    fields = {}
    for key, (attr, types) in cls.KEYS.items():
        if key not in data:  # an optional key the file leaves out
            fields[attr] = None
            continue
        value = data[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
            raise TailorError(f"{where}: key {key!r} is {type(value).__name__}, expected "
                              f"{' or '.join(t.__name__ for t in _as_tuple(types))}; {cls.AGAIN}")
        fields[attr] = value
    names = {f.name for f in dataclasses.fields(cls)}
    assert names == set(fields), f"{cls.__name__}.KEYS and its fields disagree"  # a tailor bug, not the file's
    return fields


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def load_boot_result(path: str | os.PathLike) -> BootResult:
    """Read ``result.json`` at *path* strictly (see the module docstring)."""
    return BootResult.load(path)


def save_boot_result(path: str | os.PathLike, result: dict) -> dict:
    """Check the boot stage's *result* dict (without ``format``), write it with its ``format`` to *path*;
    return what was written."""
    return BootResult.from_dict(result, display_path(path), with_format=False).save(path)


_SIZES = ("vmlinux",)
"""What every kernel's ``sizes`` has; and its boot image, ``bzImage`` (x86_64) or ``Image`` (arm64)."""
_BOOT_IMAGES = ("bzImage", "Image")


class _HasBootImage:
    """A kernel record whose ``sizes`` must also name its boot image (either of :data:`_BOOT_IMAGES`)."""

    @classmethod
    def from_dict(cls, data, where: str, with_format: bool = True):
        record = super().from_dict(data, where, with_format)
        if not any(k in record.sizes for k in _BOOT_IMAGES):
            raise TailorError(f"{where}: key 'sizes' has no {' or '.join(map(repr, _BOOT_IMAGES))}; rerun the "
                              f"stage that writes it")
        return record


@dataclass(frozen=True)
class KernelBuild(_HasBootImage, Record):
    """What a kernel build made: ``out/kernel/<kernel identity>/kernel.json``."""

    FORMAT: ClassVar[str] = "tailor-kernel/1"
    identity: str
    kernel_identity: str
    toolchain: dict
    make: list
    build_settings: str
    source: str
    enabled: int
    objects_compiled: int
    source_date_epoch: int
    sizes: dict
    artefacts: dict

    KEYS: ClassVar[dict] = {
        "identity": ("identity", str), "kernel_identity": ("kernel_identity", str), "toolchain": ("toolchain", dict),
        "make": ("make", list), "build_settings": ("build_settings", str), "source": ("source", str),
        "enabled": ("enabled", int), "objects_compiled": ("objects_compiled", int),
        "source_date_epoch": ("source_date_epoch", int), "sizes": ("sizes", dict), "artefacts": ("artefacts", dict),
    }
    NESTED: ClassVar[dict] = {"sizes": _SIZES}


@dataclass(frozen=True)
class KernelFiles:
    """The files qemu needs of a built kernel: its directory (with ``config``), bzImage and vmlinux."""

    dir: Path
    bzimage: Path
    vmlinux: Path

    @property
    def config(self) -> Path:
        return self.dir / "config"


_KERNEL_KEYS = {
    "identity": ("identity", str), "kernel_identity": ("kernel_identity", str), "dir": ("dir", str),
    "bzImage": ("bzimage", str), "vmlinux": ("vmlinux", str), "sizes": ("sizes", dict), "enabled": ("enabled", int),
}
"""The keys of a kernel's description that every record pointing to a kernel carries."""


class _NamesAKernel:
    """A record that carries a kernel's description (:data:`_KERNEL_KEYS`): its files for qemu."""

    @property
    def files(self) -> KernelFiles:
        return KernelFiles(Path(self.dir), Path(self.bzimage), Path(self.vmlinux))


@dataclass(frozen=True)
class KernelPointer(_HasBootImage, _NamesAKernel, Record):
    """Which kernel an app uses: ``out/kernels/<app>.json``."""

    FORMAT: ClassVar[str] = "tailor-kernel-pointer/1"
    app: str
    identity: str
    kernel_identity: str
    dir: str
    bzimage: str
    vmlinux: str
    sizes: dict
    enabled: int

    KEYS: ClassVar[dict] = {"app": ("app", str), **_KERNEL_KEYS}
    NESTED: ClassVar[dict] = {"sizes": _SIZES}

    def build_record(self) -> KernelBuild:
        """The ``kernel.json`` of the kernel this points to (strict)."""
        return KernelBuild.load(Path(self.dir) / "kernel.json")


@dataclass(frozen=True)
class BaselineKernel(_HasBootImage, _NamesAKernel, Record):
    """A baseline kernel (Firecracker's, Kata's, ...) the report compares against: ``baseline.json``."""

    FORMAT: ClassVar[str] = "tailor-baseline/1"
    name: str
    description: str
    method: str
    source: str
    identity: str
    kernel_identity: str
    dir: str
    bzimage: str
    vmlinux: str
    sizes: dict
    enabled: int
    details: dict

    KEYS: ClassVar[dict] = {"name": ("name", str), "description": ("description", str), "method": ("method", str),
                            "source": ("source", str), **_KERNEL_KEYS, "details": ("details", dict)}
    NESTED: ClassVar[dict] = {"sizes": _SIZES}


@dataclass(frozen=True)
class RootfsManifest(Record):
    """What the rootfs stage made: ``out/rootfs/<app>/rootfs.json``."""

    FORMAT: ClassVar[str] = "tailor-rootfs/1"
    app: str
    image_format: str
    file: str
    size: int
    sha256: str
    slim: bool | str
    slim_dropped: int
    files: int
    content_bytes: int
    command: str
    argv: list
    packages: list
    image: dict | None
    source_date_epoch: int
    reseed: str | None

    KEYS: ClassVar[dict] = {
        "app": ("app", str), "image_format": ("image_format", str), "file": ("file", str), "size": ("size", int),
        "sha256": ("sha256", str), "slim": ("slim", (bool, str)), "slim_dropped": ("slim_dropped", int),
        "files": ("files", int), "content_bytes": ("content_bytes", int), "command": ("command", str),
        "argv": ("argv", list), "packages": ("packages", list), "image": ("image", (dict, type(None))),
        "source_date_epoch": ("source_date_epoch", int), "reseed": ("reseed", (str, type(None))),
    }


def app_kernel(app: str) -> KernelPointer:
    """The kernel *app* (a recipe id: ``<name>`` or ``<name>@general``) uses, read strictly from
    ``out/kernels/<app>.json``; not built yet is a TailorError saying what to run."""
    path = paths.kernel_pointer(app)
    if not path.is_file():
        raise TailorError(f"{app}: its kernel is not built; run `doit kernel:{app}` first")
    return KernelPointer.load(path)


def app_rootfs(app: str) -> RootfsManifest:
    """The ``rootfs.json`` of recipe *app*, read strictly; not built yet is a TailorError saying what to run."""
    path = paths.rootfs_manifest(app)
    if not path.is_file():
        raise TailorError(f"{app}: its root image is not built; run `doit rootfs:{app}` first")
    return RootfsManifest.load(path)
