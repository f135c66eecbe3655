"""Property tests (hypothesis): hostile input never crashes the recipe loader or the Kconfig engine.

* Random recipes (YAML built from the real schema's keys mixed with junk, and
  random YAML-ish text) either load or fail with one TailorError line that
  starts with the recipe's file name; never another exception.
* Random option sets over the real Linux 6.1 Kconfig tree (real symbol names,
  misspelled ones and junk, with values of every type) either resolve to a
  verified config or fail with a TailorError whose lines name the offending
  symbols; never another exception.

Example counts are modest so that the quick loop stays quick; hypothesis's
example database is off, so no .hypothesis/ directory is written.
"""

from __future__ import annotations

import re
import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import event as _event
from hypothesis.errors import InvalidArgument
from hypothesis import strategies as st

from tailor import config, kconfig, recipe, schema
from tailor.errors import TailorError
from tailor.kconfig import ResolveError

RECIPE_PATH = recipe.RECIPES_DIR / "prop-test.yaml"
RECIPE_NAME = "recipes/prop-test.yaml"


def quick(examples: int):
    """hypothesis settings for the quick loop: *examples* examples, no deadline, no example database."""
    return settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


QUICK = quick(60)


def event(what: str) -> None:
    """Count an outcome in hypothesis's statistics (a no-op in the plain parametrized tests)."""
    try:
        _event(what)
    except InvalidArgument:
        pass


# ---------------------------------------------------------------------------
# Recipes

SCHEMA = {section: list(schema.children(path)) for section, path in (
    ("", ""), ("kernel", "kernel"), ("rootfs", "rootfs"), ("app", "app"), ("test", "test"),
    ("probe", "test.probe"), ("source", "kernel.source"))}
"""The keys of each recipe section, from the schema table (tailor/schema.py)."""
ALL_KEYS = sorted({k.name for k in schema.KEYS})
INTERESTING = ["y", "n", "m", "", " ", "lupine-base", "debian", "cpio", "ext2", "strict", "deps", "redis",
               "console", "/usr/bin/hello", "hello", "../etc", "/", "a" * 70, "CONFIG_FUTEX", "FUTEX",
               "0x1000", "6379", "é日本", "$(reboot)", "'\"`;|&*\n\t", "\x00", "~", "null", "yes", "1e3",
               "deadbeef" * 8, "https://example.invalid/linux.tar.xz", "[", "{", "*a", "&a", "!!binary"]

scalars = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(INTERESTING)
           | st.text(max_size=12))
keys = st.sampled_from(ALL_KEYS) | st.text(max_size=8) | st.integers(-3, 3) | st.sampled_from(["CONFIG_NET", "NET"])
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                      max_leaves=10)


def section(name: str):
    """A section with the schema's keys (plausible or junk values), a junk key now and then, or junk."""
    own = st.dictionaries(st.sampled_from(SCHEMA[name]), values, max_size=len(SCHEMA[name]))
    extra = st.dictionaries(keys, values, max_size=2)
    return st.one_of(own, st.builds(lambda a, b: {**b, **a}, own, extra), values)


recipes = st.dictionaries(
    st.sampled_from(SCHEMA[""]) | keys,
    st.one_of(*(section(n) for n in ("kernel", "rootfs", "app", "test")), values),
    max_size=6,
).map(lambda d: d if "app" in d or len(d) % 3 else {**d, "app": {"command": "/usr/bin/hello"}})

VALID = {
    "description": "a valid recipe that the mutations below break in one or two places",
    "kernel": {"base": ["lupine-base"], "options": {"NET": "y", "LOG_BUF_SHIFT": 14, "DEFAULT_HOSTNAME": "vm"},
               "resolve": "strict", "cmdline": "quiet"},
    "rootfs": {"packages": ["hello"], "files": ["/etc/hello"], "overlay": ["common"], "format": "cpio",
               "slim": True},
    "app": {"command": "/usr/bin/hello", "args": ["-g", "hi there"], "env": {"GREETING": "hi"}, "workdir": "/",
            "network": True},
    "test": {"ready": "Hello", "probe": {"type": "tcp", "port": 80}, "memory": 64, "timeout": 30},
}


def _paths(d, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _paths(v, prefix + (k,))


PATHS = sorted(_paths(VALID))


@st.composite
def mutated(draw):
    """VALID with up to three changes: a value replaced by junk, a key removed, or a junk key added."""
    import copy

    data = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(PATHS))
        parent = data
        for k in path[:-1]:
            parent = parent.get(k) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        op = draw(st.integers(0, 2))
        if op == 0:
            parent[path[-1]] = draw(values)
        elif op == 1:
            parent.pop(path[-1], None)
        else:
            parent[draw(keys)] = draw(values)
    return data


yaml_text = st.text(alphabet=string.ascii_letters[:6] + string.digits[:3] + ":-[]{}&*!|>'\"#,?%@` \n\t\\é",
                    max_size=80)


def check_parse(text: str) -> None:
    try:
        r = recipe.parse(text, RECIPE_PATH)
    except TailorError as e:
        event("error")
        message = str(e)
        assert message.startswith(RECIPE_NAME), message
        assert "\n" not in message, message
        assert "Traceback" not in message
        return
    event("loaded")
    assert isinstance(r, recipe.Recipe)
    assert recipe.SAFE_NAME.match(r.name)
    assert r.app.command and r.test.timeout >= 1 and r.test.memory >= 16
    assert all(isinstance(a, str) for a in r.app.args)


@QUICK
@given(recipes)
def test_random_recipes_load_or_fail_with_one_line(data):
    check_parse(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))


@QUICK
@given(mutated())
def test_mutated_valid_recipes_load_or_fail_with_one_line(data):
    check_parse(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))


@QUICK
@given(yaml_text)
def test_random_yaml_text_loads_or_fails_with_one_line(text):
    check_parse(text)


@pytest.mark.parametrize("text", [
    "app: &a [*a]\n",                                     # an alias inside itself
    "app: {command: x}\nx: &x [a, a]\ny: [*x, *x]\n",     # aliases that multiply
    "app:\n  args: " + "[" * 4000 + "]" * 4000 + "\n",   # deeper than Python's recursion limit
    "app: {command: !!python/object/apply:os.system [true]}\n",
    "app: {command: 2023-13-45}\n",                       # an impossible date
    "app: {command: !!int zz}\n",
    "\ufeffapp: {command: x}\n",
])
def test_hostile_yaml_examples(text):
    check_parse(text)


# ---------------------------------------------------------------------------
# Option sets over the real Kconfig tree


@pytest.fixture(scope="module")
def base_layers():
    """lupine-base, as every shipped recipe starts from it."""
    return [kconfig.parse_fragment(config.fragment_path("lupine-base"), label="base_configs/lupine-base.config")]


def misspell(name: str, how: int) -> str:
    if how == 0 and len(name) > 2:
        return name[:-1]
    if how == 1:
        return name + "X"
    if how == 2 and len(name) > 3:
        return name[1] + name[0] + name[2:]
    return "NO_SUCH_" + name


@st.composite
def option_sets(draw, names, size):
    """A recipe's options: mostly real symbols, some misspelled or junk, each with a value of any type."""
    out = {}
    for _ in range(draw(st.integers(1, size))):
        kind = draw(st.integers(0, 9))
        name = draw(st.sampled_from(names))
        if kind == 8:
            name = misspell(name, draw(st.integers(0, 3)))
        elif kind == 9:
            name = draw(st.from_regex(r"[A-Z][A-Z0-9_]{0,12}", fullmatch=True))
        if draw(st.integers(0, 3)):
            value = draw(st.sampled_from(["y", "n", "n"]) | st.booleans())
        else:
            value = draw(st.integers(-5, 1 << 40) | st.sampled_from(["0x1000", "0xzz", "17", "", "text", "a\"b",
                                                                     "é", "y ", "m"])
                         | st.text(max_size=6).filter(lambda s: "\n" not in s))
        out[name] = value
    return out


def check_resolve(tree, layers, options, mode):
    opts = list(options.items())
    lines = {name: i + 1 for i, name in enumerate(options)}
    all_layers = layers + [kconfig.recipe_assigns(opts, RECIPE_NAME, lines)]
    try:
        result = kconfig.resolve(tree, all_layers, mode)
    except ResolveError as e:
        event("dropped options")
        message = str(e)
        failed = [o for o in e.outcomes if not o.ok]
        assert failed, message
        for o in failed:
            assert f"CONFIG_{o.name}" in message and o.origin in message, message
        return
    except TailorError as e:
        event("unknown symbol or wrong type")
        message = str(e)
        for line in message.splitlines():
            m = re.match(r"^(\S+?:\d+): (?:CONFIG_)?([A-Za-z0-9_]+)[: ]", line)
            assert m, f"a line that names no origin and symbol: {line!r}"
            assert m.group(1).startswith((RECIPE_NAME, "base_configs/")), line
        return
    # Verified: every asked symbol has its asked value in the written config.
    event("verified")
    assert all(o.ok for o in result.outcomes)
    assert result.config.startswith("#") and len(result.identity) == 64
    for o in result.outcomes:
        if o.asked == "n":
            assert f"CONFIG_{o.name}=y" not in result.config.splitlines()


@pytest.fixture(scope="module")
def symbol_names(ktree):
    return sorted(ktree.names)


@QUICK
@given(data=st.data())
def test_random_options_strict_resolve_or_name_the_symbols(ktree, symbol_names, base_layers, data):
    options = data.draw(option_sets(symbol_names, 8))
    check_resolve(ktree, base_layers, options, "strict")


@quick(12)
@given(data=st.data())
def test_random_options_deps_resolve_or_name_the_symbols(ktree, symbol_names, base_layers, data):
    options = data.draw(option_sets(symbol_names, 4))
    check_resolve(ktree, base_layers, options, "deps")


@quick(40)
@given(data=st.data())
def test_explain_any_name(ktree, symbol_names, data):
    name = data.draw(st.sampled_from(symbol_names) | st.from_regex(r"(CONFIG_)?[A-Za-z0-9_]{1,16}", fullmatch=True))
    try:
        text = kconfig.explain(ktree, name)
    except TailorError as e:
        assert "\n" not in str(e) and name.removeprefix("CONFIG_") in str(e)
        return
    assert name.removeprefix("CONFIG_") in text


def test_deps_on_a_choice_member_is_an_answer_not_a_crash(ktree, base_layers):
    # A choice member's dependencies include the choice itself; `resolve: deps` used to index it like an
    # expression tuple (TypeError) when the choice was not visible.
    asked = [kconfig.Assign("INITRAMFS_COMPRESSION_GZIP", "y", f"{RECIPE_NAME}:5")]
    with pytest.raises(ResolveError, match=r"CONFIG_INITRAMFS_COMPRESSION_GZIP: asked y, got n: its choice"):
        kconfig.resolve(ktree, base_layers + [asked], "deps")


def test_numbers_in_args_and_env_stay_as_written():
    # YAML reads 0755 as 493 and 1.10 as 1.1; an app's argv and environment get the text as written.
    text = ("app:\n  command: /bin/app\n  args: [0755, 1.10, 0x1F, 1_000, +1, 1e3, .5, 6379, '007']\n"
            "  env: {MODE: 0755, VERSION: 1.10}\n")
    r = recipe.parse(text, RECIPE_PATH)
    assert r.app.args == ("0755", "1.10", "0x1F", "1_000", "+1", "1e3", ".5", "6379", "007")
    assert dict(r.app.env) == {"MODE": "0755", "VERSION": "1.10"}
