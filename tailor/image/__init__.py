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

Steps, each a plain function (re-exported here from the module named):

1. :func:`pinned_digest` (:mod:`~tailor.image.lockfile`): the reference's own ``@sha256:``, else the digest
   recorded for it in ``images.lock`` beside the recipes, else the digest the
   reference resolves to now, which is then recorded (``python -m tailor
   pin-image APP`` moves it explicitly).
2. :func:`fetch` (:mod:`~tailor.image.cache`): the image by that digest into one OCI layout under
   ``out/cache/oci/`` (blobs shared by all images, ``index.json`` keyed by the
   pinned digest). The manifest (or index), config and every layer are
   checked against their digests and sizes here, not only by skopeo; an
   index is narrowed to its linux/amd64 manifest.
3. :func:`unpack` (:mod:`~tailor.image.layers`): the layers applied in order to an empty tree with OCI
   whiteouts, refusing any entry that would write outside the tree.
4. :func:`app_from_config` (:mod:`~tailor.image.appconfig`): Entrypoint + Cmd, Env, WorkingDir and User of
   the image config, each overridden by the recipe's ``app`` key for it.

Blob paths, blob checks, ``index.json`` and the deterministic tar writer are
:mod:`~tailor.image.layout`'s, shared with the release's OCI layout.
References are parsed in :mod:`~tailor.image.reference`; :func:`obtain` (in
:mod:`~tailor.image.lockfile`) runs steps 1 and 2 for the rootfs stage.
Images built from Debian packages (``images/<name>.yaml``, ``doit
image:<name>``) are :mod:`tailor.image.build`, which is not re-exported here:
it imports the recipe model (for ``rootfs/``), which imports
:mod:`~tailor.image.reference`.
"""

from __future__ import annotations

from tailor.image.appconfig import app_from_config, image_summary
from tailor.image.cache import Image, cache_dir, cached, fetch, resolve, verify
from tailor.image.layers import OPAQUE, WHITEOUT, apply_layer, merge_tree, unpack
from tailor.image.layout import blob_path
from tailor.image.lockfile import locked_digest, obtain, pin, pinned_digest, read_lock, record
from tailor.image.reference import (DIGEST, DOCKER_LIST, DOCKER_MANIFEST, IMAGES_DIR, INDEX_TYPES, LAYER_TYPES,
                                    MANIFEST_TYPES, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, REF_NAME, TAG_RE,
                                    TRANSPORTS, USAGE, ImageRef, local_image_task, parse_reference)

__all__ = [
    "DIGEST", "DOCKER_LIST", "DOCKER_MANIFEST", "IMAGES_DIR", "INDEX_TYPES", "LAYER_TYPES", "MANIFEST_TYPES",
    "OCI_CONFIG", "OCI_INDEX", "OCI_LAYER", "OCI_MANIFEST", "OPAQUE", "REF_NAME", "TAG_RE", "TRANSPORTS", "USAGE", "WHITEOUT",
    "Image", "ImageRef", "app_from_config", "apply_layer", "blob_path", "cache_dir", "cached", "fetch",
    "image_summary", "local_image_task", "locked_digest", "merge_tree", "obtain", "parse_reference", "pin",
    "pinned_digest", "read_lock", "record", "resolve", "unpack", "verify",
]
