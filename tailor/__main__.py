"""Command line: ``python -m tailor <command>``; the everyday interface is doit (see dodo.py).

Commands::

    check [RECIPE ...]          validate recipes (all by default)
    config APP                  resolve and verify APP's kernel config (like doit config:APP)
    kernel-source APP           verify, unpack and patch APP's kernel source (like doit source:<id>)
    rootfs APP                  build APP's root filesystem image (like doit rootfs:APP)
    explain APP SYMBOL          why SYMBOL has its value in APP's config
    pin-source [PACKAGE[=VER]]  pin a linux-source version from Debian's archive (default: newest)
    pin-image APP               resolve APP's rootfs.image now and record its digest in images.lock
    run APP [-p [ADDR:]HOST:GUEST] [-m MiB] [--kernel general] [--name N] [--detach] [--keep PATH]
            [--from-snapshot [--no-reseed]]
    snapshot APP [--settle S]   save APP's ready VM for run --from-snapshot (like doit snapshot:APP)
    slim APP [--write] [--budget N]
                                trace the files APP uses, verify a root of only those (like doit slim:APP)
                                boot APP's built VM for use; ps, stop NAME, logs NAME for detached VMs
    discover APP [--write] [--no-minimise] [--budget N] [--search probdd|ddmin]
                                discover APP's kernel options, minimised (like doit discover:APP)
    derive-probe REFERENCE      derive base_configs/probe.config from a reference .config
    fits APP --config PATH [--from-recipe]
                                does that .config have what APP needs? (exit 0 fits, 3 does not, 1 error)
    snapshot-measurements       copy out/bench/*.json and the report into docs/measurements/<date>/, then docs
    docs [--check]              render the docs' measured figures from the newest docs/measurements/<date>/
"""

from __future__ import annotations

import argparse
import sys

from tailor.errors import TailorError
from tailor.util import display_path, os_error

# Each command imports its stage inside its function: `python -m tailor --help` takes 0.05 s that way and
# 0.22 s with every stage imported here (most of it tailor.recipe, which pulls in yaml and tailor.image).


def _check(args) -> int:
    from tailor.recipe import RECIPES_DIR, find, load

    paths = args.recipes or sorted(str(p) for p in RECIPES_DIR.glob("*.yaml"))
    bad = 0
    for p in paths:
        try:
            r = load(p) if p.endswith((".yaml", ".yml")) else find(p)
            print(f"ok    {r.name}: {r.description}")
        except TailorError as e:
            bad += 1
            print(f"error {e}", file=sys.stderr)
    return 1 if bad else 0


def _recipe(app: str):
    """A recipe by name (recipes/<app>.yaml) or by file (anything ending in .yaml/.yml)."""
    from tailor.recipe import find, load

    return load(app) if app.endswith((".yaml", ".yml")) else find(app)


def _config(args) -> int:
    from tailor.config import configure

    configure(_recipe(args.app))
    return 0


def _kernel_source(args) -> int:
    from tailor import source

    tree = source.prepare(source.recipe_ref(_recipe(args.app)))
    print(display_path(tree))
    return 0


def _rootfs(args) -> int:
    from tailor.rootfs import build

    build(_recipe(args.app))
    return 0


def _explain(args) -> int:
    from tailor.config import explain

    explain(args.app, args.symbol)
    return 0


def _pin(args) -> int:
    from tailor.source import LOCK_FILE, pin

    entry = pin(args.package)
    package = args.package.partition("=")[0]
    print(f"pinned {package} {entry['version']} in {LOCK_FILE.name}: .deb sha256 {entry['deb_sha256']}, "
          f"tarball sha256 {entry['sha256']}")
    return 0


def _pin_image(args) -> int:
    from tailor import image

    recipe = _recipe(args.app)
    origin = display_path(recipe.path)
    if not recipe.rootfs.image:
        raise TailorError(f"{origin}: rootfs.image: the recipe has no image to pin")
    ref = image.parse_reference(recipe.rootfs.image)
    old = image.locked_digest(ref)
    digest = image.pin(ref, origin)
    moved = "unchanged" if old == digest else f"was {old or 'unpinned'}"
    print(f"pinned {ref.unpinned} at {digest} in {image.lockfile.lock_path().name} ({moved})")
    return 0


def _discover(args) -> int:
    from tailor.discover import DEFAULT_BUDGET, discover, write_recipe

    recipe = _recipe(args.app)
    budget = DEFAULT_BUDGET if args.budget is None else args.budget
    summary = discover(recipe, minimise_set=not args.no_minimise, budget=budget, jobs=args.jobs,
                       search=args.search)
    if args.write:
        path = write_recipe(recipe, summary)
        print(f"wrote {len(summary['options'])} options with their reasons to {display_path(path)}")
    return 0


def _derive_probe(args) -> int:
    from pathlib import Path

    from tailor import config as cfg
    from tailor import probe, source

    recipe = _recipe(args.recipe)
    srctree = source.prepare(source.recipe_ref(recipe))
    opts = probe.derive(Path(args.reference), srctree, cfg.layers(recipe)[:-1])
    path = probe.write_fragment(opts, Path(args.reference))
    print(f"wrote {len(opts)} app-facing options to base_configs/{path.name}")
    return 0


def _fits(args) -> int:
    from pathlib import Path

    from tailor import fits

    if args.from_recipe:
        needs = fits.from_recipe(_recipe(args.app))
    else:  # the discovery record is by recipe name; a recipe file is loaded only to learn its name
        needs = fits.needs(_recipe(args.app).name if args.app.endswith((".yaml", ".yml")) else args.app)
    missing = fits.check(needs, fits.read_config(Path(args.config)))
    if not needs.options:
        print(f"tailor: {needs.origin}: no options to check", file=sys.stderr)
    print(fits.format_report(needs.app, display_path(args.config), missing))
    return fits.EXIT_DOES_NOT_FIT if missing else 0


def _run(args) -> int:
    from tailor import run

    forwards = [run.parse_forward(spec) for spec in args.publish]
    p = run.plan(_recipe(args.app), name=args.name, memory=args.memory, forwards=forwards,
                 general=args.kernel == "general", keep=args.keep, from_snapshot=args.from_snapshot)
    p.reseed = not args.no_reseed
    return run.start(p, detach=args.detach)


def _snapshot(args) -> int:
    from tailor import snapshot

    recipe = _recipe(args.app)
    snapshot.take_action(recipe, settle_s=args.settle)
    return 0


def _slim(args) -> int:
    from tailor import slim

    slim.make(_recipe(args.app), budget=args.budget, write=args.write)
    return 0


def _snapshot_measurements(args) -> int:
    from tailor import figures

    dest, left_out = figures.take_snapshot()
    for why in left_out:
        print(f"tailor: left out {why}")
    print(f"tailor: measurements copied to {display_path(dest)}")
    figures.write_docs(dest)
    return 0


def _docs(args) -> int:
    from tailor import figures

    if not args.check:
        figures.write_docs()
        return 0
    stale = figures.stale_pages()
    for page in stale:
        print(f"tailor: {page}: its figures differ from the newest snapshot; run `python -m tailor docs`",
              file=sys.stderr)
    return 1 if stale else 0


def _ps(args) -> int:
    from tailor import run

    vms = run.list_vms()
    print(run.ps_table(vms) if vms else "no VMs (python -m tailor run <app> --detach starts one)")
    return 0


def _stop(args) -> int:
    from tailor import run

    for name in args.names:
        was = run.stop(name)
        print(f"tailor: {name} {'stopped' if was else 'had already ended; cleaned up'}")
    return 0


def _logs(args) -> int:
    from tailor import run

    sys.stdout.write(run.logs(args.name))
    return 0


APP_HELP = "a recipe name, or a recipe file"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tailor",
                                     description="tailor: per-app microVM kernels and root filesystems")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, fn, help: str, app: bool = True) -> argparse.ArgumentParser:
        """A subcommand running *fn*; with *app*, its first argument is the recipe."""
        p = sub.add_parser(name, help=help)
        if app:
            p.add_argument("app", help=APP_HELP)
        p.set_defaults(fn=fn)
        return p

    p = command("check", _check, "validate recipes", app=False)
    p.add_argument("recipes", nargs="*", help="recipe names or files (default: all in recipes/)")
    command("config", _config, "resolve and verify an app's kernel config")
    command("kernel-source", _kernel_source, "verify, unpack and patch an app's kernel source")
    command("rootfs", _rootfs, "build an app's root filesystem image")
    p = command("explain", _explain, "why a symbol has its value in an app's config", app=False)
    p.add_argument("app")
    p.add_argument("symbol")
    p = command("pin-source", _pin, "pin a Debian kernel source version (downloads it, installs nothing)", app=False)
    p.add_argument("package", nargs="?", default="linux-source-6.1", metavar="PACKAGE[=VERSION]",
                   help="the package and optionally its exact version (default: linux-source-6.1 at the "
                        "newest version Debian's archive offers)")
    command("pin-image", _pin_image, "resolve an app's rootfs.image now and record its digest in images.lock")
    p = command("discover", _discover, "discover an app's kernel options (trace, map, verify by boot test)")
    p.add_argument("--write", action="store_true", help="add the options to the recipe, reasons as comments")
    p.add_argument("--no-minimise", action="store_true",
                   help="keep the set the trace found (default: then drop, by delta debugging, every option the "
                        "boot test and its exercise do not need)")
    p.add_argument("--search", choices=("probdd", "ddmin"), default="probdd",
                   help="how to minimise: probdd (default) drops the options least likely needed by what the trace "
                        "showed first, in sets sized by those odds; ddmin halves groups by class, no odds")
    p.add_argument("--budget", type=int, default=None, metavar="N",
                   help="minimise with at most N trial kernels and list what was left untried (default 40)")
    p.add_argument("--jobs", type=int, default=None, help="make -j for the kernel builds (default: cores)")
    p = command("derive-probe", _derive_probe, "derive base_configs/probe.config from a reference config", app=False)
    p.add_argument("reference", help="a full .config to take the app-facing options from (Firecracker's)")
    p.add_argument("--recipe", default="hello", help="whose base fragments to compare with (default hello)")
    p = command("fits", _fits, "check a kernel .config against what an app needs (its discovery record)")
    p.description = ("Does a kernel .config have every option APP needs, set to y? The needs are APP's "
                     "discovery record (out/discover/APP/, from doit discover:APP) or, with --from-recipe, "
                     "the recipe's own kernel.options. One line per missing option says what needs it.")
    p.epilog = "exit status: 0 the app fits, 3 it does not (options missing), 1 an error, 2 wrong arguments"
    p.add_argument("--config", required=True, metavar="PATH", help="the kernel .config to check")
    p.add_argument("--from-recipe", action="store_true",
                   help="check the recipe's kernel.options (set to y) instead of the discovery record")
    p = command("run", _run, "boot an app's built VM for use (foreground, or --detach)")
    p.add_argument("-p", "--publish", action="append", default=[], metavar="[ADDR:]HOST:GUEST",
                   help="forward a host TCP port to the guest (repeatable; ADDR defaults to 127.0.0.1)")
    p.add_argument("-m", "--memory", type=int, default=None, metavar="MiB", help="guest memory (default: test.memory)")
    p.add_argument("--kernel", choices=("own", "general"), default="own",
                   help="the app's own kernel (default) or the shared general kernel")
    p.add_argument("--name", default=None, help="the VM's name for ps/stop/logs (default: the app's name)")
    p.add_argument("-d", "--detach", action="store_true", help="keep running in the background; console in a log")
    p.add_argument("--keep", default=None, metavar="PATH",
                   help="keep this run's copy-on-write disk layer (qcow2 over the built ext2 image) at PATH")
    p.add_argument("--from-snapshot", action="store_true",
                   help="start from the snapshot taken once the app was ready (doit snapshot:<app>) instead of booting")
    p.add_argument("--no-reseed", action="store_true",
                   help="restore without reseeding the guest's random pool (shows why the reseed exists: "
                        "restores then repeat the snapshot's random bytes)")
    p = command("snapshot", _snapshot, "boot an app, wait until it is ready and save the VM (like doit snapshot:APP)")
    p.add_argument("--settle", type=float, default=0.0, metavar="S",
                   help="let the app run S seconds more, then probe it again, before saving it (default 0)")
    p = command("slim", _slim, "trace which files an app uses in its boot test and verify a root of only those "
                               "(like doit slim:APP)")
    p.add_argument("--write", action="store_true",
                   help="also write the kept files into the recipe as rootfs.files with slim: true")
    p.add_argument("--budget", type=int, default=12, metavar="N",
                   help="trial images the add-back may build when the traced list alone fails (default 12)")
    command("snapshot-measurements", _snapshot_measurements, "copy out/bench/*.json and the report into "
            "docs/measurements/<date>/ and render the docs' figures from it", app=False)
    p = command("docs", _docs, "render the docs' measured figures from the newest docs/measurements/<date>/",
                app=False)
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when a page's figures differ")
    command("ps", _ps, "list the VMs started with run", app=False)
    p = command("stop", _stop, "stop VMs started with run --detach (QMP quit, then signals) and clean up", app=False)
    p.add_argument("names", nargs="+", metavar="NAME")
    p = command("logs", _logs, "print the console of a VM started with run", app=False)
    p.add_argument("name", metavar="NAME")
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except TailorError as e:
        print(f"tailor: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a disk full or unwritable out/ that no stage turned into a TailorError
        print(f"tailor: error: {os_error(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tailor: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
