"""arm64 guests (issue 26): the ``arch`` recipe key, the cross kbuild command, the Kconfig environment,
tailor's own apt state for a foreign architecture, the ELF reader on aarch64 objects and qemu's virt
command line; and one slow test that builds hello-arm64 through doit (a real cross-compiled kernel,
a root of Debian's arm64 packages) and boots it under qemu-system-aarch64 -M virt (TCG).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, project_copy, run_doit
from tailor import config, debian, elf, kconfig, kernel, qemu, recipe, schema, toolchain
from tailor.errors import TailorError
from tailor.kinds import Arch, BootMethod

CROSS_GCC = "aarch64-linux-gnu-gcc"


def write(tmp_path: Path, text: str, name: str = "app.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------
# The recipe key


def test_arch_is_a_schema_key_defaulting_to_x86_64():
    assert schema.KEY["arch"].default == "x86_64"
    assert "`arch`" in schema.key_reference()
    hello = recipe.find("hello")
    assert hello.arch is Arch.X86_64


def test_arm64_recipe_takes_its_fragments_from_base_configs_arm64():
    r = recipe.find("hello-arm64")
    assert r.arch is Arch.ARM64 and r.general is False
    assert r.fragment_paths() == [ROOT / "base_configs" / "arm64" / "lupine-base.config"]
    assert all(p.is_file() for p in r.fragment_paths())


@pytest.mark.parametrize("value", ["riscv64", "arm", "aarch64", 64])
def test_an_unsupported_arch_is_one_line_listing_the_supported_ones(tmp_path, value):
    path = write(tmp_path, f"arch: {value}\napp: {{command: /usr/bin/hello}}\n")
    with pytest.raises(TailorError) as e:
        recipe.load(path)
    assert str(e.value).endswith(f"app.yaml:1: arch: {value!r} is not a supported architecture; use x86_64 or arm64")
    assert "\n" not in str(e.value)


def test_x86_recipes_keep_their_digests_and_arm64_ones_differ(tmp_path):
    text = "app: {command: /usr/bin/hello}\n"
    plain = recipe.load(write(tmp_path, text, "a.yaml"))
    explicit = recipe.load(write(tmp_path, "arch: x86_64\n" + text, "b.yaml"))
    arm = recipe.load(write(tmp_path, "arch: arm64\n" + text, "c.yaml"))
    assert plain.digests == explicit.digests
    assert plain.digests["kernel"] == recipe.model_digest(plain.kernel)  # as before the key existed
    for section in ("kernel", "rootfs", "test"):
        assert arm.digests[section] != plain.digests[section]
    assert arm.digests["app"] == plain.digests["app"]


def test_an_arm64_recipe_takes_an_oci_image(tmp_path):
    """The image's linux/arm64 variant is chosen when the root is built (tests/test_image.py)."""
    r = recipe.load(write(tmp_path, "arch: arm64\nrootfs: {image: 'docker://redis:7'}\n"))
    assert r.arch is Arch.ARM64 and r.rootfs.image == "docker://redis:7"


# --------------------------------------------------------------------------
# The kernel: make command, toolchain, Kconfig environment


def test_x86_make_command_is_unchanged(tmp_path):
    cmd, env = kernel.make_command(tmp_path / "src", tmp_path / "obj", ["bzImage"], 2)
    assert "ARCH=x86_64" in cmd and not any(a.startswith("CROSS_COMPILE=") for a in cmd)
    assert cmd[-2:] == ["-j2", "bzImage"]
    if shutil.which("ccache"):
        assert "CC=ccache gcc" in cmd


def test_arm64_make_command_cross_compiles(tmp_path):
    cmd, env = kernel.make_command(tmp_path / "src", tmp_path / "obj", ["Image"], 2, arch="arm64")
    assert "ARCH=arm64" in cmd and "CROSS_COMPILE=aarch64-linux-gnu-" in cmd
    assert cmd[-1] == "Image" and "ARCH" not in {k for k in env if env[k] == "x86_64"}
    if shutil.which("ccache"):
        assert "CC=ccache aarch64-linux-gnu-gcc" in cmd and "HOSTCC=ccache gcc" in cmd
    assert env["KBUILD_BUILD_USER"] == "tailor" and env["TZ"] == "UTC"


def test_artefacts_per_arch():
    assert kernel.artefacts() == kernel.ARTEFACTS
    assert kernel.artefacts("arm64") == {"Image": "arch/arm64/boot/Image", "vmlinux": "vmlinux",
                                         "System.map": "System.map"}


def test_the_cross_toolchain_is_part_of_the_kernel_identity():
    tools = toolchain.kernel_tools("arm64")
    assert tools["gcc"][0] == "aarch64-linux-gnu-gcc" and tools["binutils"][0] == "aarch64-linux-gnu-ld"
    assert toolchain.kernel_tools() == toolchain.KERNEL_TOOLS
    fake_x86 = {"gcc": "gcc (Debian 12.2.0-14) 12.2.0", "binutils": "GNU ld 2.40"}
    fake_arm = {"gcc": "aarch64-linux-gnu-gcc (Debian 12.2.0-14) 12.2.0", "binutils": "GNU ld 2.40"}
    assert kernel.kernel_identity("c" * 64, fake_x86) != kernel.kernel_identity("c" * 64, fake_arm)
    assert kernel.kernel_identity("c" * 64, fake_x86) == kernel.kernel_identity("c" * 64, fake_x86, arch="arm64")


def test_kconfig_environment_per_arch(tmp_path):
    (tmp_path / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 0\n")
    x86 = kconfig.kbuild_env(tmp_path)
    assert (x86["ARCH"], x86["SRCARCH"], x86["CROSS_COMPILE"], x86["LD"]) == ("x86_64", "x86", "", "ld")
    arm = kconfig.kbuild_env(tmp_path, "arm64")
    assert (arm["ARCH"], arm["SRCARCH"], arm["CROSS_COMPILE"]) == ("arm64", "arm64", "aarch64-linux-gnu-")
    assert arm["CC"] == "aarch64-linux-gnu-gcc" and arm["LD"] == "aarch64-linux-gnu-ld"
    assert arm["HOSTCC"] == "gcc"
    with pytest.raises(TailorError, match="use one of x86_64, arm64"):
        kconfig.kbuild_env(tmp_path, "riscv64")


# --------------------------------------------------------------------------
# apt for a foreign architecture


def test_apt_options_for_the_host_are_unchanged():
    assert debian.apt_options() == debian.apt_options(debian.host_arch())
    assert not any("Architecture" in o or "Lists" in o for o in debian.apt_options())


def test_apt_options_for_arm64_use_tailors_own_state(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    monkeypatch.setattr(debian, "host_arch", lambda: "amd64")
    opts = debian.apt_options("arm64")
    values = dict(o.split("=", 1) for o in opts if o != "-o")
    state = tmp_path / "out" / "cache" / "apt" / "arm64"
    assert values["APT::Architecture"] == "arm64" and values["APT::Architectures::"] == "arm64"
    assert values["Dir::State::Lists"] == str(state / "lists") and values["Dir::Cache"] == str(state / "cache")
    assert values["Dir::State::status"] == "/dev/null"  # the sandbox rule holds for a foreign architecture too


def test_foreign_lists_are_fetched_once_and_again_when_the_hosts_are_newer(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    monkeypatch.setattr(debian, "host_arch", lambda: "amd64")
    runs = []

    def fake_apt(tool, command, args, cwd=None, arch=None):
        runs.append((tool, command, arch))
        return subprocess.CompletedProcess([tool], 0, "", "")

    host_time = [1000.0]
    monkeypatch.setattr(debian, "_apt", fake_apt)
    monkeypatch.setattr(debian, "_host_lists_time", lambda: host_time[0])
    lists = debian.foreign_lists("arm64")
    debian.foreign_lists("arm64")
    assert runs == [("apt-get", "update", "arm64")]
    assert lists == tmp_path / "out" / "cache" / "apt" / "arm64" / "lists" and (lists / "partial").is_dir()
    host_time[0] = 4e9  # the host ran apt-get update since
    debian.foreign_lists("arm64")
    assert len(runs) == 2


# --------------------------------------------------------------------------
# The ELF reader on aarch64


@pytest.fixture(scope="module")
def aarch64_program(tmp_path_factory) -> Path:
    """A small dynamically linked aarch64 program, made with the cross gcc (setup.sh installs it)."""
    if shutil.which(CROSS_GCC) is None:
        pytest.skip(f"{CROSS_GCC} is not installed (./setup.sh installs gcc-aarch64-linux-gnu)")
    d = tmp_path_factory.mktemp("aarch64")
    (d / "p.c").write_text("int puts(const char *s);\nint main(void) { return puts(\"hi\"); }\n")
    obj = d / "p.o"
    subprocess.run([CROSS_GCC, "-c", "-o", str(obj), str(d / "p.c")], check=True)
    # Link by hand against a stand-in libc.so.6, so no arm64 libc6-dev is needed.
    (d / "libc.c").write_text("int puts(const char *s) { return 0; }\n")
    libc = d / "libc.so.6"
    subprocess.run([CROSS_GCC, "-shared", "-nostdlib", "-Wl,-soname,libc.so.6", "-o", str(libc), str(d / "libc.c")],
                   check=True)
    prog = d / "prog"
    subprocess.run([CROSS_GCC, "-nostdlib", "-Wl,--no-as-needed", "-Wl,-e,main", "-Wl,--dynamic-linker=/lib/ld-linux-aarch64.so.1",
                    "-o", str(prog), str(obj), str(libc)], check=True)
    return prog


def test_the_elf_reader_reads_an_aarch64_program(aarch64_program):
    info = elf.read_dynamic(aarch64_program)
    assert info.machine == Arch.ARM64.elf_machine == 183 and info.elf_class == 64
    assert info.interp == "/lib/ld-linux-aarch64.so.1"
    assert info.needed == ("libc.so.6",)


def test_the_library_closure_finds_the_aarch64_loader_and_libc(aarch64_program, tmp_path):
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "lib/aarch64-linux-gnu").mkdir(parents=True)
    shutil.copy(aarch64_program, root / "usr/bin/prog")
    libc = aarch64_program.parent / "libc.so.6"
    shutil.copy(libc, root / "lib/aarch64-linux-gnu/libc.so.6")
    shutil.copy(libc, root / "lib/aarch64-linux-gnu/ld-linux-aarch64.so.1")  # a stand-in loader
    (root / "lib/ld-linux-aarch64.so.1").symlink_to("aarch64-linux-gnu/ld-linux-aarch64.so.1")
    # An x86_64 libc.so.6 earlier in the search order (ld.so.conf) is skipped (wrong machine), as the loader does.
    if shutil.which("gcc"):
        (root / "opt/x86").mkdir(parents=True)
        (root / "etc").mkdir()
        (root / "etc/ld.so.conf").write_text("/opt/x86\n")
        (tmp_path / "x.c").write_text("int puts(const char *s) { return 0; }\n")
        subprocess.run(["gcc", "-shared", "-nostdlib", "-o", str(root / "opt/x86/libc.so.6"), str(tmp_path / "x.c")],
                       check=True)
    assert elf.library_closure(root, ["/usr/bin/prog"]) == [
        "/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1", "/lib/aarch64-linux-gnu/libc.so.6",
        "/lib/ld-linux-aarch64.so.1", "/usr/bin/prog"]
    assert elf.library_dirs(183)[:2] == ("/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu")
    assert elf.library_dirs(62) == elf.DEFAULT_LIBRARY_DIRS


# --------------------------------------------------------------------------
# qemu


def test_qemu_command_for_arm64_uses_virt_and_the_pl011(tmp_path):
    cmd = qemu.qemu_command(tmp_path / "Image", tmp_path / "root.ext2", "ext2", 128, "", "tcg",
                            [(5555, 6379)], True, arch="arm64")
    assert cmd[:3] == ["qemu-system-aarch64", "-M", "virt"]
    assert cmd[cmd.index("-cpu") + 1] == "max" and cmd[cmd.index("-accel") + 1] == "tcg"
    assert "virtio-blk-device,drive=root" in cmd and "virtio-net-device,netdev=n0" in cmd
    assert cmd[cmd.index("-append") + 1] == "console=ttyAMA0 panic=-1 root=/dev/vda rw init=/init"
    x86 = qemu.qemu_command(tmp_path / "vmlinux", tmp_path / "root.ext2", "ext2", 128, "", "tcg", None, False)
    assert x86[:3] == ["qemu-system-x86_64", "-M", qemu.MACHINE]


def test_an_arm64_guest_runs_under_tcg_on_an_x86_host(monkeypatch):
    monkeypatch.setattr(qemu, "host_arch", lambda: Arch.X86_64)
    assert qemu.detect_accel("kvm", arch="arm64") == "tcg"


def test_boot_method_of_an_arm64_image(tmp_path):
    image = tmp_path / "Image"
    image.write_bytes(b"\0" * 0x38 + b"ARM\x64" + b"\0" * 8)
    assert qemu.boot_method(image) is BootMethod.IMAGE
    (tmp_path / "bzImage").write_bytes(b"\0" * 64)
    assert qemu.boot_method(tmp_path / "bzImage") is BootMethod.BZIMAGE


# --------------------------------------------------------------------------
# The real thing (slow): hello-arm64 built through doit and booted


@pytest.mark.slow
def test_hello_arm64_builds_and_boots(tmp_path_factory):
    """doit build:hello-arm64 in a project copy whose out/ shares the kernel builds and caches with the
    project's: a real kernel cross-compiled from arm64/lupine-base (once: later runs reuse it), a cpio
    root of Debian's arm64 hello, libc6 and busybox-static, booted under qemu-system-aarch64 -M virt
    -cpu max (TCG) until hello's greeting shows."""
    for tool in (CROSS_GCC, "qemu-system-aarch64"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (./setup.sh installs it)")
    project = project_copy(tmp_path_factory.mktemp("arm64-project") / "tailor")
    proc = run_doit(project, "build:hello-arm64")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = project / "out"
    pointer = json.loads((out / "kernels" / "hello-arm64.json").read_text())
    assert Path(pointer["bzImage"]).name == "Image" and "Image" in pointer["sizes"]
    build = json.loads((Path(pointer["dir"]) / "kernel.json").read_text())
    assert build["toolchain"]["gcc"]["version"].startswith("aarch64-linux-gnu-gcc")
    assert "ARCH=arm64" in build["make"] and "CROSS_COMPILE=aarch64-linux-gnu-" in build["make"]
    config = (Path(pointer["dir"]) / "config").read_text()
    assert "CONFIG_ARM64=y" in config and "CONFIG_SERIAL_AMBA_PL011_CONSOLE=y" in config
    rootfs = json.loads((out / "rootfs" / "hello-arm64" / "rootfs.json").read_text())
    assert {p["arch"] for p in rootfs["packages"]} <= {"arm64", "all"}
    assert "busybox-static" in {p["name"] for p in rootfs["packages"]}
    result = json.loads((out / "boot" / "hello-arm64" / "result.json").read_text())
    assert result["pass"] is True and result["arch"] == "arm64" and result["boot_method"] == "image"
    assert result["accel"] == "tcg" and result["qemu"][:3] == ["qemu-system-aarch64", "-M", "virt"]
    console = (out / "boot" / "hello-arm64" / "console.log").read_text()
    assert "Hello, world!" in console and "Machine model: linux,dummy-virt" in console


def test_what_does_not_take_arm64_yet_says_so_in_one_line():
    from tailor import run, tasks

    arm = recipe.find("hello-arm64")
    x86, other = tasks.by_arch([recipe.find("hello"), arm])
    assert [r.name for r in x86] == ["hello"] and other == [arm]
    (task,) = tasks.not_yet_tasks("slim", [arm])
    assert task["name"] == "hello-arm64" and task["basename"] == "slim"
    with pytest.raises(TailorError, match=r"^hello-arm64: tailor run does not run arm64 VMs yet"):
        run.plan(arm)


def test_the_firecracker_fragment_resolves_strictly_on_arm64(linux_tree, tmp_path):
    """base_configs/arm64/firecracker.config (the 8250 console of Firecracker's aarch64 machine) resolves
    with every symbol as asked on top of arm64/lupine-base, beside the PL011 that qemu's virt uses."""
    src = (ROOT / "recipes" / "hello-arm64.yaml").read_text()
    path = tmp_path / "fc-arm64.yaml"
    path.write_text(src.replace("base: [lupine-base]", "base: [lupine-base, firecracker]"))
    result = config.configure(recipe.load(path), srctree=linux_tree, outdir=tmp_path / "out")
    asked = {o.name: o for o in result.outcomes if o.origin.startswith("arm64/firecracker.config")}
    assert set(asked) == {"SERIAL_8250", "SERIAL_8250_CONSOLE", "SERIAL_OF_PLATFORM"}
    assert all(o.ok and o.resolved == "y" for o in asked.values())
    assert "CONFIG_SERIAL_AMBA_PL011_CONSOLE=y" in result.config and "CONFIG_SERIAL_8250_CONSOLE=y" in result.config
