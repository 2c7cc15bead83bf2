"""The OPZO paper's SynOps convention (issue 24): firing rate x dense fan-out.

Known answers counted by hand: a 3x3 "same" convolution on a 4x4 map reaches 9 output
positions from each of the 4 interior pixels, 6 from the 8 edge pixels and 4 from the 4
corners; the paper's convention gives every pixel the interior 9. And Table 7 of the OPZO paper
(CIFAR-10, spatial BP: firing rates 0.2005 0.1679 0.1067 0.0493, T = 6, 0.76e9 SynOps) is
reproduced by the four-convolution net ``conv-table7``.
"""

from __future__ import annotations

import pytest
import torch

from opzo import SpikingMLP, SpikingNet
from opzo.energy import (
    SynOpsCounter,
    count_synops,
    op_fanout,
    synaptic_fanout,
    synops_from_rates,
)
from opzo.netstring import NETS
from opzo.norm import apply_norm


def _ones_spikes(net, batch=1):
    return [torch.ones(batch, n) for n in net.hidden_sizes]


def test_paper_convention_counts_the_interior_fanout_for_every_pixel():
    # 2C3 on 1x4x4, then 3C3, then the readout (5 classes): layer 1's spikes drive 3C3
    net = SpikingNet("2C3-3C3-FC", (1, 4, 4), 5)
    exact = synaptic_fanout(net)[0].reshape(2, 4, 4)
    paper = synaptic_fanout(net, convention="paper")[0].reshape(2, 4, 4)
    by_hand = torch.tensor([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]],
                           dtype=torch.float64) * 3
    assert torch.equal(exact[0], by_hand) and torch.equal(exact[1], by_hand)
    assert torch.equal(paper, torch.full((2, 4, 4), 27.0, dtype=torch.float64))
    # every neuron fires once: SynOps = the sum of the fan-outs
    # exact: 2 channels x (4·27 + 8·18 + 4·12) = 600; paper: 32 · 27 = 864; the readout
    # (48 neurons x 5 classes = 240) is the same in both
    got = {}
    for conv in ("exact", "paper"):
        c = SynOpsCounter(net, convention=conv)
        c.add_step(_ones_spikes(net), 0)
        got[conv] = c.result()["synops"]
    assert got["exact"] == [600.0, 240.0]
    assert got["paper"] == [864.0, 240.0]


def test_paper_convention_divides_by_the_stride_squared():
    net = SpikingNet("2C3-4C3s2-FC", (1, 6, 6), 3)
    paper = synaptic_fanout(net, convention="paper")[0]
    assert torch.equal(paper, torch.full((72,), 4 * 9 / 4, dtype=torch.float64))
    # by hand: stride 2, padding 1 on 6 rows gives 3 output rows reading rows {-1, 0, 1},
    # {1, 2, 3}, {3, 4, 5}: row 1 is read twice, row 2 once, so pixel (1, 1) reaches 2 x 2
    # positions and (2, 2) one (times 4 channels); the paper's 9/4 is the unbounded map's mean,
    # and the padding row -1 makes the exact total lower (rows: 1+2+1+2+1+1 = 8, not 9)
    exact = synaptic_fanout(net)[0].reshape(2, 6, 6)
    assert exact[0, 1, 1] == 4 * 4 and exact[0, 2, 2] == 4 * 1
    assert float(exact.sum()) == 2 * 4 * 8 * 8 < float(paper.sum()) == 72 * 9.0


def test_paper_convention_equals_exact_for_fully_connected_nets():
    net = SpikingMLP([20, 7, 5, 3])
    spikes = [torch.bernoulli(torch.full((4, n), 0.3)) for n in net.hidden_sizes]
    res = {}
    for conv in ("exact", "paper"):
        c = SynOpsCounter(net, convention=conv)
        c.add_step(spikes, 0)
        res[conv] = c.result()["synops"]
    assert res["exact"] == res["paper"]
    assert res["exact"][0] == float(spikes[0].sum()) * 5 / 4  # fan-out 5 per spike, 4 samples


def test_convention_reaches_pooling_and_batch_normed_layers():
    # average pooling in front of the conv: every pixel of a window gets the pooled value's
    # dense fan-out (3 x 9), floor-mode dropped pixels (5x5 -> 2x2) reach nothing
    net = SpikingNet("2C3-AP2-3C3-FC", (1, 5, 5), 3)
    paper = op_fanout(net.hidden[1], convention="paper").reshape(2, 5, 5)
    assert torch.equal(paper[:, :4, :4], torch.full((2, 4, 4), 27.0, dtype=torch.float64))
    assert float(paper[:, 4, :].abs().sum() + paper[:, :, 4].abs().sum()) == 0.0
    # a batch-normed conv (issue 26's bn): the conv's synapses, in either convention
    normed = SpikingNet("2C3-3C3-FC", (1, 4, 4), 5)
    assert apply_norm(normed, "bn") > 0
    assert torch.equal(synaptic_fanout(normed, convention="paper")[0],
                       torch.full((32,), 27.0, dtype=torch.float64))
    assert float(synaptic_fanout(normed)[0].sum()) == 600.0


def test_count_synops_takes_the_convention():
    torch.manual_seed(0)
    net = SpikingNet("3C3-FC", (1, 5, 5), 4)
    with torch.no_grad():
        net.hidden[0].weight.mul_(4.0)
    x = torch.rand(3, 25)
    exact = count_synops(net, x, T=3)
    paper = count_synops(net, x, T=3, convention="paper")
    assert exact["spikes"] == paper["spikes"] and exact["spikes"][0] > 0
    assert paper["synops"][0] == pytest.approx(exact["spikes"][0] * 4)  # readout: FC, 4
    with pytest.raises(ValueError, match="convention"):
        SynOpsCounter(net, convention="dense")


# Table 7 of the OPZO paper, CIFAR-10 (T = 6) and DVS-CIFAR10 (T = 10): per-layer firing
# rates and SynOps
TABLE7 = [
    ((0.2005, 0.1679, 0.1067, 0.0493), 6, 0.76e9),   # CIFAR-10, spatial BP
    ((0.0400, 0.0670, 0.1159, 0.2157), 6, 0.30e9),   # CIFAR-10, OPZO (w/ LL)
    ((0.2693, 0.4564, 0.4783, 0.4930), 10, 2.91e9),  # DVS-CIFAR10, DFA
]


@pytest.mark.parametrize("rates,T,synops", TABLE7)
def test_table7_is_matched_by_the_four_conv_net_in_the_paper_convention(rates, T, synops):
    net = SpikingNet(NETS["conv-table7"], (3, 32, 32), 10)
    assert net.hidden_sizes == [128 * 32 * 32, 256 * 16 * 16, 512 * 8 * 8, 512 * 4 * 4]
    ours = sum(synops_from_rates(net, rates, T, convention="paper"))
    assert abs(ours - synops) <= 0.005e9  # the table's two decimals
    # the exact count is lower (borders), by more than the table's rounding
    assert sum(synops_from_rates(net, rates, T, convention="exact")) < synops - 0.005e9


def test_the_named_variant_is_accepted_by_the_command_line_options():
    from opzo.build import build_network
    from opzo.config import TrainConfig

    cfg = TrainConfig(net="conv-table7", width=0.0625, dataset="embedded-mnist")
    cfg.validate()
    net = build_network(cfg, (1, 28, 28), 10)
    assert len(net.hidden) == 4


def test_training_and_eval_report_the_chosen_convention(tmp_path, capsys):
    """--synops-convention paper: metrics.jsonl's SynOps are the paper-convention count of the
    run's spikes (an independent count_synops), above the exact one on a conv net; opzo eval
    re-counts a run in either convention."""
    import json

    from opzo.build import build_network, make_source
    from opzo.cli import main
    from opzo.config import TrainConfig
    from opzo.train import run_training

    out = tmp_path / "p"
    cfg = TrainConfig.from_dict(dict(net="4C3-AP2-4C3-FC", T=2, epochs=1, batch_size=64,
                                     limit_train=64, limit_test=50, eval_batch_size=50,
                                     threads=1, init_scale=3.0, out=str(out),
                                     synops_convention="paper"))
    run_training(cfg, out, progress=False, log=lambda *_: None)
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert json.loads((out / "config.json").read_text())["synops_convention"] == "paper"
    test = make_source(cfg, "test")
    net = build_network(cfg, test.input_shape, test.classes)
    net.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=False)["model"])
    x = torch.cat([x for x, _ in test.batches(1000, cfg.T)])
    paper = count_synops(net, x, cfg.T, convention="paper")
    exact = count_synops(net, x, cfg.T)
    assert row["synops"] == pytest.approx(paper["synops"], abs=0.1)
    assert paper["synops"][0] > exact["synops"][0] > 0
    capsys.readouterr()
    assert main(["eval", str(out), "--synops-convention", "exact"]) == 0
    assert json.loads(capsys.readouterr().out)["synops"] == pytest.approx(exact["synops"],
                                                                          abs=0.1)
