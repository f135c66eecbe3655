"""A farm on loopback: a Redis cache server and distcc helpers, started and stopped by a test or a benchmark.

Each server runs in its own session (so it and its children are stopped
together), on a free port of a 127.0.0.x address, with its files (logs, the
Redis directory, a distccd compiler list) in a scratch directory that is
removed when the :class:`Lab` closes::

    with farmlab.Lab() as lab:
        cache = lab.redis()
        helpers = [lab.distccd("127.0.0.2"), lab.distccd("127.0.0.3")]
        env = {"TAILOR_CCACHE_REMOTE": cache.url,
               "TAILOR_DISTCC_HOSTS": " ".join(h.spec for h in helpers)}

distccd started as root drops its privileges to ``nobody``; the scratch
directory is made readable for it and its log file is handed to it.

A :class:`Checkout` stands for another machine or checkout: a scratch output
directory with a hard-linked copy of the kernel source, its own ccache and
distcc state, in which ``kernel.build`` runs as a child process.
"""

from __future__ import annotations

import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tailor import farm, kernel
from tailor.errors import TailorError

DAEMON_USER = "nobody"
START_TIMEOUT_S = 15.0


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port that is free on *address* right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class Server:
    """One running daemon of the lab."""

    name: str
    address: str
    port: int
    log: Path
    proc: subprocess.Popen
    slots: int = 0
    stopped: bool = field(default=False)

    @property
    def url(self) -> str:
        """The ccache remote storage URL of a Redis server."""
        return f"redis://{self.address}:{self.port}"

    @property
    def spec(self) -> str:
        """The distcc host specification of a helper."""
        return f"{self.address}:{self.port}/{self.slots}"

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send *sig* to the daemon and every process it started, and reap it."""
        if self.stopped:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.stopped = True

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL after a few seconds) and its children."""
        if self.stopped:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(5)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            pass
        self.kill(signal.SIGKILL)


class Lab:
    """A scratch directory and the daemons started in it; closing stops them all and removes it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tailor-farmlab-"))
        os.chmod(self.dir, 0o755)
        self.servers: list[Server] = []
        self._as_root = os.geteuid() == 0

    def __enter__(self) -> "Lab":
        """Open the lab; until it closes, a SIGTERM to this process (the default action would end it
        at once, leaving the daemons running) raises KeyboardInterrupt, so the ``with`` block and
        pytest's teardown stop them. Only in the main thread, and only over the default action."""
        self._old_sigterm = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._old_sigterm = signal.signal(signal.SIGTERM, _interrupt)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for s in reversed(self.servers):
            s.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        if getattr(self, "_old_sigterm", None) is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    def _daemon_file(self, name: str) -> Path:
        """An empty file the daemon (possibly running as nobody) may write."""
        path = self.dir / name
        path.touch()
        if self._as_root:
            pw = pwd.getpwnam(DAEMON_USER)
            os.chown(path, pw.pw_uid, pw.pw_gid)
        return path

    def _start(self, name: str, argv: list[str], address: str, port: int, log: Path,
               env: dict | None = None, slots: int = 0) -> Server:
        if not shutil.which(argv[0]):
            raise TailorError(f"{argv[0]}: not installed; run ./setup.sh")
        with open(self.dir / f"{name}.out", "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=env, cwd=self.dir, start_new_session=True)
        server = Server(name=name, address=address, port=port, log=log, proc=proc, slots=slots)
        self.servers.append(server)
        deadline = time.monotonic() + START_TIMEOUT_S
        while farm.reach(address, port, timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                output = (self.dir / f"{name}.out").read_text(errors="replace").strip()
                raise TailorError(f"{name} did not start on {address}:{port} "
                                  f"({(output or server.log_text()).splitlines()[-1:] or 'no output'})")
            time.sleep(0.05)
        return server

    def redis(self, address: str = "127.0.0.1") -> Server:
        """Start a redis-server on a free port, configured as a cache (no persistence, LRU eviction)."""
        port = free_port(address)
        data = self.dir / f"redis-{port}"
        data.mkdir()
        log = data / "redis.log"
        argv = ["redis-server", "--bind", address, "--port", str(port), "--dir", str(data), "--logfile", str(log),
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--maxmemory", "2gb", "--maxmemory-policy", "allkeys-lru"]
        return self._start(f"redis-{port}", argv, address, port, log)

    def distccd(self, address: str, slots: int = 2, compiler: str | None = None,
                allow: str = "127.0.0.0/8") -> Server:
        """Start a distccd helper on *address* with *slots* jobs, serving the clients *allow* names.

        With *compiler*, the helper compiles every ``gcc`` job with that
        compiler instead of its own gcc (through distccd's ``DISTCC_CMDLIST``,
        the list of compilers a helper runs), like a machine with another gcc.
        """
        port = free_port(address)
        log = self._daemon_file(f"distccd-{address}-{port}.log")
        env = dict(os.environ)
        if compiler:
            wrap = self.dir / f"cc-{address}-{port}"
            wrap.mkdir()
            (wrap / "gcc").symlink_to(compiler)
            cmdlist = wrap / "cmdlist"
            cmdlist.write_text(f"{wrap / 'gcc'}\n")
            env["DISTCC_CMDLIST"] = str(cmdlist)
            os.chmod(wrap, 0o755)
        argv = ["distccd", "--daemon", "--no-detach", "--user", DAEMON_USER, "--listen", address,
                "--port", str(port), "--allow", allow, "--jobs", str(slots), "--nice", "0",
                "--log-file", str(log), "--log-level", "info"]
        return self._start(f"distccd-{address}", argv, address, port, log, env=env, slots=slots)


def compiled_jobs(helper: Server) -> int:
    """How many compiles a distccd helper finished successfully (from its log)."""
    return helper.log_text().count("COMPILE_OK")


BUILD_SCRIPT = """\
import sys
from pathlib import Path
from tailor import kernel
from tailor.errors import TailorError
try:
    kernel.build(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], "scratch", label=sys.argv[4])
except TailorError as e:
    sys.exit(f"tailor: error: {e}")
"""


class Checkout:
    """A scratch output directory standing for another machine or checkout: its own hard-linked copy
    of the kernel source (at the path tailor uses, ``src/<id>/tree``), its own ccache and distcc state."""

    def __init__(self, base: Path, name: str, linux_tree: Path, source_id: str, config_text: str):
        self.name = name
        self.out = Path(base) / name
        self.tree = self.out / "src" / source_id / "tree"
        self.tree.parent.mkdir(parents=True)
        if subprocess.run(["cp", "-al", str(linux_tree), str(self.tree)], capture_output=True).returncode != 0:
            shutil.rmtree(self.tree, ignore_errors=True)  # another file system: a real copy
            subprocess.run(["cp", "-a", str(linux_tree), str(self.tree)], check=True)
        self.config = self.out / "config" / ".config"
        self.config.parent.mkdir(parents=True)
        self.config.write_text(config_text)
        self.ccache = self.out / "ccache"
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    def env(self, settings: dict[str, str]) -> dict[str, str]:
        """The build's environment: no farm settings but *settings*, this checkout's out/ and caches."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TAILOR_", "CCACHE_", "DISTCC_"))}
        env.update({"TAILOR_OUT": str(self.out), "CCACHE_DIR": str(self.ccache),
                    "DISTCC_DIR": str(self.out / "distcc"), farm.ENV_REMOTE: "", farm.ENV_HOSTS: ""})
        env.update(settings)
        return env

    def start(self, identity: str, settings: dict[str, str]) -> subprocess.Popen:
        """Start ``kernel.build`` of this checkout's config in a child process."""
        self._t0 = time.monotonic()
        self._cpu0 = _children_cpu()
        return subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, str(self.config), str(self.tree), identity,
                                 self.name], cwd=Path(farm.__file__).resolve().parent.parent,
                                env=self.env(settings), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    def finish(self, proc: subprocess.Popen, timeout: float = 3600) -> str:
        """Wait for the build; return its stderr (a TailorError when it failed)."""
        _, err = proc.communicate(timeout=timeout)
        self.seconds = time.monotonic() - self._t0
        self.cpu_seconds = _children_cpu() - self._cpu0
        if proc.returncode != 0:
            raise TailorError(f"the {self.name} build failed: {(err.strip().splitlines() or ['no output'])[-1]}")
        return err

    def kernel_dir(self, identity: str) -> Path:
        """Where this checkout keeps the kernel of the config *identity* (built by this host's toolchain)."""
        return self.out / "kernel" / kernel.kernel_identity(identity)[:16]


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished children (a build and all it ran locally)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def ccache_stats(ccache_dir: Path) -> dict[str, int]:
    """ccache's counters (``--print-stats``) of one cache directory."""
    out = subprocess.run(["ccache", "--print-stats"], env=dict(os.environ, CCACHE_DIR=str(ccache_dir)),
                         capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in (ln.split("\t") for ln in out.splitlines() if "\t" in ln)}
