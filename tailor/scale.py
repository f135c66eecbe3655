"""benchmarks/scale.py: what a shared cache and distcc helpers do to a kernel build, as ratios of one run.

Three builds of one config, each in a scratch checkout (its own hard-linked
source, an empty local ccache), one after the other:

1. cold: everything compiled on this machine; the cache server is on, so
   this build fills it (as the first machine of a farm would);
2. warm remote: another checkout, empty local ccache, the same cache server;
3. helpers: distcc on the helpers, no cache server (every object compiled).

Then, in the cold build's object tree, the parts that stay serial whatever
the farm: kbuild's no-op walk (``make bzImage`` with nothing to do) and the
link tail (``vmlinux`` removed: link, kallsyms, bzImage). The three kernels
must be identical byte for byte.

The farm is ``TAILOR_CCACHE_REMOTE`` / ``TAILOR_DISTCC_HOSTS`` when set;
otherwise a Redis server and two helpers on loopback (tailor.farmlab), which
share this machine's cores: then only correctness and overhead are
measurable, and the script says so. Results go to ``out/bench/scale.json``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tailor import config, farm, farmlab, kconfig, kernel, paths, source
from tailor.errors import TailorError
from tailor.recipe import Source, find
from tailor.templates import render
from tailor.records.bench import save_bench
from tailor.util import makedirs

SMALL_OPTIONS = {"EMBEDDED": "y", "CC_OPTIMIZE_FOR_SIZE": "y"}
"""The default config: allnoconfig + these (about 500 objects, the one tests/test_farm_build.py builds)."""
PROJECT_N = (2, 4, 8, 16)


def say(text: str) -> None:
    print(text, flush=True)


def _config(app: str | None) -> tuple[str, str, str, Path, str]:
    """(label, config text, identity, source tree, source id) of *app*'s kernel, or of the small default
    config."""
    if app:
        recipe = find(app)
        ref = source.recipe_ref(recipe)
        tree = source.prepare(ref)
        with tempfile.TemporaryDirectory(dir=makedirs(paths.farm_dir())) as tmp:
            result = config.configure(recipe, tree, Path(tmp), source_id=ref.id)
        return f"{app}'s kernel", result.config, result.identity, tree, ref.id
    ref = source.ref_for(Source())
    tree = source.prepare(ref)
    result = kconfig.resolve(kconfig.load_tree(tree), [kconfig.recipe_assigns(SMALL_OPTIONS.items(), "scale")],
                             source_id=ref.id)
    return "allnoconfig + EMBEDDED + CC_OPTIMIZE_FOR_SIZE", result.config, result.identity, tree, ref.id


def _timed_make(checkout: farmlab.Checkout, identity: str, targets: list[str], remove: list[str] = ()) -> float:
    """Seconds of one local ``make`` in *checkout*'s object tree, after removing *remove* from it."""
    objdir = checkout.kernel_dir(identity) / "build"
    for name in remove:
        (objdir / name).unlink(missing_ok=True)
    cmd, env = kernel.make_command(checkout.tree, objdir, targets, os.cpu_count())
    env.update({k: v for k, v in checkout.env({}).items() if k in ("CCACHE_DIR", "TAILOR_OUT")})
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise TailorError(f"make {' '.join(targets)} failed in {objdir}: {proc.stderr.strip()[-200:]}")
    return time.monotonic() - t0


def measure_scale(app: str | None = None) -> dict:
    """Run the three builds and the serial-part timings; return (and store) the figures."""
    label, config_text, identity, tree, source_id = _config(app)
    settings = farm.load_settings()
    base = Path(tempfile.mkdtemp(prefix="scale-", dir=makedirs(paths.farm_dir())))
    try:
        with farmlab.Lab() as lab:
            if settings.remotes:
                remote, remote_where = " ".join(r.url for r in settings.remotes), "yours"
            else:
                remote, remote_where = lab.redis().url, "loopback"
            if settings.helpers:
                hosts, helpers, hosts_where = " ".join(h.spec for h in settings.helpers), [], "yours"
            else:
                helpers = [lab.distccd("127.0.0.2", slots=2), lab.distccd("127.0.0.3", slots=2)]
                hosts, hosts_where = " ".join(h.spec for h in helpers), "loopback"
            say(f"scale: {label} ({identity[:16]}); cache server: {remote_where}, helpers: {hosts_where}")
            runs = {}
            for name, env in (("cold", {farm.ENV_REMOTE: remote}),
                              ("warm_remote", {farm.ENV_REMOTE: remote}),
                              ("helpers", {farm.ENV_HOSTS: hosts})):
                c = farmlab.Checkout(base, name, tree, source_id, config_text)
                say(f"scale: {name} build ...")
                err = c.finish(c.start(identity, env))
                stats = farmlab.ccache_stats(c.ccache)
                runs[name] = {"checkout": c, "seconds": round(c.seconds, 1), "cpu_seconds": round(c.cpu_seconds, 1),
                              "remote_hits": stats.get("remote_storage_hit", 0),
                              "remote_misses": stats.get("remote_storage_miss", 0),
                              "farm_lines": [ln for ln in err.splitlines() if "farm" in ln or "helper" in ln]}
                say(f"scale: {name}: {c.seconds:.1f} s, {c.cpu_seconds:.1f} CPU s on this machine")
            cold = runs["cold"]["checkout"]
            identical = all((runs[n]["checkout"].kernel_dir(identity) / a).read_bytes()
                            == (cold.kernel_dir(identity) / a).read_bytes()
                            for n in ("warm_remote", "helpers") for a in ("vmlinux", "bzImage", "System.map"))
            say("scale: serial parts (no-op walk, link tail) ...")
            noop = _timed_make(cold, identity, ["bzImage"])
            link = _timed_make(cold, identity, ["bzImage"], remove=["vmlinux"])
            helper_jobs = [farmlab.compiled_jobs(h) for h in helpers]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    t1 = runs["cold"]["seconds"]
    local_share = runs["helpers"]["cpu_seconds"] / max(runs["cold"]["cpu_seconds"], 0.1)
    serial = noop + link
    data = {
        "kind": "scale",
        "config": label, "identity": identity,
        "farm": {"cache_server": remote_where, "helpers": hosts_where, "hosts": hosts,
                 "helper_compiles": helper_jobs},
        "builds": {n: {k: v for k, v in r.items() if k != "checkout"} for n, r in runs.items()},
        "ratios": {"warm_remote_vs_cold": round(runs["warm_remote"]["seconds"] / t1, 3),
                   "helpers_vs_cold": round(runs["helpers"]["seconds"] / t1, 3)},
        "identical_kernels": identical,
        "serial": {"noop_walk_s": round(noop, 1), "link_tail_s": round(link, 1),
                   "fraction_of_cold": round(serial / t1, 3)},
        "local_cpu_share_with_helpers": round(local_share, 3),
        "projection": [{"machines": n, "seconds": round(serial + max((t1 - serial) / n, (t1 - serial) * local_share), 1)}
                       for n in PROJECT_N],
        "one_machine": hosts_where == "loopback",
        "cores": os.cpu_count(),
    }
    data = save_bench("scale", data)
    sys.stdout.write(render("scale.txt.j2", d=data))
    if not identical:
        raise TailorError("the three kernels differ; see out/bench/scale.json")
    return data
