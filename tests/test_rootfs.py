"""The rootfs stage: staging (slim closure, overlays, init), deterministic images, real Debian packages."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tailor import debian, elf, recipe, rootfs
from tailor.errors import TailorError
from tailor.tasks import build
from tailor.util import PROJECT


def make_recipe(tmp_path, text, name="app"):
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    return recipe.load(p)


@pytest.fixture
def pkg_tree(tmp_path):
    """A fake 'extracted packages' tree: the host's /bin/ls and busybox with ls's real libraries."""
    tree = tmp_path / "packages"
    for d in ("usr/bin", "bin"):
        (tree / d).mkdir(parents=True)
    for path in elf.library_closure("/", ["/usr/bin/ls"]):
        src = Path(path)
        dst = tree / path.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            if not dst.exists() and not dst.is_symlink():
                os.symlink(os.readlink(src), dst)
        elif src.is_file() and not dst.exists():
            shutil.copy2(src, dst)
    shutil.copy2("/bin/busybox", tree / "bin/busybox")
    (tree / "usr/share/doc/x").mkdir(parents=True)
    (tree / "usr/share/doc/x/README").write_text("not needed\n")
    (tree / "etc").mkdir()
    (tree / "etc/app.conf").write_text("port 1\n")
    return tree


def test_stage_slim_keeps_closure_files_and_init(tmp_path, pkg_tree):
    r = make_recipe(tmp_path, "rootfs:\n  files: [/etc/app.conf]\n  overlay: []\napp:\n  command: ls\n  args: [-l]\n")
    dest = tmp_path / "image"
    info = rootfs.stage(r, pkg_tree, dest)
    assert info["command"] == "/usr/bin/ls"
    assert (dest / "usr/bin/ls").is_file() and (dest / "bin/busybox").is_file()
    assert (dest / "etc/app.conf").read_text() == "port 1\n"
    assert not (dest / "usr/share/doc").exists()  # slim: only what the app needs
    files, dirs = info["dropped"]  # and it says what it left out
    assert "/usr/share/doc/x/README" in files and dirs == ["/usr/share"]  # the topmost directory left out
    assert not any(f == "/usr/bin/ls" or f == "/etc/app.conf" for f in files)
    assert all(not (dest / f[1:]).exists() for f in files)
    for lib in elf.read_dynamic("/usr/bin/ls").needed:
        assert list(dest.rglob(lib)), f"{lib} missing from the slim tree"
    assert os.readlink(dest / "bin/sh") == "busybox"
    assert oct((dest / "tmp").stat().st_mode & 0o7777) == "0o1777"
    init = (dest / "init").read_text()
    assert init.startswith("#!/bin/busybox sh\n") and "exec /usr/bin/ls -l\n" in init
    assert os.access(dest / "init", os.X_OK)


def test_a_sh_script_app_needs_no_shell_package(tmp_path, pkg_tree):
    """A #!/bin/sh command (rabbitmq-server) gets busybox's /bin/sh: dash is Essential, so no
    package depends on it and apt's closure leaves it out; any other missing interpreter is named."""
    script = pkg_tree / "usr/bin/app-script"
    script.write_text("#!/bin/sh\nexec ls \"$@\"\n")
    script.chmod(0o755)
    assert not (pkg_tree / "bin/sh").exists()
    dest = tmp_path / "image"
    rootfs.stage(make_recipe(tmp_path, "rootfs: {overlay: []}\napp: {command: /usr/bin/app-script}\n"), pkg_tree, dest)
    assert (dest / "usr/bin/app-script").is_file() and os.readlink(dest / "bin/sh") == "busybox"
    script.write_text("#!/bin/bash\nexec ls\n")
    with pytest.raises(TailorError, match=r"the #! interpreter of /usr/bin/app-script\): '/bin/bash' is not in the "
                                          r"packages; add the package that provides it"):
        rootfs.stage(make_recipe(tmp_path, "rootfs: {overlay: []}\napp: {command: /usr/bin/app-script}\n", "b"),
                     pkg_tree, tmp_path / "image2")


def test_stage_full_keeps_everything(tmp_path, pkg_tree):
    r = make_recipe(tmp_path, "rootfs: {slim: false, overlay: []}\napp: {command: /usr/bin/ls}\n")
    info = rootfs.stage(r, pkg_tree, tmp_path / "image")
    assert (tmp_path / "image/usr/share/doc/x/README").exists()
    assert info["dropped"] == ([], [])


def test_an_image_recipe_keeps_the_whole_image_unless_it_says_slim(tmp_path):
    image = make_recipe(tmp_path, "rootfs: {image: 'oci:out/images/x:1'}\n", "i")
    packages = make_recipe(tmp_path, "rootfs: {packages: [hello]}\napp: {command: hello}\n", "p")
    slim_image = make_recipe(tmp_path, "rootfs: {image: 'oci:out/images/x:1', slim: true}\n", "s")
    assert (image.rootfs.slim, packages.rootfs.slim, slim_image.rootfs.slim) == (False, True, True)


def test_missing_command_is_named(tmp_path, pkg_tree):
    r = make_recipe(tmp_path, "rootfs: {overlay: []}\napp: {command: redis-server}\n")
    with pytest.raises(TailorError, match=r"app.command: 'redis-server' is not in the packages \(searched PATH"):
        rootfs.stage(r, pkg_tree, tmp_path / "image")


def test_missing_file_is_named(tmp_path, pkg_tree):
    r = make_recipe(tmp_path, "rootfs: {overlay: [], files: [/etc/nope*]}\napp: {command: ls}\n")
    with pytest.raises(TailorError, match=r"rootfs.files: '/etc/nope\*' matches nothing"):
        rootfs.stage(r, pkg_tree, tmp_path / "image")


def test_overlay_symlink_escaping_is_refused(tmp_path, pkg_tree):
    over = tmp_path / "over"
    (over / "etc").mkdir(parents=True)
    os.symlink("../../../../etc/shadow", over / "etc/evil")
    with pytest.raises(TailorError, match="points outside the rootfs"):
        rootfs.apply_overlay(tmp_path / "stage", over, "o")


def test_overlay_never_writes_through_a_symlink(tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    outside = tmp_path / "host-etc"
    outside.mkdir()
    os.symlink(str(outside), stage / "etc")
    over = tmp_path / "over"
    (over / "etc").mkdir(parents=True)
    (over / "etc/passwd").write_text("x\n")
    with pytest.raises(TailorError, match="would be written through the symlink /etc"):
        rootfs.apply_overlay(stage, over, "o")
    assert not (outside / "passwd").exists()


def test_overlay_copies_files_and_relative_links(tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    over = tmp_path / "over"
    (over / "srv/www").mkdir(parents=True)
    (over / "srv/www/index.html").write_text("hi\n")
    os.symlink("www/index.html", over / "srv/home.html")
    rootfs.apply_overlay(stage, over, "o")
    assert (stage / "srv/www/index.html").read_text() == "hi\n"
    assert os.readlink(stage / "srv/home.html") == "www/index.html"


def test_init_passes_args_and_env_literally(tmp_path):
    """Run the generated init's tail with a program that prints its argv and env: every value arrives intact."""
    nasty = ["a b", "it's", '"dq"', "$HOME", "`id`", "; rm -rf /", "tab\there", "new\nline", "ünï", "*", ""]
    yaml_args = json.dumps(nasty)
    r = make_recipe(tmp_path, f"app:\n  command: x\n  args: {yaml_args}\n  env:\n    FOO: {json.dumps(nasty[5])}\n"
                              f"    BAR: {json.dumps(nasty[7])}\n  workdir: /tmp\n")
    printer = tmp_path / "printer"
    printer.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                       "print(json.dumps([sys.argv[1:], os.environ['FOO'], os.environ['BAR'], os.getcwd()]))\n")
    printer.chmod(0o755)
    script = rootfs.init_script(r, str(printer))
    tail = script[script.index("export PATH"):]
    proc = subprocess.run(["sh", "-c", tail], capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": os.environ["PATH"]})
    assert proc.returncode == 0, proc.stderr
    argv, foo, bar, cwd = json.loads(proc.stdout.splitlines()[-1])
    assert argv == nasty and foo == nasty[5] and bar == nasty[7] and cwd == "/tmp"


def test_init_network_section_only_when_asked(tmp_path):
    plain = rootfs.init_script(make_recipe(tmp_path, "app: {command: x}\n"), "/x")
    net = rootfs.init_script(make_recipe(tmp_path, "app: {command: x, network: true}\n", "n"), "/x")
    assert "eth0" not in plain
    assert "ip addr add 10.0.2.15/24 dev eth0" in net and "route add default via 10.0.2.2" in net
    # the failure message names what discovery keeps for every network recipe
    assert f"does the kernel have {rootfs.NETWORK_NEEDS[0]} and {rootfs.NETWORK_NEEDS[1]}?" in net


def _staged(tmp_path, pkg_tree, name, touch_time):
    r = make_recipe(tmp_path, "rootfs: {overlay: [common]}\napp: {command: ls}\n", "det")
    dest = tmp_path / name
    rootfs.stage(r, pkg_tree, dest)
    for p in dest.rglob("*"):
        if not p.is_symlink():
            os.utime(p, (touch_time, touch_time))
    rootfs.normalise(dest, 1_000_000)
    return dest


def test_cpio_image_is_deterministic(tmp_path, pkg_tree):
    a = _staged(tmp_path, pkg_tree, "a", 2_000_000_000)
    b = _staged(tmp_path, pkg_tree, "b", 1_500_000_000)
    rootfs.pack_cpio(a, tmp_path / "a.cpio", 1_000_000)
    rootfs.pack_cpio(b, tmp_path / "b.cpio", 1_000_000)
    assert (tmp_path / "a.cpio").read_bytes() == (tmp_path / "b.cpio").read_bytes()
    listing = subprocess.run(["cpio", "-itv"], stdin=open(tmp_path / "a.cpio", "rb"), capture_output=True,
                             text=True).stdout
    console = next(line for line in listing.splitlines() if line.endswith(" dev/console"))
    assert console.startswith("crw-------") and " 5,   1 " in console
    assert all(" root     root " in line for line in listing.splitlines() if line)


def test_ext2_image_is_deterministic(tmp_path, pkg_tree):
    a = _staged(tmp_path, pkg_tree, "a", 2_000_000_000)
    # the host's ctimes (and listed directories' atimes) of the two trees are a second apart:
    # mke2fs copies them, so the image must not depend on them
    second = int(time.time())
    while int(time.time()) == second:
        time.sleep(0.05)
    b = _staged(tmp_path, pkg_tree, "b", 1_500_000_000)
    rootfs.pack_ext2(a, tmp_path / "a.img", 1_000_000, "det")
    rootfs.pack_ext2(b, tmp_path / "b.img", 1_000_000, "det")
    assert (tmp_path / "a.img").read_bytes() == (tmp_path / "b.img").read_bytes()
    out = subprocess.run(["debugfs", "-R", "stat /init", str(tmp_path / "a.img")], capture_output=True,
                         text=True).stdout
    assert "User:     0   Group:     0" in out
    assert "Mode:  0755" in out


@pytest.mark.slow
def test_real_packages_hello_image_byte_identical(tmp_path, monkeypatch):
    """apt closure -> download -> extract -> slim -> cpio, twice in two output dirs: same bytes."""
    images = []
    for run in ("one", "two"):
        monkeypatch.setenv("TAILOR_OUT", str(tmp_path / run))
        (tmp_path / run / "cache").mkdir(parents=True)
        # share the .deb cache with the project so the packages are downloaded once
        cache = Path(PROJECT / "out" / "cache" / "debs")
        cache.mkdir(parents=True, exist_ok=True)
        (tmp_path / run / "cache" / "debs").symlink_to(cache)
        manifest = rootfs.build(recipe.find("hello"))
        assert {p["name"] for p in manifest.packages} >= {"hello", "libc6", "busybox-static"}
        assert manifest.command == "/usr/bin/hello"
        images.append((tmp_path / run / "rootfs" / "hello" / "rootfs.cpio").read_bytes())
        assert not (tmp_path / run / "rootfs" / "hello" / "work").exists()
    assert images[0] == images[1]


@pytest.mark.slow
def test_unknown_package_is_named(tmp_path):
    with pytest.raises(TailorError, match="package 'no-such-package-tailor' does not exist"):
        debian.closure(["no-such-package-tailor"])


def run_init(tmp_path, r, programs: dict[str, str], users=("svc",)) -> list[str]:
    """Run *r*'s generated /init for real, as PID 1 of new mount, PID, UTS and network namespaces
    chrooted into a tree with the host's static busybox and *programs* (path -> shell body, run by
    busybox sh; ``log`` appends a line to /log); return /log's lines. A reboot from the init ends
    only its own PID namespace."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("running an init in its own namespaces needs root and unshare")
    root = tmp_path / "root"
    for d in ("bin", "proc", "sys", "dev", "tmp", "run", "etc", "root", "usr/bin", "var/lib"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    (root / "bin/sh").symlink_to("busybox")  # as in every image the rootfs stage makes
    accounts = "".join(f"{u}:x:{1000 + i}:{1000 + i}::/:/bin/sh\n" for i, u in enumerate(users))
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n" + accounts)
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "log").write_text("")
    (root / "log").chmod(0o666)
    prelude = '#!/bin/busybox sh\nlog() { echo "$*" >> /log; }\n'
    for path, body in programs.items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_text(prelude + body + "\n")
        (root / path.lstrip("/")).chmod(0o755)
    (root / "init").write_text(rootfs.init_script(r, r.app.command))
    (root / "init").chmod(0o755)
    proc = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--uts", "--net", "--propagation", "private",
                           "chroot", str(root), "/init"], capture_output=True, text=True, timeout=60)
    assert "tailor-init: exec" in proc.stdout, proc.stdout + proc.stderr
    return (root / "log").read_text().splitlines()


def test_init_runs_setup_services_and_user(tmp_path):
    r = make_recipe(tmp_path, """\
app:
  command: /usr/bin/app
  args: [--port, "1"]
  user: svc
  setup:
    - {run: [/bin/busybox, mkdir, -p, /var/lib/app]}
    - {run: [/usr/bin/app-init, --dir, "/var/lib/my app"], user: svc}
  services:
    - {run: [/usr/bin/helper, "it's"], ready_path: /run/helper.sock, timeout: 7}
rootfs: {users: [svc]}
""")
    log = run_init(tmp_path, r, {
        "/usr/bin/app-init": 'log "app-init uid=$(/bin/busybox id -u) argc=$# 1=$1 2=$2"; '
                             '[ -d /var/lib/app ] && log "app-init sees /var/lib/app"',
        "/usr/bin/helper": 'log "helper argc=$# 1=$1"; /bin/busybox sleep 0.5; /bin/busybox touch /run/helper.sock; '
                           'log "helper ready"; exec /bin/busybox sleep 30',
        "/usr/bin/app": 'log "app uid=$(/bin/busybox id -u) pid=$$ argc=$# 1=$1 2=$2"; '
                        '[ -e /run/helper.sock ] && log "app sees the helper ready"',
    })
    assert log == [
        "app-init uid=1000 argc=2 1=--dir 2=/var/lib/my app",  # as svc, an argument with a space kept whole
        "app-init sees /var/lib/app",                         # setup step 1 ran before step 2
        "helper argc=1 1=it's",
        "helper ready",
        "app uid=1000 pid=1 argc=2 1=--port 2=1",             # the app as svc, exec'd as PID 1
        "app sees the helper ready",                          # only once the service's ready_path exists
    ]


def test_init_stops_at_a_failing_setup_step(tmp_path):
    r = make_recipe(tmp_path, """\
app:
  command: /usr/bin/app
  setup:
    - {run: [/usr/bin/step, one]}
    - {run: [/bin/busybox, "false"]}
    - {run: [/usr/bin/step, three]}
""")
    programs = {"/usr/bin/step": 'log "step $1"', "/usr/bin/app": 'log app'}
    with pytest.raises(AssertionError, match="setup step 2 failed"):
        run_init(tmp_path, r, programs)
    assert (tmp_path / "root/log").read_text().splitlines() == ["step one"]


def test_after_services_setup_steps_run_once_the_services_are_ready(tmp_path):
    r = make_recipe(tmp_path, """\
app:
  command: /usr/bin/app
  setup:
    - {run: [/usr/bin/step, early-1]}
    - {run: [/usr/bin/step, late], after_services: true}
    - {run: [/usr/bin/step, early-3]}
  services:
    - {run: [/usr/bin/db], ready_path: /run/db.sock}
""")
    assert [s.after_services for s in r.app.setup] == [False, True, False]
    log = run_init(tmp_path, r, {
        "/usr/bin/step": 'log "step $1 db-ready=$([ -e /run/db.sock ] && echo yes || echo no)"',
        "/usr/bin/db": '/bin/busybox sleep 0.3; /bin/busybox touch /run/db.sock; log "db ready"; '
                       'exec /bin/busybox sleep 30',
        "/usr/bin/app": 'log app',
    })
    assert log == ["step early-1 db-ready=no", "step early-3 db-ready=no", "db ready", "step late db-ready=yes",
                   "app"]


def test_add_users_appends_system_accounts(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    (tmp_path / "etc/group").write_text("root:x:0:\n")
    rootfs.add_users(tmp_path, ("postgres", "www-data", "postgres"))
    passwd = (tmp_path / "etc/passwd").read_text().splitlines()
    assert passwd[2:] == ["postgres:x:100:100:postgres:/nonexistent:/bin/false",
                          "www-data:x:101:101:www-data:/nonexistent:/bin/false"]
    assert (tmp_path / "etc/group").read_text().splitlines()[1:] == ["postgres:x:100:", "www-data:x:101:"]


def test_build_step_output_lands_in_the_image(tmp_path, pkg_tree, monkeypatch):
    src = tmp_path / "rootfs-dir"
    (src / "gen").mkdir(parents=True)
    (src / "gen" / "make.sh").write_text("mkdir -p \"$1/srv\" && echo built > \"$1/srv/out.txt\"\n")
    monkeypatch.setattr(rootfs, "ROOTFS_DIR", src)
    r = make_recipe(tmp_path, "rootfs:\n  overlay: []\n  build:\n    - {run: [sh, make.sh, '{stage}'], cwd: gen}\n"
                              "app: {command: ls}\n")
    rootfs.stage(r, pkg_tree, tmp_path / "image")
    assert (tmp_path / "image/srv/out.txt").read_text() == "built\n"
    bad = make_recipe(tmp_path, "rootfs:\n  overlay: []\n  build:\n    - {run: [sh, -c, 'echo broken >&2; exit 4'], "
                                "cwd: gen}\napp: {command: ls}\n", "bad")
    with pytest.raises(TailorError, match=r"rootfs.build.0: sh -c echo broken >&2; exit 4 failed with status 4: broken"):
        rootfs.stage(bad, pkg_tree, tmp_path / "image2")


def test_ext2_too_small_says_what_to_do(tmp_path, pkg_tree):
    """A rootfs.size_mib below the content: one line naming the recipe and key, the size that fits,
    and no image left behind."""
    stage = _staged(tmp_path, pkg_tree, "small", 1_000_000_000)
    (stage / "big").write_bytes(os.urandom(3 << 20))
    image = tmp_path / "small.img"
    with pytest.raises(TailorError) as e:
        rootfs.pack_ext2(stage, image, 1_000_000, "small", size_mib=1, origin="recipes/small.yaml")
    msg = str(e.value)
    assert msg.startswith("recipes/small.yaml: rootfs.size_mib: 1 MiB is too small for the image's content")
    assert "raise it to at least" in msg and "leave it out so it is computed" in msg
    assert "\n" not in msg
    assert not image.exists() and not list(tmp_path.glob("small.img*"))


def test_overlay_listing_sees_symlinks_dirs_and_modes(tmp_path, monkeypatch):
    """The rootfs task's digest changes when a symlink is added or retargeted, an empty directory
    appears or a mode changes: none of these change a file_dep's content."""
    top = tmp_path / "rootfs"
    (top / "app" / "etc").mkdir(parents=True)
    (top / "app" / "etc" / "conf").write_text("x\n")
    monkeypatch.setattr(rootfs, "ROOTFS_DIR", top)
    monkeypatch.setattr(build, "ROOTFS_DIR", top)
    r = _recipe_with_overlay(tmp_path, ["app"])
    seen = [build.overlay_listing(r)]
    (top / "app" / "etc" / "link").symlink_to("/etc/conf-that-exists-only-in-the-image")
    seen.append(build.overlay_listing(r))
    (top / "app" / "etc" / "link").unlink()
    (top / "app" / "etc" / "link").symlink_to("conf")
    seen.append(build.overlay_listing(r))
    (top / "app" / "var").mkdir()
    seen.append(build.overlay_listing(r))
    (top / "app" / "etc" / "conf").chmod(0o755)
    seen.append(build.overlay_listing(r))
    assert len(set(seen)) == len(seen)
    assert build.overlay_listing(r) == seen[-1]


def _recipe_with_overlay(tmp_path, names):
    import dataclasses

    r = make_recipe(tmp_path, "rootfs: {overlay: []}\napp: {command: ls}\n")
    return dataclasses.replace(r, rootfs=dataclasses.replace(r.rootfs, overlay=tuple(names)))


def test_ext2_image_has_inodes_for_the_files_an_app_creates(tmp_path, pkg_tree):
    """A database creates hundreds of files at first start: the image's spare inodes grow with its size
    (mariadb's install ran out of inodes, not bytes, with 64 spare)."""
    stage = _staged(tmp_path, pkg_tree, "db", 1_000_000_000)
    image = tmp_path / "db.img"
    rootfs.pack_ext2(stage, image, 1_000_000, "db", size_mib=64)
    head = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True).stdout
    free = int(re.search(r"^Free inodes:\s+(\d+)", head, re.M).group(1))
    assert free >= 64 * rootfs.SPARE_INODES_PER_MIB - 11  # ext2 reserves inodes 1-10 (and 11 is lost+found)


def _read_cmdline(script: str, tmp_path, cmdline: str) -> str:
    """The init's line that reads the kernel command line (once, with a shell builtin), reading *cmdline*."""
    line = next(ln for ln in script.splitlines() if ln.startswith("read -r tailor_cmdline 2>/dev/null </proc/cmdline"))
    fake = tmp_path / "cmdline"
    fake.write_text(cmdline + "\n")
    return line.replace("/proc/cmdline", str(fake))


def test_the_command_line_read_is_quiet_without_proc(tmp_path):
    """A kernel without PROC_FS has no /proc/cmdline: the init's read of it prints nothing on the console."""
    net = rootfs.init_script(make_recipe(tmp_path, "app: {command: x}\n", "q"), "/x")
    line = next(ln for ln in net.splitlines() if ln.startswith("read -r tailor_cmdline"))
    proc = subprocess.run(["busybox", "sh", "-c", line.replace("/proc/cmdline", str(tmp_path / "none")) +
                           '\necho "[$tailor_cmdline]"'], capture_output=True, text=True)
    assert proc.stderr == "" and proc.stdout == "[  ]\n"


@pytest.mark.parametrize("cmdline, paused", [("console=ttyS0 nokaslr tailor.trace", True),
                                             ("tailor.trace", True), ("console=ttyS0 quiet", False),
                                             ("tailor.traced=1", False)])
def test_init_pauses_before_the_exec_only_on_a_traced_boot(tmp_path, cmdline, paused):
    """Discovery marks the app's start in the trace from the console's exec line: a traced boot (kernel
    argument tailor.trace) pauses between that line and the exec, any other does not."""
    script = rootfs.init_script(make_recipe(tmp_path, "app: {command: x}\n", "p"), "/x")
    lines = script.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith('echo "tailor-init: exec "'))
    assert '*" tailor.trace "*) $bb usleep 300000;;' in lines[at + 1] and lines[at + 2].startswith("exec ")
    code = _read_cmdline(script, tmp_path, cmdline) + "\n" + lines[at + 1].replace("$bb usleep 300000", "echo paused")
    proc = subprocess.run(["sh", "-c", "bb=; " + code], capture_output=True, text=True)
    assert proc.returncode == 0 and ("paused" in proc.stdout) == paused


# --------------------------------------------------------------------------
# The snapshot reseed helper (rootfs/_tailor/reseed.c) and its init lines


@pytest.fixture
def helper(tmp_path, monkeypatch):
    """The compiled reseed helper, cached in a scratch out/."""
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    return rootfs.reseed_helper()


def test_reseed_helper_is_a_small_static_deterministic_executable(tmp_path, monkeypatch, helper):
    head = helper.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and head[4] == 2  # ELF64
    assert int.from_bytes(head[16:18], "little") == 2 and int.from_bytes(head[18:20], "little") == 62  # EXEC, x86-64
    info = elf.read_dynamic(helper)
    assert info.interp is None and info.needed == ()  # no PT_INTERP, no DT_NEEDED: static, no libc
    assert helper.stat().st_size < 16 * 1024 and os.access(helper, os.X_OK)
    # a second compile, in another out/, gives the same bytes
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out2"))
    again = rootfs.reseed_helper()
    assert again != helper and again.name == helper.name and again.read_bytes() == helper.read_bytes()
    # cached: a second call does not compile again
    again.write_bytes(b"cached")
    assert rootfs.reseed_helper().read_bytes() == b"cached"


def test_reseed_helper_compile_error_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    bad = tmp_path / "reseed.c"
    bad.write_text("int start(void) { return nope; }\n")
    monkeypatch.setattr(rootfs, "RESEED_SOURCE", bad)
    with pytest.raises(TailorError) as e:
        rootfs.reseed_helper()
    assert str(e.value).startswith(f"{bad}: gcc cannot compile it: ") and "nope" in str(e.value)
    assert "\n" not in str(e.value) and not list((tmp_path / "out/cache/reseed").iterdir())


def test_only_a_network_image_gets_the_helper(tmp_path, monkeypatch, pkg_tree, helper):
    net = make_recipe(tmp_path, "rootfs: {overlay: []}\napp: {command: ls, network: true}\n", "net")
    rootfs.stage(net, pkg_tree, tmp_path / "net")
    staged = tmp_path / "net" / rootfs.RESEED_GUEST.lstrip("/")
    assert staged.read_bytes() == helper.read_bytes() and staged.stat().st_mode & 0o7777 == 0o755
    assert staged.parent.stat().st_mode & 0o7777 == 0o755
    plain = make_recipe(tmp_path, "rootfs: {overlay: []}\napp: {command: ls}\n", "plain")
    rootfs.stage(plain, pkg_tree, tmp_path / "plain")
    assert not (tmp_path / "plain/.tailor").exists()
    # a change of the helper's source rebuilds a network recipe's image
    deps = {r.name: next(build.rootfs_tasks([r]))["file_dep"] for r in (net, plain)}
    assert str(build.RESEED_SOURCE) in deps["net"] and str(build.RESEED_SOURCE) not in deps["plain"]
    assert build.RESEED_SOURCE == rootfs.RESEED_SOURCE


def _reseed_block(script: str) -> list[str]:
    """The init's lines that start the reseed helper: from the command line's read to the exec echo."""
    lines = script.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith('echo "tailor-init: exec "'))
    start = next((i for i, ln in enumerate(lines) if ln.startswith("case ${tailor_reseed") and i < at), at)
    return lines[start:at]


def test_init_starts_the_reseed_helper_only_for_network_recipes(tmp_path):
    net = rootfs.init_script(make_recipe(tmp_path, "app: {command: x, network: true}\n", "n"), "/x")
    plain = rootfs.init_script(make_recipe(tmp_path, "app: {command: x}\n", "p"), "/x")
    block = _reseed_block(net)
    assert block and block[-1] == "unset tailor_reseed"  # the app does not inherit it
    assert any('/.tailor/reseed "$tailor_reseed" &' in ln for ln in block)
    assert "reseed" not in plain and _reseed_block(plain) == []


@pytest.mark.parametrize("value, port", [
    ("4242", "4242"), ("7", "7"), ("65535", "65535"), (None, None), ("42x", None), ("", None), ("-5", None),
    ("4 2", None),
])
def test_init_reseed_lines_take_the_port_from_the_kernel_given_environment(tmp_path, value, port):
    """The init's lines under sh with ``tailor_reseed`` set as the kernel sets it (an unknown ``name=value``
    of the command line becomes init's environment) and ``echo`` for the helper."""
    net = rootfs.init_script(make_recipe(tmp_path, "app: {command: x, network: true}\n", "n"), "/x")
    block = "\n".join(_reseed_block(net)).replace("/.tailor/reseed", "echo helper")
    env = {"PATH": os.environ["PATH"]} | ({"tailor_reseed": value} if value is not None else {})
    proc = subprocess.run(["sh", "-c", block + '\nwait; echo "left: ${tailor_reseed-unset}"'],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    want = {f"helper {port}", f"tailor-init: reseed helper on port {port}"} if port else set()
    assert set(proc.stdout.splitlines()) == want | {"left: unset"}


def _ask(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send *data* to the helper on *port*, close the sending side, return its whole reply."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(64):
            reply += chunk
    return reply


def test_reseed_helper_serves_clients_in_a_loop(helper):
    """The helper run on the host as a normal process: with CAP_SYS_ADMIN the host's crng is fed and
    reseeded; without it both ioctls fail with EPERM (1). A client's error never ends the loop."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caps = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("CapEff:"))
    admin = os.geteuid() == 0 and int(caps.split()[1], 16) >> 21 & 1  # CAP_SYS_ADMIN
    want = b"reseeded\n" if admin else b"error 1\n"
    proc = subprocess.Popen([str(helper), str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()  # a client that sends nothing
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.05)
        assert _ask(port, os.urandom(32)) == want
        assert _ask(port, b"tiny") == b"short\n"
        assert _ask(port, os.urandom(32)) == want  # the second client is served too
        assert _ask(port, os.urandom(64)) == want
        assert _ask(port, os.urandom(200)) == want  # read 64, the rest dropped
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_reseed_helper_refuses_a_bad_port(helper):
    for args in ([], ["0"], ["65536"], ["80x"]):
        proc = subprocess.run([str(helper)] + args, capture_output=True, text=True, timeout=10)
        assert proc.returncode == 1 and "usage: reseed PORT" in proc.stderr


def test_init_needs_what_the_generated_init_uses(tmp_path):
    """The options the init itself needs (kept untried by discovery): none for a plain app, the network
    set-up's for a network app, /proc for a wait on a service's port (busybox netstat), not for a path."""
    plain = make_recipe(tmp_path, "app: {command: x}\n")
    assert rootfs.init_needs(plain) == {}
    net = make_recipe(tmp_path, "app: {command: x, network: true}\n", "n")
    assert list(rootfs.init_needs(net)) == list(rootfs.NETWORK_NEEDS)
    port = make_recipe(tmp_path, "app: {command: x, network: true, services: [{run: [/s], ready_port: 8080}]}\n", "p")
    assert list(rootfs.init_needs(port)) == [*rootfs.NETWORK_NEEDS, *rootfs.READY_PORT_NEEDS]
    assert "netstat -ltn" in rootfs.init_script(port, "/x") and "/proc/net/tcp" in rootfs.init_needs(port)["PROC_FS"]
    path = make_recipe(tmp_path, "app: {command: x, services: [{run: [/s], ready_path: /run/s.sock}]}\n", "q")
    assert rootfs.init_needs(path) == {} and "netstat" not in rootfs.init_script(path, "/x")
