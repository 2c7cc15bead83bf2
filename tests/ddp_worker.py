"""One process of the data-parallel tests (tests/test_distributed.py), started by torchrun.

``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py JOB OUT``

Jobs:
* ``steps``: a few batches of every rule with :func:`train_steps`; each process saves its
  weights and rule state to ``OUT/<method>-rank<r>.pt``;
* ``run`` / ``cut`` / ``resume``: :func:`opzo.train.run_training` of :func:`run_config`, the
  whole run, stopped after a few batches, and resumed, in ``OUT/<job folder>``;
* ``die``: a run in which process 1 kills itself (SIGKILL) during its second epoch.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

from opzo import InstantLoss, OnlineLearner, SpikingMLP
from opzo.bptt import BPTTLearner
from opzo.config import TrainConfig
from opzo.distributed import Communicator
from opzo.rules import DFA, DKP, OPZO, SpatialBP
from opzo.train import run_training

METHODS = ("bp", "dfa", "dkp", "opzo", "opzo-step", "bptt")
BATCH, STEPS, T = 12, 3, 4


def train_steps(method: str, comm: Communicator | None) -> dict[str, torch.Tensor]:
    """STEPS optimizer steps of ``method`` on a tiny net with dropout, global batch BATCH;
    with ``comm`` each process trains on its shard. Returns the weights and rule state."""
    torch.manual_seed(0)
    net = SpikingMLP([6, 10, 8, 3], dropout=0.25)
    with torch.no_grad():
        for layer in net.hidden:
            layer.weight.mul_(3.0)
    loss = InstantLoss()
    if method == "bptt":
        learner = BPTTLearner(net, loss, comm=comm)
    else:
        rule = {"bp": SpatialBP, "dfa": DFA, "dkp": DKP, "opzo": OPZO,
                "opzo-step": OPZO}[method]()
        if isinstance(rule, OPZO):
            rule.lambda_m = 0.5  # M moves visibly in a few steps
        learner = OnlineLearner(net, rule, loss, update="step" if method.endswith("step")
                                else "batch", comm=comm)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator(device="cpu").manual_seed(1)
    for _ in range(STEPS):
        x = torch.rand(BATCH, 6, generator=g, device="cpu")
        y = torch.randint(0, 3, (BATCH,), generator=g, device="cpu")
        shard = None
        if comm is not None:
            shard = comm.shard(BATCH)
            x, y = shard.rows(x), shard.rows(y)
        learner.train_batch(x, y, opt, T=T, shard=shard)
    state = {f"model.{k}": v.clone() for k, v in net.state_dict().items()}
    if learner.rule is not None and hasattr(learner.rule, "feedback_t"):
        state["feedback"] = learner.rule.feedback_t.clone()
    state["rng"] = torch.get_rng_state()
    return state


def run_config(out: Path, **extra) -> TrainConfig:
    """A small OPZO run with dropout on the embedded MNIST subset (1 thread per process;
    the 13th, last batch holds one sample, too few for two processes: left out)."""
    base = dict(epochs=2, limit_train=601, limit_test=200, hidden=[64, 32], batch_size=50,
                dropout=0.2, threads=1, seed=3, out=str(out))
    base.update(extra)
    return TrainConfig(**base)


def main() -> None:
    job, out = sys.argv[1], Path(sys.argv[2])
    comm = Communicator.init(torch.device("cpu"))
    quiet = dict(progress=False, log=lambda *_: None)
    if job == "steps":
        for method in METHODS:
            torch.save(train_steps(method, comm), out / f"{method}-rank{comm.rank}.pt")
    elif job in ("run", "cut", "resume"):
        folder = out / ("full" if job == "run" else "cut")
        try:
            run_training(run_config(folder), folder, resume=job == "resume",
                         stop_after_batches=7 if job == "cut" else None, **quiet)
        except Exception as exc:  # the cut run stops with Interrupted
            if type(exc).__name__ != "Interrupted":
                raise
    elif job == "die":
        import opzo.learner as learner_module

        calls = {"n": 0}
        original = learner_module.OnlineLearner.train_batch

        def train_batch(self, *args, **kwargs):
            calls["n"] += 1
            if comm.rank == 1 and calls["n"] == 16:  # epoch 2 (12 batches per epoch)
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, *args, **kwargs)

        learner_module.OnlineLearner.train_batch = train_batch  # type: ignore[method-assign]
        folder = out / "die"
        run_training(run_config(folder), folder, **quiet)
    comm.close()


if __name__ == "__main__":
    main()
    # as opzo's own entry point does for a rank (opzo.__main__.run): leave without the
    # interpreter's teardown, where gloo's threads, still alive after the process group is
    # destroyed, can abort a process that finished well ("terminate called without an active
    # exception", exit -6; seen here in full test-suite runs under load)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
