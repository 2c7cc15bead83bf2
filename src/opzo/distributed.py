"""Data parallelism on ``torch.distributed``: shards of the global batch, summed gradients.

A run started by ``torchrun --nproc_per_node N -m opzo train ...`` (or ``opzo train --nproc
N``, which starts torchrun) trains with N processes ("ranks"). The batch size of the config
is the *global* batch B: every rank builds the same global batch of the epoch's shuffled order
(a function of the seed and the epoch) and trains on its own contiguous rows of it
(:class:`Shard`). The learners scale every gradient by 1/(B·T) with the global B, so the sum
over ranks of their gradients is the gradient of the global batch; it is summed
(:meth:`Communicator.all_reduce_`) before every optimizer step.

The rules' state stays identical on every rank: OPZO's momentum update
is linear in the batch,

    M ← λ_M M + (1 − λ_M) · (1/B) Σ_{b ∈ global batch} z_b õ_bᵀ        (OPZO paper eq. 6)

so each rank computes the sum over its rows, the sums are added across ranks, and every rank
applies the same update: M is what one process with the global batch computes (and bit for bit
the same on every rank, since a sum-all-reduce hands every rank the same result). DKP's
feedback gradient is summed like a weight gradient; DFA's fixed B comes from the shared seed;
local readouts are parameters. The random numbers of a batch (noise z, dropout masks) are
drawn for the whole global batch on every rank and each keeps its rows, so a rank's samples
get the noise and masks they would get in a one-process run, and the generators of all ranks
advance alike (see the README for what does depend on the world size).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Shard:
    """Rows ``lo:hi`` of a global batch of ``total`` samples: what one rank trains on."""

    lo: int
    hi: int
    total: int

    def __post_init__(self) -> None:
        if not 0 <= self.lo <= self.hi <= self.total:
            raise ValueError(f"a shard needs 0 <= lo <= hi <= total, got {self}")

    @property
    def size(self) -> int:
        return self.hi - self.lo

    @staticmethod
    def split(total: int, rank: int, world_size: int) -> Shard:
        """Rank ``rank``'s contiguous rows of ``total``: the first ``total % world_size``
        ranks take one row more (the split of ``torch.tensor_split``)."""
        base, extra = divmod(int(total), int(world_size))
        lo = rank * base + min(rank, extra)
        return Shard(lo, lo + base + (1 if rank < extra else 0), int(total))

    def rows(self, x: Tensor, dim: int = 0) -> Tensor:
        """This shard's rows of a global-batch tensor along ``dim`` (a view)."""
        if x.shape[dim] != self.total:
            raise ValueError(f"expected {self.total} rows along dim {dim}, got shape "
                             f"{tuple(x.shape)}")
        return x.narrow(dim, self.lo, self.size)


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by torchrun (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


class Communicator:
    """The collectives a distributed run needs, on the default process group.

    ``device``: where the collectives' buffers live (the CPU for ``gloo``, this rank's GPU for
    ``nccl``); tensors on another device are copied there and back.
    """

    def __init__(self, device: torch.device) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: use Communicator.init")
        self.dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = torch.device(device)

    @classmethod
    def init(cls, device: torch.device) -> Communicator:
        """Join the process group torchrun describes in the environment (``gloo`` on the CPU,
        ``nccl`` on CUDA); idempotent."""
        import torch.distributed as dist

        if not dist.is_available():
            raise RuntimeError("this torch build has no torch.distributed")
        device = torch.device(device)
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend=backend)
        return cls(device if device.type == "cuda" else torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, total: int) -> Shard:
        return Shard.split(total, self.rank, self.world_size)

    def all_reduce_(self, tensors: list[Tensor]) -> None:
        """Sum each tensor over all ranks, in place (one collective per dtype: the tensors
        are packed into one flat buffer)."""
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1).to(self.device) for t in group])
            self.dist.all_reduce(flat)
            offset = 0
            for t in group:
                n = t.numel()
                t.copy_(flat[offset:offset + n].view_as(t))
                offset += n

    def sum(self, values: list[float]) -> list[float]:
        """Sum a few numbers over all ranks (float64)."""
        buf = torch.tensor(values, dtype=torch.float64, device=self.device)
        self.dist.all_reduce(buf)
        return buf.tolist()

    def broadcast_(self, tensors: list[Tensor], src: int = 0) -> None:
        """Overwrite each tensor with rank ``src``'s."""
        for t in tensors:
            buf = t.detach().to(self.device).contiguous()
            self.dist.broadcast(buf, src)
            t.data.copy_(buf)

    def broadcast_object(self, obj: object, src: int = 0) -> object:
        box = [obj]
        self.dist.broadcast_object_list(box, src)
        return box[0]

    def gather_object(self, obj: object) -> list[object]:
        """Every rank's ``obj``, in rank order, on every rank."""
        out: list[object] = [None] * self.world_size
        self.dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        self.dist.barrier()

    def close(self, clean: bool = True) -> None:
        """Leave the process group. ``clean``: every process got here normally; they first
        wait for each other, so that none tears its connections down while another still
        uses them (gloo then aborts that process: "terminate called without an active
        exception"). After a failure (another process may be gone) nobody waits."""
        if self.dist.is_initialized():
            if clean:
                self.dist.barrier()
            self.dist.destroy_process_group()

