"""Cold boot to ready against restore from a snapshot to ready, for apps with a snapshot.

    python benchmarks/snapshot.py [APP ...] [--runs N]

For each app (default: redis and nginx; each needs `doit snapshot:<app>`),
starts the VM N times each way, interleaved, in this process: detached as
`tailor run` does, until the recipe's probe answers through a forwarded port
(a cold boot: the console's ready pattern, then the probe; a restore: qemu
loads the state, the guest is reseeded, then the probe). Prints the medians
(min-max), the ratio restore/cold, the time the snapshot took to save, its size
on disk (state and disk layer as stored, sparse files counted by their blocks)
and the resident memory of qemu once ready each way. Stores out/bench/snapshot.json.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import _setup  # noqa: F401  (puts the project on sys.path)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def once(recipe, snapshot: bool) -> tuple[float, float]:
    """Seconds from start to the probe's answer, and qemu's resident MiB then."""
    from tailor import probes, run
    from tailor.qemu import free_port

    port = free_port()
    name = f"bench-{recipe.name}-{'restore' if snapshot else 'cold'}"
    p = run.plan(recipe, name=name, forwards=[run.Forward("127.0.0.1", port, recipe.test.probe.port)],
                 from_snapshot=snapshot)
    t0 = time.monotonic()
    try:
        run.start(p, detach=True, out=open("/dev/null", "w"))
        probes.run_probe(recipe.test.probe, port, time.monotonic() + recipe.test.timeout)
        took = time.monotonic() - t0
        return took, rss_mib(p.pid)
    finally:
        run.stop(name)


def on_disk(path: Path) -> int:
    return path.stat().st_blocks * 512


def measure(apps: list[str], runs: int) -> dict:
    from tailor import run, snapshot
    from tailor.recipe import find

    out = {}
    for app in apps:
        recipe = find(app)
        d = snapshot.snapshot_dir(app)
        rec = snapshot.check(recipe, run.plan(recipe, name=f"bench-{app}-check"))
        times = {"cold": [], "restore": []}
        rss = {"cold": [], "restore": []}
        for i in range(runs):
            for kind in ("cold", "restore"):
                t, m = once(recipe, kind == "restore")
                times[kind].append(t)
                rss[kind].append(m)
                print(f"[bench:snapshot] {app} round {i + 1}/{runs} {kind}: ready after {t:.2f} s, qemu {m:.0f} MiB",
                      file=sys.stderr)
        med = {k: statistics.median(v) for k, v in times.items()}
        out[app] = {
            "runs": runs,
            "cold_s": {"median": round(med["cold"], 3), "min": round(min(times["cold"]), 3),
                       "max": round(max(times["cold"]), 3)},
            "restore_s": {"median": round(med["restore"], 3), "min": round(min(times["restore"]), 3),
                          "max": round(max(times["restore"]), 3)},
            "ratio": round(med["restore"] / med["cold"], 3),
            "save_s": rec.save_s, "snapshot_time_to_ready_s": rec.time_to_ready_s,
            "state_bytes": rec.files["state"]["bytes"], "state_on_disk": on_disk(d / "state"),
            "disk_bytes": rec.files.get("disk.qcow2", {}).get("bytes", 0),
            "disk_on_disk": on_disk(d / "disk.qcow2") if (d / "disk.qcow2").is_file() else 0,
            "rss_mib": {k: round(statistics.median(v), 1) for k, v in rss.items()},
            "memory_mib": rec.memory, "accel": rec.accel, "qemu": rec.qemu_version,
        }
    return out


def main() -> int:
    from tailor.bench import conditions
    from tailor.errors import TailorError
    from tailor.records.bench import save_bench

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("apps", nargs="*", default=["redis", "nginx"])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    try:
        result = measure(args.apps, args.runs)
    except TailorError as e:
        print(f"tailor: error: {e}", file=sys.stderr)
        return 1
    save_bench("snapshot", {"kind": "snapshot", "apps": result,
                            "conditions": conditions()})
    for app, r in result.items():
        print(f"{app}: cold boot to ready {r['cold_s']['median']:.2f} s ({r['cold_s']['min']:.2f}-"
              f"{r['cold_s']['max']:.2f}), restore to ready {r['restore_s']['median']:.2f} s "
              f"({r['restore_s']['min']:.2f}-{r['restore_s']['max']:.2f}): {r['ratio']:.2f}x; saved in "
              f"{r['save_s']:.2f} s; on disk {r['state_on_disk'] / 1e6:.1f} MB state + "
              f"{r['disk_on_disk'] / 1e6:.1f} MB disk layer; qemu RSS {r['rss_mib']['cold']:.0f} MiB cold, "
              f"{r['rss_mib']['restore']:.0f} MiB restored ({r['memory_mib']} MiB guest, {r['accel']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
