"""BatchNorm re-estimation after a replacement: :func:`reestimate_bn` (AdaBN).

A least-squares fit shrinks variance (``Var(y_hat) = R^2 Var(y)``), so a fitted layer feeds the following BN
maps whose statistics no longer match the stored ones. Re-estimating the running statistics on unlabelled
calibration images (train-mode BN forwards without gradients, ``momentum=None``: a cumulative average over
the batches) corrects that without labels. Only the BNs that run *after* the first replaced layer need it;
the ones before see exactly what they saw in training and keep their pretrained statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from analysis._core.batchnorm import batchnorms, reestimate_batchnorm
from analysis._core.errors import GhostmapsError
from analysis._core.modes import eval_mode, model_device, model_dtype
from analysis.data.batches import as_images
from analysis.data.models import default_preprocess

__all__ = ["execution_order", "reestimate_bn"]


def execution_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of ``model``'s submodules in the order a forward of ``example`` first calls them."""
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(lambda _m, _i, name=name: order.append(name)))
    try:
        with eval_mode(model), torch.no_grad():
            model(example.to(device=model_device(model), dtype=model_dtype(model)))
    finally:
        for h in handles:
            h.remove()
    out: list[str] = []
    seen: set[str] = set()
    for n in order:
        if n not in seen:
            seen.add(n)
            out.append(n)
    return out


def reestimate_bn(model: nn.Module, images: Any, *, after: Sequence[str] | None = None, batch_size: int = 32,
                  preprocess: Callable[[Any], torch.Tensor] | None = None, limit: int | None = None) -> int:
    """Re-estimate ``model``'s BatchNorm running statistics on ``images``, in place; returns the number of
    images seen.

    Args:
        model: the network (e.g. a ghostified copy); its train/eval flags and BN momenta are restored.
        images: any image source of :func:`analysis.data.batches.as_images` (the calibration images: never the
            ones you evaluate on).
        after: module names (e.g. the replaced convs): only BNs the forward runs after the first of them are
            re-estimated; default None re-estimates every BN.
        batch_size: images per train-mode forward (each batch's statistics enter the cumulative average with
            equal weight, as ``momentum=None`` does); ``limit``: use at most this many images.
        preprocess: how image files become tensors (default ImageNet evaluation preprocessing).
    """
    if not isinstance(model, nn.Module):
        raise GhostmapsError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise GhostmapsError(f"batch_size must be an integer >= 2 (a BN batch variance needs two images), got "
                             f"{batch_size!r}")
    source = as_images(images, preprocess or default_preprocess(), limit=limit, name="images")
    device, dtype = model_device(model), model_dtype(model)
    batches = [b.to(device=device, dtype=dtype) for b in source.tensor().split(batch_size)]
    if batches and batches[-1].shape[0] < 2 and len(batches) > 1:  # a single image has no batch variance
        batches[-2] = torch.cat(batches[-2:])
        batches.pop()
    if not batches or batches[0].shape[0] < 2:
        raise GhostmapsError("BN re-estimation needs at least 2 images; pass more calibration images")
    norms = batchnorms(model)
    if after is not None:
        names = {id(m): n for n, m in model.named_modules()}
        order = execution_order(model, batches[0][:1])
        missing = [a for a in after if a not in order]
        if missing:
            raise GhostmapsError(f"after names {missing} are not modules that run in the forward; pass the "
                                 "replaced layers' names")
        start = min(order.index(a) for a in after) if after else len(order)
        later = set(order[start:])
        norms = [m for m in norms if names.get(id(m)) in later]
    return reestimate_batchnorm(model, batches, norms=norms)
