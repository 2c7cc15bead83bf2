"""Steady under a busy CPU (issue 23): the command line asks OpenMP for passive waiting.

What is checked is the OpenMP runtime's own view: with ``OMP_DISPLAY_ENV=VERBOSE`` GNU
OpenMP (torch's on Linux) prints its settings when torch loads it, and passive waiting is
``GOMP_SPINCOUNT = '0'`` (the default, unset, spins 300000 times; ACTIVE 3e10). The timing
itself is benchmarks/bench_busy.py's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from opzo.__main__ import OPENMP_DEFAULTS, set_openmp_defaults

SRC = Path(__file__).resolve().parents[1] / "src"


def test_set_openmp_defaults_fills_only_what_is_unset():
    env: dict[str, str] = {}
    set_openmp_defaults(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"} == OPENMP_DEFAULTS
    mine = {"OMP_WAIT_POLICY": "ACTIVE"}
    set_openmp_defaults(mine)
    assert mine == {"OMP_WAIT_POLICY": "ACTIVE"}


def _spincount(extra_env: dict[str, str], *args: str) -> str:
    """GOMP_SPINCOUNT as the OpenMP runtime of a fresh ``python -m opzo ARGS`` reports it."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_DISPLAY_ENV")}
    env.update(PYTHONPATH=os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]),
               OMP_DISPLAY_ENV="VERBOSE", **extra_env)
    res = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                         timeout=300)
    found = re.search(r"GOMP_SPINCOUNT = '(\d+)'", res.stderr)
    if found is None:
        pytest.skip("torch's OpenMP runtime is not GNU OpenMP (it reports no GOMP_SPINCOUNT)")
    return found.group(1)


def test_the_command_line_makes_torchs_openmp_threads_wait_passively():
    # plain torch spins; `opzo` (python -m opzo, the console script's run()) does not
    assert _spincount({}, "-c", "import torch") != "0"
    assert _spincount({}, "-m", "opzo", "train", "--help") == "0"
    # a policy the user chose is kept
    assert _spincount({"OMP_WAIT_POLICY": "ACTIVE"}, "-m", "opzo", "train", "--help") != "0"
