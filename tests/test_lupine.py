"""Lupine's option lists (``../shared/reference/lupine-options.yaml``) have one reader,
tailor.catalogue.lupine_options, used by the catalogue table and the discovery comparison; a missing file
leaves the Lupine column empty, a damaged one is one line naming it, never a traceback."""

from __future__ import annotations

import pytest

from tailor import catalogue, discover
from tailor.errors import TailorError


def test_lists_are_keyed_by_recipe_name_without_the_config_prefix(tmp_path):
    path = tmp_path / "lupine.yaml"
    path.write_text("base: [CONFIG_64BIT]\napps:\n  redis: [CONFIG_EPOLL, CONFIG_FUTEX]\n  hello-world: []\n"
                    "  nginx:\n")
    assert catalogue.lupine_options(path) == {"redis": ("EPOLL", "FUTEX"), "hello": (), "nginx": ()}


def test_a_machine_without_the_shared_reference_gets_no_lists(tmp_path, monkeypatch):
    monkeypatch.setattr(catalogue, "LUPINE_OPTIONS", tmp_path / "absent.yaml")
    assert catalogue.lupine_options() == {}
    assert discover.comparison_rows([]) == []


@pytest.mark.parametrize("text,fragment", [
    ("apps: [redis\n", "not valid YAML at line 2"),
    ("apps: [redis]\n", "expected `apps:` mapping each Lupine app to a list of CONFIG_ option names"),
    ("apps:\n  redis: CONFIG_EPOLL\n", "expected `apps:` mapping"),
    ("- just a list\n", "expected `apps:` mapping"),
])
def test_a_missing_or_damaged_file_is_one_line_naming_it(tmp_path, monkeypatch, text, fragment):
    path = tmp_path / "lupine-options.yaml"
    if text is not None:
        path.write_text(text)
    monkeypatch.setattr(catalogue, "LUPINE_OPTIONS", path)
    for read in (catalogue.lupine_options, lambda: discover.comparison_rows([])):
        with pytest.raises(TailorError) as err:
            read()
        message = str(err.value)
        assert message.startswith(f"{path}: ") and fragment in message and "\n" not in message


def test_the_shared_reference_reads():
    if not catalogue.LUPINE_OPTIONS.is_file():
        pytest.skip("no ../shared/reference beside the project")
    lists = catalogue.lupine_options()
    assert "hello" in lists and "NET" in lists["redis"]
