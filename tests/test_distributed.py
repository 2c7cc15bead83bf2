"""Data parallelism on torch.distributed (gloo, 2 CPU processes started by torchrun).

* BP, DFA, DKP, OPZO (per batch and per step) and BPTT on 2 processes x half the batch end
  with the weights of 1 process x the whole batch (float tolerance: the sums over the batch
  are split in two), dropout masks and OPZO's noise included, since both are drawn per
  global sample;
* every process holds bit-identical weights, feedback matrices (OPZO's M, DKP's B) and
  generator states;
* a distributed run stopped mid-epoch and resumed equals the uninterrupted one bit for bit;
* a process that dies stops the job, torchrun names its rank, and the checkpoint stays whole.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from opzo.distributed import Shard

from .ddp_worker import METHODS, train_steps

WORKER = Path(__file__).with_name("ddp_worker.py")
pytestmark = pytest.mark.skipif(not torch.distributed.is_available()
                                or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _torchrun(job: str, out: Path, nproc: int = 2, check: bool = True
              ) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(WORKER), job, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun {job} failed ({proc.returncode}):\n{proc.stdout}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def test_shards_cover_the_batch_in_order():
    for total in (1, 7, 12, 128):
        for world in (1, 2, 3, 5):
            parts = [Shard.split(total, r, world) for r in range(world)]
            assert parts[0].lo == 0 and parts[-1].hi == total
            assert all(a.hi == b.lo for a, b in zip(parts, parts[1:]))
            assert max(p.size for p in parts) - min(p.size for p in parts) <= 1
            x = torch.arange(total)
            assert torch.equal(torch.cat([p.rows(x) for p in parts]), x)


@pytest.fixture(scope="module")
def steps(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp-steps")
    _torchrun("steps", out)
    return out


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_equal_one_process_with_the_whole_batch(steps, method):
    reference = train_steps(method, None)
    ranks = [torch.load(steps / f"{method}-rank{r}.pt") for r in range(2)]
    for key, value in reference.items():
        if key == "rng":
            continue
        for r, state in enumerate(ranks):
            assert torch.allclose(state[key], value, rtol=1e-5, atol=1e-6), (
                method, key, r, (state[key] - value).abs().max())
    moved = train_steps(method, None)  # (the reference is deterministic)
    assert all(torch.equal(moved[k], v) for k, v in reference.items())


@pytest.mark.parametrize("method", METHODS)
def test_every_process_holds_the_same_weights_feedback_and_generator(steps, method):
    a, b = (torch.load(steps / f"{method}-rank{r}.pt") for r in range(2))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), (method, key)
    if method in ("opzo", "dkp"):
        assert a["feedback"].abs().sum() > 0  # the learned feedback did move


def _rows(folder: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("epoch_time_s")
    return rows


def test_a_stopped_and_resumed_distributed_run_equals_the_uninterrupted_one(tmp_path):
    _torchrun("run", tmp_path)
    _torchrun("cut", tmp_path)
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert (cut["epoch"], cut["batch"]) == (0, 7) and cut["world_size"] == 2
    assert len(cut["rng_states"]) == 2
    _torchrun("resume", tmp_path)
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")
    for k in full["model"]:
        assert torch.equal(full["model"][k], cut["model"][k]), k
    assert torch.equal(full["rule"]["feedback_t"], cut["rule"]["feedback_t"])
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["device"] == "cpu"
    # a resume with another number of processes stops with a message that says what to do
    proc = subprocess.run([sys.executable, "-m", "opzo", "train", "--resume",
                           str(tmp_path / "cut"), "--quiet"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "--nproc 2" in proc.stderr


def test_a_process_that_dies_stops_the_job_and_the_checkpoint_stays_whole(tmp_path):
    proc = _torchrun("die", tmp_path, check=False)
    assert proc.returncode != 0
    report = proc.stdout + proc.stderr
    assert "rank      : 1" in report or "rank: 1" in report, report[-3000:]
    state = torch.load(tmp_path / "die" / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["batch"]) == (1, 0)  # the end of the first epoch
