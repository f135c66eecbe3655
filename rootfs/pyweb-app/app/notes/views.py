"""The HTML page of the notes service, from a string.Template."""

import html
import string

PAGE = string.Template("""<!doctype html>
<title>notes</title>
<h1>Notes ($count)</h1>
<ul>
$items
</ul>
""")


def render_index(notes: list[dict]) -> str:
    items = "\n".join(f"<li>{html.escape(n['text'])}</li>" for n in notes)
    return PAGE.substitute(count=len(notes), items=items)
