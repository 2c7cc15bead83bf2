"""Single-point zeroth-order spatial credit, ZO_sp (OPZO paper eq. 3 with node perturbation).

    g_l[t] = (L(õ[t]) / α) z_l[t],   δ_l[t] = g_l[t] ⊙ m_l ⊙ ψ(u_l[t])

per sample: a scalar (the sample's loss at step t) times the sample's own noise. The 1/α
factor is kept by default (``alpha_factor``). The paper trains it with lr 2e-5.
"""

from __future__ import annotations

from torch import Tensor

from ..registry import Options
from .base import SpatialRule, StepContext
from .noise import NOISE_OPTIONS, NoiseSampler
from .profile import CostProfile


class ZO(SpatialRule):
    """Single-point zeroth-order estimator (see the module docstring)."""

    name = "zo"
    options = NOISE_OPTIONS
    cost_profile = CostProfile("scalar", stores_noise=True)

    def __init__(self, noise: NoiseSampler | None = None, alpha_factor: bool = True) -> None:
        self.noise = noise or NoiseSampler()
        self.alpha_factor = bool(alpha_factor)

    @classmethod
    def from_config(cls, cfg: Options) -> ZO:
        """The config's noise; the 1/α factor unless the config turns it off."""
        factor = True if cfg.alpha_factor is None else cfg.alpha_factor
        return cls(NoiseSampler.from_config(cfg), alpha_factor=factor)

    def deltas(self, ctx: StepContext) -> list[Tensor]:
        noise = self.noise
        assert noise is not None and noise.z is not None
        coef = ctx.loss / noise.alpha if self.alpha_factor else ctx.loss
        g = (noise.z * coef[:, None]).split(self.sizes, dim=1)
        return self.apply_local_derivative(ctx, list(g))
