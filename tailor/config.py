"""The config stage: a recipe's base fragments and options -> ``out/config/<app>/.config``.

:func:`configure` is the plain function (tests call it directly; the task ``config:<app>`` is
in :mod:`tailor.tasks.build`); :func:`explain` says why a symbol has its value in a recipe's
config (``doit explain <app> <SYMBOL>``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tailor import paths
from tailor import source as src
from tailor.errors import TailorError
from tailor.kconfig import explain as explain_symbol
from tailor.kconfig import (Assign, Result, load_tree, parse_fragment, recipe_assigns, resolve,
                            write_outputs)
from tailor.paths import config_dir
from tailor.recipe import BASE_CONFIGS_DIR, Recipe, base_configs_dir, find
from tailor.util import display_path

config_paths = paths.config_files


def fragment_path(name: str, base_dir: Path = BASE_CONFIGS_DIR) -> Path:
    return base_dir / f"{name}.config"


def layers(recipe: Recipe, base_dir: Path | None = None) -> list[list[Assign]]:
    """The recipe's assignment layers: each base fragment in order (from *base_dir*, default the
    recipe's architecture's, :func:`~tailor.recipe.base_configs_dir`), then the recipe's options."""
    base_dir = base_configs_dir(recipe.arch) if base_dir is None else base_dir
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
              base_dir: Path | None = None, source_id: str | None = None) -> Result:
    """Resolve and verify *recipe*'s kernel config and write it (with outcomes and identity) to *outdir*.

    *srctree* defaults to the recipe's pinned source, verified and unpacked
    on first use. Nothing is written when resolution fails.
    """
    the_layers = layers(recipe, base_dir)
    if srctree is None:
        ref = src.recipe_ref(recipe)
        srctree = src.prepare(ref)
        source_id = ref.id
    tree = load_tree(srctree, recipe.arch)
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


def explain(app: str, symbol: str) -> None:
    """Print why *symbol* has its value in *app*'s resolved config."""
    recipe = find(app)
    tree = load_tree(src.prepare(src.recipe_ref(recipe)), recipe.arch)
    print(explain_symbol(tree, symbol, layers(recipe), recipe.kernel.resolve))
