"""The probe kernel: the recipe's base plus every app-facing option, for tracing what an app runs.

``base_configs/probe.config`` lists the app-facing options (system calls,
file systems of memory and of the kernel, socket families, /proc, /sys,
IPC, timers, namespaces and cgroups, the network card) and no hardware
drivers. It was derived once, with :func:`derive` (``python -m tailor
derive-probe FIRECRACKER_CONFIG``), from Firecracker's 6.1 guest config: every
option that config turns on, that has a prompt, that lupine-base leaves off
and that :data:`APP_FACING` counts as app-facing. The fragment is committed,
so a clone without that reference config still builds the same probe kernel.

The probe kernel's config is the recipe's base fragments plus the probe
fragment plus :data:`LINE_TABLES` (DWARF line tables, so that discovery can map
a traced pc to its source line and the ``#if`` conditions around it:
:mod:`tailor.linemap`), resolved by tailor's engine with ``resolve: deps``; like every
kernel it is keyed by its config identity, so it is built once per kernel
source (and base) and shared by every discovery.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tailor import config as cfg
from tailor import kernel, paths, source
from tailor.errors import TailorError
from tailor.kconfig import Assign, load_tree, parse_fragment, resolve
from tailor.recipe import PROBE_FRAGMENT
from tailor.templates import render
from tailor.util import enabled_symbols, makedirs, write_atomic


LINE_TABLES = (("DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT", "y"), ("DEBUG_INFO_REDUCED", "y"))
"""Debug information for the probe kernel only: reduced (no type information), which keeps the line tables
that ``addr2line`` needs and adds no code (on lupine-base + probe it turns on nothing but DEBUG_INFO*
and the pahole feature flags)."""

APP_FACING: tuple[tuple[str, tuple[str, ...] | None, tuple[str, ...]], ...] = (
    # (Kconfig file or directory, the options taken from it (None: all), options left out)
    ("init/Kconfig", None,
     # not app-facing: image compression, audit and accounting for the host, NUMA, debug buffers,
     # 16-bit uid calls (32-bit compat only), kallsyms, core-dump and BUG() plumbing
     ("KERNEL_GZIP", "AUDIT", "NUMA_BALANCING", "CPU_ISOLATION", "RELAY", "PSI_DEFAULT_DISABLED",
      "RT_GROUP_SCHED", "CGROUP_PERF", "INITRAMFS_PRESERVE_MTIME", "PCSPKR_PLATFORM", "BASE_FULL",
      "KALLSYMS", "PROFILING", "BUG", "ELF_CORE", "UID16")),
    ("kernel/bpf/", ("BPF_SYSCALL",), ()),
    ("kernel/time/", ("HIGH_RES_TIMERS",), ()),
    ("mm/Kconfig", ("SWAP", "COMPACTION", "MIGRATION", "KSM", "TRANSPARENT_HUGEPAGE",
                    "TRANSPARENT_HUGEPAGE_MADVISE", "USERFAULTFD", "VM_EVENT_COUNTERS"), ()),
    ("fs/Kconfig", ("FILE_LOCKING", "TMPFS", "TMPFS_POSIX_ACL", "TMPFS_XATTR", "HUGETLBFS"), ()),
    ("fs/Kconfig.binfmt", ("BINFMT_MISC",), ()),
    ("fs/proc/", None, ("PROC_KCORE",)),
    ("fs/sysfs/", None, ()),
    ("fs/notify/", None, ()),
    ("net/Kconfig", ("NET", "INET"), ()),
    ("net/unix/", None, ()),
    ("net/packet/", None, ()),
    ("net/ipv4/", ("IP_MULTICAST", "SYN_COOKIES", "INET_DIAG", "TCP_MD5SIG"), ()),
    ("net/ipv6/", ("IPV6",), ()),
    ("drivers/net/", ("NETDEVICES", "NET_CORE", "VIRTIO_NET"), ()),
    ("drivers/tty/", ("UNIX98_PTYS",), ()),
    ("drivers/char/", ("DEVMEM", "RANDOM_TRUST_CPU", "RANDOM_TRUST_BOOTLOADER"), ()),
    ("arch/Kconfig", ("SECCOMP", "COMPAT_32BIT_TIME"), ()),
    ("arch/x86/", ("X86_VSYSCALL_EMULATION", "MODIFY_LDT_SYSCALL", "X86_IOPL_IOPERM"), ()),
    ("security/keys/", ("KEYS",), ()),
)
"""Which options of a reference config count as app-facing, by the Kconfig file that defines them.
Everything else (hardware drivers, buses, debugging, hardening, crypto and block internals,
netfilter, disk and network file systems, SMP and NUMA) is left out."""


def _area(filename: str) -> tuple[str, tuple[str, ...] | None, tuple[str, ...]] | None:
    for rule in APP_FACING:
        where = rule[0]
        if filename == where or (where.endswith("/") and filename.startswith(where)):
            return rule
    return None


def derive(reference: Path, srctree: Path, base_layers) -> list[tuple[str, str, str]]:
    """The app-facing options of the *reference* config that the base leaves off:
    ``(symbol, Kconfig file, prompt)`` in Kconfig order."""
    tree = load_tree(srctree)
    try:
        on_in_ref = enabled_symbols(Path(reference).read_text())
    except OSError as e:
        raise TailorError(f"{reference}: cannot read ({e.strerror})") from None
    base = resolve(tree, base_layers)
    base_on = enabled_symbols(base.config)
    out = []
    with tree.lock:
        for node in tree.kconf.node_iter():
            sym = node.item
            if not hasattr(sym, "name") or getattr(sym, "choice", None) is not None or not node.prompt:
                continue
            if sym.name not in on_in_ref or sym.name in base_on or any(o[0] == sym.name for o in out):
                continue
            rule = _area(node.filename)
            if rule is None or (rule[1] is not None and sym.name not in rule[1]) or sym.name in rule[2]:
                continue
            out.append((sym.name, node.filename, node.prompt[0]))
    # Keep an option only when the engine can enable it on top of the base without undoing any
    # of the base's own values (CPUSETS, say, depends on the SMP that lupine-base turns off).
    kept = []
    for opt in out:
        try:
            resolve(tree, base_layers + [[Assign(opt[0], "y", "probe")]], "deps")
        except TailorError:
            continue
        kept.append(opt)
    return kept


def write_fragment(options: list[tuple[str, str, str]], reference: Path, path: Path = PROBE_FRAGMENT) -> Path:
    """Render ``templates/probe.config.j2`` with *options* to *path*."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for name, filename, prompt in options:
        groups.setdefault(filename, []).append((name, prompt))
    text = render("probe.config.j2", groups=groups, reference=Path(reference).name,
                  rules=[(w, list(t) if t else None, list(x)) for w, t, x in APP_FACING])
    return write_atomic(path, text)


def options(path: Path = PROBE_FRAGMENT) -> list[str]:
    """The probe fragment's options, in order."""
    return [a.name for a in parse_fragment(path, label=f"base_configs/{path.name}") if a.value == "y"]


probe_dir = paths.probe_kernel_dir


def config(recipe, srctree: Path, source_id: str):
    """Resolve the probe kernel of *recipe*'s base: base fragments + probe.config with ``resolve: deps``."""
    layers = cfg.layers(recipe)[:-1] + [parse_fragment(PROBE_FRAGMENT, label="base_configs/probe.config"),
                                        [Assign(name, value, "probe line tables") for name, value in LINE_TABLES]]
    return resolve(load_tree(srctree), layers, "deps", source_id=source_id)


def build(recipe, jobs: int | None = None) -> dict:
    """Build (or reuse) the probe kernel for *recipe*'s kernel source and base; return its description."""
    ref = source.recipe_ref(recipe)
    srctree = source.prepare(ref)
    result = config(recipe, srctree, ref.id)
    pdir = makedirs(probe_dir(result.identity))
    write_atomic(pdir / ".config", result.config)
    print(f"[discover:probe] probe kernel {result.identity[:16]}: {result.enabled()} options on "
          f"(resolve: deps added {len(result.added)})", file=sys.stderr)
    meta = kernel.build(pdir / ".config", srctree, result.identity, ref.label, jobs=jobs,
                        label="discover:probe")
    return kernel.describe(meta)
