"""The config stage: a recipe's base fragments and options -> ``out/config/<app>/.config``.

:func:`configure` is the plain function (tests call it directly); :func:`tasks`
yields the doit tasks ``source:<id>`` (verify and unpack a kernel source) and
``config:<app>``. A config task is up to date while the recipe's ``kernel``
section, its fragments and the source are unchanged, so an unchanged project
never parses Kconfig.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tailor import source as src
from tailor.errors import TailorError
from tailor.kconfig import (Assign, Result, load_tree, parse_fragment, recipe_assigns, resolve,
                            write_outputs)
from tailor.paths import config_dir
from tailor.recipe import BASE_CONFIGS_DIR, Recipe, with_variants
from tailor.util import code_digest, display_path, remove

ENGINE_CODE = ("config", "kconfig", "_kconfig_functions")
"""The modules whose code makes a .config (a change of theirs invalidates config tasks)."""


def config_paths(app: str) -> dict[str, Path]:
    d = config_dir(app)
    return {"config": d / ".config", "asked": d / "asked.json", "identity": d / "identity"}


def fragment_path(name: str, base_dir: Path = BASE_CONFIGS_DIR) -> Path:
    return base_dir / f"{name}.config"


def layers(recipe: Recipe, base_dir: Path = BASE_CONFIGS_DIR) -> list[list[Assign]]:
    """The recipe's assignment layers: each base fragment in order, then the recipe's options."""
    out = []
    for i, name in enumerate(recipe.kernel.base):
        path = fragment_path(name, base_dir)
        if not path.is_file():
            have = sorted(p.stem for p in base_dir.glob("*.config"))
            raise TailorError(f"{display_path(recipe.path)}: kernel.base.{i}: no fragment {name!r} "
                              f"(base_configs/{name}.config); available: {', '.join(have) or 'none'}")
        out.append(parse_fragment(path, label=f"{base_dir.name}/{name}.config"))
    out.append(recipe_assigns(recipe.kernel.options, display_path(recipe.path), dict(recipe.kernel.option_lines)))
    return out


def configure(recipe: Recipe, srctree: Path | None = None, outdir: Path | None = None,
              base_dir: Path = BASE_CONFIGS_DIR, source_id: str | None = None) -> Result:
    """Resolve and verify *recipe*'s kernel config and write it (with outcomes and identity) to *outdir*.

    *srctree* defaults to the recipe's pinned source, verified and unpacked
    on first use. Nothing is written when resolution fails.
    """
    the_layers = layers(recipe, base_dir)
    if srctree is None:
        ref = src.recipe_ref(recipe)
        srctree = src.prepare(ref)
        source_id = ref.id
    tree = load_tree(srctree)
    result = resolve(tree, the_layers, recipe.kernel.resolve, source_id=source_id or "")
    write_outputs(result, outdir or config_dir(recipe.id), extra={
        "app": recipe.id, "resolve": recipe.kernel.resolve, "base": list(recipe.kernel.base),
        "kernel_version": tree.version,
    })
    msg = f"[config:{recipe.id}] {result.enabled()} options on, identity {result.identity[:16]}"
    if result.added:
        msg += f"; resolve: deps added {len(result.added)}: {', '.join(result.added)}"
    print(msg, file=sys.stderr)
    return result


def tasks(recipes: list[Recipe], action):
    """doit tasks ``config:<app>``, one per recipe.

    *action* wraps a plain function into a doit action that reports a
    TailorError as one line (see :func:`tailor.tasks.action`).
    """
    from doit.tools import config_changed

    for r in with_variants(recipes):
        ref = src.recipe_ref(r)
        yield {
            "basename": "config", "name": r.id,
            "doc": f"resolve and verify the kernel .config of {r.id} ({', '.join(r.kernel.base) or 'no base'}"
                   f" + {len(r.kernel.options)} options)",
            "actions": [action(configure, r)],
            "file_dep": [str(fragment_path(b)) for b in r.kernel.base if fragment_path(b).exists()]
                        + [str(src.stamp_path(ref))],
            "targets": [str(p) for p in config_paths(r.id).values()],
            "clean": [(remove, [config_dir(r.id)])],
            "uptodate": [config_changed({"kernel": r.digests["kernel"], "engine": code_digest(*ENGINE_CODE)})],
            "verbosity": 2,
        }
