"""Recipe loading: the typed model, defaults, digests and error locations."""

import pytest

from tailor import recipe
from tailor.errors import TailorBug, TailorError
from tailor.imports import code_digest


def load_text(tmp_path, text, name="app"):
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    return recipe.load(p)


def test_shipped_recipes_load():
    names = {r.name for r in recipe.all_recipes()}
    assert {"hello", "redis"} <= names
    redis = recipe.find("redis")
    assert redis.kernel.base == ("lupine-base",)
    assert ("VIRTIO_NET", "y") in redis.kernel.options
    assert redis.app.network and redis.test.probe.type == "redis" and redis.test.probe.port == 6379


def test_defaults(tmp_path):
    r = load_text(tmp_path, "app: {command: /bin/true}\n", "mini")
    assert r.name == "mini"
    assert r.kernel.source.kind == "debian" and r.kernel.source.package == "linux-source-6.1"
    assert r.kernel.base == ("lupine-base",) and r.kernel.resolve == "strict" and r.kernel.options == ()
    assert r.rootfs.format == "ext2" and r.rootfs.slim is True
    assert r.app.args == () and r.app.workdir == "/" and r.app.network is False
    assert r.test.memory == 256 and r.test.timeout == 180 and r.test.probe.type == "none"


def test_option_values_normalised(tmp_path):
    r = load_text(tmp_path, "kernel:\n  options:\n    CONFIG_NET: y\n    INET: true\n    SMP: false\n"
                            "    LOG_BUF_SHIFT: 14\n    CMDLINE: 'console=ttyS0'\napp: {command: x}\n")
    assert r.kernel.options == (("NET", "y"), ("INET", "y"), ("SMP", "n"), ("LOG_BUF_SHIFT", 14),
                                ("CMDLINE", "console=ttyS0"))
    assert dict(r.kernel.option_lines) == {"NET": 3, "INET": 4, "SMP": 5, "LOG_BUF_SHIFT": 6, "CMDLINE": 7}


def test_url_and_path_sources(tmp_path):
    sha = "a" * 64
    r = load_text(tmp_path, f"kernel:\n  source: {{url: 'https://h/linux-6.1.1.tar.xz', sha256: '{sha}'}}\n"
                            "app: {command: x}\n")
    assert (r.kernel.source.kind, r.kernel.source.url, r.kernel.source.sha256) == (
        "url", "https://h/linux-6.1.1.tar.xz", sha)
    r = load_text(tmp_path, f"kernel:\n  source: {{path: linux.tar.xz, sha256: '{sha}'}}\napp: {{command: x}}\n")
    assert r.kernel.source.path == str(tmp_path / "linux.tar.xz")


def test_args_and_env_keep_text_literally(tmp_path):
    r = load_text(tmp_path, "app:\n  command: /bin/echo\n  args: ['a b', \"it's\", '$(x)', 3, \"é\\nz\"]\n"
                            "  env: {K: '\"q\"', N: 5}\n")
    assert r.app.args == ("a b", "it's", "$(x)", "3", "é\nz")
    assert r.app.env == (("K", '"q"'), ("N", "5"))


def test_digests_change_only_with_their_section(tmp_path):
    base = "kernel:\n  options: {NET: y}\nrootfs:\n  packages: [hello]\napp: {command: hello}\n"
    a = load_text(tmp_path, base, "a")
    b = load_text(tmp_path, base.replace("NET: y", "NET: n"), "b")
    c = load_text(tmp_path, base.replace("[hello]", "[hello, bash]"), "c")
    assert a.digests["kernel"] != b.digests["kernel"] and a.digests["rootfs"] == b.digests["rootfs"]
    assert a.digests["rootfs"] != c.digests["rootfs"] and a.digests["kernel"] == c.digests["kernel"]


def test_default_overlays_are_existing_dirs(tmp_path):
    r = load_text(tmp_path, "app: {command: x}\n", "no-such-app-dir")
    assert r.rootfs.overlay == ("common",)


@pytest.mark.parametrize("text,message", [
    ("app: {command: x}\ntest: {probe: {type: redis}}\n", "test.probe: a redis probe needs `port`"),
    ("app: {command: x}\nrootfs: {size_mib: 10, format: cpio}\n", "rootfs.size_mib: only an ext2 image has a size"),
    ("app: {command: x}\nkernel: {base: [a, a]}\n", "kernel.base.1: fragment 'a' is listed twice"),
    ("app: {command: x}\nkernel: {source: {path: x.tar}}\n", "kernel.source: a `path` source needs its `sha256`"),
    ("app: {command: x, workdir: relative}\n", "app.workdir: 'relative' is not an absolute directory"),
    ("app: {command: x}\ntest: {probe: {type: console}}\n", "test.probe: a console probe needs `expect`"),
    ("- just\n- a list\n", "expected a mapping, got a list"),
    ("app: {command: x}\nrootfs: {files: [etc/x]}\n", "rootfs.files.0: 'etc/x' is not an absolute path"),
    ("app:\n  command: x\n  setup: [{run: [y], after_services: true}]\n",
     "app.setup.0.after_services: the app has no services to wait for"),
    ("app:\n  command: x\n  setup: [{run: [y], after_services: 1}]\n  services: [{run: [z]}]\n",
     "app.setup.0.after_services: expected true or false, got a number"),
    ("app:\n  command: x\n  services: [{run: [z], after_services: true}]\n",
     "app.services.0.after_services: unknown key"),
])
def test_more_errors(tmp_path, text, message):
    with pytest.raises(TailorError) as e:
        load_text(tmp_path, text)
    assert message in str(e.value)
    assert str(e.value).startswith(f"{tmp_path / 'app.yaml'}:")


def test_find_unknown_recipe_suggests():
    with pytest.raises(TailorError, match="no such recipe; did you mean redis"):
        recipe.find("rediss")


def test_not_utf8(tmp_path):
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"app: {command: \xff}\n")
    with pytest.raises(TailorError, match="not UTF-8"):
        recipe.load(p)


def test_digests_come_from_the_validated_model(tmp_path):
    """A default written out is the same recipe as the default left out; a changed value is not."""
    implicit = load_text(tmp_path, "app: {command: /bin/true}\n", "a")
    # (app keys are not written out: which app keys a recipe gives decides what overrides an image's config)
    explicit = load_text(tmp_path, "app: {command: /bin/true}\ntest: {memory: 256, timeout: 180}\n"
                                   "rootfs: {format: ext2, slim: true}\nkernel: {resolve: strict}\n", "b")
    assert implicit.digests == explicit.digests
    other = load_text(tmp_path, "app: {command: /bin/true}\ntest: {memory: 128}\n", "c")
    assert other.digests["test"] != implicit.digests["test"]
    assert {k: v for k, v in other.digests.items() if k != "test"} == \
        {k: v for k, v in implicit.digests.items() if k != "test"}


def test_stage_code_digests_cover_each_stage_and_package():
    assert code_digest("rootfs") == code_digest("rootfs") != code_digest("cpio")
    assert code_digest("kinds") != code_digest("records")  # records imports kinds and more
    with pytest.raises(TailorBug, match="no module tailor.no_such_stage"):
        code_digest("no_such_stage")


def test_a_validated_recipe_is_cached_by_what_validation_reads(tmp_path, monkeypatch):
    """load_cached validates a recipe once: the next load reads the cache, and an edit or a recipe that
    fails are validated again."""
    from tailor import recipe as recipe_mod

    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    path = tmp_path / "recipes" / "cached.yaml"
    path.parent.mkdir()
    path.write_text("description: first\nkernel: {base: [lupine-base]}\nrootfs: {packages: [hello]}\n"
                    "app: {command: /usr/bin/hello}\ntest: {ready: Hello}\n")
    first = recipe_mod.load_cached(path)
    assert first == recipe_mod.load(path) and first.description == "first"
    parsed = []
    real_parse = recipe_mod.parse
    monkeypatch.setattr(recipe_mod, "parse", lambda *a: parsed.append(a) or real_parse(*a))
    assert recipe_mod.load_cached(path) == first and parsed == []  # from the cache
    path.write_text(path.read_text().replace("first", "second"))
    assert recipe_mod.load_cached(path).description == "second" and len(parsed) == 1
    path.write_text("description: [broken\n")
    for _ in range(2):
        with pytest.raises(TailorError, match="cached.yaml"):
            recipe_mod.load_cached(path)



def test_option_notes_are_the_comments_on_each_options_line(tmp_path):
    """What a hand-found option was chosen for, from the comment on its line (YAML drops comments)."""
    r = load_text(tmp_path, "# AIO: y  # not an option: the file's own comment\n"
                            "kernel:\n  options:\n    AIO: y   # InnoDB's native I/O (io_setup)\n"
                            "    EPOLL: y\n    CMDLINE: 'a # b'  # quoted hash\n"
                            "app: {command: x, args: ['#', y]}  # FUTEX\n")
    assert recipe.option_notes(r) == {"AIO": "InnoDB's native I/O (io_setup)"}
    assert recipe.option_notes(recipe.find("mariadb"))["FILE_LOCKING"].startswith("InnoDB locks ibdata1")
    r.path.unlink()
    assert recipe.option_notes(r) == {}
