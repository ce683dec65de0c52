"""DistributedDataParallel support: one process per device, started by ``torchrun``.

Without torchrun's environment (WORLD_SIZE unset or 1) every helper is a no-op, so the same
code runs on one process.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from cepd_deploy.errors import CEPDError


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: its rank and the number of processes (one process: 0 of 1)."""

    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init() -> Dist:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        try:
            dist.init_process_group(backend=backend)
        except Exception as exc:  # torchrun misconfiguration surfaces as many exception types
            raise CEPDError(f"cannot join the distributed group ({type(exc).__name__}: {exc})") from None
    return Dist(dist.get_rank(), dist.get_world_size())


def shutdown(d: Dist) -> None:
    """Leave the process group, where :func:`init` joined one."""
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, d: Dist) -> nn.Module:
    """The model DDP-wrapped when distributed (gradients averaged across ranks)."""
    if not d.enabled:
        return model
    return nn.parallel.DistributedDataParallel(model)


def broadcast(tensors: list[torch.Tensor], d: Dist) -> None:
    """Overwrite ``tensors`` in place with rank 0's."""
    if d.enabled:
        for t in tensors:
            if t.is_contiguous():
                dist.broadcast(t, src=0)
            else:  # collectives need contiguous memory
                tmp = t.contiguous()
                dist.broadcast(tmp, src=0)
                t.copy_(tmp)


def sync_buffers(model: nn.Module, d: Dist) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics drift apart between forwards)."""
    broadcast([b for b in model.buffers() if b.is_floating_point() or b.dtype == torch.long], d)


def all_sum(values: list[float], d: Dist) -> list[float]:
    """``values`` summed element-wise over the ranks (a copy of them on one process)."""
    if not d.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def barrier(d: Dist) -> None:
    """Wait until every rank gets here (nothing on one process)."""
    if d.enabled:
        dist.barrier()


def digest(model: nn.Module, extra=()) -> str:
    """A SHA-256 of every parameter and buffer (and ``extra`` tensors), bit for bit."""
    h = hashlib.sha256()
    named = sorted(model.state_dict().items()) + [(f"extra.{k}", t) for k, t in enumerate(extra)]
    for name, t in named:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def gather_digests(model: nn.Module, d: Dist, extra=()) -> list[str]:
    """Every rank's :func:`digest` (rank order); raises if the ranks disagree."""
    mine = digest(model, extra)
    if not d.enabled:
        return [mine]
    out: list[str | None] = [None] * d.world
    dist.all_gather_object(out, mine)
    if len(set(out)) != 1:
        raise CEPDError(f"distributed ranks diverged: weight digests differ ({len(set(out))} distinct)")
    return out  # type: ignore[return-value]
