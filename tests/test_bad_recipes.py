"""The corpus of bad recipes in tests/bad_recipes/: each must fail with its exact first error line.

Each file's first line is ``# expect: <first line of the error>`` (``{version}``
stands for the kernel version). An optional second line ``# stage: <stage>``
says which command runs it (default ``config``):

========  =========================================  ==========================================
stage     command                                    out/ of the test
========  =========================================  ==========================================
config    ``python -m tailor config FILE``           shares the project's unpacked source
source    ``python -m tailor kernel-source FILE``    empty (the fake tarballs unpack there)
rootfs    ``python -m tailor rootfs FILE``           shares the .deb and OCI image caches
========  =========================================  ==========================================

The recipe is run through the real command, from the project directory: it
must exit 1, print the expected line first, no traceback, and create or
change no file in out/ (a kernel source stage may unpack the pinned tarball
itself, which recipes share, but never a patched tree).
"""

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from tailor.recipe import load

ROOT = Path(__file__).resolve().parent.parent
CORPUS = sorted((Path(__file__).parent / "bad_recipes").glob("*.yaml"))
COMMANDS = {"config": "config", "source": "kernel-source", "rootfs": "rootfs"}


def headers(path: Path) -> tuple[str, str]:
    """(expected first error line, stage) from the file's header comments."""
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    assert lines and lines[0].startswith("# expect: "), f"{path.name}: first line must be '# expect: ...'"
    stage = "config"
    if len(lines) > 1 and lines[1].startswith("# stage: "):
        stage = lines[1][len("# stage: "):].strip()
        assert stage in COMMANDS, f"{path.name}: unknown stage {stage!r}"
    return lines[0][len("# expect: "):], stage


def snapshot(out: Path) -> dict[str, str]:
    """Every file and symlink under *out* (symlinks not followed) -> its content hash or link text."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(out):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(out))
            if p.is_symlink():
                found[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                found[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def shared_out(tmp_path: Path, linux_tree: Path | None, debs: bool) -> Path:
    """A fresh out/ that shares the project's unpacked source and/or .deb cache through symlinks."""
    out = tmp_path / "out"
    out.mkdir()
    if linux_tree is not None:
        (out / "src").symlink_to(linux_tree.parent.parent)
    if debs:  # the .deb cache, the OCI image cache and tailor's own apt lists of arm64 (caches, not outputs)
        (out / "cache").mkdir()
        for name in ("debs", "oci", "apt"):
            real = ROOT / "out" / "cache" / name
            real.mkdir(parents=True, exist_ok=True)
            (out / "cache" / name).symlink_to(real)
    return out


def test_corpus_is_big_enough():
    assert len(CORPUS) >= 30
    stages = [headers(p)[1] for p in CORPUS]
    assert stages.count("source") >= 3 and stages.count("rootfs") >= 3


def check_outcome(path, ktree, out, before, returncode, stderr):
    want, stage = headers(path)
    want = want.format(version=ktree.version)
    # Progress lines (e.g. "tailor: downloading ...") may come first; the error is one line.
    errors = [line for line in stderr.splitlines() if line.startswith("tailor: error: ")]
    assert returncode == 1, stderr
    assert errors and errors[0] == f"tailor: error: {want}", stderr
    assert "Traceback" not in stderr
    after = snapshot(out)
    if stage == "source":
        # The pinned tarball itself may be unpacked (it is shared by sha256), nothing else.
        pinned = load(path).kernel.source.sha256[:16]
        assert not [k for k in after if ".unpacking" in k or ".patching" in k], "leftover scratch trees"
        after = {k: v for k, v in after.items()
                 if not k.startswith(f"src/{pinned}/") and not (k.startswith("src/.") and k.endswith(".lock"))}
    assert after == before, "a failing recipe must not create or change outputs"
    assert not (out / "config").exists() and not list(out.glob("rootfs/*/rootfs.*"))


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_bad_recipe_fails_clearly(path, ktree, linux_tree, tmp_path, monkeypatch, capsys):
    """Each case through the command's own entry point, in this process (the Kconfig tree is parsed once)."""
    from tailor.__main__ import main

    stage = headers(path)[1]
    out = shared_out(tmp_path, None if stage == "source" else linux_tree, debs=stage == "rootfs")
    before = snapshot(out)
    monkeypatch.setenv("TAILOR_OUT", str(out))
    monkeypatch.chdir(ROOT)
    capsys.readouterr()
    returncode = main([COMMANDS[stage], str(path.relative_to(ROOT))])
    check_outcome(path, ktree, out, before, returncode, capsys.readouterr().err)


@pytest.mark.parametrize("name", ["unknown-symbol", "deps-off", "yaml-syntax", "rootfs-entrypoint-not-in-packages"])
def test_bad_recipe_through_the_real_command(name, run_tailor, ktree, linux_tree, tmp_path):
    """A few cases as separate processes: the exit status and stderr a user really sees."""
    path = Path(__file__).parent / "bad_recipes" / f"{name}.yaml"
    stage = headers(path)[1]
    out = shared_out(tmp_path, None if stage == "source" else linux_tree, debs=stage == "rootfs")
    before = snapshot(out)
    proc = run_tailor(COMMANDS[stage], str(path.relative_to(ROOT)), env={"TAILOR_OUT": str(out)})
    check_outcome(path, ktree, out, before, proc.returncode, proc.stderr)


def test_overlay_symlink_out_of_the_rootfs_end_to_end(run_tailor, tmp_path):
    """An overlay (a directory under rootfs/) holding a symlink that climbs out of it is refused.

    Recipes cannot name a directory outside rootfs/ (``..`` is refused when the
    recipe loads), so this runs in a copy of the project with such an overlay.
    """
    project = tmp_path / "project"
    project.mkdir()
    for name in ("tailor", "templates", "rootfs", "recipes", "base_configs"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "kernel-sources.lock", project / "kernel-sources.lock")
    evil = project / "rootfs" / "evil" / "etc"
    evil.mkdir(parents=True)
    (evil / "passwd").symlink_to("../../../../../etc/passwd")
    (project / "recipes" / "evil.yaml").write_text(
        "rootfs:\n  packages: [hello]\n  overlay: [common, evil]\napp:\n  command: /usr/bin/hello\n")
    out = shared_out(tmp_path, None, debs=True)
    before = snapshot(out)
    proc = run_tailor("rootfs", "evil", cwd=project, env={"TAILOR_OUT": str(out)})
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[0] == ("tailor: error: rootfs/evil/etc/passwd: symlink to "
                                           "'../../../../../etc/passwd' points outside the rootfs; "
                                           "use a path inside it"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(out) == before
