"""Training-step time of every rule as a ratio to an inference forward pass, in one run.

    python benchmarks/bench_speed.py                  # FC 784-800-800-10, T=6, batch 128
    python benchmarks/bench_speed.py --rounds 30 --json benchmarks/logs/speed.json
    python benchmarks/bench_speed.py --net conv5 --width 0.25 --batch 32   # conv, 1x28x28
    python benchmarks/bench_speed.py --net conv5 --width 0.25 --local-learning  # and +LL
    python benchmarks/bench_speed.py --device cuda    # on a GPU (torch ops; synchronised)

Networks run on opzo's native kernels (the default ``kernels="native"``: one fused pass per
layer and step, dropout masks from Philox) and ``opzo`` draws its Gaussian noise with the
native Philox kernel (the default); ``opzo-torch-normal`` draws it with torch's ``normal_``;
``inference-torch`` and ``opzo-torch`` run everything on torch ops (``kernels="torch"``,
torch's ``normal_``), as before the native kernels existed.
``gemm-floor`` times only the unavoidable matrix products of a training step (the forward
products plus one weight-gradient product each): the floor the issue's "about 2x" refers to.
``adamw-step`` is the optimizer's share of every rule's step (clearing ``.grad`` and one
fused AdamW step). ``opzo-floor`` is a lower bound on an OPZO step: only the work no
implementation of it can skip (the training forward pass with its dropout masks, per-step
Gaussian noise and m ⊙ ψ, one weight-gradient product per forward product, the AdamW step),
without the loss, the error, M's update, the feedback, δ or the traces.
``opzo-gradient`` is the OPZO step without the optimizer (forward and weight gradient only).
Methods are timed round-robin (one call of each per round, order rotated) so machine noise
hits all of them alike; the figure per method is the median over rounds, and every ratio is
taken against the inference median of the same run. Each training step includes the
optimizer (fused AdamW) step. With ``--net`` the network is that string (``--input-shape``,
default 1 28 28, 10 outputs) fed an image batch of the embedded MNIST subset as direct input
current; ``gemm-floor`` is then not measured (it is written for FC layers).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import autograd_ottt_step, bptt_step, round_robin_medians  # noqa: E402

from opzo import (  # noqa: E402
    OPZO,
    RULES,
    InstantLoss,
    LocalLearning,
    NoiseSampler,
    OnlineLearner,
    SpikingMLP,
    SpikingNet,
)
from opzo.build import make_optimizer  # noqa: E402
from opzo.config import TrainConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[784, 800, 800, 10])
    ap.add_argument("--T", type=int, default=6)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--net", type=str, default=None,
                    help="a network string or name (conv5, conv9) instead of --sizes")
    ap.add_argument("--width", type=float, default=1.0, help="channel multiplier of --net")
    ap.add_argument("--input-shape", type=int, nargs="+", default=[1, 28, 28])
    ap.add_argument("--local-learning", action="store_true",
                    help="also time bp, dfa and opzo with local learning (LL, a readout per "
                         "hidden layer)")
    ap.add_argument("--device", type=str, default="cpu",
                    help="cpu, cuda, cuda:N: on CUDA every step runs on torch's ops (the native "
                         "kernels are the CPU path) and each timing waits for the GPU; the "
                         "CPU-only variants (gemm-floor, opzo-floor, the torch-kernel and "
                         "Philox variants) are left out")
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    on_cpu = device.type == "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.net:
        from opzo.data import load_dataset, make_encoder

        images = load_dataset("embedded-mnist", split="train")
        x = make_encoder("direct", "embedded-mnist")(images.images[:args.batch], args.T)
        y = images.labels[:args.batch]
        shape = tuple(args.input_shape)
        if x.shape[1] != math.prod(shape):
            raise SystemExit(f"--input-shape {shape} does not fit the 28x28 images")
    else:
        x = torch.rand(args.batch, args.sizes[0])
        y = torch.randint(0, args.sizes[-1], (args.batch,))
    x, y = x.to(device), y.to(device)
    loss = InstantLoss("mix", 0.05)
    cfg = TrainConfig()

    def fresh_net(kernels: str = "native") -> SpikingNet:
        torch.manual_seed(0)
        if args.net:
            return SpikingNet(args.net, tuple(args.input_shape), 10, width=args.width,
                              dropout=0.2, kernels=kernels).to(device)
        net = SpikingMLP(args.sizes, dropout=0.2, kernels=kernels)
        with torch.no_grad():
            net.hidden[0].weight.mul_(3.0)  # a realistic firing rate on this input
        return net.to(device)

    inf_net = fresh_net().eval()
    inf_torch = fresh_net("torch").eval()

    def inference() -> None:
        with torch.no_grad():
            inf_net(x, T=args.T)

    def inference_torch() -> None:
        with torch.no_grad():
            inf_torch(x, T=args.T)

    gemm_net = fresh_net()
    grads = [torch.zeros_like(p) for p in gemm_net.parameters()]
    h = [torch.rand(args.batch, n) for n in args.sizes[1:-1]]
    d = [torch.randn(args.batch, n) for n in args.sizes[1:]]

    def gemm_floor() -> None:
        """Only the matrix products a training step cannot avoid: the forward products of
        inference plus one weight-gradient product per forward product."""
        lins = [*gemm_net.hidden, gemm_net.readout]
        with torch.no_grad():
            torch.nn.functional.linear(x, lins[0].weight, lins[0].bias)
            grads[0].addmm_(d[0].t(), x)
            for _ in range(args.T):
                for i, lin in enumerate(lins[1:], start=1):
                    torch.nn.functional.linear(h[i - 1], lin.weight, lin.bias)
                    grads[2 * i].addmm_(d[i].t(), h[i - 1])

    floor_net = fresh_net()
    floor_opt = make_optimizer(floor_net.parameters(), cfg)
    for p in floor_net.parameters():
        p.grad = torch.zeros_like(p)
    sampler = NoiseSampler()

    def adamw_step() -> None:
        """The optimizer's part of every rule's step: clear .grad, one fused AdamW step."""
        floor_opt.zero_grad(set_to_none=False)
        floor_opt.step()

    def opzo_floor() -> None:
        """A lower bound on an OPZO step: only the work no implementation can skip. The
        training forward pass as the library runs it (dropout masks, the Gaussian noise
        drawn every step, the fused LIF pass that also gives m ⊙ ψ), one weight-gradient
        product per forward product (random δ and traces, as in gemm_floor) and the AdamW
        step; no loss, no error, no M update, no δ, no traces."""
        n = floor_net
        n.train()
        floor_opt.zero_grad(set_to_none=False)
        lins = [*n.hidden, n.readout]
        with torch.no_grad():
            state = n.initial_state(args.batch, x)
            masks = n.dropout_masks(args.batch, x)
            first_in = n.hidden[0].op_input(x)
            first = n.hidden[0].op(first_in)
            for t in range(args.T):
                z = sampler.sample(t, args.batch, n.hidden_sizes, x)
                n.step(state, x, first_current=first, first_input=first_in, noise=z,
                       noise_scale=0.2, masks=masks, local_derivative=True)
                for i, lin in enumerate(lins[1:], start=1):
                    lin.weight.grad.addmm_(d[i].t(), h[i - 1])
            lins[0].weight.grad.addmm_(d[0].t(), x)
        floor_opt.step()

    calls = {"inference": inference}
    if on_cpu:
        calls["inference-torch"] = inference_torch
    if not args.net and on_cpu:
        calls["gemm-floor"] = gemm_floor
        calls["adamw-step"] = adamw_step
        calls["opzo-floor"] = opzo_floor
    variants = {name: (RULES[name].factory, "native") for name in RULES}
    if on_cpu:
        add_cpu_variants(variants)
    if args.local_learning:
        for name in ("bp", "dfa", "opzo"):
            variants[f"{name}+ll"] = (lambda c=RULES[name].factory: LocalLearning(c()), "native")
    for name, (make, kernels) in variants.items():
        net = fresh_net(kernels)
        rule = make()
        learner = OnlineLearner(net, rule, loss)
        opt = make_optimizer([*net.parameters(), *rule.parameters()], cfg)
        calls[name] = (lambda lr=learner, o=opt: lr.train_batch(x, y, o, T=args.T))
        if name == "opzo":  # the gradient alone: forward and weight gradient, no optimizer
            calls["opzo-gradient"] = (lambda lr=learner: lr.accumulate(x, y, T=args.T))
    for name, fn in (("autograd-ottt", autograd_ottt_step), ("bptt", bptt_step)):
        net = fresh_net()
        opt = make_optimizer(net.parameters(), cfg)
        calls[name] = (lambda n=net, o=opt, f=fn: f(n, x, y, args.T, loss, o))

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    med = round_robin_medians(calls, args.rounds, sync=sync)
    base = med["inference"]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": (torch.cuda.get_device_name(device) if device.type == "cuda" else
                    f"{platform.machine()} {platform.processor() or ''} "
                    f"{torch.get_num_threads()} torch threads").strip(),
        "device": str(device),
        "torch": torch.__version__,
        "setting": {"net": inf_net.describe(), "T": args.T, "batch": args.batch,
                    "rounds": args.rounds},
        "ratio_to_inference": {k: round(v / base, 3) for k, v in med.items()},
    }
    print(f"{inf_net.describe()}, T={args.T}, batch {args.batch}, {args.rounds} rounds, "
          f"on {device}, {torch.get_num_threads()} threads; median step time / inference "
          "forward:")
    for k, v in med.items():
        print(f"  {k:16s} {v / base:6.2f}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def add_cpu_variants(variants: dict) -> None:
    """The variants that compare the native CPU kernels with torch's ops and generator."""
    variants["opzo-torch-normal"] = (lambda: OPZO(NoiseSampler(rng="torch")), "native")
    variants["opzo-torch"] = (lambda: OPZO(NoiseSampler(rng="torch")), "torch")
    variants["opzo-rademacher"] = (lambda: OPZO(NoiseSampler(distribution="rademacher")),
                                   "native")
    variants["opzo-antithetic"] = (lambda: OPZO(NoiseSampler(antithetic=True)), "native")


if __name__ == "__main__":
    main()
