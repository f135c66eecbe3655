"""The records the later stages hand on: a slim root's dropped files, a traced root's kept list, a
ready snapshot, a running VM's state, the catalogue's repeated boots and an unpacked kernel source's stamp.

Each is a :class:`tailor.records.Record` (``load`` strict, ``save`` checked and atomic); the files keep
the keys they had before they were typed, so a file written by an older tailor of the same format loads.

``out/rootfs/<app>/slim.json`` (:class:`SlimDropped`, ``tailor-slim/1``, written by the rootfs stage of a slim root)
    ``app``, ``source`` (``image`` or ``packages``: whose files were dropped), ``kept`` (files kept),
    ``dropped`` (the files left out, sorted) and ``dropped_dirs`` (the directories left out whole).
``out/slim/<app>/kept.json`` (:class:`SlimKept`, ``tailor-slim-kept/1``, written by ``doit slim:<app>``)
    ``app``, ``paths`` (``{"path", "why"}`` each: what a ``slim: traced`` root keeps), ``added_back``,
    ``trials`` (trial images built), ``whole`` and ``slim`` (``bytes`` and ``files`` of the whole and of
    the verified image, and ``content_bytes``), ``probe`` (the traced boot's probe detail),
    ``writeback_s`` and ``seconds``.
``out/snapshot/<app>/snapshot.json`` (:class:`SnapshotRecord`, ``tailor-snapshot/2``, ``doit snapshot:<app>``)
    ``app``, ``variant``, ``kernel_identity``, ``rootfs_sha256``, ``root`` (its format), ``qemu_version``,
    ``machine`` (:func:`tailor.snapshot.machine_args`), ``cmdline``, ``memory``, ``accel``,
    ``reseed_port``, ``time_to_ready_s``, ``save_s``, ``probe`` and ``files`` (file name ->
    ``{"sha256", "bytes"}``; ``state`` always, ``disk.qcow2`` for a disk root). A release copies it.
``out/run/<name>/run.json`` (:class:`RunState`, ``tailor-run/1``, written by ``python -m tailor run``)
    the fields of :class:`tailor.run.Plan`: what the VM boots, its forwards (``{"addr", "host",
    "guest"}``), its pid and start time, and whether it was restored from a snapshot.
``out/catalogue/timing.json`` (:class:`BootTiming`, ``tailor-catalogue-timing/1``, ``doit catalogue_timing``)
    ``runs``, ``baseline`` (its name) and ``apps``: app -> ``{"image": sha256, <kernel column>:
    {"kernel", "ready_s", "median_s", "failed"}}``.
``out/src/<id[:16]>/stamp.json`` (:class:`SourceStamp`, ``tailor-source-stamp/1``, written last by ``doit source``)
    ``id`` (the source identity: tarball and patches), ``sha256`` (the tarball's), ``label``, ``version``
    (null for a local tarball) and ``patches`` (their file names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tailor.records import Record

_NUMBER = (int, float)


def _keys(**types) -> dict:
    """``KEYS`` where every file key is its attribute's name."""
    return {key: (key, accepted) for key, accepted in types.items()}


@dataclass(frozen=True)
class SlimDropped(Record):
    """What a slim root left out of its source: ``out/rootfs/<app>/slim.json``."""

    FORMAT: ClassVar[str] = "tailor-slim/1"
    AGAIN: ClassVar[str] = "rebuild the root (doit rootfs:<app>)"
    app: str
    source: str
    kept: int
    dropped: list
    dropped_dirs: list

    KEYS: ClassVar[dict] = _keys(app=str, source=str, kept=int, dropped=list, dropped_dirs=list)


@dataclass(frozen=True)
class SlimKept(Record):
    """What a ``slim: traced`` root keeps: ``out/slim/<app>/kept.json``."""

    FORMAT: ClassVar[str] = "tailor-slim-kept/1"
    AGAIN: ClassVar[str] = "trace it again (doit slim:<app>)"
    app: str
    paths: list
    added_back: int
    trials: int
    whole: dict
    slim: dict
    probe: str
    writeback_s: int | float
    seconds: int | float

    KEYS: ClassVar[dict] = _keys(app=str, paths=list, added_back=int, trials=int, whole=dict, slim=dict, probe=str,
                                 writeback_s=_NUMBER, seconds=_NUMBER)
    NESTED: ClassVar[dict] = {"whole": ("bytes", "files"), "slim": ("bytes", "files")}
    ROWS: ClassVar[dict] = {"paths": ("path", "why")}


@dataclass(frozen=True)
class SnapshotRecord(Record):
    """A ready snapshot of an app: ``out/snapshot/<app>/snapshot.json`` (and its copy in a release)."""

    FORMAT: ClassVar[str] = "tailor-snapshot/2"
    AGAIN: ClassVar[str] = "take the snapshot again (doit snapshot:<app>)"
    app: str
    variant: str
    kernel_identity: str
    rootfs_sha256: str
    root: str
    qemu_version: str
    machine: list
    cmdline: str
    memory: int
    accel: str
    reseed_port: int
    time_to_ready_s: int | float
    save_s: int | float
    probe: str
    files: dict

    KEYS: ClassVar[dict] = _keys(app=str, variant=str, kernel_identity=str, rootfs_sha256=str, root=str,
                                 qemu_version=str, machine=list, cmdline=str, memory=int, accel=str, reseed_port=int,
                                 time_to_ready_s=_NUMBER, save_s=_NUMBER, probe=str, files=dict)
    NESTED: ClassVar[dict] = {"files": ("state",)}


@dataclass(frozen=True)
class RunState(Record):
    """A VM started by ``python -m tailor run``: ``out/run/<name>/run.json``."""

    FORMAT: ClassVar[str] = "tailor-run/1"
    AGAIN: ClassVar[str] = "remove that directory (after killing its qemu, if one still runs)"
    name: str
    app: str
    variant: str
    kernel: str
    image: str
    root: str
    memory: int
    forwards: list
    cmdline: str
    ready: str | None
    timeout: int
    network: bool
    layer: str
    keep: bool
    accel: str
    pid: int
    started: int | float
    detached: bool
    snapshot: bool
    reseed_port: int
    reseed: bool
    qemu: list

    KEYS: ClassVar[dict] = _keys(name=str, app=str, variant=str, kernel=str, image=str, root=str, memory=int,
                                 forwards=list, cmdline=str, ready=(str, type(None)), timeout=int, network=bool,
                                 layer=str, keep=bool, accel=str, pid=int, started=_NUMBER, detached=bool,
                                 snapshot=bool, reseed_port=int, reseed=bool, qemu=list)
    ROWS: ClassVar[dict] = {"forwards": ("addr", "host", "guest")}


@dataclass(frozen=True)
class BootTiming(Record):
    """The catalogue's repeated boots: ``out/catalogue/timing.json``."""

    FORMAT: ClassVar[str] = "tailor-catalogue-timing/1"
    AGAIN: ClassVar[str] = "time the boots again (doit catalogue_timing)"
    runs: int
    baseline: str
    apps: dict

    KEYS: ClassVar[dict] = _keys(runs=int, baseline=str, apps=dict)


@dataclass(frozen=True)
class SourceStamp(Record):
    """An unpacked (and patched) kernel source is complete: ``out/src/<id[:16]>/stamp.json``."""

    FORMAT: ClassVar[str] = "tailor-source-stamp/1"
    AGAIN: ClassVar[str] = "tailor unpacks the source again"
    id: str
    sha256: str
    label: str
    version: str | None
    patches: list

    KEYS: ClassVar[dict] = _keys(id=str, sha256=str, label=str, version=(str, type(None)), patches=list)
