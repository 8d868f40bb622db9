"""The untrained baseline: the surveyed architecture re-initialised (seeded), with its BatchNorm statistics
re-estimated on the survey's images, so a score can be compared with what the architecture alone gives.

Why re-estimate BN: a re-initialised BN layer has running mean 0 and variance 1, which the conv outputs of a
random network do not have; without re-estimation the later layers would see maps whose scale drifts layer
after layer, and their similarity would measure that drift. Re-estimated on the survey's own images (train-mode
forwards without gradients, ``momentum=None``: the running statistics become the plain average over the
batches), the untrained network normalises like a trained one and differs from it only in what was learned.
``reestimate_batchnorm`` lives in :mod:`analysis._core.batchnorm` (ghostify uses it too) and is re-exported here.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from analysis._core.batchnorm import reestimate_batchnorm

__all__ = ["PartlyTrainedWarning", "reestimate_batchnorm", "untrained_copy"]


class PartlyTrainedWarning(UserWarning):
    """Some parameters of the untrained copy keep their trained values: they belong to modules without
    ``reset_parameters()`` (e.g. a class token or a layer scale registered directly on a block)."""


def untrained_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every module that has ``reset_parameters()`` re-initialised (PyTorch's
    default initialisation, in module order) under a forked RNG seeded with ``seed``, so the caller's random
    state is untouched and the same seed gives the same network. BatchNorm running statistics are reset too
    (``reestimate_batchnorm`` fills them). ``model`` itself is not modified. Parameters that no such module
    owns keep their trained values, and a ``PartlyTrainedWarning`` names them: the baseline is then not fully
    untrained."""
    net = copy.deepcopy(model)
    param = next(net.parameters(), None)
    devices = [param.device] if param is not None and param.device.type == "cuda" else []
    kept: list[str] = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        for prefix, module in net.named_modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            else:
                kept += [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)]
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                module.reset_running_stats()
    if kept:
        warnings.warn(f"the untrained baseline keeps the trained values of {len(kept)} parameter(s) that no module "
                      f"with reset_parameters() owns: {', '.join(kept[:5])}{' ...' if len(kept) > 5 else ''}; "
                      "re-initialise them in the model (or give their module reset_parameters()) for a fully "
                      "untrained baseline.", PartlyTrainedWarning, stacklevel=2)
    return net
