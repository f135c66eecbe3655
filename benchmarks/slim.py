"""Root filesystems kept whole, slim and traced: size, files, time to ready and minimum memory, per app.

    python benchmarks/slim.py [APP ...] [--runs N] [--no-memory | --memory APP,...]

Naming apps measures those again and keeps the other apps' rows of out/bench/slim.json as they were
(each app's figures and ratios always come from one run of its own).

For each app (default: every recipe whose kernel is built and that has a network
probe or a ready pattern), builds its root three ways into out/bench/slim/<app>/
(``rootfs.slim: false``, the whole tree; ``true``, the entrypoint and its
closure; ``traced``, what the app used in its boot test, from
out/slim/<app>/kept.json, traced first with tailor.slim.make when missing), in
the recipe's own format, and on the app's own kernel:

* the image file's size, the bytes of the files in it and their count;
* time to ready: the median of N boot tests (interleaved: whole, slim, traced, repeated);
* minimum memory: the smallest guest memory (MiB) with which the boot test passes
  (bisection between 8 and the recipe's test.memory; each failing boot may take a minute, so
  --memory names the apps to bisect, or --no-memory none).

A variant whose boot test fails (slim: true drops what an image's app needs)
is reported as failing, with the first line of why. Prints the figures with the
ratios whole/traced and traced/slim; stores out/bench/slim.json for the report.
"""

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import _setup  # noqa: F401  (puts the project on sys.path)

VARIANTS = (("whole", False), ("slim", True), ("traced", "traced"))
MEMORY_TIMEOUT_S = 60
"""A boot of the memory bisection that is not ready by then counts as failing (a guest short of memory
can thrash for the whole test timeout)."""


def quiet():
    return open("/dev/null", "w")


def boot_once(recipe, kernel, image: Path, outdir: Path, memory: int | None = None) -> dict:
    from tailor import boot
    from tailor.errors import TailorError

    r = recipe if memory is None else replace(recipe, test=replace(recipe.test, memory=memory,
                                                                   timeout=min(MEMORY_TIMEOUT_S, recipe.test.timeout)))
    saved, sys.stderr = sys.stderr, quiet()
    try:
        result = boot.run(r, kernel, image, outdir)
        return {"pass": True, "ready_s": result["time_to_ready_s"], "reason": ""}
    except TailorError as e:
        return {"pass": False, "ready_s": None, "reason": str(e).splitlines()[0]}
    finally:
        sys.stderr.close()
        sys.stderr = saved


def measure(apps: list[str], runs: int, memory: set[str]) -> dict:
    from tailor import paths, records, rootfs, slim
    from tailor.errors import TailorError
    from tailor.measure import bisect_min
    from tailor.qemu import kernel_file
    from tailor.recipe import find
    from tailor.records.stages import SlimKept
    from tailor.util import makedirs, out_dir

    out = {}
    for app in apps:
        recipe = find(app)
        pointer = paths.kernel_pointer(recipe.id)
        if not pointer.is_file():
            print(f"[bench:slim] {app}: kernel not built (doit kernel:{app}); skipped", file=sys.stderr)
            continue
        kernel, _ = kernel_file(records.KernelPointer.load(pointer))
        if not paths.slim_kept(app).is_file():
            slim.make(recipe)
        base = makedirs(out_dir() / "bench" / "slim" / app)
        built, failed = {}, {}
        for name, value in VARIANTS:
            r = replace(recipe, rootfs=replace(recipe.rootfs, slim=value))
            try:
                manifest = rootfs.build(r, into=base / name)
            except TailorError as e:  # slim: true without what an image's app needs (its workdir, ...)
                failed[name] = f"not built: {e}"
                manifest = None
            built[name] = (r, base / name / f"rootfs.{r.rootfs.format}", manifest)
        times = {name: [] for name in built}
        for i in range(runs):
            for name, (r, image, _) in built.items():
                if name in failed:
                    continue
                got = boot_once(r, kernel, image, base / name / "boot")
                if not got["pass"]:
                    failed[name] = got["reason"]
                else:
                    times[name].append(got["ready_s"])
                print(f"[bench:slim] {app} round {i + 1}/{runs} {name}: "
                      f"{got['ready_s'] if got['pass'] else 'FAIL ' + got['reason'][:100]}", file=sys.stderr)
        rows = {}
        for name, (r, image, manifest) in built.items():
            row = {"bytes": manifest.size if manifest else None,
                   "content_bytes": manifest.content_bytes if manifest else None,
                   "files": manifest.files if manifest else None,
                   "pass": name not in failed,
                   "reason": failed.get(name, ""),
                   "ready_s": round(statistics.median(times[name]), 3) if times[name] else None,
                   "min_memory_mib": None}
            if app in memory and row["pass"]:
                found, tried = bisect_min(lambda mib: boot_once(r, kernel, image, base / name / "mem", mib)["pass"],
                                          8, r.test.memory)
                row["min_memory_mib"] = found
                print(f"[bench:slim] {app} {name}: minimum memory {found} MiB ({len(tried)} boots)", file=sys.stderr)
            rows[name] = row
        kept = SlimKept.load(paths.slim_kept(app))
        out[app] = {"format": recipe.rootfs.format, "source": "image" if recipe.rootfs.image else "packages",
                    "variants": rows, "traced_paths": len(kept.paths), "added_back": kept.added_back,
                    "memory_asked_mib": recipe.test.memory, "runs": runs}
    return out


def default_apps() -> list[str]:
    from tailor import paths
    from tailor.recipe import all_recipes

    return [r.name for r in all_recipes() if paths.kernel_pointer(r.id).is_file()
            and (r.test.ready or r.test.probe.type != "none")]


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def main() -> int:
    from tailor.bench import conditions
    from tailor.errors import TailorError
    from tailor import paths
    from tailor.records.bench import load_bench, save_bench

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("apps", nargs="*")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-memory", action="store_true", help="skip the minimum-memory bisection")
    ap.add_argument("--memory", metavar="APP,...", help="bisect the minimum memory of these apps only")
    args = ap.parse_args()
    apps = args.apps or default_apps()
    memory = set() if args.no_memory else set(args.memory.split(",")) if args.memory else set(apps)
    try:
        result = measure(apps, args.runs, memory)
    except TailorError as e:
        print(f"tailor: error: {e}", file=sys.stderr)
        return 1
    kept = {}
    if args.apps and paths.bench_path("slim").is_file():
        kept = {app: row for app, row in load_bench("slim").apps.items() if app not in result}
    save_bench("slim", {"kind": "slim", "apps": {**kept, **result},
                        "conditions": conditions()})
    for app, r in result.items():
        v = r["variants"]
        parts = []
        for name in ("whole", "slim", "traced"):
            x = v[name]
            if x["bytes"] is None:
                parts.append(f"{name} not built ({x['reason'][:80]})")
                continue
            parts.append(f"{name} {x['bytes'] / 1e6:.1f} MB image/{x['content_bytes'] / 1e6:.1f} MB in {x['files']} files, "
                         + ((f"ready {x['ready_s']} s" + (f", min {x['min_memory_mib']} MiB" if x["min_memory_mib"] else ""))
                            if x["pass"] else "FAILS"))
        print(f"{app} ({r['source']}, {r['format']}): " + "; ".join(parts)
              + f"; whole/traced {ratio(v['whole']['bytes'], v['traced']['bytes'])} (files' bytes "
                f"{ratio(v['whole']['content_bytes'], v['traced']['content_bytes'])}), "
                f"traced/slim {ratio(v['traced']['bytes'], v['slim']['bytes'])} (files' bytes "
                f"{ratio(v['traced']['content_bytes'], v['slim']['content_bytes'])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
