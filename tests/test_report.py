"""The measurement report and the pure parts of the measurements (no VM, no kernel build).

The report is rendered from fixture JSON in a temporary out/ and, where
Debian's chromium is installed, loaded in headless Chromium to check that the
tables and the SVG bar charts are really drawn. Nothing here asserts a
timing or a target.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import fakes
from tailor import measure, report
from tailor.kinds import Arch
from tailor.errors import TailorError
from tailor.records.bench import save_bench

CONDITIONS = {"machine": "x86_64, test CPU, 2 cores, 4.0 GiB", "os": "Debian GNU/Linux 12 (bookworm)",
              "accel": "tcg", "qemu": "QEMU emulator version 7.2", "gcc": "gcc 12.2.0",
              "kernel": "linux-source-6.1 6.1.192-2", "load": [0.5, 0.4, 0.3], "date": "2024-01-01 00:00 UTC"}


def _spread(*xs):
    return measure.spread(list(xs))


def _kernel(label, variant, apps, bz, vml, enabled, real, ident):
    return {"label": label, "variant": variant, "apps": apps, "identity": ident * 4, "bzImage": bz,
            "bzImage_xz_estimate": int(bz * 0.8), "vmlinux": vml, "enabled": enabled, "syscalls": {"real": real, "raw": real, "stubs": 450 - real}}


def fixture_results() -> dict[str, dict]:
    """A complete set of stored measurements: hello, redis and nginx against the firecracker baseline (kata not built)."""
    size = {"kind": "size", "conditions": CONDITIONS, "missing": [], "kernels": [
        _kernel("lupine-base (hello)", "specific", ["hello"], 1_266_688, 13_037_632, 387, 247, "aaaa"),
        _kernel("redis", "specific", ["redis"], 1_905_664, 15_764_136, 408, 278, "bbbb"),
        _kernel("nginx", "specific", ["nginx"], 1_950_000, 15_900_000, 412, 281, "cccc"),
        _kernel("general", "general", ["hello", "redis", "nginx"], 1_600_000, 15_843_016, 422, 319, "dddd"),
        _kernel("firecracker", "baseline-ignored", [], 0, 0, 0, 0, "eeee"),
    ]}
    size["kernels"][-1] = _kernel("firecracker", "firecracker", ["hello", "redis", "nginx"], 10_500_000, 50_000_000,
                                  1490, 440, "eeee")
    boot_rows, mem_rows, tput_rows = [], [], []
    for app, base_init in (("hello", 2.0), ("redis", 2.2), ("nginx", 2.1)):
        for variant, f in (("specific", 0.4), ("general", 0.45), ("firecracker", 1.0)):
            label = {"specific": "lupine-base (hello)" if app == "hello" else app}.get(variant, variant)
            t = base_init * f
            boot_rows.append({"app": app, "variant": variant, "label": label, "kernel": "x",
                              "init_s": _spread(t, t + 0.02, t - 0.01), "ready_s": _spread(t + 0.5, t + 0.6),
                              "errors": []})
            mem_rows.append({"app": app, "variant": variant, "label": label, "kernel": "x",
                             "min_mib": round(40 * f) + 10, "tried": {"256": True, "132": True},
                             "range": [8, 256]})
            if app != "hello":
                g = {"specific": 1.25, "general": 1.15, "firecracker": 1.0}[variant]
                tests = ({"GET": _spread(7000 * g, 7100 * g), "SET": _spread(6900 * g, 6800 * g)}
                         if app == "redis" else {"GET /": _spread(900 * g, 880 * g, 910 * g)})
                tput_rows.append({"app": app, "variant": variant, "label": label,
                                  "tool": "redis-benchmark" if app == "redis" else "ab", "tests": tests})
        boot_rows.append({"app": app, "variant": "kata", "label": "kata", "kernel": None,
                          "missing": "baseline not built; run `doit baseline:kata`"})
    return {
        "size": size,
        "boot": {"kind": "boot", "conditions": CONDITIONS, "runs": 3, "cmdline_extra": "quiet",
                 "marker": measure.MARKER, "accel_used": ["tcg"], "results": boot_rows},
        "memory": {"kind": "memory", "conditions": CONDITIONS, "cmdline_extra": "quiet", "results": mem_rows,
                   "alternatives": []},
        "throughput": {"kind": "throughput", "conditions": CONDITIONS, "stall_ms": 100,
                       "params": {"redis-benchmark": measure.REDIS_BENCH, "ab": measure.HTTP_BENCH},
                       "results": tput_rows},
        "snapshot": {"kind": "snapshot", "conditions": CONDITIONS, "apps": {
            "redis": {"runs": 5, "cold_s": {"median": 1.2, "min": 1.1, "max": 1.4},
                      "restore_s": {"median": 0.3, "min": 0.25, "max": 0.35}, "ratio": 0.25, "save_s": 0.21,
                      "snapshot_time_to_ready_s": 0.97, "state_bytes": 31_800_000, "state_on_disk": 31_800_000,
                      "disk_bytes": 393_216, "disk_on_disk": 200_000, "rss_mib": {"cold": 112.0, "restore": 70.0},
                      "memory_mib": 256, "accel": "tcg", "qemu": "QEMU emulator version 7.2.22"}}},
        "slim": {"kind": "slim", "conditions": CONDITIONS, "apps": {
            "pyweb-image": {"format": "ext2", "source": "image", "traced_paths": 90, "added_back": 0,
                            "memory_asked_mib": 256, "runs": 3, "variants": {
                                "whole": {"bytes": 80_000_000, "content_bytes": 60_000_000, "files": 2000, "pass": True, "reason": "",
                                          "ready_s": 1.5, "min_memory_mib": 60},
                                "slim": {"bytes": 20_000_000, "content_bytes": 10_000_000, "files": 40, "pass": False,
                                         "reason": "boot test of pyweb-image failed", "ready_s": None,
                                         "min_memory_mib": None},
                                "traced": {"bytes": 16_000_000, "content_bytes": 6_000_000, "files": 120, "pass": True, "reason": "",
                                           "ready_s": 1.2, "min_memory_mib": 40}}}}},
        "pipeline": {"kind": "pipeline", "conditions": CONDITIONS, "app": "redis",
                     "noop": {"doit_s": _spread(0.31, 0.33, 0.30), "kbuild_s": _spread(6.1, 6.0, 6.3),
                              "doit_was_noop": True, "doit_cmd": "doit build:redis",
                              "kbuild_cmd": "make -C <src> O=<objdir> bzImage"},
                     "clean": None},
    }


@pytest.fixture
def bench(tmp_path, monkeypatch) -> Path:
    """A temporary out/ whose bench/ holds the fixture measurements, written as the measurements write them."""
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    d = tmp_path / "out" / "bench"
    d.mkdir(parents=True)
    for kind, data in fixture_results().items():
        save_bench(kind, data, d / f"{kind}.json")
    return d


# --------------------------------------------------------------------------
# Pure helpers of the measurements


SYSTEM_MAP = """\
ffffffff81001610 T __x64_sys_ni_syscall
ffffffff81001620 T sys_ni_syscall
ffffffff81002000 T __x64_sys_read
ffffffff81002010 t __x64_sys_write
ffffffff81002020 T __x64_sys_openat
ffffffff81ce9c0a t __x64_sys_openat.cold
ffffffff81044b00 W __x64_sys_io_setup
ffffffff81044b10 W __x64_sys_io_destroy
ffffffff81066260 T __x64_sys_timer_create
ffffffff81066260 T __x64_sys_timer_delete
ffffffff81066260 T sys_ni_posix_timers
ffffffff81070000 T __ia32_sys_read
ffffffff81070010 D __x64_sys_not_code
"""


def test_count_syscalls_excludes_stubs_and_aliases():
    assert measure.count_syscalls(SYSTEM_MAP) == {"real": 3, "raw": 5, "stubs": 4}


def test_count_syscalls_of_empty_map():
    assert measure.count_syscalls("") == {"real": 0, "raw": 0, "stubs": 0}


@pytest.mark.skipif(shutil.which("xz") is None, reason="xz is not installed")
def test_xz_estimate_swaps_the_gzip_payload(tmp_path):
    import gzip

    comp = tmp_path / "build" / "arch" / "x86" / "boot" / "compressed"
    comp.mkdir(parents=True)
    payload = b"tailor kernel payload " * 5000
    (comp / "vmlinux.bin").write_bytes(payload)
    (comp / "vmlinux.bin.gz").write_bytes(gzip.compress(payload))
    (tmp_path / "bzImage").write_bytes(b"s" * 30000 + gzip.compress(payload))
    xz = subprocess.run(["xz", *measure.XZ_FLAGS, "-c"], input=payload, capture_output=True).stdout
    assert measure.xz_estimate(tmp_path) == 30000 + len(xz)
    assert measure.xz_estimate(tmp_path / "nothing") is None


def test_xz_estimate_of_an_xz_kernel_is_its_own_size(tmp_path):
    comp = tmp_path / "build" / "arch" / "x86" / "boot" / "compressed"
    comp.mkdir(parents=True)
    (comp / "vmlinux.bin").write_bytes(b"p" * 5000)
    (comp / "vmlinux.bin.xz").write_bytes(b"x" * 700)
    (tmp_path / "bzImage").write_bytes(b"s" * 1234)
    assert measure.xz_estimate(tmp_path) == 1234


def test_console_times_finds_the_first_init_line():
    log = ("[   0.100] Linux version 6.1\n[   0.612] tailor-init: start\n"
           "[   0.700] tailor-init: exec /usr/bin/hello\n[   0.710] Hello, world!\n")
    assert measure.console_times(log) == pytest.approx(0.612)
    assert measure.console_times(log, "Hello") == pytest.approx(0.71)
    assert measure.console_times("[   0.100] Linux version 6.1\n") is None


def test_spread():
    s = measure.spread([3.0, 1.0, 2.0, 10.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.5, 1.0, 10.0, 4)
    assert measure.spread([])["median"] is None


@pytest.mark.parametrize("threshold", [9, 10, 31, 46, 200, 256])
def test_bisect_min_finds_the_threshold(threshold):
    calls = []

    def passes(m):
        calls.append(m)
        return m >= threshold

    found, tried = measure.bisect_min(passes, 8, 256)
    assert found == threshold
    assert calls[0] == 256 and len(calls) <= 9
    assert all(tried[m] == (m >= threshold) for m in tried)


def test_bisect_min_when_even_the_top_fails():
    found, tried = measure.bisect_min(lambda m: False, 8, 256)
    assert found is None and tried == {256: False}


def test_parse_redis_csv():
    out = ('"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
           '"p99_latency_ms","max_latency_ms"\n"SET","6993.01","1.3","0.2","1.2","2.1","3.0","9.1"\n'
           '"GET","7215.01","1.3","0.2","1.2","2.1","3.0","9.1"\n')
    assert measure.parse_redis_csv(out) == {"SET": {"rps": 6993.01, "max_ms": 9.1},
                                            "GET": {"rps": 7215.01, "max_ms": 9.1}}
    assert measure.parse_redis_csv("") == {}


def test_parse_ab():
    text = ("Complete requests:      2000\nFailed requests:        0\n"
            "Requests per second:    1234.56 [#/sec] (mean)\n"
            "  99%     12\n 100%     17 (longest request)\n")
    assert measure.parse_ab(text) == (1234.56, 0, 17.0)
    with pytest.raises(TailorError):
        measure.parse_ab("apr_socket_recv: Connection reset by peer (104)\n")


def test_clean_spread_leaves_out_stalled_runs():
    runs = [{"rps": 20000, "max_ms": 5.0}, {"rps": 11000, "max_ms": 417.5}, {"rps": 22000, "max_ms": 4.2},
            {"rps": 10000, "max_ms": 834.0}]
    s = measure.clean_spread(runs)
    assert (s["median"], s["stalled"], s["runs"]) == (21000, 2, 4)
    everything_stalled = measure.clean_spread(runs[1::2])
    assert (everything_stalled["median"], everything_stalled["stalled"]) == (10500, 2)


def test_doit_noop_detection():
    assert measure.doit_noop_ran_nothing("-- config:redis\n-- kernel:redis\n-- boot:redis\n")
    assert not measure.doit_noop_ran_nothing("-- config:redis\n.  boot:redis\n")
    assert not measure.doit_noop_ran_nothing("")


def test_measured_recipe_adds_quiet_and_keeps_the_recipe(tmp_path):
    from tailor.recipe import parse

    r = parse("app: {command: /bin/true}\nkernel: {cmdline: 'foo=1'}\n", tmp_path / "x.yaml")
    m = measure.measured_recipe(r, memory=40, timeout=30)
    assert m.kernel.cmdline == "foo=1 quiet"
    assert (m.test.memory, m.test.timeout) == (40, 30)
    assert re.search(m.test.ready, "tailor-init: start")
    assert r.kernel.cmdline == "foo=1" and r.test.memory == 256


def test_missing_apps_and_kernels_are_not_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    vs = measure.variants({"nginx": "no recipe recipes/nginx.yaml"}, baselines=["microvm"])
    assert [(v.variant, v.missing) for v in vs] == [
        ("specific", "no recipe recipes/nginx.yaml"), ("general", "no recipe recipes/nginx.yaml"),
        ("microvm", "no recipe recipes/nginx.yaml")]
    data = measure.measure_size({"nginx": "no recipe recipes/nginx.yaml"})
    assert data["kernels"] == []
    assert (tmp_path / "out" / "bench" / "size.json").is_file()


# --------------------------------------------------------------------------
# Targets


def _verdicts(results, against="firecracker"):
    """Each target's verdict against *against* (an absolute or no-op target's only verdict)."""
    return {t["id"]: t["verdict"] for t in report.evaluate_targets(results)
            if t["against"] in (against, "–", "kbuild no-op")}


def test_targets_from_the_fixture():
    v = _verdicts(fixture_results())
    # bzImage 1.27 MB / 10.5 MB = 0.12x; redis 0.18x; general 0.15x
    assert v["size-base"] == "missed" and v["size-redis"] == "missed" and v["size-general"] == "met"
    assert v["boot-base"] == "met" and v["boot-general"] == "met" and v["boot-kvm"] == "n/a"
    assert v["boot-abs"] == "missed"  # 0.8 s > 0.5 s
    assert v["ready-hello"] == "met" and v["ready-redis"] == "met" and v["ready-nginx"] == "met"
    assert v["memory-hello"] == "met" and v["memory-redis"] == "met" and v["memory-nginx"] == "met"
    assert v["tput-redis"] == "met" and v["tput-nginx"] == "met"
    assert v["sys-base"] == "met" and v["sys-general"] == "met"
    assert v["noop-abs"] == "met" and v["noop-ratio"] == "met"


def test_targets_are_judged_against_firecracker_and_kata_each():
    results = fixture_results()
    rows = report.evaluate_targets(results)
    against = {(t["id"], t["against"]) for t in rows}
    assert ("size-base", "firecracker") in against and ("size-base", "kata") in against
    assert ("boot-abs", "–") in against and ("boot-abs", "firecracker") not in against
    assert set(_verdicts(results, "kata").values()) <= {"not measured", "n/a"} | {
        t["verdict"] for t in rows if t["against"] in ("–", "kbuild no-op")}
    assert _verdicts(results, "kata")["ready-redis"] == "not measured"
    # a kata kernel twice as slow to ready as redis's: met against kata as well
    results["boot"]["results"] = [r for r in results["boot"]["results"] if r["variant"] != "kata"] + [
        {"app": "redis", "variant": "kata", "label": "kata", "kernel": "k", "init_s": _spread(2.0, 2.1),
         "ready_s": _spread(2.9, 3.0), "errors": []}]
    assert _verdicts(results, "kata")["ready-redis"] == "met"
    assert "against kata" in "\n".join(report.target_lines(results, ("ready",)))


def test_a_target_file_with_an_unknown_metric_or_baseline_is_refused(tmp_path):
    bad = tmp_path / "targets.yaml"
    bad.write_text("- {id: x, what: x, metric: speed, app: hello, variant: specific, op: '<=', limit: 1, gap: ''}\n")
    with pytest.raises(TailorError, match="target 1: metric 'speed'"):
        report.load_targets(bad)
    bad.write_text("- {id: x, what: x, metric: size, app: hello, variant: specific, op: '<=', limit: 1, gap: '',"
                   " against: [qemu]}\n")
    with pytest.raises(TailorError, match="target 1: against"):
        report.load_targets(bad)


def test_targets_not_measured_without_results():
    assert set(_verdicts({}).values()) == {"not measured"}


def test_missed_target_says_what_would_close_the_gap():
    rows = {t["id"]: t for t in report.evaluate_targets(fixture_results()) if t["against"] != "kata"}
    assert rows["size-base"]["gap"] and "x" in rows["size-base"]["ratio"]
    assert rows["size-general"]["gap"] == ""


# --------------------------------------------------------------------------
# Rendering


def test_report_renders_every_metric(bench, tmp_path):
    paths = report.build()
    html = paths["html"].read_text()
    md = paths["md"].read_text()
    assert paths["html"] == tmp_path / "out" / "report" / "index.html"
    for title in ("Kernel image size", "Attack surface: system calls", "Boot time", "Memory footprint",
                  "Throughput", "Start from a snapshot", "Root filesystem: whole, slim, traced", "The pipeline itself", "Targets",
                  "Conditions"):
        assert f">{title}</h2>" in html
        assert f"## {title}" in md
    assert html.count("<svg") >= 6
    assert "× firecracker" in html and "0.12x" in html
    assert "not measured" not in md.split("## Conditions")[0].split("## Kernel image size")[1] \
        .split("## Kernel lines")[0]
    lines = md.split("## Kernel lines")[1].split("## Boot time")[0]  # the fake data has no 6.12 kernels
    assert "hello-612: kernel not measured; run `doit build:hello-612`" in lines
    assert "baseline not built; run `doit baseline:kata`" in md
    assert "QEMU emulator version 7.2" in md and "TCG" in md
    assert "| lupine-base (hello) | hello | 1.27 MB | 0.12x | 1.01 MB | 0.10x |" in md
    assert "**MISSED**" in md
    snap = md.split("## Start from a snapshot")[1].split("## ")[0]
    assert "| redis | 1.200 s (1.100 s–1.400 s) | 0.300 s (0.250 s–0.350 s) | 0.25x | 0.210 s | 32.00 MB |" in snap
    assert "hello: prints and exits" in snap
    roots = md.split("## Root filesystem: whole, slim, traced")[1].split("## ")[0]
    assert "| pyweb-image | image, ext2 | 80.00 MB (60.00 MB in 2000 files), ready 1.500 s, min 60 MiB | 20.00 MB " \
           "(10.00 MB in 40 files): fails its boot test | 16.00 MB (6.00 MB in 120 files), ready 1.200 s, min 40 MiB " \
           "| 5.00x (10.00x) | 0.80x (0.60x) |" in roots, roots


def test_report_without_measurements_says_not_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    paths = report.build()
    md = paths["md"].read_text()
    assert md.count("not measured: run") == 12
    assert "<svg" not in paths["html"].read_text()


def test_a_damaged_measurement_is_one_line_naming_file_and_key_and_a_missing_one_is_skipped(bench):
    (bench / "pipeline.json").unlink()
    assert "pipeline" not in report.load_results() and "boot" in report.load_results()
    data = json.loads((bench / "boot.json").read_text())
    del data["accel_used"]
    (bench / "boot.json").write_text(json.dumps(data))
    with pytest.raises(TailorError) as e:
        report.build()
    assert str(e.value) == f"{bench / 'boot.json'}: missing key 'accel_used'; rerun the stage that writes it"


def test_report_escapes_html(bench):
    data = json.loads((bench / "memory.json").read_text())
    data["results"][0]["label"] = "<script>x</script>"
    (bench / "memory.json").write_text(json.dumps(data))
    html = report.build()["html"].read_text()
    assert "<script>x" not in html and "&lt;script&gt;x" in html


def test_benchmark_summary_prints_ratios_and_targets(bench):
    text = report.summary(report.load_results(), ("size", "syscalls"), ("size", "syscalls"))
    assert "× firecracker" in text and "0.12x" in text
    assert "target bzImage size, lupine-base (hello): 1.27 MB = 0.121x (limit <= 0.1x" in text
    assert "MISSED" in text and "MET" in text


def test_chart_geometry():
    c = report.chart("t", "MB", [("a", 2.0, "2", "specific"), ("b", 1.0, "1", "microvm"),
                                 ("c", None, "–", "general")])
    assert [b["width"] for b in c["bars"]] == [report.CHART_BAR_W, report.CHART_BAR_W // 2]
    assert c["bars"][1]["kind"] == "baseline"
    assert report.chart("t", "", [("a", None, "–", "specific")]) is None


# --------------------------------------------------------------------------
# The page in a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PROBE = """
<script>
window.addEventListener("load", function () {
  var out = {tables: [], bars: [], svgs: 0};
  document.querySelectorAll("table").forEach(function (t) {
    var r = t.getBoundingClientRect();
    out.tables.push({rows: t.querySelectorAll("tbody tr").length, w: r.width, h: r.height});
  });
  document.querySelectorAll("svg").forEach(function () { out.svgs += 1; });
  document.querySelectorAll("svg rect.bar").forEach(function (b) {
    var r = b.getBoundingClientRect();
    out.bars.push({w: r.width, h: r.height});
  });
  var pre = document.createElement("pre");
  pre.id = "layout-probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_report_page_renders_in_headless_chromium(bench, tmp_path):
    html = report.build()["html"]
    # A copy of the page with a script that measures the laid-out tables and bars.
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(html.read_text().replace("</body>", PROBE + "</body>"))
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=2000"]
    proc = subprocess.run(cmd + ["--dump-dom", probe_page.as_uri()], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    m = re.search(r'<pre id="layout-probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"no layout probe in chromium's DOM: {proc.stderr[-500:]}"
    layout = json.loads(m.group(1).replace("&quot;", '"'))
    assert len(layout["tables"]) >= 8
    assert all(t["rows"] > 0 and t["w"] > 0 and t["h"] > 0 for t in layout["tables"])
    assert layout["svgs"] >= 6
    assert len(layout["bars"]) >= 20
    assert all(b["w"] > 0 and b["h"] > 0 for b in layout["bars"])
    shot = tmp_path / "report.png"
    subprocess.run(cmd + [f"--screenshot={shot}", "--window-size=1280,2400", html.as_uri()],
                   capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_catalogue_table_renders_when_nothing_is_built(tmp_path, monkeypatch):
    """A fresh checkout: every row says "not built" (the table used to fail on an empty sequence)."""
    from tailor import catalogue, recipe

    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    text = catalogue.render_table(recipe.all_recipes())
    assert "| hello |" in text and "not built" in text and "under tcg." in text


def test_catalogue_arm64_table_from_the_apps_arm64_copies(tmp_path, monkeypatch):
    """An app's ``<app>-arm64`` recipe gets a row of the arm64 table: its Image size and boot result; one not
    built says so; x86_64 recipes never count as copies; the table goes between its own markers."""
    from tailor import catalogue, paths, recipe

    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    everything = recipe.all_recipes()
    x86 = [r for r in everything if r.arch is Arch.X86_64]
    others = [r for r in everything if r.arch is not Arch.X86_64]
    assert {"hello", "redis", "nginx"} <= set(catalogue.arm64_copies(x86, others))
    assert catalogue.arm64_copies(x86, x86) == {}
    fakes.kernel_pointer("hello-arm64", Path("/k"), "d" * 64, bzImage="/k/Image",
                         sizes={"Image": 3_188_744, "vmlinux": 3_849_224, "System.map": 485_741})
    fakes.boot_result(paths.boot_result("hello-arm64"), time_to_ready_s=0.3, boot_method="image")
    text = catalogue.render_arm64_table(x86, others)
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
             if line.startswith("| ") and not line.startswith("| app ")}
    assert cells["hello"] == ["hello", "hello-arm64", "0 / 0", "3.19 MB", "- cpio", "pass"]
    assert cells["redis"][-1] == "not built" and "golang" not in cells
    assert "1 of " in text and "`qemu-system-aarch64 -M virt -cpu max`" in text
    page = tmp_path / "catalogue.md"
    page.write_text(f"# c\n{catalogue.START}\nold\n{catalogue.END}\n{catalogue.ARM64_START}\nold\n{catalogue.ARM64_END}\n")
    monkeypatch.setattr(catalogue, "README", page)
    catalogue.write_arm64_table(x86, others)
    assert "| hello | hello-arm64 |" in page.read_text() and "\nold\n" in page.read_text()  # the main table stays


def test_catalogue_table_shows_the_baseline_boot_and_whether_the_pool_was_seeded(tmp_path, monkeypatch):
    from tailor import catalogue, paths, recipe

    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    hello = next(r for r in recipe.all_recipes() if r.name == "hello")
    for where, ready, entropy in ((paths.boot_result("hello"), 0.78, True),
                                  (catalogue.baseline_result(hello), 2.1, False)):
        fakes.boot_result(where, time_to_ready_s=ready, boot_method="pvh", entropy_before_app=entropy)
    row = next(line for line in catalogue.render_table([hello]).splitlines() if line.startswith("| hello |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5:] == ["pass (0.8 s)", "not built", "pass (2.1 s)", "yes"]
    assert "booted by PVH (the ELF vmlinux)" in catalogue.render_table([hello])
    with pytest.raises(TailorError, match="baseline is not built; run `doit baseline:firecracker`"):
        catalogue.boot_on_baseline([hello])
    from tailor.tasks import stage_function, study

    made = {t["basename"]: t for t in study.catalogue_tasks([hello])}
    [(_, (fn, *args), _)] = made["catalogue_baseline"]["actions"]
    assert stage_function(fn) is catalogue.boot_on_baseline and args == [[hello]]


def test_kata_column_beside_firecracker_when_a_kata_result_exists(tmp_path, monkeypatch):
    results = fixture_results()
    base = results["size"]["kernels"][-1]
    results["size"]["kernels"] += [dict(base, label="kata", variant="kata", bzImage=6_333_376, identity="k" * 16)]
    results["size"]["kernels"][-2]["bzImage"] = 8_300_000
    results["boot"]["results"].append({"app": "hello", "variant": "kata", "label": "kata", "kernel": "x",
                                       "init_s": _spread(1.6, 1.7), "ready_s": _spread(2.0, 2.1), "errors": []})
    secs = {s.id: s for s in report.sections(results)}
    head = secs["size"].head
    assert "× kata" in head and head.index("× kata") == head.index("× firecracker") + 1
    assert "× kata" in secs["syscalls"].head
    hello = next(r for r in secs["size"].rows if r[0] == "lupine-base (hello)")
    assert hello[3:5] == ["0.15x", "0.20x"]
    assert "× kata" in secs["boot"].head
    without = {s.id: s for s in report.sections(fixture_results())}
    assert "× kata" not in without["size"].head and "× kata" not in without["boot"].head


def test_boot_table_shows_both_boot_methods_with_ratios_to_the_same_method():
    results = fixture_results()
    for r in results["boot"]["results"]:
        if r["app"] == "hello" and not r.get("missing"):
            slow = {"init_s": _spread(r["init_s"]["median"] + 0.5), "ready_s": _spread(r["ready_s"]["median"] + 0.5),
                    "errors": []}
            r["methods"] = {"pvh": {k: r[k] for k in ("init_s", "ready_s", "errors")}, "bzimage": slow}
            r["boot"] = "pvh"
    sec = {s.id: s for s in report.sections(results)}["boot"]
    hello = {(row[1], row[2]): row for row in sec.rows if row[0] == "hello"}
    assert set(hello) == {(k, m) for k in ("lupine-base (hello)", "general", "firecracker") for m in ("pvh", "bzimage")}
    fc = sec.head.index("× firecracker")
    assert hello[("lupine-base (hello)", "pvh")][fc] == "0.40x"        # 0.8 s / 2.0 s
    assert hello[("lupine-base (hello)", "bzimage")][fc] == "0.52x"    # 1.3 s / 2.5 s, not / 2.0 s
    # a row stored before boots were measured both ways counts as a bzImage boot
    assert {row[2] for row in sec.rows if row[0] == "redis"} == {"bzimage"}


INITCALL_CONSOLE = """\
[   0.206] calling  0xffffffff818bb71a @ 1
[   0.206] initcall 0xffffffff818bb71a returned 0 after 0 usecs
[   0.211] initcall 0xffffffff818bf5f3 returned 0 after 4000 usecs
[   0.212] initcall serial8250_init+0x0/0x1a0 returned -19 after 8000 usecs
[   0.213] initcall 0xffffffff80000000 returned 0 after 4000 usecs
"""


def test_initcalls_are_parsed_named_from_system_map_and_ranked():
    calls = measure.parse_initcalls(INITCALL_CONSOLE)
    assert [c["usecs"] for c in calls] == [0, 4000, 8000, 4000] and calls[2]["ret"] == -19
    named = measure.symbolise(calls, "ffffffff818bb71a T init_a\nffffffff818bf5f3 t kswapd_init\n"
                                     "ffffffff818bf5f3 D not_code\n")
    assert [c["fn"] for c in named] == ["init_a", "kswapd_init", "serial8250_init", "0xffffffff80000000"]
    s = measure.summarise(named, top=2)
    assert s["count"] == 4 and s["total_us"] == 16000
    assert s["top"] == [{"fn": "serial8250_init", "usecs": 8000}, {"fn": "kswapd_init", "usecs": 4000}]


def test_initcall_section_says_what_lupine_base_does_not_run():
    rows = [{"app": "hello", "variant": "specific", "label": "lupine-base (hello)", "kernel": "a", "count": 2,
             "total_us": 12000, "top": [{"fn": "tty_class_init", "usecs": 8000}], "all": {"tty_class_init": 8000,
                                                                                          "kswapd_init": 4000}},
            {"app": "hello", "variant": "firecracker", "label": "firecracker", "kernel": "f", "count": 3,
             "total_us": 60000, "top": [{"fn": "pci_subsys_init", "usecs": 40000}],
             "all": {"pci_subsys_init": 40000, "tty_class_init": 12000, "kswapd_init": 8000}}]
    sec = report.initcalls_section({"kind": "initcalls", "top": 5, "results": rows})
    assert sec.rows[0][:5] == ["lupine-base (hello)", "–", "2", "12 ms", "tty_class_init 8 ms"]
    note = sec.notes[0]
    assert note.startswith("firecracker's 3 most expensive initcalls")
    assert "pci_subsys_init 40 ms -> not run" in note and "tty_class_init 12 ms -> 8 ms" in note
    assert "drops 40 ms" in note


MEMORY_LINE = ("[    0.000] Memory: 13936K/27256K available (4096K kernel code, 733K rwdata, 240K rodata, 496K init, "
               "812K bss, 13064K reserved, 0K cma-reserved)")


def test_memory_breakdown_adds_up_to_the_minimum():
    line = measure.memory.parse_memory_line(MEMORY_LINE)
    assert line == {"available": 13936, "total": 27256, "code": 4096, "rwdata": 733, "rodata": 240, "init": 496,
                    "bss": 812, "reserved": 13064}
    assert measure.memory.parse_memory_line("Memory: lots") is None
    parts = measure.memory.breakdown(line, 31, archive_bytes=4_159_488, unpacked_bytes=4_156_050)
    assert parts["kernel_image"] == 4096 + 733 + 240 + 812
    assert parts["initramfs_archive"] == 4062 and parts["unpacked_tree"] == 4059
    # the initrd is part of "reserved" until it is freed: not counted twice
    assert parts["reserved_other"] == 13064 - 5881 - 496 - 4062 and parts["kernel_gaps"] == 0
    assert sum(parts.values()) == 31 * 1024
    # hello's kernel: the console said "text/rodata gap: 2044K" and "rodata/data gap: 1808K"
    gaps = measure.memory.kernel_gaps("ffffffff81400110 T _etext\nffffffff81600000 D __start_rodata\n"
                                      "ffffffff8163c000 D __end_rodata\nffffffff81800000 D _sdata\n")
    assert gaps == 2044 + 1808 and measure.memory.kernel_gaps("ffffffff81400110 T _etext\n") == 0
    ext2 = measure.memory.breakdown(line, 27, 0, 0)
    with_gaps = measure.memory.breakdown(line, 27, 0, 0, gaps)  # the gaps are part of "reserved" too
    assert with_gaps["kernel_gaps"] == 3852 and with_gaps["reserved_other"] == ext2["reserved_other"] - 3852 == 2835
    assert sum(with_gaps.values()) == 27 * 1024


def test_memory_breakdown_section_picks_the_smallest_floor_that_does_not_slow_boot():
    line = measure.memory.parse_memory_line(MEMORY_LINE)
    cpio = {"memory_line": line, "parts": measure.memory.breakdown(line, 31, 4_159_488, 4_156_050)}
    ext2 = {"memory_line": line, "parts": measure.memory.breakdown(line, 27, 0, 0)}
    data = {"results": [{"app": "hello", "variant": "specific", "label": "lupine-base (hello)", "min_mib": 31,
                         "root": "cpio", "breakdown": cpio}],
            "alternatives": [{"app": "hello", "variant": "specific", "root": "ext2", "own_root": "cpio",
                              "own_min_mib": 31, "min_mib": 27, "breakdown": ext2, "own_ready_s": 0.56,
                              "ready_s": 0.631}]}
    sec = report.memory_breakdown_section(data)
    assert [[r[0]] + r[2:4] for r in sec.rows] == [["hello", "cpio", "31 MiB"], ["hello", "ext2", "27 MiB"]]
    assert sec.rows[0][8] == "4.0" and sec.rows[1][8] == "0.0"
    assert sec.notes[0] == ("hello: cpio 31 MiB, ready in 0.560 s; ext2 27 MiB, ready in 0.631 s; smallest floor "
                            "without slowing boot (at most 1.05x cpio's time to ready): cpio")
    data["alternatives"][0]["ready_s"] = 0.57
    assert report.memory_breakdown_section(data).notes[0].endswith(": ext2")
    # a second alternative (a gzip archive) with a smaller floor still and no slower: it wins
    gz = dict(data["alternatives"][0], root="cpio.gz", min_mib=25, ready_s=0.55,
              breakdown={"memory_line": line, "parts": measure.memory.breakdown(line, 25, 1_700_000, 4_156_050)})
    data["alternatives"].append(gz)
    sec = report.memory_breakdown_section(data)
    assert [r[2] for r in sec.rows] == ["cpio", "ext2", "cpio.gz"] and sec.notes[0].endswith(": cpio.gz")
    # the baseline measured with both roots too: like is compared with like
    fc = {"memory_line": line, "parts": measure.memory.breakdown(line, 47, 4_159_488, 4_156_050)}
    data["results"].append({"app": "hello", "variant": "firecracker", "label": "firecracker", "min_mib": 47,
                            "root": "cpio", "breakdown": fc})
    data["alternatives"].append({"app": "hello", "variant": "firecracker", "root": "ext2", "own_root": "cpio",
                                 "own_min_mib": 47, "min_mib": 45, "breakdown": fc, "own_ready_s": 1.4,
                                 "ready_s": 1.5})
    sec = report.memory_breakdown_section(data)
    assert [r[1:3] for r in sec.rows][-2:] == [["firecracker", "cpio"], ["firecracker", "ext2"]]
    assert "hello with an ext2 root on every kernel too: 27 MiB = 0.60x firecracker's 45 MiB (with cpio: 0.66x " \
           "firecracker's)" in sec.notes


def test_the_kernel_timeline_names_the_longest_silences():
    console = ("[   0.200] [    0.104000] signal: max sigframe size: 3232\n"
               "[   0.201] [    0.108000] initcall 0xffffffff818bb71a returned 0 after 0 usecs\n"
               "[   0.420] [    0.330000] devtmpfs: initialized\n"
               "[   0.421] no kernel stamp on this line\n"
               "[   0.500] [    0.400000] Run /init as init process\n")
    t = measure.initcalls.gaps(console, {0xffffffff818bb71a: "init_a"}, n=2)
    assert t["init_s"] == 0.4
    assert t["gaps"] == [{"ms": 222.0, "after": "initcall init_a returned 0 after 0 usecs",
                          "before": "devtmpfs: initialized"},
                         {"ms": 70.0, "after": "devtmpfs: initialized", "before": "Run /init as init process"}]
    assert measure.initcalls.gaps("[   0.1] plain\n") == {"init_s": None, "gaps": []}


def test_pipeline_timing_runs_a_command_and_reports_its_status():
    seconds, output, status = measure.pipeline.timed(["sh", "-c", "echo hi; exit 3"])
    assert status == 3 and output == "hi\n" and 0 <= seconds < 10


def _fake_built(hello, identity="a" * 64, sha="f" * 64):
    """A kernel pointer, a root image and its manifest for *hello*, as the pipeline records them."""
    from tailor import rootfs

    fakes.kernel_pointer(hello.id, Path("/k"), identity)
    image = rootfs.image_path(hello)
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"x")
    fakes.rootfs_manifest(hello.name, image, sha256=sha)


def test_catalogue_timing_boots_round_by_round_and_the_table_shows_medians(tmp_path, monkeypatch):
    from tailor import boot, catalogue, paths, recipe

    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    hello = next(r for r in recipe.all_recipes() if r.name == "hello")
    _fake_built(hello)
    general = recipe.general_variant(hello)
    fakes.kernel_pointer(general.id, Path("/g"), "c" * 64)
    fakes.boot_result(paths.boot_result("hello"), time_to_ready_s=9.0)
    seen, times = [], iter([0.9, 1.0, 0.5, 1.2, 0.7, 1.1])

    def fake_run(r, kernel, image, outdir, cmdline_extra=""):
        seen.append((r.id, Path(kernel).name))
        t = next(times)
        return {"time_to_ready_s": t}

    monkeypatch.setattr(boot, "run", fake_run)
    data = catalogue.time_boots([hello], runs=3)
    # round by round, each kernel once per round (no config beside the fake kernels: their bzImage boots)
    assert seen == [("hello", "bzImage"), ("hello@general", "bzImage")] * 3
    assert data["apps"]["hello"]["general"]["median_s"] == 1.1 and "firecracker" not in data["apps"]["hello"]
    assert data["apps"]["hello"]["specific"] == {"kernel": "a" * 64, "ready_s": [0.9, 0.5, 0.7], "median_s": 0.7,
                                                 "failed": []}
    text = catalogue.render_table([hello])
    row = next(line for line in text.splitlines() if line.startswith("| hello |"))
    assert "pass (0.7 s)" in row and "9.0" not in row and "the median of 3 boots" in text
    assert "not built" in row  # the general variant has no boot test result: no time without one
    _fake_built(hello, sha="e" * 64)  # the image changed since: the timing is stale, the boot test's time shows
    row = next(line for line in catalogue.render_table([hello]).splitlines() if line.startswith("| hello |"))
    assert "pass (9.0 s)" in row
    _fake_built(hello, identity="b" * 64)  # same image, another kernel: stale too
    row = next(line for line in catalogue.render_table([hello]).splitlines() if line.startswith("| hello |"))
    assert "pass (9.0 s)" in row
    with pytest.raises(TailorError, match="runs must be at least 1"):
        catalogue.time_boots([hello], runs=0)


def test_a_root_variant_that_could_not_be_built_says_why():
    cell = report._slim_cell({"bytes": None, "content_bytes": None, "files": None, "pass": False,
                              "reason": "not built: recipes/x.yaml: app.workdir '/app' is not a directory in the "
                                        "rootfs", "ready_s": None, "min_memory_mib": None})
    assert cell == "not built: recipes/x.yaml: app.workdir '/app' is not a directory in the rootfs"


def test_kernel_lines_compare_size_boot_and_minimum_memory_side_by_side():
    """The 6.1 row and its 6.12 copy: each figure beside the copy's ratio to it, memory included."""
    def kernel(app, source, bz, enabled, calls):
        return {"label": app, "variant": "specific", "apps": [app], "bzImage": bz, "vmlinux": 10 * bz,
                "enabled": enabled, "syscalls": {"real": calls, "raw": calls, "stubs": 0}, "source": source}

    size = {"kernels": [kernel("hello", "linux-source-6.1 6.1.192-2", 1_000_000, 400, 230),
                        kernel("hello-612", "linux-source-6.12 6.12.118-1~deb12u1", 1_100_000, 440, 235)]}
    boot = {"results": [{"app": a, "variant": "specific", "init_s": {"median": t}, "ready_s": {"median": t + 0.1}}
                        for a, t in (("hello", 0.4), ("hello-612", 0.44))]}
    memory = {"results": [{"app": "hello", "variant": "specific", "min_mib": 20},
                          {"app": "hello-612", "variant": "specific", "min_mib": 25},
                          {"app": "hello", "variant": "general", "min_mib": 99}]}
    section = report.lines_section(size, boot, memory)
    rows = {r[0]: r for r in section.rows}
    assert section.head[-2:] == ["min memory", "×"]
    assert rows["hello"][-2:] == ["20 MiB", ""] and rows["hello-612"][-2:] == ["25 MiB", "1.25x"]
    assert rows["hello-612"][2:4] == ["1.10 MB", "1.10x"]
    without = {r[0]: r for r in report.lines_section(size, boot, None).rows}
    assert without["hello-612"][-2:] == ["–", "–"]  # not measured


def test_discovery_section_puts_each_app_beside_its_hand_found_kernel():
    row = {"app": "redis", "trial_kernels": 11, "builds": 9, "total_s": 1500.0, "discovered": ["EPOLL", "FUTEX", "INET", "SWAP"],
           "recipe": ["EPOLL", "FUTEX", "INET", "PROC_FS"], "bzImage": 1_414_000, "syscalls": 262,
           "hand_found": {"identity": "a" * 64, "bzImage": 1_400_000, "syscalls": 263}, "minimised": True,
           "untried": [], "search": "probdd"}
    other = dict(row, app="nginx", hand_found=None, untried=["UNIX"], trial_kernels=40)
    old = dict(row, app="memcached")
    del old["search"]  # measured before --search: ddmin
    section = report.discover_section({"kind": "discover", "rows": [row, other, old]})
    cells = {r[0]: r for r in section.rows}
    assert cells["memcached"][1] == "minimised (ddmin)"
    assert cells["redis"] == ["redis", "minimised (probdd)", "11 (9 compiled)", "25.0 min", "4 / 4", "1.41 MB", "1.40 MB", "1.01x",
                              "262 / 263", "SWAP", "PROC_FS", "–", "–"]
    dated = report.discover_section({"kind": "discover", "rows": [dict(row, measured="2026-12-03 14:53 UTC")]})
    assert dated.rows[0][-1] == "2026-12-03"
    mapped = dict(row, mapping={"objects": ["EPOLL", "FUTEX", "SWAP"], "lines": ["EPOLL", "SWAP_X"], "lines_only": ["SWAP_X"]})
    assert report.discover_section({"kind": "discover", "rows": [mapped]}).rows[0][-2] == "3 / 2 / 1"
    assert cells["nginx"][1] == "budget spent (1 untried)" and cells["nginx"][6:8] == ["–", "–"]
    assert section.missing[0] == "nginx: hand-found kernel not built; run `doit kernel:nginx`"
    assert not report.discover_section(None).rows  # nothing measured: the section says what to run
