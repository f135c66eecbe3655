"""OCI images as a rootfs source (tailor/image/): references, the lock, the verified cache, layers, config.

Fast: tiny layouts written by the tests themselves; skopeo runs only for the
docker-archive conversion (local, no network). The registry path is tested
end to end in tests/test_image_registry.py (slow).
"""

import inspect
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from tailor import image
from tailor.image import build as image_build
from tailor.image import cache as image_cache
from tailor.image import lockfile as image_lockfile
from tailor.image import reference as image_reference
from tailor.errors import TailorError
from tailor.recipe import AppSpec, parse


def tar_layer(path: Path, entries) -> Path:
    """A layer tar from (name, kind, data, extra) tuples, in order; extra sets TarInfo fields."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data, *extra in entries:
            info = tarfile.TarInfo(name)
            info.mode = 0o755 if kind == "dir" else 0o644
            for k, v in (extra[0] if extra else {}).items():
                setattr(info, k, v)
            if kind == "file":
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "link": tarfile.LNKTYPE,
                         "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            if kind in ("symlink", "link"):
                info.linkname = data
            tf.addfile(info)
    return path


def apply(tmp_path, *layers):
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    skipped = []
    for i, entries in enumerate(layers):
        blob = tar_layer(tmp_path / f"layer{i}.tar", entries)
        skipped += image.apply_layer(root, blob, "tar", f"layer {i}")
    return root, skipped


# --------------------------------------------------------------------------
# References


@pytest.mark.parametrize("text,transport,location,tag,digest", [
    ("docker://redis:7", "docker", "redis", "7", None),
    ("docker://redis", "docker", "redis", "latest", None),
    ("docker://127.0.0.1:5000/tailor/redis:7.0", "docker", "127.0.0.1:5000/tailor/redis", "7.0", None),
    ("docker://library/mongo@sha256:" + "a" * 64, "docker", "library/mongo", None, "sha256:" + "a" * 64),
    ("oci:out/images/redis:7.0", "oci", "out/images/redis", "7.0", None),
    ("oci:images/x", "oci", "images/x", None, None),
    ("docker-archive:tests/redis.tar", "docker-archive", "tests/redis.tar", None, None),
])
def test_references_parse(text, transport, location, tag, digest):
    ref = image.parse_reference(text)
    assert (ref.transport, ref.location, ref.tag, ref.digest) == (transport, location, tag, digest)


@pytest.mark.parametrize("text,fragment", [
    ("redis:7", "is not an image reference"),
    ("docker:redis:7", "starts with docker://"),
    ("docker://Redis:7", "is not an image name"),
    ("docker://redis:7@sha256:abc", "64 lowercase hex"),
    ("oci:/abs/dir:1", "inside the project"),
    ("oci:../up:1", "inside the project"),
    ("docker-archive:", "inside the project"),
    ("docker://redis:7 x", "not an image reference"),
])
def test_bad_references_say_why(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        image.parse_reference(text)


def test_loopback_registries_are_plain_http():
    assert image.parse_reference("docker://127.0.0.1:5000/a:1").plain_http()
    assert image.parse_reference("docker://localhost:5000/a:1").plain_http()
    assert not image.parse_reference("docker://redis:7").plain_http()
    assert image.parse_reference("docker://redis:7").registry() == "the default registry"


def test_recipe_with_image_needs_no_command_and_records_given_keys(tmp_path):
    r = parse("rootfs:\n  image: oci:out/images/redis:7.0\napp:\n  network: true\n", tmp_path / "x.yaml")
    assert r.rootfs.image == "oci:out/images/redis:7.0" and r.app.command == ""
    assert r.app.given == ("network",)
    with pytest.raises(TailorError, match=r"x.yaml:2: rootfs.image: 'redis' is not an image reference"):
        parse("rootfs:\n  image: redis\n", tmp_path / "x.yaml")
    with pytest.raises(TailorError, match="missing required key `app`"):
        parse("rootfs:\n  packages: [hello]\n", tmp_path / "x.yaml")


# --------------------------------------------------------------------------
# Layers


def test_layers_apply_in_order_with_whiteouts(tmp_path):
    root, _ = apply(tmp_path, [
        ("etc", "dir", None), ("etc/keep", "file", b"1"), ("etc/gone", "file", b"x"),
        ("var", "dir", None), ("var/cache", "dir", None), ("var/cache/old", "file", b"old"),
    ], [
        ("etc/.wh.gone", "file", b""),
        ("var/cache/.wh..wh..opq", "file", b""), ("var/cache/new", "file", b"new"),
        ("etc/keep", "file", b"2"),
    ])
    assert (root / "etc/keep").read_bytes() == b"2"
    assert not (root / "etc/gone").exists() and not (root / "etc/.wh.gone").exists()
    assert sorted(os.listdir(root / "var/cache")) == ["new"]


def test_opaque_whiteout_after_its_own_layers_entries_keeps_them(tmp_path):
    root, _ = apply(tmp_path, [("d", "dir", None), ("d/lower", "file", b"l")],
                    [("d/upper", "file", b"u"), ("d/.wh..wh..opq", "file", b"")])
    assert sorted(os.listdir(root / "d")) == ["upper"]


def test_modes_owners_hardlinks_kept_and_devices_skipped(tmp_path):
    root, skipped = apply(tmp_path, [
        ("usr", "dir", None), ("usr/bin", "dir", None),
        ("usr/bin/su", "file", b"\x7fELF", {"mode": 0o4755, "uid": 0, "gid": 0}),
        ("data", "dir", None, {"mode": 0o750, "uid": 999, "gid": 998}),
        ("data/db", "file", b"rows", {"mode": 0o600, "uid": 999, "gid": 998}),
        ("data/db.link", "link", "data/db"),
        ("dev", "dir", None), ("dev/null", "chr", None, {"devmajor": 1, "devminor": 3}),
        ("run", "dir", None), ("run/fifo", "fifo", None),
    ])
    assert stat.S_IMODE((root / "usr/bin/su").stat().st_mode) == 0o4755
    assert stat.S_IMODE((root / "data").stat().st_mode) == 0o750
    assert (root / "data/db").stat().st_ino == (root / "data/db.link").stat().st_ino
    assert skipped == ["/dev/null"] and not (root / "dev/null").exists()
    assert stat.S_ISFIFO((root / "run/fifo").lstat().st_mode)
    if os.geteuid() == 0:
        st = (root / "data/db").stat()
        assert (st.st_uid, st.st_gid) == (999, 998)


def test_entries_under_an_in_image_symlink_stay_in_the_tree(tmp_path):
    """/bin -> /usr/bin (absolute, as merged-/usr images have it) is followed inside the tree."""
    root, _ = apply(tmp_path, [("usr", "dir", None), ("usr/bin", "dir", None), ("bin", "symlink", "/usr/bin")],
                    [("bin/tool", "file", b"t")])
    assert (root / "usr/bin/tool").read_bytes() == b"t" and (root / "bin").is_symlink()


@pytest.mark.parametrize("entries,fragment", [
    ([("../evil", "file", b"x")], "entry '../evil' would write outside the image tree"),
    ([("/etc/passwd", "file", b"x")], "entry '/etc/passwd' would write outside the image tree"),
    ([("a", "dir", None), ("a/../../b", "file", b"x")], "would write outside the image tree"),
    ([("a", "dir", None), ("a/up", "symlink", "../../etc")], "symlink 'a/up' -> '../../etc' leads outside"),
    ([("hl", "link", "../../etc/shadow")], "would write outside the image tree"),
])
def test_unsafe_entries_are_refused(tmp_path, entries, fragment):
    with pytest.raises(TailorError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        apply(tmp_path, entries)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "b").exists()


# --------------------------------------------------------------------------
# Layouts, the cache, the lock


def make_layout(tmp_path, name="src", tag="1", entries=None, **config) -> tuple[Path, str]:
    layout = tmp_path / name
    layer = tar_layer(tmp_path / f"{name}-{tag}.tar",
                      entries or [("usr", "dir", None), ("usr/bin", "dir", None),
                                  ("usr/bin/app", "file", b"#!/bin/sh\necho hi\n", {"mode": 0o755})])
    digest = image_build.write_layout(layout, tag, [layer], image_build.image_config(**config))
    return layout, digest


@pytest.fixture
def project(tmp_path, monkeypatch):
    """TAILOR_OUT and the project root in tmp_path, so oci: paths and images.lock stay there."""
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    monkeypatch.setattr(image_reference, "PROJECT", tmp_path)
    monkeypatch.setattr(image_lockfile, "LOCK_FILE", tmp_path / "images.lock")
    return tmp_path


def test_the_lock_file_is_looked_up_when_called(tmp_path, monkeypatch):
    """Pointing LOCK_FILE elsewhere moves every reader and writer of the lock: a lock path bound as a
    default argument at import time would still read and write the project's images.lock."""
    project_lock = Path(image.__file__).resolve().parents[2] / "images.lock"
    before = project_lock.read_bytes() if project_lock.exists() else None
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    monkeypatch.setattr(image_lockfile, "LOCK_FILE", tmp_path / "images.lock")
    ref = image.parse_reference("docker://registry.example.org/tailor/app:1")
    digest = "sha256:" + "a" * 64
    image.record(ref, digest)
    assert json.loads((tmp_path / "images.lock").read_text()) == {ref.unpinned: {"digest": digest}}
    assert image.locked_digest(ref) == digest and image.read_lock() == {ref.unpinned: {"digest": digest}}
    assert (project_lock.read_bytes() if project_lock.exists() else None) == before
    for fn in (image.read_lock, image.locked_digest, image.record, image.pinned_digest, image.pin):
        assert all(not isinstance(p.default, Path) for p in inspect.signature(fn).parameters.values()), fn


def test_oci_layout_is_pinned_fetched_verified_and_cached(project):
    _, digest = make_layout(project, entrypoint=["/usr/bin/app"])
    ref = image.parse_reference("oci:src:1")
    assert image.pinned_digest(ref, "r.yaml", project / "images.lock") == digest
    assert json.loads((project / "images.lock").read_text()) == {"oci:src:1": {"digest": digest}}
    img = image.fetch(ref, digest, "r.yaml")
    assert img.layout == project / "out/cache/oci" and img.config["config"]["Entrypoint"] == ["/usr/bin/app"]
    index = json.loads((img.layout / "index.json").read_text())
    assert [m["annotations"][image.REF_NAME] for m in index["manifests"]] == [digest]
    # the tag moves: later builds still use the pinned digest (from the cache), pin-image moves it
    make_layout(project, entrypoint=["/usr/bin/other"])
    assert image.pinned_digest(ref, "r.yaml", project / "images.lock") == digest
    assert image.fetch(ref, digest, "r.yaml").config["config"]["Entrypoint"] == ["/usr/bin/app"]
    new = image.pin(ref, "r.yaml", project / "images.lock")
    assert new != digest and image.locked_digest(ref, project / "images.lock") == new


def test_moved_tag_without_the_pinned_image_is_one_line(project):
    _, digest = make_layout(project)
    shutil.rmtree(project / "src")
    _, now = make_layout(project, entrypoint=["/x"])
    with pytest.raises(TailorError, match=rf"has no image with the pinned digest {digest} \(its tag points at {now}"):
        image.fetch(image.parse_reference("oci:src:1"), digest, "r.yaml")


def test_a_damaged_cached_blob_is_caught_and_fetched_again(project, capsys):
    _, digest = make_layout(project)
    ref = image.parse_reference("oci:src:1")
    img = image.fetch(ref, digest, "r.yaml")
    blob = img.layout / "blobs/sha256" / img.config_digest[7:]
    good = blob.read_bytes()
    blob.write_bytes(good.replace(b"amd64", b"arm64"))
    assert image.fetch(ref, digest, "r.yaml").config["architecture"] == "amd64" and blob.read_bytes() == good
    assert "does not verify for linux/amd64 (config sha256:" in capsys.readouterr().err
    # damaged in the source as well: one line
    blob.write_bytes(good.replace(b"amd64", b"arm64"))
    src = project / "src/blobs/sha256" / img.config_digest[7:]
    src.write_bytes(good.replace(b"amd64", b"arm64"))
    with pytest.raises(TailorError, match=r"config sha256:[0-9a-f]{12} is corrupt"):
        image.fetch(ref, digest, "r.yaml")


def test_an_image_of_another_platform_is_refused_in_one_line_either_way(project):
    _, digest = make_layout(project, architecture="arm64")
    with pytest.raises(TailorError, match=r"the image is linux/arm64; the recipe builds linux/amd64 microVMs "
                                          r"\(arch: x86_64\); use an image with a linux/amd64 variant"):
        image.fetch(image.parse_reference("oci:src:1"), digest, "r.yaml")
    assert not (project / "out/cache/oci/index.json").exists()
    assert image.fetch(image.parse_reference("oci:src:1"), digest, "r.yaml", "arm64").config["architecture"] == "arm64"
    _, digest = make_layout(project, name="x86")
    with pytest.raises(TailorError, match=r"the image is linux/amd64; the recipe builds linux/arm64 microVMs \(arch: arm64\)"):
        image.fetch(image.parse_reference("oci:x86:1"), digest, "r.yaml", "arm64")


def multi_platform_index(project, platforms=("amd64", "arm64")) -> str:
    """A layout ``multi`` whose tag ``1`` is an index of one image per platform (each with /etc/arch
    saying its architecture); returns the index's digest."""
    from tailor.image.layout import put_blob, set_tag
    from tailor.image.reference import OCI_INDEX

    layout = project / "multi"
    manifests = []
    for arch in platforms:
        _, digest = make_layout(project, name="multi", tag=arch, architecture=arch,
                                entries=[("etc", "dir", None), ("etc/arch", "file", arch.encode())])
        desc = next(m for m in json.loads((layout / "index.json").read_text())["manifests"] if m["digest"] == digest)
        manifests.append({"mediaType": desc["mediaType"], "digest": digest, "size": desc["size"],
                          "platform": {"architecture": arch, "os": "linux"}})
    index = put_blob(layout, json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests},
                                        sort_keys=True).encode())
    return set_tag(layout, dict(index, mediaType=OCI_INDEX), "1")["digest"]


def test_a_multi_platform_index_gives_each_recipe_its_architectures_image(project, capsys):
    """One pinned index digest, two platforms: an x86_64 recipe unpacks the linux/amd64 image and an arm64
    recipe the linux/arm64 one, from one shared cache (fetching the second platform's blobs once)."""
    digest = multi_platform_index(project)
    ref = image.parse_reference("oci:multi:1")
    assert image.pinned_digest(ref, "r.yaml", project / "images.lock") == digest
    for arch in ("amd64", "arm64", "amd64"):
        img = image.fetch(ref, digest, "r.yaml", arch)
        assert img.config["architecture"] == arch
        root = project / f"root-{arch}"
        shutil.rmtree(root, ignore_errors=True)
        image.unpack(img, root, "r.yaml")
        assert (root / "etc/arch").read_text() == arch
    err = capsys.readouterr().err
    assert err.count("does not verify for linux/arm64") == 1 and "linux/amd64 (" not in err
    only_arm = multi_platform_index(project, platforms=("arm64",))
    with pytest.raises(TailorError, match=r"the image has no linux/amd64 variant \(it has linux/arm64\); "
                                          r"the recipe builds linux/amd64 microVMs"):
        image.fetch(ref, only_arm, "r.yaml")


def test_docker_archive_is_converted_with_skopeo_and_gives_the_same_digest_twice(project):
    make_layout(project, entrypoint=["/usr/bin/app"])
    subprocess.run(["skopeo", "copy", "-q", f"oci:{project / 'src'}:1", f"docker-archive:{project / 'a.tar'}:x/app:1"],
                   check=True, capture_output=True)
    ref = image.parse_reference("docker-archive:a.tar")
    digest = image.resolve(ref, "r.yaml")
    assert digest == image.resolve(ref, "r.yaml")
    img = image.fetch(ref, digest, "r.yaml")
    root = project / "root"
    image.unpack(img, root, "r.yaml")
    assert (root / "usr/bin/app").read_bytes().startswith(b"#!/bin/sh")
    assert img.config["config"]["Entrypoint"] == ["/usr/bin/app"]


def test_unreachable_registry_is_one_line(project):
    ref = image.parse_reference("docker://127.0.0.1:1/nothing:1")
    with pytest.raises(TailorError, match=r"registry 127.0.0.1:1 is unreachable; check the name and the network"):
        image.resolve(ref, "r.yaml")


# --------------------------------------------------------------------------
# The app from the image config


def test_app_from_config_each_recipe_key_overrides_its_part(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nredis:x:999:999::/var/lib/redis:/bin/false\n")
    cfg = {"config": {"Entrypoint": ["docker-entrypoint.sh"], "Cmd": ["redis-server"], "WorkingDir": "/data",
                      "Env": ["PATH=/usr/local/bin:/usr/bin", "A=1"], "User": "999:999"}}
    app = image.app_from_config(AppSpec(), (), cfg, tmp_path, "w")
    assert (app.command, app.args, app.workdir, app.user) == ("docker-entrypoint.sh", ("redis-server",), "/data", "redis")
    assert dict(app.env) == {"PATH": "/usr/local/bin:/usr/bin", "A": "1"}
    app = image.app_from_config(AppSpec(args=("--port", "7000"), env=(("A", "2"),)), ("args", "env"), cfg, tmp_path, "w")
    assert (app.command, app.args, dict(app.env)["A"]) == ("docker-entrypoint.sh", ("--port", "7000"), "2")
    app = image.app_from_config(AppSpec(command="/bin/sh", workdir="/", user=None), ("command", "workdir", "user"),
                                cfg, tmp_path, "w")
    assert (app.command, app.args, app.workdir, app.user) == ("/bin/sh", (), "/", None)
    with pytest.raises(TailorError, match="the image's User 'nobody' is not in its /etc/passwd"):
        image.app_from_config(AppSpec(), (), {"config": {"Cmd": ["x"], "User": "nobody"}}, tmp_path, "w")
    with pytest.raises(TailorError, match="the image has no Entrypoint or Cmd; set app.command"):
        image.app_from_config(AppSpec(), (), {"config": {}}, tmp_path, "w")


def test_registry_only_recipes_are_marked_and_left_out_of_the_catalogue_build(tmp_path, monkeypatch):
    from tailor import catalogue, recipe
    from tailor.tasks import study

    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))  # the rows of nothing built, not of this checkout's out/
    recipes = recipe.all_recipes()
    needs = {r.name for r in recipes if catalogue.needs_registry_access(r)}
    assert needs == {"mongo", "traefik", "elasticsearch"}
    rows = {row["app"]: row for row in catalogue.rows(recipes)}
    assert rows["mongo"]["registry"] and not rows["redis-image"]["registry"] and not rows["redis"]["registry"]
    build = next(t for t in study.catalogue_tasks(recipes) if t["basename"] == "catalogue")
    assert "build:redis-image" in build["task_dep"] and "build:redis" in build["task_dep"]
    assert not [d for d in build["task_dep"] if d.split(":")[1].split("@")[0] in needs]


def test_rootfs_tasks_read_only_the_lock_and_depend_on_the_local_image(monkeypatch):
    from tailor import recipe
    from tailor.tasks import build

    def no_network(*a, **k):
        raise AssertionError("task generation must not resolve images")

    monkeypatch.setattr(image_cache, "resolve", no_network)
    monkeypatch.setattr(image_cache, "_skopeo", no_network)
    tasks = {t["name"]: t for t in build.rootfs_tasks(recipe.all_recipes())}
    assert tasks["redis-image"]["task_dep"] == ["image:redis"] and tasks["mongo"]["task_dep"] == []
    assert tasks["redis"]["task_dep"] == []


def test_whiteouts_of_missing_paths_create_nothing(tmp_path):
    root, _ = apply(tmp_path, [("etc", "dir", None)],
                    [("nowhere/.wh.x", "file", b""), ("gone/.wh..wh..opq", "file", b"")])
    assert sorted(os.listdir(root)) == ["etc"]


@pytest.mark.skipif(os.geteuid() != 0, reason="owners can only be set as root")
def test_an_images_owners_reach_the_cpio(tmp_path):
    from tailor import cpio

    (tmp_path / "data").mkdir()
    (tmp_path / "data/db").write_text("rows")
    os.lchown(tmp_path / "data/db", 999, 998)
    entries = {e.path: e for e in cpio.entries_from_tree(tmp_path, 0, owners=True)}
    assert (entries["data/db"].uid, entries["data/db"].gid) == (999, 998)
    assert {(e.uid, e.gid) for e in cpio.entries_from_tree(tmp_path, 0)} == {(0, 0)}


def test_image_specs_load_and_say_what_is_wrong(tmp_path):
    spec = image_build.load_spec(image.IMAGES_DIR / "redis.yaml")
    assert spec.packages == ("redis-server",) and spec.entrypoint == ("/usr/bin/redis-server",) and spec.tag == "7.0"
    assert image.local_image_task("oci:out/images/redis:7.0") == "image:redis"
    assert image.local_image_task("oci:out/images/none:1") is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("packages: [hello]\nentrypont: [/usr/bin/hello]\n")
    with pytest.raises(TailorError, match="bad.yaml: entrypont: unknown key; allowed keys: tag, arch, packages"):
        image_build.load_spec(bad)
    bad.write_text("entrypoint: [/usr/bin/hello]\n")
    with pytest.raises(TailorError, match="packages: list the Debian packages the image is made of"):
        image_build.load_spec(bad)
    bad.write_text("packages: [hello]\narch: riscv64\n")
    with pytest.raises(TailorError, match="bad.yaml: arch: 'riscv64' is not a supported architecture; use x86_64 or arm64"):
        image_build.load_spec(bad)
    for value in ("usr/share/doc", "/", "/usr/../etc"):
        bad.write_text(f"packages: [hello]\nexclude: [{value!r}]\n")
        with pytest.raises(TailorError, match=f"bad.yaml: exclude: '{re.escape(value)}' must be an absolute path"):
            image_build.load_spec(bad)


def test_exclude_drops_paths_through_the_trees_own_symlinks_and_never_outside(tmp_path):
    tree = tmp_path / "tree"
    (tree / "usr/share/doc/pkg").mkdir(parents=True)
    (tree / "usr/share/doc/pkg/copyright").write_text("c")
    (tree / "usr/lib/x").mkdir(parents=True)
    (tree / "lib").symlink_to("/usr/lib")  # absolute, as images have them: it must resolve inside the tree
    outside = tmp_path / "usr/lib/x"
    outside.mkdir(parents=True)
    image_build._exclude(tree, "/usr/share/doc")
    image_build._exclude(tree, "/lib/x")
    image_build._exclude(tree, "/usr/share/man")  # missing: nothing to do
    assert not (tree / "usr/share/doc").exists() and (tree / "usr/share").is_dir()
    assert not (tree / "usr/lib/x").exists() and outside.is_dir() and (tree / "lib").is_symlink()


def test_packages_go_over_a_merged_usr_image_through_its_symlinks(tmp_path):
    root, _ = apply(tmp_path, [("usr", "dir", None), ("usr/bin", "dir", None), ("bin", "symlink", "usr/bin"),
                               ("usr/bin/sh", "file", b"image sh", {"mode": 0o755})])
    debs = tmp_path / "debs"
    (debs / "bin").mkdir(parents=True)
    (debs / "bin/busybox").write_bytes(b"busybox")
    (debs / "etc").mkdir()
    (debs / "etc/motd").write_text("hi")
    image.merge_tree(debs, root, "w")
    assert (root / "bin").is_symlink() and (root / "usr/bin/busybox").read_bytes() == b"busybox"
    assert (root / "usr/bin/sh").read_bytes() == b"image sh" and (root / "etc/motd").read_text() == "hi"


def test_a_script_entrypoint_keeps_its_interpreter(tmp_path):
    from tailor import rootfs

    bin_ = tmp_path / "usr/bin"
    bin_.mkdir(parents=True)
    for name, text in (("app", "#!/usr/bin/env python3\n"), ("env", "\x7fELF"), ("python3", "\x7fELF"),
                       ("run", "#!/bin/sh -e\n")):
        (bin_ / name).write_text(text)
        (bin_ / name).chmod(0o755)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/sh").symlink_to("/usr/bin/python3")
    assert rootfs.interpreters(tmp_path, "/usr/bin/app", "o") == ["/usr/bin/env", "/usr/bin/python3"]
    assert rootfs.interpreters(tmp_path, "/usr/bin/run", "o") == ["/bin/sh"]
    assert rootfs.interpreters(tmp_path, "/usr/bin/python3", "o") == []
    (bin_ / "app").write_text("#!/usr/bin/node\n")
    with pytest.raises(TailorError, match=r"the #! interpreter of /usr/bin/app\): '/usr/bin/node' is not in the image"):
        rootfs.interpreters(tmp_path, "/usr/bin/app", "o", "image")


def test_an_images_etc_wins_over_the_common_overlay(tmp_path, monkeypatch):
    """rootfs/common's /etc/passwd must not replace the image's (its users), only fill in what it lacks."""
    from tailor import rootfs

    tree = tmp_path / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "bin").mkdir()
    (tree / "etc").mkdir()
    (tree / "bin/busybox").write_bytes(b"not ELF: the stage only copies it")
    os.chmod(tree / "bin/busybox", 0o755)
    (tree / "usr/bin/app").write_text("#!/bin/busybox sh\necho hi\n")
    os.chmod(tree / "usr/bin/app", 0o755)
    (tree / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nmongodb:x:999:999::/data/db:/bin/false\n")
    r = parse("rootfs:\n  image: oci:out/images/x:1\napp:\n  command: /usr/bin/app\n  user: mongodb\n",
              tmp_path / "x.yaml")
    dest = tmp_path / "stage"
    rootfs.stage(r, tree, dest)
    assert "mongodb" in (dest / "etc/passwd").read_text()
    assert (dest / "etc/hosts").read_text() == (rootfs.ROOTFS_DIR / "common/etc/hosts").read_text()


def test_an_unreachable_registry_fails_the_build_before_any_kernel_work(tmp_path):
    """doit build:<app> of an image recipe fetches the image first: no config, no compile, one line."""
    from conftest import project_copy, run_doit

    project = project_copy(tmp_path / "project", shared=("cache",))
    text = (project / "recipes/traefik.yaml").read_text().replace("docker://traefik:v2.10",
                                                                  "docker://127.0.0.1:1/tailor/traefik:v2.10")
    (project / "recipes/traefik.yaml").write_text(text)
    proc = run_doit(project, "build:traefik", timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tailor: error: ")]
    assert proc.returncode != 0 and errors == [
        "tailor: error: recipes/traefik.yaml: rootfs.image: docker://127.0.0.1:1/tailor/traefik:v2.10: "
        "registry 127.0.0.1:1 is unreachable; check the name and the network (this machine may have no registry "
        "access)"], proc.stdout + proc.stderr
    assert not (project / "out/config").exists(), proc.stdout
    assert not list((project / "out/rootfs").glob("traefik/rootfs.*"))


# --------------------------------------------------------------------------
# The one deterministic tar writer (tailor.image.layout), as images built from packages use it


def test_tree_tar_is_the_same_whoever_writes_it_and_whenever(tmp_path):
    from tailor.image import layout

    tree = tmp_path / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/app").write_bytes(b"#!/bin/sh\n")
    os.chmod(tree / "usr/bin/app", 0o755)
    os.link(tree / "usr/bin/app", tree / "usr/bin/again")
    os.symlink("usr/bin", tree / "bin")
    long_dir = tree / ("d" * 120)
    long_dir.mkdir()
    (long_dir / "f").write_bytes(b"x")
    one = layout.tree_tar(tree, tmp_path / "one.tar", 1672531200)
    os.utime(tree / "usr/bin/app", (2000000000, 2000000000))
    if os.geteuid() == 0:
        os.lchown(tree / "bin", 1000, 1000)
    two = layout.tree_tar(tree, tmp_path / "two.tar", 1672531200)
    assert one.read_bytes() == two.read_bytes()
    with tarfile.open(one) as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == ["bin", "d" * 120, "d" * 120 + "/f", "usr", "usr/bin", "usr/bin/again",
                                             "usr/bin/app"]
        assert all(m.mtime == 1672531200 and (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "") for m in members)
        assert all(set(m.pax_headers) <= {"path"} for m in members)  # no pax times; a path only when too long
        by = {m.name: m for m in members}
        assert by["bin"].issym() and by["bin"].linkname == "usr/bin"
        assert by["usr/bin/app"].islnk() and by["usr/bin/app"].linkname == "usr/bin/again"
        assert by["usr/bin/again"].mode == 0o755 and tf.extractfile(by["usr/bin/again"]).read() == b"#!/bin/sh\n"
