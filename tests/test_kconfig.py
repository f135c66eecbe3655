"""The Kconfig engine: compat layer, caching, merging, verification, resolve: deps, explain, identity.

Engine behaviour is tested on a tiny fake Kconfig tree where the real one is
not the point, and on the real Linux 6.1 tree for the recipes and fragments
the project ships.
"""

import re
from pathlib import Path

import pytest

from tailor import config, kconfig, kernel, recipe
from tailor.errors import TailorError
from tailor.kconfig import Assign, ResolveError

A = Assign


def layer(origin, **values):
    return [A(k, v, f"{origin}:{i + 1}") for i, (k, v) in enumerate(values.items())]


# --- compatibility layer ----------------------------------------------------


def test_compat_rewrites_bare_modules_only():
    text = "config MODULES\n\tbool \"m\"\n\tmodules\n\thelp\n\t  modules are nice\nconfig X\n\tdepends on modules\n"
    out = kconfig.compat_text(text)
    assert "\toption modules\n" in out
    assert "\t  modules are nice\n" in out  # help text untouched
    assert "depends on modules" in out
    assert out.count("\n") == text.count("\n")  # line numbers preserved


def test_plain_kconfiglib_fails_and_compat_parses(fake_tree):
    import kconfiglib

    with kconfig._environ(kconfig.kbuild_env(fake_tree)):
        with pytest.raises(kconfiglib.KconfigError, match="modules"):
            kconfiglib.Kconfig(str(fake_tree / "Kconfig"), warn=False)
    tree = kconfig.load_tree(fake_tree)
    assert tree.kconf.modules.name == "MODULES"
    assert "Fake x86_64 9.9.0-fake" in tree.header()


def test_fake_tree_defines_every_option_its_files_name(fake_tree):
    """tests/fakelinux is one kernel: the options its Makefiles and C files test are in its Kconfig."""
    named = set()
    for path in fake_tree.rglob("*"):
        if path.name in ("Makefile", "Kbuild") or path.suffix in (".c", ".h"):
            named |= set(re.findall(r"\bCONFIG_([A-Z0-9_]+)", path.read_text()))
    assert {"NET", "INET", "CGROUPS", "MEMCG", "SECURITY", "PROC_FS", "X86_VSYSCALL_EMULATION"} <= named
    assert sorted(named - set(kconfig.load_tree(fake_tree).names)) == []


def test_tree_is_parsed_once_per_process(fake_tree):
    before = kconfig.PARSE_COUNT
    t1 = kconfig.load_tree(fake_tree)
    t2 = kconfig.load_tree(str(fake_tree) + "/")
    assert t1 is t2
    assert kconfig.PARSE_COUNT == before + 1


def test_not_a_kernel_tree(tmp_path):
    with pytest.raises(TailorError, match="not a kernel source tree"):
        kconfig.load_tree(tmp_path)


# --- fragments ----------------------------------------------------------------


def test_parse_fragment(tmp_path):
    f = tmp_path / "x.config"
    f.write_text('# header\nCONFIG_NET=y\n# CONFIG_INET is not set\nCONFIG_HOSTNAME="a \\"b\\""\nCONFIG_LOG_SHIFT=14\n\n')
    got = [(a.name, a.value, a.origin) for a in kconfig.parse_fragment(f)]
    assert got == [("NET", "y", "x.config:2"), ("INET", "n", "x.config:3"),
                   ("HOSTNAME", 'a "b"', "x.config:4"), ("LOG_SHIFT", "14", "x.config:5")]


@pytest.mark.parametrize("text,message", [
    ("CONFIG_NET=m\n", "x.config:1: CONFIG_NET=m: tailor kernels have no modules"),
    ("NET=y\n", "x.config:1: not a Kconfig line"),
    ("CONFIG_NET=y\nCONFIG_NET=n\n", "x.config:2: CONFIG_NET=n conflicts with CONFIG_NET=y on line 1"),
    ('CONFIG_HOSTNAME="abc\n', "x.config:1: unterminated string value"),
])
def test_bad_fragment_lines(tmp_path, text, message):
    f = tmp_path / "x.config"
    f.write_text(text)
    with pytest.raises(TailorError) as e:
        kconfig.parse_fragment(f)
    assert str(e.value).startswith(message)


def test_missing_fragment(tmp_path):
    with pytest.raises(TailorError, match="no such fragment"):
        kconfig.parse_fragment(tmp_path / "nope.config", "base_configs/nope.config")


# --- resolution on the fake tree ---------------------------------------------


def test_starts_from_allno_and_allnoconfig_y(fake_tree):
    tree = kconfig.load_tree(fake_tree)
    res = kconfig.resolve(tree, [layer("f", NET="y")])
    assert "CONFIG_NET=y" in res.config
    assert "# CONFIG_INET is not set" in res.config
    assert "CONFIG_TINY=y" in res.config  # allnoconfig_y, like make allnoconfig
    assert "CONFIG_GZIP=y" in res.config  # choice default
    assert "CONFIG_LOG_SHIFT=17" in res.config


def test_later_layers_win(fake_tree):
    tree = kconfig.load_tree(fake_tree)
    res = kconfig.resolve(tree, [layer("a", NET="y", INET="y", LOG_SHIFT="14"),
                                 layer("b", INET="n", LOG_SHIFT="20")])
    assert "# CONFIG_INET is not set" in res.config
    assert "CONFIG_LOG_SHIFT=20" in res.config
    inet = next(o for o in res.outcomes if o.name == "INET")
    assert (inet.asked, inet.origin, inet.ok) == ("n", "b:1", True)


def test_dropped_option_names_unmet_dependency(fake_tree):
    tree = kconfig.load_tree(fake_tree)
    with pytest.raises(ResolveError) as e:
        kconfig.resolve(tree, [layer("r.yaml", VIRTIO_NET="y", INET="y")])
    msg = str(e.value)
    assert msg.splitlines()[0].startswith("2 asked options would be dropped by Kconfig (resolve: strict): ")
    assert "r.yaml:1: CONFIG_VIRTIO_NET: asked y, got n: depends on VIRTIO && NETDEVICES (VIRTIO=n, NETDEVICES=n)" in msg
    assert "r.yaml:2: CONFIG_INET: asked y, got n: depends on NET (NET=n)" in msg
    assert {o.name for o in e.value.outcomes if not o.ok} == {"VIRTIO_NET", "INET"}


def test_forced_symbol_names_its_selector(fake_tree):
    tree = kconfig.load_tree(fake_tree)
    with pytest.raises(ResolveError, match=r"CONFIG_VIRTIO: asked n, got y: selected by VIRTIO_MMIO"):
        kconfig.resolve(tree, [layer("r", VIRTIO_MMIO="y", VIRTIO="n")])


def test_int_out_of_range_is_reported(fake_tree):
    tree = kconfig.load_tree(fake_tree)
    with pytest.raises(ResolveError, match=r"LOG_SHIFT: asked 40, got 17: the value must be in the range 12..25"):
        kconfig.resolve(tree, [layer("r", LOG_SHIFT="40")])


def test_resolve_deps_adds_smallest_set(fake_tree):
    tree = kconfig.load_tree(fake_tree)
    res = kconfig.resolve(tree, [layer("r", VIRTIO_NET="y")], mode="deps")
    # VIRTIO has no prompt: the only selector VIRTIO_MMIO is turned on; NET for NETDEVICES.
    assert set(res.added) == {"NET", "NETDEVICES", "VIRTIO_MMIO"}
    assert "CONFIG_VIRTIO_NET=y" in res.config
    assert "# CONFIG_INET is not set" in res.config  # nothing beyond what is needed


def test_unknown_symbol_suggests(fake_tree):
    tree = kconfig.load_tree(fake_tree)
    with pytest.raises(TailorError) as e:
        kconfig.resolve(tree, [layer("r.yaml", NETDEVICE="y")])
    assert str(e.value) == "r.yaml:1: NETDEVICE: no such symbol in Linux 9.9.0-fake; did you mean NETDEVICES?"


@pytest.mark.parametrize("sym,value,message", [
    ("NET", "3", "CONFIG_NET is a bool; its value must be y or n, not '3'"),
    ("LOG_SHIFT", "y", "CONFIG_LOG_SHIFT is an int; 'y' is not a whole number"),
    ("HOSTNAME", "y", 'CONFIG_HOSTNAME is a string; quote the value ("y")'),
])
def test_value_types(fake_tree, sym, value, message):
    tree = kconfig.load_tree(fake_tree)
    with pytest.raises(TailorError, match=message.replace("(", r"\(").replace(")", r"\)")):
        kconfig.resolve(tree, [[A(sym, value, "r")]])


def test_choice_members(fake_tree):
    tree = kconfig.load_tree(fake_tree)
    res = kconfig.resolve(tree, [layer("r", XZ="y")])
    assert "CONFIG_XZ=y" in res.config and "# CONFIG_GZIP is not set" in res.config
    with pytest.raises(ResolveError, match="XZ is selected in choice"):
        kconfig.resolve(tree, [[A("GZIP", "y", "a")], [A("XZ", "y", "b")]])


def test_identity_ignores_comments_and_includes_source(fake_tree):
    tree = kconfig.load_tree(fake_tree)
    r1 = kconfig.resolve(tree, [layer("a", NET="y")], source_id="s1")
    r2 = kconfig.resolve(tree, [layer("b", NET="y", INET="n")], source_id="s1")
    r3 = kconfig.resolve(tree, [layer("a", NET="y")], source_id="s2")
    r4 = kconfig.resolve(tree, [layer("a", NET="y", INET="y")], source_id="s1")
    assert r1.identity == r2.identity
    assert r1.identity != r3.identity
    assert r1.identity != r4.identity
    assert kconfig.config_identity("# a\nCONFIG_X=y\n") == kconfig.config_identity("# b\nCONFIG_X=y\n")


def test_explain_fake(fake_tree):
    tree = kconfig.load_tree(fake_tree)
    text = kconfig.explain(tree, "CONFIG_VIRTIO", [layer("r.yaml", VIRTIO_MMIO="y")])
    assert text.splitlines()[0] == "CONFIG_VIRTIO = y  [bool]"
    assert "prompt: none" in text
    assert "selected by: VIRTIO_MMIO" in text
    text = kconfig.explain(tree, "INET", [layer("r.yaml", INET="y")])
    assert "asked: y by r.yaml:1 -> NOT MET: depends on NET (NET=n)" in text


def test_write_outputs_atomic(fake_tree, tmp_path):
    tree = kconfig.load_tree(fake_tree)
    res = kconfig.resolve(tree, [layer("a", NET="y")], source_id="s")
    paths = kconfig.write_outputs(res, tmp_path / "o")
    assert paths["identity"].read_text().strip() == res.identity
    assert paths["config"].read_text() == res.config
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [".config", "asked.json", "identity"]


# --- the real Linux 6.1 tree --------------------------------------------------


def recipe_from(tmp_path, text, name="t"):
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    return recipe.load(p)


def test_hello_and_redis_resolve_verified(ktree, tmp_path):
    for name in ("hello", "redis"):
        r = recipe.find(name)
        res = config.configure(r, srctree=ktree.srctree, outdir=tmp_path / name, source_id="x")
        assert res.outcomes and all(o.ok for o in res.outcomes)
        assert "# CONFIG_MODULES is not set" in res.config
        assert "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y" in res.config
    redis_cfg = (tmp_path / "redis" / ".config").read_text()
    assert "CONFIG_VIRTIO_NET=y" in redis_cfg and "CONFIG_EPOLL=y" in redis_cfg
    assert "# CONFIG_EPOLL is not set" in (tmp_path / "hello" / ".config").read_text()


def test_real_dropped_option_and_deps(ktree, tmp_path):
    strict = recipe_from(tmp_path, "kernel:\n  base: [lupine-base]\n  options: {VIRTIO_NET: y}\n"
                                   "app: {command: /bin/true}\n")
    with pytest.raises(ResolveError) as e:
        config.configure(strict, srctree=ktree.srctree, outdir=tmp_path / "s")
    assert "CONFIG_VIRTIO_NET: asked y, got n: depends on NET_CORE && NETDEVICES (NET_CORE=n, NETDEVICES=n)" \
        in str(e.value)
    assert not (tmp_path / "s").exists()
    deps = recipe_from(tmp_path, "kernel:\n  base: [lupine-base]\n  resolve: deps\n  options: {VIRTIO_NET: y}\n"
                                 "app: {command: /bin/true}\n", "d")
    res = config.configure(deps, srctree=ktree.srctree, outdir=tmp_path / "d")
    assert {"NET", "NETDEVICES", "NET_CORE"} <= set(res.added)
    assert "CONFIG_VIRTIO_NET=y" in res.config


def test_real_unknown_symbol_suggestion(ktree):
    with pytest.raises(TailorError, match=r"FUTX: no such symbol in Linux 6\.1\.\d+; did you mean FUTEX\?"):
        kconfig.resolve(ktree, [[A("FUTX", "y", "r")]])


def test_identity_stable_and_equal_for_equivalent_recipes(ktree, tmp_path):
    a = recipe_from(tmp_path, "kernel:\n  base: [lupine-base, net]\napp: {command: /bin/true}\n", "a")
    b = recipe_from(tmp_path, "kernel:\n  base: [lupine-base]\n  options:\n"
                    + "".join(f"    CONFIG_{x.name}: {x.value}\n" for x in
                              kconfig.parse_fragment(config.fragment_path("net")))
                    + "app: {command: /bin/true}\n", "b")
    ra1 = config.configure(a, srctree=ktree.srctree, outdir=tmp_path / "a1", source_id="src")
    ra2 = config.configure(a, srctree=ktree.srctree, outdir=tmp_path / "a2", source_id="src")
    rb = config.configure(b, srctree=ktree.srctree, outdir=tmp_path / "b", source_id="src")
    assert ra1.identity == ra2.identity == rb.identity
    assert (tmp_path / "a1" / ".config").read_bytes() == (tmp_path / "a2" / ".config").read_bytes()
    hello = config.configure(recipe.find("hello"), srctree=ktree.srctree, outdir=tmp_path / "h", source_id="src")
    assert hello.identity != ra1.identity


@pytest.mark.parametrize("fragments", [["lupine-base"], ["lupine-base", "lupine-general"],
                                       ["lupine-base", "net"], ["lupine-base", "debug"], ["microvm"]])
def test_shipped_fragments_verify(ktree, fragments):
    layers = [kconfig.parse_fragment(config.fragment_path(f)) for f in fragments]
    res = kconfig.resolve(ktree, layers)
    assert all(o.ok for o in res.outcomes)
    assert "# CONFIG_MODULES is not set" in res.config


def test_real_explain(ktree):
    r = recipe.find("redis")
    text = kconfig.explain(ktree, "VIRTIO_NET", config.layers(r))
    assert text.startswith("CONFIG_VIRTIO_NET = y  [tristate]")
    assert "drivers/net/Kconfig" in text
    assert "asked: y by recipes/redis.yaml:" in text and "-> ok" in text


@pytest.mark.slow
def test_kbuild_agrees_for_every_recipe(ktree, tmp_path):
    """kbuild's olddefconfig must reproduce the engine's .config byte for byte, for every shipped recipe."""
    objdir = tmp_path / "obj"
    recipes = recipe.all_recipes()
    assert {"hello", "redis"} <= {r.name for r in recipes}
    for r in recipes:
        if r.kernel.source != recipe.Source():
            continue  # another tree (hello-612, ...): its kernel stage makes the same check before compiling
        res = config.configure(r, srctree=ktree.srctree, outdir=tmp_path / r.name)
        theirs = kernel.kbuild_olddefconfig(Path(ktree.srctree), objdir / r.arch, res.config, r.arch)  # arm64: cross
        assert theirs == res.config, f"{r.name}: {kconfig.config_diff(res.config, theirs)}"
