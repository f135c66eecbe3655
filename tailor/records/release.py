"""The release manifest: ``out/release/<version>/<app>/manifest.json`` (:class:`ReleaseManifest`),
written by ``doit release:<app>`` (:func:`tailor.release.release_app`), read back by the
reproducibility check (:func:`tailor.release.repro.measurement_only`).

Its ``format`` is the release tree's version, an integer (:data:`RELEASE_FORMAT`): a release is
compared byte for byte between two builds, so what the file says stays as it was. Keys:

``app``, ``description``, ``version``, ``tailor_version``, ``source_date_epoch``;
``recipe`` (``file``, ``sha256``, ``text``); ``kernel`` (``release``, ``source`` with its label, kind,
sha256, id and patches, ``arch``, ``image``: the boot image's file name, ``config_identity``, ``config_sha256``, ``enabled``, ``cmdline``); ``rootfs``
(``format``: the image format, ``command``, ``sha256``, ``packages``); ``toolchain`` (tool -> version);
``artefacts`` (``{"path", "sha256", "size"}`` of every other file); ``deb`` (``file``, ``maintainer``);
``oci`` (``layout``, ``ref``, ``manifest_digest``, ``hypervisor``, ``annotations``); ``firecracker``
(``config``, ``run``); ``boot_test`` (what the boot test of this build measured: ``pass``, ``accel``,
``time_to_init_s``, ``time_to_ready_s``, ``boot_method``, ``entropy_before_app``, ``probe``, ``detail``,
``memory_mib``, ``note``); ``reproduce`` (``commit``, ``dirty``, ``environment``, ``command``); and,
for a recipe with ``release.snapshot: true``, ``snapshot`` (the ready snapshot's record).

Inside ``rootfs`` the image format keeps the key ``format`` (renaming it would change every released
manifest; it is not the record's version, which is the top-level ``format``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tailor.records import Record

RELEASE_FORMAT = 3
"""The release tree's version, the manifest's ``format``. Bump it when the release tree for the same
inputs changes, or a manifest key is added, removed, renamed or changes meaning (release tasks rerun).
2: the OCI layout's JSON and firecracker.json are written with ``json.dumps(sort_keys=True)``.
3: ``kernel`` names its ``arch`` (``x86_64``, ``arm64``) and boot ``image`` (``bzImage``, ``Image``)."""


@dataclass(frozen=True)
class ReleaseManifest(Record):
    """One app's release: ``out/release/<version>/<app>/manifest.json``."""

    FORMAT: ClassVar[int] = RELEASE_FORMAT
    app: str
    description: str
    version: str
    tailor_version: str
    source_date_epoch: int
    recipe: dict
    kernel: dict
    rootfs: dict
    toolchain: dict
    artefacts: list
    deb: dict
    oci: dict
    firecracker: dict
    boot_test: dict
    reproduce: dict
    snapshot: dict | None

    KEYS: ClassVar[dict] = {key: (key, types) for key, types in (
        ("app", str), ("description", str), ("version", str), ("tailor_version", str), ("source_date_epoch", int),
        ("recipe", dict), ("kernel", dict), ("rootfs", dict), ("toolchain", dict), ("artefacts", list),
        ("deb", dict), ("oci", dict), ("firecracker", dict), ("boot_test", dict), ("reproduce", dict),
        ("snapshot", dict))}
    OPTIONAL: ClassVar[frozenset] = frozenset({"snapshot"})
    NESTED: ClassVar[dict] = {
        "recipe": ("file", "sha256", "text"),
        "kernel": ("release", "arch", "image", "source", "config_identity", "config_sha256", "enabled", "cmdline"),
        "rootfs": ("format", "command", "sha256", "packages"),
        "deb": ("file", "maintainer"),
        "oci": ("layout", "ref", "manifest_digest", "hypervisor", "annotations"),
        "firecracker": ("config", "run"),
        "boot_test": ("pass", "accel", "time_to_init_s", "time_to_ready_s", "boot_method", "entropy_before_app",
                      "probe", "detail", "memory_mib", "note"),
        "reproduce": ("commit", "dirty", "environment", "command"),
    }
    ROWS: ClassVar[dict] = {"artefacts": ("path", "sha256", "size")}

    def without(self, keys) -> dict:
        """The file's content without the sections *keys* (e.g. what one run measured)."""
        return {k: v for k, v in self.dump().items() if k not in keys}
