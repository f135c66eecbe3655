"""Image references (``docker://``, ``oci:``, ``docker-archive:``) and the OCI media types tailor reads.

:func:`parse_reference` turns a recipe's ``rootfs.image`` into an :class:`ImageRef`;
:func:`local_image_task` names the ``image:<name>`` task that builds an ``oci:out/images/<name>``
reference. Imports nothing of the rest of :mod:`tailor.image`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from tailor.util import PROJECT, out_dir

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
LAYER_TYPES = {
    OCI_LAYER: "tar",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
}
REF_NAME = "org.opencontainers.image.ref.name"
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
TRANSPORTS = ("docker", "oci", "docker-archive")
USAGE = "use docker://NAME[:TAG][@sha256:HEX], oci:DIR[:TAG] or docker-archive:FILE (each with an optional @sha256:HEX)"

IMAGES_DIR = PROJECT / "images"
"""``images/<name>.yaml``: images tailor builds from Debian packages (:mod:`tailor.image.build`)."""


@dataclass(frozen=True)
class ImageRef:
    """A parsed ``rootfs.image``: transport, where (registry name, directory or file), tag, digest."""

    text: str
    transport: str
    location: str
    tag: str | None = None
    digest: str | None = None

    @property
    def unpinned(self) -> str:
        """The reference without its digest: the key of ``images.lock``."""
        return self.text.split("@sha256:")[0]

    def path(self) -> Path:
        """The host path of an ``oci:`` directory or ``docker-archive:`` file."""
        p = Path(self.location)
        if p.parts and p.parts[0] == "out":
            return out_dir().joinpath(*p.parts[1:])
        return PROJECT / p

    def host(self) -> str:
        """The registry host of a ``docker://`` reference ('' for a short name: skopeo's default registry)."""
        first = self.location.split("/")[0]
        if "/" in self.location and ("." in first or ":" in first or first == "localhost"):
            return first
        return ""

    def registry(self) -> str:
        """The registry, for messages."""
        return f"registry {self.host()}" if self.host() else "the default registry"

    def needs_registry_access(self) -> bool:
        """True for a registry other than one on this machine's loopback."""
        return self.transport == "docker" and not self.plain_http()

    def plain_http(self) -> bool:
        """True for a registry on the loopback (such registries speak plain HTTP)."""
        host = self.host().rsplit(":", 1)[0] if not self.host().startswith("[") else self.host()
        if not host:
            return False
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host.strip("[]")).is_loopback
        except ValueError:
            return False


_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]{1,5})?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
"""A valid image tag (also checked by :func:`tailor.image.build.load_spec`)."""


def parse_reference(text: str) -> ImageRef:
    """Parse *text* into an :class:`ImageRef`; a ValueError says what is wrong with it."""
    if not isinstance(text, str) or "\n" in text or "\0" in text or any(ch.isspace() for ch in text):
        raise ValueError(f"not an image reference; {USAGE}")
    transport, sep, rest = text.partition(":")
    if not sep or transport not in TRANSPORTS:
        raise ValueError(f"{text!r} is not an image reference; {USAGE}")
    digest = None
    if "@" in rest:
        rest, _, digest = rest.rpartition("@")
        if not DIGEST.match(digest):
            raise ValueError(f"{text!r}: the digest must be sha256: and 64 lowercase hex digits")
    tag = None
    if transport == "docker":
        if not rest.startswith("//"):
            raise ValueError(f"{text!r}: a registry reference starts with docker://")
        rest = rest[2:]
        last = rest.rsplit("/", 1)[-1]
        if ":" in last:
            rest, _, tag = rest.rpartition(":")
        if not _NAME.match(rest):
            raise ValueError(f"{text!r}: {rest!r} is not an image name (lowercase, e.g. docker://redis:7)")
        if tag is None and digest is None:
            tag = "latest"
    else:
        if transport == "oci" and ":" in rest:
            rest, _, tag = rest.rpartition(":")
        p = Path(rest)
        if not rest or p.is_absolute() or ".." in p.parts:
            raise ValueError(f"{text!r}: {rest or '(empty)'!r} must be a path inside the project, without `..`")
    if tag is not None and not TAG_RE.match(tag):
        raise ValueError(f"{text!r}: {tag!r} is not a valid tag")
    return ImageRef(text=text, transport=transport, location=rest, tag=tag, digest=digest)


def local_image_task(ref_text: str) -> str | None:
    """The ``image:<name>`` task that builds the image an ``oci:out/images/<name>`` reference names, if any."""
    try:
        ref = parse_reference(ref_text)
    except ValueError:
        return None
    parts = Path(ref.location).parts
    if ref.transport == "oci" and len(parts) == 3 and parts[:2] == ("out", "images") \
            and (IMAGES_DIR / f"{parts[2]}.yaml").exists():
        return f"image:{parts[2]}"
    return None
