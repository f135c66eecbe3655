"""Tests for tailor.cpio: deterministic newc archives, checked by a tiny reader and GNU cpio."""

import os
import stat
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tailor.cpio import Entry, device_entry, entries_from_tree, write_archive  # noqa: E402
from tailor.measure.memory import cpio_data_size as data_size  # noqa: E402
from tailor.errors import TailorError  # noqa: E402

FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor",
          "devminor", "rdevmajor", "rdevminor", "namesize", "check")
MTIME = 1_700_000_000


def read_newc(blob):
    """Parse a newc archive; return a list of member dicts (fields, name, data).

    Asserts the format rules on the way: magic, 4-byte alignment of names and
    data, the trailer, and NUL padding of the whole archive to 512 bytes.
    """
    assert len(blob) % 512 == 0
    members = []
    pos = 0
    while True:
        assert pos % 4 == 0
        assert blob[pos:pos + 6] == b"070701", f"bad magic at {pos}"
        raw = blob[pos + 6:pos + 110]
        assert raw == raw.lower()
        member = {name: int(raw[i * 8:(i + 1) * 8], 16)
                  for i, name in enumerate(FIELDS)}
        name_end = pos + 110 + member["namesize"]
        assert blob[name_end - 1] == 0
        member["name"] = blob[pos + 110:name_end - 1].decode()
        data_start = name_end + (-name_end % 4)
        assert blob[name_end:data_start] == b"\0" * (data_start - name_end)
        data_end = data_start + member["filesize"]
        member["data"] = blob[data_start:data_end]
        pos = data_end + (-data_end % 4)
        assert blob[data_end:pos] == b"\0" * (pos - data_end)
        if member["name"] == "TRAILER!!!":
            assert blob[pos:] == b"\0" * (len(blob) - pos)
            return members, member
        members.append(member)


def make_tree(root, mtime):
    """Create a small staging tree under *root* (all times set to *mtime*)."""
    os.makedirs(os.path.join(root, "usr/bin"))
    os.makedirs(os.path.join(root, "etc"))
    os.makedirs(os.path.join(root, "a-b"))
    os.makedirs(os.path.join(root, "empty"))
    files = {
        "usr/bin/app": (b"\x7fELF fake program\n", 0o755),
        "etc/hostname": (b"tailor\n", 0o644),
        "etc/odd": (bytes(range(7)), 0o600),
        "a-b/file": (b"", 0o640),
        "init": (b"#!/bin/sh\nexec /usr/bin/app\n", 0o4755),
    }
    for rel, (data, mode) in files.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
        os.chmod(os.path.join(root, rel), mode)
    os.symlink("usr/bin", os.path.join(root, "bin"))
    os.symlink("/usr/bin/app", os.path.join(root, "usr/bin/app-link"))
    os.link(os.path.join(root, "etc/hostname"), os.path.join(root, "etc/hard"))
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (mtime, mtime),
                     follow_symlinks=False)
    return files


EXPECTED_ORDER = [
    "a-b", "a-b/file", "bin", "empty", "etc", "etc/hard", "etc/hostname",
    "etc/odd", "init", "usr", "usr/bin", "usr/bin/app", "usr/bin/app-link",
]


def test_tree_round_trip(tmp_path):
    stage = tmp_path / "stage"
    files = make_tree(str(stage), 1_600_000_000)
    if os.geteuid() == 0:
        os.lchown(stage / "etc/odd", 1234, 4321)
    entries = entries_from_tree(stage, MTIME)
    assert [e.path for e in entries] == EXPECTED_ORDER
    archive = tmp_path / "initramfs.cpio"
    write_archive(str(archive), entries)
    assert not os.path.exists(str(archive) + ".tmp")

    members, trailer = read_newc(archive.read_bytes())
    assert [m["name"] for m in members] == EXPECTED_ORDER
    assert [m["ino"] for m in members] == list(range(1, len(members) + 1))
    assert trailer["ino"] == 0 and trailer["filesize"] == 0
    by_name = {m["name"]: m for m in members}
    for m in members:
        assert (m["uid"], m["gid"]) == (0, 0)
        assert m["mtime"] == MTIME
        assert (m["devmajor"], m["devminor"], m["check"]) == (0, 0, 0)
        assert m["nlink"] == (2 if stat.S_ISDIR(m["mode"]) else 1)
    for rel, (data, mode) in files.items():
        assert by_name[rel]["mode"] == stat.S_IFREG | mode
        assert by_name[rel]["data"] == data
    # The hard link is a separate regular file with the same contents.
    assert by_name["etc/hard"]["data"] == b"tailor\n"
    assert by_name["etc/hard"]["ino"] != by_name["etc/hostname"]["ino"]
    assert stat.S_ISLNK(by_name["bin"]["mode"])
    assert by_name["bin"]["data"] == b"usr/bin"
    assert by_name["usr/bin/app-link"]["data"] == b"/usr/bin/app"
    assert stat.S_ISDIR(by_name["empty"]["mode"])

    # GNU cpio reads it back to the same tree.
    out = tmp_path / "out"
    out.mkdir()
    with open(archive, "rb") as f:
        run = subprocess.run(["cpio", "-idmv", "--no-absolute-filenames"],
                             stdin=f, cwd=out, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    for rel, (data, mode) in files.items():
        path = out / rel
        assert path.read_bytes() == data
        assert stat.S_IMODE(path.stat().st_mode) == mode
        assert int(path.stat().st_mtime) == MTIME
    assert (out / "etc/hard").read_bytes() == b"tailor\n"
    assert os.readlink(out / "bin") == "usr/bin"
    assert os.readlink(out / "usr/bin/app-link") == "/usr/bin/app"
    assert (out / "empty").is_dir()
    if os.geteuid() == 0:
        assert (os.stat(out / "etc/odd").st_uid, os.stat(out / "etc/odd").st_gid) == (0, 0)


def test_data_entries_and_exact_layout(tmp_path):
    archive = tmp_path / "a.cpio"
    write_archive(archive, [Entry("init", stat.S_IFREG | 0o755, data=b"abcde",
                                  mtime=7)])
    blob = archive.read_bytes()
    # 110-byte header + "init\0" padded to 116, 5 data bytes padded to 8,
    # trailer header + "TRAILER!!!\0" = 121 padded to 124; total 248 -> 512.
    assert len(blob) == 512
    assert blob[:110] == (b"070701" + b"00000001" + b"000081ed" + b"00000000" * 2
                          + b"00000001" + b"00000007" + b"00000005"
                          + b"00000000" * 4 + b"00000005" + b"00000000")
    assert blob[110:124] == b"init\0\0abcde\0\0\0"
    assert blob[124:130] == b"070701"
    assert blob[124 + 110:124 + 121] == b"TRAILER!!!\0"
    assert blob[248:] == b"\0" * (512 - 248)


def test_device_and_symlink_entries(tmp_path):
    archive = tmp_path / "dev.cpio"
    entries = [
        Entry("dev", stat.S_IFDIR | 0o755),
        device_entry("/dev/console", 5, 1),
        device_entry("dev/sda", 8, 0, mode=0o660, kind="b"),
        Entry("dev/fd", stat.S_IFLNK | 0o777, target="/proc/self/fd"),
    ]
    write_archive(archive, entries)
    members, _ = read_newc(archive.read_bytes())
    console, sda, fd = members[1], members[2], members[3]
    assert console["name"] == "dev/console"
    assert console["mode"] == stat.S_IFCHR | 0o600
    assert (console["rdevmajor"], console["rdevminor"]) == (5, 1)
    assert (console["devmajor"], console["devminor"]) == (0, 0)
    assert console["filesize"] == 0 and console["nlink"] == 1
    assert sda["mode"] == stat.S_IFBLK | 0o660
    assert (sda["rdevmajor"], sda["rdevminor"]) == (8, 0)
    assert fd["mode"] == stat.S_IFLNK | 0o777
    assert fd["data"] == b"/proc/self/fd"
    assert fd["filesize"] == len(b"/proc/self/fd")
    assert members[0]["nlink"] == 2
    with pytest.raises(TailorError, match="dev/x: device kind"):
        device_entry("dev/x", 1, 3, kind="p")


def test_determinism(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    make_tree(str(one), 1_000_000_000)
    make_tree(str(two), 1_650_000_000)
    # Different host timestamps must not change the archive.
    os.utime(two / "etc", (5, 5))
    a1, a2, b = tmp_path / "a1.cpio", tmp_path / "a2.cpio", tmp_path / "b.cpio"
    write_archive(a1, entries_from_tree(one, MTIME))
    write_archive(a2, entries_from_tree(one, MTIME))
    write_archive(b, entries_from_tree(str(two), MTIME))
    assert a1.read_bytes() == a2.read_bytes() == b.read_bytes()
    c = tmp_path / "c.cpio"
    write_archive(c, entries_from_tree(one, MTIME + 1))
    assert c.read_bytes() != a1.read_bytes()


def test_large_source_is_streamed(tmp_path):
    big = tmp_path / "big"
    payload = os.urandom(3 * (1 << 20) + 3)
    big.write_bytes(payload)
    archive = tmp_path / "big.cpio"
    write_archive(archive, [Entry("big", stat.S_IFREG | 0o644, source=str(big))])
    members, _ = read_newc(archive.read_bytes())
    assert members[0]["data"] == payload


def test_failure_leaves_nothing(tmp_path):
    archive = tmp_path / "fail.cpio"
    entries = [
        Entry("ok", stat.S_IFREG | 0o644, data=b"x" * 10000),
        Entry("gone", stat.S_IFREG | 0o644, source=str(tmp_path / "missing")),
    ]
    with pytest.raises(TailorError, match="missing: cannot read it for archive member gone"):
        write_archive(archive, entries)
    assert not archive.exists()
    assert not (tmp_path / "fail.cpio.tmp").exists()

    # A previous archive survives a failed rewrite untouched.
    write_archive(archive, entries[:1])
    before = archive.read_bytes()
    with pytest.raises(TailorError):
        write_archive(archive, entries)
    assert archive.read_bytes() == before
    assert not (tmp_path / "fail.cpio.tmp").exists()


@pytest.mark.parametrize("entry, message", [
    (Entry("/abs", stat.S_IFREG | 0o644), "archive paths must be relative"),
    (Entry("a/../b", stat.S_IFREG | 0o644), "archive paths must be relative"),
    (Entry("l", stat.S_IFLNK | 0o777), "l: a symlink needs a target"),
    (Entry("d", stat.S_IFDIR | 0o755, data=b"x"), "d: only regular files"),
    (Entry("f", stat.S_IFREG | 0o644, mtime=-1), "does not fit the newc"),
])
def test_invalid_entries(tmp_path, entry, message):
    archive = tmp_path / "bad.cpio"
    with pytest.raises(TailorError, match=message):
        write_archive(archive, [entry])
    assert os.listdir(tmp_path) == []


def test_duplicate_paths_rejected(tmp_path):
    archive = tmp_path / "dup.cpio"
    entry = Entry("x", stat.S_IFREG | 0o644)
    with pytest.raises(TailorError, match="x: appears twice"):
        write_archive(archive, [entry, entry])
    assert os.listdir(tmp_path) == []


def test_data_size_counts_members_and_their_bytes(tmp_path):
    path = tmp_path / "a.cpio"
    write_archive(path, [Entry("bin", stat.S_IFDIR | 0o755), Entry("bin/a", stat.S_IFREG | 0o755, data=b"x" * 5),
                         Entry("b", stat.S_IFREG | 0o644, data=b"y" * 4099), device_entry("console", 5, 1)])
    assert data_size(path) == (4, 5 + 4099)
    cut = tmp_path / "cut.cpio"
    cut.write_bytes(path.read_bytes()[:300])
    with pytest.raises(TailorError, match="cut.cpio: not a newc cpio archive"):
        data_size(cut)
