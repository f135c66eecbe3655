"""The measurements: ``out/bench/<kind>.json``, written by :mod:`tailor.measure` and ``benchmarks/*.py``,
read by :mod:`tailor.report` (and by whatever renders figures from them).

Each kind is a record with ``format`` ``tailor-bench-<kind>/1``, ``kind`` and its own top-level keys;
:func:`save_bench` is how a measurement writes its file and :func:`load_bench` how it is read back
(strict: a missing or mistyped top-level key names the file and the key). ``conditions`` (every kind
but ``discover`` and ``scale``) is :func:`tailor.bench.conditions`' machine, os, accel, qemu, gcc, kernel,
load and date.

The rows (``results``, ``kernels``, ``apps``, ...) stay dicts: their shape differs from kind to kind
and row to row (a variant not measured has ``missing``, a failed one ``error``, the boot times one
entry per boot method), and the report's sections read them as they are. ``ROWS`` makes sure every
row has the keys the report sorts and labels them by.

========== ======================= ==============================================================
kind       class                   top-level keys besides ``format``, ``kind``, ``conditions``
========== ======================= ==============================================================
size       :class:`SizeBench`      ``kernels`` (one row per distinct kernel), ``missing``
boot       :class:`BootBench`      ``runs``, ``cmdline_extra``, ``marker``, ``accel_used``, ``results``
initcalls  :class:`InitcallsBench` ``cmdline_extra``, ``top``, ``results``
memory     :class:`MemoryBench`    ``cmdline_extra``, ``results``, ``alternatives`` (other root formats)
throughput :class:`ThroughputBench` ``stall_ms``, ``params`` (per load tool), ``results``
pipeline   :class:`PipelineBench`  ``app``, ``noop`` (doit's and kbuild's no-op), ``clean`` (or null)
snapshot   :class:`SnapshotBench`  ``apps`` (app -> cold boot against restore)
slim       :class:`SlimBench`      ``apps`` (app -> whole, slim and traced root)
discover   :class:`DiscoverBench`  ``rows`` (one per discovered app; no ``conditions``)
scale      :class:`ScaleBench`     the build farm's figures (no ``conditions``): ``config``, ``identity``,
                                   ``farm``, ``builds``, ``ratios``, ``identical_kernels``, ``serial``,
                                   ``local_cpu_share_with_helpers``, ``projection``, ``one_machine``, ``cores``
========== ======================= ==============================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from tailor import paths
from tailor.errors import TailorBug
from tailor.records import Record
from tailor.util import display_path

_NUMBER = (int, float)
_CONDITIONS = ("machine", "os", "accel", "qemu", "gcc", "kernel", "load", "date")
_VARIANT_ROW = ("app", "variant", "label")
"""What every result row has (:func:`tailor.bench.result_row`): the report sorts and names rows by them."""


def _keys(**extra) -> dict:
    """``kind`` and ``conditions`` and the *extra* keys (file key -> accepted types), as ``KEYS``."""
    return {"kind": ("kind", str), "conditions": ("conditions", dict),
            **{key: (key, types) for key, types in extra.items()}}


@dataclass(frozen=True)
class SizeBench(Record):
    FORMAT: ClassVar[str] = "tailor-bench-size/1"
    kind: str
    conditions: dict
    kernels: list
    missing: list

    KEYS: ClassVar[dict] = _keys(kernels=list, missing=list)
    NESTED: ClassVar[dict] = {"conditions": _CONDITIONS}
    ROWS: ClassVar[dict] = {"kernels": ("label", "variant", "apps", "identity", "bzImage", "vmlinux", "enabled",
                                        "syscalls"),
                            "missing": ("app", "variant", "why")}


@dataclass(frozen=True)
class BootBench(Record):
    FORMAT: ClassVar[str] = "tailor-bench-boot/1"
    kind: str
    conditions: dict
    runs: int
    cmdline_extra: str
    marker: str
    accel_used: list
    results: list

    KEYS: ClassVar[dict] = _keys(runs=int, cmdline_extra=str, marker=str, accel_used=list, results=list)
    NESTED: ClassVar[dict] = {"conditions": _CONDITIONS}
    ROWS: ClassVar[dict] = {"results": _VARIANT_ROW}


@dataclass(frozen=True)
class InitcallsBench(Record):
    FORMAT: ClassVar[str] = "tailor-bench-initcalls/1"
    kind: str
    conditions: dict
    cmdline_extra: str
    top: int
    results: list

    KEYS: ClassVar[dict] = _keys(cmdline_extra=str, top=int, results=list)
    NESTED: ClassVar[dict] = {"conditions": _CONDITIONS}
    ROWS: ClassVar[dict] = {"results": _VARIANT_ROW}


@dataclass(frozen=True)
class MemoryBench(Record):
    FORMAT: ClassVar[str] = "tailor-bench-memory/1"
    kind: str
    conditions: dict
    cmdline_extra: str
    results: list
    alternatives: list

    KEYS: ClassVar[dict] = _keys(cmdline_extra=str, results=list, alternatives=list)
    NESTED: ClassVar[dict] = {"conditions": _CONDITIONS}
    ROWS: ClassVar[dict] = {"results": _VARIANT_ROW, "alternatives": ("app", "variant", "root")}


@dataclass(frozen=True)
class ThroughputBench(Record):
    FORMAT: ClassVar[str] = "tailor-bench-throughput/1"
    kind: str
    conditions: dict
    stall_ms: int | float
    params: dict
    results: list

    KEYS: ClassVar[dict] = _keys(stall_ms=_NUMBER, params=dict, results=list)
    NESTED: ClassVar[dict] = {"conditions": _CONDITIONS}
    ROWS: ClassVar[dict] = {"results": _VARIANT_ROW}


@dataclass(frozen=True)
class PipelineBench(Record):
    FORMAT: ClassVar[str] = "tailor-bench-pipeline/1"
    kind: str
    conditions: dict
    app: str
    noop: dict
    clean: dict | None

    KEYS: ClassVar[dict] = _keys(app=str, noop=dict, clean=(dict, type(None)))
    NESTED: ClassVar[dict] = {"conditions": _CONDITIONS,
                              "noop": ("doit_s", "kbuild_s", "doit_was_noop", "doit_cmd", "kbuild_cmd")}


@dataclass(frozen=True)
class SnapshotBench(Record):
    FORMAT: ClassVar[str] = "tailor-bench-snapshot/1"
    kind: str
    conditions: dict
    apps: dict

    KEYS: ClassVar[dict] = _keys(apps=dict)
    NESTED: ClassVar[dict] = {"conditions": _CONDITIONS}


@dataclass(frozen=True)
class SlimBench(Record):
    FORMAT: ClassVar[str] = "tailor-bench-slim/1"
    kind: str
    conditions: dict
    apps: dict

    KEYS: ClassVar[dict] = _keys(apps=dict)
    NESTED: ClassVar[dict] = {"conditions": _CONDITIONS}


@dataclass(frozen=True)
class DiscoverBench(Record):
    FORMAT: ClassVar[str] = "tailor-bench-discover/2"
    kind: str
    conditions: dict
    rows: list

    KEYS: ClassVar[dict] = _keys(rows=list)
    NESTED: ClassVar[dict] = {"conditions": _CONDITIONS}
    ROWS: ClassVar[dict] = {"rows": ("app", "trial_kernels", "total_s", "discovered", "recipe", "bzImage", "syscalls",
                                     "hand_found", "minimised", "untried")}


@dataclass(frozen=True)
class ScaleBench(Record):
    FORMAT: ClassVar[str] = "tailor-bench-scale/1"
    kind: str
    config: str
    identity: str
    farm: dict
    builds: dict
    ratios: dict
    identical_kernels: bool
    serial: dict
    local_cpu_share_with_helpers: int | float
    projection: list
    one_machine: bool
    cores: int | None

    KEYS: ClassVar[dict] = {key: (key, types) for key, types in (
        ("kind", str), ("config", str), ("identity", str), ("farm", dict), ("builds", dict), ("ratios", dict),
        ("identical_kernels", bool), ("serial", dict), ("local_cpu_share_with_helpers", _NUMBER),
        ("projection", list), ("one_machine", bool), ("cores", (int, type(None))))}


BENCH: dict[str, type[Record]] = {
    "size": SizeBench, "boot": BootBench, "initcalls": InitcallsBench, "memory": MemoryBench,
    "throughput": ThroughputBench, "pipeline": PipelineBench, "snapshot": SnapshotBench, "slim": SlimBench,
    "discover": DiscoverBench, "scale": ScaleBench,
}
"""Every kind of ``out/bench/<kind>.json`` and its record."""


def _record(kind: str) -> type[Record]:
    cls = BENCH.get(kind)
    if cls is None:
        raise TailorBug(f"no bench record of kind {kind!r}")
    return cls


def load_bench(kind: str, path: str | os.PathLike | None = None) -> Record:
    """The measurement *kind* at *path* (default ``out/bench/<kind>.json``), read strictly."""
    return _record(kind).load(path or paths.bench_path(kind))


def save_bench(kind: str, data: dict, path: str | os.PathLike | None = None) -> dict:
    """Check the measurement *data* of *kind* (without ``format``; ``kind`` must be *kind*) and write it to
    *path* (default ``out/bench/<kind>.json``); return what was written."""
    path = path or paths.bench_path(kind)
    if data.get("kind") != kind:
        raise TailorBug(f"save_bench({kind!r}): the data's kind is {data.get('kind')!r}")
    return _record(kind).from_dict(data, display_path(path), with_format=False).save(path)
