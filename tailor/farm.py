"""Building on many machines: a shared ccache on a remote storage server and distcc helpers.

tailor does not schedule work across machines itself; it hands a kernel build
to two proven engines and checks, before each build, that they can be used:

* ccache's remote storage (Debian 12's ccache 4.7: ``redis://``,
  ``redis+unix:``, ``http://`` and ``file:`` backends) shares compiled
  objects between machines, CI runs and checkouts. With a remote set, tailor
  also makes ccache check the compiler by content (not by its file's mtime,
  which differs between machines); the base directory and path maps that make
  hits possible across checkouts are set by :func:`tailor.kernel.make_env`.
* distcc sends each compile to a helper (``distccd``) and keeps
  preprocessing and linking local; ccache runs it (``CCACHE_PREFIX=distcc``)
  so an object is only compiled, anywhere, when no cache has it.

Settings (the environment wins over the file; an empty variable turns a
setting of the file off):

``TAILOR_CCACHE_REMOTE`` / ``ccache_remote``
    one or more ccache remote storage URLs, e.g. ``redis://cache:6379``.
``TAILOR_DISTCC_HOSTS`` / ``distcc_hosts``
    distcc helpers as ``HOST[:PORT][/SLOTS][,lzo]`` (``localhost[/SLOTS]``
    for this machine), space separated as in ``DISTCC_HOSTS``.

The file is ``farm.yaml`` in the project (``ccache_remote:`` and
``distcc_hosts:``, each a string or a list of strings).

:func:`plan` checks them before a build: a cache server that does not answer
and a helper that cannot be reached or does not take a probe compile are left
out with one line saying so, and the build goes on without them. A helper
whose compiler differs from this machine's (told by the ``.comment`` section
and the bytes of an object it compiled) is refused with one line: mixed
compilers give different kernels. ``-j`` is this machine's cores (or
``localhost``'s slots) plus every usable helper's slots. :meth:`Plan.apply`
puts the result into a kbuild environment.

Over 400 lines as one module on purpose: its three parts (settings, checks, the plan) are the steps of
one job, each used only by the next, and read best in that order.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import unquote, urlsplit

import yaml

from tailor import elf, paths
from tailor.errors import TailorError
from tailor.templates import render
from tailor.util import PROJECT, display_path, makedirs

SETTINGS_FILE = PROJECT / "farm.yaml"
ENV_REMOTE = "TAILOR_CCACHE_REMOTE"
ENV_HOSTS = "TAILOR_DISTCC_HOSTS"
FILE_KEYS = {"ccache_remote": ENV_REMOTE, "distcc_hosts": ENV_HOSTS}

DISTCC_PORT = 3632
REMOTE_SLOTS = 4
"""distcc's own default for a helper without /SLOTS (two for localhost)."""
LOCAL_SLOTS = 2
DEFAULT_PORTS = {"redis": 6379, "http": 80}
CONNECT_TIMEOUT_S = 2.0
PROBE_TIMEOUT_S = 30.0

_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})$")
_HOST_SPEC = re.compile(r"^(?P<host>[^:/,]+)(?::(?P<port>[^/,]*))?(?:/(?P<slots>[^,]*))?(?P<opts>(?:,[^,]*)*)$")


# --------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Helper:
    """One distcc host: a helper running distccd, or ``localhost`` (this machine)."""

    spec: str
    host: str
    port: int = DISTCC_PORT
    slots: int = REMOTE_SLOTS
    local: bool = False

    @property
    def name(self) -> str:
        return "localhost" if self.local else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Remote:
    """One ccache remote storage URL (``url`` exactly as given, attributes after ``|`` included)."""

    url: str
    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""
    username: str = ""
    password: str = ""
    db: int = 0

    @property
    def shown(self) -> str:
        """The URL for messages: any password replaced by ``***``."""
        base = self.url.split("|", 1)[0]
        if self.password:
            base = re.sub(r"(://)([^@/]*)@", lambda m: m.group(1) + (
                f"{m.group(2).split(':', 1)[0]}:***@" if ":" in m.group(2) else "***@"), base, count=1)
        return base


@dataclass(frozen=True)
class Settings:
    """The farm as configured, before any check; empty when nothing is set."""

    remotes: tuple[Remote, ...] = ()
    helpers: tuple[Helper, ...] = ()
    remote_origin: str = ENV_REMOTE
    hosts_origin: str = ENV_HOSTS
    randomize: bool = False

    @property
    def empty(self) -> bool:
        return not self.remotes and not self.helpers


def _words(value, origin: str) -> list[str]:
    """A setting's value (a string of space-separated words, or a list of strings) as a list of words."""
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [w for v in value for w in v.split()]
    raise TailorError(f"{origin}: must be a string or a list of strings, not {type(value).__name__}")


def parse_hosts(value, origin: str = ENV_HOSTS) -> tuple[tuple[Helper, ...], bool]:
    """Parse distcc host specifications; return (helpers, randomize).

    Accepted: ``HOST[:PORT][/SLOTS][,lzo]``, ``localhost[/SLOTS]`` and
    ``--randomize``; ssh hosts (``@``), pump mode (``,cpp``) and zeroconf are
    refused, as tailor checks each helper over TCP and keeps preprocessing
    local.
    """
    helpers: list[Helper] = []
    randomize = False
    seen: set[str] = set()
    for word in _words(value, origin):
        if word == "--randomize":
            randomize = True
            continue
        if word.startswith("-") or word == "+zeroconf":
            raise TailorError(f"{origin}: {word!r}: not supported; name each helper as HOST[:PORT][/SLOTS]")
        if "@" in word:
            raise TailorError(f"{origin}: {word!r}: ssh helpers are not supported; run distccd on the helper "
                              f"and name it as HOST[:PORT][/SLOTS]")
        m = _HOST_SPEC.match(word)
        if not m or not _HOSTNAME.match(m["host"]):
            raise TailorError(f"{origin}: {word!r}: not a distcc host; write HOST[:PORT][/SLOTS], "
                              f"e.g. 10.0.0.5:3632/8")
        opts = [o for o in m["opts"].split(",") if o]
        for o in opts:
            if o == "cpp":
                raise TailorError(f"{origin}: {word!r}: pump mode (,cpp) is not supported; drop ',cpp' "
                                  f"(tailor preprocesses locally, with the exact headers of this build)")
            if o != "lzo":
                raise TailorError(f"{origin}: {word!r}: unknown option {o!r}; the only option is ',lzo'")
        local = m["host"] == "localhost"
        port = DISTCC_PORT
        if m["port"] is not None:
            if local:
                raise TailorError(f"{origin}: {word!r}: localhost takes no port (it compiles in this process)")
            if not m["port"].isdigit() or not 1 <= int(m["port"]) <= 65535:
                raise TailorError(f"{origin}: {word!r}: port must be a number from 1 to 65535")
            port = int(m["port"])
        slots = LOCAL_SLOTS if local else REMOTE_SLOTS
        if m["slots"] is not None:
            if not m["slots"].isdigit() or not 1 <= int(m["slots"]) <= 1024:
                raise TailorError(f"{origin}: {word!r}: slots must be a number from 1 to 1024")
            slots = int(m["slots"])
        helper = Helper(spec=word, host=m["host"], port=port, slots=slots, local=local)
        if helper.name in seen:
            raise TailorError(f"{origin}: {helper.name} is listed twice; name each helper once")
        seen.add(helper.name)
        helpers.append(helper)
    return tuple(helpers), randomize


def parse_remotes(value, origin: str = ENV_REMOTE) -> tuple[Remote, ...]:
    """Parse ccache remote storage URLs (``redis://[[USER:]PASSWORD@]HOST[:PORT][/DB]``,
    ``redis+unix:SOCKET``, ``http://HOST[:PORT]/PATH``, ``file:DIR``; ccache attributes may
    follow after ``|``, e.g. ``|read-only=true``)."""
    remotes = []
    for word in _words(value, origin):
        base, *attrs = word.split("|")
        for a in attrs:
            if not re.match(r"^[a-z-]+=\S*$", a):
                raise TailorError(f"{origin}: {word!r}: attribute {a!r} is not NAME=VALUE "
                                  f"(e.g. |read-only=true)")
        try:
            u = urlsplit(base)
            port = u.port
        except ValueError as e:
            raise TailorError(f"{origin}: {word!r}: not a URL ({e}); use e.g. redis://HOST:6379") from None
        scheme = u.scheme
        common = {"url": word, "scheme": scheme, "username": unquote(u.username or ""),
                  "password": unquote(u.password or "")}
        if scheme in ("redis", "http"):
            if not u.hostname:
                raise TailorError(f"{origin}: {word!r}: no host; use e.g. {scheme}://HOST:{DEFAULT_PORTS[scheme]}")
            db = 0
            if scheme == "redis" and u.path.strip("/"):
                if not u.path.strip("/").isdigit():
                    raise TailorError(f"{origin}: {word!r}: the path must be a database number, e.g. /0")
                db = int(u.path.strip("/"))
            remotes.append(Remote(host=u.hostname, port=port or DEFAULT_PORTS[scheme], path=u.path, db=db,
                                  **common))
        elif scheme in ("redis+unix", "file"):
            if not u.path.startswith("/"):
                raise TailorError(f"{origin}: {word!r}: needs an absolute path, e.g. {scheme}:/run/x")
            remotes.append(Remote(path=u.path, **common))
        else:
            raise TailorError(f"{origin}: {word!r}: unsupported storage {scheme or 'without a scheme'!r}; "
                              f"use redis://HOST:6379, redis+unix:SOCKET, http://HOST/PATH or file:DIR")
    return tuple(remotes)


def load_settings(environ: Mapping[str, str] | None = None, path: Path | None = None) -> Settings:
    """The farm settings: the environment's ``TAILOR_*`` variables, else the settings file's keys."""
    environ = os.environ if environ is None else environ
    path = SETTINGS_FILE if path is None else Path(path)
    data: dict = {}
    if (ENV_REMOTE not in environ or ENV_HOSTS not in environ) and path.exists():
        data = _read_file(path)
    where = display_path(path)
    values, origins = {}, {}
    for key, env_name in FILE_KEYS.items():
        if env_name in environ:
            values[key], origins[key] = environ[env_name], env_name
        else:
            values[key], origins[key] = data.get(key), f"{where}: {key}"
    helpers, randomize = parse_hosts(values["distcc_hosts"], origins["distcc_hosts"])
    return Settings(remotes=parse_remotes(values["ccache_remote"], origins["ccache_remote"]), helpers=helpers,
                    remote_origin=origins["ccache_remote"], hosts_origin=origins["distcc_hosts"],
                    randomize=randomize)


def _read_file(path: Path) -> dict:
    where = display_path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise TailorError(f"{where}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise TailorError(f"{where}{line}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TailorError(f"{where}: must be a mapping with the keys {', '.join(FILE_KEYS)}")
    for key in data:
        if key not in FILE_KEYS:
            raise TailorError(f"{where}: {key!r}: unknown key; the keys are {', '.join(FILE_KEYS)}")
    return data


# --------------------------------------------------------------------------
# Checks: is a cache server answering, does a helper compile like this machine


def reach(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when a TCP connection to host:port opens, else why not (a few words)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return _why_not(e, timeout)


def _why_not(e: OSError, timeout: float) -> str:
    """A few words for why a connection failed: no answer in time, an unknown host, or the OS's reason."""
    if isinstance(e, socket.timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(e, socket.gaierror):
        return f"unknown host ({e.strerror})"
    return (e.strerror or str(e)).lower()


def _resp(*words: str) -> bytes:
    return f"*{len(words)}\r\n".encode() + b"".join(
        f"${len(w.encode())}\r\n".encode() + w.encode() + b"\r\n" for w in words)


def redis_check(remote: Remote, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when the Redis server of *remote* answers PING (after AUTH and SELECT as the URL asks),
    else why not."""
    try:
        if remote.scheme == "redis+unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(remote.path)
        else:
            sock = socket.create_connection((remote.host, remote.port), timeout=timeout)
    except OSError as e:
        return _why_not(e, timeout)
    commands = []
    if remote.password:
        commands.append(("AUTH", remote.username, remote.password) if remote.username
                        else ("AUTH", remote.password))
    if remote.db:
        commands.append(("SELECT", str(remote.db)))
    commands.append(("PING",))
    with sock:
        try:
            reader = sock.makefile("rb")
            for cmd in commands:
                sock.sendall(_resp(*cmd))
                reply = reader.readline().decode(errors="replace").strip()
                if not reply:
                    return "it closed the connection"
                if reply.startswith("-"):
                    return f"{cmd[0]} answered {reply[1:].split(chr(10))[0][:120]}"
            if reply != "+PONG":
                return f"it is not a Redis server (PING answered {reply[:40]!r})"
        except OSError as e:
            return _why_not(e, timeout)
    return None


def check_remote(remote: Remote, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when ccache can use *remote*, else why not."""
    if remote.scheme in ("redis", "redis+unix"):
        return redis_check(remote, timeout)
    if remote.scheme == "http":
        return reach(remote.host, remote.port, timeout)
    if not os.path.isdir(remote.path):
        return "no such directory"
    if not os.access(remote.path, os.W_OK | os.X_OK):
        return "not writable"
    return None


def local_compiler() -> str:
    """The compiler a kbuild run uses, as ccache hands it to distcc: the first real ``gcc`` on PATH
    (skipping ccache's and distcc's masquerade links)."""
    for d in os.environ.get("PATH", "").split(os.pathsep):
        cand = Path(d or ".") / "gcc"
        if cand.is_file() and os.access(cand, os.X_OK):
            if os.path.basename(os.path.realpath(cand)) in ("ccache", "distcc"):
                continue
            return str(cand)
    raise TailorError("gcc: not found on PATH; run ./setup.sh")


def compiler_ident(obj: bytes) -> str:
    """What the compiler wrote into an object's ``.comment`` (e.g. ``GCC: (Debian 12.2.0-14) 12.2.0``)."""
    raw = elf.section(obj, ".comment") or b""
    return "; ".join(p.decode(errors="replace") for p in raw.split(b"\0") if p) or "no compiler ident"


def _probe_source(workdir: Path) -> Path:
    src = workdir / "tailor-probe.c"
    src.write_text(render("farm-probe.c.j2"))
    return src


PROBE_FLAGS = ["-O2", "-fno-asynchronous-unwind-tables", "-c"]


def probe_local(workdir: Path, compiler: str) -> bytes:
    """Compile the probe on this machine; return the object's bytes."""
    src = _probe_source(workdir)
    out = workdir / "local.o"
    proc = subprocess.run([compiler, *PROBE_FLAGS, src.name, "-o", out.name], cwd=workdir, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=PROBE_TIMEOUT_S)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TailorError(f"{compiler}: cannot compile a probe on this machine ({last}); run ./setup.sh")
    return out.read_bytes()


def probe_helper(helper: Helper, workdir: Path, compiler: str) -> tuple[bytes | None, str]:
    """Compile the probe on *helper* through distcc, never locally; return (object bytes, "") or
    (None, why not)."""
    why = reach(helper.host, helper.port)
    if why:
        return None, f"is not reachable ({why})"
    src = _probe_source(workdir)
    out = f"{helper.host}-{helper.port}.o"
    # A private DISTCC_DIR: no slot locks or "host down" marks from earlier builds (distcc's backoff,
    # which also stops it from retrying a helper that fails, stays on).
    state = makedirs(workdir / f"distcc-{helper.host}-{helper.port}")
    env = dict(os.environ, DISTCC_HOSTS=helper.spec, DISTCC_FALLBACK="0", DISTCC_SKIP_LOCAL_RETRY="1",
               DISTCC_DIR=str(state), DISTCC_IO_TIMEOUT=str(int(PROBE_TIMEOUT_S)), LC_ALL="C")
    env.pop("DISTCC_BACKOFF_PERIOD", None)
    env.pop("DISTCC_VERBOSE", None)
    try:
        proc = subprocess.run(["distcc", compiler, *PROBE_FLAGS, src.name, "-o", out], cwd=workdir, env=env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, f"did not finish a probe compile within {PROBE_TIMEOUT_S:g} s"
    if proc.returncode != 0 or not (workdir / out).exists():
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        errors = [ln for ln in lines if ("ERROR" in ln or "error" in ln) and "fallbacks are disabled" not in ln]
        last = re.sub(r"^distcc\[\d+\] (\(\w+\) )?(ERROR: )?", "", (errors or lines or ["no output"])[-1]).strip()
        return None, f"did not take a probe compile ({last})"
    return (workdir / out).read_bytes(), ""


# --------------------------------------------------------------------------
# The plan for one build


@dataclass(frozen=True)
class Plan:
    """What a build uses of the farm, after the checks."""

    remotes: tuple[Remote, ...] = ()
    helpers: tuple[Helper, ...] = ()
    jobs: int | None = None
    compiler: str = "gcc"
    randomize: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def distributed(self) -> bool:
        return any(not h.local for h in self.helpers)

    def apply(self, env: dict[str, str], make_vars: list[str]) -> None:
        """Put the plan into a kbuild environment and make variables (from kernel.make_env)."""
        if self.remotes:
            env["CCACHE_REMOTE_STORAGE"] = " ".join(r.url for r in self.remotes)
            env["CCACHE_COMPILERCHECK"] = "content"
        if self.distributed:
            env["DISTCC_HOSTS"] = " ".join((["--randomize"] if self.randomize else [])
                                           + [h.spec for h in self.helpers])
            if any(v.startswith("CC=ccache ") for v in make_vars):
                env["CCACHE_PREFIX"] = "distcc"
            else:
                make_vars.append(f"CC=distcc {self.compiler}")

    def summary(self) -> str:
        """One line: what this build uses of the farm."""
        parts = []
        if self.distributed:
            remote = [h for h in self.helpers if not h.local]
            parts.append(f"distcc on {len(remote)} helper{'s' if len(remote) != 1 else ''} "
                         f"({sum(h.slots for h in remote)} slots), -j{self.jobs}")
        if self.remotes:
            parts.append("ccache remote " + " ".join(r.shown for r in self.remotes))
        return "; ".join(parts) or "local build"


def _say(label: str) -> Callable[[str], None]:
    def say(text: str) -> None:
        print(f"[{label}] {text}", file=sys.stderr, flush=True)
    return say


def plan(settings: Settings | None = None, say: Callable[[str], None] | None = None,
         label: str = "farm") -> Plan:
    """Check the farm's cache servers and helpers and decide what this build uses.

    Unusable servers and helpers are left out with one line each through
    *say*; a helper whose compiler differs from this machine's raises a
    :class:`TailorError` naming it.
    """
    settings = load_settings() if settings is None else settings
    say = say or _say(label)
    if settings.empty:
        return Plan()
    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)
        say(text)

    remotes = []
    if settings.remotes and not shutil.which("ccache"):
        note(f"ccache is not installed, so the remote cache ({settings.remote_origin}) is not used; "
             f"run ./setup.sh")
    else:
        for r in settings.remotes:
            why = check_remote(r)
            if why:
                note(f"ccache remote {r.shown} is not usable ({why}); building with the local cache only")
            else:
                remotes.append(r)

    helpers = list(settings.helpers)
    compiler = "gcc"
    if any(not h.local for h in helpers):
        if not shutil.which("distcc"):
            note(f"distcc is not installed, so the helpers of {settings.hosts_origin} are not used; "
                 f"run ./setup.sh")
            helpers = []
        else:
            if os.environ.get("DISTCC_DIR"):
                makedirs(os.environ["DISTCC_DIR"])  # distcc keeps its slot locks there but does not create it
            compiler = local_compiler()
            helpers = _check_helpers(helpers, compiler, settings.hosts_origin, note)
            if not any(not h.local for h in helpers):
                note("no distcc helper is usable; compiling on this machine only")
                helpers = []
    jobs = None
    if helpers:
        local = next((h.slots for h in helpers if h.local), os.cpu_count() or 1)
        jobs = local + sum(h.slots for h in helpers if not h.local)
    result = Plan(remotes=tuple(remotes), helpers=tuple(helpers), jobs=jobs, compiler=compiler,
                  randomize=settings.randomize, notes=tuple(notes))
    if result.remotes or result.helpers:
        say(f"farm: {result.summary()}")
    return result


def _check_helpers(helpers: list[Helper], compiler: str, origin: str,
                   note: Callable[[str], None]) -> list[Helper]:
    """The helpers that compile like this machine; a different compiler is an error."""
    remote = [h for h in helpers if not h.local]
    with tempfile.TemporaryDirectory(prefix="probe-", dir=makedirs(paths.farm_dir())) as tmp:
        tmp = Path(tmp)
        mine = probe_local(tmp, compiler)
        with ThreadPoolExecutor(max_workers=min(16, len(remote))) as pool:
            results = list(pool.map(lambda h: probe_helper(h, tmp, compiler), remote))
    usable, mismatched = [], []
    for h, (obj, why) in zip(remote, results):
        if obj is None:
            note(f"distcc helper {h.name} {why}; building without it")
        elif obj != mine:
            mismatched.append((h, obj))
        else:
            usable.append(h)
    if mismatched:
        h, obj = mismatched[0]
        theirs, ours = compiler_ident(obj), compiler_ident(mine)
        what = (f"compiles with {theirs!r}, this machine with {ours!r}" if theirs != ours else
                f"compiles the probe to different code than this machine (both {ours!r}: "
                f"another build of the compiler or assembler)")
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise TailorError(f"{origin}: distcc helper {h.name}{more} {what}; install this machine's exact gcc "
                          f"and binutils there or remove it from the list (mixed compilers give different "
                          f"kernels)")
    return [h for h in helpers if h.local or h in usable]
