"""One training epoch and evaluation, shared by every phase (dense, ADMM, fine-tuning)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from cepd_deploy.compress import dist as D
from cepd_deploy.compress.admm import ADMM
from cepd_deploy.compress.config import Schedule
from cepd_deploy.compress.data import Data, augment, batches, epoch_order
from cepd_deploy.model.layers import CEPDConv2d


@contextmanager
def dense_rebuild(model: nn.Module) -> Iterator[None]:
    """Train CEPD layers through one conv of their rebuilt weight L(cores) + S.

    The same function of the same parameters as the Plan's op chain, with the same gradients,
    but one big conv is faster to train on CPUs than four small ops; evaluation and the saved
    model use the real forward.
    """
    layers = [m for m in model.modules() if isinstance(m, CEPDConv2d)]
    for m in layers:
        m.forward = m.dense_forward
    try:
        yield
    finally:
        for m in layers:
            del m.forward


def steps_per_epoch(data: Data, batch_size: int, d: D.Dist) -> int:
    """SGD steps in one epoch on this rank: its share of the training set over ``batch_size``,
    rounded up."""
    per_rank = len(epoch_order(len(data.train), 0, 0, d.rank, d.world))
    return -(-per_rank // batch_size)


def optimizer(model: nn.Module, sched: Schedule, total_steps: int):
    """(SGD with the schedule's momentum and weight decay, its cosine decay over ``total_steps``)."""
    opt = torch.optim.SGD(model.parameters(), lr=sched.lr, momentum=sched.momentum,
                          weight_decay=sched.weight_decay)  # fmt: skip
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    return opt, cosine


def train_epoch(
    net: nn.Module,
    data: Data,
    opt: torch.optim.Optimizer,
    lr_sched,
    *,
    epoch: int,
    seed: int,
    batch_size: int,
    d: D.Dist,
    admm: ADMM | None = None,
    lam: float = 0.0,
    project_every: int = 0,
    bar=None,
    status: str = "",
) -> dict:
    """One pass over this rank's share of the training set; returns rank-averaged figures.

    With ``admm`` each SGD step is followed by the penalty's proximal step and an ADMM round
    runs every ``project_every`` steps (0: once, at the end of the epoch). ``status`` (the last
    epoch's figures) follows the step loss on the progress bar.
    """
    net.train()
    order = epoch_order(len(data.train), seed, epoch, d.rank, d.world)
    g = torch.Generator().manual_seed(seed * 7_919 + epoch * 104_729 + d.rank)
    loss_sum = correct = count = 0.0
    steps = 0
    broadcast = (lambda ts: D.broadcast(ts, d)) if d.enabled else None
    for step, (x, y) in enumerate(batches(data.train, order, batch_size)):
        x = augment(x, g, data.shift, data.flip)
        opt.zero_grad(set_to_none=True)
        out = net(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
        if admm is not None:
            admm.prox(opt.param_groups[0]["lr"] * lam)
        lr_sched.step()
        if admm is not None and project_every > 0 and (step + 1) % project_every == 0:
            admm.project(broadcast)
        loss_sum += float(loss.detach()) * len(y)
        correct += float((out.argmax(1) == y).sum())
        count += len(y)
        steps += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"loss {float(loss.detach()):.3f} {status}", refresh=False)
    if admm is not None and project_every == 0:
        admm.project(broadcast)
    loss_sum, correct, count = D.all_sum([loss_sum, correct, count], d)
    return {"loss": loss_sum / max(count, 1), "train_acc": 100.0 * correct / max(count, 1), "steps": steps}


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, batch_size: int, d: D.Dist | None = None) -> float:
    """Top-1 test accuracy in percent (each rank scores its share; the counts are summed)."""
    d = d or D.Dist()
    model.eval()
    n = len(data.test)
    index = torch.arange(n)[d.rank :: d.world]
    correct = 0.0
    for x, y in batches(data.test, index, max(batch_size, 256)):
        correct += float((model(x).argmax(1) == y).sum())
    correct, total = D.all_sum([correct, float(len(index))], d)
    return 100.0 * correct / max(total, 1.0)
