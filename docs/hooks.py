"""MkDocs hook: fill the registry tables of the site from the registries themselves.

A page line ``<!-- registry: rules -->`` becomes a table of every entry of that registry (name,
what it is, the class or factory it builds, its traits), read by importing opzo, so the site
never lists a part that is not registered, or misses one that is.
"""

from __future__ import annotations

import re

_MARK = re.compile(r"^<!-- registry: (\w+) -->$", re.M)


def _registries() -> dict:
    from opzo.data import DATASETS
    from opzo.neurons import NEURONS
    from opzo.rules import RULES
    from opzo.surrogate import SURROGATES
    from opzo.traces import TRACES

    return {"neurons": NEURONS, "rules": RULES, "traces": TRACES, "surrogates": SURROGATES,
            "datasets": DATASETS}


def _table(registry) -> str:
    rows = ["| name | what | built from | traits |", "|---|---|---|---|"]
    for name in registry:
        entry = registry[name]
        factory = entry.factory
        target = f"{factory.__module__}.{factory.__qualname__}"
        traits = ", ".join(f"`{k}={v!r}`" for k, v in entry.traits.items()) or ""
        rows.append(f"| `{name}` | {entry.help} | `{target}` | {traits} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- registry:" not in markdown:
        return markdown
    registries = _registries()

    def fill(match: re.Match) -> str:
        kind = match.group(1)
        if kind not in registries:
            raise ValueError(f"{page.file.src_path}: no registry {kind!r}; "
                             f"known: {sorted(registries)}")
        return _table(registries[kind])

    return _MARK.sub(fill, markdown)


# The docstrings cross-reference in Sphinx's roles (:class:`~opzo.network.SpikingNet`), which
# mkdocstrings leaves as text before the code span; show the name alone, as Sphinx would.
_ROLE = re.compile(r":(?:class|func|meth|data|mod|attr|exc|obj):<code>[^<]*</code>")


def on_page_content(html: str, page, config, files) -> str:
    if not page.file.src_path.startswith("api/"):
        return html

    def name(match: re.Match) -> str:
        shown = match.group(0).split("<code>", 1)[1][:-len("</code>")]
        if shown.startswith("~"):  # ~a.b.C shows C
            shown = shown[1:].rsplit(".", 1)[-1]
        return f"<code>{shown}</code>"

    return _ROLE.sub(name, html)
