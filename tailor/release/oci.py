"""The OCI image layout of a release for urunc: kernel, root image and ``urunc.json`` as tar layers.

:func:`oci_layout` writes it deterministically (same inputs, same digests); :func:`verify_oci` walks
it again checking every digest and size. Every JSON document is written with ``json.dumps``
(sorted keys), never through a template.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import os
import re
import shlex
import tarfile
from pathlib import Path

from tailor import __version__
from tailor.errors import TailorError
from tailor.image.reference import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, REF_NAME
from tailor.util import atomic_path, enabled_symbols, json_bytes, makedirs, sha256_file, write_atomic, write_json

URUNC_KERNEL = "/.boot/kernel"
URUNC_ROOTFS = "/.boot/rootfs"


def config_has(config_text: str, symbol: str) -> bool:
    """True when ``CONFIG_<symbol>=y`` is set in a .config's text."""
    return symbol in enabled_symbols(config_text)


def urunc_hypervisor(config_text: str) -> str:
    """The monitor urunc should use for a kernel: ``qemu`` needs PCI virtio (urunc's qemu is a ``pc``
    machine), so a kernel without ``VIRTIO_PCI`` (tailor's virtio-mmio kernels) gets ``firecracker``."""
    return "qemu" if config_has(config_text, "PCI") and config_has(config_text, "VIRTIO_PCI") else "firecracker"


def deterministic_tar(members: list[tuple[str, str | os.PathLike | bytes, int]], dest: str | os.PathLike,
                      epoch: int) -> Path:
    """Write an uncompressed ustar archive of *members* to *dest*, atomically; same inputs, same bytes.

    Each member is ``(path inside the archive, source file or bytes, mode)``.
    Parent directories are added (mode 0755); entries are sorted by path;
    every time is *epoch*; owner and group are 0 with empty names.
    """
    entries: dict[str, tuple[str | os.PathLike | bytes | None, int]] = {}
    for name, src, mode in members:
        name = name.strip("/")
        if not name or ".." in name.split("/"):
            raise TailorError(f"{name!r}: not a relative path for an archive member")
        parts = name.split("/")
        for i in range(1, len(parts)):
            entries.setdefault("/".join(parts[:i]), (None, 0o755))
        entries[name] = (src, mode)
    with atomic_path(dest) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
            for name in sorted(entries, key=lambda n: n.encode()):
                src, mode = entries[name]
                info = tarfile.TarInfo(name)
                info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = epoch, mode, 0, 0, "", ""
                if src is None:
                    info.type = tarfile.DIRTYPE
                    tf.addfile(info)
                elif isinstance(src, bytes):
                    info.size = len(src)
                    tf.addfile(info, io.BytesIO(src))
                else:
                    info.size = os.stat(src).st_size
                    with open(src, "rb") as f:
                        tf.addfile(info, f)
    return Path(dest)


def _blob_dir(layout: Path) -> Path:
    return layout / "blobs" / "sha256"


def _put_blob(layout: Path, data: bytes) -> dict:
    """Store *data* as a content-addressed blob; return its ``{"digest", "size"}`` descriptor."""
    digest = hashlib.sha256(data).hexdigest()
    path = _blob_dir(layout) / digest
    if not path.exists():
        write_atomic(path, data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _put_tar_blob(layout: Path, members, epoch: int) -> dict:
    scratch = _blob_dir(layout) / f".layer-{os.getpid()}.tar"
    deterministic_tar(members, scratch, epoch)
    digest = sha256_file(scratch)
    size = scratch.stat().st_size
    os.replace(scratch, _blob_dir(layout) / digest)
    return {"digest": f"sha256:{digest}", "size": size}


def urunc_annotations(*, hypervisor: str, argv: list[str], rootfs_format: str) -> dict[str, str]:
    """urunc's annotations for a Linux kernel at /.boot/kernel with its root image at /.boot/rootfs."""
    out = {
        "com.urunc.unikernel.unikernelType": "linux",
        "com.urunc.unikernel.hypervisor": hypervisor,
        "com.urunc.unikernel.binary": URUNC_KERNEL,
        "com.urunc.unikernel.cmdline": shlex.join(argv),
    }
    if rootfs_format == "cpio":
        out["com.urunc.unikernel.initrd"] = URUNC_ROOTFS
    else:
        out["com.urunc.unikernel.block"] = URUNC_ROOTFS
        out["com.urunc.unikernel.blkMntPoint"] = "/"
    return out


def oci_layout(dest: str | os.PathLike, *, app: str, version: str, kernel: str | os.PathLike,
               rootfs: str | os.PathLike, rootfs_format: str, argv: list[str], env: list[str],
               workdir: str, hypervisor: str, epoch: int) -> dict:
    """Write an OCI image layout of *app* for urunc into the new directory *dest*; return its descriptors.

    Three uncompressed tar layers: ``.boot/kernel`` (*kernel*),
    ``.boot/rootfs`` (*rootfs*, a newc cpio used as initrd or an ext2 block
    image) and ``urunc.json`` (the urunc annotations, values base64-encoded).
    The config has *argv* as Entrypoint (argv[0]) and Cmd (the rest), *env*
    and *workdir*; the manifest carries the urunc annotations; ``index.json``
    names the manifest ``org.opencontainers.image.ref.name=<version>``.
    """
    if rootfs_format not in ("cpio", "ext2"):
        raise TailorError(f"rootfs format {rootfs_format!r}: an OCI image for urunc needs cpio or ext2")
    layout = Path(dest)
    if layout.exists() and any(layout.iterdir()):
        raise TailorError(f"{layout}: exists and is not empty; an OCI layout is written into a new directory")
    makedirs(_blob_dir(layout))
    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    annotations = urunc_annotations(hypervisor=hypervisor, argv=argv, rootfs_format=rootfs_format)
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in annotations.items()}
    urunc_json = json_bytes(encoded)
    layers = []
    for what, members in (("kernel", [(URUNC_KERNEL, kernel, 0o644)]),
                          ("rootfs", [(URUNC_ROOTFS, rootfs, 0o644)]),
                          ("urunc.json", [("/urunc.json", urunc_json, 0o644)])):
        desc = _put_tar_blob(layout, members, epoch)
        desc["what"] = what
        layers.append(desc)
    config = _put_blob(layout, json_bytes({
        "created": created, "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": argv[:1], "Cmd": list(argv[1:]), "Env": list(env), "WorkingDir": workdir,
                   "Labels": annotations},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        "history": [{"created": created, "created_by": f"tailor {__version__}: {layer['what']}"} for layer in layers],
    }))
    manifest_annotations = dict(annotations)
    manifest_annotations.update({
        "org.opencontainers.image.title": f"tailor-{app}",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.created": created,
    })
    manifest = _put_blob(layout, json_bytes({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config["digest"], "size": config["size"]},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer["digest"], "size": layer["size"],
                    "annotations": {"org.opencontainers.image.title": layer["what"]}} for layer in layers],
        "annotations": manifest_annotations,
    }))
    write_json(layout / "index.json", {
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": manifest["digest"], "size": manifest["size"],
                       "platform": {"architecture": "amd64", "os": "linux"},
                       "annotations": {REF_NAME: version}}],
    })
    write_json(layout / "oci-layout", {"imageLayoutVersion": "1.0.0"})
    return {"manifest": manifest, "config": config, "layers": layers, "annotations": manifest_annotations,
            "ref": version}


def _read_blob(layout: Path, desc: dict, what: str) -> bytes:
    digest = desc.get("digest", "")
    if not re.match(r"^sha256:[0-9a-f]{64}$", digest):
        raise TailorError(f"{layout}: {what} has a bad digest {digest!r}")
    path = _blob_dir(layout) / digest.split(":", 1)[1]
    try:
        data = path.read_bytes()
    except OSError:
        raise TailorError(f"{layout}: {what} blob {digest} is missing") from None
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise TailorError(f"{layout}: {what} blob {digest} does not match its digest")
    if len(data) != desc.get("size"):
        raise TailorError(f"{layout}: {what} blob {digest} has {len(data)} bytes, "
                          f"its descriptor says {desc.get('size')}")
    return data


def verify_oci(layout: str | os.PathLike) -> dict:
    """Walk an OCI image layout (oci-layout, index, manifest, config, layers) checking every digest and size.

    Returns ``{"index", "manifest", "config", "layers": [tar member names per layer]}``
    for the single image; raises a TailorError naming the first problem. A
    blob that nothing references is a problem too.
    """
    layout = Path(layout)
    try:
        marker = json.loads((layout / "oci-layout").read_text())
        index = json.loads((layout / "index.json").read_text())
    except (OSError, ValueError) as e:
        raise TailorError(f"{layout}: not an OCI image layout ({e})") from None
    if marker.get("imageLayoutVersion") != "1.0.0":
        raise TailorError(f"{layout}: oci-layout says {marker!r}, expected imageLayoutVersion 1.0.0")
    if index.get("schemaVersion") != 2 or len(index.get("manifests", [])) != 1:
        raise TailorError(f"{layout}: index.json must have schemaVersion 2 and one manifest")
    mdesc = index["manifests"][0]
    if mdesc.get("mediaType") != OCI_MANIFEST:
        raise TailorError(f"{layout}: index.json's manifest has mediaType {mdesc.get('mediaType')!r}")
    manifest = json.loads(_read_blob(layout, mdesc, "manifest"))
    if manifest.get("mediaType") != OCI_MANIFEST or manifest.get("schemaVersion") != 2:
        raise TailorError(f"{layout}: the manifest is not an OCI image manifest")
    cdesc = manifest.get("config", {})
    if cdesc.get("mediaType") != OCI_CONFIG:
        raise TailorError(f"{layout}: the config has mediaType {cdesc.get('mediaType')!r}")
    config = json.loads(_read_blob(layout, cdesc, "config"))
    seen = {mdesc["digest"], cdesc["digest"]}
    members = []
    for i, ldesc in enumerate(manifest.get("layers", [])):
        if ldesc.get("mediaType") != OCI_LAYER:
            raise TailorError(f"{layout}: layer {i} has mediaType {ldesc.get('mediaType')!r}")
        data = _read_blob(layout, ldesc, f"layer {i}")
        seen.add(ldesc["digest"])
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            members.append([m.name for m in tf.getmembers()])
    diff_ids = config.get("rootfs", {}).get("diff_ids")
    if diff_ids != [d["digest"] for d in manifest.get("layers", [])]:
        raise TailorError(f"{layout}: the config's rootfs.diff_ids do not match the (uncompressed) layers")
    on_disk = {"sha256:" + p.name for p in _blob_dir(layout).iterdir() if not p.name.startswith(".")}
    if on_disk - seen:
        raise TailorError(f"{layout}: unreferenced blob(s) {', '.join(sorted(on_disk - seen))}")
    return {"index": index, "manifest": manifest, "config": config, "layers": members}
