import torch

from opzo import DFA, OPZO, InstantLoss, OnlineLearner, SpatialBP, SpikingMLP
from opzo.diagnostics import GradientVariance, gradient_cosine


def _setup():
    torch.manual_seed(0)
    net = SpikingMLP([12, 20, 16, 4], dropout=0.2)
    with torch.no_grad():
        for lin in net.hidden:
            lin.weight.mul_(4.0)
    x = torch.randn(16, 12)
    y = torch.randint(0, 4, (16,))
    return net, x, y


def test_cosine_of_bp_with_itself_is_one_and_dfa_differs_in_hidden_layers():
    net, x, y = _setup()
    loss = InstantLoss()
    bp = gradient_cosine(net, SpatialBP(), x, y, 3, loss)
    assert all(abs(v - 1.0) < 1e-5 for v in bp.values()), bp
    rule = DFA()
    OnlineLearner(net, rule, loss)
    dfa = gradient_cosine(net, rule, x, y, 3, loss)
    assert abs(dfa["readout.weight"] - 1.0) < 1e-5  # same masks, same local readout gradient
    assert dfa["hidden.0.weight"] < 0.99 and dfa["hidden.1.weight"] < 0.99


def test_measuring_changes_neither_the_rule_nor_the_rng():
    net, x, y = _setup()
    rule = OPZO(lambda_m=0.9)
    learner = OnlineLearner(net, rule)
    learner.accumulate(x, y, T=3)
    before = rule.M.clone()
    state = torch.get_rng_state()
    cos = gradient_cosine(net, rule, x, y, 3, InstantLoss())
    assert torch.equal(rule.M, before)
    assert torch.equal(torch.get_rng_state(), state)
    assert set(cos) == {"hidden.0.weight", "hidden.1.weight", "readout.weight"}
    cos_bptt = gradient_cosine(net, None, x, y, 3, InstantLoss(), reference="bptt")
    assert all(abs(v - 1.0) < 1e-5 for v in cos_bptt.values())


def test_gradient_variance_known_answer():
    net = SpikingMLP([3, 2, 2])
    tracker = GradientVariance(net)
    grads = [torch.randn(2, 3) for _ in range(5)]
    for g in grads:
        net.hidden[0].weight.grad = g
        net.readout.weight.grad = 2 * g[:, :2]
        tracker.update()
    stacked = torch.stack(grads)
    expected = float(((stacked - stacked.mean(0)) ** 2).sum() / (5 * 6))
    result = tracker.result()
    assert abs(result["hidden.0.weight"] - expected) < 1e-6
    stacked2 = 2 * stacked[:, :, :2]
    expected2 = float(((stacked2 - stacked2.mean(0)) ** 2).sum() / (5 * 4))
    assert abs(result["readout.weight"] - expected2) < 1e-6
    rel = tracker.relative()["hidden.0.weight"]
    spread = ((stacked - stacked.mean(0)) ** 2).sum()
    expected_rel = float(spread / (5 * stacked.mean(0).square().sum()))
    assert abs(rel - expected_rel) < 1e-5 * expected_rel


def test_measuring_leaves_batch_norm_running_averages_alone():
    """--diagnostics runs the rule and its reference in training mode: with batch norm their
    passes would move the running averages (and so the run) unless they are put back."""
    from opzo import SpikingNet
    from opzo.norm import apply_norm

    torch.manual_seed(0)
    net = SpikingNet("4C3-FC", (1, 6, 6), 3)
    assert apply_norm(net, "bn") == 1
    x, y = torch.rand(8, 36), torch.randint(0, 3, (8,))
    OnlineLearner(net, SpatialBP(), InstantLoss()).accumulate(x, y, T=2)
    before = {k: b.clone() for k, b in net.named_buffers()}
    assert before  # the normaliser's running mean and variance
    gradient_cosine(net, DFA(), x, y, 2, InstantLoss())
    assert all(torch.equal(b, before[k]) for k, b in net.named_buffers())
