"""Probes: check an app in the VM from the host, through its forwarded port, and the table of them.

Each probe function connects to ``host:port`` until *deadline* (a
:func:`time.monotonic` value), returns a short detail when the app answers
as expected and raises :class:`~tailor.errors.ProbeFailed` otherwise.
:data:`PROBES` maps a recipe's probe type (``redis``, ``http``, ``tcp``,
``memcached``, ``command``) to the function that runs it with the recipe's
probe settings; :func:`run_probe` looks it up. ``none`` and ``console``
probes need no network and are decided from the console
(:mod:`tailor.console`).
"""

from __future__ import annotations

import http.client
import re
import secrets
import shutil
import socket
import subprocess
import time
from typing import Callable

from tailor.errors import ProbeFailed

MISMATCH_GRACE_S = 5.0
"""How long a probe keeps retrying once the app answers, but wrongly (e.g. a 503 while warming up)."""

TCP_HOLD_S = 1.0
"""A tcp probe passes when the connection is still open this long after connecting."""

Abort = Callable[[], "str | None"]
"""Checked before each try: returns a reason to give up (raised as ProbeFailed), or raises its own
exception (e.g. :class:`~tailor.errors.QemuExited`), which passes through the probe unchanged."""


class Mismatch(Exception):
    """The app answered, but not as expected."""


class Closed(Exception):
    """The peer closed the connection without answering (e.g. nothing listens in the guest yet)."""


def retry(attempt: Callable[[float], str], deadline: float, abort: Abort | None) -> str:
    """Call ``attempt(socket_timeout)`` until it returns a detail string.

    Connection problems (refused, reset, closed at once: user-mode networking
    accepts on the host even before the guest listens) are retried until
    *deadline* (a :func:`time.monotonic` value); wrong answers for at most
    :data:`MISMATCH_GRACE_S`. *abort* (see :data:`Abort`), checked before
    each try, gives up early (the VM died).
    """
    start = time.monotonic()
    mismatch_since = None
    last, answered = "no attempt made", False
    while True:
        if abort is not None and (why := abort()):
            raise ProbeFailed(why)
        try:
            return attempt(max(0.2, min(5.0, deadline - time.monotonic())))
        except Mismatch as e:
            now = time.monotonic()
            mismatch_since = mismatch_since or now
            last, answered = str(e), True
            if now - mismatch_since >= MISMATCH_GRACE_S:
                raise ProbeFailed(last) from None
        except (OSError, http.client.HTTPException, Closed) as e:
            last, answered = describe(e), False
        if time.monotonic() >= deadline:
            if answered:
                raise ProbeFailed(last)
            raise ProbeFailed(f"no answer within {deadline - start:.0f} s (last error: {last})", last=last)
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def describe(e: BaseException) -> str:
    if isinstance(e, socket.timeout):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def resp_command(*args: bytes) -> bytes:
    """Encode one Redis command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def resp_reply(f) -> bytes | None:
    """Read one RESP reply: a simple string, error or integer as its whole line
    (``b"+OK"``, ``b"-ERR ..."``), a bulk string as its payload, a null bulk as None."""
    line = f.readline(65536)
    if not line:
        raise Closed("connection closed without a reply")
    if not line.endswith(b"\r\n"):
        raise Mismatch(f"malformed reply {line[:80]!r}")
    line = line[:-2]
    if line[:1] == b"$":
        try:
            n = int(line[1:])
        except ValueError:
            raise Mismatch(f"malformed reply {line[:80]!r}") from None
        if n < 0:
            return None
        data = f.read(n + 2)
        if len(data) < n + 2:
            raise Closed("connection closed in the middle of a reply")
        return data[:n]
    return line


def probe_redis(port: int, deadline: float, *, host: str = "127.0.0.1",
                abort: Abort | None = None) -> str:
    """Check a Redis server at *host*:*port*: PING -> +PONG, SET of a random value -> +OK, GET -> that value.

    Returns a short detail; raises :class:`ProbeFailed` (e.g. ``GET returned b'x'``).
    """
    value = secrets.token_hex(8).encode()

    def attempt(timeout: float) -> str:
        with socket.create_connection((host, port), timeout=timeout) as s:
            f = s.makefile("rb")

            def call(*args: bytes):
                s.sendall(resp_command(*args))
                return resp_reply(f)

            r = call(b"PING")
            if r != b"+PONG":
                raise Mismatch(f"PING returned {r!r}")
            r = call(b"SET", b"tailor-probe", value)
            if r != b"+OK":
                raise Mismatch(f"SET returned {r!r}")
            r = call(b"GET", b"tailor-probe")
            if r != value:
                raise Mismatch(f"GET returned {r!r}, expected {value!r}")
        return "PING, SET and GET answered correctly"

    return retry(attempt, deadline, abort)


def probe_http(port: int, deadline: float, *, path: str = "/", status: int = 200, body: str | None = None,
               host: str = "127.0.0.1", abort: Abort | None = None) -> str:
    """GET *path* from *host*:*port*; the status must be *status* and the body contain *body* if given.

    Returns a short detail; raises :class:`ProbeFailed`.
    """
    def attempt(timeout: float) -> str:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Host": f"{host}:{port}", "User-Agent": "tailor-boot-test",
                                               "Connection": "close"})
            resp = conn.getresponse()
            data = resp.read(1 << 20)
        finally:
            conn.close()
        if resp.status != status:
            raise Mismatch(f"GET {path} returned status {resp.status}, expected {status}")
        if body is not None and body.encode() not in data:
            raise Mismatch(f"GET {path} body does not contain {body!r} (starts {data[:60]!r})")
        return f"GET {path} -> {resp.status}, {len(data)} bytes"

    return retry(attempt, deadline, abort)


def probe_tcp(port: int, deadline: float, *, host: str = "127.0.0.1",
              abort: Abort | None = None, hold: float = TCP_HOLD_S) -> str:
    """Connect to *host*:*port*; pass when the peer keeps the connection open *hold* seconds or sends data.

    A connection the peer closes at once counts as failed and is retried
    (user-mode networking accepts on the host even when nothing listens in the
    guest, then closes). Returns a short detail; raises :class:`ProbeFailed`.
    """
    def attempt(timeout: float) -> str:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(hold)
            try:
                data = s.recv(1)
            except socket.timeout:
                return f"connected; still open after {hold:g} s"
            if not data:
                raise Closed("peer closed the connection at once")
            return "connected; peer sent data"

    return retry(attempt, deadline, abort)


def probe_memcached(port: int, deadline: float, *, host: str = "127.0.0.1",
                    abort: Abort | None = None) -> str:
    """Check a memcached server over its text protocol: ``set`` a random value, ``get`` it back."""
    value = secrets.token_hex(8).encode()

    def attempt(timeout: float) -> str:
        with socket.create_connection((host, port), timeout=timeout) as s:
            f = s.makefile("rb")
            s.sendall(b"set tailor-probe 0 60 %d\r\n%s\r\n" % (len(value), value))
            line = f.readline(1024)
            if not line:
                raise Closed("connection closed without a reply")
            if line != b"STORED\r\n":
                raise Mismatch(f"set returned {line[:80]!r}")
            s.sendall(b"get tailor-probe\r\n")
            header = f.readline(1024)
            if not header.startswith(b"VALUE tailor-probe "):
                raise Mismatch(f"get returned {header[:120]!r}")
            data, end = f.readline(1024), f.readline(1024)
            if data != value + b"\r\n" or end != b"END\r\n":
                raise Mismatch(f"get returned {(header + data + end)[:120]!r}")
        return "set and get answered correctly"

    return retry(attempt, deadline, abort)


def probe_command(run: tuple[str, ...] | list[str], port: int, deadline: float, *, host: str = "127.0.0.1",
                  expect: str | None = None, abort: Abort | None = None) -> str:
    """Run a host command (``{host}``/``{port}`` replaced by the forwarded address) until it exits 0 and,
    with *expect*, its output matches that regular expression."""
    argv = [a.replace("{host}", host).replace("{port}", str(port)) for a in run]
    if shutil.which(argv[0]) is None:
        raise ProbeFailed(f"{argv[0]} not found on this host; install it (./setup.sh installs the probe clients)")

    def attempt(timeout: float) -> str:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL,
                                  timeout=max(5.0, timeout * 4))
        except subprocess.TimeoutExpired:
            raise Closed(f"{argv[0]} timed out") from None
        out = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise Closed(f"{argv[0]} exited {proc.returncode}: {(out.strip().splitlines() or ['no output'])[-1]}")
        if expect is not None and not re.search(expect, proc.stdout, re.M):
            raise Mismatch(f"{argv[0]} output does not match {expect!r}: {proc.stdout.strip()[:120]!r}")
        return f"{argv[0]} succeeded" + (f", output matched {expect!r}" if expect else "")

    return retry(attempt, deadline, abort)


def run_exercise(steps, port: int, *, host: str = "127.0.0.1", abort: Abort | None = None) -> str:
    """Run a recipe's ``test.exercise`` *steps* (:class:`~tailor.recipe.Exercise`) once each, in order, against
    *host*:*port* (``{host}``/``{port}`` in their argv). A step passes when it ends within its timeout with its
    expected status and, with ``expect``, output matching it. Raises :class:`~tailor.errors.ProbeFailed` naming
    the first step that does not (or whatever *abort* raises: it is checked after every step)."""
    names = []
    for i, step in enumerate(steps, 1):
        argv = [a.replace("{host}", host).replace("{port}", str(port)) for a in step.run]
        shown = " ".join(argv)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        if shutil.which(argv[0]) is None:
            raise ProbeFailed(f"exercise step {i}: {argv[0]} not found on this host; install it "
                              f"(./setup.sh installs the exercise clients)")
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL,
                                  timeout=step.timeout)
        except subprocess.TimeoutExpired:
            raise ProbeFailed(f"exercise step {i} ({shown}) did not end within {step.timeout} s") from None
        out = (proc.stdout + proc.stderr).strip()
        last = (out.splitlines() or ["no output"])[-1][:160]
        if abort is not None and (why := abort()):
            raise ProbeFailed(f"exercise step {i} ({shown}): {why}")
        if proc.returncode != step.status:
            raise ProbeFailed(f"exercise step {i} ({shown}) exited {proc.returncode}, expected {step.status}: {last}")
        if step.expect is not None and not re.search(step.expect, proc.stdout + proc.stderr, re.M):
            raise ProbeFailed(f"exercise step {i} ({shown}): output does not match {step.expect!r}: {last}")
        names.append(argv[0])
    return f"{len(names)} exercise step{'s' if len(names) != 1 else ''} passed ({', '.join(names)})"


PROBES: dict[str, Callable] = {
    "redis": lambda p, port, deadline, abort: probe_redis(port, deadline, abort=abort),
    "http": lambda p, port, deadline, abort: probe_http(port, deadline, path=p.path, status=p.status,
                                                        body=p.body, abort=abort),
    "tcp": lambda p, port, deadline, abort: probe_tcp(port, deadline, abort=abort),
    "memcached": lambda p, port, deadline, abort: probe_memcached(port, deadline, abort=abort),
    "command": lambda p, port, deadline, abort: probe_command(p.run, port, deadline, expect=p.expect,
                                                              abort=abort),
}
"""Network probe type -> ``fn(probe, port, deadline, abort)`` running it with the recipe's
:class:`~tailor.recipe.Probe` settings against 127.0.0.1:*port*."""

LOCAL_PROBES = ("none", "console")
"""Probe types the host runs without a network: ``none`` (the ready pattern is enough) and
``console`` (a pattern on the console after the ready one)."""

PROBE_TYPES = LOCAL_PROBES + tuple(PROBES)
"""Every probe type a recipe may name (``test.probe.type``): the schema's list comes from here."""


def run_probe(probe, port: int, deadline: float, abort: Abort | None = None) -> str:
    """Run the recipe's network *probe* (a :class:`~tailor.recipe.Probe`) against 127.0.0.1:*port*.

    Returns the probe's detail; raises :class:`~tailor.errors.ProbeFailed`,
    or whatever *abort* raises. A type without a network probe is a
    ValueError (the recipe validator admits only :data:`PROBES`' types).
    """
    try:
        fn = PROBES[probe.type]
    except KeyError:
        raise ValueError(f"{probe.type!r} is not a network probe; expected one of {', '.join(PROBES)}") from None
    return fn(probe, port, deadline, abort)
