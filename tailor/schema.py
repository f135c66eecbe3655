"""The recipe schema: one table (:data:`KEYS`) of every recipe key with its type, default and doc.

:mod:`tailor.recipe`'s validator takes each mapping's allowed keys, the hints of its errors, the
required keys and the defaults from here; the recipe key reference of docs/recipes.md is generated from it
(``python -m tailor.schema`` rewrites that section of docs/recipes.md; a test fails when they differ);
the property tests draw the keys of their random recipes from it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from tailor.probes import PROBE_TYPES
from tailor.probes import PROBES as PROBE_REGISTRY
from tailor.util import PROJECT, write_atomic

DEFAULT_SOURCE_PACKAGE = "linux-source-6.1"
"""The Debian package whose tarball is the default kernel source."""


@dataclass(frozen=True)
class Key:
    """One recipe key: its dotted path (``[]`` marks the items of a list), the type written in the
    key reference, its default (:data:`NO_DEFAULT` when absent means "not set"), whether it is required,
    and its one-line doc (the validator's hints and the key reference of docs/recipes.md)."""

    path: str
    type: str
    default: Any
    doc: str
    required: bool = False
    image_default: Any = None
    """the default instead of :attr:`default` in a recipe with ``rootfs.image`` (None: the same)"""

    @property
    def name(self) -> str:
        """The last component of the path (the key as written in its mapping)."""
        return self.path.rsplit(".", 1)[-1]

    @property
    def parent(self) -> str:
        """The path of the mapping that holds this key (``""`` for the top level)."""
        return self.path.rsplit(".", 1)[0] if "." in self.path else ""


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT = _NoDefault()
"""The default of a key whose absence means "not set" (or that is required)."""

PROBES = PROBE_TYPES
NETWORK_PROBES = tuple(PROBE_REGISTRY)
_STEP_RUN = "the command as a list"
_STEP_USER = "run it as this user"
_STEP_TIMEOUT = "seconds to wait for it"

KEYS: tuple[Key, ...] = (
    Key("name", "string", NO_DEFAULT, "the app's name (default: the file name)"),
    Key("description", "string", "", "one line about the recipe"),
    Key("arch", "x86_64 or arm64", "x86_64",
        "the guest's architecture: arm64 cross-compiles the kernel, takes arm64 packages and boots under "
        "qemu-system-aarch64 -M virt; its base fragments are base_configs/arm64/<name>.config"),
    Key("kernel", "mapping", NO_DEFAULT, "kernel section"),
    Key("rootfs", "mapping", NO_DEFAULT, "rootfs section"),
    Key("app", "mapping", NO_DEFAULT, "app section", required=True),
    Key("test", "mapping", NO_DEFAULT, "test section"),
    Key("general", "boolean", True, "also boot-test the app on the shared general kernel (default true where the architecture has one: "
        "x86_64)"),
    Key("release", "mapping", NO_DEFAULT, "release section"),
    Key("kernel.source", "debian or mapping", "debian", "debian, or a mapping with url+sha256 or path+sha256"),
    Key("kernel.source.url", "string", NO_DEFAULT, "https URL of a kernel tarball"),
    Key("kernel.source.path", "string", NO_DEFAULT, "local kernel tarball"),
    Key("kernel.source.sha256", "string", NO_DEFAULT, "the tarball's sha256"),
    Key("kernel.source.package", "string", DEFAULT_SOURCE_PACKAGE, "Debian source package name"),
    Key("kernel.base", "list of strings", ["lupine-base"],
        "ordered list of base_configs fragment names (unset with app.network: true: lupine-base and net)"),
    Key("kernel.options", "mapping", {}, "mapping of Kconfig symbol to value"),
    Key("kernel.resolve", "strict or deps", "strict", "strict or deps"),
    Key("kernel.patches", "list of mappings", [], "list of {path, sha256}"),
    Key("kernel.patches[].path", "string", NO_DEFAULT, "patch file, relative to the recipe", required=True),
    Key("kernel.patches[].sha256", "string", NO_DEFAULT, "its sha256", required=True),
    Key("kernel.cmdline", "string", "", "extra kernel command-line arguments"),
    Key("rootfs.packages", "list of strings", [], "Debian packages whose files make the app"),
    Key("rootfs.image", "string", NO_DEFAULT,
        "an OCI image whose layers make the tree (docker://, oci: or docker-archive: reference)"),
    Key("rootfs.files", "list of strings", [], "extra in-tree paths kept when slim"),
    Key("rootfs.overlay", "list of strings", NO_DEFAULT, "directories under rootfs/ copied over the tree"),
    Key("rootfs.format", "cpio or ext2", "ext2", "ext2 (virtio-blk root, the default) or cpio (initramfs)"),
    Key("rootfs.slim", "true, false or traced", True,
        "true: keep only the entrypoint, its ELF closure, the setup's programs and rootfs.files; false: the whole "
        "tree (an image runs as it is); traced: also every file the app used in its boot test (doit slim:<app>)",
        image_default=False),
    Key("rootfs.size_mib", "number", NO_DEFAULT, "ext2 image size in MiB (default: computed)"),
    Key("rootfs.users", "list of strings", [], "system users (and groups) added to /etc/passwd for the app and its services"),
    Key("rootfs.build", "list of mappings", [], "host commands run while staging: list of {run, cwd}"),
    Key("rootfs.build[].run", "list of strings", NO_DEFAULT, "the command as a list", required=True),
    Key("rootfs.build[].cwd", "string", NO_DEFAULT, "a directory under rootfs/", required=True),
    Key("app.command", "string", "", "the program run as init: a path, or a name looked up in the rootfs PATH",
        required=True),
    Key("app.args", "list of strings", [], "its arguments"),
    Key("app.env", "mapping", {}, "environment variables"),
    Key("app.workdir", "string", "/", "working directory"),
    Key("app.network", "boolean", False, "bring up eth0 on the VMM's user network"),
    Key("app.user", "string", NO_DEFAULT, "run the app as this user"),
    Key("app.setup", "list of mappings", [], "commands run first, in order (list of {run, user, after_services})"),
    Key("app.setup[].run", "list of strings", NO_DEFAULT, _STEP_RUN, required=True),
    Key("app.setup[].user", "string", NO_DEFAULT, _STEP_USER),
    Key("app.setup[].timeout", "number", 120, _STEP_TIMEOUT),
    Key("app.setup[].after_services", "boolean", False,
        "run this step after the services are ready (default false: before them)"),
    Key("app.services", "list of mappings", [],
        "background processes started before the app (list of {run, user, ready_port|ready_path})"),
    Key("app.services[].run", "list of strings", NO_DEFAULT, _STEP_RUN, required=True),
    Key("app.services[].user", "string", NO_DEFAULT, _STEP_USER),
    Key("app.services[].timeout", "number", 120, _STEP_TIMEOUT),
    Key("app.services[].ready_port", "number", NO_DEFAULT, "guest TCP port that accepts when the service is ready"),
    Key("app.services[].ready_path", "string", NO_DEFAULT, "file that exists when the service is ready"),
    Key("test.ready", "string", "", "regular expression the console shows when the app is ready"),
    Key("test.probe", "string or mapping", {"type": "none"}, "how the host checks the app"),
    Key("test.probe.type", "/".join(PROBES), NO_DEFAULT, "/".join(PROBES), required=True),
    Key("test.probe.port", "number", NO_DEFAULT, "guest TCP port"),
    Key("test.probe.path", "string", "/", "HTTP path"),
    Key("test.probe.status", "number", 200, "expected HTTP status"),
    Key("test.probe.body", "string", NO_DEFAULT, "text the HTTP body must contain"),
    Key("test.probe.expect", "string", NO_DEFAULT,
        "regular expression the console (or a command probe's output) must show"),
    Key("test.probe.run", "list of strings", NO_DEFAULT,
        "command probe: host command, {host} and {port} replaced by the forwarded address"),
    Key("test.exercise", "list of mappings", [],
        "host commands run against the app after the probe passes (list of {run, timeout, status, expect})"),
    Key("test.exercise[].run", "list of strings", NO_DEFAULT,
        "host command, {host} and {port} replaced by the probe's forwarded address", required=True),
    Key("test.exercise[].timeout", "number", 60, "seconds it may take"),
    Key("test.exercise[].status", "number", 0, "the exit status it must end with"),
    Key("test.exercise[].expect", "string", NO_DEFAULT, "regular expression its output must show"),
    Key("test.memory", "number", 256, "guest memory in MiB"),
    Key("test.timeout", "number", 180, "seconds the whole boot test may take"),
    Key("release.snapshot", "boolean", False,
        "add the app's ready snapshot (doit snapshot:<app>) to its release; it then needs the qemu that took it "
        "(default false)"),
)
"""Every recipe key, in the order docs/recipes.md lists them. The validator takes each mapping's allowed
keys, their hints and the defaults from here; the key reference of docs/recipes.md is generated from it
(:func:`key_reference`, checked by a test) and the property tests draw their keys from it."""

IMAGE_MAKES_OPTIONAL = ("app", "app.command")
"""Required keys that a recipe with ``rootfs.image`` may leave out (the image config gives them)."""

KEY = {k.path: k for k in KEYS}
"""The rows of :data:`KEYS` by path."""


def children(parent: str) -> dict[str, str]:
    """The keys a mapping at *parent* allows (``""`` is the top level), in table order, with their docs."""
    return {k.name: k.doc for k in KEYS if k.parent == parent}


def required(parent: str) -> tuple[str, ...]:
    """The keys a mapping at *parent* must have (``app`` and ``app.command`` only without ``rootfs.image``)."""
    return tuple(k.name for k in KEYS if k.parent == parent and k.required)


def default(path: str, *, image: bool = False) -> Any:
    """The default of the key at *path* (a fresh copy of a list or mapping); *image*: in a recipe whose
    root comes from ``rootfs.image``."""
    key = KEY[path]
    value = key.image_default if image and key.image_default is not None else key.default
    return type(value)(value) if isinstance(value, (list, dict)) else value


def key_reference() -> str:
    """The recipe key reference of docs/recipes.md: a Markdown table generated from :data:`KEYS`."""
    def shown(k: Key) -> str:
        if k.required:
            return "required unless `rootfs.image`" if k.path in IMAGE_MAKES_OPTIONAL else "required"
        if k.default is NO_DEFAULT:
            return "-"
        if k.image_default is not None:
            return f"`{json.dumps(k.default)}` (`{json.dumps(k.image_default)}` with `rootfs.image`)"
        return "`" + json.dumps(k.default) + "`"

    rows = ["| key | type | default | what |", "| --- | --- | --- | --- |"]
    rows += [f"| `{k.path}` | {k.type} | {shown(k)} | {k.doc.replace('|', chr(92) + '|')} |" for k in KEYS]
    return "\n".join(rows) + "\n"


KEYS_DOC = PROJECT / "docs" / "recipes.md"
"""The page whose key reference :func:`main` writes."""
README_START = "<!-- recipe-keys:start (generated by `python -m tailor.schema`; do not edit by hand) -->"
README_END = "<!-- recipe-keys:end -->"


def readme_with_key_reference(text: str) -> str:
    """*text* (docs/recipes.md) with its key reference section replaced by :func:`key_reference`."""
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    return text[:start] + "\n" + key_reference() + text[end:]


def main(argv: list[str]) -> int:
    """``python -m tailor.schema``: rewrite docs/recipes.md's recipe key reference from :data:`KEYS`."""
    readme = KEYS_DOC
    text = readme.read_text()
    new = readme_with_key_reference(text)
    if new != text:
        write_atomic(readme, new)
    print(f"docs/recipes.md: recipe key reference {'rewritten' if new != text else 'unchanged'} ({len(KEYS)} keys)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
