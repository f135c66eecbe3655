"""Write the small OCI image layouts the bad-recipe corpus uses (tests/bad_recipes/rootfs-image-*.yaml).

Run from the project: ``.venv/bin/python tests/data/images/make_images.py``. The layouts are
deterministic (fixed times, sorted entries), so their digests, which the recipes pin, do not move.
Each image is a plain OCI layout with one tag, ``1``.
"""

import io
import shutil
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from tailor.image.build import image_config, write_layout  # noqa: E402


def layer(path: Path, entries) -> Path:
    """A tar of (name, type, data-or-linkname) entries, in the given order."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode = 1672531200, 0o755
            if kind == "file":
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, data
                tf.addfile(info)
    return path


IMAGES = {
    "dotdot": ([("etc", "dir", None), ("etc/../../escaped", "file", b"outside\n")], {}),
    "symlink-out": ([("etc", "dir", None), ("etc/host", "symlink", "../../../etc"),
                     ("etc/host/passwd", "file", b"root::0:0::/:/bin/sh\n")], {}),
    "arm64": ([("etc", "dir", None), ("etc/hostname", "file", b"arm\n")], {"architecture": "arm64"}),
    "no-entrypoint": ([("etc", "dir", None), ("etc/hostname", "file", b"x\n")],
                      {"entrypoint": ["/usr/bin/not-there"]}),
    "corrupt": ([("etc", "dir", None), ("etc/hostname", "file", b"good\n")], {"entrypoint": ["/bin/sh"]}),
}


def main() -> None:
    for name, (entries, cfg) in IMAGES.items():
        dest = HERE / name
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir()
        tar = layer(HERE / f".{name}.tar", entries)
        digest = write_layout(dest, "1", [tar], image_config(**cfg))
        if name == "corrupt":  # flip the layer's content after the manifest recorded its digest
            blob = next(p for p in (dest / "blobs" / "sha256").iterdir() if p.stat().st_size > 1000)
            data = bytearray(blob.read_bytes())
            data[data.index(b"good")] = ord("b")
            blob.write_bytes(bytes(data))
        print(f"{name}: {digest}")


if __name__ == "__main__":
    main()
