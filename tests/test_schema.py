"""The recipe schema table (tailor/schema.py): the README, the validator and the model agree with it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tailor import recipe, schema
from tailor.errors import TailorError

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_key_reference_is_the_tables():
    text = schema.KEYS_DOC.read_text()
    assert schema.README_START in text and schema.README_END in text
    assert schema.readme_with_key_reference(text) == text, \
        "docs/recipes.md's recipe key reference differs from tailor/schema.py; run `python -m tailor.schema`"


def test_the_models_defaults_are_the_tables(tmp_path):
    r = recipe.parse("app: {command: /bin/true}\n", tmp_path / "minimal.yaml")
    got = {
        "description": r.description, "general": r.general,
        "kernel.source": r.kernel.source.kind, "kernel.source.package": r.kernel.source.package,
        "kernel.base": list(r.kernel.base), "kernel.options": dict(r.kernel.options),
        "kernel.resolve": r.kernel.resolve, "kernel.patches": list(r.kernel.patches), "kernel.cmdline": r.kernel.cmdline,
        "rootfs.packages": list(r.rootfs.packages), "rootfs.files": list(r.rootfs.files),
        "rootfs.format": r.rootfs.format, "rootfs.slim": r.rootfs.slim, "rootfs.users": list(r.rootfs.users),
        "rootfs.build": list(r.rootfs.build), "app.args": list(r.app.args), "app.env": dict(r.app.env),
        "app.workdir": r.app.workdir, "app.network": r.app.network, "app.setup": list(r.app.setup),
        "app.services": list(r.app.services), "test.ready": r.test.ready, "test.probe": {"type": r.test.probe.type},
        "test.probe.path": r.test.probe.path, "test.probe.status": r.test.probe.status,
        "test.memory": r.test.memory, "test.timeout": r.test.timeout,
    }
    assert got == {path: schema.default(path) for path in got}
    # the dataclasses' own defaults (used when code builds a model by hand) say the same
    fields = {f"{section}.{f.name}": f.default for section, cls in (("kernel", recipe.KernelSpec),
              ("rootfs", recipe.RootfsSpec), ("app", recipe.AppSpec), ("test", recipe.TestSpec),
              ("test.probe", recipe.Probe), ("kernel.source", recipe.Source), ("app.setup[]", recipe.Step))
              for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    for path, value in fields.items():
        if path in schema.KEY and schema.KEY[path].default is not schema.NO_DEFAULT:
            want = schema.KEY[path].default
            assert (type(want)(value) if isinstance(want, (list, dict)) else value) == want, path


@pytest.mark.parametrize("parent", sorted({k.parent for k in schema.KEYS if not k.parent.endswith("[]")}))
def test_an_unknown_key_lists_the_tables_keys(tmp_path, parent):
    data = {"app": {"command": "/bin/true"}}
    where = data
    for part in filter(None, parent.split(".")):
        where = where.setdefault(part, {"type": "none"} if part == "probe" else {})
    where["zzz_unknown"] = 1
    import yaml

    with pytest.raises(TailorError) as e:
        recipe.parse(yaml.safe_dump(data), tmp_path / "r.yaml")
    assert f"allowed keys: {', '.join(schema.children(parent))}" in str(e.value), str(e.value)
