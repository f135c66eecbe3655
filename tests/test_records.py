"""Typed, versioned records (tailor/records.py): result.json round-trips, and a changed file is refused by name."""

from __future__ import annotations

import json

import pytest

from tailor import records
from tailor.errors import TailorError

RESULT = {
    "app": "hello", "variant": "specific", "pass": True, "reason": "", "accel": "tcg", "fallback_from_kvm": False,
    "kvm_failure": "", "time_to_init_s": 0.7, "time_to_ready_s": None,
    "probe": {"type": "none", "detail": ""}, "console": "console.log", "qemu": ["qemu-system-x86_64"],
    "qemu_stderr": "", "memory": 96, "kernel": "/k/vmlinux", "image": "/r/rootfs.cpio", "boot_method": "pvh",
    "crng_init_s": 0.41, "app_exec_s": None, "entropy_before_app": None,
}


def test_boot_result_round_trips_with_its_format(tmp_path):
    written = records.save_boot_result(tmp_path / "result.json", RESULT)
    assert written == {**RESULT, "format": records.BootResult.FORMAT}
    assert json.loads((tmp_path / "result.json").read_text()) == written
    loaded = records.load_boot_result(tmp_path / "result.json")
    assert loaded.passed is True and loaded.time_to_ready_s is None and loaded.dump() == written


@pytest.mark.parametrize("change, says", [
    (lambda d: d.pop("format"), "no 'format' key"),
    (lambda d: d.update(format="0"), "format '0', this tailor reads format '2'"),
    (lambda d: d.pop("memory"), "missing key 'memory'; "),
    (lambda d: d.update(ready_s=d.pop("time_to_ready_s")), "missing key 'time_to_ready_s' (found unknown key "
                                                           "'ready_s': renamed?)"),
    (lambda d: d.update(extra=1), "unknown key 'extra'"),
    (lambda d: d.update({"pass": "yes"}), "key 'pass' is str, expected bool"),
    (lambda d: d.update(memory=True), "key 'memory' is bool, expected int"),
    (lambda d: d.update(entropy_before_app="yes"), "key 'entropy_before_app' is str, expected bool or NoneType"),
])
def test_a_changed_result_is_refused_naming_the_file_and_key(tmp_path, change, says):
    data = {**RESULT, "format": records.BootResult.FORMAT}
    change(data)
    (tmp_path / "result.json").write_text(json.dumps(data))
    with pytest.raises(TailorError) as e:
        records.load_boot_result(tmp_path / "result.json")
    assert str(e.value).startswith(f"{tmp_path / 'result.json'}: ") and says in str(e.value), str(e.value)


def test_the_writer_refuses_a_result_it_does_not_know(tmp_path):
    with pytest.raises(TailorError, match="missing key 'image'"):
        records.save_boot_result(tmp_path / "result.json", {k: v for k, v in RESULT.items() if k != "image"})
    assert not (tmp_path / "result.json").exists()
