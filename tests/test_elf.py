"""Tests for tailor.elf: ELF dynamic-section reading and library closures in a root tree."""

import os
import re
import shutil
import struct
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tailor.elf import ElfInfo, library_closure, read_dynamic, resolve_in_root  # noqa: E402
from tailor.errors import TailorError  # noqa: E402

LS = "/bin/ls"
MULTIARCH = "/usr/lib/x86_64-linux-gnu"


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def make_elf(interp=None, needed=(), runpath=None, rpath=None, soname=None,
             machine=62):
    """Return the bytes of a minimal ELF64 LE file with the given dynamic facts.

    One PT_LOAD maps the whole file at virtual address 0x400000, so DT_STRTAB
    holds a virtual address that differs from its file offset.
    """
    base = 0x400000
    strtab = bytearray(b"\0")

    def add(s):
        off = len(strtab)
        strtab.extend(s.encode() + b"\0")
        return off

    dyn = [(1, add(n)) for n in needed]
    if soname is not None:
        dyn.append((14, add(soname)))
    if rpath is not None:
        dyn.append((15, add(rpath)))
    if runpath is not None:
        dyn.append((29, add(runpath)))

    phnum = 2 + (interp is not None)
    off = 64 + 56 * phnum
    interp_bytes = interp.encode() + b"\0" if interp is not None else b""
    interp_off = off
    off += len(interp_bytes)
    strtab_off = off
    off += len(strtab)
    off += -off % 8
    dyn_off = off
    dyn += [(5, base + strtab_off), (10, len(strtab)), (0, 0)]
    dyn_bytes = b"".join(struct.pack("<qQ", t, v) for t, v in dyn)
    total = dyn_off + len(dyn_bytes)

    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 3, machine, 1, 0, 64, 0, 0, 64,
                               56, phnum, 64, 0, 0)
    phdrs = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, total, total, 0x1000)
    phdrs += struct.pack("<IIQQQQQQ", 2, 6, dyn_off, base + dyn_off,
                         base + dyn_off, len(dyn_bytes), len(dyn_bytes), 8)
    if interp is not None:
        phdrs += struct.pack("<IIQQQQQQ", 3, 4, interp_off, base + interp_off,
                             base + interp_off, len(interp_bytes),
                             len(interp_bytes), 1)
    data = bytearray(ehdr + phdrs + interp_bytes + strtab)
    data.extend(bytes(dyn_off - len(data)))
    data.extend(dyn_bytes)
    return bytes(data)


def put(root, in_tree, data, mode=0o755):
    """Write *data* at in-tree path *in_tree* under *root* (parents created)."""
    host = os.path.join(root, in_tree.lstrip("/"))
    os.makedirs(os.path.dirname(host), exist_ok=True)
    with open(host, "wb") as f:
        f.write(data)
    os.chmod(host, mode)


def link(root, in_tree, target):
    """Create the symlink *in_tree* -> *target* under *root* (parents created)."""
    host = os.path.join(root, in_tree.lstrip("/"))
    os.makedirs(os.path.dirname(host), exist_ok=True)
    os.symlink(target, host)


def ldd_libraries(program):
    """Return {needed name: host path} for *program*, from the host's ldd."""
    out = subprocess.run(["ldd", program], check=True, capture_output=True,
                         text=True).stdout
    libs = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) => (/\S+)", line)
        if m:
            libs[m.group(1)] = m.group(2)
    return libs


@pytest.fixture
def ls_root(tmp_path):
    """A Debian-like merged-/usr root holding /bin/ls and its real libraries.

    Layout: /bin -> usr/bin and /lib -> usr/lib (directory symlinks), the
    libraries in /usr/lib/x86_64-linux-gnu under their real file names with
    soname symlinks where the host has them, and /lib64 a directory whose
    ld-linux-x86-64.so.2 is an absolute symlink to
    /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2.

    Returns (root, expected closure of "/bin/ls").
    """
    root = str(tmp_path / "root")
    os.makedirs(root)
    expected = {"/bin", "/lib", "/usr/bin/ls"}
    shutil.copy2(LS, _mkparent(root, "/usr/bin/ls"))
    link(root, "/bin", "usr/bin")
    link(root, "/lib", "usr/lib")

    interp = read_dynamic(LS).interp
    libs = ldd_libraries(LS)
    libs[os.path.basename(interp)] = interp
    for name, host_path in libs.items():
        real = os.path.realpath(host_path)
        real_name = os.path.basename(real)
        shutil.copy2(real, _mkparent(root, f"{MULTIARCH}/{real_name}"))
        expected.add(f"{MULTIARCH}/{real_name}")
        if real_name != name:
            link(root, f"{MULTIARCH}/{name}", real_name)
            expected.add(f"{MULTIARCH}/{name}")
    link(root, "/lib64/ld-linux-x86-64.so.2",
         "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    expected.add("/lib64/ld-linux-x86-64.so.2")
    return root, expected


def _mkparent(root, in_tree):
    """Create the parent of *in_tree* under *root* and return its host path."""
    host = os.path.join(root, in_tree.lstrip("/"))
    os.makedirs(os.path.dirname(host), exist_ok=True)
    return host


# --------------------------------------------------------------------------
# read_dynamic
# --------------------------------------------------------------------------


def test_read_dynamic_system_binary():
    info = read_dynamic(LS)
    assert isinstance(info, ElfInfo)
    assert info.interp == "/lib64/ld-linux-x86-64.so.2"
    assert "libc.so.6" in info.needed
    assert info.soname is None
    assert (info.elf_class, info.machine) == (64, 62)
    # DT_NEEDED order is the file's order, as readelf shows it.
    out = subprocess.run(["readelf", "-d", LS], capture_output=True, text=True)
    if out.returncode == 0:
        order = re.findall(r"\(NEEDED\).*\[(.+)\]", out.stdout)
        assert list(info.needed) == order


def test_read_dynamic_shared_library_soname():
    libc = os.path.realpath(ldd_libraries(LS)["libc.so.6"])
    info = read_dynamic(libc)
    assert info.soname == "libc.so.6"


def test_read_dynamic_not_elf(tmp_path):
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    short = tmp_path / "short"
    short.write_bytes(b"\x7fE")
    assert read_dynamic(script) is None
    assert read_dynamic(str(empty)) is None
    assert read_dynamic(short) is None


@pytest.mark.parametrize("size", [10, 40, 64, 200])
def test_read_dynamic_truncated(tmp_path, size):
    with open(LS, "rb") as f:
        head = f.read(size)
    broken = tmp_path / "ls.truncated"
    broken.write_bytes(head)
    with pytest.raises(TailorError, match=r"ls\.truncated: not a valid ELF file \("):
        read_dynamic(broken)


def test_read_dynamic_truncated_dynamic_section(tmp_path):
    data = make_elf(needed=["libfoo.so.1"])
    broken = tmp_path / "cut"
    broken.write_bytes(data[:-20])
    with pytest.raises(TailorError, match="not a valid ELF file"):
        read_dynamic(broken)


def test_read_dynamic_strtab_outside_load_segments(tmp_path):
    data = bytearray(make_elf(needed=["libfoo.so.1"]))
    # Move the PT_LOAD segment's virtual address far away from DT_STRTAB.
    struct.pack_into("<Q", data, 64 + 16, 0x900000)
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(data))
    with pytest.raises(TailorError, match="bad: not a valid ELF file .*DT_STRTAB"):
        read_dynamic(bad)


def test_read_dynamic_synthetic_fields(tmp_path):
    path = tmp_path / "app"
    path.write_bytes(make_elf(interp="/lib/ld.so", needed=["liba.so.1", "libb.so.2"],
                              runpath="$ORIGIN/../lib:/opt/x", rpath="/ignored",
                              soname="libapp.so.0"))
    assert read_dynamic(path) == ElfInfo(
        interp="/lib/ld.so",
        needed=("liba.so.1", "libb.so.2"),
        runpath=("$ORIGIN/../lib", "/opt/x"),
        soname="libapp.so.0",
    )
    # DT_RPATH is used when there is no DT_RUNPATH.
    path.write_bytes(make_elf(needed=["liba.so.1"], rpath="/r1::/r2"))
    info = read_dynamic(path)
    assert info.runpath == ("/r1", "/r2")
    assert info.interp is None


# --------------------------------------------------------------------------
# resolve_in_root
# --------------------------------------------------------------------------


def test_resolve_in_root_confines_symlinks(tmp_path):
    root = str(tmp_path / "root")
    put(root, "/usr/lib/real", b"x")
    link(root, "/lib", "usr/lib")
    link(root, "/abs", "/lib/real")
    link(root, "/up", "../../../../../../../../usr/lib")
    link(root, "/usr/lib/host", str(tmp_path / "outside"))
    assert resolve_in_root(root, "/lib/real") == "/usr/lib/real"
    assert resolve_in_root(root, "/abs") == "/usr/lib/real"
    assert resolve_in_root(root, "/up/real") == "/usr/lib/real"
    assert resolve_in_root(root, "/../../lib/./real") == "/usr/lib/real"
    assert resolve_in_root(root, "lib/real") == "/usr/lib/real"
    # An absolute target naming a host path stays inside the tree.
    assert resolve_in_root(root, "/usr/lib/host") == str(tmp_path / "outside")
    assert not os.path.exists(os.path.join(root, str(tmp_path / "outside").lstrip("/")))
    # Missing components are kept lexically.
    assert resolve_in_root(root, "/lib/missing/x") == "/usr/lib/missing/x"
    assert resolve_in_root(root, "/") == "/"


def test_resolve_in_root_loop(tmp_path):
    root = str(tmp_path / "root")
    link(root, "/a", "b")
    link(root, "/b", "/a")
    with pytest.raises(TailorError, match="/a/x: too many levels of symbolic links"):
        resolve_in_root(root, "/a/x")


# --------------------------------------------------------------------------
# library_closure
# --------------------------------------------------------------------------


def test_closure_of_ls_in_root(ls_root):
    root, expected = ls_root
    result = library_closure(root, ["/bin/ls"])
    assert result == sorted(expected)
    # Every path exists in the tree and has no symlink among its parents.
    for path in result:
        assert os.path.lexists(os.path.join(root, path.lstrip("/")))
        assert resolve_in_root(root, os.path.dirname(path)) == os.path.dirname(path)
    assert "/lib64/ld-linux-x86-64.so.2" in result
    assert f"{MULTIARCH}/libc.so.6" in result


def test_closure_missing_library(ls_root):
    root, _ = ls_root
    libs = ldd_libraries(LS)
    # Remove libc (a real file with a soname name): found on the host, not in root.
    for name in os.listdir(os.path.join(root, MULTIARCH.lstrip("/"))):
        if name.startswith("libc.so"):
            os.unlink(os.path.join(root, MULTIARCH.lstrip("/"), name))
    assert "libc.so.6" in libs
    with pytest.raises(TailorError) as err:
        library_closure(root, ["/bin/ls"])
    msg = str(err.value)
    assert msg.startswith("/bin/ls: needs libc.so.6")
    assert msg.endswith(
        "which is not in the packages; add the package that provides it to "
        "rootfs.packages")
    assert "\n" not in msg


def test_closure_missing_program(ls_root):
    root, _ = ls_root
    with pytest.raises(TailorError, match="/usr/bin/nope: not found"):
        library_closure(root, ["/usr/bin/nope"])


def test_closure_symlink_escaping_root_is_confined(ls_root, tmp_path):
    root, expected = ls_root
    libdir = os.path.join(root, MULTIARCH.lstrip("/"))
    selinux = os.path.realpath(ldd_libraries(LS)["libselinux.so.1"])
    real_name = os.path.basename(selinux)
    # A copy outside the root, reachable only by escaping it.
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy2(selinux, outside / real_name)
    for name in {"libselinux.so.1", real_name}:
        if os.path.lexists(os.path.join(libdir, name)):
            os.unlink(os.path.join(libdir, name))
    os.symlink(str(outside / real_name), os.path.join(libdir, "libselinux.so.1"))
    with pytest.raises(TailorError, match="/bin/ls: needs libselinux.so.1"):
        library_closure(root, ["/bin/ls"])

    # A relative link with too many '..' lands on the root, like chroot.
    os.unlink(os.path.join(libdir, "libselinux.so.1"))
    shutil.copy2(selinux, os.path.join(libdir, "selinux-real.so"))
    os.symlink("../" * 30 + "usr/lib/x86_64-linux-gnu/selinux-real.so",
               os.path.join(libdir, "libselinux.so.1"))
    result = library_closure(root, ["/bin/ls"])
    want = (expected - {f"{MULTIARCH}/{real_name}"}) | {
        f"{MULTIARCH}/libselinux.so.1", f"{MULTIARCH}/selinux-real.so"}
    assert result == sorted(want)


def test_closure_runpath_origin_ldconf_and_class(tmp_path):
    root = str(tmp_path / "root")
    put(root, "/opt/app/bin/app", make_elf(
        interp="/lib/ld.so", needed=["libfoo.so.1", "libbar.so.2", "libbaz.so.3"],
        runpath="$ORIGIN/../lib"))
    put(root, "/lib/ld.so", make_elf(soname="ld.so"))
    put(root, "/opt/app/lib/libfoo.so.1", make_elf(soname="libfoo.so.1",
                                                   needed=["libdep.so"]))
    # Decoy found later in the search order: RUNPATH wins.
    put(root, f"{MULTIARCH}/libfoo.so.1", make_elf(soname="libfoo.so.1"))
    # libdep comes from the default directories (RUNPATH is not inherited).
    put(root, "/usr/lib/libdep.so", make_elf())
    put(root, "/opt/app/lib/libdep.so", make_elf())
    # libbar only in a directory named by ld.so.conf through an include glob.
    put(root, "/etc/ld.so.conf", b"# comment\ninclude ld.so.conf.d/*.conf\n", 0o644)
    put(root, "/etc/ld.so.conf.d/app.conf", b"/srv/lib  # app libs\n", 0o644)
    put(root, "/etc/ld.so.conf.d/skip.txt", b"/nowhere\n", 0o644)
    put(root, "/srv/lib/libbar.so.2", make_elf())
    # libbaz: an aarch64 build comes first and must be skipped.
    put(root, f"{MULTIARCH}/libbaz.so.3", make_elf(machine=183))
    put(root, "/usr/lib/libbaz.so.3", make_elf())
    assert library_closure(root, ["/opt/app/bin/app"]) == [
        "/lib/ld.so",
        "/opt/app/bin/app",
        "/opt/app/lib/libfoo.so.1",
        "/srv/lib/libbar.so.2",
        "/usr/lib/libbaz.so.3",
        "/usr/lib/libdep.so",
    ]


def test_closure_non_elf_program_and_missing_interpreter(tmp_path):
    root = str(tmp_path / "root")
    put(root, "/usr/bin/script", b"#!/bin/sh\n")
    link(root, "/bin", "usr/bin")
    assert library_closure(root, ["/bin/script"]) == ["/bin", "/usr/bin/script"]
    put(root, "/usr/bin/app", make_elf(interp="/lib64/ld-linux-x86-64.so.2"))
    with pytest.raises(TailorError,
                       match="/usr/bin/app: needs /lib64/ld-linux-x86-64.so.2, "
                             "which is not in the packages"):
        library_closure(root, ["/usr/bin/app"])
