"""Cost of learning (opzo.cost): closed forms of the OPZO paper's Table 5 on FC nets, exact
conv MACs against a brute-force count of synapses, and every method's feedback MACs against
the matrix products its rule actually runs (counted by a TorchDispatchMode)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from opzo import InstantLoss, OnlineLearner, SpikingMLP, SpikingNet
from opzo.cost import build_cost_net, format_cost_table, learning_cost, main_cost, op_macs
from opzo.layers import ConvLayer
from opzo.rules import RULES, LocalLearning

from .reference import brute_op_fanout

aten = torch.ops.aten


# ---------------------------------------------------------------------------------------
# closed forms (OPZO paper Table 5: N hidden layers of n neurons, m outputs)


@pytest.mark.parametrize("N,n,m,F", [(2, 800, 10, 784), (3, 20, 7, 50), (1, 5, 3, 4)])
def test_fc_costs_equal_the_papers_closed_forms(N, n, m, F):
    net = SpikingMLP([F, *[n] * N, m])
    bp, dfa, zo, opzo, dkp = (learning_cost(net, k) for k in ("bp", "dfa", "zo", "opzo", "dkp"))
    assert bp["ops"]["feedback"] == bp["memory"]["feedback_weights"] == (N - 1) * n * n + m * n
    assert bp["ops"]["total"] == (N - 1) * n * n + m * n
    assert not bp["parallel"] and bp["stages"] == N
    for c in (dfa, opzo, dkp):
        assert c["ops"]["feedback"] == c["memory"]["feedback_weights"] == N * m * n
        assert c["parallel"] and c["critical_path"] == m * n
    assert dfa["ops"]["total"] == N * m * n
    assert opzo["ops"]["update"] == N * m * n and opzo["ops"]["total"] == 2 * N * m * n
    assert opzo["memory"]["state"] == N * n  # the noise z, kept for M's update
    assert zo["ops"]["total"] == zo["memory"]["state"] == N * n
    assert zo["memory"]["feedback_weights"] == 0
    assert dkp["memory"]["optimizer_state"] == 3 * N * m * n
    assert bp["forward"]["macs"] == F * n + (N - 1) * n * n + n * m
    # LL: a readout per layer, forward + backward + gradient n·m each
    ll = learning_cost(net, "opzo", local_learning=True)
    assert ll["ops"]["local"] == 3 * N * n * m
    assert ll["memory"]["readouts"] == N * (n * m + m)


def test_mnist_fc_net_numbers():
    """784-800-800-10: BP 800² + 10·800 = 648,000; DFA / OPZO 2·10·800 = 16,000; ZO 1,600."""
    net = SpikingMLP([784, 800, 800, 10])
    costs = {k: learning_cost(net, k)["ops"]["feedback"] for k in ("bp", "dfa", "opzo", "zo")}
    assert costs == {"bp": 648_000, "dfa": 16_000, "opzo": 16_000, "zo": 1_600}


def test_igl_counts_the_layers_below_it():
    net = SpikingMLP([4, 6, 5, 3, 2])  # n = 6, 5, 3; m = 2
    dfa = learning_cost(net, "dfa", igl_layer=2)
    assert dfa["ops"]["feedback"] == (6 + 5 + 3) * 2 + (6 + 5) * 2
    assert dfa["ops"]["local"] == 3 * 3 * 2  # only the IGL layer's readout
    bp = learning_cost(net, "bp", igl_layer=2)
    assert bp["ops"]["feedback"] == (2 * 3 + 3 * 5 + 5 * 6) + (3 * 5 + 5 * 6)
    zo = learning_cost(net, "zo", igl_layer=1, local_learning=True)
    assert zo["ops"]["feedback"] == 14 + 6
    assert zo["ops"]["local"] == 3 * 14 * 2
    with pytest.raises(ValueError, match="igl_layer"):
        learning_cost(net, "dfa", igl_layer=0)
    with pytest.raises(ValueError, match="unknown method"):
        learning_cost(net, "ottt")


# ---------------------------------------------------------------------------------------
# exact conv MACs


@pytest.mark.parametrize("in_shape,c_out,k", [((2, 4, 4), 3, 3), ((1, 5, 7), 2, 3),
                                              ((3, 6, 6), 2, 5), ((2, 3, 3), 2, 1)])
def test_conv_macs_equal_a_brute_force_count_of_synapses(in_shape, c_out, k):
    layer = ConvLayer(in_shape, c_out, k)
    brute = int(brute_op_fanout(layer).sum())  # Σ over inputs of the synapses each reaches
    assert op_macs(layer) == brute
    c_in, h, w = in_shape
    assert op_macs(layer, "padded") == c_out * h * w * c_in * k * k
    if k > 1:
        assert op_macs(layer) < op_macs(layer, "padded")


def test_same_padded_3x3_on_4x4_by_hand():
    """Taps inside a 4x4 map per row of outputs: 2 + 3 + 3 + 2 = 10 (not 4·3 = 12), so
    10·10 = 100 of the 144 taps per channel pair are synapses."""
    assert op_macs(ConvLayer((1, 4, 4), 1, 3)) == 100
    assert op_macs(ConvLayer((2, 4, 4), 3, 3)) == 600


# ---------------------------------------------------------------------------------------
# against the rules' own matrix products


class MacCounter(TorchDispatchMode):
    """Counts the multiply-adds of matrix products and convolutions that run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        p = func.overloadpacket
        if p in (aten.mm,):
            a, b = args[0], args[1]
            self.macs += a.shape[0] * a.shape[1] * b.shape[1]
        elif p in (aten.addmm, aten.addmm_):
            a, b = args[1], args[2]
            self.macs += a.shape[0] * a.shape[1] * b.shape[1]
        elif p is aten.convolution:
            out = func(*args, **kwargs)
            w = args[1]
            self.macs += out.numel() * w.shape[1] * w.shape[2] * w.shape[3]
            self.ops.append(str(p))
            return out
        elif p is aten.convolution_backward:
            grad_out, _, w = args[0], args[1], args[2]
            mask = args[-1]
            per = grad_out.numel() * w.shape[1] * w.shape[2] * w.shape[3]
            self.macs += per * (int(bool(mask[0])) + int(bool(mask[1])))
        elif p in (aten.bmm, aten.baddbmm, aten.mv, aten.addmv, aten.dot, aten.matmul,
                   aten.linear):
            raise AssertionError(f"uncounted matrix op {p}")
        else:
            return func(*args, **kwargs)
        self.ops.append(str(p))
        return func(*args, **kwargs)


def _measure(net, rule, x, y, T):
    """MACs per sample and step of ``rule.deltas`` over a training batch."""
    learner = OnlineLearner(net, rule, InstantLoss())
    counter = MacCounter()
    inner = rule.deltas

    def counted(ctx):
        with counter:
            return inner(ctx)

    rule.deltas = counted
    learner.accumulate(x, y, T)
    return counter.macs / (x.shape[0] * T), counter


NETS = [
    ("fc", lambda: SpikingMLP([6, 5, 4, 3]), (6,)),
    ("conv", lambda: SpikingNet("3C3-AP2-4C3-5-FC", (2, 6, 6), 3), (2, 6, 6)),
    ("resnet", lambda: SpikingNet("3C3-3C3+-AP2-2C3-FC", (1, 4, 4), 3), (1, 4, 4)),
]


@pytest.mark.parametrize("method", list(RULES))
@pytest.mark.parametrize("name,make,shape", NETS)
def test_feedback_macs_equal_the_rules_matrix_products(method, name, make, shape):
    net = make()
    B, T = 3, 2
    x = torch.rand(B, *shape) * 2
    y = torch.tensor([0, 1, 2])
    measured, counter = _measure(net, RULES.build(method), x, y, T)
    cost = learning_cost(net, method, borders="padded")  # dense kernels compute every tap
    matrix = cost["ops"]["feedback"] + cost["ops"]["update"]
    if method == "zo":
        matrix = 0  # a scalar times the noise: elementwise only
        assert cost["ops"]["feedback"] == sum(net.hidden_sizes)
    assert measured == matrix, counter.ops
    if method == "bp" and name != "fc":
        assert any("convolution_backward" in o for o in counter.ops)


@pytest.mark.parametrize("method", ["bp", "dfa", "opzo"])
@pytest.mark.parametrize("local,igl", [(True, None), (False, 2), (True, 1)])
def test_ll_and_igl_macs_equal_the_rules_matrix_products(method, local, igl):
    """LL: every readout's forward, backward and gradient. IGL: the implementation runs
    its second rule on layers 0..k and recomputes R_kᵀ e_k (BP, DFA: n_k·m more than the
    ideal count; OPZO's M update on layer k too: 2·n_k·m)."""
    net = SpikingNet("3C3-AP2-4C3-5-FC", (2, 6, 6), 3)
    B, T = 3, 2
    x = torch.rand(B, 2, 6, 6) * 2
    y = torch.tensor([0, 1, 2])
    rule = LocalLearning(RULES.build(method), local=local, igl_layer=igl)
    measured, counter = _measure(net, rule, x, y, T)
    cost = learning_cost(net, method, local_learning=local, igl_layer=igl, borders="padded")
    ideal = cost["ops"]["total"]
    extra = 0
    if igl is not None:
        extra = net.hidden_sizes[igl] * net.num_outputs * (2 if method == "opzo" else 1)
    assert measured == ideal + extra, counter.ops


@pytest.mark.parametrize("name,make,shape", NETS)
def test_forward_macs_equal_the_networks_products(name, make, shape):
    net = make()
    x = torch.rand(2, *shape).reshape(2, -1)
    counter = MacCounter()
    state = net.initial_state(2, x)
    with torch.no_grad(), counter:
        net.step(state, x)
    assert counter.macs / 2 == learning_cost(net, "bp", borders="padded")["forward"]["macs"]


# ---------------------------------------------------------------------------------------
# table and command line


def test_table_and_command_line(capsys):
    net = build_cost_net("conv5", (3, 32, 32), 10)
    assert net.hidden[0].weight.device.type == "meta"  # shapes only
    text = format_cost_table([learning_cost(net, k) for k in ("bp", "opzo")])
    assert "bp" in text and "opzo" in text and "128C3-AP2-256C3-AP2-512C3-FC" in text
    assert main_cost(["--method", "all"]) == 0
    out = capsys.readouterr().out
    for k in RULES:
        assert f"\n{k} " in out
    assert "648,000" in out and "16,000" in out
    assert main_cost(["--net", "conv5", "--width", "0.25", "--method", "opzo", "--json",
                      "--local-learning", "--igl-layer", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["opzo+ll+igl"]
    assert rows[0]["igl_layer"] == 1 and rows[0]["hidden"] == [32 * 784, 64 * 196, 128 * 49]
    with pytest.raises(SystemExit) as exc:
        main_cost(["--igl-layer", "1"])
    assert exc.value.code == 2


# ---------------------------------------------------------------------------------------
# rules declare their cost profile; a rule registered at run time is counted from it


class _SignBP(RULES["bp"].factory):
    """A BP variant (e.g. sign-symmetric feedback): it inherits BP's transposed profile."""

    name = "test_sign_bp"


class _NoModel(RULES["dfa"].factory):
    """A rule that says it has no cost model."""

    name = "test_no_model"
    cost_profile = None


def _learned_direct():
    from opzo.rules.profile import CostProfile

    class LearnedDirect(RULES["dfa"].factory):
        name = "test_learned"
        cost_profile = CostProfile("direct", learns_feedback=True, optimizer_copies=2)

    return LearnedDirect


@pytest.fixture
def extra_rules():
    names = {"test_sign_bp": _SignBP, "test_no_model": _NoModel,
             "test_learned": _learned_direct()}
    for name, cls in names.items():
        RULES.register(name, cls, "a rule registered by a test")
    try:
        yield names
    finally:
        for name in names:
            RULES.unregister(name)


def test_a_registered_rule_is_counted_from_its_profile(extra_rules, capsys):
    from opzo.cost import cost_methods

    net = SpikingNet("3C3-3C3+-AP2-2C3-FC", (1, 4, 4), 3)
    for igl in (None, 1):
        bp = learning_cost(net, "bp", igl_layer=igl)
        sign = learning_cost(net, "test_sign_bp", igl_layer=igl)
        assert {**sign, "method": None} == {**bp, "method": None}
    n, m = net.hidden_sizes, net.num_outputs
    learned = learning_cost(net, "test_learned", igl_layer=2)
    direct = sum(k * m for k in n) + sum(k * m for k in n[:2])
    assert learned["ops"]["update"] == learned["ops"]["feedback"] == direct
    assert learned["memory"]["optimizer_state"] == 2 * direct
    assert learned["memory"]["state"] == m  # the IGL readout's output; no noise, no trace
    assert "test_no_model" not in cost_methods() and "test_learned" in cost_methods()
    with pytest.raises(ValueError, match="'test_no_model' has no cost model"):
        learning_cost(net, "test_no_model")
    assert main_cost(["--hidden", "6", "5", "--input-shape", "4"]) == 0
    out = capsys.readouterr().out
    assert "\ntest_sign_bp " in out and "\ntest_learned " in out
    no_model = [line for line in out.splitlines() if "test_no_model" in line]
    assert no_model == ["test_no_model: no cost model (the rule declares no cost_profile)"]
    with pytest.raises(SystemExit) as exc:
        main_cost(["--method", "test_no_model"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no cost model" in err[0] and err[0].startswith("opzo")


def test_profiles_are_checked():
    from opzo.rules.profile import CostProfile

    with pytest.raises(ValueError, match="feedback must be one of"):
        CostProfile("sideways")
    with pytest.raises(ValueError, match="learns_feedback"):
        CostProfile("direct", optimizer_copies=3)
    with pytest.raises(ValueError, match="direct feedback"):
        CostProfile("scalar", learns_feedback=True)
