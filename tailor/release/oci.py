"""The OCI image layout of a release for urunc: kernel, root image and ``urunc.json`` as tar layers.

:func:`oci_layout` writes it deterministically (same inputs, same digests); :func:`verify_oci` walks
it again checking every digest and size. Every JSON document is written with ``json.dumps``
(sorted keys), never through a template.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import shlex
import tarfile
from pathlib import Path

from tailor import __version__
from tailor.errors import TailorError
from tailor.image.layout import (LAYOUT_VERSION, blob_dir, deterministic_tar, put_blob, put_blob_file, read_index,
                                 read_json_blob, verify_blob, write_index)
from tailor.image.reference import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, REF_NAME
from tailor.kinds import Arch, RootFormat
from tailor.util import enabled_symbols, json_bytes, makedirs

URUNC_KERNEL = "/.boot/kernel"
URUNC_ROOTFS = "/.boot/rootfs"


def config_has(config_text: str, symbol: str) -> bool:
    """True when ``CONFIG_<symbol>=y`` is set in a .config's text."""
    return symbol in enabled_symbols(config_text)


def urunc_hypervisor(config_text: str) -> str:
    """The monitor urunc should use for a kernel: ``qemu`` needs PCI virtio (urunc's qemu is a ``pc``
    machine), so a kernel without ``VIRTIO_PCI`` (tailor's virtio-mmio kernels) gets ``firecracker``."""
    return "qemu" if config_has(config_text, "PCI") and config_has(config_text, "VIRTIO_PCI") else "firecracker"


def _put_tar_blob(layout: Path, members, epoch: int) -> dict:
    """Store a :func:`~tailor.image.layout.deterministic_tar` of *members* in *layout* as a blob; return
    its ``{"digest", "size"}`` descriptor."""
    scratch = blob_dir(layout) / f".layer-{os.getpid()}.tar"
    return put_blob_file(layout, deterministic_tar(members, scratch, epoch))


def urunc_annotations(*, hypervisor: str, argv: list[str], rootfs_format: str) -> dict[str, str]:
    """urunc's annotations for a Linux kernel at /.boot/kernel with its root image at /.boot/rootfs."""
    out = {
        "com.urunc.unikernel.unikernelType": "linux",
        "com.urunc.unikernel.hypervisor": hypervisor,
        "com.urunc.unikernel.binary": URUNC_KERNEL,
        "com.urunc.unikernel.cmdline": shlex.join(argv),
    }
    if RootFormat(rootfs_format).is_disk:
        out["com.urunc.unikernel.block"] = URUNC_ROOTFS
        out["com.urunc.unikernel.blkMntPoint"] = "/"
    else:
        out["com.urunc.unikernel.initrd"] = URUNC_ROOTFS
    return out


def oci_layout(dest: str | os.PathLike, *, app: str, version: str, kernel: str | os.PathLike,
               rootfs: str | os.PathLike, rootfs_format: str, argv: list[str], env: list[str],
               workdir: str, hypervisor: str, epoch: int, arch: Arch = Arch.X86_64) -> dict:
    """Write an OCI image layout of *app* for urunc into the new directory *dest*; return its descriptors.

    Three uncompressed tar layers: ``.boot/kernel`` (*kernel*),
    ``.boot/rootfs`` (*rootfs*, a newc cpio used as initrd or an ext2 block
    image) and ``urunc.json`` (the urunc annotations, values base64-encoded).
    The config has *argv* as Entrypoint (argv[0]) and Cmd (the rest), *env*
    and *workdir*; the manifest carries the urunc annotations; ``index.json``
    names the manifest ``org.opencontainers.image.ref.name=<version>``. The config's
    ``architecture`` and the index's platform are *arch*'s (``linux/amd64``, ``linux/arm64``).
    """
    if rootfs_format not in tuple(RootFormat):
        raise TailorError(f"rootfs format {rootfs_format!r}: an OCI image for urunc needs cpio or ext2")
    layout = Path(dest)
    if layout.exists() and any(layout.iterdir()):
        raise TailorError(f"{layout}: exists and is not empty; an OCI layout is written into a new directory")
    makedirs(blob_dir(layout))
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
    config = put_blob(layout, json_bytes({
        "created": created, "architecture": arch.goarch, "os": "linux",
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
    manifest = put_blob(layout, json_bytes({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config["digest"], "size": config["size"]},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer["digest"], "size": layer["size"],
                    "annotations": {"org.opencontainers.image.title": layer["what"]}} for layer in layers],
        "annotations": manifest_annotations,
    }))
    write_index(layout, [{"mediaType": OCI_MANIFEST, "digest": manifest["digest"], "size": manifest["size"],
                          "platform": {"architecture": arch.goarch, "os": "linux"}, "annotations": {REF_NAME: version}}],
                media_type=OCI_INDEX)
    return {"manifest": manifest, "config": config, "layers": layers, "annotations": manifest_annotations,
            "ref": version}


def verify_oci(layout: str | os.PathLike) -> dict:
    """Walk an OCI image layout (oci-layout, index, manifest, config, layers) checking every digest and size.

    Returns ``{"index", "manifest", "config", "layers": [tar member names per layer]}``
    for the single image; raises a TailorError naming the first problem. A
    blob that nothing references is a problem too.
    """
    layout = Path(layout)
    where = str(layout)
    try:
        marker = json.loads((layout / "oci-layout").read_text())
    except (OSError, ValueError) as e:
        raise TailorError(f"{layout}: not an OCI image layout ({e})") from None
    index = read_index(layout, where, "write the release again")
    if marker.get("imageLayoutVersion") != LAYOUT_VERSION:
        raise TailorError(f"{layout}: oci-layout says {marker!r}, expected imageLayoutVersion {LAYOUT_VERSION}")
    if index.get("schemaVersion") != 2 or len(index.get("manifests", [])) != 1:
        raise TailorError(f"{layout}: index.json must have schemaVersion 2 and one manifest")
    mdesc = index["manifests"][0]
    if mdesc.get("mediaType") != OCI_MANIFEST:
        raise TailorError(f"{layout}: index.json's manifest has mediaType {mdesc.get('mediaType')!r}")
    manifest = read_json_blob(layout, mdesc, "manifest", where)
    if manifest.get("mediaType") != OCI_MANIFEST or manifest.get("schemaVersion") != 2:
        raise TailorError(f"{layout}: the manifest is not an OCI image manifest")
    cdesc = manifest.get("config", {})
    if cdesc.get("mediaType") != OCI_CONFIG:
        raise TailorError(f"{layout}: the config has mediaType {cdesc.get('mediaType')!r}")
    config = read_json_blob(layout, cdesc, "config", where)
    seen = {mdesc["digest"], cdesc["digest"]}
    members = []
    for i, ldesc in enumerate(manifest.get("layers", [])):
        if ldesc.get("mediaType") != OCI_LAYER:
            raise TailorError(f"{layout}: layer {i} has mediaType {ldesc.get('mediaType')!r}")
        path = verify_blob(layout, ldesc, f"layer {i}", where)
        seen.add(ldesc["digest"])
        with tarfile.open(path) as tf:
            members.append([m.name for m in tf.getmembers()])
    diff_ids = config.get("rootfs", {}).get("diff_ids")
    if diff_ids != [d["digest"] for d in manifest.get("layers", [])]:
        raise TailorError(f"{layout}: the config's rootfs.diff_ids do not match the (uncompressed) layers")
    on_disk = {"sha256:" + p.name for p in blob_dir(layout).iterdir() if not p.name.startswith(".")}
    if on_disk - seen:
        raise TailorError(f"{layout}: unreferenced blob(s) {', '.join(sorted(on_disk - seen))}")
    return {"index": index, "manifest": manifest, "config": config, "layers": members}
