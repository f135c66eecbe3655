"""Traced slim (tailor/slim.py): the ext2 inode reader against images made by mke2fs, the kept list, the
add-back groups and the recipe key; the traced boot of a real image is a slow test in test_image_registry.py."""

import os
import subprocess
from pathlib import Path

import pytest

from tailor import slim
from tailor.errors import TailorError
from tailor.recipe import parse
from tailor.records.stages import SlimDropped

EPOCH = 1672531200


def ext2(tmp_path: Path, tree: dict[str, str | None]) -> Path:
    """An ext2 image of *tree* (path -> content, None for a directory) with every time at EPOCH, as tailor's
    images have (mke2fs -d, then debugfs sif for ctime)."""
    root = tmp_path / "tree"
    for rel, content in tree.items():
        p = root / rel
        if content is None:
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(content)
    for p in sorted(root.rglob("*"), reverse=True) + [root]:
        os.utime(p, (EPOCH, EPOCH), follow_symlinks=False)
    image = tmp_path / "rootfs.ext2"
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(EPOCH), MKE2FS_CONFIG="/dev/null")
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-b", "4096", "-I", "256", "-d", str(root), str(image), "8M"],
                   check=True, env=env, capture_output=True)
    script = "".join(f'sif "/{rel}" ctime @{EPOCH}\nsif "/{rel}" atime @{EPOCH}\n' for rel in ["", *tree])
    subprocess.run(["debugfs", "-w", "-f", "-", str(image)], input=script, text=True, check=True, capture_output=True)
    return image


def set_time(image: Path, path: str, field: str, when: int) -> None:
    subprocess.run(["debugfs", "-w", "-R", f'sif "{path}" {field} @{when}', str(image)], check=True,
                   capture_output=True)


def test_touched_inodes_are_those_whose_times_moved_with_a_reason(tmp_path):
    image = ext2(tmp_path, {"bin": None, "bin/app": "x", "etc": None, "etc/app.conf": "y", "etc/unused": "z",
                            "www": None, "usr": None, "usr/share": None, "usr/share/doc": "d"})
    assert slim.touched_inodes(image, EPOCH) == {}  # nothing used yet: every time is the epoch
    later = EPOCH + 10 ** 8
    set_time(image, "/bin/app", "atime", later)
    set_time(image, "/etc/app.conf", "atime", later)
    set_time(image, "/www", "atime", later)
    set_time(image, "/etc", "mtime", later)
    touched = slim.touched_inodes(image, EPOCH)
    names = slim.inode_paths(image, sorted(touched))
    kept = slim.kept_list(touched, names)
    assert kept == [{"path": "/bin/app", "why": "read"}, {"path": "/etc", "why": "written"},
                    {"path": "/etc/app.conf", "why": "read"}, {"path": "/www", "why": "listed"}]


def test_the_kept_list_leaves_out_tailors_own_files_and_mount_points():
    touched = {12: "read", 13: "read", 14: "written", 15: "read", 16: "listed", 2: "listed"}
    names = {12: ["/init"], 13: ["/.tailor/reseed"], 14: ["/tmp/x"], 15: ["/usr/bin/app", "/usr/bin/app-link"],
             16: ["/proc"], 2: ["/"]}
    assert slim.kept_list(touched, names) == [{"path": "/usr/bin/app", "why": "read"},
                                              {"path": "/usr/bin/app-link", "why": "read"}]


def test_a_non_ext2_file_is_refused(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"\0" * 4096)
    with pytest.raises(TailorError, match="not an ext2 image"):
        slim.touched_inodes(f, EPOCH)


def test_dropped_files_are_grouped_by_dropped_directory_else_by_parent():
    record = SlimDropped(app="t", source="packages", kept=1,
                         dropped=["/usr/share/doc/a", "/usr/share/doc/b/c", "/etc/x", "/etc/y", "/top"],
                         dropped_dirs=["/usr/share/doc"])
    assert slim._groups(record) == {"/usr/share/doc": ["/usr/share/doc/a", "/usr/share/doc/b/c"],
                                    "/etc": ["/etc/x", "/etc/y"], "/": ["/top"]}


@pytest.mark.parametrize("value, ok", [("traced", True), (True, True), (False, True), ("maybe", False), (1, False)])
def test_rootfs_slim_is_true_false_or_traced(tmp_path, value, ok):
    text = f"rootfs: {{packages: [hello], slim: {str(value).lower() if isinstance(value, bool) else value}}}\n" \
           f"app: {{command: hello}}\n"
    if ok:
        assert parse(text, tmp_path / "a.yaml").rootfs.slim == value
    else:
        with pytest.raises(TailorError, match=r"rootfs.slim: expected true, false or traced"):
            parse(text, tmp_path / "a.yaml")


def test_a_traced_recipe_without_its_list_names_the_command(tmp_path, monkeypatch):
    from tailor import rootfs

    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    r = parse("rootfs: {packages: [hello], slim: traced}\napp: {command: hello}\n", tmp_path / "t.yaml")
    with pytest.raises(TailorError, match=r"rootfs.slim: traced needs the list of what the app used; run "
                                          r"`doit slim:t`"):
        rootfs.load_traced(r)


def test_write_puts_the_kept_files_into_the_recipe(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text("# my app\nrootfs:\n  packages: [hello]\n  slim: traced\napp:\n  command: hello\n")
    r = parse(path.read_text(), path)
    slim.write_files(r, [{"path": "/usr/bin/hello", "why": "read"}, {"path": "/srv", "why": "listed"},
                         {"path": "/etc/app conf", "why": "read"}])
    again = parse(path.read_text(), path)
    assert again.rootfs.slim is True and again.rootfs.files == ("/usr/bin/hello", "/etc/app conf")
    assert path.read_text().startswith("# my app\nrootfs:\n")  # the rest of the file as written
    with pytest.raises(TailorError, match="already has rootfs.files"):
        slim.write_files(again, [{"path": "/x", "why": "read"}])
    flow = tmp_path / "flow.yaml"
    flow.write_text("rootfs: {packages: [hello]}\napp: {command: hello}\n")
    with pytest.raises(TailorError, match="no block `rootfs:` line"):
        slim.write_files(parse(flow.read_text(), flow), [{"path": "/x", "why": "read"}])
