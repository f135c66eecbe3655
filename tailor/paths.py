"""Every path under ``out/`` (or ``$TAILOR_OUT``), named in one place.

The stages and tools ask here instead of joining ``out_dir() / "..."`` themselves:

=====================================  ==========================================================
``out/config/<app>/``                  :func:`config_dir`: the resolved ``.config`` and its identity
``out/kernel/<key[:16]>/``             :func:`kernel_dir`: one built kernel (shared by identical configs)
``out/kernels/<app>.json``             :func:`kernel_pointer`: which kernel an app uses
``out/rootfs/<app>/``                  :func:`rootfs_dir`: the root image and ``rootfs.json``
``out/boot/<app>/``                    :func:`boot_dir`: ``console.log`` and ``result.json``
``out/snapshot/<app>/``                :func:`snapshot_dir`: a ready snapshot and ``snapshot.json``
``out/baseline/<name>/``               :func:`baseline_dir`: a baseline kernel's description
``out/bench/``                         :func:`bench_dir`: the measurements (``<kind>.json``)
``out/report/``                        :func:`report_dir`: the rendered report
``out/catalogue/``                     :func:`catalogue_dir`: the catalogue's repeated boots (``timing.json``)
``out/discover/<app>/``                :func:`discover_dir`: a discovery's output
``out/fits/<app>.json``                :func:`fits_path`: an app's needs against every baseline config
``out/cache/<name>/``                  :func:`cache_dir`: downloads and build caches; :func:`cache_root`
``out/src/``                           :func:`src_root`: unpacked kernel sources
``out/discover/probe/<key[:16]>/``     :func:`probe_kernel_dir`: a discovery probe kernel's config
``out/images/<name>/``                 :func:`image_dir`: an OCI image built from images/<name>.yaml
``out/release/<version>/``             :func:`release_dir`: releases; :func:`repro_dir`: ``out/repro/``
``out/farm/``                          :func:`farm_dir`: scratch space of farm checks and benchmarks
``out/.doit.db``, ``out/.doit.lock``   :func:`doit_db`, :func:`doit_lock`: doit's state and its lock
=====================================  ==========================================================
"""

from __future__ import annotations

from pathlib import Path

from tailor.util import out_dir


def doit_db() -> Path:
    """doit's state database (sqlite3): ``out/.doit.db``."""
    return out_dir() / ".doit.db"


def doit_lock() -> Path:
    """The lock a doit run holds on the project's out/: ``out/.doit.lock``."""
    return out_dir() / ".doit.lock"


def config_dir(app: str) -> Path:
    return out_dir() / "config" / app


def config_files(app: str) -> dict[str, Path]:
    """The config stage's outputs for *app*: ``config`` (``.config``), ``asked`` (``asked.json``) and
    ``identity``."""
    d = config_dir(app)
    return {"config": d / ".config", "asked": d / "asked.json", "identity": d / "identity"}


def kernel_root() -> Path:
    return out_dir() / "kernel"


def kernel_dir(key: str) -> Path:
    """The directory of the kernel whose kernel identity is *key* (its first 16 hex digits name it)."""
    return kernel_root() / key[:16]


def kernel_pointer(app: str) -> Path:
    """The per-app file naming the kernel an app (``<name>`` or ``<name>@general``) uses."""
    return out_dir() / "kernels" / f"{app}.json"


def rootfs_dir(app: str) -> Path:
    return out_dir() / "rootfs" / app


def rootfs_image(app: str, fmt: str) -> Path:
    """The root image of recipe *app* in format *fmt* (``cpio`` or ``ext2``)."""
    return rootfs_dir(app) / f"rootfs.{fmt}"


def rootfs_manifest(app: str) -> Path:
    return rootfs_dir(app) / "rootfs.json"


def slim_dir(app: str) -> Path:
    """``out/slim/<app>/``: the traced slim of :mod:`tailor.slim` (its whole image, trials, kept list)."""
    return out_dir() / "slim" / app


def slim_kept(app: str) -> Path:
    """The kept list of a ``rootfs.slim: traced`` root: what the app used, with a reason per path."""
    return slim_dir(app) / "kept.json"


def rootfs_slim(app: str) -> Path:
    """What a slim root left out of its source (``rootfs.slim: true``): :func:`tailor.rootfs.dropped`."""
    return rootfs_dir(app) / "slim.json"


def snapshot_dir(app: str) -> Path:
    """``out/snapshot/<app>/``: an app's ready snapshot (state, disk layer, ``snapshot.json``)."""
    return out_dir() / "snapshot" / app


def snapshot_record(app: str) -> Path:
    return snapshot_dir(app) / "snapshot.json"


def boot_dir(app: str) -> Path:
    return out_dir() / "boot" / app


def boot_result(app: str) -> Path:
    return boot_dir(app) / "result.json"


def baseline_dir(name: str) -> Path:
    return out_dir() / "baseline" / name


def bench_dir() -> Path:
    """Where the measurements go: ``out/bench/``."""
    return out_dir() / "bench"


def bench_path(kind: str) -> Path:
    """The stored measurement *kind* (size, boot, memory, throughput, pipeline): ``out/bench/<kind>.json``."""
    return bench_dir() / f"{kind}.json"


def report_dir() -> Path:
    return out_dir() / "report"


def catalogue_dir() -> Path:
    return out_dir() / "catalogue"


def discover_dir(app: str) -> Path:
    return out_dir() / "discover" / app


def fits_path(app: str) -> Path:
    """``doit fits:<app>``'s result: the app's needs against every baseline's .config."""
    return out_dir() / "fits" / f"{app}.json"


def probe_kernel_dir(identity: str) -> Path:
    """Where discovery keeps the probe kernel config of *identity* (its first 16 hex digits name it)."""
    return out_dir() / "discover" / "probe" / identity[:16]


def image_dir(name: str) -> Path:
    return out_dir() / "images" / name


def release_dir(version: str) -> Path:
    return out_dir() / "release" / version


def repro_dir() -> Path:
    """Where the reproducibility check builds its two copies and writes ``report.json``."""
    return out_dir() / "repro"


def farm_dir() -> Path:
    return out_dir() / "farm"


def cache_root() -> Path:
    """``out/cache``: every cache (a reproducibility copy links to it whole)."""
    return out_dir() / "cache"


def cache_dir(name: str) -> Path:
    """``out/cache/<name>`` (``debs``, ``build``, ``sources``, ``oci``, ...)."""
    return cache_root() / name


def src_root() -> Path:
    return out_dir() / "src"
