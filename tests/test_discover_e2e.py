"""Discovery end to end (slow): hello and redis traced on one shared probe kernel, their options mapped,
and the discovered kernel boot-tested. Kernels are shared through out/ with the other slow tests (the
probe kernel is built once; a discovered set equal to a recipe's reuses that recipe's kernel)."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tailor import config, discover, kernel, source
from tailor.recipe import find, load
from tailor.util import out_dir, remove

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run_discover(app, *args):
    proc = subprocess.run([sys.executable, "-m", "tailor", "discover", app, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    return proc


def check(app, proc):
    d = out_dir() / "discover" / app
    summary = json.loads((d / "discover.json").read_text())
    options = yaml.safe_load((d / "options.yaml").read_text())
    # every option has a reason, and options.yaml says the same as discover.json
    assert [o["option"] for o in options["options"]] == [o["option"] for o in summary["options"]]
    assert all(o["why"] and o["from"] in ("trace", "deps", "bisection") for o in options["options"])
    assert all(o["class"] in discover.CLASSES + ("deps",) for o in options["options"])
    # the discovered kernel passed the boot test in a recorded trial
    trials = json.loads((d / "trials.json").read_text())["trials"]
    passing = [t for t in trials if t["result"] == "pass" and t["identity"] == summary["kernel"]]
    assert passing, trials
    result = json.loads((d / "trials" / str(passing[-1]["trial"]) / "result.json").read_text())
    assert result["pass"] is True
    # the system calls it ran
    calls = json.loads((d / "syscalls.json").read_text())
    assert {"execve", "mmap"} <= set(calls["all"])
    # progress per phase and totals at the end
    for phase in ("phase 1/5", "phase 2/5", "phase 3/5", "phase 4/5", "phase 5/5", "total"):
        assert phase in proc.stderr
    assert summary["trace"]["pcs_setup"] + summary["trace"]["pcs_app"] > 1000 and summary["trace"]["pcs_app"] > 0
    # no qemu left behind
    assert subprocess.run(["pgrep", "-f", f"tailor-{app}-"], capture_output=True).returncode == 1
    return summary


def test_discover_hello():
    summary = check("hello", run_discover("hello"))
    assert summary["boots"] >= 2
    # GNU hello runs on lupine-base alone, as found by hand: everything it reached on the probe kernel
    # is process plumbing that the null app runs too
    assert summary["options"] == [] and any(o["option"] == "CGROUPS" for o in summary["not_taken"])


BUDGET = 2
"""Trial kernels the redis test lets minimisation build (each is a kernel compile: CI's time)."""


def test_discover_redis_shares_the_probe_kernel_minimises_within_budget_and_writes_a_recipe(tmp_path):
    proc = run_discover("redis", "--budget", str(BUDGET))
    summary = check("redis", proc)
    # minimised on real kernels, within the budget, saying what it left untried; the redis exercise
    # (redis-benchmark, a forked BGSAVE) ran in every trial's boot test
    assert summary["minimised"] and summary["budget"] == BUDGET and 0 < summary["minimise_trials"] <= BUDGET
    assert summary["untried"] and "left untried" in proc.stderr
    trials = json.loads((out_dir() / "discover" / "redis" / "trials.json").read_text())["trials"]
    assert len([t for t in trials if t["why"] == "minimise" and "same_as" not in t]) == summary["minimise_trials"]
    booted = [t for t in trials if t["result"] == "pass" and "same_as" not in t]
    result = json.loads((out_dir() / "discover" / "redis" / "trials" / str(booted[-1]["trial"]) / "result.json")
                        .read_text())
    assert "2 exercise steps passed (redis-benchmark, sh)" in result["probe"]["detail"]
    hello = json.loads((out_dir() / "discover" / "hello" / "discover.json").read_text())
    assert summary["probe_kernel"] == hello["probe_kernel"]
    names = {o["option"] for o in summary["options"]}
    assert {"NET", "INET", "VIRTIO_NET", "EPOLL"} <= names
    # before any trial kernel: the probe kernel booted with EPOLL's calls failing (ENOSYS) fails the boot
    # test, so EPOLL is kept and no trial kernel is built without it
    checked = {c["option"]: c for c in summary["calls_checked"]}
    assert checked[""]["result"] == "pass" and checked["EPOLL"]["result"] == "fail", checked
    assert "epoll_wait" in checked["EPOLL"]["calls"]
    assert all({"EPOLL", "INET", "VIRTIO_NET"} <= set(t["options"]) for t in trials if t["why"] == "minimise")
    assert "network set-up needs it" in next(o["why"] for o in summary["options"] if o["option"] == "VIRTIO_NET")
    why = next(o["why"] for o in summary["options"] if o["option"] == "EPOLL")
    assert "failing as on a kernel without it (ENOSYS, on the probe kernel): needed" in why
    assert "system call checks: " in proc.stderr and "no kernel built" in proc.stderr
    calls = json.loads((out_dir() / "discover" / "redis" / "syscalls.json").read_text())
    assert {"epoll_wait", "accept4", "bind", "listen"} <= set(calls["app_phase"]) | set(calls["all"])
    # --write: a copy of the recipe without options gets the discovered ones, and resolves (strict)
    # to exactly the kernel that passed
    original = find("redis")
    text = original.path.read_text()
    head, rest = text.split("  options:\n", 1)
    copy = tmp_path / "redis.yaml"
    copy.write_text(head + rest[rest.index("rootfs:"):])
    discover.write_recipe(load(copy), summary)
    written = load(copy)
    assert {name for name, _ in written.kernel.options} == names
    result = config.configure(written, outdir=tmp_path / "config")
    assert result.identity == summary["kernel"]


def test_a_kernel_seeded_from_a_near_one_recompiles_what_changed_and_is_the_same_kernel(tmp_path):
    """What discovery's trials rely on, on the real kernel: redis's kernel without VIRTIO_NET (a driver no
    header's structure depends on), staged and seeded from a staged build of redis's kernel, recompiles a
    few objects (kbuild tracks each config symbol) and is byte for byte the kernel that a build from
    nothing of the same config gives. (An option in a core structure, EPOLL in struct file, recompiles
    most objects either way.)"""
    def alias(identity: str, why: str) -> str:  # the same config under another identity: built again here
        return hashlib.sha256(f"{why} {identity}".encode()).hexdigest()

    redis = find("redis")
    srctree = source.prepare(source.recipe_ref(redis))
    mine = config.configure(redis, outdir=tmp_path / "hand")
    text = redis.path.read_text()
    assert "    VIRTIO_NET: y" in text
    copy = tmp_path / "redis.yaml"
    copy.write_text("".join(ln for ln in text.splitlines(keepends=True) if not ln.startswith("    VIRTIO_NET: y")))
    result = config.configure(load(copy), outdir=tmp_path / "config")
    built = []
    try:
        hand = kernel.build(tmp_path / "hand" / ".config", srctree, alias(mine.identity, "seed"), "test", staged=True)
        built.append(hand)
        seed = kernel.kernel_dir(hand.kernel_identity) / "build"
        seeded = kernel.build(tmp_path / "config" / ".config", srctree, result.identity, "test", staged=True,
                              seed=seed)
        fresh = kernel.build(tmp_path / "config" / ".config", srctree, alias(result.identity, "fresh"), "test")
        built.append(fresh)
        assert kernel.seeded_from(kernel.kernel_dir(seeded.kernel_identity) / "build") == seed
        assert 0 < seeded.objects_compiled < fresh.objects_compiled / 4, (seeded.objects_compiled,
                                                                          fresh.objects_compiled)
        for name in ("bzImage", "vmlinux", "System.map"):
            ours, theirs = (kernel.kernel_dir(k.kernel_identity) / name for k in (seeded, fresh))
            assert hashlib.sha256(ours.read_bytes()).digest() == hashlib.sha256(theirs.read_bytes()).digest(), name
    finally:
        for k in built:
            remove(kernel.kernel_dir(k.kernel_identity))
