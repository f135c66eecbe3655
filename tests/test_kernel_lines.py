"""Fragments across kernel lines: ``# linux:`` guards on fragment lines, and the per-line source pin.

The engine runs on the fake tree (tests/fakelinux, version 9.9.0-fake), so a guard for ``<9.9``
stands for a 6.1-only line and ``>=9.9`` for a 6.12-only one. One slow test builds and boots
hello on Linux 6.12 (recipes/hello-612.yaml).
"""

from __future__ import annotations

import pytest

from tailor import config, kconfig, recipe, source
from tailor.errors import TailorError
from tailor.kconfig import LinuxLines


def fragment(tmp_path, text, name="x"):
    path = tmp_path / f"{name}.config"
    path.write_text(text)
    return kconfig.parse_fragment(path)


@pytest.mark.parametrize("spec,version,matches", [
    ("<6.2", "6.1.192", True), ("<6.2", "6.12.118", False), (">=6.2", "6.12.118", True),
    (">=6.2", "6.1.192", False), ("6.12", "6.12.118", True), ("6.12", "6.1.192", False),
    ("6.12", "6.13.0", False), ("6.1", "6.1.192", True), ("6.1", "6.10.2", False),
    (">=6.6 <6.13", "6.12.118", True), (">=6.6, <6.13", "6.13.1", False), ("6.12.118", "6.12.118", True),
    ("6.12.118", "6.12.119", False), ("<9.9", "9.9.0-fake", False), ("9.9", "9.9.0-fake", True),
])
def test_guard_matches_kernel_versions(spec, version, matches):
    assert LinuxLines.parse(spec, "f:1").matches(version) is matches


@pytest.mark.parametrize("text,message", [
    ("# linux: 6\nCONFIG_NET=y\n", "x.config:1: '6' is not a kernel line; write 6.12, >=6.2 or <6.2"),
    ("# linux: >6.1\nCONFIG_NET=y\n", "x.config:1: '>6.1' is not a kernel line"),
    ("# linux:\nCONFIG_NET=y\n", "x.config:1: `# linux:` names no kernel line"),
    ("# linux: >=6.12 <6.2\nCONFIG_NET=y\n", "x.config:1: `linux: >=6.12 <6.2` matches no kernel version"),
    ("# linux: <6.2\n\nCONFIG_NET=y\n", "x.config:1: a `# linux:` guard applies to the CONFIG_ line right below "
                                        "it; line 2 is not one"),
    ("# linux: <6.2\n# why\nCONFIG_NET=y\n", "x.config:1: a `# linux:` guard applies to the CONFIG_ line"),
    ("CONFIG_NET=y\n# linux: <6.2\n", "x.config:2: a `# linux:` guard applies to the CONFIG_ line right below "
                                      "it; the fragment ends first"),
    ("CONFIG_NET=y\n# fragment linux: 6.1\n", "x.config:2: `# fragment linux:` must come once, before the first"),
    ("# linux: <6.2\nCONFIG_NET=y\n# linux: >=6.1\nCONFIG_NET=n\n",
     "x.config:4: CONFIG_NET=n conflicts with CONFIG_NET=y on line 2 of the same fragment"),
    ("CONFIG_NET=y\n# linux: 6.12\nCONFIG_NET=n\n", "x.config:3: CONFIG_NET=n conflicts with CONFIG_NET=y on line 1"),
])
def test_bad_guards_are_one_line(tmp_path, text, message):
    with pytest.raises(TailorError) as e:
        fragment(tmp_path, text)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_disjoint_guards_give_one_symbol_two_values(tmp_path):
    got = fragment(tmp_path, "# linux: <6.2\nCONFIG_NET=y\n# linux: >=6.2\nCONFIG_NET=n\nCONFIG_INET=y\n")
    assert [(a.name, a.value, a.linux.text if a.linux else None) for a in got] == [
        ("NET", "y", "<6.2"), ("NET", "n", ">=6.2"), ("INET", "y", None)]


def test_resolve_leaves_out_lines_for_other_kernels(fake_tree, tmp_path):
    """A symbol this kernel does not have is fine behind a guard for another line, an error without one."""
    tree = kconfig.load_tree(fake_tree)
    text = ("CONFIG_NET=y\n# linux: <9.9\nCONFIG_GONE_IN_9_9=y\n"
            "# linux: <9.9\nCONFIG_INET=n\n# linux: 9.9\nCONFIG_INET=y\n")
    res = kconfig.resolve(tree, [fragment(tmp_path, text)])
    assert "CONFIG_INET=y" in res.config
    assert [o.name for o in res.outcomes] == ["NET", "INET"]
    with pytest.raises(TailorError, match=r"^x\.config:2: GONE_IN_9_9: no such symbol in Linux 9\.9\.0-fake"):
        kconfig.resolve(tree, [fragment(tmp_path, "CONFIG_NET=y\nCONFIG_GONE_IN_9_9=y\n")])
    explained = kconfig.explain(tree, "INET", [fragment(tmp_path, text)])
    assert "asked: y by x.config:7 -> ok" in explained


def test_whole_fragment_for_another_kernel_line_is_one_line(fake_tree, tmp_path):
    tree = kconfig.load_tree(fake_tree)
    old = fragment(tmp_path, "# for the old line only\n# fragment linux: <9.9\n\nCONFIG_NET=y\nCONFIG_GONE=y\n", "old")
    with pytest.raises(TailorError) as e:
        kconfig.resolve(tree, [fragment(tmp_path, "CONFIG_NET=y\n"), old])
    assert str(e.value) == ("old.config:2: this fragment is for Linux <9.9 only (`# fragment linux: <9.9`), "
                            "this kernel is 9.9.0-fake; use a fragment for this kernel line")
    new = fragment(tmp_path, "# fragment linux: >=9.9\nCONFIG_NET=y\n", "new")
    assert "CONFIG_NET=y" in kconfig.resolve(tree, [new]).config


def test_shipped_fragments_guard_what_6_2_removed():
    """lupine-base's RANDOM_TRUST_CPU (gone in 6.2) applies to 6.1 only; microvm is a 6.1 fragment."""
    lupine = {a.name: a for a in kconfig.parse_fragment(config.fragment_path("lupine-base"))}
    assert lupine["RANDOM_TRUST_CPU"].linux.matches("6.1.192")
    assert not lupine["RANDOM_TRUST_CPU"].linux.matches("6.12.118")
    assert all(a.linux is None for a in lupine.values() if a.name != "RANDOM_TRUST_CPU")
    micro = kconfig.parse_fragment(config.fragment_path("microvm"))
    assert all(a.linux is not None and a.linux.whole and a.linux.text == "6.1" for a in micro)
    for name in ("net", "debug", "lupine-general", "probe"):
        kconfig.parse_fragment(config.fragment_path(name))


def test_612_recipes_are_their_61_recipes_on_the_other_source():
    """hello-612, redis-612 and nginx-612 differ from hello, redis and nginx only in the source package
    (and in not booting on the shared 6.1 general kernel)."""
    for app in ("hello", "redis", "nginx"):
        old, new = recipe.find(app), recipe.find(f"{app}-612")
        assert old.kernel.source.package == "linux-source-6.1"
        assert new.kernel.source.package == "linux-source-6.12"
        assert (new.kernel.base, new.kernel.options) == (old.kernel.base, old.kernel.options)
        assert (new.app, new.test) == (old.app, old.test)
        assert new.rootfs.packages == old.rootfs.packages and new.rootfs.format == old.rootfs.format
        assert new.general is False
        ref = source.recipe_ref(new)
        assert ref.label.startswith("linux-source-6.12 6.12.") and ref.sha256 != source.recipe_ref(old).sha256


def test_unpinned_package_is_one_line_naming_the_recipe(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text("kernel:\n  source: {package: linux-source-6.13}\napp: {command: /bin/true}\n")
    with pytest.raises(TailorError) as e:
        source.recipe_ref(recipe.load(path))
    msg = str(e.value)
    assert msg.endswith("kernel.source.package: kernel-sources.lock: linux-source-6.13 is not pinned (pinned: "
                        "linux-source-6.1, linux-source-6.12); check the name, or pin it with "
                        "`python -m tailor pin-source linux-source-6.13`") and "\n" not in msg


def _size_row(app, source, bz, enabled, syscalls):
    return {"label": app, "variant": "specific", "apps": [app], "identity": app * 4, "source": source,
            "bzImage": bz, "vmlinux": bz * 10, "enabled": enabled, "syscalls": {"real": syscalls, "raw": syscalls,
                                                                               "stubs": 0}}


def test_report_sets_the_kernel_lines_side_by_side():
    from tailor import report

    data = {"kernels": [_size_row("hello", "linux-source-6.1 6.1.192-2", 1_000_000, 388, 250),
                        _size_row("hello-612", "linux-source-6.12 6.12.118-1~deb12u1", 1_100_000, 427, 260),
                        _size_row("redis", "linux-source-6.1 6.1.192-2", 1_500_000, 420, 300)],
            "missing": []}
    boot = {"results": [{"app": "hello", "variant": "specific", "init_s": {"median": 0.5}, "ready_s": {"median": 0.6}},
                        {"app": "hello-612", "variant": "specific", "init_s": {"median": 0.55},
                         "ready_s": {"median": 0.66}},
                        {"app": "hello", "variant": "general", "init_s": {"median": 9.0}}]}
    s = report.lines_section(data, boot)
    assert s.measured and s.id == "lines"
    assert s.rows == [
        ["hello", "linux-source-6.1 6.1.192-2", "1.00 MB", "", "10.00 MB", "", "388", "", "250", "",
         "0.500 s", "", "0.600 s", "", "–", ""],
        ["hello-612", "linux-source-6.12 6.12.118-1~deb12u1", "1.10 MB", "1.10x", "11.00 MB", "1.10x", "427",
         "1.10x", "260", "1.04x", "0.550 s", "1.10x", "0.660 s", "1.10x", "–", "–"]]  # no memory benchmark
    assert report.lines_section(data).rows[1][-6:] == ["–"] * 6  # no boot or memory benchmark yet
    assert s.missing == ["redis-612: kernel not measured; run `doit build:redis-612`, then doit bench:size "
                         "(or python benchmarks/size.py)",
                         "nginx: kernel not measured; run `doit build:nginx`, then doit bench:size "
                         "(or python benchmarks/size.py)"]
    assert [b["label"] for b in s.charts[0]["bars"]] == ["hello on 6.1", "hello on 6.12"]
    assert not report.lines_section(None).measured


@pytest.mark.slow
def test_hello_on_612_builds_and_boots(tmp_path_factory, linux_tree):
    """The one 6.12 kernel CI builds (hello's, lupine-base: the smallest): doit build:hello-612 in a project
    copy sharing out/kernel with the project (compiled once, then reused), the pinned source fetched by
    tailor itself; the kernel boots and hello prints its greeting."""
    import json
    from pathlib import Path

    from conftest import project_copy, run_doit

    project = project_copy(tmp_path_factory.mktemp("lines-project") / "tailor")
    proc = run_doit(project, "build:hello-612")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((project / "out/boot/hello-612/result.json").read_text())
    assert result["pass"] is True
    console = (project / "out/boot/hello-612/console.log").read_text()
    assert "Linux version 6.12." in console and "Run /init as init process" in console
    assert "Hello, world!" in console
    pointer = json.loads((project / "out/kernels/hello-612.json").read_text())
    built = json.loads((Path(pointer["dir"]) / "kernel.json").read_text())
    assert built["source"].startswith("linux-source-6.12 6.12.")
    config = (Path(pointer["dir"]) / "config").read_text()
    assert "CONFIG_KERNEL_XZ=y" in config and "CONFIG_PVH=y" in config and "RANDOM_TRUST_CPU" not in config
