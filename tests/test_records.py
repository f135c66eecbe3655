"""Typed, versioned records (tailor/records.py): result.json round-trips, and a changed file is refused by name."""

from __future__ import annotations

import json

import pytest

from tailor import records
from tailor.errors import TailorError
from tailor.records import discovery
from tailor.records.bench import BENCH
from tailor.records.release import ReleaseManifest
from tailor.records.stages import BootTiming, RunState, SlimDropped, SlimKept, SnapshotRecord, SourceStamp

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


def _written(tmp_path):
    """One file of every record kind, written through tests/fakes.py as the stages write them."""
    import fakes

    kdir = tmp_path / "out" / "kernel" / "k"
    kdir.mkdir(parents=True)
    return {
        "kernel.json": (records.KernelBuild, kdir / "kernel.json", fakes.kernel_build(kdir)),
        "kernels/hello.json": (records.KernelPointer, records.paths.kernel_pointer("hello"),
                               fakes.kernel_pointer("hello", kdir)),
        "rootfs.json": (records.RootfsManifest, records.paths.rootfs_manifest("hello"), fakes.rootfs_manifest("hello")),
        "result.json": (records.BootResult, tmp_path / "result.json", fakes.boot_result(tmp_path / "result.json")),
        "baseline.json": (records.BaselineKernel, records.paths.baseline_dir("kata") / "baseline.json",
                          fakes.baseline_kernel("kata", kdir)),
        **{f"discover/{cls.FILE}": (cls, cls.path("redis"), write("redis"))
           for cls, write in ((discovery.DiscoverySummary, fakes.discovery_summary),
                              (discovery.DiscoveryTrials, fakes.discovery_trials),
                              (discovery.DiscoverySyscalls, fakes.discovery_syscalls),
                              (discovery.DiscoveryTrace, fakes.discovery_trace))},
        "null-trace.json": (discovery.NullTrace, tmp_path / "null.json", fakes.null_trace(tmp_path / "null.json")),
        "fits/redis.json": (discovery.FitsReport, discovery.FitsReport.path("redis"), fakes.fits_report("redis")),
        "manifest.json": (ReleaseManifest, tmp_path / "release" / "manifest.json",
                          fakes.release_manifest(tmp_path / "release" / "manifest.json")),
        **{f"bench/{kind}.json": (cls, records.paths.bench_path(kind), fakes.bench(kind))
           for kind, cls in BENCH.items()},
        "slim.json": (SlimDropped, records.paths.rootfs_slim("hello"), fakes.slim_dropped("hello")),
        "kept.json": (SlimKept, records.paths.slim_kept("hello"), fakes.slim_kept("hello")),
        "snapshot.json": (SnapshotRecord, records.paths.snapshot_record("redis"), fakes.snapshot_record("redis")),
        "run.json": (RunState, tmp_path / "out" / "run" / "redis" / "run.json", fakes.run_state("redis")),
        "timing.json": (BootTiming, tmp_path / "out" / "catalogue" / "timing.json", fakes.boot_timing()),
        "stamp.json": (SourceStamp, tmp_path / "out" / "src" / "stamp.json",
                       fakes.source_stamp(tmp_path / "out" / "src" / "stamp.json")),
    }


KINDS = ["kernel.json", "kernels/hello.json", "rootfs.json", "result.json", "baseline.json", "discover/discover.json",
         "discover/trials.json", "discover/syscalls.json", "discover/trace.json", "null-trace.json", "fits/redis.json",
         "manifest.json"] + [f"bench/{kind}.json" for kind in BENCH] + ["slim.json", "kept.json", "snapshot.json",
                                                                        "run.json", "timing.json", "stamp.json"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_record_round_trips_and_a_corrupted_one_is_one_line_naming_file_and_key(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    cls, path, record = _written(tmp_path)[kind]
    assert cls.load(path) == record
    good = json.loads(path.read_text())
    assert good["format"] == cls.FORMAT
    key = sorted(k for k in good if k != "format")[-1]
    wrong, wrong_type = ({"not": "a list"}, "dict") if isinstance(good[key], list) else ([1], "list")
    for change, says in ((lambda d: d.pop(key), f"missing key {key!r}"),
                         (lambda d: d.update({key: wrong}), f"key {key!r} is {wrong_type}"),
                         (lambda d: d.update(format="old"), "format 'old'"),
                         (lambda d: d.update(stray=1), "unknown key 'stray'")):
        data = dict(good)
        change(data)
        path.write_text(json.dumps(data))
        with pytest.raises(TailorError) as e:
            cls.load(path)
        message = str(e.value)
        assert "\n" not in message and message.startswith(f"{path}: ") and says in message, message
    path.write_text("{not json")
    with pytest.raises(TailorError, match=str(path)):
        cls.load(path)


def test_a_kernel_size_record_without_the_bzimage_size_is_refused(tmp_path, monkeypatch):
    import fakes

    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    with pytest.raises(TailorError, match="key 'sizes' has no 'bzImage'"):
        fakes.kernel_pointer("hello", tmp_path, sizes={"vmlinux": 1})
    assert not records.paths.kernel_pointer("hello").exists()


def test_an_app_whose_stage_has_not_run_is_told_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    with pytest.raises(TailorError, match=r"^hello: its kernel is not built; run `doit kernel:hello` first$"):
        records.app_kernel("hello")
    with pytest.raises(TailorError, match=r"^hello: its root image is not built; run `doit rootfs:hello` first$"):
        records.app_rootfs("hello")


def test_a_row_without_a_key_its_readers_take_is_refused(tmp_path, monkeypatch):
    import fakes

    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    good = fakes.discovery_trials("redis").dump()
    path = discovery.DiscoveryTrials.path("redis")
    for trials, says in (([{k: v for k, v in good["trials"][0].items() if k != "result"}], "key 'trials[0]' has no "
                                                                                          "'result'"),
                         ([good["trials"][0], "trial 2"], "key 'trials[1]' is str, expected dict")):
        path.write_text(json.dumps({**good, "trials": trials}))
        with pytest.raises(TailorError) as e:
            discovery.DiscoveryTrials.load(path)
        assert str(e.value).startswith(f"{path}: {says}"), str(e.value)


def test_the_release_manifest_keeps_its_integer_format_and_its_snapshot_only_when_there_is_one(tmp_path):
    import fakes

    path = tmp_path / "manifest.json"
    plain = fakes.release_manifest(path)
    assert json.loads(path.read_text())["format"] == ReleaseManifest.FORMAT == 3
    assert "snapshot" not in json.loads(path.read_text())
    assert plain.snapshot is None and ReleaseManifest.load(path) == plain
    with_snapshot = fakes.release_manifest(path, snapshot={"files": {}})
    assert json.loads(path.read_text())["snapshot"] == {"files": {}} and ReleaseManifest.load(path) == with_snapshot
    path.write_text(json.dumps({**plain.dump(), "format": "3"}))
    with pytest.raises(TailorError, match="format '3', this tailor reads format 3"):
        ReleaseManifest.load(path)


def test_the_readers_of_the_later_stages_records_name_a_damaged_one_in_one_line(tmp_path, monkeypatch, capsys):
    """kept.json (the rootfs stage of a traced root), timing.json (the catalogue table) and a source's stamp
    (damaged: said in one line, and the source is unpacked again); slim.json, snapshot.json and run.json are
    in test_boot.py, test_snapshot.py and test_run.py."""
    import fakes
    from tailor import catalogue, recipe, rootfs, source

    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    redis = recipe.find("redis")
    kept = fakes.slim_kept("redis").dump()
    for change, says in (({"paths": [{"path": "/usr/bin/redis-server"}]}, "key 'paths[0]' has no 'why'; trace it "
                                                                           "again (doit slim:<app>)"),
                         ({"paths": [{"path": "usr/bin/x", "why": "read"}]}, "key 'paths[0]' has path 'usr/bin/x', "
                                                                             "not an absolute path")):
        records.paths.slim_kept("redis").write_text(json.dumps({**kept, **change}))
        with pytest.raises(TailorError) as e:
            rootfs.load_traced(redis)
        assert str(e.value).startswith(f"{records.paths.slim_kept('redis')}: {says}") and "\n" not in str(e.value)
    fakes.boot_timing()
    catalogue.timing_path().write_text(json.dumps({**fakes.boot_timing().dump(), "runs": "3"}))
    with pytest.raises(TailorError, match=rf"^{catalogue.timing_path()}: key 'runs' is str, expected int; time the boots again"):
        catalogue.rows([recipe.find("hello")])
    ref = source.SourceRef(sha256="1" * 64, label="fake", kind="path")
    source.tree_path(ref).mkdir(parents=True)
    fakes.source_stamp(source.stamp_path(ref))
    assert source.is_ready(ref)
    source.stamp_path(ref).write_text(json.dumps({**fakes.source_stamp(source.stamp_path(ref)).dump(), "id": None}))
    assert not source.is_ready(ref)
    assert capsys.readouterr().err == (f"tailor: {source.stamp_path(ref)}: key 'id' is NoneType, expected str; "
                                       f"tailor unpacks the source again\n")
