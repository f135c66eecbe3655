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
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from tailor.errors import TailorError
from tailor.util import display_path, read_json, write_json

_OPTIONAL_NUMBER = (int, float, type(None))


@dataclass(frozen=True)
class BootResult:
    """One boot test's outcome: ``out/boot/<app>/result.json``."""

    FORMAT = "2"
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

    KEYS = {
        "app": ("app", str), "variant": ("variant", str), "pass": ("passed", bool), "reason": ("reason", str),
        "accel": ("accel", str), "fallback_from_kvm": ("fallback_from_kvm", bool), "kvm_failure": ("kvm_failure", str),
        "time_to_init_s": ("time_to_init_s", _OPTIONAL_NUMBER), "time_to_ready_s": ("time_to_ready_s", _OPTIONAL_NUMBER),
        "probe": ("probe", dict), "console": ("console", str), "qemu": ("qemu", list), "qemu_stderr": ("qemu_stderr", str),
        "memory": ("memory", int), "kernel": ("kernel", str), "image": ("image", str),
        "boot_method": ("boot_method", str), "crng_init_s": ("crng_init_s", _OPTIONAL_NUMBER),
        "app_exec_s": ("app_exec_s", _OPTIONAL_NUMBER), "entropy_before_app": ("entropy_before_app", (bool, type(None))),
    }
    """File key -> (attribute, accepted types). ``pass`` is a Python keyword, hence ``passed``."""

    @classmethod
    def from_dict(cls, data, where: str = "result.json") -> "BootResult":
        """The record of a boot stage's result dict (every key of :data:`KEYS`, no other, no ``format``).

        *where* names the data in errors (a file name)."""
        return cls(**_fields(cls, data, where, with_format=False))

    def dump(self) -> dict:
        """The file's content: the keys of :data:`KEYS` and ``format``."""
        out = {key: getattr(self, attr) for key, (attr, _) in self.KEYS.items()}
        out["format"] = self.FORMAT
        return out


def _fields(cls, data, where: str, with_format: bool) -> dict:
    """The dataclass keyword arguments for *data*, checked against ``cls.KEYS`` (and ``cls.FORMAT``)."""
    if not isinstance(data, dict):
        raise TailorError(f"{where}: not a JSON object; rerun the stage that writes it")
    data = dict(data)
    if with_format:
        if "format" not in data:
            raise TailorError(f"{where}: no 'format' key (written by an older tailor); rerun the stage that "
                              f"writes it")
        found = data.pop("format")
        if found != cls.FORMAT:
            raise TailorError(f"{where}: format {found!r}, this tailor reads format {cls.FORMAT!r}; rerun the "
                              f"stage that writes it")
    missing = [k for k in cls.KEYS if k not in data]
    unknown = sorted(k for k in data if k not in cls.KEYS)
    if missing:
        hint = f" (found unknown key {unknown[0]!r}: renamed?)" if unknown else ""
        raise TailorError(f"{where}: missing key {missing[0]!r}{hint}; rerun the stage that writes it")
    if unknown:
        raise TailorError(f"{where}: unknown key {unknown[0]!r}; rerun the stage that writes it")
    fields = {}
    for key, (attr, types) in cls.KEYS.items():
        value = data[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
            raise TailorError(f"{where}: key {key!r} is {type(value).__name__}, expected "
                              f"{' or '.join(t.__name__ for t in _as_tuple(types))}")
        fields[attr] = value
    names = {f.name for f in dataclasses.fields(cls)}
    assert names == set(fields), f"{cls.__name__}.KEYS and its fields disagree"  # a tailor bug, not the file's
    return fields


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def load_boot_result(path: str | os.PathLike) -> BootResult:
    """Read ``result.json`` at *path* strictly (see the module docstring)."""
    return BootResult(**_fields(BootResult, read_json(path), display_path(path), with_format=True))


def save_boot_result(path: str | os.PathLike, result: dict) -> dict:
    """Check the boot stage's *result* dict, write it with its ``format`` to *path*; return what was written."""
    data = BootResult.from_dict(result, display_path(path)).dump()
    write_json(path, data)
    return data
