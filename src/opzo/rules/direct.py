"""Direct feedback rules: the error e[t] reaches every hidden layer through one matrix.

    g_l[t] = F_l e[t],   δ_l[t] = g_l[t] ⊙ m_l ⊙ ψ(u_l[t])

with F_l of shape (n_l, m). The F_l of all layers are stacked into one (Σ n_l, m) matrix, so
the feedback to all layers is one product per step (stored transposed, (m, Σ n_l), so that
product reads contiguous memory). For a conv layer n_l = C·H·W: F_l is dense over every
neuron of every feature map (each neuron is perturbed and fed back on its own, as in the FC
case), and g_l comes out flattened like the layer's spikes. What differs is F:

* :class:`DFA` — fixed random F (Nøkland 2016), Kaiming-uniform initialised.
* :class:`DKP` — F learned from zero (Webster et al. 2020, Kolen-Pollack style): its gradient
  is Σ_t â_l[t] e[t]ᵀ, the product of layer l's activity trace â_l[t] = λ â_l[t−1] + x_l[t]
  and the error (OPZO paper, appendix C.3.2), applied with Adam(W); λ is the neuron model's
  membrane leak.
* :class:`OPZO` — F = M, momentum feedback learned from the noise (OPZO paper eq. 6):
  M ← λ_M M + (1 − λ_M) mean_batch(z õᵀ) / α, M initialised to zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..network import SpikingNet
from ..registry import Option, Options
from .base import SpatialRule, StepContext
from .noise import NOISE_OPTIONS, NoiseSampler, chip_noise_is_perturbation
from .profile import CostProfile

#: the forms of OPZO's M (:mod:`opzo.rules.mforms` has the memory-light ones)
M_FORMS = ("dense", "shared-space", "lowrank")
#: m_form -> the factory (cfg) -> OPZO of a memory-light form; filled by
#: :mod:`opzo.rules.mforms`, which builds on this module (so this one does not import it)
M_LIGHT_FORMS: dict[str, Callable[[Options], OPZO]] = {}


class DirectFeedbackRule(SpatialRule):
    """g_l = F_l e for all layers at once; subclasses define how F is made and updated."""

    cost_profile = CostProfile("direct")

    def bind(self, net: SpikingNet) -> None:
        super().bind(net)
        w = net.readout.weight
        #: Fᵀ, shape (m, Σ n_l)
        self.feedback_t = torch.zeros(self.num_outputs, sum(self.sizes), dtype=w.dtype,
                                      device=w.device)

    @property
    def feedback(self) -> Tensor:
        """F of all layers stacked, (Σ n_l, m) (a view)."""
        return self.feedback_t.t()

    def update_feedback(self, ctx: StepContext) -> None:
        """Hook run before the feedback is applied at each step."""

    def deltas(self, ctx: StepContext) -> list[Tensor]:
        self.update_feedback(ctx)
        g = torch.mm(ctx.error, self.feedback_t, out=self._scratch_g(ctx))
        return self.apply_local_derivative(ctx, list(g.split(self.sizes, dim=1)))

    def _scratch_g(self, ctx: StepContext) -> Tensor | None:
        """Where e Fᵀ may be written: the same (B, Σ n_l) buffer at every step when every
        layer's δ is the product g ⊙ (m ⊙ ψ) of the fused step (a new tensor, so nothing
        keeps the buffer past the step); None (a new tensor) otherwise. One large allocation
        less per step: the same numbers, without the page faults of fresh memory."""
        rec = ctx.record
        if rec.derivatives is not None or rec.dpsi is None or any(d is None for d in rec.dpsi):
            return None
        e, f = ctx.error, self.feedback_t
        shape = (e.shape[0], f.shape[1])
        buf = getattr(self, "_g_buffer", None)
        if (buf is None or buf.shape != shape or buf.dtype != torch.result_type(e, f)
                or buf.device != e.device):
            buf = self._g_buffer = e.new_empty(shape, dtype=torch.result_type(e, f))
        return buf

    def feedback_blocks(self) -> list[Tensor]:
        """F_l per hidden layer, each (n_l, m) (views)."""
        return [b.t() for b in self.feedback_t.split(self.sizes, dim=1)]

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["feedback_t"] = self.feedback_t.clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.feedback_t.copy_(state["feedback_t"])


class DFA(DirectFeedbackRule):
    """Direct feedback alignment: fixed random F, Kaiming-uniform (bound √(6/((1+5)·m)))."""

    name = "dfa"

    def bind(self, net: SpikingNet) -> None:
        super().bind(net)
        for block in self.feedback_blocks():
            # same law as torch.nn.Linear's default init, fan-in = m outputs
            torch.nn.init.kaiming_uniform_(block, a=math.sqrt(5))


class DKP(DirectFeedbackRule):
    """Direct Kolen-Pollack: F from zero, gradient Σ_t â_l[t] e[t]ᵀ, AdamW(lr, wd)."""

    name = "dkp"
    options = (Option("feedback_lr", 2e-4, "learning rate of DKP's feedback matrices",
                      min=0.0),)
    #: AdamW on F: its gradient and two moments per feedback weight
    cost_profile = CostProfile("direct", learns_feedback=True, optimizer_copies=3,
                               activity_trace=True)

    def __init__(self, lr: float = 2e-4, weight_decay: float = 2e-4, lam: float | None = None):
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.lam = lam

    @classmethod
    def from_config(cls, cfg: Options) -> DKP:
        return cls(lr=cfg.feedback_lr, weight_decay=cfg.weight_decay, lam=cfg.lif_lambda)

    def bind(self, net: SpikingNet) -> None:
        super().bind(net)
        self.trace_lam = net.neuron.lam if self.lam is None else float(self.lam)
        self.feedback_t.grad = torch.zeros_like(self.feedback_t)
        self.optimizer = torch.optim.AdamW([self.feedback_t], lr=self.lr,
                                           weight_decay=self.weight_decay)
        self._trace: Tensor | None = None

    def start_batch(self) -> None:
        super().start_batch()
        self._trace = None

    def update_feedback(self, ctx: StepContext) -> None:
        act = torch.cat(ctx.record.out, dim=1)
        if self._trace is None:
            self._trace = act
        else:
            self._trace.mul_(self.trace_lam).add_(act)
        assert self.feedback_t.grad is not None
        self.feedback_t.grad.addmm_(ctx.error.t(), self._trace)

    def optimizer_step(self) -> None:
        self.optimizer.step()
        assert self.feedback_t.grad is not None
        self.feedback_t.grad.zero_()

    def feedback_grads(self) -> list[Tensor]:
        assert self.feedback_t.grad is not None
        return [self.feedback_t.grad]

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])


class OPZO(DirectFeedbackRule):
    """Online pseudo-zeroth-order training (OPZO paper sections 4.2-4.4, eq. 5-7).

    Each step: draw z (see :class:`NoiseSampler`), run the one noisy forward pass, then

        M ← λ_M M + (1 − λ_M) · (1/B) Σ_b z_b õ_bᵀ / α      (eq. 6; /α only if alpha_factor)
        g_l = M_l e,   δ_l = g_l ⊙ m_l ⊙ ψ(u_l)             (eq. 5 and 7)

    ``lambda_m`` = 0.99999 in the paper (0.999999 for batch 16). The paper drops the 1/α
    factor in practice (appendix C.3.2), so ``alpha_factor`` defaults to False.
    """

    name = "opzo"
    options = (
        *NOISE_OPTIONS,
        Option("lambda_m", 0.99999, "momentum λ_M of OPZO's feedback matrices", min=0.0,
               max=0.999999999),
        Option("freeze_m_after", None, "opzo: stop updating the momentum feedback M after "
               "this many epochs (OPZO paper Table 9's ablation); unset = never", type=int,
               min=0),
        Option("m_form", "dense", "opzo: the form of the momentum feedback M. dense: one row "
               "per neuron (C·H·W·m numbers per conv layer, OPZO paper eq. 6); shared-space: "
               "one row per channel, shared by the layer's positions (memory / H·W); lowrank: "
               "M = K Qᵀ with a fixed random orthonormal Q of m_rank columns (memory × "
               "m_rank/m). 'rule state:' in the log gives the memory of each",
               choices=M_FORMS),
        Option("m_rank", 8, "m_form lowrank: the rank R of M", type=int, min=1),
    )
    cost_profile = CostProfile("direct", learns_feedback=True, stores_noise=True)

    def __init__(self, noise: NoiseSampler | None = None, lambda_m: float = 0.99999,
                 alpha_factor: bool = False) -> None:
        if not 0.0 <= lambda_m < 1.0:
            raise ValueError(f"momentum lambda_m must lie in [0, 1), got {lambda_m}")
        self.noise = noise or NoiseSampler()
        self.lambda_m = float(lambda_m)
        self.alpha_factor = bool(alpha_factor)
        #: M is no longer updated (OPZO paper Table 9: "fix M" after part of training)
        self.frozen = False

    @classmethod
    def from_config(cls, cfg: Options) -> OPZO:
        """λ_M and the 1/α factor of the config (off unless asked: appendix C.3.2); on a
        chip whose noise is the perturbation never 1/α; ``m_form`` other than dense: the
        memory-light M of :mod:`opzo.rules.mforms`."""
        form = getattr(cfg, "m_form", "dense")
        if form != "dense":  # the memory-light forms (opzo.rules.mforms fills the table)
            return M_LIGHT_FORMS[form](cfg)
        factor = bool(cfg.alpha_factor) and not chip_noise_is_perturbation(cfg)
        return cls(NoiseSampler.from_config(cfg), lambda_m=cfg.lambda_m, alpha_factor=factor)

    def freeze_feedback(self, frozen: bool) -> None:
        self.frozen = bool(frozen)

    @property
    def M(self) -> Tensor:
        """The momentum feedback matrices of all layers stacked, (Σ n_l, m)."""
        return self.feedback

    def update_feedback(self, ctx: StepContext) -> None:
        """Eq. 6. Data parallel (``ctx.reduce``): Σ_b õ_b z_bᵀ over this process's rows is
        summed over all processes first, so every process applies the global batch's
        increment and M stays the same everywhere."""
        if self.frozen:
            return
        noise = self.noise
        assert noise is not None and noise.z is not None
        scale = (1.0 - self.lambda_m) / ctx.global_batch
        if self.alpha_factor:
            scale /= noise.alpha
        dense = type(self).noise_increment is OPZO.noise_increment
        if ctx.reduce is None and dense:  # one fused kernel: λ_M M + scale · õᵀ z
            self.feedback_t.mul_(self.lambda_m).addmm_(ctx.output.t(), noise.z, alpha=scale)
            return
        increment = self.noise_increment(ctx.output, noise.z)
        if ctx.reduce is not None:
            ctx.reduce(increment)
        self.feedback_t.mul_(self.lambda_m).add_(increment, alpha=scale)

    def noise_increment(self, output: Tensor, z: Tensor) -> Tensor:
        """Σ_b õ_b z_bᵀ of eq. 6 in the layout of ``feedback_t`` (before its scale); the
        memory-light forms of M (:mod:`opzo.rules.mforms`) project it."""
        return output.t() @ z
