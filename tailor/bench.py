"""What the benchmarks and the report share: the apps and kernel variants measured, the bench paths,
the conditions of a measurement, and the small statistics of a figure.

:mod:`tailor.measure` (which takes the figures) and :mod:`tailor.report`
(which shows them) both import this module and not each other.

Variants of an app (:func:`variants`): ``specific`` (the recipe's own
kernel), ``general`` (lupine-base + lupine-general) and each built baseline
(``microvm``, ``firecracker``, ``kata``) booting the same root image. Anything not
built is recorded as not measured with the reason, never as a failure.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path

from tailor import baseline, paths, qemu, records
from tailor.errors import TailorError
from tailor.paths import bench_dir, bench_path
from tailor.recipe import RECIPES_DIR, Recipe, general_variant, load
from tailor.toolchain import first_line

__all__ = ["REPORT_APPS", "KERNEL_LINES", "line_apps", "bench_dir", "bench_path", "say", "spread", "conditions", "Variant", "load_apps",
           "baseline_names", "variants", "report_variants", "kernel_label", "result_row"]

REPORT_APPS = ("hello", "redis", "nginx")
"""The apps the report compares (Lupine's hello-world, redis and nginx)."""

KERNEL_LINES = {"linux-source-6.12": "612"}
"""Other kernel lines the report compares with the default one: a report app ``<app>`` has its copy
on that line in ``recipes/<app>-<suffix>.yaml`` (hello-612 is hello on linux-source-6.12)."""


def line_apps(apps: tuple[str, ...] = REPORT_APPS) -> dict[str, tuple[str, str]]:
    """Each other-line copy of *apps* that has a recipe: ``{copy: (app, package)}``."""
    return {f"{app}-{suffix}": (app, package) for package, suffix in KERNEL_LINES.items() for app in apps
            if (RECIPES_DIR / f"{app}-{suffix}.yaml").is_file()}


def say(text: str) -> None:
    """Progress of a measurement on stdout, flushed at once (benchmarks take minutes)."""
    print(text, flush=True)


def spread(samples: list[float]) -> dict:
    """``{"median", "min", "max", "n", "samples"}`` of *samples* (rounded to ms / 3 decimals)."""
    if not samples:
        return {"median": None, "min": None, "max": None, "n": 0, "samples": []}
    return {"median": round(statistics.median(samples), 3), "min": round(min(samples), 3),
            "max": round(max(samples), 3), "n": len(samples), "samples": [round(s, 3) for s in samples]}


# --------------------------------------------------------------------------
# Conditions of a measurement


def _first_line(cmd: list[str]) -> str:
    """The first line *cmd* prints, or ``not found``."""
    return first_line(cmd) or "not found"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def kernel_source_label() -> str:
    """The pinned kernel source, e.g. ``linux-source-6.1 6.1.192-2``."""
    try:
        return baseline.source_ref().label
    except TailorError:
        return "unknown"


def conditions(accel: str | None = None) -> dict:
    """Machine, accelerator, qemu, gcc and kernel versions, load and date of a measurement."""
    try:
        chosen = accel or qemu.detect_accel()
    except TailorError:
        chosen = "unknown"
    return {
        "machine": f"{platform.machine()}, {_cpu_model()}, {os.cpu_count()} cores, {_mem_total_gib()} GiB",
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo \"$PRETTY_NAME\""]),
        "accel": chosen,
        "qemu": _first_line([qemu.QEMU, "--version"]),
        "gcc": _first_line(["gcc", "--version"]),
        "kernel": kernel_source_label(),
        "load": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# --------------------------------------------------------------------------
# What to measure


@dataclass(frozen=True)
class Variant:
    """One app on one kernel: ``variant`` is specific, general or a baseline's name.

    ``kernel`` is the kernel's directory info (``identity``, ``bzImage``,
    ``vmlinux``, ``dir``), or None with ``missing`` saying why.
    """

    app: str
    variant: str
    recipe: Recipe | None
    kernel: dict | None
    image: Path | None
    missing: str = ""

    @property
    def key(self) -> str:
        return f"{self.app}/{self.variant}"


def load_apps(names: tuple[str, ...] = REPORT_APPS) -> dict[str, Recipe | str]:
    """Each name's recipe, or the reason it cannot be measured (no recipe, invalid recipe)."""
    out: dict[str, Recipe | str] = {}
    for name in names:
        path = RECIPES_DIR / f"{name}.yaml"
        if not path.is_file():
            out[name] = f"no recipe recipes/{name}.yaml"
            continue
        try:
            out[name] = load(path)
        except TailorError as e:
            out[name] = f"invalid recipe: {str(e).splitlines()[0]}"
    return out


def _pointer_kernel(app_id: str) -> tuple[dict | None, str]:
    """The kernel app *app_id* uses (identity, bzImage, vmlinux, dir), or None and what to run."""
    path = paths.kernel_pointer(app_id)
    if not path.is_file():
        return None, f"kernel not built; run `doit build:{app_id}`"
    info = records.KernelPointer.load(path)
    if not info.files.bzimage.is_file():
        return None, f"kernel of {app_id} is gone; run `doit build:{app_id}`"
    return {"identity": info.identity, "bzImage": info.bzimage, "vmlinux": info.vmlinux, "dir": info.dir}, ""


def baseline_names() -> list[str]:
    """The baselines tailor knows (built or not)."""
    return list(baseline.BASELINES)


def variants(apps: dict[str, Recipe | str] | None = None, baselines: list[str] | None = None) -> list[Variant]:
    """Every (app, kernel variant) pair: specific, general, then each baseline, per app."""
    apps = load_apps() if apps is None else apps
    baselines = baseline_names() if baselines is None else baselines
    out = []
    for name, recipe in apps.items():
        if isinstance(recipe, str):
            for v in ["specific", "general"] + baselines:
                out.append(Variant(name, v, None, None, None, recipe))
            continue
        image = paths.rootfs_image(recipe.name, recipe.rootfs.format)
        image_missing = "" if image.is_file() else f"root image not built; run `doit rootfs:{name}`"
        for v in ["specific"] + (["general"] if recipe.general else []) + baselines:
            if v == "specific":
                r, (k, why) = recipe, _pointer_kernel(recipe.id)
            elif v == "general":
                r = general_variant(recipe)
                k, why = _pointer_kernel(r.id)
            else:
                r = recipe
                info = baseline.load(v)
                k = None if info is None else {"identity": info.identity, "bzImage": info.bzimage,
                                               "vmlinux": info.vmlinux, "dir": info.dir}
                why = "" if info else (f"baseline not built; run `doit baseline:{v}`" if baseline.available(v)
                                       else "baseline input not present on this machine")
            out.append(Variant(name, v, r, k, image if image.is_file() else None, why or image_missing))
    return out


def report_variants(apps: dict[str, Recipe | str] | None = None) -> list[Variant]:
    """What a benchmark measures: :func:`variants` of *apps*; by default (None) of the report's apps, and
    then their copies on the other kernel lines (:func:`line_apps`) on their own kernel only."""
    if apps is not None:
        return variants(apps)
    return variants() + variants(load_apps(tuple(line_apps())), baselines=[])


def kernel_label(recipe: Recipe | None, variant: str) -> str:
    """How the report names a kernel: ``lupine-base (hello)``, ``redis``, ``general``, ``microvm``."""
    if variant != "specific":
        return variant
    if recipe is not None and not recipe.kernel.options and tuple(recipe.kernel.base) == ("lupine-base",):
        return f"lupine-base ({recipe.name})"
    return recipe.name if recipe is not None else "?"


def result_row(v: Variant, kernel: bool = True) -> dict:
    """The fields that name a variant in every result row (and the kernel identity it ran)."""
    row = {"app": v.app, "variant": v.variant, "label": kernel_label(v.recipe, v.variant)}
    if kernel:
        row["kernel"] = v.kernel["identity"] if v.kernel else None
    return row
