"""Are two draws of the Randman task (same manifolds, other sample seed) the same task?

    python benchmarks/randman_draws.py

Fits a linear softmax classifier on spike-time features (t, t²) of 8000 samples of the OTPE
Randman draw (seed 0) and scores it on the other 2000 samples of that draw and on a second draw
with ``sample_seed=1``. Each class is min-max standardised over its own draw, so the second
draw's spike times are on another scale: that is why opzo's randman datasets split one draw.
"""

from __future__ import annotations

import torch

from opzo.data.randman import otpe_preset


def main() -> None:
    first, y1 = otpe_preset(True, seed=0)
    second, y2 = otpe_preset(True, seed=0, sample_seed=1)
    t1, t2 = first.argmax(0).float() / 50, second.argmax(0).float() / 50  # spike step / T

    def features(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t * t], 1)

    torch.manual_seed(0)
    w = torch.zeros(100, 10, requires_grad=True)
    b = torch.zeros(10, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(500):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(features(t1[:8000]) @ w + b, y1[:8000]).backward()
        opt.step()
    with torch.no_grad():
        def acc(t, y):
            return 100 * ((features(t) @ w + b).argmax(1) == y).float().mean().item()
        print(f"train {acc(t1[:8000], y1[:8000]):.2f}%  held-out of the same draw "
              f"{acc(t1[8000:], y1[8000:]):.2f}%  a second draw {acc(t2, y2):.2f}%")


if __name__ == "__main__":
    main()
