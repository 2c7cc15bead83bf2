"""opzo's training steps beside SpikingJelly's and snnTorch's, in one process, round-robin.

    python benchmarks/bench_peers.py --threads 2 --rounds 20                 # FC and conv5 x0.25
    python benchmarks/bench_peers.py --threads 2 --setting fc --rounds 20    # one of them
    python benchmarks/bench_peers.py --threads 2 --json benchmarks/results/peers.json \\
        --csv benchmarks/results/peers.csv

Settings (issue 23): ``fc``, FC 784-800-800-10, T 6, batch 128 on uniform random input
(the first layer's weights times 3, as in bench_speed.py); ``conv``, conv5 at width 0.25
(32C3-AP2-64C3-AP2-128C3-FC, scale-standardized convolutions), T 6, batch 64 on embedded
MNIST images as direct input current. Every step is one training batch: forward over T steps,
the gradient, and one fused AdamW step (``opzo.build.make_optimizer``, the same for all), with
dropout 0.2 (one mask per batch, fixed over the T steps), LIF neurons with leak 0.5 (τ = 2),
threshold 1, subtractive reset, the sigmoid surrogate of slope 4 (opzo's a = 0.25) and
opzo's mixed loss (0.95 CE + 0.05 MSE per step, averaged over the T steps). What is timed:

* ``opzo-opzo``, ``opzo-bp``: opzo's ``OnlineLearner`` with OPZO / spatial BP (OTTT trace,
  native kernels); ``opzo-bptt``: opzo's ``BPTTLearner`` (autograd through the unrolled net);
  with ``--variants`` also ``opzo-opzo-fresh`` (the OPZO step before issue 23, fresh tensors
  for z[t] and e Fᵀ every step) and ``opzo-opzo-1prod`` / ``opzo-bp-1prod`` (the opt-in
  ``grad_steps=0``: the weight gradient of all T steps in one product; their ``opzo-bp``
  column is against ``opzo-bp-1prod``);
* ``sj-ottt``: SpikingJelly 2.0's OTTT: ``layer.OTTTSequential`` of its ``OTTTLIFNode``
  (single-step, its presynaptic trace), ``layer.Dropout``, ``WSConv2d`` / ``nn.Linear``, one
  ``backward()`` per time step, as its OTTT VGG example trains;
* ``sj-bptt``: SpikingJelly's BPTT in multi-step mode (its fast path; torch backend, no cupy
  here): ``LIFNode(step_mode="m", decay_input=False, v_reset=None)`` (the same dynamics),
  ``WSConv2d`` / ``Linear`` / ``AvgPool2d`` / ``Dropout`` in multi-step mode; the static
  input's first layer computed once and repeated over T;
* ``snntorch-bptt``: snnTorch 1.0's BPTT: ``snn.Leaky(beta=0.5, reset "subtract",
  surrogate.sigmoid(slope=4))`` in a loop over T with explicit membranes; synaptic layers
  ``nn.Linear`` and opzo's ``ScaledWSConv2d`` (snnTorch has no standardized convolution); the
  first layer's current computed once.

The peers get the same initial weights as opzo's network. Timing as in bench_speed.py
(``baselines.round_robin_medians``: one call of each per round, order rotated, medians);
every figure is a ratio of two medians of the same run, never an absolute time. The peers
(the ``nir-peers`` extra) are imported lazily; a missing one is reported and left out.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import round_robin_medians  # noqa: E402

from opzo import RULES, InstantLoss, OnlineLearner, SpikingMLP, SpikingNet  # noqa: E402
from opzo.bptt import BPTTLearner  # noqa: E402
from opzo.build import make_optimizer  # noqa: E402
from opzo.config import TrainConfig  # noqa: E402
from opzo.layers import ScaledWSConv2d  # noqa: E402

LAM, V_TH, SLOPE, DROPOUT = 0.5, 1.0, 4.0, 0.2
OPZO_METHODS = ("opzo-opzo", "opzo-bp", "opzo-bptt")
PEERS = ("sj-ottt", "sj-bptt", "snntorch-bptt")
SETTINGS = {
    "fc": {"net": None, "sizes": [784, 800, 800, 10], "T": 6, "batch": 128},
    "conv": {"net": "conv5", "width": 0.25, "T": 6, "batch": 64},
}


def _optional(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        print(f"{name} is not installed ({exc}): its steps are left out (pip install "
              "'opzo[nir-peers]')")
        return None


class Setting:
    """One network, its data and opzo's net; the peers copy its initial weights."""

    def __init__(self, name: str) -> None:
        spec = SETTINGS[name]
        self.name, self.T, self.batch = name, spec["T"], spec["batch"]
        self.conv = spec["net"] is not None
        torch.manual_seed(0)
        if self.conv:
            from opzo.data import load_dataset, make_encoder

            images = load_dataset("embedded-mnist", split="train")
            self.x = make_encoder("direct", "embedded-mnist")(images.images[:self.batch],
                                                              self.T)
            self.y = images.labels[:self.batch]
        else:
            self.x = torch.rand(self.batch, spec["sizes"][0])
            self.y = torch.randint(0, spec["sizes"][-1], (self.batch,))
        self.spec = spec
        self.template = self.opzo_net()
        self.loss = InstantLoss("mix", 0.05)

    def opzo_net(self) -> SpikingNet:
        torch.manual_seed(0)
        if self.conv:
            return SpikingNet(self.spec["net"], (1, 28, 28), 10, width=self.spec["width"],
                              dropout=DROPOUT)
        net = SpikingMLP(self.spec["sizes"], dropout=DROPOUT)
        with torch.no_grad():
            net.hidden[0].weight.mul_(3.0)  # a realistic firing rate on this input
        return net

    def describe(self) -> str:
        return f"{self.template.describe()}, T={self.T}, batch {self.batch}"

    def image(self) -> torch.Tensor:
        """The input as the peers take it: (B, 1, 28, 28) for the conv net, (B, F) else."""
        return self.x.view(self.batch, 1, 28, 28) if self.conv else self.x

    def synapses(self, make_conv: Callable[[int, int], nn.Module]) -> list[nn.Module]:
        """The synaptic layers of opzo's net rebuilt by ``make_conv`` (convolutions) or as
        ``nn.Linear``, with opzo's initial weights (W, b and the gain γ)."""
        layers: list[nn.Module] = []
        for src in [*self.template.hidden, self.template.readout]:
            if getattr(src, "is_dense", True):
                dst: nn.Module = nn.Linear(src.in_features, src.out_features)
            else:
                dst = make_conv(src.in_channels, src.out_channels)
            with torch.no_grad():
                for name in ("weight", "bias", "gain"):
                    p = getattr(dst, name, None)
                    if p is not None:
                        p.copy_(getattr(src, name).view_as(p))
            layers.append(dst)
        return layers

    def pools(self) -> list[bool]:
        """Whether each synaptic layer (hidden ones, then the readout) average-pools its
        input by 2 first (the conv net's AP2 tokens)."""
        return [getattr(l, "pool", None) is not None
                for l in [*self.template.hidden, self.template.readout]]


def _mask(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.empty(shape).bernoulli_(1 - DROPOUT).div_(1 - DROPOUT)


# -- opzo ------------------------------------------------------------------------------------
def opzo_calls(st: Setting, cfg: TrainConfig, variants: bool = False
               ) -> dict[str, Callable[[], object]]:
    """opzo's steps; with ``variants`` also ``opzo-opzo-fresh`` (the step before issue 23:
    a fresh tensor for the noise and for e Fᵀ at every step) and ``opzo-opzo-1prod`` /
    ``opzo-bp-1prod`` (the opt-in ``grad_steps=0``: the weight gradient of all T steps in one
    product)."""
    calls: dict[str, Callable[[], object]] = {}
    runs = [("opzo-opzo", "opzo", 1), ("opzo-bp", "bp", 1)]
    if variants:
        runs += [("opzo-opzo-fresh", "opzo", 1), ("opzo-opzo-1prod", "opzo", 0),
                 ("opzo-bp-1prod", "bp", 0)]
    for name, rule, grad_steps in runs:
        net = st.opzo_net()
        r = RULES[rule].factory()
        learner = OnlineLearner(net, r, st.loss, grad_steps=grad_steps)
        if name.endswith("-fresh"):
            r.noise.reuse_buffer = False
            r._scratch_g = lambda ctx: None
        opt = make_optimizer([*net.parameters(), *r.parameters()], cfg)
        calls[name] = (lambda lr=learner, o=opt: lr.train_batch(st.x, st.y, o, T=st.T))
    net = st.opzo_net()
    bptt = BPTTLearner(net, st.loss)
    opt = make_optimizer(net.parameters(), cfg)
    calls["opzo-bptt"] = lambda: bptt.train_batch(st.x, st.y, opt, T=st.T)
    return calls


# -- SpikingJelly ----------------------------------------------------------------------------
def sj_net(st: Setting, sj, online: bool) -> nn.Sequential:
    """The net in SpikingJelly's modules: single-step OTTT (``online``) or multi-step."""
    from spikingjelly.activation_based import layer, neuron, surrogate

    mode = "s" if online else "m"

    def conv(cin: int, cout: int) -> nn.Module:
        return layer.WSConv2d(cin, cout, 3, padding=1, step_mode=mode)

    def lif() -> nn.Module:
        sg = surrogate.Sigmoid(alpha=SLOPE)
        if online:
            return neuron.OTTTLIFNode(tau=1 / (1 - LAM), decay_input=False, v_threshold=V_TH,
                                      v_reset=None, surrogate_function=sg)
        return neuron.LIFNode(tau=1 / (1 - LAM), decay_input=False, v_threshold=V_TH,
                              v_reset=None, surrogate_function=sg, step_mode="m")

    syn = st.synapses(conv)
    mods: list[nn.Module] = []
    for l, (s, pool) in enumerate(zip(syn, st.pools())):
        if pool:
            mods.append(nn.AvgPool2d(2) if online else layer.AvgPool2d(2, step_mode="m"))
        if l == len(syn) - 1 and st.conv:  # (T,) B, C, H, W -> (T,) B, C·H·W
            mods.append(nn.Flatten() if online else layer.Flatten(step_mode="m"))
        if isinstance(s, nn.Linear) and not online:
            lin = layer.Linear(s.in_features, s.out_features, step_mode="m")
            lin.load_state_dict(s.state_dict())
            s = lin
        mods.append(s)
        if l < len(syn) - 1:
            mods += [lif(), layer.Dropout(DROPOUT, step_mode=mode)]
    return layer.OTTTSequential(*mods) if online else nn.Sequential(*mods)


def sj_calls(st: Setting, cfg: TrainConfig) -> dict[str, Callable[[], object]]:
    sj = _optional("spikingjelly")
    if sj is None:
        return {}
    from spikingjelly.activation_based import functional

    x, y, T, loss = st.image(), st.y, st.T, st.loss
    ottt = sj_net(st, sj, online=True)
    ottt_opt = make_optimizer(ottt.parameters(), cfg)

    def ottt_step() -> None:
        ottt.train()
        ottt_opt.zero_grad(set_to_none=False)
        for _ in range(T):  # OTTT: one backward per time step, the graph of one step only
            (loss.per_sample(ottt(x), y).mean() / T).backward()
        ottt_opt.step()
        functional.reset_net(ottt)

    bptt = sj_net(st, sj, online=False)
    bptt_opt = make_optimizer(bptt.parameters(), cfg)
    first, rest = bptt[0], bptt[1:]

    def bptt_step() -> None:
        bptt.train()
        bptt_opt.zero_grad(set_to_none=False)
        cur = first(x.unsqueeze(0))  # multi-step over one step: the static input, once
        out = rest(cur.expand(T, *cur.shape[1:]))  # (T, B, classes)
        loss.per_sample(out.flatten(0, 1), y.repeat(T)).view(T, -1).mean(1).mean().backward()
        bptt_opt.step()
        functional.reset_net(bptt)

    return {"sj-ottt": ottt_step, "sj-bptt": bptt_step}


# -- snnTorch --------------------------------------------------------------------------------
class SnnTorchNet(nn.Module):
    """The net with snnTorch's ``Leaky`` neurons, run over T steps with explicit membranes."""

    def __init__(self, st: Setting, snn, surrogate) -> None:
        super().__init__()
        self.syn = nn.ModuleList(st.synapses(lambda cin, cout: ScaledWSConv2d(cin, cout, 3)))
        self.pool = st.pools()
        self.lif = nn.ModuleList(
            snn.Leaky(beta=LAM, threshold=V_TH, spike_grad=surrogate.sigmoid(slope=SLOPE),
                      reset_mechanism="subtract") for _ in self.syn[:-1])
        self.conv = st.conv

    def forward(self, x: torch.Tensor, T: int) -> list[torch.Tensor]:
        mems = [lif.init_leaky() for lif in self.lif]
        first = self.syn[0](x)  # the static input's current: once
        masks = [None] * len(self.lif)
        outs = []
        for _ in range(T):
            h = None
            for l, lif in enumerate(self.lif):
                if l == 0:
                    cur = first
                else:
                    cur = self.syn[l](nn.functional.avg_pool2d(h, 2) if self.pool[l] else h)
                spk, mems[l] = lif(cur, mems[l])
                if masks[l] is None:
                    masks[l] = _mask(tuple(spk.shape))
                h = spk * masks[l]
            h = nn.functional.avg_pool2d(h, 2) if self.pool[-1] else h
            outs.append(self.syn[-1](h.flatten(1) if self.conv else h))
        return outs


def snntorch_calls(st: Setting, cfg: TrainConfig) -> dict[str, Callable[[], object]]:
    snn = _optional("snntorch")
    if snn is None:
        return {}
    from snntorch import surrogate

    net = SnnTorchNet(st, snn, surrogate)
    opt = make_optimizer(net.parameters(), cfg)
    x, y, T, loss = st.image(), st.y, st.T, st.loss

    def step() -> None:
        net.train()
        opt.zero_grad(set_to_none=False)
        outs = net(x, T)
        sum(loss.per_sample(o, y).mean() for o in outs).div(T).backward()
        opt.step()

    return {"snntorch-bptt": step}


# -- the run ---------------------------------------------------------------------------------
def measure(name: str, rounds: int, variants: bool = False) -> dict:
    """Round-robin medians of every step of one setting; ratios of opzo's to the peers'."""
    st = Setting(name)
    cfg = TrainConfig()
    calls = opzo_calls(st, cfg, variants)
    calls.update(sj_calls(st, cfg))
    calls.update(snntorch_calls(st, cfg))
    med = round_robin_medians(calls, rounds)
    mine = [k for k in calls if k not in PEERS]
    peers = [k for k in calls if k in PEERS]
    ratios = {m: {p: round(med[m] / med[p], 3) for p in peers} for m in mine}
    for m in mine:
        if m.startswith("opzo-opzo"):
            bp = "opzo-bp-1prod" if m.endswith("-1prod") else "opzo-bp"
            ratios[m]["opzo-bp"] = round(med[m] / med[bp], 3)
    print(f"\n{st.describe()}, {rounds} rounds, {torch.get_num_threads()} threads: median step "
          "time of the row / median of the column")
    print(f"  {'':16s}" + "".join(f"{p:>15s}" for p in peers) + f"{'opzo-bp':>15s}")
    for m in mine:
        row = "".join(f"{ratios[m][p]:15.2f}" for p in peers)
        if "opzo-bp" in ratios[m]:
            row += f"{ratios[m]['opzo-bp']:15.2f}"
        print(f"  {m:16s}{row}")
    return {"setting": st.describe(), "rounds": rounds, "ratios": ratios,
            "median_ratio_to_opzo_opzo": {k: round(v / med["opzo-opzo"], 3)
                                          for k, v in med.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--variants", action="store_true",
                    help="also the step before issue 23 (fresh noise and e Fᵀ tensors) and the "
                         "opt-in grad_steps=0 (one weight-gradient product over all T steps)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--csv", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    versions = {}
    for mod in ("spikingjelly", "snntorch"):
        try:
            from importlib.metadata import version
            versions[mod] = version(mod)
        except Exception:  # noqa: BLE001 - missing: reported when its steps are built
            versions[mod] = None
    results = {s: measure(s, args.rounds, args.variants) for s in args.setting}
    out = {"date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.machine()} {platform.processor() or ''} "
                      f"{torch.get_num_threads()} torch threads".strip(),
           "torch": torch.__version__, "peers": versions, "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["setting", "opzo_step", "versus", "ratio", "rounds", "threads", "date"])
            for r in results.values():
                for m, row in r["ratios"].items():
                    for p, v in row.items():
                        w.writerow([r["setting"], m, p, v, r["rounds"],
                                    torch.get_num_threads(), out["date"]])


if __name__ == "__main__":
    main()
