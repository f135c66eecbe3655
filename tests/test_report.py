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

from tailor import measure, report
from tailor.errors import TailorError

CONDITIONS = {"machine": "x86_64, test CPU, 2 cores, 4.0 GiB", "os": "Debian GNU/Linux 12 (bookworm)",
              "accel": "tcg", "qemu": "QEMU emulator version 7.2", "gcc": "gcc 12.2.0",
              "kernel": "linux-source-6.1 6.1.192-2", "load": [0.5, 0.4, 0.3], "date": "2024-01-01 00:00 UTC"}


def _spread(*xs):
    return measure.spread(list(xs))


def _kernel(label, variant, apps, bz, vml, enabled, real, ident):
    return {"label": label, "variant": variant, "apps": apps, "identity": ident * 4, "bzImage": bz,
            "bzImage_xz_estimate": int(bz * 0.8), "vmlinux": vml, "enabled": enabled, "syscalls": {"real": real, "raw": real, "stubs": 450 - real}}


def fixture_results() -> dict[str, dict]:
    """A complete set of stored measurements: hello, redis and nginx against the microvm baseline."""
    size = {"kind": "size", "conditions": CONDITIONS, "missing": [], "kernels": [
        _kernel("lupine-base (hello)", "specific", ["hello"], 1_266_688, 13_037_632, 387, 247, "aaaa"),
        _kernel("redis", "specific", ["redis"], 1_905_664, 15_764_136, 408, 278, "bbbb"),
        _kernel("nginx", "specific", ["nginx"], 1_950_000, 15_900_000, 412, 281, "cccc"),
        _kernel("general", "general", ["hello", "redis", "nginx"], 1_995_776, 15_843_016, 422, 319, "dddd"),
        _kernel("microvm", "baseline-ignored", [], 0, 0, 0, 0, "eeee"),
    ]}
    size["kernels"][-1] = _kernel("microvm", "microvm", ["hello", "redis", "nginx"], 10_500_000, 50_000_000,
                                  1490, 440, "eeee")
    boot_rows, mem_rows, tput_rows = [], [], []
    for app, base_init in (("hello", 2.0), ("redis", 2.2), ("nginx", 2.1)):
        for variant, f in (("specific", 0.4), ("general", 0.45), ("microvm", 1.0)):
            label = {"specific": "lupine-base (hello)" if app == "hello" else app}.get(variant, variant)
            t = base_init * f
            boot_rows.append({"app": app, "variant": variant, "label": label, "kernel": "x",
                              "init_s": _spread(t, t + 0.02, t - 0.01), "ready_s": _spread(t + 0.5, t + 0.6),
                              "errors": []})
            mem_rows.append({"app": app, "variant": variant, "label": label, "kernel": "x",
                             "min_mib": round(40 * f) + 10, "tried": {"256": True, "132": True},
                             "range": [8, 256]})
            if app != "hello":
                g = {"specific": 1.25, "general": 1.15, "microvm": 1.0}[variant]
                tests = ({"GET": _spread(7000 * g, 7100 * g), "SET": _spread(6900 * g, 6800 * g)}
                         if app == "redis" else {"GET /": _spread(900 * g, 880 * g, 910 * g)})
                tput_rows.append({"app": app, "variant": variant, "label": label,
                                  "tool": "redis-benchmark" if app == "redis" else "ab", "tests": tests})
        boot_rows.append({"app": app, "variant": "firecracker", "label": "firecracker", "kernel": None,
                          "missing": "baseline not built; run `doit baseline:firecracker`"})
    return {
        "size": size,
        "boot": {"kind": "boot", "conditions": CONDITIONS, "runs": 3, "cmdline_extra": "quiet",
                 "marker": measure.MARKER, "accel_used": ["tcg"], "results": boot_rows},
        "memory": {"kind": "memory", "conditions": CONDITIONS, "cmdline_extra": "quiet", "results": mem_rows},
        "throughput": {"kind": "throughput", "conditions": CONDITIONS,
                       "params": {"redis-benchmark": measure.REDIS_BENCH, "ab": measure.HTTP_BENCH},
                       "results": tput_rows},
        "pipeline": {"kind": "pipeline", "conditions": CONDITIONS, "app": "redis",
                     "noop": {"doit_s": _spread(0.31, 0.33, 0.30), "kbuild_s": _spread(6.1, 6.0, 6.3),
                              "doit_was_noop": True, "doit_cmd": "doit build:redis",
                              "kbuild_cmd": "make -C <src> O=<objdir> bzImage"},
                     "clean": None},
    }


@pytest.fixture
def bench(tmp_path, monkeypatch) -> Path:
    """A temporary out/ whose bench/ holds the fixture measurements."""
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    d = tmp_path / "out" / "bench"
    d.mkdir(parents=True)
    for kind, data in fixture_results().items():
        (d / f"{kind}.json").write_text(json.dumps(data))
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


def _verdicts(results):
    return {t["id"]: t["verdict"] for t in report.evaluate_targets(results)}


def test_targets_from_the_fixture():
    v = _verdicts(fixture_results())
    # bzImage 1.27 MB / 10.5 MB = 0.12x; redis 0.18x; general 0.19x
    assert v["size-base"] == "missed" and v["size-redis"] == "missed" and v["size-general"] == "met"
    assert v["boot-base"] == "met" and v["boot-general"] == "met" and v["boot-kvm"] == "n/a"
    assert v["memory-hello"] == "met" and v["memory-redis"] == "met"
    assert v["tput-redis"] == "met" and v["tput-nginx"] == "met"
    assert v["sys-base"] == "met" and v["sys-general"] == "met"
    assert v["noop-abs"] == "met" and v["noop-ratio"] == "met"


def test_targets_not_measured_without_results():
    assert set(_verdicts({}).values()) == {"not measured"}


def test_missed_target_says_what_would_close_the_gap():
    rows = {t["id"]: t for t in report.evaluate_targets(fixture_results())}
    assert rows["size-base"]["gap"] and "x" in rows["size-base"]["ratio"]
    assert rows["size-general"]["gap"] == ""


def test_targets_prefer_the_firecracker_baseline():
    results = fixture_results()
    fc = dict(results["size"]["kernels"][-1], label="firecracker", variant="firecracker",
              bzImage=8_300_000, identity="f" * 16)
    results["size"]["kernels"].append(fc)
    rows = {t["id"]: t for t in report.evaluate_targets(results)}
    assert rows["size-base"]["against"] == "firecracker"
    assert rows["size-base"]["ratio"] == "0.153x"


# --------------------------------------------------------------------------
# Rendering


def test_report_renders_every_metric(bench, tmp_path):
    paths = report.build()
    html = paths["html"].read_text()
    md = paths["md"].read_text()
    assert paths["html"] == tmp_path / "out" / "report" / "index.html"
    for title in ("Kernel image size", "Attack surface: system calls", "Boot time", "Memory footprint",
                  "Throughput", "The pipeline itself", "Targets", "Conditions"):
        assert f">{title}</h2>" in html
        assert f"## {title}" in md
    assert html.count("<svg") >= 6
    assert "× microvm" in html and "0.12x" in html
    assert "not measured" not in md.split("## Conditions")[0].split("## Kernel image size")[1] \
        .split("## Boot time")[0]
    assert "baseline not built; run `doit baseline:firecracker`" in md
    assert "QEMU emulator version 7.2" in md and "TCG" in md
    assert "| lupine-base (hello) | hello | 1.27 MB | 0.12x | 1.01 MB | 0.10x |" in md
    assert "**MISSED**" in md


def test_report_without_measurements_says_not_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    paths = report.build()
    md = paths["md"].read_text()
    assert md.count("not measured: run") == 6
    assert "<svg" not in paths["html"].read_text()


def test_report_escapes_html(bench):
    data = json.loads((bench / "memory.json").read_text())
    data["results"][0]["label"] = "<script>x</script>"
    (bench / "memory.json").write_text(json.dumps(data))
    html = report.build()["html"].read_text()
    assert "<script>x" not in html and "&lt;script&gt;x" in html


def test_benchmark_summary_prints_ratios_and_targets(bench):
    text = report.summary(report.load_results(), ("size", "syscalls"), ("size", "syscalls"))
    assert "× microvm" in text and "0.12x" in text
    assert "target bzImage size, lupine-base (hello): 1.27 MB = 0.121x (limit <= 0.12x" in text
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


def test_kata_column_beside_firecracker_when_a_kata_result_exists(tmp_path, monkeypatch):
    results = fixture_results()
    base = results["size"]["kernels"][-1]
    results["size"]["kernels"] += [
        dict(base, label="firecracker", variant="firecracker", bzImage=8_300_000, identity="f" * 16),
        dict(base, label="kata", variant="kata", bzImage=6_333_376, identity="k" * 16)]
    results["boot"]["results"].append({"app": "hello", "variant": "kata", "label": "kata", "kernel": "x",
                                       "init_s": _spread(1.6, 1.7), "ready_s": _spread(2.0, 2.1), "errors": []})
    secs = {s.id: s for s in report.sections(results)}
    head = secs["size"].head
    assert "× kata" in head and head.index("× kata") == head.index("× firecracker") + 1
    assert "× kata" in secs["syscalls"].head
    hello = next(r for r in secs["size"].rows if r[0] == "lupine-base (hello)")
    assert hello[3:6] == ["0.12x", "0.15x", "0.20x"]
    assert "× kata" in secs["boot"].head
    without = {s.id: s for s in report.sections(fixture_results())}
    assert "× kata" not in without["size"].head and "× kata" not in without["boot"].head
