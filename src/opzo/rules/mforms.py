"""OPZO's momentum feedback M at large scale: memory-light forms, and the memory of every
rule's state (measured before training, refused when it cannot fit).

OPZO's M (OPZO paper eq. 6) is dense: one (n_l, m) block per hidden layer, n_l = C·H·W of a
conv layer. For the NF-ResNet-34 of the paper's Table 4 at 224×224 that is about 2.8 M
hidden neurons × 1000 classes, 11 GB in float32. The paper's appendix E.2 ("Discussion")
names ways to cut it (low rank; re-deriving M from stored outputs and re-drawn noise); two
forms are offered here, chosen with ``--m-form``:

* ``shared-space`` — one M row per *channel*, shared by every spatial position of the layer:
  M̄_l of shape (C_l, m). Its update is eq. 6 with the noise averaged over the positions,

      M̄_l ← λ_M M̄_l + (1 − λ_M) (1/B) Σ_b z̄_b õ_bᵀ,   z̄_b[c] = (1/P_l) Σ_p z_b[c, p],

  which is exactly the dense update averaged over positions: started from zero, M̄_l[c] is
  at every step the mean over p of the dense M_l[(c, p)] driven by the same noise. The
  feedback g_l[(c, p)] = M̄_l[c] e is the same for every position p of channel c (a DFA-like
  broadcast whose per-channel feedback is learned as OPZO's). Memory Σ_l C_l·m: the dense
  form's divided by H·W. For fully connected layers (P = 1) it is the dense form.
* ``lowrank`` — M restricted to a fixed random R-dimensional subspace of the m outputs:
  M_l ≈ K_l Qᵀ with Q (m, R) orthonormal columns drawn once (from the seed), K_l (n_l, R)
  learned by eq. 6 projected on Q:

      K_l ← λ_M K_l + (1 − λ_M) (1/B) Σ_b z_b (Qᵀ õ_b)ᵀ,     g_l = K_l (Qᵀ e),

  so K_l = M_l Q for the dense M_l of the same noise, and the feedback is that of
  M_l Q Qᵀ (rank ≤ R). Memory Σ_l n_l·R + m·R: the dense form's times R/m. It pays off when
  the classes are many (ImageNet's 1000).

:func:`state_sizes` gives what every rule keeps (feedback matrices, DKP's Adam moments, the
noise of one step, local readouts) from the network's shape alone, before anything is
allocated; :func:`check_fits` refuses, in one line, what exceeds the device's free memory.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..network import SpikingNet
from ..registry import Options
from .base import SpatialRule, StepContext
from .direct import DFA, DKP, M_LIGHT_FORMS, OPZO, DirectFeedbackRule
from .local import LocalLearning
from .noise import NoiseSampler, chip_noise_is_perturbation

#: the forms of OPZO's M (``--m-form``)

GIB = 1024**3


def layer_shapes(net: SpikingNet) -> list[tuple[int, ...]]:
    """Each hidden layer's output shape: (C, H, W) for a conv layer, (n,) otherwise."""
    shapes = []
    for layer, n in zip(net.hidden, net.hidden_sizes):
        shape = tuple(int(s) for s in getattr(layer, "out_shape", (n,)))
        shapes.append(shape if math.prod(shape) == n else (n,))
    return shapes


class SharedSpaceOPZO(OPZO):
    """OPZO with M shared over the spatial positions of each layer (module docstring).

    ``feedback_t`` holds M̄ᵀ, shape (m, Σ_l C_l); :attr:`M` is M̄ (Σ_l C_l, m)."""

    m_form = "shared-space"

    def bind(self, net: SpikingNet) -> None:
        SpatialRule.bind(self, net)
        shapes = layer_shapes(net)
        self.channels = [s[0] for s in shapes]
        self.positions = [math.prod(s[1:]) for s in shapes]
        w = net.readout.weight
        self.feedback_t = torch.zeros(self.num_outputs, sum(self.channels), dtype=w.dtype,
                                      device=w.device)

    def feedback_blocks(self) -> list[Tensor]:
        """M̄_l per hidden layer, each (C_l, m) (views)."""
        return [b.t() for b in self.feedback_t.split(self.channels, dim=1)]

    def pooled_noise(self, z: Tensor) -> Tensor:
        """z̄: the noise of every layer averaged over its positions, (B, Σ_l C_l)."""
        parts = []
        for zl, c, p in zip(z.split(self.sizes, dim=1), self.channels, self.positions):
            parts.append(zl if p == 1 else zl.reshape(zl.shape[0], c, p).mean(dim=2))
        return torch.cat(parts, dim=1)

    def noise_increment(self, output: Tensor, z: Tensor) -> Tensor:
        """Σ_b õ_b z̄_bᵀ: the noise averaged over each channel's positions."""
        return output.t() @ self.pooled_noise(z)

    def deltas(self, ctx: StepContext) -> list[Tensor]:
        self.update_feedback(ctx)
        shared = (ctx.error @ self.feedback_t).split(self.channels, dim=1)
        g = [gl if p == 1 else gl[:, :, None].expand(-1, c, p).reshape(gl.shape[0], c * p)
             for gl, c, p in zip(shared, self.channels, self.positions)]
        return self.apply_local_derivative(ctx, g)


class LowRankOPZO(OPZO):
    """OPZO with M = K Qᵀ of rank ≤ R: Q (m, R) fixed orthonormal, K learned (module
    docstring). ``feedback_t`` holds Kᵀ, shape (R, Σ_l n_l); :attr:`M` is K Qᵀ (built on
    demand: a dense (Σ n_l, m) tensor, for tests and diagnostics only)."""

    m_form = "lowrank"

    def __init__(self, noise: NoiseSampler | None = None, lambda_m: float = 0.99999,
                 alpha_factor: bool = False, rank: int = 8, seed: int = 0) -> None:
        super().__init__(noise, lambda_m=lambda_m, alpha_factor=alpha_factor)
        if rank < 1:
            raise ValueError(f"the rank of M must be >= 1, got {rank}")
        self.rank = int(rank)
        self.seed = int(seed)

    def bind(self, net: SpikingNet) -> None:
        SpatialRule.bind(self, net)
        w = net.readout.weight
        rank = min(self.rank, self.num_outputs)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        gauss = torch.randn(self.num_outputs, rank, generator=gen, dtype=torch.float64,
                            device="cpu")
        #: Q, (m, R) with orthonormal columns
        self.basis = torch.linalg.qr(gauss).Q.to(dtype=w.dtype, device=w.device)
        self.feedback_t = torch.zeros(rank, sum(self.sizes), dtype=w.dtype, device=w.device)

    @property
    def feedback(self) -> Tensor:
        """K Qᵀ of all layers stacked, (Σ n_l, m): a new dense tensor (tests, diagnostics)."""
        return self.feedback_t.t() @ self.basis.t()

    def feedback_blocks(self) -> list[Tensor]:
        """K_l per hidden layer, each (n_l, R) (views; M_l = K_l Qᵀ)."""
        return [b.t() for b in self.feedback_t.split(self.sizes, dim=1)]

    def noise_increment(self, output: Tensor, z: Tensor) -> Tensor:
        """Σ_b (Qᵀ õ_b) z_bᵀ: the increment of K, M's increment projected on Q."""
        return (output @ self.basis).t() @ z

    def deltas(self, ctx: StepContext) -> list[Tensor]:
        self.update_feedback(ctx)
        g = ((ctx.error @ self.basis) @ self.feedback_t).split(self.sizes, dim=1)
        return self.apply_local_derivative(ctx, list(g))

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["basis"] = self.basis.clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.basis.copy_(state["basis"])


def opzo_from_config(cfg: Options) -> OPZO:
    """OPZO with the config's form of M (``m_form``, ``m_rank``)."""
    factor = bool(cfg.alpha_factor) and not chip_noise_is_perturbation(cfg)
    noise = NoiseSampler.from_config(cfg)
    form = getattr(cfg, "m_form", "dense")
    if form == "shared-space":
        return SharedSpaceOPZO(noise, lambda_m=cfg.lambda_m, alpha_factor=factor)
    if form == "lowrank":
        return LowRankOPZO(noise, lambda_m=cfg.lambda_m, alpha_factor=factor,
                           rank=cfg.m_rank, seed=cfg.seed)
    return OPZO(noise, lambda_m=cfg.lambda_m, alpha_factor=factor)


M_LIGHT_FORMS.update({"shared-space": opzo_from_config, "lowrank": opzo_from_config})


# ---- memory of the rules' state ----------------------------------------------------------

def _feedback_rows(rule: OPZO, shapes: list[tuple[int, ...]], m: int) -> tuple[int, str]:
    """(number of entries, what they are) of a direct-feedback rule's matrix."""
    n = sum(math.prod(s) for s in shapes)
    if isinstance(rule, SharedSpaceOPZO):
        c = sum(s[0] for s in shapes)
        return c * m, f"shared-space, {c} channels x {m} outputs"
    if isinstance(rule, LowRankOPZO):
        r = min(rule.rank, m)
        return n * r + m * r, f"rank {r}, {_count(n)} neurons x {r} + {m} x {r}"
    return n * m, f"dense, {_count(n)} neurons x {m} outputs"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1_000_000 else str(n)


def state_sizes(rule: SpatialRule | None, net: SpikingNet, batch: int
                ) -> list[tuple[str, int, str]]:
    """What ``rule`` will keep for ``net`` at batch size ``batch``, in bytes, from the
    network's shape alone (nothing allocated): [(name, bytes, what)] for the feedback
    matrices (OPZO's M, DFA's B, DKP's F with its gradient and two Adam moments), the
    noise of one step (B × Σ n_l) and local readouts."""
    if rule is None:
        return []
    item = net.readout.weight.element_size()
    shapes = layer_shapes(net)
    m = net.num_outputs
    n = sum(math.prod(s) for s in shapes)
    out: list[tuple[str, int, str]] = []
    inner = rule.inner if isinstance(rule, LocalLearning) else rule
    if isinstance(inner, DirectFeedbackRule):
        count, what = _feedback_rows(inner, shapes, m) if isinstance(inner, OPZO) else (
            n * m, f"{_count(n)} neurons x {m} outputs")
        if isinstance(inner, OPZO):
            out.append(("M", count * item, what))
        elif isinstance(inner, DKP):
            out.append(("F + grad + Adam", 4 * count * item, what))
        elif isinstance(inner, DFA):
            out.append(("B", count * item, what))
        else:
            out.append(("feedback", count * item, what))
    if inner.noise is not None:
        out.append(("noise z", batch * n * item, f"batch {batch} x {_count(n)}"))
    if isinstance(rule, LocalLearning):
        sizes = [math.prod(s) for s in shapes]
        layers = range(len(sizes)) if rule.local else [rule.igl_layer]
        count = sum((sizes[l] + 1) * m for l in layers if l is not None)
        out.append(("local readouts", count * item, f"{len(list(layers))} readouts"))
        if rule.igl_rule is not None and rule.igl_layer is not None:
            cut = sum(sizes[: rule.igl_layer + 1])
            if isinstance(rule.igl_rule, DirectFeedbackRule):
                out.append(("IGL feedback", cut * m * item * (4 if isinstance(
                    rule.igl_rule, DKP) else 1), f"{_count(cut)} neurons x {m}"))
    return out


def available_bytes(device: torch.device) -> tuple[int | None, str]:
    """(free bytes, where) of ``device``: CUDA's free memory, the CPU's available RAM
    (MemAvailable of /proc/meminfo), None where unknown (mps, no /proc)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"{device} has {free / GIB:.1f} GiB free"
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        free = int(line.split()[1]) * 1024
                        return free, f"the machine has {free / GIB:.1f} GiB of RAM available"
        except OSError:
            pass
    return None, f"{device}: free memory unknown"


def describe(sizes: list[tuple[str, int, str]]) -> str:
    """One log line: 'rule state: M 10.9 GiB (dense, ...), noise z 0.7 GiB (...); total ...'."""
    if not sizes:
        return "rule state: none"
    parts = [f"{name} {_human(b)} ({what})" for name, b, what in sizes]
    total = sum(b for _, b, _ in sizes)
    return "rule state: " + ", ".join(parts) + f"; total {_human(total)}"


def _human(b: int) -> str:
    if b >= GIB / 10:
        return f"{b / GIB:.2f} GiB"
    if b >= 1024**2:
        return f"{b / 1024**2:.1f} MiB"
    return f"{b / 1024:.1f} KiB"


class StateTooLarge(ValueError):
    """The rule's state does not fit the device (the message says what to do)."""


def check_fits(sizes: list[tuple[str, int, str]], free: int | None, where: str,
               net_bytes: int = 0) -> None:
    """Raise :class:`StateTooLarge`, one line, when the rule's state (plus the network's
    weights) exceeds the free memory; it names the largest piece and the light forms of M."""
    total = sum(b for _, b, _ in sizes) + net_bytes
    if free is None or total <= free:
        return
    name, big, what = max(sizes, key=lambda s: s[1])
    hint = (" Use --m-form shared-space (M shared over the spatial positions) or --m-form "
            "lowrank --m-rank R, a smaller --batch-size, or a device with more memory"
            if any(piece == "M" for piece, _, _ in sizes)
            else " Use a smaller network, --batch-size, or a device with more memory")
    raise StateTooLarge(f"the rule's state needs {_human(total - net_bytes)} ({name} "
                      f"{_human(big)}: {what}) beside {_human(net_bytes)} of weights, but "
                      f"{where}.{hint}")
