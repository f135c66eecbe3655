"""The fits check: a recorded discovery of redis against the real Firecracker config and hand-written
ones, through the functions, the command line (exit 0 / 3 / 1) and the doit action."""

import json
from pathlib import Path

import pytest

import fakes
from tailor import fits
from tailor.__main__ import main
from tailor.errors import TailorError
from tailor.recipe import load

FIRECRACKER = Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "firecracker-microvm-6.1.config"

# What discovery records for redis (the shape tailor.discover writes): traced options with the
# functions the app ran under them, the two menus VIRTIO_NET depends on added by resolve: deps.
EVIDENCE = {
    "NET": ["__x64_sys_accept4", "__x64_sys_bind", "__x64_sys_getsockname", "__x64_sys_listen",
            "__x64_sys_recvfrom", "__x64_sys_sendto", "__x64_sys_setsockopt", "__x64_sys_socket",
            "sock_alloc", "sock_recvmsg"],
    "INET": ["inet_accept", "inet_bind", "inet_listen", "tcp_recvmsg", "tcp_sendmsg", "tcp_v4_rcv"],
    "VIRTIO_NET": ["receive_buf", "start_xmit", "virtnet_poll"],
    "EPOLL": ["__x64_sys_epoll_create1", "__x64_sys_epoll_ctl", "__x64_sys_epoll_wait", "do_epoll_wait",
              "ep_insert", "ep_poll"],
    "FUTEX": ["__x64_sys_futex", "do_futex", "futex_wait", "futex_wake"],
}
PCS = {"ep_poll": 40, "do_epoll_wait": 12, "ep_insert": 9, "virtnet_poll": 30, "start_xmit": 20,
       "receive_buf": 25, "tcp_sendmsg": 50, "tcp_recvmsg": 45, "tcp_v4_rcv": 44, "inet_accept": 8,
       "inet_bind": 3, "inet_listen": 2, "futex_wait": 7, "futex_wake": 6, "do_futex": 5}
OPTIONS = [
    {"option": "NET", "from": "trace", "why": "traced: system calls accept4, bind, getsockname, listen, "
                                             "recvfrom, sendto, setsockopt, socket; 2 functions ran: ..."},
    {"option": "INET", "from": "trace", "why": "traced: 6 functions ran: tcp_sendmsg, tcp_recvmsg, ..."},
    {"option": "VIRTIO_NET", "from": "trace", "why": "traced: 3 functions ran: virtnet_poll, receive_buf, ..."},
    {"option": "EPOLL", "from": "trace", "why": "traced: system calls epoll_create1, epoll_ctl, epoll_wait; "
                                               "3 functions ran: ep_poll, do_epoll_wait, ep_insert"},
    {"option": "FUTEX", "from": "trace", "why": "traced: system calls futex; 3 functions ran: ..."},
    {"option": "NETDEVICES", "from": "deps", "why": "needed by VIRTIO_NET (resolve: deps)"},
    {"option": "NET_CORE", "from": "deps", "why": "needed by VIRTIO_NET (resolve: deps)"},
]

# Everything redis needs except EPOLL (not set) and VIRTIO_NET (a module).
SMALL = """\
CONFIG_NET=y
CONFIG_INET=y
CONFIG_NETDEVICES=y
CONFIG_NET_CORE=y
CONFIG_VIRTIO_NET=m
# CONFIG_EPOLL is not set
CONFIG_FUTEX=y
"""
EPOLL_LINE = ("redis: CONFIG_EPOLL not set: needed by system calls epoll_create1, epoll_ctl, epoll_wait; "
              "functions ep_poll, do_epoll_wait, ep_insert")
VIRTIO_LINE = ("redis: CONFIG_VIRTIO_NET is a module (=m); microVMs here boot without modules: "
               "needed by functions virtnet_poll, receive_buf, start_xmit")


@pytest.fixture
def out(tmp_path, monkeypatch):
    d = tmp_path / "out"
    monkeypatch.setenv("TAILOR_OUT", str(d))
    return d


@pytest.fixture
def redis_record(out):
    d = out / "discover" / "redis"
    d.mkdir(parents=True)
    by_app = dict(EVIDENCE, SOFTIRQ_EXTRA=["run_timer_softirq"])
    fakes.discovery_summary("redis", options=[{**o, "class": "deps" if o["from"] == "deps" else "syscall"}
                                              for o in OPTIONS])
    fakes.discovery_trace("redis", EVIDENCE, by_option={"app": by_app, "boot": {}}, functions={"app": PCS, "boot": {}})
    calls = sorted({f[len("__x64_sys_"):] for fns in EVIDENCE.values() for f in fns if f.startswith("__x64_sys_")})
    fakes.discovery_syscalls("redis", calls)
    return d


@pytest.fixture
def small_config(tmp_path):
    path = tmp_path / "small.config"
    path.write_text(SMALL)
    return path


def test_needs_reads_options_calls_and_functions(redis_record):
    n = fits.needs("redis")
    assert [o.option for o in n.options] == ["NET", "INET", "VIRTIO_NET", "EPOLL", "FUTEX", "NETDEVICES", "NET_CORE"]
    epoll = n.options[3]
    assert (epoll.source, epoll.syscalls) == ("trace", ("epoll_create1", "epoll_ctl", "epoll_wait"))
    assert epoll.functions == ("ep_poll", "do_epoll_wait", "ep_insert")  # most pcs first
    assert n.options[4].syscalls == ("futex",)
    assert n.options[5].functions == () and n.options[5].why == "needed by VIRTIO_NET (resolve: deps)"
    assert "epoll_wait" in n.syscalls and "execve" not in n.syscalls


@pytest.mark.skipif(not FIRECRACKER.is_file(), reason=f"{FIRECRACKER} not on this machine (../shared/reference)")
def test_redis_fits_the_real_firecracker_config(redis_record):
    text = fits.read_config(FIRECRACKER)
    # Firecracker's 6.1 guest config has all seven =y (and no modules at all).
    assert fits.check(fits.needs("redis"), text) == []
    assert fits.format_report("redis", "firecracker-microvm-6.1.config", []) == \
        "redis fits firecracker-microvm-6.1.config"
    # ... but not VIRTIO_MMIO_CMDLINE_DEVICES, which tailor's baseline adds for qemu's microvm
    extra = fits.Needs("x", "test", (fits.Need("VIRTIO_MMIO_CMDLINE_DEVICES", "deps", "needed by qemu's microvm"),))
    assert fits.check(extra, text) == [fits.Missing("VIRTIO_MMIO_CMDLINE_DEVICES", "not set",
                                                    "needed by qemu's microvm")]


def test_small_config_misses_epoll_and_has_virtio_net_as_module(redis_record):
    missing = fits.check(fits.needs("redis"), SMALL)
    assert [(m.option, m.state) for m in missing] == [("VIRTIO_NET", fits.MODULE), ("EPOLL", "not set")]
    assert "epoll_wait" in missing[1].needed_by
    assert fits.format_report("redis", "small.config", missing).splitlines() == [
        VIRTIO_LINE, EPOLL_LINE, "redis does not fit small.config: 2 options missing"]


def test_needed_by_shows_six_calls_four_functions_then_counts(redis_record):
    empty = "# CONFIG_NET is not set\nCONFIG_X=y\n"
    by = {m.option: m.needed_by for m in fits.check(fits.needs("redis"), empty)}
    assert by["NET"] == ("needed by system calls accept4, bind, getsockname, listen, recvfrom, sendto (+2 more); "
                         "functions sock_alloc, sock_recvmsg")
    assert by["INET"] == "needed by functions tcp_sendmsg, tcp_recvmsg, tcp_v4_rcv, inet_accept (+2 more)"
    assert by["NET_CORE"] == "needed by VIRTIO_NET (resolve: deps)"


def test_without_trace_json_the_why_is_the_reason(redis_record):
    (redis_record / "trace.json").unlink()
    missing = fits.check(fits.needs("redis"), SMALL)
    assert missing[1].needed_by == OPTIONS[3]["why"]
    assert missing[0].needed_by == "traced: 3 functions ran: virtnet_poll, receive_buf, ..."


def test_cli_exit_3_when_options_are_missing(redis_record, small_config, capsys):
    assert main(["fits", "redis", "--config", str(small_config)]) == 3
    out = capsys.readouterr().out.splitlines()
    assert out == [VIRTIO_LINE, EPOLL_LINE, f"redis does not fit {small_config}: 2 options missing"]


def test_cli_exit_0_when_it_fits(redis_record, tmp_path, capsys):
    full = tmp_path / "full.config"
    full.write_text(SMALL.replace("CONFIG_VIRTIO_NET=m", "CONFIG_VIRTIO_NET=y")
                    .replace("# CONFIG_EPOLL is not set", "CONFIG_EPOLL=y"))
    assert main(["fits", "redis", "--config", str(full)]) == 0
    assert capsys.readouterr().out == f"redis fits {full}\n"


def test_cli_from_recipe_uses_kernel_options_and_their_comments(out, tmp_path, small_config, capsys):
    recipe = tmp_path / "kv.yaml"
    recipe.write_text("description: a key-value server\nkernel:\n  base: [lupine-base]\n  options:\n"
                      "    NET: y          # sockets\n    EPOLL: y        # the event loop (ae_epoll)\n"
                      "    LOG_BUF_SHIFT: 14\n    VIRTIO_NET: y\n"
                      "rootfs:\n  packages: [redis-server]\napp:\n  command: redis-server\n")
    assert main(["fits", str(recipe), "--config", str(small_config), "--from-recipe"]) == 3
    assert capsys.readouterr().out.splitlines() == [
        "kv: CONFIG_EPOLL not set: recipe kernel.options (the event loop (ae_epoll))",
        "kv: CONFIG_VIRTIO_NET is a module (=m); microVMs here boot without modules: recipe kernel.options",
        f"kv does not fit {small_config}: 2 options missing"]


def test_cli_without_a_discovery_record(out, small_config, capsys):
    assert main(["fits", "redis", "--config", str(small_config)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"tailor: error: {out / 'discover' / 'redis' / 'discover.json'}: no discovery record")
    assert "run `doit discover:redis` first" in err


def test_cli_corrupt_discover_json(redis_record, small_config, capsys):
    (redis_record / "discover.json").write_text('{"options": [{"option": "NET",')
    assert main(["fits", "redis", "--config", str(small_config)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"tailor: error: {redis_record / 'discover.json'}: unreadable (")
    assert "Traceback" not in err


@pytest.mark.parametrize("name, content, key", [
    ("discover.json", {"options": [{**OPTIONS[0], "class": "syscall"}, {"from": "deps", "class": "deps", "why": ""}]},
     "key 'options[1]' has no 'option'"),
    ("discover.json", {"options": [{**OPTIONS[0], "class": "syscall", "option": 7}]},
     "options[0].option: expected an option name, got int"),
    ("discover.json", {"options": {"NET": "y"}}, "key 'options' is dict, expected list"),
    ("trace.json", {"evidence": {"EPOLL": "ep_poll"}}, "evidence.EPOLL: expected a list of function names, got str"),
    ("trace.json", {"entered": None}, "key 'entered' is NoneType, expected dict"),
    ("syscalls.json", {"app_phase": "epoll_wait"}, "key 'app_phase' is str, expected list"),
])
def test_damaged_record_names_file_and_key(redis_record, name, content, key):
    good = json.loads((redis_record / name).read_text())
    (redis_record / name).write_text(json.dumps({**good, **content}))
    with pytest.raises(TailorError) as e:
        fits.needs("redis")
    assert str(e.value).startswith(f"{redis_record / name}: {key}")
    assert "\n" not in str(e.value)


def test_config_that_is_no_config(redis_record, tmp_path):
    bogus = tmp_path / "bzImage"
    bogus.write_bytes(b"\x7fELF\x00\x01binary")
    with pytest.raises(TailorError, match=r"bzImage: no CONFIG_ lines; not a kernel \.config$"):
        fits.read_config(bogus)
    with pytest.raises(TailorError, match=r"nothere\.config: cannot read \(No such file or directory\)$"):
        fits.read_config(tmp_path / "nothere.config")


def test_doit_action_checks_every_baseline_and_writes_json(redis_record, out, tmp_path, small_config, capsys):
    (out / "baseline" / "firecracker").mkdir(parents=True)
    (out / "baseline" / "firecracker" / ".config").write_text(SMALL)
    recipe = tmp_path / "redis.yaml"
    recipe.write_text("description: redis\nkernel:\n  base: [lupine-base]\n"
                      "rootfs:\n  packages: [redis-server]\napp:\n  command: redis-server\n")
    r = load(recipe)
    data = fits.against_baselines(r)
    lines = capsys.readouterr().out.splitlines()
    fc = out / "baseline" / "firecracker" / ".config"
    assert "redis: baseline microvm not built (doit baseline:microvm)" in lines
    assert lines[lines.index(VIRTIO_LINE):lines.index(VIRTIO_LINE) + 3] == [
        VIRTIO_LINE, EPOLL_LINE, f"redis does not fit the firecracker baseline ({fc}): 2 options missing"]
    assert any(ln.startswith("redis: baseline kata not built (") for ln in lines)
    written = json.loads((out / "fits" / "redis.json").read_text())
    assert written == json.loads(json.dumps(data))  # what it returns is what it wrote
    assert written["baselines"]["firecracker"]["fits"] is False
    assert [m["option"] for m in written["baselines"]["firecracker"]["missing"]] == ["VIRTIO_NET", "EPOLL"]
    assert written["baselines"]["microvm"] == {"config": str(out / "baseline" / "microvm" / ".config"),
                                               "built": False}
    assert written["needs_from"] == str(redis_record)

    from tailor.tasks import study

    task, table = list(study.fits_tasks([r]))
    assert (task["name"], task["uptodate"], task["verbosity"]) == ("redis", [False], 2)
    assert task["targets"] == [str(out / "fits" / "redis.json")]
    assert table["basename"] == "fits_table" and table["doc"]


def test_doit_action_without_record_checks_the_recipe(out, tmp_path, capsys):
    (out / "baseline" / "microvm").mkdir(parents=True)
    (out / "baseline" / "microvm" / ".config").write_text(SMALL)
    recipe = tmp_path / "kv.yaml"
    recipe.write_text("description: kv\nkernel:\n  base: [lupine-base]\n  options:\n    EPOLL: y  # event loop\n"
                      "rootfs:\n  packages: [redis-server]\napp:\n  command: redis-server\n")
    data = fits.against_baselines(load(recipe))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"kv: no discovery record (doit discover:kv); checking {recipe} kernel.options instead"
    assert "kv: CONFIG_EPOLL not set: recipe kernel.options (event loop)" in lines
    assert data["baselines"]["microvm"]["missing"] == [
        {"option": "EPOLL", "state": "not set", "needed_by": "recipe kernel.options (event loop)"}]


def test_the_table_checks_each_recipe_from_its_measured_row_or_its_own_options(tmp_path, monkeypatch):
    """redis has a row in the committed measurement (EPOLL missing from SMALL, VIRTIO_NET only a module);
    memcached has none, so its recipe's kernel.options are checked, even with a record in out/discover/
    (the table is the same on every machine); a config that is not available is said so."""
    from tailor.recipe import find

    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    fakes.discovery_summary("memcached")
    recipes = [find("redis"), find("memcached")]
    measured = {"redis": {"app": "redis", "measured": "2026-12-03 18:35 UTC",
                          "discovered": [o["option"] for o in OPTIONS]}}
    rows = {r["app"]: r for r in fits.table_rows(recipes, {"small": SMALL, "gone": None}, measured)}
    assert rows["redis"]["from"] == "discovery (2026-12-03)" and rows["redis"]["needs"][:2] == ["NET", "INET"]
    assert rows["redis"]["missing"] == {"small": ["VIRTIO_NET", "EPOLL"], "gone": None}
    assert rows["memcached"]["from"] == "recipe"
    assert rows["memcached"]["needs"] == [n for n, v in find("memcached").kernel.options if v == "y"]
    # a damaged row names the file and the key
    with pytest.raises(TailorError, match=r"discover.json: rows\[redis\].discovered\[1\]: expected an option"):
        fits.table_rows([find("redis")], {}, {"redis": {"discovered": ["NET", 3]}}, "x/discover.json")
    # written between the markers of a page and of a README, from configs handed in by baseline_config
    doc, readme = tmp_path / "discovery.md", tmp_path / "README.md"
    doc.write_text(f"intro\n{fits.TABLE_START}\nold\n{fits.TABLE_END}\nafter\n")
    readme.write_text(f"top\n{fits.SUMMARY_START}\n{fits.SUMMARY_END}\n")
    configs = {"firecracker": SMALL, "kata": SMALL.replace("=m", "=y").replace("# CONFIG_EPOLL is not set",
                                                                                 "CONFIG_EPOLL=y"), "microvm": None}
    monkeypatch.setattr(fits, "baseline_config", configs.get)
    monkeypatch.setattr(fits, "measured_rows", lambda: (measured, "x/discover.json"))
    fits.write_table(recipes, doc, readme)
    table = doc.read_text()
    assert "old" not in table and table.startswith("intro\n") and table.endswith("after\n")
    assert "| redis | discovery (2026-12-03) | 7 | lacks VIRTIO_NET, EPOLL | fits | not available |" in table
    summary = readme.read_text().splitlines()[2]
    assert "of the 2 x86_64 recipes" in summary and "microvm: not available here" in summary
    assert "1 fit kata's" in summary or "2 fit kata's" in summary


def test_the_table_reads_the_committed_measurement():
    """measured_rows reads the newest snapshot: every app it has a row for, each with its kept options."""
    rows, where = fits.measured_rows()
    assert where.endswith("/discover.json") and where.startswith("docs/measurements/")
    assert "redis" in rows
    need = fits.measured_needs("redis", rows["redis"], where)
    assert {"EPOLL", "INET"} <= {n.option for n in need.options} and need.origin == where


def test_the_table_of_the_real_firecracker_config(redis_record, monkeypatch):
    """Against Firecracker's own 6.1 guest config (as is, without olddefconfig): the recorded redis fits."""
    if not FIRECRACKER.is_file():
        pytest.skip("Firecracker's config is not beside the project")
    from tailor.recipe import find

    measured = {"redis": {"app": "redis", "discovered": [o["option"] for o in OPTIONS]}}
    rows = fits.table_rows([find("redis")], {"firecracker": FIRECRACKER.read_text()}, measured)
    assert rows[0]["missing"] == {"firecracker": []}
