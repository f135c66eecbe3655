"""The verified image cache: skopeo, blob checks and one OCI layout under ``out/cache/oci/``.

:func:`resolve` gives the digest a reference names today; :func:`fetch` brings the image pinned at
a digest into the cache (or finds it there), checking the index or manifest, the config and every
layer against their sha256 digests and sizes each time; :func:`verify` is that check.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tailor import paths
from tailor.errors import TailorError
from tailor.kinds import Arch
from tailor.image.layout import (blob_dir, blob_path, index_manifests, put_blob, read_index, read_json_blob, set_tag,
                                 tag_of, verify_blob)
from tailor.image.reference import (DIGEST, INDEX_TYPES, LAYER_TYPES, MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST,
                                    ImageRef, local_image_task)
from tailor.util import display_path, file_lock, makedirs, remove


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


def _platform_manifest(layout: Path, desc: dict, where: str, goarch: str = "amd64") -> dict:
    """Follow an index to its linux/*goarch* manifest descriptor (a manifest's own descriptor is returned as
    is; :func:`verify` checks its config's platform)."""
    for _ in range(4):
        if desc.get("mediaType") not in INDEX_TYPES:
            return desc
        index = read_json_blob(layout, desc, "index", where)
        found = [m for m in index.get("manifests", []) if isinstance(m, dict)
                 and (m.get("platform") or {}).get("architecture") == goarch
                 and (m.get("platform") or {}).get("os") == "linux"]
        if not found:
            platforms = [m.get("platform") or {} for m in index.get("manifests", []) if isinstance(m, dict)]
            plats = sorted({f"{p.get('os', '?')}/{p.get('architecture', '?')}" for p in platforms})
            raise TailorError(f"{where}: the image has no linux/{goarch} variant (it has {', '.join(plats) or 'none'}); "
                              f"{_for_arch(goarch)}")
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
    return paths.cache_dir("oci")


def _for_arch(goarch: str) -> str:
    """What a platform refusal tells the user: which architecture the recipe builds, and the way out."""
    arch = next((a for a in Arch if a.goarch == goarch), goarch)  # the recipe's name for it (kinds.Arch)
    return (f"the recipe builds linux/{goarch} microVMs (arch: {arch}); use an image with a linux/{goarch} "
            f"variant or set the recipe's arch to the image's")


def verify(layout: Path, top: dict, ref: ImageRef, digest: str, where: str, goarch: str = "amd64") -> Image:
    """Check the index/manifest at *top* (an index narrowed to its linux/*goarch* manifest), the config and
    every layer in *layout*; return the image."""
    desc = _platform_manifest(layout, top, where, goarch)
    manifest = read_json_blob(layout, desc, "manifest", where)
    if manifest.get("mediaType", desc.get("mediaType")) not in MANIFEST_TYPES and "layers" not in manifest:
        raise TailorError(f"{where}: {desc['digest'][:19]} is not an image manifest")
    cdesc = manifest.get("config")
    if not isinstance(cdesc, dict):
        raise TailorError(f"{where}: the manifest has no config")
    config = read_json_blob(layout, cdesc, "config", where)
    arch, osname = config.get("architecture"), config.get("os")
    if (osname, arch) != ("linux", goarch):
        raise TailorError(f"{where}: the image is {osname}/{arch}; {_for_arch(goarch)}")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise TailorError(f"{where}: the manifest has no layer list")
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or layer.get("mediaType") not in LAYER_TYPES:
            kind = layer.get("mediaType") if isinstance(layer, dict) else layer
            raise TailorError(f"{where}: layer {i} has media type {kind!r}; tailor reads tar and tar+gzip layers")
        verify_blob(layout, layer, f"layer {i}", where)
    return Image(ref=ref, digest=digest, layout=layout, manifest_digest=desc["digest"], manifest=manifest,
                 config_digest=cdesc["digest"], config=config)


def _index_entry(layout: Path, name: str | None, where: str, hint: str = "build the image first") -> dict:
    """The descriptor tagged *name* in *layout*'s index.json (the only one when *name* is None)."""
    manifests = [m for m in read_index(layout, where, hint)["manifests"] if isinstance(m, dict)]
    if name is None:
        if len(manifests) != 1:
            raise TailorError(f"{where}: {display_path(layout)} holds {len(manifests)} images; "
                              f"name one with oci:DIR:TAG")
        return manifests[0]
    found = [m for m in manifests if tag_of(m) == name]
    if not found:
        tags = sorted(tag_of(m) or "?" for m in manifests)
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


def cached(ref: ImageRef, digest: str, origin: str, goarch: str = "amd64", quiet: bool = False) -> Image | None:
    """The linux/*goarch* image pinned at *digest* when the cache has it and it verifies again, else None.

    A cached copy that no longer verifies (a damaged blob, or an index fetched for another platform whose
    linux/*goarch* blobs are not there yet) is reported (unless *quiet*) and fetched again."""
    layout = cache_dir()
    where = f"{origin}: rootfs.image: {ref.text}"
    for m in index_manifests(layout):
        if tag_of(m) == digest:
            try:
                return verify(layout, m, ref, digest, where, goarch)
            except TailorError as e:
                if quiet:
                    return None
                print(f"tailor: the cached copy of {ref.unpinned}@{digest[:19]} does not verify for linux/{goarch} "
                      f"({str(e).split(': ')[-1]}); fetching it again", file=sys.stderr, flush=True)
                return None
    return None


def fetch(ref: ImageRef, digest: str, origin: str, goarch: str = "amd64") -> Image:
    """The linux/*goarch* image *ref* pinned at *digest* (an index narrowed to that platform), verified,
    from the cache or fetched into it."""
    where = f"{origin}: rootfs.image: {ref.text}"
    layout = makedirs(cache_dir())
    img = cached(ref, digest, origin, goarch, quiet=True)  # asked again under the lock, which reports it
    if img is not None:
        return img
    with file_lock(layout / ".lock", "the image cache"):
        img = cached(ref, digest, origin, goarch)
        if img is not None:
            return img
        scratch = layout / f".fetch-{os.getpid()}"
        remove(scratch)
        try:
            top = _fetch_into(ref, digest, scratch, where, origin, goarch)
            img = verify(scratch, top, ref, digest, where, goarch)
            _store(scratch, layout, top, digest, img)
        finally:
            remove(scratch)
    return verify(layout, _cache_entry(layout, digest), ref, digest, where, goarch)


def _fetch_into(ref: ImageRef, digest: str, scratch: Path, where: str, origin: str, goarch: str = "amd64") -> dict:
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
        put_blob(scratch, raw)
        desc = {"mediaType": media, "digest": digest, "size": len(raw)}
        single = _platform_manifest(scratch, desc, where, goarch)  # an index: pick the platform before copying
        if single["digest"] != digest:  # the platform's manifest, as the registry serves it, checked here too
            child = _skopeo(["inspect", "--raw", f"docker://{ref.location}@{single['digest']}"], ref, origin,
                            single["digest"]).stdout
            if "sha256:" + hashlib.sha256(child).hexdigest() != single["digest"]:
                raise TailorError(f"{where}: the registry's manifest {single['digest'][:19]} does not match its digest")
            put_blob(scratch, child)
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
        desc = next((m for m in index_manifests(src) if m.get("digest") == digest), None)
        if desc is None:
            now = f" (its tag points at {entry['digest']} now; `python -m tailor pin-image <app>` moves the pin)" \
                if entry else ""
            raise TailorError(f"{where}: {display_path(src)} has no image with the pinned digest {digest}{now}; "
                              f"fix the digest or build the image")
        _copy_layout(src, scratch, desc, where, goarch)
    if desc["digest"] != digest:
        raise TailorError(f"{where}: it is {desc['digest']} now, not the pinned {digest}; "
                          f"run `python -m tailor pin-image <app>` to move the pin")
    return desc


def _copy_layout(src: Path, dest: Path, desc: dict, where: str, goarch: str = "amd64") -> None:
    """Copy the blobs of the image *desc* (index, its linux/*goarch* manifest, config, layers) from layout
    *src* to *dest*."""
    makedirs(blob_dir(dest))
    todo = [desc]
    while todo:
        d = todo.pop()
        digest = str(d.get("digest", ""))
        if not DIGEST.match(digest):
            raise TailorError(f"{where}: descriptor with digest {digest!r}, not sha256")
        path = blob_path(src, digest)
        if not path.exists():
            raise TailorError(f"{where}: blob {digest[:19]} is missing from {display_path(src)}")
        shutil.copyfile(path, blob_path(dest, digest))
        if d.get("mediaType") in INDEX_TYPES + MANIFEST_TYPES:
            data = json.loads(path.read_bytes())
            todo += [m for m in data.get("manifests", []) if (m.get("platform") or {}).get("architecture")
                     in (None, goarch)]
            todo += ([data["config"]] if isinstance(data.get("config"), dict) else []) + list(data.get("layers", []))


def _cache_entry(layout: Path, digest: str) -> dict:
    return next(m for m in index_manifests(layout) if tag_of(m) == digest)


def _store(scratch: Path, layout: Path, top: dict, digest: str, img: Image) -> None:
    """Move the verified blobs of *scratch* into the cache and tag *top* there by its pinned digest."""
    blobs = makedirs(blob_dir(layout))
    for p in blob_dir(scratch).iterdir():  # verified: they also replace a damaged cached copy
        os.replace(p, blobs / p.name)
    set_tag(layout, top, digest)
