"""Container images (OCI) as a rootfs source: reference -> pinned digest -> verified cache -> tree.

A recipe's ``rootfs.image`` names an image in one of three ways:

``docker://NAME[:TAG][@sha256:HEX]``
    an image in a registry, fetched with skopeo (``docker://redis:7`` is
    Docker Hub's short form, resolved by skopeo; a registry on 127.0.0.0/8 or
    ``localhost`` is spoken to in plain HTTP).
``oci:DIR[:TAG][@sha256:HEX]``
    an OCI image layout on disk, read by tailor itself.
``docker-archive:FILE[@sha256:HEX]``
    a ``docker save`` tarball, converted to an OCI layout by skopeo.

``DIR`` and ``FILE`` are relative to the project, except that a leading
``out/`` means tailor's output directory (``out/`` or ``$TAILOR_OUT``).

Steps, each a plain function:

1. :func:`pinned_digest`: the reference's own ``@sha256:``, else the digest
   recorded for it in ``images.lock`` beside the recipes, else the digest the
   reference resolves to now, which is then recorded (``python -m tailor
   pin-image APP`` moves it explicitly).
2. :func:`fetch`: the image by that digest into one OCI layout under
   ``out/cache/oci/`` (blobs shared by all images, ``index.json`` keyed by the
   pinned digest). The manifest (or index), config and every layer are
   checked against their digests and sizes here, not only by skopeo; an
   index is narrowed to its linux/amd64 manifest.
3. :func:`unpack`: the layers applied in order to an empty tree with OCI
   whiteouts, refusing any entry that would write outside the tree.
4. :func:`app_from_config`: Entrypoint + Cmd, Env, WorkingDir and User of
   the image config, each overridden by the recipe's ``app`` key for it.
"""

from __future__ import annotations

import gzip
import hashlib
import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path

from tailor.errors import TailorError
from tailor.util import PROJECT, display_path, file_lock, makedirs, out_dir, read_json, remove, write_atomic, write_json

LOCK_FILE = PROJECT / "images.lock"

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "tar",
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
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


# --------------------------------------------------------------------------
# References


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
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


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
    if tag is not None and not _TAG.match(tag):
        raise ValueError(f"{text!r}: {tag!r} is not a valid tag")
    return ImageRef(text=text, transport=transport, location=rest, tag=tag, digest=digest)


# --------------------------------------------------------------------------
# The lock: a digest for each reference written without one


def read_lock(path: Path = LOCK_FILE) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TailorError(f"{path.name}: unreadable ({e}); fix it or delete it and pin again") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) and DIGEST.match(str(v.get("digest", "")))
                                             for v in data.values()):
        raise TailorError(f"{path.name}: not a map of reference to {{digest}}; fix it or delete it and pin again")
    return data


def locked_digest(ref: ImageRef, path: Path = LOCK_FILE) -> str | None:
    """The digest recorded for *ref* (None when there is none yet); reads only the lock file."""
    if ref.digest:
        return ref.digest
    entry = read_lock(path).get(ref.unpinned)
    return entry["digest"] if entry else None


def record(ref: ImageRef, digest: str, path: Path = LOCK_FILE) -> None:
    with file_lock(out_dir() / "cache" / "images.lock.lock", "images.lock"):
        data = read_lock(path)
        data[ref.unpinned] = {"digest": digest}
        write_json(path, data)


def pinned_digest(ref: ImageRef, origin: str, path: Path = LOCK_FILE) -> str:
    """The digest a build uses for *ref*: its own, the locked one, or (first time) the resolved one, recorded."""
    digest = locked_digest(ref, path)
    if digest:
        return digest
    digest = resolve(ref, origin)
    _record_new(ref, digest, path)
    return digest


def _record_new(ref: ImageRef, digest: str, path: Path = LOCK_FILE) -> None:
    record(ref, digest, path)
    print(f"tailor: {ref.unpinned} is {digest}; recorded in {path.name}", file=sys.stderr, flush=True)


def pin(ref: ImageRef, origin: str, path: Path = LOCK_FILE) -> str:
    """Resolve *ref* now and record its digest (``python -m tailor pin-image``)."""
    if ref.digest:
        raise TailorError(f"{origin}: rootfs.image: {ref.text} names its digest itself; edit the recipe to move it")
    digest = resolve(ref, origin)
    record(ref, digest, path)
    return digest


# --------------------------------------------------------------------------
# skopeo


def _skopeo(args: list[str], ref: ImageRef, origin: str, digest: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    tls = ["--src-tls-verify=false"] if args[0] == "copy" else ["--tls-verify=false"]
    if not ref.plain_http():
        tls = []
    cmd = ["skopeo", args[0], *tls, *args[1:]]
    try:
        # bytes, not text: a manifest is hashed exactly as the registry sent it
        proc = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=3600)
    except OSError:
        raise TailorError(f"{origin}: rootfs.image: skopeo not found; install it (./setup.sh does)") from None
    except subprocess.TimeoutExpired:
        raise TailorError(f"{origin}: rootfs.image: skopeo took over an hour for {ref.text}; check the network")
    if proc.returncode != 0 and check:
        raise _skopeo_error((proc.stderr + proc.stdout).decode("utf-8", "replace"), ref, origin, digest)
    return proc


def _skopeo_error(text: str, ref: ImageRef, origin: str, digest: str | None = None) -> TailorError:
    low = text.lower()
    where = f"{origin}: rootfs.image: {ref.text}"
    if ref.transport == "docker":
        if any(s in low for s in ("connection refused", "no such host", "i/o timeout", "network is unreachable",
                                  "no route to host", "server misbehaving", "tls handshake timeout")):
            return TailorError(f"{where}: {ref.registry()} is unreachable; check the name and the network "
                               f"(this machine may have no registry access)")
        if any(s in low for s in ("manifest unknown", "name unknown", "not found", "repository name not known")):
            if digest:
                return TailorError(f"{where}: {ref.registry()} has no manifest {digest} in that repository; "
                                   f"check the digest (in the recipe or images.lock) and the name")
            return TailorError(f"{where}: unknown repository or tag in {ref.registry()}; check the name and tag")
        if "unauthorized" in low or "denied" in low:
            return TailorError(f"{where}: {ref.registry()} refused access (unauthorized); "
                               f"log in with skopeo login or use a public image")
    if "no such file" in low or "not a directory" in low:
        return TailorError(f"{where}: {ref.location} does not exist or is not an image; build it first")
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "no message")
    line = re.sub(r'^time="[^"]*" level=\w+ msg="?', "", line).rstrip('"')
    return TailorError(f"{where}: skopeo failed: {line[:300]}")


# --------------------------------------------------------------------------
# Blobs


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def _verify_blob(path: Path, desc: dict, what: str, where: str) -> None:
    """Check that the blob at *path* has the descriptor's sha256 and size (streamed)."""
    digest = desc.get("digest", "")
    if not DIGEST.match(str(digest)):
        raise TailorError(f"{where}: {what} has digest {digest!r}, not sha256; tailor verifies sha256 only")
    h, n = hashlib.sha256(), 0
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
                n += len(block)
    except FileNotFoundError:
        raise TailorError(f"{where}: {what} {digest[:19]} is missing from the image") from None
    if "sha256:" + h.hexdigest() != digest:
        raise TailorError(f"{where}: {what} {digest[:19]} is corrupt (its content has sha256:{h.hexdigest()[:12]}); "
                          f"the image is damaged, fetch or build it again")
    if desc.get("size") is not None and desc["size"] != n:
        raise TailorError(f"{where}: {what} {digest[:19]} has {n} bytes, its descriptor says {desc['size']}")


def _read_json_blob(layout: Path, desc: dict, what: str, where: str) -> dict:
    path = _blob(layout, desc["digest"]) if DIGEST.match(str(desc.get("digest", ""))) else Path("/nonexistent")
    _verify_blob(path, desc, what, where)
    try:
        data = json.loads(path.read_bytes())
    except ValueError:
        raise TailorError(f"{where}: {what} {desc['digest'][:19]} is not JSON") from None
    if not isinstance(data, dict):
        raise TailorError(f"{where}: {what} {desc['digest'][:19]} is not a JSON object")
    return data


def _platform_manifest(layout: Path, desc: dict, where: str) -> dict:
    """Follow an index to its linux/amd64 manifest descriptor (a manifest's own descriptor is returned as is)."""
    for _ in range(4):
        if desc.get("mediaType") not in INDEX_TYPES:
            return desc
        index = _read_json_blob(layout, desc, "index", where)
        found = [m for m in index.get("manifests", []) if isinstance(m, dict)
                 and (m.get("platform") or {}).get("architecture") == "amd64"
                 and (m.get("platform") or {}).get("os") == "linux"]
        if not found:
            platforms = [m.get("platform") or {} for m in index.get("manifests", []) if isinstance(m, dict)]
            plats = sorted({f"{p.get('os', '?')}/{p.get('architecture', '?')}" for p in platforms})
            raise TailorError(f"{where}: the image has no linux/amd64 variant (it has {', '.join(plats) or 'none'}); "
                              f"tailor builds amd64/linux microVMs only")
        desc = found[0]
    raise TailorError(f"{where}: indexes nested too deeply")


@dataclass(frozen=True)
class Image:
    """A verified image in the cache: the pinned digest, its manifest and config, the layout holding its blobs."""

    ref: ImageRef
    digest: str
    layout: Path
    manifest_digest: str
    manifest: dict
    config_digest: str
    config: dict


def cache_dir() -> Path:
    return out_dir() / "cache" / "oci"


def verify(layout: Path, top: dict, ref: ImageRef, digest: str, where: str) -> Image:
    """Check the index/manifest at *top*, the config and every layer in *layout*; return the image."""
    desc = _platform_manifest(layout, top, where)
    manifest = _read_json_blob(layout, desc, "manifest", where)
    if manifest.get("mediaType", desc.get("mediaType")) not in MANIFEST_TYPES and "layers" not in manifest:
        raise TailorError(f"{where}: {desc['digest'][:19]} is not an image manifest")
    cdesc = manifest.get("config")
    if not isinstance(cdesc, dict):
        raise TailorError(f"{where}: the manifest has no config")
    config = _read_json_blob(layout, cdesc, "config", where)
    arch, osname = config.get("architecture"), config.get("os")
    if (osname, arch) != ("linux", "amd64"):
        raise TailorError(f"{where}: the image is {osname}/{arch}; tailor builds amd64/linux microVMs only")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise TailorError(f"{where}: the manifest has no layer list")
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or layer.get("mediaType") not in LAYER_TYPES:
            kind = layer.get("mediaType") if isinstance(layer, dict) else layer
            raise TailorError(f"{where}: layer {i} has media type {kind!r}; tailor reads tar and tar+gzip layers")
        path = _blob(layout, layer["digest"]) if DIGEST.match(str(layer.get("digest", ""))) else Path("/none")
        _verify_blob(path, layer, f"layer {i}", where)
    return Image(ref=ref, digest=digest, layout=layout, manifest_digest=desc["digest"], manifest=manifest,
                 config_digest=cdesc["digest"], config=config)


def _index_entry(layout: Path, name: str | None, where: str, hint: str = "build the image first") -> dict:
    """The descriptor tagged *name* in *layout*'s index.json (the only one when *name* is None)."""
    index_path = layout / "index.json"
    try:
        index = json.loads(index_path.read_text())
    except FileNotFoundError:
        raise TailorError(f"{where}: {display_path(layout)} is not an OCI image layout (no index.json); "
                          f"{hint}") from None
    except (OSError, ValueError) as e:
        raise TailorError(f"{where}: {display_path(index_path)} is unreadable ({e})") from None
    manifests = [m for m in index.get("manifests", []) if isinstance(m, dict)]
    if name is None:
        if len(manifests) != 1:
            raise TailorError(f"{where}: {display_path(layout)} holds {len(manifests)} images; "
                              f"name one with oci:DIR:TAG")
        return manifests[0]
    found = [m for m in manifests if (m.get("annotations") or {}).get(REF_NAME) == name]
    if not found:
        tags = sorted((m.get("annotations") or {}).get(REF_NAME, "?") for m in manifests)
        raise TailorError(f"{where}: no tag {name!r} in {display_path(layout)} (it has {', '.join(tags) or 'none'})")
    return found[0]


def _build_hint(ref: ImageRef) -> str:
    task = local_image_task(ref.text)
    return f"build it first (doit {task})" if task else "build the image first"


def resolve(ref: ImageRef, origin: str) -> str:
    """The digest *ref* names today (registry, layout or archive); nothing is written."""
    where = f"{origin}: rootfs.image: {ref.text}"
    if ref.transport == "docker":
        print(f"tailor: resolving {ref.text} with skopeo", file=sys.stderr, flush=True)
        raw = _skopeo(["inspect", "--raw", f"docker://{ref.location}:{ref.tag}"], ref, origin).stdout
        return "sha256:" + hashlib.sha256(raw).hexdigest()
    if ref.transport == "oci":
        return _index_entry(ref.path(), ref.tag, where, _build_hint(ref))["digest"]
    scratch = makedirs(cache_dir()) / f".resolve-{os.getpid()}"
    remove(scratch)
    try:
        _skopeo(["copy", "-q", f"docker-archive:{ref.path()}", f"oci:{scratch}:image"], ref, origin)
        return _index_entry(scratch, "image", where)["digest"]
    finally:
        remove(scratch)


def cached(ref: ImageRef, digest: str, origin: str) -> Image | None:
    """The image pinned at *digest* when the cache has it and it verifies again, else None.

    A cached copy that no longer verifies (a damaged blob) is reported and fetched again."""
    layout = cache_dir()
    where = f"{origin}: rootfs.image: {ref.text}"
    try:
        index = json.loads((layout / "index.json").read_text())
    except (OSError, ValueError):
        return None
    for m in index.get("manifests", []) if isinstance(index, dict) else []:
        if isinstance(m, dict) and (m.get("annotations") or {}).get(REF_NAME) == digest:
            try:
                return verify(layout, m, ref, digest, where)
            except TailorError as e:
                print(f"tailor: the cached copy of {ref.unpinned}@{digest[:19]} is damaged ({str(e).split(': ')[-1]}); "
                      f"fetching it again", file=sys.stderr, flush=True)
                return None
    return None


def fetch(ref: ImageRef, digest: str, origin: str) -> Image:
    """The image *ref* pinned at *digest*, verified, from the cache or fetched into it."""
    where = f"{origin}: rootfs.image: {ref.text}"
    layout = makedirs(cache_dir())
    img = cached(ref, digest, origin)
    if img is not None:
        return img
    with file_lock(layout / ".lock", "the image cache"):
        img = cached(ref, digest, origin)
        if img is not None:
            return img
        scratch = layout / f".fetch-{os.getpid()}"
        remove(scratch)
        try:
            top = _fetch_into(ref, digest, scratch, where, origin)
            img = verify(scratch, top, ref, digest, where)
            _store(scratch, layout, top, digest, img)
        finally:
            remove(scratch)
    return verify(layout, _cache_entry(layout, digest), ref, digest, where)


def _fetch_into(ref: ImageRef, digest: str, scratch: Path, where: str, origin: str) -> dict:
    """Copy the image into the OCI layout *scratch*; return the descriptor of the pinned digest in it."""
    if ref.transport == "docker":
        print(f"tailor: fetching {ref.unpinned}@{digest} with skopeo", file=sys.stderr, flush=True)
        name = f"docker://{ref.location}@{digest}"
        raw = _skopeo(["inspect", "--raw", name], ref, origin, digest).stdout
        got = "sha256:" + hashlib.sha256(raw).hexdigest()
        if got != digest:
            raise TailorError(f"{where}: the registry's manifest has {got}, not the pinned {digest}; "
                              f"the registry is not serving what was pinned")
        top = json.loads(raw)
        media = top.get("mediaType") or (OCI_INDEX if "manifests" in top else OCI_MANIFEST)
        makedirs(scratch / "blobs" / "sha256")
        write_atomic(_blob(scratch, digest), raw)
        desc = {"mediaType": media, "digest": digest, "size": len(raw)}
        single = _platform_manifest(scratch, desc, where)  # an index: pick linux/amd64 before copying
        if single["digest"] != digest:  # the platform's manifest, as the registry serves it, checked here too
            child = _skopeo(["inspect", "--raw", f"docker://{ref.location}@{single['digest']}"], ref, origin,
                            single["digest"]).stdout
            if "sha256:" + hashlib.sha256(child).hexdigest() != single["digest"]:
                raise TailorError(f"{where}: the registry's manifest {single['digest'][:19]} does not match its digest")
            write_atomic(_blob(scratch, single["digest"]), child)
        source = f"docker://{ref.location}@{single['digest']}"
        proc = _skopeo(["copy", "-q", "--preserve-digests", source, f"oci:{scratch}:image"], ref, origin,
                       single["digest"], check=False)
        if proc.returncode != 0:
            # A Docker schema-2 manifest cannot be stored unchanged in an OCI layout: skopeo converts the
            # manifest (tailor keeps and verifies the registry's own, written above) and copies the config
            # and layers as they are, which are checked against the registry's manifest.
            _skopeo(["copy", "-q", source, f"oci:{scratch}:image"], ref, origin, single["digest"])
        return desc
    if ref.transport == "docker-archive":
        _skopeo(["copy", "-q", f"docker-archive:{ref.path()}", f"oci:{scratch}:image"], ref, origin)
        desc = _index_entry(scratch, "image", where)
    else:
        src = ref.path()
        entry = _index_entry(src, ref.tag, where, _build_hint(ref)) if not ref.digest else None
        try:
            entries = json.loads((src / "index.json").read_text()).get("manifests", [])
        except (OSError, ValueError):
            entries = []
        desc = next((m for m in entries if isinstance(m, dict) and m.get("digest") == digest), None)
        if desc is None:
            now = f" (its tag points at {entry['digest']} now; `python -m tailor pin-image <app>` moves the pin)" \
                if entry else ""
            raise TailorError(f"{where}: {display_path(src)} has no image with the pinned digest {digest}{now}; "
                              f"fix the digest or build the image")
        _copy_layout(src, scratch, desc, where)
    if desc["digest"] != digest:
        raise TailorError(f"{where}: it is {desc['digest']} now, not the pinned {digest}; "
                          f"run `python -m tailor pin-image <app>` to move the pin")
    return desc


def _copy_layout(src: Path, dest: Path, desc: dict, where: str) -> None:
    """Copy the blobs of the image *desc* (index, manifest, config, layers) from layout *src* to *dest*."""
    makedirs(dest / "blobs" / "sha256")
    todo = [desc]
    while todo:
        d = todo.pop()
        digest = str(d.get("digest", ""))
        if not DIGEST.match(digest):
            raise TailorError(f"{where}: descriptor with digest {digest!r}, not sha256")
        path = _blob(src, digest)
        if not path.exists():
            raise TailorError(f"{where}: blob {digest[:19]} is missing from {display_path(src)}")
        shutil.copyfile(path, _blob(dest, digest))
        if d.get("mediaType") in INDEX_TYPES + MANIFEST_TYPES:
            data = json.loads(path.read_bytes())
            todo += [m for m in data.get("manifests", []) if (m.get("platform") or {}).get("architecture")
                     in (None, "amd64")]
            todo += ([data["config"]] if isinstance(data.get("config"), dict) else []) + list(data.get("layers", []))


def _cache_entry(layout: Path, digest: str) -> dict:
    index = json.loads((layout / "index.json").read_text())
    return next(m for m in index["manifests"] if m["annotations"][REF_NAME] == digest)


def _store(scratch: Path, layout: Path, top: dict, digest: str, img: Image) -> None:
    """Move the verified blobs of *scratch* into the cache and tag *top* there by its pinned digest."""
    blobs = makedirs(layout / "blobs" / "sha256")
    for p in (scratch / "blobs" / "sha256").iterdir():  # verified: they also replace a damaged cached copy
        os.replace(p, blobs / p.name)
    if not (layout / "oci-layout").exists():
        write_atomic(layout / "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}, sort_keys=True))
    index = {"schemaVersion": 2, "manifests": []}
    try:
        old = json.loads((layout / "index.json").read_text())
        if isinstance(old, dict) and isinstance(old.get("manifests"), list):
            index = old
    except (OSError, ValueError):
        pass
    entry = {k: top[k] for k in ("mediaType", "digest", "size") if k in top}
    entry["annotations"] = {REF_NAME: digest}
    index["manifests"] = [m for m in index["manifests"] if (m.get("annotations") or {}).get(REF_NAME) != digest]
    index["manifests"].append(entry)
    write_atomic(layout / "index.json", json.dumps(index, sort_keys=True, indent=2) + "\n")


def obtain(ref_text: str, origin: str) -> Image:
    """The recipe's image: parsed, pinned, fetched and verified."""
    ref = parse_reference(ref_text)
    digest = locked_digest(ref)
    if digest:
        return fetch(ref, digest, origin)
    digest = resolve(ref, origin)
    img = fetch(ref, digest, origin)  # pinned only once it fetched and verified
    _record_new(ref, digest)
    return img


# --------------------------------------------------------------------------
# Layers


def _safe_name(name: str, where: str) -> str:
    """The entry's path relative to the tree ('' for the root); absolute or `..` paths are refused."""
    if name.startswith("/") or ".." in name.split("/"):
        raise TailorError(f"{where}: entry {name!r} would write outside the image tree (absolute or `..` path); "
                          f"the image is unsafe, tailor will not use it")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts)


def _link_escapes(entry_path: str, target: str) -> bool:
    """True when the relative symlink *target* of the entry at *entry_path* climbs above the tree."""
    if target.startswith("/"):
        return False  # absolute targets are taken inside the image (chroot semantics)
    depth = len(entry_path.split("/")) - 1
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def _parent(root: Path, rel: str, where: str, create: bool = True) -> Path:
    """The host directory that will hold in-tree *rel*; symlinks on the way resolve inside the tree."""
    from tailor.elf import resolve_in_root

    parent = os.path.dirname(rel)
    real = resolve_in_root(root, "/" + parent) if parent else "/"
    host = root / real.lstrip("/")
    if not host.is_dir() and create:
        if host.exists() or host.is_symlink():
            os.unlink(host)
        os.makedirs(host, mode=0o755)
    return host


def _clear(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _own(path: Path, info: tarfile.TarInfo) -> None:
    if os.geteuid() == 0:
        os.lchown(path, info.uid, info.gid)


def apply_layer(root: Path, blob: Path, kind: str, where: str) -> list[str]:
    """Apply one layer tar to *root*: whiteouts first-class, nothing outside *root*; returns skipped devices."""
    skipped: list[str] = []
    created: set[str] = set()
    dir_modes: list[tuple[Path, tarfile.TarInfo]] = []
    opener = gzip.open if kind == "gzip" else open
    try:
        with opener(blob, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tf:
            for info in tf:
                rel = _safe_name(info.name, where)
                if not rel:
                    continue
                base = os.path.basename(rel)
                if base == OPAQUE:
                    d = _parent(root, rel, where, create=False)
                    for child in list(d.iterdir()) if d.is_dir() else []:
                        crel = os.path.join(os.path.dirname(rel), child.name)
                        if crel not in created:
                            _clear(child)
                    continue
                if base.startswith(WHITEOUT):
                    gone = _parent(root, rel, where, create=False) / base[len(WHITEOUT):]
                    if gone.exists() or gone.is_symlink():
                        _clear(gone)
                    continue
                if info.issym() and _link_escapes(rel, info.linkname):
                    raise TailorError(f"{where}: symlink {rel!r} -> {info.linkname!r} leads outside the image tree; "
                                      f"the image is unsafe, tailor will not use it")
                if info.ischr() or info.isblk():
                    skipped.append("/" + rel)
                    continue
                host = _parent(root, rel, where) / base
                created.add(rel)
                if info.isdir():
                    if host.is_symlink() or (host.exists() and not host.is_dir()):
                        host.unlink()
                    if not host.exists():
                        os.mkdir(host, 0o700)
                    _own(host, info)
                    dir_modes.append((host, info))
                    continue
                _clear(host)
                if info.issym():
                    os.symlink(info.linkname, host)
                    _own(host, info)
                elif info.islnk():
                    target = _safe_name(info.linkname, where)
                    if not target:
                        raise TailorError(f"{where}: hard link {rel!r} to the tree's root; the image is unsafe")
                    from tailor.elf import resolve_in_root

                    tparent = os.path.dirname(target)
                    real = (resolve_in_root(root, "/" + tparent) if tparent else "/").rstrip("/")
                    thost = root / (real + "/" + os.path.basename(target)).lstrip("/")
                    if not (thost.is_file() or thost.is_symlink()):
                        raise TailorError(f"{where}: hard link {rel!r} -> {info.linkname!r}: no such file earlier "
                                          f"in the image")
                    os.link(thost, host, follow_symlinks=False)
                elif info.isfifo():
                    os.mkfifo(host, 0o600)
                    _own(host, info)
                    os.chmod(host, stat.S_IMODE(info.mode))
                elif info.isreg():
                    src = tf.extractfile(info)
                    with open(host, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    _own(host, info)
                    os.chmod(host, info.mode & 0o7777)
                else:
                    skipped.append("/" + rel)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError) as e:
        if isinstance(e, OSError) and e.errno == 28:
            raise TailorError(f"{root}: no space left on device; free some space and rerun") from None
        raise TailorError(f"{where}: cannot read the layer ({e}); the image is damaged") from None
    for host, info in reversed(dir_modes):
        os.chmod(host, info.mode & 0o7777)
    return skipped


def merge_tree(src: Path, root: Path, where: str) -> None:
    """Copy the extracted packages in *src* over the image tree *root*, following the image's directory
    symlinks inside the tree (a merged-/usr image keeps /bin -> usr/bin)."""
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(src))
            host = _parent(root, rel, where) / name
            st = p.lstat()
            if stat.S_ISDIR(st.st_mode):
                if host.is_dir():
                    continue
                _clear(host)
                os.mkdir(host, stat.S_IMODE(st.st_mode))
            elif stat.S_ISLNK(st.st_mode):
                _clear(host)
                os.symlink(os.readlink(p), host)
            else:
                _clear(host)
                shutil.copy2(p, host)


def unpack(img: Image, dest: Path, origin: str) -> list[str]:
    """Apply the image's layers in order to the empty directory *dest*; returns the device nodes skipped."""
    makedirs(dest)
    skipped = []
    layers = img.manifest["layers"]
    for i, layer in enumerate(layers):
        where = f"{origin}: rootfs.image: {img.ref.text}: layer {i} ({layer['digest'][7:19]})"
        print(f"tailor: applying layer {i + 1}/{len(layers)} of {img.ref.unpinned} "
              f"({layer.get('size', 0) / 1e6:.1f} MB)", file=sys.stderr, flush=True)
        skipped += apply_layer(dest, _blob(img.layout, layer["digest"]), LAYER_TYPES[layer["mediaType"]], where)
    return skipped


# --------------------------------------------------------------------------
# The app from the image config


def _user_name(tree: Path, user: str, where: str) -> str | None:
    """The passwd name of an image ``User`` (name, uid, name:group or uid:gid); None for root."""
    who = user.split(":", 1)[0]
    if who in ("", "0", "root"):
        return None
    passwd = tree / "etc" / "passwd"
    lines = passwd.read_text(errors="replace").splitlines() if passwd.is_file() and not passwd.is_symlink() else []
    for line in lines:
        f = line.split(":")
        if len(f) >= 3 and (f[0] == who or f[2] == who):
            return f[0]
    raise TailorError(f"{where}: the image's User {user!r} is not in its /etc/passwd; set app.user in the recipe")


def app_from_config(app, given: tuple[str, ...], config: dict, tree: Path, where: str):
    """*app* (an AppSpec) completed from the image *config*: each recipe key in *given* wins over the image."""
    cfg = config.get("config") or {}
    entrypoint = list(cfg.get("Entrypoint") or [])
    cmd = list(cfg.get("Cmd") or [])
    changes = {}
    if "command" in given:
        argv = [app.command] + (list(app.args) if "args" in given else [])
    elif "args" in given:
        argv = (entrypoint or []) + list(app.args)
        if not entrypoint:
            argv = list(app.args)
    else:
        argv = entrypoint + cmd
    if not argv:
        raise TailorError(f"{where}: the image has no Entrypoint or Cmd; set app.command in the recipe")
    changes["command"], changes["args"] = str(argv[0]), tuple(str(a) for a in argv[1:])
    env = {}
    for item in cfg.get("Env") or []:
        k, _, v = str(item).partition("=")
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
            env[k] = v
    env.update(dict(app.env))
    changes["env"] = tuple(env.items())
    if "workdir" not in given and cfg.get("WorkingDir"):
        changes["workdir"] = cfg["WorkingDir"]
    if "user" not in given and cfg.get("User"):
        changes["user"] = _user_name(tree, str(cfg["User"]), where)
    return replace(app, **changes)


def image_summary(img: Image) -> dict:
    return {"reference": img.ref.text, "digest": img.digest, "manifest": img.manifest_digest,
            "config": img.config_digest, "layers": [layer["digest"] for layer in img.manifest["layers"]]}


# --------------------------------------------------------------------------
# Images built locally from Debian packages (the shipped example, and the tests' images)


@dataclass(frozen=True)
class ImageSpec:
    """``images/<name>.yaml``: an image made of Debian packages (data only)."""

    name: str
    path: Path
    tag: str
    packages: tuple[str, ...]
    keep: tuple[str, ...] = ()
    """In-image paths kept with the ELF closure of the programs among them; empty keeps every file."""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = "/"
    user: str = ""
    architecture: str = "amd64"


IMAGES_DIR = PROJECT / "images"
_SPEC_KEYS = ("tag", "packages", "keep", "entrypoint", "cmd", "env", "workdir", "user")


def load_spec(path: Path) -> ImageSpec:
    """Read ``images/<name>.yaml`` (one line per mistake, like recipes)."""
    import yaml

    from tailor.util import display_path

    where = display_path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise TailorError(f"{where}: cannot read the image spec ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise TailorError(f"{where}: expected a mapping with keys {', '.join(_SPEC_KEYS)}")
    for k in data:
        if k not in _SPEC_KEYS:
            raise TailorError(f"{where}: {k}: unknown key; allowed keys: {', '.join(_SPEC_KEYS)}")

    def strings(key):
        v = data.get(key) or []
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise TailorError(f"{where}: {key}: expected a list of strings")
        return tuple(v)

    env = data.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise TailorError(f"{where}: env: expected a mapping of NAME: \"value\"")
    tag = str(data.get("tag", "latest"))
    if not _TAG.match(tag):
        raise TailorError(f"{where}: tag: {tag!r} is not a valid tag")
    if not strings("packages"):
        raise TailorError(f"{where}: packages: list the Debian packages the image is made of")
    return ImageSpec(name=path.stem, path=path, tag=tag, packages=strings("packages"), keep=strings("keep"),
                     entrypoint=strings("entrypoint"), cmd=strings("cmd"), env=tuple(sorted(env.items())),
                     workdir=str(data.get("workdir", "/")), user=str(data.get("user", "")))


def _layer_from_tree(tree: Path, dest: Path, epoch: int) -> None:
    """A deterministic uncompressed tar of *tree* (sorted, times clamped, owners as in the tree)."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            paths.append(os.path.relpath(os.path.join(dirpath, name), tree))
    paths.sort(key=lambda p: p.encode())
    with open(dest, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for rel in paths:
            info = tf.gettarinfo(str(tree / rel), arcname=rel)
            info.mtime = min(int(info.mtime), epoch)
            info.uname = info.gname = ""
            if info.isreg():
                with open(tree / rel, "rb") as f:
                    tf.addfile(info, f)
            else:
                tf.addfile(info)


def write_layout(layout: Path, tag: str, layers: list[Path], config: dict) -> str:
    """Write an OCI image layout (uncompressed tar layers) to *layout*; return the manifest digest."""
    blobs = makedirs(layout / "blobs" / "sha256")

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        if not (blobs / digest).exists():
            write_atomic(blobs / digest, data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    descs = []
    diff_ids = []
    for layer in layers:
        digest = hashlib.sha256(layer.read_bytes()).hexdigest()
        os.replace(layer, blobs / digest)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{digest}",
                      "size": (blobs / digest).stat().st_size})
        diff_ids.append(f"sha256:{digest}")
    config = dict(config, rootfs={"type": "layers", "diff_ids": diff_ids})
    cdesc = dict(put(json.dumps(config, sort_keys=True).encode()), mediaType=OCI_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc, "layers": descs}
    mdesc = dict(put(json.dumps(manifest, sort_keys=True).encode()), mediaType=OCI_MANIFEST,
                 annotations={REF_NAME: tag})
    index = {"schemaVersion": 2, "manifests": [mdesc]}
    if (layout / "index.json").exists():
        old = json.loads((layout / "index.json").read_text())
        index["manifests"] = [m for m in old.get("manifests", [])
                              if (m.get("annotations") or {}).get(REF_NAME) != tag] + [mdesc]
    write_atomic(layout / "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}, sort_keys=True))
    write_atomic(layout / "index.json", json.dumps(index, sort_keys=True, indent=2) + "\n")
    return mdesc["digest"]


def image_config(*, entrypoint=(), cmd=(), env=(), workdir="/", user="", architecture="amd64") -> dict:
    cfg = {"Env": [f"{k}={v}" for k, v in env], "WorkingDir": workdir}
    if entrypoint:
        cfg["Entrypoint"] = list(entrypoint)
    if cmd:
        cfg["Cmd"] = list(cmd)
    if user:
        cfg["User"] = user
    return {"architecture": architecture, "os": "linux", "config": cfg}


def build_from_packages(spec: ImageSpec, layout: Path) -> str:
    """Build *spec*'s image into the OCI layout *layout* (tag ``spec.tag``); returns the manifest digest.

    The Debian packages' closure is extracted (as the rootfs stage does); with
    ``keep``, only those paths and the ELF closure of the programs among them
    stay, with ``/etc/passwd`` and ``/etc/group``. Same packages, same bytes.
    """
    from tailor import rootfs
    from tailor.elf import library_closure
    from tailor.kernel import source_date_epoch
    from tailor.util import display_path

    where = display_path(spec.path)
    epoch = source_date_epoch()
    closure = rootfs.apt_closure(list(spec.packages), f"{where}: packages")
    debs = rootfs.download(closure)
    work = makedirs(layout.parent) / f".{layout.name}.build-{os.getpid()}"
    remove(work)
    try:
        full = work / "full"
        rootfs.extract(debs, full)
        tree = full
        if spec.keep:
            tree = makedirs(work / "slim")
            files = rootfs._expand_files(full, spec.keep, f"{where}: keep")
            from tailor.elf import resolve_in_root

            real = sorted({resolve_in_root(full, f) for f in files})
            keep = set(files) | set(real) | set(library_closure(full, rootfs._elf_files(full, real)))
            for extra in ("/etc/passwd", "/etc/group"):
                if (full / extra[1:]).is_file():
                    keep.add(extra)
            for p in sorted(keep):
                rootfs.copy_in(full, tree, p)
            if spec.user:  # the user the image runs as must exist in it
                rootfs.add_users(tree, (spec.user.split(":")[0],))
        rootfs.normalise(tree, epoch)
        layer = work / "layer.tar"
        _layer_from_tree(tree, layer, epoch)
        scratch = work / "layout"
        if layout.exists():
            shutil.copytree(layout, scratch)
        digest = write_layout(scratch, spec.tag, [layer],
                              image_config(entrypoint=spec.entrypoint, cmd=spec.cmd, env=spec.env,
                                           workdir=spec.workdir, user=spec.user))
        from tailor.util import replace_dir

        replace_dir(scratch, layout)
    finally:
        remove(work)
    print(f"[image:{spec.name}] {layout.name}:{spec.tag} is {digest}", file=sys.stderr)
    return digest


def build_local(name: str) -> str:
    """Build ``images/<name>.yaml`` into ``out/images/<name>`` (``doit image:<name>``)."""
    return build_from_packages(load_spec(IMAGES_DIR / f"{name}.yaml"), local_layout(name))


def local_layout(name: str) -> Path:
    return out_dir() / "images" / name


def spec_files() -> list[Path]:
    return sorted(IMAGES_DIR.glob("*.yaml"))


def tasks(action):
    """doit tasks ``image:<name>``: the images of ``images/*.yaml``, built from Debian packages."""
    from doit.tools import config_changed

    for path in spec_files():
        yield {
            "basename": "image", "name": path.stem,
            "doc": f"build the OCI image of images/{path.name} from Debian packages into out/images/{path.stem}",
            "actions": [action(build_local, path.stem)],
            "file_dep": [str(path)],
            "targets": [str(local_layout(path.stem) / "index.json")],
            "clean": [(remove, [local_layout(path.stem)])],
            "uptodate": [config_changed({"version": "1"})],
            "verbosity": 2,
        }


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
