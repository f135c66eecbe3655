"""Discovery against the hand-found recipes: builds, boots, trace size, time, options, kernel size, system calls.

    python benchmarks/discover.py [APP ...] [--run] [--keep]

For every app discovered so far (out/discover/<app>/discover.json), or the apps
named, prints the kernel builds and boots discovery took, the trace's size, the
time of trace + map and of the whole discovery, and the discovered option set
against the recipe's hand-found one: number of options, bzImage and system calls
compiled in (from System.map), each with its ratio. The hand-found kernel is
measured when it is built (`doit kernel:<app>`), with the minimisation's trials
and what each mapping (objects, #if lines) found. Goals (2 cores): trace + map
under 120 s; median trial kernels per app <= 12 and wall time per discovery <=
25 min; the discovered bzImage no bigger than the hand-found one (+1%). ``--run`` runs the discovery of each named app first (kernel
builds: minutes each). Stores out/bench/discover.json, each row with the time its discovery ended;
``--keep`` keeps the other apps' rows of the last measurement (a minimised discovery takes up to an
hour, so the catalogue is measured a few apps at a time).
"""

import argparse
import datetime
import statistics
import sys

import _setup  # noqa: F401  (puts the project on sys.path)


def row(app: str) -> dict:
    from tailor import discover, kernel
    from tailor.measure import count_syscalls
    from tailor.recipe import load
    from tailor.records.discovery import DiscoverySummary, DiscoveryTrials

    summary = DiscoverySummary.load(DiscoverySummary.path(app))
    trials = DiscoveryTrials.load(DiscoveryTrials.path(app)).trials
    built = [t for t in trials if "same_as" not in t and t["result"] in ("pass", "fail")]
    recipe = load(recipe_file(app))  # recipes/<app>.yaml, or wherever the discovered recipe was
    kdir = kernel.kernel_dir(kernel.kernel_identity(summary.kernel))
    calls = count_syscalls((kdir / "System.map").read_text())["real"]
    tr = summary.trace
    return {
        "app": app,
        "builds": summary.builds, "boots": summary.boots, "trials": summary.trials,
        "trial_kernels": len(built),  # trials built and booted (not those that resolved to a kernel tried before)
        "trace_lines": tr["lines"], "trace_mb": round(tr["bytes"] / 1e6, 2),
        "trace_map_s": round(tr["seconds"] + tr["map_seconds"], 1), "total_s": summary.seconds,
        "discovered": [o["option"] for o in summary.options],
        "recipe": [name for name, _ in recipe.kernel.options],
        "bzImage": summary.bzimage, "syscalls": calls, "syscalls_run": summary.syscalls,
        "hand_found": discover.hand_found(recipe.name), "exercise": len(recipe.test.exercise),
        "minimised": summary.minimised, "minimise_trials": summary.minimise_trials,
        "search": summary.search or "ddmin",  # records from before --search existed used ddmin
        "untried": summary.untried, "mapping": summary.mapping,
        "classes": {o["option"]: o["class"] for o in summary.options},
        "options": [{k: o[k] for k in ("option", "class", "from", "why")} for o in summary.options],
        # what the app logged on the discovered kernel, not on the probe kernel, about calls it did without
        "fallbacks": discover.discovered_fallbacks(app, summary.kernel),
        "measured": datetime.datetime.fromtimestamp(DiscoverySummary.path(app).stat().st_mtime,
                                                    datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        # trial kernels compiled in this run: seeded from an earlier trial's tree, or from nothing
        "compiled": [{k: t.get(k) for k in ("trial", "seed", "objects", "build_s")} for t in built if "objects" in t],
    }


def recipe_file(app: str):
    """The recipe file *app*'s discovery was run from (as its ``discover.json`` records it)."""
    from tailor.records.discovery import DiscoverySummary
    from tailor.util import PROJECT

    return PROJECT / DiscoverySummary.load(DiscoverySummary.path(app)).recipe


def earlier_rows() -> list[dict]:
    """The rows of the last discovery measurement: out/bench/discover.json, else the newest snapshot's;
    each with the date it was measured (a row from before rows carried one: its measurement's date)."""
    from tailor import figures
    from tailor.paths import bench_path
    from tailor.records.bench import load_bench

    path = bench_path("discover")
    if not path.is_file():
        path = figures.newest_snapshot() / "discover.json"
        if not path.is_file():
            return []
    data = load_bench("discover", path).dump()
    return [dict(r, measured=r.get("measured") or data["conditions"]["date"]) for r in data["rows"]]


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def main() -> int:
    from tailor import discover
    from tailor.bench import conditions
    from tailor.errors import TailorError
    from tailor.recipe import find
    from tailor.records.bench import save_bench
    from tailor.util import out_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("apps", nargs="*", help="apps (default: every app discovered so far)")
    parser.add_argument("--run", action="store_true", help="run each app's discovery first")
    parser.add_argument("--keep", action="store_true",
                        help="keep the rows of apps not measured now from the last measurement "
                             "(out/bench/discover.json, else the newest snapshot in docs/measurements/), each with "
                             "the date it was measured")
    args = parser.parse_args()
    try:
        if args.run:
            for app in args.apps:
                discover.discover(find(app))
        apps = args.apps or sorted(p.parent.name for p in (out_dir() / "discover").glob("*/discover.json"))
        if not args.apps:  # every app discovered so far: not those whose recipe file is gone since
            gone = [app for app in apps if not recipe_file(app).is_file()]
            for app in gone:
                print(f"tailor: {app}: left out, its recipe {recipe_file(app)} is gone since it was discovered",
                      file=sys.stderr)
            apps = [app for app in apps if app not in gone]
        rows = [row(app) for app in apps]
        if not rows:
            print("tailor: error: no discovery result yet; run `python -m tailor discover <app>`", file=sys.stderr)
            return 1
    except TailorError as e:
        print(f"tailor: error: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError) as e:
        print(f"tailor: error: no discovery result to read ({e}); run `python -m tailor discover <app>`",
              file=sys.stderr)
        return 1
    for r in rows:
        h = r["hand_found"]
        print(f"{r['app']}: {r['trial_kernels']} trial kernels built and booted ({r['trials']} trials, the others "
              f"resolved to a kernel tried before; {r['builds']} compiled in this run, the rest reused); trace "
              f"{r['trace_lines']} lines ({r['trace_mb']} MB); trace + map {r['trace_map_s']} s "
              f"({'met' if r['trace_map_s'] < 120 else 'missed'}: goal < 120 s); whole discovery {r['total_s']} s"
              + ("" if r["minimised"] else f"; without minimisation, trial kernels "
                 f"{'met' if r['trial_kernels'] <= 2 else 'missed'} (goal <= 2)"))
        print(f"  options: discovered {len(r['discovered'])}, hand-found {len(r['recipe'])} "
              f"({ratio(len(r['discovered']), len(r['recipe']))}); only discovered: "
              f"{', '.join(sorted(set(r['discovered']) - set(r['recipe']))) or 'none'}; only hand-found: "
              f"{', '.join(sorted(set(r['recipe']) - set(r['discovered']))) or 'none'}")
        m = r["mapping"]
        print(f"  {'minimised (' + r['search'] + ')' if r['minimised'] else 'not minimised'}: "
              f"{r['minimise_trials']} minimisation trials"
              + (f", left untried: {', '.join(r['untried'])}" if r["untried"] else "")
              + (f"; candidates by objects {len(m.get('objects', []))}, by #if lines {len(m.get('lines', []))}, "
                 f"only by lines {len(m.get('lines_only', []))}" if m else ""))
        seeded = [c for c in r["compiled"] if c["seed"]]
        fresh = [c for c in r["compiled"] if not c["seed"]]
        if r["compiled"]:
            print("  trial kernels compiled: " + "; ".join(
                f"{len(cs)} {what}, median {statistics.median(c['objects'] for c in cs):g} objects, "
                f"{statistics.median(c['build_s'] for c in cs):g} s" for cs, what in
                ((seeded, "seeded from an earlier trial's tree"), (fresh, "from nothing")) if cs))
        if h:
            print(f"  bzImage {r['bzImage']} B vs {h['bzImage']} B ({ratio(r['bzImage'], h['bzImage'])}); "
                  f"system calls compiled in {r['syscalls']} vs {h['syscalls']} ({ratio(r['syscalls'], h['syscalls'])})"
                  f"; system calls the app ran: {r['syscalls_run']}")
        else:
            print(f"  bzImage {r['bzImage']} B, system calls compiled in {r['syscalls']}; hand-found kernel not "
                  f"built (doit kernel:{r['app']})")
    now = conditions()
    if args.keep:  # the apps not measured now: those not named, or without their discovery here
        measured = {r["app"] for r in rows}
        kept = [r for r in earlier_rows() if r["app"] not in measured]
        if kept:
            print(f"kept from the last measurement: {', '.join(r['app'] + ' (' + r['measured'] + ')' for r in kept)}")
        rows = sorted(rows + kept, key=lambda r: r["app"])
    if rows:  # the goals are the ones docs/measurements.md judges the committed figures by
        from tailor.figures import DISCOVERY_MINUTES_GOAL, DISCOVERY_SIZE_SLACK, DISCOVERY_TRIALS_GOAL

        trials = statistics.median(r["trial_kernels"] for r in rows)
        wall = statistics.median(r["total_s"] for r in rows) / 60
        smaller = sum(1 for r in rows
                      if r["hand_found"] and r["bzImage"] <= r["hand_found"]["bzImage"] * DISCOVERY_SIZE_SLACK)
        print(f"median over {len(rows)} apps: {trials:g} trial kernels "
              f"({'met' if trials <= DISCOVERY_TRIALS_GOAL else 'missed'}: goal <= {DISCOVERY_TRIALS_GOAL}), "
              f"{wall:.1f} min per discovery ({'met' if wall <= DISCOVERY_MINUTES_GOAL else 'missed'}: goal <= "
              f"{DISCOVERY_MINUTES_GOAL}); bzImage no bigger than the hand-found kernel's "
              f"(+{(DISCOVERY_SIZE_SLACK - 1) * 100:.0f}%) for {smaller} of "
              f"{sum(1 for r in rows if r['hand_found'])} with a hand-found kernel built")
    save_bench("discover", {"kind": "discover", "rows": rows, "conditions": now})
    return 0


if __name__ == "__main__":
    sys.exit(main())
