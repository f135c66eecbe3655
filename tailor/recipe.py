"""Recipes: ``recipes/<app>.yaml`` read, validated as a whole and turned into one typed model.

A recipe is data only. :func:`load` parses the YAML while keeping the line of
every key, rejects duplicate keys, unknown keys and wrong types with one line
that names the file, the line and the key path, and returns a frozen
:class:`Recipe`. Nothing here touches the kernel tree or the network. The
keys, their docs and defaults come from the schema table in
:mod:`tailor.schema`.

Over 400 lines as one module on purpose: the YAML reader, the model and its
validator change together whenever a key is added.

Example (docs/recipes.md documents every key)::

    description: redis-server as init
    kernel:
      base: [lupine-base]
      options: {NET: y, INET: y, EPOLL: y}
    rootfs:
      packages: [redis-server]
    app:
      command: redis-server
      args: [--protected-mode, "no"]
      network: true
    test:
      ready: Ready to accept connections
      probe: {type: redis, port: 6379}
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from tailor.errors import TailorError
from tailor.image.reference import parse_reference
from tailor.kinds import Arch, RootFormat, Variant, parse_arch
from tailor.schema import DEFAULT_SOURCE_PACKAGE, NETWORK_PROBES, PROBES, children, default, required
from tailor.util import PROJECT, display_path, model_digest, sha256_text

RECIPES_DIR = PROJECT / "recipes"
BASE_CONFIGS_DIR = PROJECT / "base_configs"
ROOTFS_DIR = PROJECT / "rootfs"
RESEED_SOURCE = ROOTFS_DIR / "_tailor" / "reseed.c"
"""The snapshot entropy helper every network image gets (a recipe name cannot start with ``_``, so no
recipe's default overlay is rootfs/_tailor)."""
ENOSYS_SOURCE = ROOTFS_DIR / "_tailor" / "enosys.c"
"""Discovery's system call helper (:mod:`tailor.enosys`), put only into copies of an image it boots."""
PROBE_FRAGMENT = BASE_CONFIGS_DIR / "probe.config"
"""The probe kernel's fragment (tailor.probe derives it; a discovery reruns when it changes)."""

SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SYMBOL = re.compile(r"^[A-Za-z0-9_]+$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


# --------------------------------------------------------------------------
# YAML with line numbers


class _Located:
    """Parsed YAML plus the line of every key path, for error messages."""

    def __init__(self, file: Path):
        self.file = file
        self.lines: dict[tuple, int] = {}
        self.raw: dict[tuple, str] = {}  # each plain scalar as written (0755 stays 0755 where text is wanted)

    def line(self, keypath: tuple) -> int | None:
        while keypath:
            if keypath in self.lines:
                return self.lines[keypath]
            keypath = keypath[:-1]
        return self.lines.get((), None)

    def error(self, keypath: tuple, message: str) -> TailorError:
        line = self.line(keypath)
        where = f"{_rel(self.file)}:{line}" if line else f"{_rel(self.file)}"
        key = ".".join(str(k) for k in keypath)
        if not key.isprintable():  # a key with a newline or control character must not break the line
            key = repr(key)
        return TailorError(f"{where}: {key + ': ' if key else ''}{message}")


_rel = display_path


def _load_yaml(path: Path, text: str) -> tuple[Any, _Located]:
    loc = _Located(path)
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = (e.problem or e.context or "syntax error").strip()
        raise TailorError(f"{_rel(path)}{line}: YAML syntax error: {problem}; fix the YAML") from None
    except yaml.YAMLError as e:
        raise TailorError(f"{_rel(path)}: YAML error: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise TailorError(f"{_rel(path)}: YAML nested too deeply; a recipe is a few levels of keys") from None
    if node is None:
        raise TailorError(f"{_rel(path)}: the recipe is empty; it needs at least an `app` section")
    constructor = yaml.SafeLoader("")
    collections: set[int] = set()

    def build(n, keypath):
        loc.lines.setdefault(keypath, n.start_mark.line + 1)
        if isinstance(n, (yaml.MappingNode, yaml.SequenceNode)):
            # An alias (*name) of a list or mapping can refer to itself or multiply (a "billion laughs").
            if id(n) in collections:
                raise loc.error(keypath, "an alias (*name) of a list or mapping is not allowed in a recipe; "
                                         "write the value out")
            collections.add(id(n))
        if isinstance(n, yaml.MappingNode):
            out = {}
            for knode, vnode in n.value:
                if not isinstance(knode, yaml.ScalarNode):
                    raise loc.error(keypath, f"line {knode.start_mark.line + 1}: keys must be plain names")
                key = constructor.construct_object(knode)
                if not isinstance(key, (str, int)) or isinstance(key, bool):
                    key = str(knode.value)
                key = str(key)
                sub = keypath + (key,)
                if key in out:
                    first = loc.lines.get(sub)
                    loc.lines[sub] = knode.start_mark.line + 1
                    raise loc.error(sub, f"duplicate key (first on line {first}); keep one")
                loc.lines[sub] = knode.start_mark.line + 1
                out[key] = build(vnode, sub)
            return out
        if isinstance(n, yaml.SequenceNode):
            return [build(v, keypath + (i,)) for i, v in enumerate(n.value)]
        loc.raw[keypath] = n.value
        try:
            return constructor.construct_object(n)
        except yaml.YAMLError as e:
            raise loc.error(keypath, f"bad value: {str(e).splitlines()[0]}") from None
        except (ValueError, TypeError, OverflowError) as e:  # e.g. !!timestamp 2001-13-45
            kind = str(n.tag).rsplit(":", 1)[-1]
            raise loc.error(keypath, f"{n.value!r} is not a valid {kind} ({e}); quote it if you mean text") from None

    try:
        return build(node, ()), loc
    except RecursionError:
        raise TailorError(f"{_rel(path)}: YAML nested too deeply; a recipe is a few levels of keys") from None


# --------------------------------------------------------------------------
# The typed model


@dataclass(frozen=True)
class Source:
    """Where the kernel source comes from.

    ``kind`` is ``debian`` (the ``linux-source-6.1`` package's tarball, pinned
    in ``kernel-sources.lock``), ``url`` or ``path``; the latter two carry the
    sha256 the tarball must have.
    """

    kind: str = "debian"
    package: str = DEFAULT_SOURCE_PACKAGE
    url: str | None = None
    path: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Patch:
    path: Path
    sha256: str


@dataclass(frozen=True)
class KernelSpec:
    source: Source = field(default_factory=Source)
    base: tuple[str, ...] = ("lupine-base",)
    options: tuple[tuple[str, Any], ...] = ()
    """(symbol without CONFIG_, value) in recipe order; values are 'y', 'n', int or str."""
    option_lines: tuple[tuple[str, int], ...] = ()
    resolve: str = "strict"
    patches: tuple[Patch, ...] = ()
    cmdline: str = ""


@dataclass(frozen=True)
class BuildStep:
    """A host command run while staging the image: ``{stage}`` in ``run`` is the image tree;
    it runs in ``rootfs/<cwd>``."""

    run: tuple[str, ...]
    cwd: str


@dataclass(frozen=True)
class RootfsSpec:
    packages: tuple[str, ...] = ()
    image: str | None = None
    """An OCI image reference (:mod:`tailor.image`) whose layers are the tree the packages go over."""
    files: tuple[str, ...] = ()
    overlay: tuple[str, ...] = ()
    format: RootFormat = RootFormat.EXT2
    slim: bool | str = True
    """True (the entrypoint, its closure and ``files``), False (the whole tree) or ``"traced"`` (also what
    the app used in its boot test, :mod:`tailor.slim`)."""
    size_mib: int | None = None
    users: tuple[str, ...] = ()
    build: tuple[BuildStep, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "format", RootFormat(self.format))  # also after replace(format="cpio")


@dataclass(frozen=True)
class Step:
    """A command the init runs before the app: a setup step (waited for) or a service (in the background,
    waited for until ``ready_port`` accepts or ``ready_path`` exists). A setup step with
    ``after_services`` runs once every service is ready instead of before the services
    (e.g. a schema install that needs the database service)."""

    run: tuple[str, ...]
    user: str | None = None
    ready_port: int | None = None
    ready_path: str | None = None
    timeout: int = 120
    after_services: bool = False


@dataclass(frozen=True)
class AppSpec:
    command: str = ""
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = "/"
    network: bool = False
    user: str | None = None
    setup: tuple[Step, ...] = ()
    services: tuple[Step, ...] = ()
    given: tuple[str, ...] = ()
    """The keys the recipe wrote: for an image recipe, those win over the image config."""


@dataclass(frozen=True)
class Probe:
    type: str = "none"
    port: int | None = None
    path: str = "/"
    status: int = 200
    body: str | None = None
    expect: str | None = None
    run: tuple[str, ...] = ()
    """command probe: the host command ({host} and {port} are the forwarded address)."""


@dataclass(frozen=True)
class Exercise:
    """One ``test.exercise`` step: a host command run once against the app after the probe passed."""

    run: tuple[str, ...]
    timeout: int = 60
    status: int = 0
    expect: str | None = None


@dataclass(frozen=True)
class TestSpec:
    ready: str = ""
    probe: Probe = field(default_factory=Probe)
    exercise: tuple[Exercise, ...] = ()
    memory: int = 256
    timeout: int = 180


@dataclass(frozen=True)
class ReleaseSpec:
    snapshot: bool = False
    """ship ``out/snapshot/<app>/`` in the release (it ties the release to one qemu version)"""


NETWORK_BASE = ("net",)
"""Added to the default ``kernel.base`` of a recipe with ``app.network: true`` (IPv4, Unix sockets,
virtio-net): without it the default base has no network stack at all."""

GENERAL_BASE = ("lupine-base", "lupine-general")
"""The general variant's kernel: the same for every recipe, so all general variants share one build."""


@dataclass(frozen=True)
class Recipe:
    """One validated recipe. ``digests`` holds a stable hash of each validated section (defaults included).

    ``variant`` is ``""`` for the recipe as written (its app-specific kernel)
    and ``"general"`` for :func:`general_variant`; ``id`` names the pair in
    task names and output paths (``redis``, ``redis@general``). Both variants
    share the rootfs, which is keyed by ``name``.
    """

    name: str
    path: Path
    description: str
    kernel: KernelSpec
    rootfs: RootfsSpec
    app: AppSpec
    test: TestSpec
    general: bool = True
    release: ReleaseSpec = field(default_factory=ReleaseSpec)
    variant: str = ""
    digests: dict = field(default_factory=dict, compare=False, hash=False)
    arch: Arch = Arch.X86_64
    """The guest's architecture; its base fragments are in :func:`base_configs_dir`."""

    @property
    def id(self) -> str:
        return f"{self.name}@{self.variant}" if self.variant else self.name

    def fragment_paths(self, base_dir: Path | None = None) -> list[Path]:
        """The base fragments' files, in order (from *base_dir*, default this architecture's)."""
        base_dir = base_configs_dir(self.arch) if base_dir is None else base_dir
        return [base_dir / f"{b}.config" for b in self.kernel.base]


def base_configs_dir(arch: Arch) -> Path:
    """Where the base fragments of *arch* live: ``base_configs/`` for x86_64 (where they always were),
    ``base_configs/<arch>/`` for every other architecture (same fragment names, each its own file)."""
    return BASE_CONFIGS_DIR if arch is Arch.X86_64 else BASE_CONFIGS_DIR / arch


def section_digest(model, arch: Arch) -> str:
    """A recipe section's digest (:func:`~tailor.util.model_digest`); another architecture than x86_64
    is part of it, so x86_64 recipes keep the digests they had before ``arch`` existed."""
    digest = model_digest(model)
    return digest if arch is Arch.X86_64 else sha256_text(f"arch {arch}\n{digest}")


# --------------------------------------------------------------------------
# Validation


_TYPE_NAMES = ((type(None), "nothing"), (bool, "a boolean"), (int, "a number"), (float, "a decimal number"),
               (str, "a string"), (list, "a list"), (dict, "a mapping"))
"""How an error names the type of a YAML value (bool before int: True is an int to Python)."""


def _type_name(v) -> str:
    return next((name for kind, name in _TYPE_NAMES if isinstance(v, kind)), type(v).__name__)


class _Checker:
    def __init__(self, loc: _Located):
        self.loc = loc

    def err(self, keypath, msg):
        return self.loc.error(keypath, msg)

    def mapping(self, value, keypath, allowed: dict[str, str], required=()):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.err(keypath, f"expected a mapping, got {_type_name(value)}")
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
                hint = f"did you mean `{close[0]}`?" if close else f"allowed keys: {', '.join(allowed)}"
                raise self.err(keypath + (key,), f"unknown key; {hint}")
        for key in required:
            if key not in value:
                raise self.err(keypath, f"missing required key `{key}` ({allowed[key]})")
        return value

    def string(self, value, keypath, nonempty=True, pattern=None, what="a string"):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.err(keypath, f"expected {what}, got {_type_name(value)}")
        if not isinstance(value, str):
            raise self.err(keypath, f"expected {what}, got {_type_name(value)}; quote it")
        if nonempty and not value.strip():
            raise self.err(keypath, f"expected {what}, got an empty string")
        if pattern is not None and not pattern.match(value):
            raise self.err(keypath, f"{value!r} is not {what}")
        return value

    def text(self, value, keypath):
        """A free-form string that may also be written as a number (e.g. an argv item)."""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.err(keypath, f"expected a string, got {_type_name(value)}")
        if "\0" in str(value):
            raise self.err(keypath, "contains a NUL character, which cannot reach a program")
        if not isinstance(value, str):  # a number: the text as written, not Python's (0755 is not 493)
            return self.loc.raw.get(keypath, str(value))
        return value

    def boolean(self, value, keypath):
        if not isinstance(value, bool):
            raise self.err(keypath, f"expected true or false, got {_type_name(value)}")
        return value

    def integer(self, value, keypath, lo=None, hi=None, what="a number"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.err(keypath, f"expected {what}, got {_type_name(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise self.err(keypath, f"{value} is out of range ({rng})")
        return value

    def string_list(self, value, keypath, item=None):
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.err(keypath, f"expected a list, got {_type_name(value)}")
        item = item or (lambda v, kp: self.text(v, kp))
        return tuple(item(v, keypath + (i,)) for i, v in enumerate(value))


def _safe_relpath(c: _Checker, value, keypath) -> str:
    s = c.string(value, keypath, what="a relative path")
    p = Path(s)
    if p.is_absolute() or ".." in p.parts:
        raise c.err(keypath, f"{s!r} must be a path inside the project, without `..`")
    return s


def _abs_in_tree(c: _Checker, value, keypath, what="an absolute path inside the rootfs") -> str:
    s = c.string(value, keypath, what=what)
    if not s.startswith("/") or ".." in Path(s).parts or "\n" in s:
        raise c.err(keypath, f"{s!r} is not {what} (starts with /, no `..`)")
    return s


def _kernel(c: _Checker, raw, recipe_dir: Path) -> KernelSpec:
    kp = ("kernel",)
    raw = c.mapping(raw, kp, children("kernel"))
    # source
    src = raw.get("source", default("kernel.source"))
    if isinstance(src, str):
        if src != "debian":
            raise c.err(kp + ("source",), f"{src!r} is not a source; use `debian` or a mapping with url/path and sha256")
        source = Source()
    else:
        s = c.mapping(src, kp + ("source",), children("kernel.source"))
        if "url" in s and "path" in s:
            raise c.err(kp + ("source",), "give either `url` or `path`, not both")
        if "url" in s or "path" in s:
            key = "url" if "url" in s else "path"
            if "sha256" not in s:
                raise c.err(kp + ("source",), f"a `{key}` source needs its `sha256` so the tarball can be verified")
            sha = c.string(s["sha256"], kp + ("source", "sha256"), pattern=SHA256, what="64 lowercase hex digits")
            loc = c.string(s[key], kp + ("source", key))
            if key == "url" and not re.match(r"^(https?|file)://", loc):
                raise c.err(kp + ("source", "url"), f"{loc!r} is not an http(s) or file URL")
            if key == "path":
                loc = str((recipe_dir / loc).resolve()) if not loc.startswith("/") else loc
            if "package" in s:
                raise c.err(kp + ("source", "package"), "`package` only applies to the debian source")
            source = Source(kind=key, url=loc if key == "url" else None,
                            path=loc if key == "path" else None, sha256=sha)
        else:
            if "sha256" in s:
                raise c.err(kp + ("source", "sha256"), "the debian source is pinned in kernel-sources.lock; "
                            "use `url` or `path` to pin a tarball here")
            pkg = c.string(s.get("package", default("kernel.source.package")), kp + ("source", "package"),
                           pattern=re.compile(r"^linux-source-[0-9.]+$"), what="a linux-source-X.Y package name")
            source = Source(package=pkg)
    # base
    base = raw.get("base", default("kernel.base"))
    base = c.string_list(base, kp + ("base",), item=lambda v, k: c.string(
        v, k, pattern=SAFE_NAME, what="a fragment name (a file base_configs/<name>.config)"))
    seen = set()
    for i, b in enumerate(base):
        if b in seen:
            raise c.err(kp + ("base", i), f"fragment {b!r} is listed twice")
        seen.add(b)
    # options
    opts_raw = raw.get("options") or {}
    if not isinstance(opts_raw, dict):
        raise c.err(kp + ("options",), f"expected a mapping of symbol to value, got {_type_name(opts_raw)}")
    options, lines, names = [], [], {}
    for key, value in opts_raw.items():
        okp = kp + ("options", key)
        sym = key[7:] if key.startswith("CONFIG_") else key
        if not SYMBOL.match(sym) or not sym:
            raise c.err(okp, "not a Kconfig symbol name (letters, digits and _ only)")
        if sym in names:
            raise c.err(okp, f"same symbol as `{names[sym]}`; keep one")
        names[sym] = key
        if value is True:
            value = "y"
        elif value is False:
            value = "n"
        if value == "m":
            raise c.err(okp, "`m` (module) is not allowed: tailor kernels have no modules; use y or n")
        if isinstance(value, float) or value is None or isinstance(value, (list, dict)):
            raise c.err(okp, f"expected y, n, a string or a whole number, got {_type_name(value)}")
        if isinstance(value, str) and "\n" in value:
            raise c.err(okp, "a Kconfig value cannot contain a newline")
        options.append((sym, value))
        lines.append((sym, c.loc.line(okp) or 0))
    resolve = raw.get("resolve", default("kernel.resolve"))
    if resolve not in ("strict", "deps"):
        raise c.err(kp + ("resolve",), f"{resolve!r} is not a resolve mode; use `strict` or `deps`")
    if raw.get("patches") is not None and not isinstance(raw.get("patches"), list):
        raise c.err(kp + ("patches",), f"expected a list of {{path, sha256}}, got {_type_name(raw['patches'])}")
    patches = []
    for i, p in enumerate(raw.get("patches") or []):
        pkp = kp + ("patches", i)
        p = c.mapping(p, pkp, children("kernel.patches[]"), required=required("kernel.patches[]"))
        ppath = _safe_relpath(c, p["path"], pkp + ("path",))
        sha = c.string(p["sha256"], pkp + ("sha256",), pattern=SHA256, what="64 lowercase hex digits")
        patches.append(Patch(path=(recipe_dir / ppath), sha256=sha))
    cmdline = raw.get("cmdline", default("kernel.cmdline"))
    cmdline = c.string(cmdline, kp + ("cmdline",), nonempty=False) if cmdline else ""
    if "\n" in cmdline:
        raise c.err(kp + ("cmdline",), "must be one line")
    return KernelSpec(source=source, base=base, options=tuple(options), option_lines=tuple(lines),
                      resolve=resolve, patches=tuple(patches), cmdline=cmdline)


def _rootfs(c: _Checker, raw, name: str) -> RootfsSpec:
    kp = ("rootfs",)
    raw = c.mapping(raw, kp, children("rootfs"))
    pkg = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
    packages = c.string_list(raw.get("packages"), kp + ("packages",),
                             item=lambda v, k: c.string(v, k, pattern=pkg, what="a Debian package name"))
    files = c.string_list(raw.get("files"), kp + ("files",), item=lambda v, k: _abs_in_tree(c, v, k))
    image = raw.get("image")
    if image is not None:
        image = c.string(image, kp + ("image",), what="an image reference")
        try:
            parse_reference(image)
        except ValueError as e:
            raise c.err(kp + ("image",), str(e)) from None
    if "overlay" in raw:
        overlay = c.string_list(raw.get("overlay"), kp + ("overlay",),
                                item=lambda v, k: _safe_relpath(c, v, k))
    else:
        overlay = tuple(d for d in ("common", name) if (ROOTFS_DIR / d).is_dir())
    try:
        fmt = RootFormat(raw.get("format", default("rootfs.format")))
    except (ValueError, TypeError):
        raise c.err(kp + ("format",), f"{raw.get('format')!r} is not an image format; use `cpio` or `ext2`") from None
    slim = raw.get("slim", default("rootfs.slim", image=image is not None))
    if slim != "traced" and not isinstance(slim, bool):
        raise c.err(kp + ("slim",), f"expected true, false or traced, got {_type_name(slim)} {slim!r}")
    size = raw.get("size_mib")
    if size is not None:
        size = c.integer(size, kp + ("size_mib",), lo=1, hi=1 << 20, what="a size in MiB")
        if not fmt.is_disk:
            raise c.err(kp + ("size_mib",), "only an ext2 image has a size; remove it or use format: ext2")
    users = c.string_list(raw.get("users"), kp + ("users",),
                          item=lambda v, k: c.string(v, k, pattern=USER_NAME, what="a user name"))
    build = []
    if raw.get("build") is not None and not isinstance(raw.get("build"), list):
        raise c.err(kp + ("build",), "expected a list of {run, cwd}")
    for i, b in enumerate(raw.get("build") or []):
        bkp = kp + ("build", i)
        b = c.mapping(b, bkp, children("rootfs.build[]"), required=required("rootfs.build[]"))
        run = _argv(c, b["run"], bkp + ("run",))
        build.append(BuildStep(run=run, cwd=_safe_relpath(c, b["cwd"], bkp + ("cwd",))))
    return RootfsSpec(packages=packages, image=image, files=files, overlay=overlay, format=fmt, slim=slim,
                      size_mib=size, users=users, build=tuple(build))


def _argv(c: _Checker, value, keypath) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise c.err(keypath, f"expected a non-empty list (the command and its arguments), got {_type_name(value)}")
    return c.string_list(value, keypath)


def _step(c: _Checker, raw, keypath, service: bool) -> Step:
    table = "app.services[]" if service else "app.setup[]"
    raw = c.mapping(raw, keypath, children(table), required=required(table))
    run = _argv(c, raw["run"], keypath + ("run",))
    user = raw.get("user")
    if user is not None:
        user = c.string(user, keypath + ("user",), pattern=USER_NAME, what="a user name")
    port = raw.get("ready_port")
    if port is not None:
        port = c.integer(port, keypath + ("ready_port",), lo=1, hi=65535, what="a TCP port")
    path = raw.get("ready_path")
    if path is not None:
        path = _abs_in_tree(c, path, keypath + ("ready_path",))
    timeout = c.integer(raw.get("timeout", default(f"{table}.timeout")), keypath + ("timeout",), lo=1, hi=3600, what="seconds")
    after = c.boolean(raw.get("after_services", default("app.setup[].after_services")), keypath + ("after_services",))
    return Step(run=run, user=user, ready_port=port, ready_path=path, timeout=timeout, after_services=after)


def _app(c: _Checker, raw, image: bool = False) -> AppSpec:
    kp = ("app",)
    raw = c.mapping(raw, kp, children("app"), required=() if image else required("app"))
    command = raw.get("command", default("app.command"))
    if "command" in raw or not image:
        command = c.string(command, kp + ("command",), what="a program path or name")
    if "\n" in command or "\0" in command:
        raise c.err(kp + ("command",), "must be one line")
    args = c.string_list(raw.get("args"), kp + ("args",))
    env_raw = raw.get("env") or {}
    if not isinstance(env_raw, dict):
        raise c.err(kp + ("env",), f"expected a mapping of NAME: value, got {_type_name(env_raw)}")
    env = []
    for k, v in env_raw.items():
        if not ENV_NAME.match(k):
            raise c.err(kp + ("env", k), "not a valid environment variable name (letters, digits, _)")
        env.append((k, c.text(v, kp + ("env", k))))
    workdir = _abs_in_tree(c, raw.get("workdir", default("app.workdir")), kp + ("workdir",), what="an absolute directory")
    network = c.boolean(raw.get("network", default("app.network")), kp + ("network",))
    user = raw.get("user")
    if user is not None:
        user = c.string(user, kp + ("user",), pattern=USER_NAME, what="a user name")
    steps = {}
    for key in ("setup", "services"):
        items = raw.get(key) or []
        if not isinstance(items, list):
            raise c.err(kp + (key,), f"expected a list, got {_type_name(items)}")
        steps[key] = tuple(_step(c, item, kp + (key, i), key == "services") for i, item in enumerate(items))
    for i, step in enumerate(steps["setup"]):
        if step.after_services and not steps["services"]:
            raise c.err(kp + ("setup", i, "after_services"),
                        "the app has no services to wait for; remove it or add the service to app.services")
    return AppSpec(command=command, args=args, env=tuple(env), workdir=workdir, network=network, user=user,
                   setup=steps["setup"], services=steps["services"], given=tuple(sorted(raw)))


def _test(c: _Checker, raw, app: AppSpec) -> TestSpec:
    kp = ("test",)
    raw = c.mapping(raw, kp, children("test"))
    ready = raw.get("ready", default("test.ready"))
    if ready is None:
        ready = ""
    if ready != "":  # an empty list or mapping is no pattern either: c.string says so
        ready = c.string(ready, kp + ("ready",), what="a regular expression")
        try:
            re.compile(ready)
        except re.error as e:
            raise c.err(kp + ("ready",), f"not a valid regular expression ({e})") from None
    pkp = kp + ("probe",)
    praw = raw.get("probe", default("test.probe"))
    if isinstance(praw, str):
        praw = {"type": praw}
    praw = c.mapping(praw, pkp, children("test.probe"), required=required("test.probe"))
    ptype = praw["type"]
    if ptype not in PROBES:
        raise c.err(pkp + ("type",), f"{ptype!r} is not a probe; use one of {', '.join(PROBES)}")
    port = praw.get("port")
    if port is not None:
        port = c.integer(port, pkp + ("port",), lo=1, hi=65535, what="a TCP port")
    run = ()
    if ptype == "command":
        if "run" not in praw:
            raise c.err(pkp, "a command probe needs `run` (the host command as a list)")
        run = _argv(c, praw["run"], pkp + ("run",))
    elif "run" in praw:
        raise c.err(pkp + ("run",), "only a command probe runs a command")
    if ptype in NETWORK_PROBES:
        if port is None:
            raise c.err(pkp, f"a {ptype} probe needs `port` (the guest port the app listens on)")
        if not app.network:
            raise c.err(pkp, f"a {ptype} probe talks to the app over the network; set app.network: true")
    path = praw.get("path", default("test.probe.path"))
    path = c.string(path, pkp + ("path",), what="an HTTP path")
    if not path.startswith("/") or any(ch.isspace() for ch in path):
        raise c.err(pkp + ("path",), f"{path!r} is not an HTTP path (starts with /, no spaces)")
    status = c.integer(praw.get("status", default("test.probe.status")), pkp + ("status",), lo=100, hi=599, what="an HTTP status")
    body = praw.get("body")
    if body is not None:
        body = c.text(body, pkp + ("body",))
    expect = praw.get("expect")
    if expect is not None:
        expect = c.string(expect, pkp + ("expect",), what="a regular expression")
        try:
            re.compile(expect)
        except re.error as e:
            raise c.err(pkp + ("expect",), f"not a valid regular expression ({e})") from None
    if ptype == "console" and expect is None:
        raise c.err(pkp, "a console probe needs `expect` (what the console must show)")
    exercise = _exercise(c, raw.get("exercise", default("test.exercise")), kp + ("exercise",), ptype)
    memory = c.integer(raw.get("memory", default("test.memory")), kp + ("memory",), lo=16, hi=65536, what="MiB of guest memory")
    timeout = c.integer(raw.get("timeout", default("test.timeout")), kp + ("timeout",), lo=1, hi=24 * 3600, what="seconds")
    return TestSpec(ready=ready, probe=Probe(type=ptype, port=port, path=path, status=status,
                                             body=body, expect=expect, run=run),
                    exercise=exercise, memory=memory, timeout=timeout)


def _exercise(c: _Checker, items, keypath, probe_type: str) -> tuple[Exercise, ...]:
    if not isinstance(items, list):
        raise c.err(keypath, f"expected a list of {{run, timeout, status, expect}}, got {_type_name(items)}")
    if items and probe_type not in NETWORK_PROBES:
        raise c.err(keypath, f"an exercise runs against the probe's forwarded port; a {probe_type} probe has none "
                             f"(use a network probe: {', '.join(NETWORK_PROBES)})")
    out = []
    for i, raw in enumerate(items):
        kp = keypath + (i,)
        raw = c.mapping(raw, kp, children("test.exercise[]"), required=required("test.exercise[]"))
        run = _argv(c, raw["run"], kp + ("run",))
        timeout = c.integer(raw.get("timeout", default("test.exercise[].timeout")), kp + ("timeout",), lo=1, hi=3600,
                            what="seconds")
        status = c.integer(raw.get("status", default("test.exercise[].status")), kp + ("status",), lo=0, hi=255,
                           what="an exit status")
        expect = raw.get("expect")
        if expect is not None:
            expect = c.string(expect, kp + ("expect",), what="a regular expression")
            try:
                re.compile(expect)
            except re.error as e:
                raise c.err(kp + ("expect",), f"not a valid regular expression ({e})") from None
        out.append(Exercise(run=run, timeout=timeout, status=status, expect=expect))
    return tuple(out)


def general_variant(recipe: Recipe) -> Recipe:
    """*recipe* on the general kernel (lupine-base + lupine-general, no options of its own)."""
    kernel = KernelSpec(source=recipe.kernel.source, base=GENERAL_BASE, options=(), option_lines=(),
                        resolve="strict", patches=recipe.kernel.patches, cmdline=recipe.kernel.cmdline)
    digests = dict(recipe.digests)
    digests["kernel"] = section_digest(kernel, recipe.arch)
    return replace(recipe, kernel=kernel, variant=Variant.GENERAL, digests=digests)


def with_variants(recipes: list[Recipe]) -> list[Recipe]:
    """Each recipe followed by its general variant (when the recipe has ``general: true``)."""
    out = []
    for r in recipes:
        out.append(r)
        if r.general and not r.variant:
            out.append(general_variant(r))
    return out


def parse(text: str, path: Path) -> Recipe:
    """Validate recipe *text* read from *path*; return the model or raise a one-line TailorError."""
    path = Path(path)
    data, loc = _load_yaml(path, text)
    c = _Checker(loc)
    data = c.mapping(data, (), children(""), required=() if isinstance(data, dict)
                     and isinstance(data.get("rootfs"), dict) and data["rootfs"].get("image") else required(""))
    name = data.get("name", path.stem)
    name = c.string(name, ("name",), pattern=SAFE_NAME,
                    what="a safe name (lowercase letters, digits, - and _; at most 63)")
    description = c.string(data.get("description", default("description")), ("description",), nonempty=False)
    try:
        arch = parse_arch(data.get("arch", default("arch")))
    except ValueError as e:
        raise c.err(("arch",), str(e)) from None
    kernel = _kernel(c, data.get("kernel"), path.parent)
    rootfs = _rootfs(c, data.get("rootfs"), name)
    app = _app(c, data.get("app"), image=rootfs.image is not None)
    if app.network and not (isinstance(data.get("kernel"), dict) and "base" in data["kernel"]):
        kernel = replace(kernel, base=kernel.base + NETWORK_BASE)  # a serving app on the default base
    test = _test(c, data.get("test"), app)
    # the general kernel needs its fragments for this architecture (x86_64 has them; arm64 not yet)
    general_base = [base_configs_dir(arch) / f"{b}.config" for b in GENERAL_BASE]
    has_general = all(p.is_file() for p in general_base)
    general = c.boolean(data.get("general", default("general") and has_general), ("general",))
    if general and not has_general:
        missing = next(p for p in general_base if not p.is_file())
        raise c.err(("general",), f"there is no general kernel for arch {arch} yet ({display_path(missing)} is "
                                  f"missing); remove general or set it to false")
    release = _release(c, data.get("release"), app)
    digests = {"kernel": section_digest(kernel, arch), "rootfs": section_digest(rootfs, arch),
               "app": model_digest(app), "test": section_digest(test, arch), "release": model_digest(release)}
    return Recipe(name=name, path=path, description=description, kernel=kernel, rootfs=rootfs,
                  app=app, test=test, general=general, release=release, digests=digests, arch=arch)


def _release(c: _Checker, raw, app: AppSpec) -> ReleaseSpec:
    kp = ("release",)
    raw = c.mapping(raw, kp, children("release"))
    snapshot = c.boolean(raw.get("snapshot", default("release.snapshot")), kp + ("snapshot",))
    if snapshot and not app.network:
        raise c.err(kp + ("snapshot",), "a snapshot needs app.network: true (a restored VM's random pool is "
                                         "reseeded over the network); set it or remove release.snapshot")
    return ReleaseSpec(snapshot=snapshot)


def load(path: str | Path) -> Recipe:
    """Read and validate one recipe file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TailorError(f"{_rel(path)}: no such recipe file") from None
    except OSError as e:
        raise TailorError(f"{_rel(path)}: cannot read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TailorError(f"{_rel(path)}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    return parse(text, path)


RECIPE_CACHE_FORMAT = "1"


def load_cached(path: str | Path) -> Recipe:
    """:func:`load`, remembered in ``out/cache/recipes/`` by everything validation reads: the file's
    bytes and path, the directories of ``rootfs/`` (the default overlays) and the code of the
    validator (its import closure, :func:`tailor.imports.code_digest`). A doit run with nothing to do
    validates no recipe again; a recipe that fails validation is never cached."""
    import pickle

    from tailor import imports
    from tailor.util import out_dir, write_atomic

    path = Path(path)
    try:
        raw = path.read_bytes()
        dirs = sorted(p.name for p in ROOTFS_DIR.iterdir() if p.is_dir()) if ROOTFS_DIR.is_dir() else []
    except OSError:
        return load(path)
    key = hashlib.sha256("\0".join([RECIPE_CACHE_FORMAT, str(path.resolve()), imports.code_digest("recipe"),
                                     *dirs]).encode() + b"\0" + raw).hexdigest()
    cached = out_dir() / "cache" / "recipes" / f"{key}.pickle"
    try:
        recipe = pickle.loads(cached.read_bytes())
        if isinstance(recipe, Recipe):
            return recipe
    except (OSError, pickle.PickleError, EOFError, AttributeError, TypeError, ValueError, ImportError):
        pass
    recipe = load(path)
    try:
        write_atomic(cached, pickle.dumps(recipe, protocol=pickle.HIGHEST_PROTOCOL))
    except (OSError, TailorError):
        pass  # a read-only out/ only costs the validation next time
    return recipe


def find(name: str, recipes_dir: Path = RECIPES_DIR) -> Recipe:
    """Load ``recipes/<name>.yaml``; an unknown name lists the recipes there."""
    if not SAFE_NAME.match(name or ""):
        raise TailorError(f"{name!r}: not a recipe name (lowercase letters, digits, - and _)")
    path = recipes_dir / f"{name}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in recipes_dir.glob("*.yaml"))
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]}?" if close else f"recipes: {', '.join(names) or 'none'}"
        raise TailorError(f"{_rel(path)}: no such recipe; {hint}")
    return load(path)


_LINE_COMMENT = re.compile(r"^[^#'\"]*#\s*(?P<note>.*\S)\s*$")


def option_notes(recipe: Recipe) -> dict[str, str]:
    """The comment written after each of *recipe*'s ``kernel.options`` on its line of the file
    (``AIO: y   # InnoDB's native asynchronous I/O``), by option: what the person who chose it
    thought the app needs it for. YAML drops comments, so each option's line (``option_lines``) is
    read as text. Options without a comment are left out; an unreadable file gives an empty dict."""
    try:
        lines = recipe.path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    notes = {}
    for option, number in recipe.kernel.option_lines:
        m = _LINE_COMMENT.match(lines[number - 1]) if 0 < number <= len(lines) else None
        if m:
            notes[option] = m["note"]
    return notes


def all_recipes(recipes_dir: Path = RECIPES_DIR) -> list[Recipe]:
    """Every recipe in *recipes_dir*, sorted by name; names must be unique."""
    out, seen = [], {}
    for p in sorted(recipes_dir.glob("*.yaml")):
        r = load(p)
        if r.name in seen:
            raise TailorError(f"{_rel(p)}: name {r.name!r} is already used by {_rel(seen[r.name])}")
        seen[r.name] = p
        out.append(r)
    return out
