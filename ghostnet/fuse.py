"""Deploy mode: fold every BatchNorm into the conv that feeds it.

The conv -> BN pairs are found on a ``torch.fx`` trace (a BN whose only input is a conv's output, that conv
output goes nowhere else, and neither module is called anywhere else in the forward), so the same code serves GhostNet, the Ghost variants and torchvision-style
networks. The returned model is a deep copy that keeps the module names (a folded BN leaves its
``nn.Sequential`` or becomes ``nn.Identity``), so stage names, hooks and ``feature_info`` still work on it.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import TypeVar

import torch
import torch.fx
from torch import nn

M = TypeVar("M", bound=nn.Module)


def fold_bn(conv: nn.Conv2d | nn.Linear, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> nn.Conv2d | nn.Linear:
    """A new conv (or linear) layer computing the eval-mode ``bn(conv(x))``: w' = w * g / sqrt(v + eps),
    b' = (b - mean) * g / sqrt(v + eps) + beta, per output channel."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fuse: a BatchNorm without running statistics (track_running_stats=False) cannot be folded.")
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        w = conv.weight.double()
        scale = (bn.weight.double() if bn.affine else torch.ones_like(bn.running_var, dtype=torch.float64)) / torch.sqrt(
            bn.running_var.double() + bn.eps
        )
        shift = bn.bias.double() if bn.affine else torch.zeros_like(scale)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        shape = (-1,) + (1,) * (w.dim() - 1)
        fused.weight = nn.Parameter((w * scale.reshape(shape)).to(conv.weight.dtype))
        fused.bias = nn.Parameter(((bias - bn.running_mean.double()) * scale + shift).to(conv.weight.dtype))
    return fused


# BN type -> the exact layer type it folds into (exact types: subclasses may change forward).
_FOLDABLE: dict[type, type] = {nn.BatchNorm2d: nn.Conv2d, nn.BatchNorm1d: nn.Linear}


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, BN) module names whose single call is ``bn(conv(x))`` with nothing else reading ``conv(x)``."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as err:  # fx raises many types for untraceable control flow
        raise ValueError(
            f"fuse: could not trace {type(model).__name__} with torch.fx to find conv->BN pairs "
            f"({type(err).__name__}: {err}); fuse a traceable submodule instead."
        ) from err
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or type(modules.get(node.target)) not in _FOLDABLE:
            continue
        src = node.args[0] if node.args else None
        if (
            isinstance(src, torch.fx.Node)
            and src.op == "call_module"
            and type(modules.get(src.target)) is _FOLDABLE[type(modules[node.target])]
            and len(src.users) == 1
            and calls[src.target] == 1  # a module called again elsewhere must keep computing the same thing
            and calls[node.target] == 1
            and len(node.args) == 1
            and not node.kwargs
            and modules[src.target].weight.shape[0] == modules[node.target].num_features
        ):
            pairs.append((src.target, node.target))
    return pairs


def _replace(root: nn.Module, name: str, module: nn.Module | None) -> None:
    """Put ``module`` at ``name``; ``None`` deletes the slot, allowed only inside an nn.Sequential."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    if module is None:
        del parent._modules[child]  # other children keep their names, e.g. primary_conv.0 / .2
    else:
        setattr(parent, child, module)


def fuse(model: M, channels_last: bool = True, flat: bool = False) -> M:
    """Return a NEW eval-mode model with each BatchNorm2d (BatchNorm1d) folded into the Conv2d (Linear)
    before it, for inference.

    The input model is never changed. Outputs agree with ``model.eval()`` up to float rounding. A folded
    BN inside an ``nn.Sequential`` is removed from it (the other children keep their names, so
    ``primary_conv.0`` is still the conv and ``primary_conv.2`` the ReLU), and so are ``nn.Identity``
    placeholders there (so code indexing such a Sequential by position, ``seq[1]``, sees shifted positions;
    names are stable); a folded BN held as an attribute becomes ``nn.Identity``. A conv or BN module that
    the forward calls more than once (a shared module) is left unfolded, as is a conv whose output is
    also read elsewhere. Modules with a ``reparameterize()`` method (GhostNetV3's multi-branch convs,
    RepVGG-style timm blocks) are re-parameterised in the copy first. ``channels_last=True``
    stores the 4-D weights channels-last, which made GhostNet's depthwise convs markedly faster on CPU
    (see ``benchmarks/ghostnet_speed.py``); inputs may stay in the default layout. Models that torch.fx
    cannot trace raise ``ValueError``.

    ``flat=True`` returns a ``torch.fx.GraphModule`` instead: the same folded weights (same ``state_dict``
    keys) run by one flat forward of torch functions, without ``nn.Module`` calls (``ghostnet.flat``). It is
    the fastest form at batch 1 on CPU, but forward hooks on its inner modules never fire; keep
    ``flat=False`` to capture maps from the deploy model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse: expected an nn.Module, got {type(model).__name__}.")
    fused = copy.deepcopy(model).eval()
    for module in reversed(list(fused.modules())):  # descendants before their parents
        reparameterize = getattr(module, "reparameterize", None)
        if callable(reparameterize):  # e.g. GhostNetV3's multi-branch convs: fold the branches first
            reparameterize()
    for conv_name, bn_name in _conv_bn_pairs(fused):
        conv, bn = fused.get_submodule(conv_name), fused.get_submodule(bn_name)
        _replace(fused, conv_name, fold_bn(conv, bn))
        parent = fused.get_submodule(bn_name.rpartition(".")[0])
        _replace(fused, bn_name, None if type(parent) is nn.Sequential else nn.Identity())
    for module in list(fused.modules()):
        if type(module) is nn.Sequential:
            for key in [k for k, v in module._modules.items() if type(v) is nn.Identity]:
                del module._modules[key]
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    if flat:
        from .flat import flatten

        return flatten(fused)  # type: ignore[return-value]
    return fused
