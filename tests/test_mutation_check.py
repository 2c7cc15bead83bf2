"""The mutation check's own test (tools/mutation_check.py): its list still applies to the
source, and its machinery catches one known mistake (DFA without ψ, OPZO paper eq. 7)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "mutation_check.py"


@pytest.fixture(scope="module")
def mutation_check():
    spec = importlib.util.spec_from_file_location("mutation_check", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutation_check"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("mutation_check", None)


def test_every_mutation_target_occurs_exactly_once(mutation_check):
    """A refactor that moves a target text makes this fail, naming the mutation."""
    assert len(mutation_check.MUTATIONS) >= 10
    assert mutation_check.check_targets() == []


def test_dropping_psi_from_dfa_is_caught(mutation_check, tmp_path):
    """One mutation end to end: a copy of src/ and tests/, DFA's δ without m ⊙ ψ, and the
    closed-form check of tests/test_rule_checks.py fails on it (in the copy, not here)."""
    (mutation,) = [m for m in mutation_check.MUTATIONS if m.name == "dfa-drop-psi"]
    test = ("tests/test_rule_checks.py::test_direct_feedback_delta_equals_its_closed_form"
            "[fc-float64-sigmoid-dfa]")
    result = mutation_check.run_mutation(mutation, tmp_path, tests=(test,), timeout=120)
    assert result.status == "caught", (result.status, result.detail)
    assert "delta_0" in result.detail or "closed_form" in result.detail, result.detail
    # the working tree itself is untouched
    assert mutation.old in (ROOT / mutation.path).read_text()
