"""The foreign-simulator chip (:mod:`opzo.chip_nir`, issue 24 part 2): a NIR graph stepped by
snnTorch or SpikingJelly equals opzo's own network (with the same per-step noise on the
currents) to float rounding; the variants whose neuron differs from opzo's model differ from
it and follow hand-written references of their equations; bad input is one clear error each.
Skipped (with the reason) where nir or a simulator is not installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from opzo.network import SpikingMLP, SpikingNet
from opzo.neurons import LIF

nir = pytest.importorskip("nir")
onir = pytest.importorskip("opzo.nir")
chip_nir = pytest.importorskip("opzo.chip_nir")

SIZES = [20, 16, 12, 5]
B, T, ALPHA = 4, 8, 0.3


def _sim(name: str) -> str:
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"the simulator {name} is not installed (pip install 'opzo[nir-peers]')")
    return name


@pytest.fixture(params=chip_nir.SIMULATORS)
def sim(request) -> str:
    return _sim(request.param)


def _net(lam: float = 0.5, v_th: float = 1.0, seed: int = 0, sizes=SIZES) -> SpikingMLP:
    """A small FC net, reset to zero (exact in NIR), weights scaled so that every layer fires."""
    torch.manual_seed(seed)
    net = SpikingMLP(sizes, neuron=LIF(lam=lam, v_th=v_th, reset="zero"))
    with torch.no_grad():
        for layer in net.hidden:
            layer.weight.mul_(3.0)
    return net.eval()


def _inputs(net: SpikingNet, seed: int = 1) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(T, B, net.num_inputs, generator=g) < 0.5).float()
    z = [[torch.randn(B, n, generator=g) for n in net.hidden_sizes] for _ in range(T)]
    return x, z


def _opzo_steps(net: SpikingNet, x, z, alpha=ALPHA):
    """opzo's own network stepped with α z on every layer's current (before the neuron)."""
    state = net.initial_state(x.shape[1], x)
    out = []
    with torch.no_grad():
        for t in range(x.shape[0]):
            o, rec = net.step(state, x[t], noise=None if z is None else z[t],
                              noise_scale=alpha, noise_position="before")
            out.append(([u.clone() for u in rec.u], [s.clone() for s in rec.spikes], o.clone()))
    return out


def _chip_steps(chip, x, z, alpha=ALPHA, split: int = 3):
    """The chip reset, then run in two chunks (the state carries over between runs)."""
    chip.reset(x.shape[1])
    zs = (None, None) if z is None else (z[:split], z[split:])
    steps = chip.run(x[:split], zs[0], alpha) + chip.run(x[split:], zs[1], alpha)
    return [(st.u, st.spikes, st.output) for st in steps]


def _assert_same(got, want, atol=1e-5):
    assert len(got) == len(want)
    for t, ((gu, gs, go), (wu, ws, wo)) in enumerate(zip(got, want)):
        for l, (a, b) in enumerate(zip(gs, ws)):
            assert torch.equal(a, b), f"spikes differ at step {t}, layer {l + 1}"
        for l, (a, b) in enumerate(zip(gu, wu)):
            assert a.shape == b.shape and a.dtype == torch.float32
            torch.testing.assert_close(a, b, rtol=0, atol=atol,
                                       msg=f"u differs at step {t}, layer {l + 1}")
        torch.testing.assert_close(go, wo, rtol=0, atol=atol, msg=f"o differs at step {t}")


def _fired(steps) -> float:
    return sum(float(s.mean()) for _, ss, _ in steps for s in ss) / sum(
        len(ss) for _, ss, _ in steps)


# ------------------------------------------------------------ the chip equals opzo's network


@pytest.mark.parametrize("lam,v_th", [(0.5, 1.0), (0.7, 0.9)])
def test_same_neuron_equals_opzo_with_noise(sim, lam, v_th, tmp_path: Path):
    net = _net(lam, v_th)
    x, z = _inputs(net)
    want = _opzo_steps(net, x, z)
    assert 0.05 < _fired(want) < 0.8  # the test means something only if neurons fire
    path = tmp_path / "model.nir"
    nir.write(path, onir.to_nir(net))
    chip = chip_nir.NirChip(path, sim, net)
    assert chip.name == f"nir:{sim}"
    # λ exactly opzo's (the file's float32 τ gives it to ~1e-7; the metadata states it)
    assert [la.lam for la in chip.layers] == [lam] * len(net.hidden)
    _assert_same(_chip_steps(chip, x, z), want)
    # without noise as well, and from a graph object
    chip = chip_nir.NirChip(onir.to_nir(net), sim, net)
    _assert_same(_chip_steps(chip, x, None), _opzo_steps(net, x, None))


def test_write_weights_is_picked_up(sim):
    net = _net()
    x, z = _inputs(net)
    chip = chip_nir.NirChip(onir.to_nir(net), sim, net)
    before = _chip_steps(chip, x, z)
    with torch.no_grad():  # the host learns: every weight changes
        for layer in [*net.hidden, net.readout]:
            layer.weight.mul_(-0.8).add_(0.05)
            layer.bias.add_(0.1)
    want = _opzo_steps(net, x, z)
    assert not torch.equal(want[-1][2], before[-1][2])
    assert not torch.equal(_chip_steps(chip, x, z)[-1][2], want[-1][2])  # not written yet
    chip.write_weights(net)
    _assert_same(_chip_steps(chip, x, z), want)


def test_layer_with_another_threshold_runs_in_host_units(sim):
    """A graph whose second layer has θ = 2 (weights doubled: the same spikes) and the host
    built from it by from_nir (V_th = 1, that layer's weights halved back): the chip reports
    u in the host's units and equals the host."""
    graph = onir.to_nir(_net())
    lif2, fc2 = graph.nodes["lif2"], graph.nodes["fc2"]
    lif2.v_threshold = lif2.v_threshold * 2
    fc2.weight, fc2.bias = fc2.weight * 2, fc2.bias * 2
    host = onir.from_nir(graph)
    assert host.neuron.v_th == 1.0
    x, z = _inputs(host)
    chip = chip_nir.NirChip(graph, sim, host)
    assert [la.k for la in chip.layers] == [1.0, 2.0]
    _assert_same(_chip_steps(chip, x, z), _opzo_steps(host, x, z))


def test_image_input_flattened_by_the_graph(sim):
    """A dense net on an image-shaped input: its graph starts Input → Flatten → Affine."""
    torch.manual_seed(7)
    net = SpikingNet("16-8-FC", (1, 4, 4), 3, neuron=LIF(reset="zero")).eval()
    with torch.no_grad():
        for layer in net.hidden:
            layer.weight.mul_(3.0)
    graph = onir.to_nir(net)
    assert "flatten1" in graph.nodes
    x, z = _inputs(net)
    _assert_same(_chip_steps(chip_nir.NirChip(graph, sim, net), x, z), _opzo_steps(net, x, z))


# ------------------------------------------------------------ variants: the model is wrong


def _reference(net: SpikingNet, x, z, alpha, sim: str, variant: str, syn_lam: float = 0.5):
    """The variants' equations (:mod:`opzo.chip_nir`, "Neurons") written out by hand in
    float64, per simulator; weights rounded to 8 bits for int8."""
    def q(w):
        w = w.detach().double()
        d = w.abs().max() / 127
        return w if d == 0 else torch.round(w / d) * d

    lam, th = net.neuron.lam, net.neuron.v_th
    params = [(layer.weight.detach().double(), layer.bias.detach().double())
              for layer in [*net.hidden, net.readout]]
    if variant == "int8":
        params = [(q(w), q(b)) for w, b in params]
    n = net.hidden_sizes
    u = [torch.zeros(x.shape[1], k, dtype=torch.float64) for k in n]
    s = [torch.zeros_like(v) for v in u]
    i = [torch.zeros_like(v) for v in u]
    out = []
    for t in range(x.shape[0]):
        inp = x[t].double()
        us, ss = [], []
        for l in range(len(n)):
            w, b = params[l]
            cur = inp @ w.T + b + alpha * z[t][l].double()
            if variant == "cuba":
                i[l] = syn_lam * i[l] + cur
                if sim == "snntorch":  # Synaptic's zero reset drops the whole update
                    u[l] = (1 - s[l]) * (lam * u[l] + i[l])
                else:
                    u[l] = lam * u[l] * (1 - s[l]) + i[l]
            elif variant == "reset-subtract":
                if sim == "snntorch":  # Leaky subtracts θ from the new potential
                    u[l] = lam * u[l] + cur - th * s[l]
                else:  # SpikingJelly's soft reset: subtract at the spike, then decay
                    u[l] = lam * (u[l] - th * s[l]) + cur
            else:
                u[l] = lam * u[l] * (1 - s[l]) + cur
            s[l] = (u[l] >= th if sim == "spikingjelly" else u[l] > th).double()
            us.append(u[l].float())
            ss.append(s[l].float())
            inp = s[l]
        w, b = params[-1]
        out.append((us, ss, (inp @ w.T + b).float()))
    return out


@pytest.mark.parametrize("variant", ["reset-subtract", "cuba", "int8"])
def test_variant_differs_from_opzo_and_follows_its_equations(sim, variant):
    net = _net(seed=3)
    x, z = _inputs(net, seed=4)
    same = _chip_steps(chip_nir.NirChip(onir.to_nir(net), sim, net), x, z)
    chip = chip_nir.NirChip(onir.to_nir(net), sim, net, variant=variant)
    assert chip.name == f"nir:{sim}:{variant}"
    got = _chip_steps(chip, x, z)
    _assert_same(got, _reference(net, x, z, ALPHA, sim, variant))
    assert any(not torch.equal(a, b) for g, s in zip(got, same) for a, b in zip(g[0], s[0]))
    if variant != "int8":  # a different neuron: different spikes
        assert any(not torch.equal(a, b) for g, s in zip(got, same) for a, b in zip(g[1], s[1]))
    else:  # the chip holds 8-bit weights: at most 255 levels per tensor
        assert all(len(torch.unique(lin.weight)) <= 255 for lin in chip.syn)


def test_same_neuron_also_follows_the_hand_reference(sim):
    net = _net(seed=5)
    x, z = _inputs(net, seed=6)
    got = _chip_steps(chip_nir.NirChip(onir.to_nir(net), sim, net), x, z)
    _assert_same(got, _reference(net, x, z, ALPHA, sim, "same"))


def test_variants_are_the_listed_ones():
    assert chip_nir.VARIANTS[0] == "same"
    assert {"reset-subtract", "cuba"} <= set(chip_nir.VARIANTS)


# ------------------------------------------------------------------------ bad input


def test_unknown_simulator_and_variant():
    net = _net()
    graph = onir.to_nir(net)
    with pytest.raises(ValueError, match="unknown chip simulator 'brian'; choose one of"):
        chip_nir.NirChip(graph, "brian", net)
    with pytest.raises(ValueError, match="unknown chip variant 'izhikevich'; choose one of"):
        chip_nir.NirChip(graph, "snntorch", net, variant="izhikevich")


def test_simulator_not_installed(monkeypatch):
    net = _net()
    graph = onir.to_nir(net)
    for name in chip_nir.SIMULATORS:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
        with pytest.raises(ImportError, match=rf"the chip simulator '{name}' is not installed: "
                                              r"pip install 'opzo\[nir-peers\]'"):
            chip_nir.NirChip(graph, name, net)
    if importlib.util.find_spec("norse") is None:
        with pytest.raises(ImportError, match="the chip simulator 'norse' is not installed"):
            chip_nir.NirChip(graph, "norse", net)


def test_graph_the_chip_cannot_run(sim):
    conv = SpikingNet("4C3-AP2-FC", (1, 8, 8), 3, neuron=LIF(reset="zero"))
    with pytest.raises(ValueError, match="node 'conv1' is a Conv2d node, which the chip does "
                                         "not run"):
        chip_nir.NirChip(onir.to_nir(conv), sim, conv)
    res = SpikingNet("16-16+-FC", (20,), 5, neuron=LIF(reset="zero"))
    with pytest.raises(ValueError, match="node 'lif2' has a shortcut from 'lif1'"):
        chip_nir.NirChip(onir.to_nir(res), sim, res)


def test_graph_and_network_shapes_differ(sim, tmp_path: Path):
    graph = onir.to_nir(_net())
    other = _net(sizes=[20, 16, 5])
    with pytest.raises(ValueError, match=r"the NIR graph's layers 20-16-12-5 .* do not match "
                                         r"the network's .*20-16-5"):
        chip_nir.NirChip(graph, sim, other)
    with pytest.raises(FileNotFoundError, match="NIR file .*missing.nir not found"):
        chip_nir.NirChip(tmp_path / "missing.nir", sim, other)
    chip = chip_nir.NirChip(graph, sim, _net())
    with pytest.raises(ValueError, match="write the weights of the network the chip was "
                                         "built for"):
        chip.write_weights(_net(sizes=[20, 16, 11, 5]))


def test_run_checks_its_input(sim):
    net = _net()
    chip = chip_nir.NirChip(onir.to_nir(net), sim, net)
    x, z = _inputs(net)
    with pytest.raises(ValueError, match=r"call reset\(batch\) before run"):
        chip.run(x)
    chip.reset(B)
    with pytest.raises(ValueError, match=r"chip input of shape \(8, 4, 19\); expected "
                                         r"\(Tc, 4, 20\)"):
        chip.run(x[..., :19])
    with pytest.raises(ValueError, match="noise of layer 2 has shape"):
        chip.run(x, [[a, b[:, :3]] for a, b in z])
