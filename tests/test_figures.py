"""Measured figures are generated, never typed: the docs' figures are what the committed snapshot in
docs/measurements/<date>/ renders, no page of docs/ or the README has a figure with a unit outside a
generated region, targets.yaml holds limits and reasons only, and a snapshot is taken from out/ without
anything that names the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket

import pytest
import yaml

import fakes
from tailor import figures, report
from tailor.errors import TailorError
from tailor.records.bench import save_bench
from tailor.util import PROJECT, sha256_file
from test_report import fixture_results


def _pages():
    return sorted((PROJECT / "docs").glob("*.md")) + [PROJECT / "README.md"]


# --------------------------------------------------------------------------
# The committed docs and snapshot


def test_the_docs_figures_are_what_the_newest_snapshot_renders():
    stale = figures.stale_pages()
    assert not stale, (f"{', '.join(stale)}: the figures differ from {figures.newest_snapshot().name}'s snapshot; "
                       f"edit templates/docs/ (never the page's generated region) and run `python -m tailor docs`")


def test_no_figure_is_typed_by_hand_in_the_docs_or_the_readme():
    typed = [f for p in _pages() for f in figures.typed_figures(str(p.relative_to(PROJECT)), p.read_text())]
    assert not typed, ("figures typed by hand (render them from the snapshot through templates/docs/, or, for a "
                       "limit or a default, list the phrase in tailor/figures.py NOT_MEASURED):\n" + "\n".join(typed))


def test_the_committed_snapshot_is_intact_and_names_no_machine():
    snap = figures.newest_snapshot()
    results, record = figures.load_snapshot(snap)
    assert record["date"] == snap.name and results
    for name in record["files"]:
        text = (snap / name).read_text()
        data = json.loads(text) if name.endswith(".json") else text
        assert figures.public(data, name) == data, f"{name}: holds a path of the project"
        if name.endswith(".json"):
            assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_targets_hold_limits_and_reasons_not_measured_figures():
    for t in yaml.safe_load(report.TARGETS_FILE.read_text()):
        for key in ("what", "gap"):
            text = re.sub(r"\{\w+\}", "", t.get(key, ""))
            numbers = re.findall(r"(?<![\w.-])\d+(?:[.,]\d+)*", text)
            assert not numbers, f"targets.yaml: {t['id']}: {key}: {numbers}: a measured figure belongs in the report"


# --------------------------------------------------------------------------
# Rendering and the scanner


def test_a_figure_edited_by_hand_in_a_generated_region_fails(tmp_path, monkeypatch):
    page = PROJECT / figures.REGIONS["measurements"]
    (tmp_path / "docs").mkdir()
    text = page.read_text()
    start, end = figures.markers("measurements")
    region = text.split(start)[1].split(end)[0]
    figure = re.search(r"\d+\.\d+x", region).group(0)
    edited = text.replace(region, region.replace(figure, "0.01x", 1))
    (tmp_path / "docs" / "measurements.md").write_text(edited)
    for other in {v for k, v in figures.REGIONS.items() if k != "measurements"}:  # the other pages with a region
        (tmp_path / other).write_text((PROJECT / other).read_text())
    snap = figures.newest_snapshot()
    monkeypatch.setattr(figures, "PROJECT", tmp_path)
    assert len(figures.stale_pages(snap)) == 1
    figures.write_docs(snap)
    assert (tmp_path / "docs" / "measurements.md").read_text() == text
    assert figures.stale_pages(snap) == []


def test_the_scanner_names_each_typed_figure_and_skips_generated_regions():
    text = ("# Page\n\nredis is ready in 0.87 s, 0.20x of a cold boot.\n"
            "<!-- figures:x:start (generated) -->\n| redis | 1.87 MB |\n<!-- figures:x:end -->\n"
            "ext2 only, 6.1 kernels, x86_64, 0x200000, 3 rounds: no figure\n"
            "a ~25 min build, 8,143,872 bytes, 18% slower, 2.3–2.4 s\n"
            "the boot test waits within 10 s\n")
    assert figures.typed_figures("docs/troubleshooting.md", text) == [
        "docs/troubleshooting.md:3: 0.87 s", "docs/troubleshooting.md:3: 0.20x",
        "docs/troubleshooting.md:8: 25 min", "docs/troubleshooting.md:8: 8,143,872 bytes",
        "docs/troubleshooting.md:8: 18%", "docs/troubleshooting.md:8: 2.3–2.4 s"]
    assert figures.typed_figures("docs/other.md", text)[-1] == "docs/other.md:9: 10 s"


# --------------------------------------------------------------------------
# Taking a snapshot


@pytest.fixture
def measured(tmp_path):
    """out/bench with the report's fixture measurements (and two files a snapshot leaves out) and a report."""
    bench = tmp_path / "out" / "bench"
    bench.mkdir(parents=True)
    for kind in ("snapshot", "slim", "size"):
        save_bench(kind, fixture_results()[kind], bench / f"{kind}.json")
    fakes.bench("scale", bench / "scale.json")  # a measurement the report does not read
    fakes.bench("boot", bench / "boot.json", conditions={**fakes.CONDITIONS, "date": None})
    md = tmp_path / "out" / "report" / "report.md"
    md.parent.mkdir(parents=True)
    md.write_text("# tailor: size, boot time, memory\n")
    return bench, md


def test_a_snapshot_holds_the_measurements_the_report_and_their_conditions(measured, tmp_path):
    bench, md = measured
    dest, left_out = figures.take_snapshot(bench, md, tmp_path / "measurements")
    assert dest == tmp_path / "measurements" / "2024-01-01"  # the fixture's conditions date
    assert sorted(p.name for p in dest.iterdir()) == ["conditions.json", "report.md", "size.json", "slim.json",
                                                      "snapshot.json"]
    assert left_out == ["boot.json: records no conditions (no date, machine or accelerator)",
                        "scale.json: the report does not read it"]
    record = json.loads((dest / "conditions.json").read_text())
    assert record["format"] == figures.FORMAT and record["measurements"]["slim"]["date"] == "2024-01-01 00:00 UTC"
    assert record["files"]["slim.json"] == sha256_file(dest / "slim.json")
    assert (dest / "slim.json").read_text() == (bench / "slim.json").read_text()
    page = next(iter(figures.rendered_pages(dest).values()))
    assert "| redis | 1.200 s | 0.300 s | 0.25x | 32.00 MB | 5 |" in page
    assert "| pyweb-image | image, ext2 | 80.00 MB in 2000 files | 16.00 MB in 120 files | 5.00x |" in page
    assert "| system calls, lupine-base (hello) | 247 |" in page and "- boot: doit bench:boot" in page
    assert not figures.typed_figures("docs/measurements.md", page)
    # taken again, the same date replaces the directory whole
    (bench / "snapshot.json").unlink()
    os.utime(md)
    figures.take_snapshot(bench, md, tmp_path / "measurements")
    assert not (dest / "snapshot.json").exists() and "snapshot.json" not in figures.load_snapshot(dest)[1]["files"]


def test_a_snapshot_of_nothing_is_one_line(tmp_path):
    for bench in (tmp_path / "none", tmp_path):
        with pytest.raises(TailorError, match=r"no measurements to snapshot; run `doit bench`") as e:
            figures.take_snapshot(bench, tmp_path / "report.md", tmp_path / "measurements")
        assert "\n" not in str(e.value)
    with pytest.raises(TailorError, match="no measurement snapshot"):
        figures.newest_snapshot(tmp_path)


def test_a_report_older_than_the_measurements_is_refused(measured, tmp_path):
    bench, md = measured
    os.utime(md, (1, 1))
    with pytest.raises(TailorError, match="report.md: missing or older than the measurements; run `doit report`"):
        figures.take_snapshot(bench, md, tmp_path / "measurements")
    assert not (tmp_path / "measurements").exists()


@pytest.mark.parametrize("value, what", [
    ("{tmp}/out/rootfs/redis", "a path of this machine"),
    ("pulled from docker.io/library/redis:7", "a registry host"),
    ("pushed to localhost:5000/redis", "a registry host"),
    ("measured on {host} today", "this machine's host name"),
])
def test_a_measurement_that_names_the_machine_is_refused(measured, tmp_path, value, what):
    bench, md = measured
    data = fixture_results()["slim"]
    data["apps"]["pyweb-image"]["variants"]["slim"]["reason"] = value.format(tmp=tmp_path,
                                                                              host=socket.gethostname())
    save_bench("slim", data, bench / "slim.json")
    os.utime(md)
    with pytest.raises(TailorError, match=rf"slim.json: apps.pyweb-image.variants.slim.reason: names {what}"):
        figures.take_snapshot(bench, md, tmp_path / "measurements")
    assert not (tmp_path / "measurements").exists() or not any((tmp_path / "measurements").iterdir())


def test_the_projects_own_paths_become_relative():
    assert figures.public({"log": [f"{PROJECT}/out/boot/redis/console.log"]}, "x.json") == \
        {"log": ["out/boot/redis/console.log"]}


def test_an_edited_snapshot_is_refused(measured, tmp_path):
    bench, md = measured
    dest, _ = figures.take_snapshot(bench, md, tmp_path / "measurements")
    shutil.copy(dest / "size.json", dest / "slim.json")
    with pytest.raises(TailorError, match=r"slim.json: its sha256 is not the one conditions.json records"):
        figures.load_snapshot(dest)


# --------------------------------------------------------------------------
# The report fills a gap's figures from the data


def test_a_missed_targets_gap_names_the_measured_figures():
    results = fixture_results()
    fc = next(k for k in results["size"]["kernels"] if k["variant"] == "firecracker")
    fc["syscalls"]["real"] = 400  # lupine-base's 247 is then 0.62x: over its 0.6x
    row = next(t for t in report.evaluate_targets(results) if t["id"] == "sys-base" and t["against"] == "firecracker")
    assert row["verdict"] == "missed"
    assert "so its 247 are the kernel's fixed set; against 400 the limit allows 240," in row["gap"]


def test_a_gap_may_name_only_the_known_fields(tmp_path):
    bad = tmp_path / "targets.yaml"
    bad.write_text("- {id: x, what: x, metric: size, app: hello, variant: specific, op: '<=', limit: 1,"
                   " gap: 'drop {speed}'}\n")
    with pytest.raises(TailorError, match=r"target 1: gap names speed; it may name \{figure\}"):
        report.load_targets(bad)


def test_discovery_figures_judge_the_medians_and_count_kernels_no_bigger_than_by_hand():
    def row(app, trials, seconds, bz, hand):
        return {"app": app, "trial_kernels": trials, "builds": trials, "total_s": seconds, "bzImage": bz,
                "hand_found": None if hand is None else {"bzImage": hand, "syscalls": 263}, "syscalls": 260,
                "discovered": ["EPOLL"], "recipe": ["EPOLL", "FUTEX"], "minimised": True, "search": "probdd",
                "untried": []}
    fig = figures.discovery_figures({"rows": [row("redis", 14, 1900, 1_348_608, 1_401_856),
                                              row("nginx", 10, 1200, 1_420_000, 1_400_000),   # 1.4% bigger
                                              row("hello", 4, 600, 900_000, None)]})         # not built
    assert fig["apps"] == 3 and fig["with_hand"] == 2 and fig["no_bigger"] == 1
    assert fig["trials"] == "10" and fig["trials_met"] and fig["minutes"] == "20.0 min" and fig["minutes_met"]
    assert [r[0] for r in fig["rows"]] and len(fig["rows"]) == 3 and fig["head"][0] == "app"
    assert figures.discovery_figures(None) is None and figures.discovery_figures({"rows": []}) is None


def test_the_discovery_summary_names_the_recipes_not_measured_and_why():
    from tailor.recipe import load
    from tailor.util import PROJECT

    recipes = [load(PROJECT / "recipes" / f"{name}.yaml") for name in ("redis", "node", "traefik")]
    row = {"app": "redis", "trial_kernels": 5, "builds": 5, "total_s": 800, "bzImage": 1_348_608,
           "hand_found": {"bzImage": 1_401_856, "syscalls": 263}, "syscalls": 260, "discovered": ["EPOLL"],
           "recipe": ["EPOLL"], "minimised": True, "search": "probdd", "untried": []}
    fig = figures.discovery_figures({"rows": [row]}, recipes)
    assert fig["unmeasured"] == ["node"] and fig["registry"] == ["traefik"]
