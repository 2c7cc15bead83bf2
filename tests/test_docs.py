"""The documentation site: its API reference covers every public name, and CI runs the
tutorials and builds the site in strict mode (`mkdocs build --strict` itself runs in CI)."""

from __future__ import annotations

import re
from pathlib import Path

import opzo

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _directives(page: str) -> set[str]:
    """The objects a reference page renders (its ``::: dotted.name`` lines)."""
    return set(re.findall(r"^::: ([\w.]+)$", (DOCS / "api" / page).read_text(), flags=re.M))


def test_api_reference_covers_every_public_name_and_registry():
    assert {f"opzo.{name}" for name in opzo.__all__} <= _directives("opzo.md")
    registries = {"opzo.registry", "opzo.neurons.NEURONS", "opzo.rules.RULES",
                  "opzo.traces.TRACES", "opzo.surrogate.SURROGATES", "opzo.data.DATASETS"}
    assert registries <= _directives("registries.md")
    # every module a reference page names exists (a renamed module fails here, not only in CI)
    for page in (DOCS / "api").glob("*.md"):
        for name in _directives(page.name):
            module = name.split(".")
            while module and not (ROOT / "src" / Path(*module)).with_suffix(".py").is_file() \
                    and not (ROOT / "src" / Path(*module) / "__init__.py").is_file():
                module.pop()
            assert module, f"{page.name}: {name} names no module of src/"


def test_every_tutorial_runs_small_in_ci_and_has_a_page():
    scripts = sorted(p.name for p in (DOCS / "tutorials").glob("t[1-5]_*.py"))
    assert len(scripts) == 5
    pages = "".join(p.read_text() for p in (DOCS / "tutorials").glob("*.md"))
    for script in scripts:
        assert "--small" in (DOCS / "tutorials" / script).read_text()
        assert f'--8<-- "tutorials/{script}"' in pages, f"no page includes {script}"
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'docs/tutorials/t[1-5]_*.py; do .venv/bin/python "$tutorial" --small' in ci
    assert ci.index("--small") < ci.index(".venv/bin/mkdocs build --strict")
