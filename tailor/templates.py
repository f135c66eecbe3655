"""The one Jinja environment of tailor: every file under ``templates/`` is rendered by :func:`render`.

Templates whose name ends in ``.html.j2`` or ``.svg.j2`` are escaped, every other one is text. Blocks trim
their newlines, a missing value is an error (``StrictUndefined``) and a template's final newline is
kept. Filters: ``sh`` (a value shell-quoted), ``shjoin`` (an argv shell-quoted and joined),
``tojson`` (JSON with non-ASCII kept) and ``code`` (HTML with `backtick` spans as ``<code>``).
JSON files are never written through a template: use ``json.dumps(..., sort_keys=True)``
(:func:`tailor.util.write_json`).
"""

from __future__ import annotations

import functools
import json
import re
import shlex

from tailor.errors import TailorError
from tailor.util import PROJECT

TEMPLATES_DIR = PROJECT / "templates"
INIT_TEMPLATE = "init.sh.j2"
"""The template of every root's /init."""
"""Every template of tailor."""


def code_spans(text: str):
    """HTML for *text* with its `backtick` spans as <code> (everything else escaped)."""
    from markupsafe import Markup, escape  # comes with jinja2, imported when a template is rendered

    parts = re.split(r"`([^`]+)`", str(text))
    return Markup("".join(f"<code>{escape(p)}</code>" if i % 2 else str(escape(p)) for i, p in enumerate(parts)))


FILTERS = {
    "sh": lambda v: shlex.quote(str(v)),
    "shjoin": lambda argv: " ".join(shlex.quote(str(a)) for a in argv),
    "tojson": lambda v: json.dumps(v, ensure_ascii=False),
    "code": code_spans,
}
"""The filters every template may use."""


ESCAPED_SUFFIXES = (".html.j2", ".svg.j2")
"""Templates of markup (HTML, and the SVG charts the HTML report imports) are escaped."""


def _escaped(name: str | None) -> bool:
    return bool(name) and name.endswith(ESCAPED_SUFFIXES)


@functools.lru_cache(maxsize=None)
def environment():
    """The Jinja environment (made once per process; templates changed on disk are reloaded)."""
    import jinja2  # imported on the first render, not at import: task generation renders nothing

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)), undefined=jinja2.StrictUndefined,
                             autoescape=_escaped, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(FILTERS)
    return env


def render(template: str, **values) -> str:
    """Render ``templates/<template>`` with *values*; a template error is one TailorError line naming it."""
    import jinja2

    try:
        return environment().get_template(template).render(**values)
    except jinja2.TemplateError as e:
        raise TailorError(f"templates/{template}: {e}") from None
