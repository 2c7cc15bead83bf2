"""OPZO's memory-light forms of M and the memory of the rules' state (issue 26 item 7)."""

import math
from types import SimpleNamespace

import pytest
import torch

from opzo import OPZO, NoiseSampler, OnlineLearner
from opzo.rules import DFA, DKP, ZO, LocalLearning, mforms
from opzo.rules.mforms import LowRankOPZO, SharedSpaceOPZO, check_fits, state_sizes

from .reference import spiky_net

SPEC, SHAPE = "3C3-AP2-4C3-5-FC", (1, 8, 8)


def _batch(T=4, batch=6, outputs=4):
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(T, batch, math.prod(SHAPE), generator=g, dtype=torch.float64) < 0.4)
    return x.double(), torch.randint(0, outputs, (batch,), generator=g)


def _train_one_batch(rule, T=4):
    """One batch with noise from torch's generator seeded alike: the same forward (weights
    change only after the batch), the same z at every step, whatever the form of M."""
    net = spiky_net(SPEC, SHAPE)
    x, y = _batch(T)
    torch.manual_seed(5)
    OnlineLearner(net, rule, update="batch").accumulate(x, y, T=T)
    return net, rule


def _noise():
    return NoiseSampler(alpha=0.3, rng="torch")



def _assert_same_gradients(net, rule, dense):
    """The gradients ``rule`` and ``dense`` (an OPZO) give on the same batch and noise."""
    x, y = _batch()
    grads = []
    for r in (rule, dense):
        for p in net.parameters():
            p.grad = None
        torch.manual_seed(9)
        OnlineLearner(net, r).accumulate(x, y, T=4)
        grads.append({k: p.grad.clone() for k, p in net.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-10, atol=1e-14)
    assert grads[0]["hidden.0.weight"].abs().sum() > 0


def test_shared_space_m_is_the_dense_m_averaged_over_positions():
    """Started from zero and driven by the same noise and outputs, the shared-space M̄_l[c]
    equals the mean over the positions p of the dense M_l[(c, p)] after every step (the
    update is linear in z; λ_M = 0.5 so that every step counts)."""
    net, dense = _train_one_batch(OPZO(_noise(), lambda_m=0.5))
    _, shared = _train_one_batch(SharedSpaceOPZO(_noise(), lambda_m=0.5))
    m = net.num_outputs
    assert dense.M.abs().sum() > 0
    for block_d, block_s, layer in zip(dense.feedback_blocks(), shared.feedback_blocks(),
                                       net.hidden):
        shape = tuple(layer.out_shape)
        if len(shape) == 3:
            c, p = shape[0], shape[1] * shape[2]
            want = block_d.reshape(c, p, m).mean(dim=1)
        else:  # a dense layer: one position, the dense M itself
            want = block_d
        assert block_s.shape == want.shape
        torch.testing.assert_close(block_s, want, rtol=1e-10, atol=1e-14)


def test_shared_space_feedback_broadcasts_over_positions():
    """g_l[(c, p)] = M̄_l[c] e for every position p: the deltas of the shared-space rule equal
    those of a dense rule whose M has M̄_l[c] copied into every position of channel c."""
    net, shared = _train_one_batch(SharedSpaceOPZO(_noise(), lambda_m=0.5))
    _, dense = _train_one_batch(OPZO(_noise(), lambda_m=0.5))
    shared.frozen = dense.frozen = True  # compare the feedback with M held fixed
    blocks = []
    for block_s, layer in zip(shared.feedback_blocks(), net.hidden):
        shape = tuple(layer.out_shape)
        p = shape[1] * shape[2] if len(shape) == 3 else 1
        blocks.append(block_s.repeat_interleave(p, dim=0))
    dense.feedback_t.copy_(torch.cat(blocks, dim=0).t())
    _assert_same_gradients(net, shared, dense)


def test_lowrank_m_is_the_dense_m_projected_on_its_basis():
    """K = M_dense Q for the same noise, and the rule feeds back with M_dense Q Qᵀ."""
    _, dense = _train_one_batch(OPZO(_noise(), lambda_m=0.5))
    _, low = _train_one_batch(LowRankOPZO(_noise(), lambda_m=0.5, rank=2, seed=3))
    q = low.basis
    assert q.shape == (4, 2)
    torch.testing.assert_close(q.t() @ q, torch.eye(2, dtype=q.dtype), rtol=0, atol=1e-12)
    torch.testing.assert_close(low.feedback_t.t(), dense.M @ q, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(low.M, dense.M @ q @ q.t(), rtol=1e-10, atol=1e-14)
    # rank R = m: Q Qᵀ = I, the dense M itself
    _, full = _train_one_batch(LowRankOPZO(_noise(), lambda_m=0.5, rank=4, seed=3))
    torch.testing.assert_close(full.M, dense.M, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("make", [lambda: OPZO(_noise()), lambda: SharedSpaceOPZO(_noise()),
                                  lambda: LowRankOPZO(_noise(), rank=3), DFA, DKP,
                                  lambda: ZO(_noise())])
def test_state_sizes_are_the_bytes_the_bound_rule_holds(make):
    """The estimate made before binding equals the bytes of the tensors the bound rule
    allocates (DKP: F, its gradient and Adam's two moments after a step; the noise of a
    step: batch x Σ n_l)."""
    net = spiky_net(SPEC, SHAPE)
    rule = make()
    batch = 6
    sizes = dict((name, b) for name, b, _ in state_sizes(rule, net, batch))
    x, y = _batch(batch=batch)
    OnlineLearner(net, rule).accumulate(x, y, T=4)
    if isinstance(rule, DKP):
        rule.optimizer_step()
        adam = rule.optimizer.state[rule.feedback_t]
        held = sum(t.nbytes for t in (rule.feedback_t, rule.feedback_t.grad, adam["exp_avg"],
                                      adam["exp_avg_sq"]))
        assert sizes["F + grad + Adam"] == held
    elif isinstance(rule, LowRankOPZO):
        assert sizes["M"] == rule.feedback_t.nbytes + rule.basis.nbytes
    elif isinstance(rule, (OPZO, DFA)):
        assert sizes["M" if isinstance(rule, OPZO) else "B"] == rule.feedback_t.nbytes
    if rule.noise is not None:
        assert sizes["noise z"] == rule.noise.z.nbytes  # the last step's draw, (B, Σ n_l)
    else:
        assert "noise z" not in sizes
    if isinstance(rule, SharedSpaceOPZO):  # 3 + 4 channels and 5 dense neurons, x 4 outputs
        assert sizes["M"] == (3 + 4 + 5) * 4 * 8


def test_local_learning_state_counts_its_readouts():
    net = spiky_net(SPEC, SHAPE)
    rule = LocalLearning(OPZO(_noise()), local=True)
    sizes = dict((name, b) for name, b, _ in state_sizes(rule, net, 6))
    rule.bind(net)
    assert sizes["local readouts"] == sum(p.nbytes for p in rule.parameters())
    assert sizes["M"] == rule.inner.feedback_t.nbytes


def _imagenet_like_net():
    """The spiking layers of an NF-ResNet-34 at 224x224 (pre-activation blocks: two LIF
    layers per block, before each conv; stages of 3, 4, 6, 3 blocks at 56, 28, 14, 7 with 64,
    128, 256, 512 channels; the stem's 112x112 output is pooled before the first LIF),
    float32, 1000 classes: only what state_sizes reads, nothing allocated."""
    shapes = []
    for blocks, c, s in ((3, 64, 56), (4, 128, 28), (6, 256, 14), (3, 512, 7)):
        shapes += [(c, s, s)] * (2 * blocks)
    hidden = [SimpleNamespace(out_shape=s) for s in shapes]
    return SimpleNamespace(hidden=hidden, hidden_sizes=[math.prod(s) for s in shapes],
                           num_outputs=1000,
                           readout=SimpleNamespace(weight=torch.empty(0, dtype=torch.float32)))


def test_imagenet_scale_dense_m_is_refused_and_the_light_forms_fit():
    net = _imagenet_like_net()
    n = sum(net.hidden_sizes)
    assert 2.5e6 < n < 3.5e6  # "about 2.8 M hidden neurons"
    dense = dict((k, b) for k, b, _ in state_sizes(OPZO(), net, 64))
    assert dense["M"] == n * 1000 * 4 and dense["M"] > 10 * mforms.GIB
    line = mforms.describe(state_sizes(OPZO(), net, 64))
    assert line.startswith("rule state: M ") and f"{dense['M'] / mforms.GIB:.2f} GiB" in line
    with pytest.raises(mforms.StateTooLarge, match="--m-form shared-space") as info:
        check_fits(state_sizes(OPZO(), net, 64), 8 * mforms.GIB, "cuda:0 has 8.0 GiB free")
    assert "\n" not in str(info.value)
    shared = dict((k, b) for k, b, _ in state_sizes(SharedSpaceOPZO(), net, 64))
    channels = sum(s.out_shape[0] for s in net.hidden)
    assert shared["M"] == channels * 1000 * 4 < mforms.GIB / 10
    check_fits(state_sizes(SharedSpaceOPZO(), net, 64), 8 * mforms.GIB, "x")  # fits
    low = dict((k, b) for k, b, _ in state_sizes(LowRankOPZO(rank=64), net, 64))
    assert low["M"] == (n * 64 + 1000 * 64) * 4


def test_cli_logs_the_rule_state_and_refuses_what_does_not_fit(tmp_path, monkeypatch, capsys):
    from opzo.cli import main

    args = ["train", "--hidden", "20", "--epochs", "1", "--limit-train", "32",
            "--limit-test", "32", "--batch-size", "16", "--T", "2", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "ok")]) == 0
    out = capsys.readouterr()
    # M: 20 neurons x 10 outputs x 4 bytes; noise z: 16 x 20 x 4 bytes
    log = out.out + out.err
    assert "rule state: M 0.8 KiB (dense, 20 neurons x 10 outputs)" in log
    assert "noise z 1.2 KiB (batch 16 x 20)" in log
    monkeypatch.setattr(mforms, "available_bytes", lambda device: (1000, "cpu has 1000 B free"))
    assert main([*args, "--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("opzo: error: the rule's state needs 2.0 KiB")
    assert "cpu has 1000 B free" in err[0] and "--m-form shared-space" in err[0]


def test_lowrank_feedback_is_that_of_the_dense_m_k_qt():
    """With M held fixed, the low-rank rule's gradients equal a dense OPZO whose M is K Qᵀ."""
    net, low = _train_one_batch(LowRankOPZO(_noise(), lambda_m=0.5, rank=2, seed=3))
    _, dense = _train_one_batch(OPZO(_noise(), lambda_m=0.5))
    low.frozen = dense.frozen = True
    dense.feedback_t.copy_(low.M.t())
    _assert_same_gradients(net, low, dense)
