"""What a spatial rule declares about the cost of its error-backward procedure.

A rule class sets ``cost_profile`` (:class:`CostProfile`) once; :func:`opzo.cost.learning_cost`
counts the memory and multiply-adds of any registered rule from it (OPZO paper, section 5.5
and Table 5), so a new rule with a profile is counted by ``opzo cost`` with no edit there, and
a rule without one (``cost_profile = None``) is reported as having no cost model.
"""

from __future__ import annotations

from dataclasses import dataclass

#: how the output error reaches the hidden layers (see :class:`CostProfile`)
FEEDBACK_PATHS = ("transposed", "direct", "scalar")


@dataclass(frozen=True)
class CostProfile:
    """How a rule's feedback reaches a hidden layer, and what it stores and learns.

    ``feedback``:

    * ``"transposed"``: the transposed forward weights, layer by layer from the readout down
      (spatial BP: g_{l−1} = W_lᵀ δ_l; one stage per transposed op, each waiting for the one
      above; the forward weights are the feedback weights);
    * ``"direct"``: one stored matrix per layer, g_l = F_l e (DFA, DKP, OPZO's M: n_l·m MACs
      and weights per layer, every layer at once);
    * ``"scalar"``: a scalar broadcast onto a per-neuron vector, g_l = (L/α) z_l (ZO: n_l
      multiplies, no feedback weights).

    ``learns_feedback``: the feedback matrices are learned from the step's values (OPZO's
    M_l ← λ_M M_l + (1 − λ_M) z_l õᵀ, DKP's ∇F_l += â_l eᵀ: n_l·m MACs per layer and sample).
    ``optimizer_copies``: per feedback weight, the values an optimizer of the feedback keeps
    (DKP with AdamW: its gradient and two moments, 3). ``stores_noise``: the perturbation z_l
    is kept per sample after the forward pass (OPZO, ZO: Σ n_l values). ``activity_trace``: a
    per-neuron trace of the activity is kept per sample and updated elementwise (DKP's â_l).
    """

    feedback: str
    learns_feedback: bool = False
    optimizer_copies: int = 0
    stores_noise: bool = False
    activity_trace: bool = False

    def __post_init__(self) -> None:
        if self.feedback not in FEEDBACK_PATHS:
            raise ValueError(f"cost profile: feedback must be one of {FEEDBACK_PATHS}, got "
                             f"{self.feedback!r}")
        if self.optimizer_copies < 0:
            raise ValueError(f"cost profile: optimizer_copies must be >= 0, got "
                             f"{self.optimizer_copies}")
        if self.optimizer_copies and not self.learns_feedback:
            raise ValueError("cost profile: an optimizer of the feedback needs "
                             "learns_feedback=True")
        if self.learns_feedback and self.feedback != "direct":
            raise ValueError("cost profile: learned feedback is counted for direct feedback "
                             "matrices only")
