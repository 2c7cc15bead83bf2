"""Local learning (LL) and intermediate global learning (IGL), OPZO paper appendix C.1."""

import pytest
import torch

from opzo import DFA, OPZO, InstantLoss, NoiseSampler, OnlineLearner, SpatialBP, SpikingNet
from opzo.rules import LocalLearning

from .reference import presynaptic_autograd_grads


def _net(spec="20-16-12-FC", shape=(10,), dropout=0.0):
    torch.manual_seed(3)
    net = SpikingNet(spec, shape, 5, dropout=dropout).double()
    with torch.no_grad():  # larger weights so that neurons spike often
        for layer in net.hidden:
            getattr(layer, "gain", layer.weight).mul_(3.0)
    return net


def _data(net, batch=7, T=None):
    g = torch.Generator().manual_seed(5)
    shape = (batch, *net.input_shape) if T is None else (T, batch, *net.input_shape)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return x.flatten(-len(net.input_shape)), torch.randint(0, 5, (batch,), generator=g)


def _run(net, rule, x, y, T, loss, masks=None):
    learner = OnlineLearner(net, rule, loss)
    for p in [*net.parameters(), *rule.parameters()]:
        p.grad = None
    learner.accumulate(x, y, T=T, masks=masks)
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    for l, r in getattr(rule, "readouts", {}).items():
        grads.update({f"local.{l}.{k}": p.grad.clone() for k, p in r.named_parameters()})
    return grads


def _assert_same(ours, ref):
    assert ours.keys() == ref.keys()
    for k in ref:
        assert torch.allclose(ours[k], ref[k], atol=1e-10, rtol=1e-7), k


@pytest.mark.parametrize("spec,shape", [("20-16-12-FC", (10,)),
                                        ("3C3-AP2-4C3-6-FC", (1, 6, 6))])
@pytest.mark.parametrize("static", [True, False])
def test_ll_with_bp_equals_autograd_of_local_losses(spec, shape, static):
    """Each layer's local error is the autograd gradient of its own scaled local loss with
    respect to its spikes, reaching only its own synapses; the readouts learn by it too."""
    net = _net(spec, shape, dropout=0.2)
    T = 4
    x, y = _data(net, T=None if static else T)
    loss = InstantLoss("mix", 0.3)
    rule = LocalLearning(SpatialBP(), scale=0.3)
    masks = net.dropout_masks(7, x)
    ours = _run(net, rule, x, y, T, loss, masks)
    local = {l: (r, 0.3, False) for l, r in rule.readouts.items()}
    ref = presynaptic_autograd_grads(net, x, y, T, loss, masks=masks, local=local)
    _assert_same(ours, ref)
    # the local losses change the hidden gradients (so the test can fail)
    plain = presynaptic_autograd_grads(net, x, y, T, loss, masks=masks)
    assert not torch.allclose(plain["hidden.0.weight"], ref["hidden.0.weight"])


@pytest.mark.parametrize("local", [False, True])
def test_igl_with_bp_equals_autograd(local):
    """Under spatial BP, the IGL layer's readout loss reaches every layer below it."""
    net = _net("20-16-12-FC")
    T = 3
    x, y = _data(net)
    loss = InstantLoss("ce")
    rule = LocalLearning(SpatialBP(), scale=0.2, local=local, igl_layer=1, igl_scale=0.7)
    ours = _run(net, rule, x, y, T, loss)
    spec = {l: (r, 0.2, False) for l, r in rule.readouts.items()}
    spec[1] = (rule.readouts[1], 0.7, True)
    ref = presynaptic_autograd_grads(net, x, y, T, loss, local=spec)
    _assert_same(ours, ref)
    assert set(rule.readouts) == ({0, 1, 2} if local else {1})


def test_ll_signal_is_the_same_added_to_any_rule():
    """LL adds the same local term whatever the global rule: (DFA+LL) − DFA = (BP+LL) − BP."""
    net = _net()
    T = 3
    x, y = _data(net)
    loss = InstantLoss("mix", 0.05)
    torch.manual_seed(0)
    dfa = DFA()
    OnlineLearner(net, dfa, loss)  # binds: draws B
    dfa_ll = LocalLearning(dfa, scale=0.5)
    OnlineLearner(net, dfa_ll, loss)
    torch.manual_seed(0)
    bp_ll = LocalLearning(SpatialBP(), scale=0.5)
    OnlineLearner(net, bp_ll, loss)
    bp_ll.load_state_dict({"inner": {"noise": None}, "readouts": {
        l: r.state_dict() for l, r in dfa_ll.readouts.items()}, "igl": None})
    base_dfa = _run(net, dfa, x, y, T, loss)
    with_dfa = _run(net, dfa_ll, x, y, T, loss)
    base_bp = _run(net, SpatialBP(), x, y, T, loss)
    with_bp = _run(net, bp_ll, x, y, T, loss)
    for k in base_dfa:
        assert torch.allclose(with_dfa[k] - base_dfa[k], with_bp[k] - base_bp[k],
                              atol=1e-10), k
    assert not torch.allclose(with_dfa["hidden.1.weight"], base_dfa["hidden.1.weight"])


def test_igl_opzo_learns_its_feedback_from_the_shared_noise():
    """OPZO's IGL feedback M^(k) is updated with the noise of layers 0..k and the
    intermediate output r_k = R_k x̃_k (eq. 6 with r_k for õ): with λ_M = 0 after one step,
    M^(k)ᵀ = (1/B) r_kᵀ z_{0..k}."""
    net = _net("20-16-12-FC")
    x, y = _data(net)
    rule = LocalLearning(OPZO(NoiseSampler(alpha=0.3), lambda_m=0.0), igl_layer=1)
    torch.manual_seed(1)
    OnlineLearner(net, rule, InstantLoss("ce")).accumulate(x, y, T=1)
    z = rule.noise.z
    assert rule.igl_rule is not None
    m_k = rule.igl_rule.feedback_t
    assert m_k.shape == (5, 20 + 16)
    # replay the step: the same noise gives the same noisy output of layer 1
    state = net.initial_state(7, x)
    _, rec = net.step(state, x, noise=list(z.split([20, 16, 12], dim=1)), noise_scale=0.3)
    r_k = rule.readouts[1].op(rec.out[1])
    expect = r_k.t() @ z[:, :36] / 7
    assert torch.allclose(m_k, expect, atol=1e-12)
    assert m_k.abs().sum() > 0


def test_optimizer_must_hold_the_readouts():
    net = _net()
    x, y = _data(net)
    rule = LocalLearning(SpatialBP())
    learner = OnlineLearner(net, rule, InstantLoss("ce"))
    with pytest.raises(ValueError, match=r"rule.parameters\(\)"):
        learner.train_batch(x, y, torch.optim.SGD(net.parameters(), lr=0.1), T=2)
    opt = torch.optim.SGD([*net.parameters(), *rule.parameters()], lr=0.1)
    before = rule.readouts[0].weight.clone()
    learner.train_batch(x, y, opt, T=2)
    assert not torch.equal(before, rule.readouts[0].weight)  # the readouts learn


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="igl_layer"):
        LocalLearning(SpatialBP(), local=False)
    with pytest.raises(ValueError, match=">= 1"):
        LocalLearning(SpatialBP(), igl_layer=0)
    rule = LocalLearning(SpatialBP(), igl_layer=5)
    with pytest.raises(ValueError, match="3 hidden layers"):
        OnlineLearner(_net(), rule, InstantLoss("ce"))
