"""Real kernels built through the farm: a Redis cache server and two distccd helpers on loopback (slow).

Three builds of one small config (allnoconfig + EMBEDDED + CC_OPTIMIZE_FOR_SIZE,
about 500 objects), each in its own output directory with its own copy of the
source and an empty private ccache, as on three machines or checkouts:

1. local: the cache server and the only helper named are dead, so tailor says
   so in one line each and compiles everything on this machine;
2. distcc: every object is compiled on the two helpers (127.0.0.2, 127.0.0.3)
   with the Redis server as the remote cache; one helper is killed in the
   middle of the build;
3. second checkout: no helpers, an empty local ccache, the same Redis server:
   the objects come from the remote cache.

All three kernels (vmlinux, bzImage, System.map) must be identical byte for byte.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tailor import farmlab, kconfig, source
from tailor.recipe import Source

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = {"EMBEDDED": "y", "CC_OPTIMIZE_FOR_SIZE": "y"}
ARTEFACTS = ("vmlinux", "bzImage", "System.map")
KILL_AFTER = 40
"""Compiles the second helper finishes before it is killed (of about 250 it would do)."""
COMPILED_SOURCE = re.compile(r"COMPILE_OK .* (\S+/tree/\S+\.[cS])$", re.M)
"""distccd's line for each compile it finished, naming the source (a path into the kernel tree)."""


def artefacts(checkout: farmlab.Checkout, identity: str) -> dict[str, bytes]:
    return {a: (checkout.kernel_dir(identity) / a).read_bytes() for a in ARTEFACTS}


def build_log(checkout: farmlab.Checkout, identity: str) -> str:
    return (checkout.kernel_dir(identity) / "build.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def farm_builds(linux_tree, ktree):
    """Run the three builds; return what the tests check."""
    ref = source.ref_for(Source())
    result = kconfig.resolve(ktree, [kconfig.recipe_assigns(OPTIONS.items(), "test_farm_build")], source_id=ref.id)
    identity = result.identity
    base = Path(tempfile.mkdtemp(prefix="test-farm-", dir=ROOT / "out"))  # beside out/src: hard links work
    try:
        with farmlab.Lab() as lab:
            cache = lab.redis()
            h1, h2 = lab.distccd("127.0.0.2", slots=2), lab.distccd("127.0.0.3", slots=2)
            checkouts = {n: farmlab.Checkout(base, n, linux_tree, ref.id, result.config)
                         for n in ("local", "distcc", "second")}
            data: dict = {"identity": identity, "checkouts": checkouts, "helpers": (h1, h2)}

            # 1. Dead cache server and dead helper: one line each, then a local build.
            dead_cache, dead_helper = farmlab.free_port(), farmlab.free_port("127.0.0.4")
            local = checkouts["local"]
            data["dead"] = (f"redis://127.0.0.1:{dead_cache}", f"127.0.0.4:{dead_helper}")
            data["local_err"] = local.finish(local.start(
                identity, {"TAILOR_CCACHE_REMOTE": data["dead"][0], "TAILOR_DISTCC_HOSTS": f"{data['dead'][1]}/2"}))

            # 2. Through both helpers and the cache server; the second helper dies mid-build.
            dist = checkouts["distcc"]
            proc = dist.start(identity, {"TAILOR_CCACHE_REMOTE": cache.url,
                                         "TAILOR_DISTCC_HOSTS": f"{h1.spec} {h2.spec}"})
            deadline = time.monotonic() + 1200
            while farmlab.compiled_jobs(h2) < KILL_AFTER and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            data["running_at_kill"] = proc.poll() is None
            h2.kill()
            data["at_kill"] = (farmlab.compiled_jobs(h1), farmlab.compiled_jobs(h2))
            data["distcc_err"] = dist.finish(proc)
            data["after"] = (farmlab.compiled_jobs(h1), farmlab.compiled_jobs(h2))
            data["h1_log"], data["h2_log"] = h1.log_text(), h2.log_text()

            # 3. A second checkout with an empty local ccache and no helpers: hits in the cache server.
            second = checkouts["second"]
            data["second_err"] = second.finish(second.start(identity, {"TAILOR_CCACHE_REMOTE": cache.url}))
            data["stats"] = {n: farmlab.ccache_stats(c.ccache) for n, c in checkouts.items()}
            data["kernels"] = {n: artefacts(c, identity) for n, c in checkouts.items()}
            data["logs"] = {n: build_log(c, identity) for n, c in checkouts.items()}
            print("\nfarm builds: " + ", ".join(f"{n} {c.seconds:.0f} s" for n, c in checkouts.items())
                  + f"; helper compiles {data['after']}; remote hits of the second checkout "
                  f"{data['stats']['second'].get('remote_storage_hit')}", file=sys.stderr)
            yield data
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_dead_cache_server_and_helper_fall_back_to_a_local_build_saying_so_once(farm_builds):
    err = farm_builds["local_err"]
    url, helper = farm_builds["dead"]
    lines = err.splitlines()
    assert lines.count(f"[local] ccache remote {url} is not usable (connection refused); "
                       f"building with the local cache only") == 1
    assert lines.count(f"[local] distcc helper {helper} is not reachable (connection refused); "
                       f"building without it") == 1
    assert "Traceback" not in err
    log = farm_builds["logs"]["local"]
    assert f" -j{os.cpu_count() or 1} bzImage" in log.splitlines()[0] and "# farm" not in log
    stats = farm_builds["stats"]["local"]
    assert stats["cache_miss"] > 400 and stats["remote_storage_miss"] == stats["remote_storage_error"] == 0


def test_helpers_build_the_local_kernel_byte_for_byte_even_when_one_dies(farm_builds):
    kernels = farm_builds["kernels"]
    for name in ARTEFACTS:
        assert kernels["distcc"][name] == kernels["local"][name], f"{name} differs from the local build"
    jobs = (os.cpu_count() or 1) + 4
    assert f"[distcc] farm: distcc on 2 helpers (4 slots), -j{jobs}" in farm_builds["distcc_err"]
    first = farm_builds["logs"]["distcc"].splitlines()[:2]
    assert f" -j{jobs} bzImage" in first[0] and first[1].startswith("# farm: distcc on 2 helpers")
    # Both helpers compiled kernel objects (their logs name the kernel's sources) ...
    for log in (farm_builds["h1_log"], farm_builds["h2_log"]):
        assert len(set(COMPILED_SOURCE.findall(log))) >= KILL_AFTER // 2
    (h1_at_kill, h2_at_kill), (h1_end, h2_end) = farm_builds["at_kill"], farm_builds["after"]
    # ... the second died in the middle of the build, and the first took over its share.
    assert farm_builds["running_at_kill"] and h2_at_kill >= KILL_AFTER
    assert h2_end == h2_at_kill and h1_end - h1_at_kill > 50
    # Nearly every object was compiled on a helper, or locally where distcc says it fell back (the dead
    # helper's jobs until distcc's back-off marks it down, again each time the back-off ends).
    log = farm_builds["logs"]["distcc"]
    compiled, fallbacks = log.count("  CC      "), log.count("running locally instead")
    assert h1_end + h2_end + fallbacks > compiled * 0.7, (h1_end, h2_end, fallbacks, compiled)
    stats = farm_builds["stats"]["distcc"]
    assert stats["remote_storage_miss"] > 400 and stats["remote_storage_write"] > 400


def test_second_checkout_with_an_empty_cache_gets_the_objects_from_the_cache_server(farm_builds):
    kernels = farm_builds["kernels"]
    for name in ARTEFACTS:
        assert kernels["second"][name] == kernels["local"][name], f"{name} differs from the local build"
    stats = farm_builds["stats"]["second"]
    hits, misses = stats["remote_storage_hit"], stats["remote_storage_miss"]
    assert hits > 400 and hits >= 0.9 * (hits + misses), stats
    assert stats["local_storage_hit"] < 20  # the local ccache started empty
    assert "[second] farm: ccache remote redis://127.0.0.1:" in farm_builds["second_err"]
