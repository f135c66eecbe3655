"""The Kata baseline's config inputs (no kernel build, no merge_config.sh run).

A fake reference folder in Kata's layout and the fake Kconfig tree of conftest prove which
fragments are merged and in which order, which requested symbols the kernel lacks, what
merge_config.sh's "not in final" lines become, and the outcome when the folder is absent.
The real merge (kconfig only, seconds) was run by hand on the pinned 6.1 source; see README.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tailor import baseline, kata
from tailor.tasks import study
from tailor.errors import TailorError
from tailor.kconfig import load_tree


def _kata_folder(root: Path) -> Path:
    """Kata's layout: common/ (one fragment tagged !x86_64), x86_64/ with a subfolder that is not taken."""
    d = root / "kata-guest-config"
    (d / "common").mkdir(parents=True)
    (d / "x86_64" / "confidential").mkdir(parents=True)
    (d / "common" / "network.conf").write_text("CONFIG_NET=y\nCONFIG_INET=y\n")
    (d / "common" / "base.conf").write_text("# base\nCONFIG_MODULES=y\n# CONFIG_SHINY_NEW_THING is not set\n")
    (d / "common" / "s390.conf").write_text("# !x86_64\nCONFIG_NOT_FOR_X86=y\n")
    (d / "common" / "notes.txt").write_text("CONFIG_NOT_A_FRAGMENT=y\n")
    (d / "x86_64" / "virtio.conf").write_text("CONFIG_VIRTIO_MMIO=y\nCONFIG_VIRTIO_NET=y\nCONFIG_NET=n\n")
    (d / "x86_64" / "acpi.conf").write_text("CONFIG_FUTURE_ACPI=y\n")
    (d / "x86_64" / "confidential" / "tdx.conf").write_text("CONFIG_TDX_ONLY=y\n")
    return d


def test_fragments_are_kata_selection_and_order(tmp_path):
    d = _kata_folder(tmp_path)
    got = [str(p.relative_to(d)) for p in kata.fragments(d)]
    assert got == ["common/base.conf", "common/network.conf", "x86_64/acpi.conf", "x86_64/virtio.conf"]


def test_requested_symbols_keep_first_seen_order(tmp_path):
    d = _kata_folder(tmp_path)
    assert kata.requested_symbols(kata.fragments(d)) == [
        "MODULES", "SHINY_NEW_THING", "NET", "INET", "FUTURE_ACPI", "VIRTIO_MMIO", "VIRTIO_NET"]


def test_symbols_the_kernel_lacks_are_reported(tmp_path, fake_tree):
    d = _kata_folder(tmp_path)
    missing = kata.missing_symbols(kata.fragments(d), load_tree(fake_tree).names)
    assert missing == ["FUTURE_ACPI", "SHINY_NEW_THING"]
    line = kata.summary(missing, ["FUTURE_ACPI"])
    assert "\n" not in line
    assert line.startswith("2 fragment symbols not in this kernel (FUTURE_ACPI, SHINY_NEW_THING)")
    assert "1 requested values not in the final .config" in line


def test_not_in_final_reads_merge_config_output():
    out = ("Merging a.conf\nValue requested for CONFIG_FUTURE_ACPI not in final .config\n"
           "Requested value:  CONFIG_FUTURE_ACPI=y\nActual value:     \n\n"
           "Value requested for CONFIG_BLK_DEV_FOO not in final .config\n")
    assert kata.not_in_final(out) == ["BLK_DEV_FOO", "FUTURE_ACPI"]


def test_folder_without_fragment_subfolders_is_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TailorError) as e:
        kata.fragments(tmp_path / "empty")
    assert "\n" not in str(e.value) and "common/ and x86_64/" in str(e.value)


def test_missing_reference_folder_is_not_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(kata, "KATA_CONFIG_DIR", tmp_path / "absent")
    assert not baseline.available("kata")
    assert "kata" not in [t["name"] for t in study.baseline_tasks()]
    with pytest.raises(TailorError) as e:
        baseline.build_baseline("kata")
    msg = str(e.value)
    assert "\n" not in msg and "kata" in msg and "not measured" in msg and "absent" in msg


def test_present_reference_folder_gives_a_task_on_every_fragment(tmp_path, monkeypatch):
    d = _kata_folder(tmp_path)
    monkeypatch.setattr(kata, "KATA_CONFIG_DIR", d)
    task = next(t for t in study.baseline_tasks() if t["name"] == "kata")
    deps = task["file_dep"]
    assert str(d / "common" / "base.conf") in deps and str(d / "x86_64" / "virtio.conf") in deps
    assert task["targets"] == [str(baseline.meta_path("kata"))]
