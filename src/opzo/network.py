"""A fully connected feed-forward SNN with a one-step forward that learning rules hook into.

Layers (OPZO paper, section 3.1 and appendix C.3.2):

* hidden layer l = 1..N−1: synaptic current I_l[t] = W_l x_{l−1}[t] + b_l, LIF neuron of eq. 1,
  spikes s_l[t]; what it delivers to the next layer is x_l[t] = (s_l[t] + α z_l[t]) ⊙ m_l
  where α z_l is optional perturbation noise ("after the neuron", OPZO section 4.4) and m_l a
  dropout mask drawn once per sample and kept over all time steps (0 or 1/(1 − p));
  with noise "before the neuron" α z_l is added to I_l[t] instead.
* readout: a non-spiking layer o[t] = W_N x_{N−1}[t] + b_N; classification uses Σ_t o[t].

The network owns only the inference parameters. Learning rules read what one step produced
(:class:`StepRecord`) and write ``.grad``; their own state lives in the rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .neuron import LIFParams, lif_step
from .surrogate import SigmoidSurrogate, Surrogate

NOISE_POSITIONS = ("after", "before")


@dataclass
class NetState:
    """Per-hidden-layer membrane potentials and last spikes (the neurons' temporal state)."""

    u: list[Tensor]
    s: list[Tensor]


@dataclass
class StepRecord:
    """What one time step of the forward pass produced, per hidden layer.

    ``u``: membrane potentials u_l[t]; ``spikes``: s_l[t]; ``out``: x_l[t], what the layer
    delivered to the next one (spikes, plus noise and dropout); ``masks``: the dropout masks
    (or None).
    """

    u: list[Tensor]
    spikes: list[Tensor]
    out: list[Tensor]
    masks: list[Tensor] | None
    surrogate: Surrogate
    v_th: float
    gains: list[Tensor] | None = None  # m_l · surrogate.gain(), precomputed per batch

    def local_grad(self, l: int, g: Tensor) -> Tensor:
        """δ_l = g ⊙ m_l ⊙ ψ(u_l[t]): an error g at layer l's output x_l taken to its potential.

        This is the local factor of the three-factor update (OPZO paper eq. 7).
        """
        if self.gains is not None:
            g = g * self.gains[l]
        else:
            gain = self.surrogate.gain()
            if self.masks is not None:
                g = g * self.masks[l]
            if gain != 1.0:
                g = g * gain
        return self.surrogate.grad_scaled(g, self.u[l], self.v_th)

    def local_derivative(self, l: int) -> Tensor:
        """m_l ⊙ ψ(u_l[t]) itself (for diagnostics)."""
        return self.local_grad(l, torch.ones_like(self.u[l]))


class SpikingMLP(nn.Module):
    """Fully connected SNN ``sizes[0] → sizes[1] → … → sizes[-1]`` (last layer a readout).

    Example: ``SpikingMLP([784, 800, 800, 10], dropout=0.2)`` is the OPZO paper's MNIST net.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        lif: LIFParams | None = None,
        surrogate: Surrogate | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        sizes = [int(n) for n in sizes]
        if len(sizes) < 3 or any(n <= 0 for n in sizes):
            raise ValueError(
                "sizes must list the input, at least one hidden layer and the output, all "
                f"positive, e.g. [784, 800, 800, 10]; got {sizes}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout rate must lie in [0, 1), got {dropout}")
        self.sizes = sizes
        self.lif = lif or LIFParams()
        self.surrogate = surrogate or SigmoidSurrogate()
        self.dropout = float(dropout)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-2], sizes[1:-1]))
        self.readout = nn.Linear(sizes[-2], sizes[-1])

    @property
    def hidden_sizes(self) -> list[int]:
        return self.sizes[1:-1]

    @property
    def num_outputs(self) -> int:
        return self.sizes[-1]

    def initial_state(self, batch: int, like: Tensor) -> NetState:
        """Zero potentials and no spikes for every hidden layer."""
        zeros = [like.new_zeros(batch, n) for n in self.hidden_sizes]
        return NetState(u=zeros, s=[z.clone() for z in zeros])

    def dropout_masks(self, batch: int, like: Tensor) -> list[Tensor] | None:
        """One mask per hidden layer, drawn once per sample for all T steps (None if p = 0)."""
        if not self.training or self.dropout == 0.0:
            return None
        keep = 1.0 - self.dropout
        masks = []
        for n in self.hidden_sizes:
            r = like.new_empty(batch, n).uniform_()
            masks.append(torch.lt(r, keep, out=r).mul_(1.0 / keep))
        return masks

    def check_input(self, x: Tensor, T: int | None) -> int:
        """Validate an input of shape (B, F) (static over T steps) or (T, B, F); return T."""
        f = self.sizes[0]
        if x.dim() == 2:
            if x.shape[1] != f:
                raise ValueError(f"input has {x.shape[1]} features, the network expects {f}")
            if T is None or T < 1:
                raise ValueError("a static input of shape (B, F) needs the number of steps T >= 1")
            return int(T)
        if x.dim() == 3:
            if x.shape[2] != f:
                raise ValueError(f"input has {x.shape[2]} features, the network expects {f}")
            if T is not None and T != x.shape[0]:
                raise ValueError(f"T={T} disagrees with the input's {x.shape[0]} time steps")
            return int(x.shape[0])
        raise ValueError(
            f"input must be (B, {f}) static or (T, B, {f}) per step; got shape {tuple(x.shape)}"
        )

    def step(
        self,
        state: NetState,
        x_t: Tensor,
        *,
        first_current: Tensor | None = None,
        noise: list[Tensor] | None = None,
        noise_scale: float = 1.0,
        noise_position: str = "after",
        masks: list[Tensor] | None = None,
        gains: list[Tensor] | None = None,
    ) -> tuple[Tensor, StepRecord]:
        """Advance every layer by one time step; return the readout o[t] and the record.

        ``first_current`` may carry W_1 x + b_1 precomputed for a static input (it is the
        same at every step). ``noise`` holds z_l per hidden layer; α = ``noise_scale``.
        """
        inp = x_t
        us: list[Tensor] = []
        spikes: list[Tensor] = []
        outs: list[Tensor] = []
        after = noise_position == "after"
        for l, lin in enumerate(self.hidden):
            if l == 0 and first_current is not None:
                current, scratch = first_current, False
            else:
                current, scratch = F.linear(inp, lin.weight, lin.bias), True
            if noise is not None and not after:
                current = torch.add(current, noise[l], alpha=noise_scale)
                scratch = True
            u, s = lif_step(state.u[l], state.s[l], current, self.lif, current_is_scratch=scratch)
            state.u[l] = u
            state.s[l] = s
            out = s
            if noise is not None and after:
                out = torch.add(s, noise[l], alpha=noise_scale)
            if masks is not None:
                out = out * masks[l] if out is s else out.mul_(masks[l])
            us.append(u)
            spikes.append(s)
            outs.append(out)
            inp = out
        o = F.linear(inp, self.readout.weight, self.readout.bias)
        return o, StepRecord(us, spikes, outs, masks, self.surrogate, self.lif.v_th, gains)

    def forward(self, x: Tensor, T: int | None = None) -> Tensor:
        """Inference: Σ_t o[t] over T steps for ``x`` of shape (B, F) (static) or (T, B, F)."""
        T = self.check_input(x, T)
        static = x.dim() == 2
        batch = x.shape[0] if static else x.shape[1]
        state = self.initial_state(batch, x)
        masks = self.dropout_masks(batch, x)
        first = F.linear(x, self.hidden[0].weight, self.hidden[0].bias) if static else None
        total = None
        for t in range(T):
            o, _ = self.step(
                state, x if static else x[t], first_current=first, masks=masks
            )
            total = o if total is None else total + o
        assert total is not None
        return total
