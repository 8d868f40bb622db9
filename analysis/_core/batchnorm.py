"""BatchNorm re-estimation: running statistics recomputed on given batches (train-mode BN forwards without
gradients, ``momentum=None``: the running statistics become the plain cumulative average over the batches).

Used by the survey's untrained baseline and by ghostify after a replacement (AdaBN; Li et al. 2016): a fitted
replacement shrinks the variance of what reaches the next BN, whose stored statistics no longer match.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

__all__ = ["batchnorms", "reestimate_batchnorm"]


def batchnorms(net: nn.Module) -> list[nn.modules.batchnorm._NormBase]:
    """The BatchNorm layers of ``net`` that keep running statistics, in module order."""
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]


def reestimate_batchnorm(net: nn.Module, batches: Iterable[torch.Tensor],
                         norms: Sequence[nn.modules.batchnorm._NormBase] | None = None) -> int:
    """Re-estimate every BatchNorm's running mean and variance on ``batches`` (already on the model's device
    and dtype), in place: running statistics reset, ``momentum=None`` (a cumulative average over the batches),
    only the BN layers in train mode (dropout and the rest stay in eval mode), no gradients. Every flag and
    momentum is restored afterwards. ``norms``: only these BN layers (default: all with running statistics).
    Returns the number of images seen."""
    norms = batchnorms(net) if norms is None else list(norms)
    modes = {m: m.training for m in net.modules()}
    momenta = [m.momentum for m in norms]
    seen = 0
    try:
        net.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for batch in batches:
                net(batch)
                seen += int(batch.shape[0])
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        for m, training in modes.items():
            m.train(training)
    return seen
