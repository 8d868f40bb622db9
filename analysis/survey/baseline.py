"""The untrained baseline: the surveyed architecture re-initialised (seeded), with its BatchNorm statistics
re-estimated on the survey's images, so a score can be compared with what the architecture alone gives.

Why re-estimate BN: a re-initialised BN layer has running mean 0 and variance 1, which the conv outputs of a
random network do not have; without re-estimation the later layers would see maps whose scale drifts layer
after layer, and their similarity would measure that drift. Re-estimated on the survey's own images (train-mode
forwards without gradients, ``momentum=None``: the running statistics become the plain average over the
batches), the untrained network normalises like a trained one and differs from it only in what was learned.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["reestimate_batchnorm", "untrained_copy"]


def untrained_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every module that has ``reset_parameters()`` re-initialised (PyTorch's
    default initialisation, in module order) under a forked RNG seeded with ``seed``, so the caller's random
    state is untouched and the same seed gives the same network. BatchNorm running statistics are reset too
    (``reestimate_batchnorm`` fills them). ``model`` itself is not modified."""
    net = copy.deepcopy(model)
    param = next(net.parameters(), None)
    devices = [param.device] if param is not None and param.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        for module in net.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                module.reset_running_stats()
    return net


def _batchnorms(net: nn.Module) -> list[nn.modules.batchnorm._NormBase]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]


def reestimate_batchnorm(net: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running mean and variance on ``batches`` (already on the model's device
    and dtype), in place: running statistics reset, ``momentum=None`` (a cumulative average over the batches),
    only the BN layers in train mode (dropout and the rest stay in eval mode), no gradients. Every flag and
    momentum is restored afterwards. Returns the number of images seen."""
    norms = _batchnorms(net)
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
