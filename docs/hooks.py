"""MkDocs hooks: pages filled from the code and the repository's own documents at build time.

* A page line ``<!-- registry: rules -->`` becomes a table of every entry of that registry
  (name, what it is, the class or factory it builds, its traits), read by importing opzo, so
  the site never lists a part that is not registered, or misses one that is.
* A page line ``<!-- include: README.md#What a run leaves behind -->`` becomes that section
  of the file (from its ``## `` heading to the next one), so the guide and the README (and
  ARCHITECTURE.md) say the same thing; a heading that is gone fails the build.
* A page line ``<!-- cli-help: train -->`` becomes the output of ``opzo train --help``, so the
  command-line reference is the command line's own.
"""

from __future__ import annotations

import re
from pathlib import Path

_MARK = re.compile(r"^<!-- registry: (\w+) -->$", re.M)
_INCLUDE = re.compile(r"^<!-- include: ([\w.]+)#(.+?) -->$", re.M)
_CLI = re.compile(r"^<!-- cli-help: (\w+) -->$", re.M)
_ROOT = Path(__file__).resolve().parents[1]


def _cli_help(command: str) -> str:
    """What ``opzo COMMAND --help`` prints, 100 columns wide, as a text block."""
    import contextlib
    import io
    import os

    from opzo.cli import main

    os.environ["COLUMNS"] = "100"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([command, "--help"])
    text = out.getvalue().strip()
    if not text:
        raise ValueError(f"opzo {command} --help printed nothing")
    return f"```text\n{text}\n```"


def _section(name: str, title: str, where: str) -> str:
    text = (_ROOT / name).read_text(encoding="utf-8")
    match = re.search(r"^## " + re.escape(title) + r"\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    if match is None:
        raise ValueError(f"{where}: {name} has no section '## {title}'")
    return match.group(1).strip()


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
    where = page.file.src_path
    markdown = _INCLUDE.sub(lambda m: _section(m.group(1), m.group(2), where), markdown)
    markdown = _CLI.sub(lambda m: _cli_help(m.group(1)), markdown)
    if "<!-- registry:" not in markdown:
        return markdown
    registries = _registries()

    def fill(match: re.Match) -> str:
        kind = match.group(1)
        if kind not in registries:
            raise ValueError(f"{where}: no registry {kind!r}; "
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
