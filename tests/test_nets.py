"""The named networks of issue 26 (nfresnet34, resnet19, vggsnn) and the OTTT checkpoint.

The references here are written from the papers' descriptions with plain torch ops (F.conv2d
on the standardized weights, F.avg_pool2d, F.linear) and a spike function whose derivative is
the surrogate, and share nothing with opzo's layers or networks: the NF-ResNet one works on
the OTTT checkpoint's names directly.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from opzo import InstantLoss, OnlineLearner, SpatialBP, SpikingNet
from opzo.bptt import BPTTLearner
from opzo.build import build_rule, load_weights
from opzo.config import TrainConfig
from opzo.nets import NFResNet, ResNet19
from opzo.ottt import load_ottt_checkpoint
from opzo.surrogate import FastSigmoidSurrogate

from .conftest import SHARED_DATA

KEYS = SHARED_DATA / "ottt-nfresnet34-state-keys.json"
LAM, VTH = 0.5, 1.0


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return (u > VTH).to(u.dtype)

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        return g / (5.0 * (u - VTH).abs() + 1.0) ** 2  # fast sigmoid, slope 5


def _sws(w, gain, eps=1e-4):
    v = w - w.mean(dim=(1, 2, 3), keepdim=True)
    return gain * v / (v.square().sum(dim=(1, 2, 3), keepdim=True) + eps).sqrt()


def _conv(sd, name, x, stride=1, pad=1):
    return F.conv2d(x, _sws(sd[f"{name}.weight"], sd[f"{name}.gain"]), sd[f"{name}.bias"],
                    stride=stride, padding=pad)


class _LIF:
    """u = λ(u − V_th s) + I, s = H(u − V_th) (OPZO eq. 1), state kept per call site."""

    def __init__(self):
        self.u, self.s = {}, {}

    def __call__(self, key, current):
        u = LAM * (self.u.get(key, 0.0) - VTH * self.s.get(key, 0.0)) + current
        s = _Spike.apply(u)
        self.u[key], self.s[key] = u, s
        return s


def nf_reference(sd, x, T, blocks=(3, 4, 6, 3), alpha=0.2, detach_state=False):
    """The OTTT NF-ResNet-34 from its description, over T steps; returns [o[t]]."""
    lif = _LIF()
    outs = []
    for _ in range(T):
        if detach_state:
            lif.u = {k: v.detach() for k, v in lif.u.items()}
            lif.s = {k: v.detach() for k, v in lif.s.items()}
        h = F.avg_pool2d(_conv(sd, "conv1", x, 2, 3), 3, 2, 1)
        var = 1.0
        for i, nb in enumerate(blocks):
            for b in range(nb):
                name = f"layer{i + 1}.{b}"
                stride = 2 if (i > 0 and b == 0) else 1
                s1 = lif(f"{name}.1", h / math.sqrt(var)) * 2.74
                down = f"{name}.downsample.op.weight" in sd
                identity = _conv(sd, f"{name}.downsample.op", s1, stride, 0) if down else h
                s2 = lif(f"{name}.2", _conv(sd, f"{name}.conv1.op", s1, stride)) * 2.74
                h = _conv(sd, f"{name}.conv2.op", s2) * sd[f"{name}.skipinit_gain"] * alpha \
                    + identity
                var = 1.0 + alpha ** 2 if down else var + alpha ** 2
        outs.append(F.linear(h.mean(dim=(2, 3)), sd["fc.weight"], sd["fc.bias"]))
    return outs


def _random_checkpoint(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        t = torch.randn(tuple(shape), generator=g, dtype=torch.float64)
        if k.endswith(".gain"):
            t = 1.5 + 0.5 * t.abs()
        elif k.endswith("skipinit_gain"):
            t = 1.0 + t.abs()
        elif k.endswith("bias") and not k.startswith("fc"):
            t = 0.5 + 0.3 * t
        sd[k] = t
    return sd


def test_ottt_checkpoint_loads_and_its_forward_equals_the_description(tmp_path):
    shapes = json.loads(KEYS.read_text())["state_dict"]
    sd = _random_checkpoint(shapes)
    path = tmp_path / "ottt.pth"
    torch.save({"net": {k: v.float() for k, v in sd.items()}, "epoch": 99, "optimizer": {}},
               path)
    torch.manual_seed(0)
    net = NFResNet((3, 32, 32), 1000, surrogate=FastSigmoidSurrogate(5.0))
    assert sum(p.numel() for p in net.parameters()) == 21_797_688
    assert "126 tensors" in load_weights(net, path)
    net = net.double()
    sd64 = {k: v.float().double() for k, v in sd.items()}
    x = 3.0 * torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ref = sum(nf_reference(sd64, x, 3))
        ours = net(x, T=3)
    assert torch.allclose(ours, ref, atol=1e-8, rtol=1e-8)
    assert float(ref.abs().max()) > 1e-3  # spikes got through
    # the Python loader on the file, and a checkpoint of another network, said in one line
    assert "126 tensors" in load_ottt_checkpoint(net, path)
    bad = dict(sd)
    del bad["layer2.0.downsample.op.gain"]
    torch.save({"net": bad}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"no layer2\.0\.downsample\.op\.gain; expected .*"
                                         r"nfresnet34") as info:
        load_weights(net, tmp_path / "bad.pth")
    assert "\n" not in str(info.value)
    bad = {**sd, "layer5.0.conv1.op.weight": torch.zeros(1)}
    torch.save({"net": bad}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"has layer5\.0\.conv1\.op\.weight, which nfresnet34"):
        load_weights(net, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="fits --net nfresnet34 only"):
        load_weights(SpikingNet("4C3-FC", (3, 8, 8), 10), path)


def _small_nf(seed=0):
    torch.manual_seed(seed)
    net = NFResNet((2, 16, 16), 4, width=1 / 16, blocks=(1, 2, 1, 1),
                   surrogate=FastSigmoidSurrogate(5.0)).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("skipinit_gain"):
                p.fill_(1.0 + float(torch.rand((), generator=g)))
            elif name.endswith(".gain"):
                p.mul_(2.0)
            elif name.endswith("bias") and "head" not in name:
                p.uniform_(0.2, 0.8, generator=g)
    sd = {k: dict(net.named_parameters())[v] for k, v in net.ottt_names.items()}
    return net, sd


def _grads(net):
    return {n: p.grad.clone() for n, p in net.named_parameters()}


def _ref_grads(net, sd, outs, y):
    for p in net.parameters():
        p.grad = None
    loss = InstantLoss("mix", 0.1)
    total = sum(loss.per_sample(o, y).mean() for o in outs) / len(outs)
    total.backward()
    return _grads(net)


def _close(ours, ref, atol=1e-10):
    for k in ref:
        assert torch.allclose(ours[k], ref[k], atol=atol, rtol=1e-7), (
            k, float((ours[k] - ref[k]).abs().max()))
    assert sum(float(v.abs().sum()) > 0 for v in ref.values()) > 0.9 * len(ref)


def test_nfresnet_bp_instantaneous_gradient_and_bptt_equal_autograd():
    net, sd = _small_nf()
    x = 3.0 * torch.randn(3, 2 * 16 * 16, dtype=torch.float64)
    y = torch.tensor([0, 1, 3])
    x4 = x.reshape(3, 2, 16, 16)
    ref = _ref_grads(net, sd, nf_reference(sd, x4, 1, blocks=(1, 2, 1, 1)), y)
    for p in net.parameters():
        p.grad = None
    OnlineLearner(net, SpatialBP(), InstantLoss("mix", 0.1)).accumulate(x, y, T=1)
    _close(_grads(net), ref)
    ref = _ref_grads(net, sd, nf_reference(sd, x4, 3, blocks=(1, 2, 1, 1)), y)
    for p in net.parameters():
        p.grad = None
    BPTTLearner(net, InstantLoss("mix", 0.1)).accumulate(x, y, T=3)
    _close(_grads(net), ref)



def convs_in_order(net):
    """conv(v, stride=1, pad=1): the network's sWS convolutions applied one after the other,
    in the order it lists their parameters (a fresh sequence per call: one per time step)."""
    params = dict(net.named_parameters())
    names = iter([n[: -len(".gain")] for n in params if n.endswith(".gain")])

    def conv(v, stride=1, pad=1):
        name = next(names)
        return F.conv2d(v, _sws(params[f"{name}.weight"], params[f"{name}.gain"]),
                        params[f"{name}.bias"], stride=stride, padding=pad)
    return conv


def _r19_reference(net, x, T):
    """ResNet-19 from its description: stem, basic blocks LIF(conv2(LIF(conv1 x)) + sc(x)),
    sc = x or an sWS conv1x1 stride 2, GAP, a hidden FC layer of LIF, the readout. The
    convolutions' parameters are taken in the order the network lists them (stem, then per
    block conv1, conv2 and the projection)."""
    lif = _LIF()
    outs = []
    for _ in range(T):
        conv = convs_in_order(net)

        h = lif("stem", conv(x))
        k = 0
        for stage, nb in enumerate((3, 3, 2)):
            for b in range(nb):
                stride = 2 if (stage > 0 and b == 0) else 1
                s = lif(f"{k}.1", conv(h, stride))
                c2 = conv(s)
                sc = conv(h, stride, 0) if stride == 2 else h
                h = lif(f"{k}.2", c2 + sc)
                k += 1
        fc = net.hidden[-1]
        z = lif("fc", F.linear(h.mean(dim=(2, 3)), fc.weight, fc.bias))
        outs.append(F.linear(z, net.readout.weight, net.readout.bias))
    return outs


def test_resnet19_bp_and_bptt_equal_autograd():
    torch.manual_seed(0)
    net = ResNet19((2, 8, 8), 4, width=1 / 32, surrogate=FastSigmoidSurrogate(5.0)).double()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".gain"):
                p.mul_(3.0)
            elif name.endswith("bias"):
                p.uniform_(0.0, 0.8)
            elif name.startswith("hidden.17") or name.startswith("readout"):
                p.mul_(4.0)
    x = 2.0 * torch.randn(3, 2 * 64, dtype=torch.float64)
    y = torch.tensor([0, 1, 3])
    ref = _ref_grads(net, None, _r19_reference(net, x.reshape(3, 2, 8, 8), 1), y)
    for p in net.parameters():
        p.grad = None
    OnlineLearner(net, SpatialBP(), InstantLoss("mix", 0.1)).accumulate(x, y, T=1)
    _close(_grads(net), ref)
    ref = _ref_grads(net, None, _r19_reference(net, x.reshape(3, 2, 8, 8), 3), y)
    for p in net.parameters():
        p.grad = None
    BPTTLearner(net, InstantLoss("mix", 0.1)).accumulate(x, y, T=3)
    _close(_grads(net), ref)


@pytest.mark.parametrize("rule", ["dfa", "dkp", "zo", "opzo"])
@pytest.mark.parametrize("which", ["nf", "r19", "vgg"])
def test_every_rule_runs_on_the_new_nets(rule, which):
    if which == "nf":
        net, _ = _small_nf()
        shape = (2, 16, 16)
    elif which == "r19":
        torch.manual_seed(0)
        net = ResNet19((2, 8, 8), 4, width=1 / 32).double()
        shape = (2, 8, 8)
    else:
        torch.manual_seed(0)
        net = SpikingNet("vggsnn", (2, 48, 48), 4, width=1 / 32).double()
        shape = (2, 48, 48)
    x = 3.0 * torch.randn(2, math.prod(shape), dtype=torch.float64)
    y = torch.tensor([0, 1])
    for p in net.parameters():
        p.grad = None
    rule_obj = build_rule(TrainConfig(method=rule))
    OnlineLearner(net, rule_obj, InstantLoss("mix", 0.1)).accumulate(x, y, T=2)
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if rule != "dkp":  # DKP's feedback starts at zero: only the readout learns at first
        assert sum(float(g.abs().sum()) > 0 for g in grads) > len(grads) // 2
    BPTTLearner(net, InstantLoss("mix", 0.1)).accumulate(x, y, T=2)


def test_opzo_train_fine_tunes_nfresnet34_from_an_ottt_checkpoint(tmp_path, capsys):
    """The command line end to end: `opzo train --net nfresnet34 --init-from CKPT.pth` on an
    ImageNet-layout folder (1000 class folders, two training images and one validation image;
    224x224 crops) loads the OTTT file's 126 tensors, trains a step and evaluates."""
    import numpy as np

    from opzo.cli import main

    from .writers import write_image

    shapes = json.loads(KEYS.read_text())["state_dict"]
    path = tmp_path / "ottt.pth"
    torch.save({"net": {k: v.float() for k, v in _random_checkpoint(shapes).items()},
                "epoch": 99}, path)
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for c in range(1000):
            (root / split / f"n{c:08d}").mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (240, 250, 3), dtype=np.uint8)
    write_image(root / "train" / "n00000000" / "a.JPEG", pixels)
    write_image(root / "train" / "n00000999" / "b.JPEG", pixels[::-1])
    write_image(root / "val" / "n00000999" / "c.JPEG", pixels[:, ::-1])
    run = tmp_path / "run"
    rc = main(["train", "--dataset", "imagenet", "--data-root", str(root), "--net", "nfresnet34",
               "--init-from", str(path), "--method", "bp", "--T", "1", "--epochs", "1",
               "--batch-size", "2", "--eval-batch-size", "1", "--lr", "1e-6", "--dropout", "0",
               "--threads", "2", "--out", str(run), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "126 tensors" in captured.out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_test_acc"] is not None
    # the fine-tuned weights start from the file's: one tiny step away
    state = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    fc = NFResNet((3, 224, 224), 1000).ottt_names["fc.weight"]  # the file's name -> ours
    saved = torch.load(path, weights_only=False)["net"]["fc.weight"]
    assert torch.allclose(state[fc], saved, atol=1e-3)
