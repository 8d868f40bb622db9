"""One flat forward of torch functions for a deploy model: ``fuse(model, flat=True)``.

At batch 1 on a CPU about a quarter of a fused GhostNet's time is outside its convolutions: Python module
calls, attribute look-ups, small element-wise ops (``benchmarks/ghostnet_speed.py``, ``docs/ghostnet.md``).
:func:`flatten` traces the model with ``torch.fx`` and rewrites each call of a standard layer into the torch
function it runs, so the forward is one generated function with no ``nn.Module`` calls:

* ``Conv2d`` -> ``torch.conv2d``; a 1x1, stride-1, unpadded, ungrouped conv -> one ``F.linear`` over the
  channels-last view (:func:`conv1x1`: no layout copies for channels-last activations; exact same sums);
* ``Linear``, ``ReLU``, ``Sigmoid``, ``Hardsigmoid``, ``AvgPool2d``, ``AdaptiveAvgPool2d(1)`` (a mean),
  ``Flatten`` -> their functions; ``Identity`` and ``Dropout`` (eval) are dropped;
* an add whose left operand is a fresh intermediate nobody else reads (a residual ``ghost2(y) + shortcut``)
  and a hard-sigmoid of such a value are done in place.

Nothing here is compiled (no TorchScript, no ``torch.compile``): the generated code runs the same eager
kernels; any other module type stays a module call. The result is a ``torch.fx.GraphModule`` whose
parameters keep their qualified names (its ``state_dict`` has the input model's keys), but it has no inner
modules to hook: forward hooks on e.g. ``blocks.2.0.ghost1`` need the model from ``fuse(model)``. Outputs agree
with the input model up to float rounding (the 1x1 convs sum in the same order; tests check <= 1e-5).
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

__all__ = ["conv1x1", "flatten"]


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1x1, stride-1, unpadded, ungrouped convolution (``weight`` as ``out x in``) as one matmul over the
    channels-last view of ``x``; the result is channels-last (a view of the matmul's output)."""
    return F.linear(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)


def add_inplace(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` written into ``a`` (a fresh intermediate) when no broadcasting enlarges it."""
    return a.add_(b) if a.shape == b.shape and a.dtype == b.dtype else a + b


# Functions whose output is a new tensor (or a view of one only it holds); not in-place ones such as relu_,
# whose output is their input.
_FRESH = {torch.conv2d, conv1x1, F.linear, torch.cat, operator.mul, operator.add, add_inplace, torch.relu,
          torch.sigmoid}


def _is_fresh_and_private(node: object) -> bool:
    return (isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in _FRESH
            and len(node.users) == 1)


def _is_plain_1x1(conv: nn.Conv2d) -> bool:
    return (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding in ((0, 0), "valid")
            and conv.groups == 1 and conv.dilation == (1, 1))


def _rewrite(gm: torch.fx.GraphModule, node: torch.fx.Node, module: nn.Module) -> bool:
    """Replace one call_module node by the function it runs; False when the module type is not handled."""
    graph, kind, x = gm.graph, type(module), node.args[0] if node.args else None
    if len(node.args) != 1 or node.kwargs:
        return False

    def attr(name: str) -> torch.fx.Node | None:
        return graph.get_attr(f"{node.target}.{name}") if getattr(module, name, None) is not None else None

    with graph.inserting_before(node):
        if kind is nn.Conv2d and module.padding_mode == "zeros" and not isinstance(module.padding, str):
            if _is_plain_1x1(module):
                key = "_flat_" + node.target.replace(".", "_")
                gm.register_buffer(key, module.weight.detach().flatten(1).contiguous(), persistent=False)
                new = graph.call_function(conv1x1, (x, graph.get_attr(key), attr("bias")))
            else:
                new = graph.call_function(torch.conv2d, (x, attr("weight"), attr("bias"), module.stride,
                                                         module.padding, module.dilation, module.groups))
        elif kind is nn.Linear:
            new = graph.call_function(F.linear, (x, attr("weight"), attr("bias")))
        elif kind is nn.ReLU:
            new = graph.call_function(torch.relu_ if module.inplace else torch.relu, (x,))
        elif kind is nn.Sigmoid:
            new = graph.call_function(torch.sigmoid, (x,))
        elif kind is nn.Hardsigmoid:
            new = graph.call_function(F.hardsigmoid, (x,), {"inplace": module.inplace})
        elif kind is nn.AvgPool2d:
            new = graph.call_function(F.avg_pool2d, (x, module.kernel_size, module.stride, module.padding,
                                                     module.ceil_mode, module.count_include_pad,
                                                     module.divisor_override))
        elif kind is nn.AdaptiveAvgPool2d and module.output_size in (1, (1, 1)):
            new = graph.call_method("mean", (x, (2, 3)), {"keepdim": True})
        elif kind is nn.Flatten:
            new = graph.call_function(torch.flatten, (x, module.start_dim, module.end_dim))
        elif kind in (nn.Identity, nn.Dropout):
            new = x
        else:
            return False
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    return True


def flatten(model: nn.Module) -> torch.fx.GraphModule:
    """A ``torch.fx.GraphModule`` computing ``model.eval()`` with one flat forward of torch functions (see the
    module docstring). ``model`` is not changed. For inference: the rewrite assumes eval mode (dropout off,
    BN already folded by ``fuse`` or run as a module). Models that torch.fx cannot trace raise ``ValueError``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"flatten: expected an nn.Module, got {type(model).__name__}.")
    try:
        gm = torch.fx.symbolic_trace(copy.deepcopy(model).eval())
    except Exception as err:  # fx raises many types for untraceable control flow
        raise ValueError(f"flatten: could not trace {type(model).__name__} with torch.fx ({type(err).__name__}: "
                         f"{err}); use fuse(model) without flat=True.") from err
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            _rewrite(gm, node, modules[node.target])
    for node in gm.graph.nodes:
        if node.op != "call_function" or not node.args:
            continue
        if node.target is operator.add and len(node.args) == 2 and not node.kwargs \
                and _is_fresh_and_private(node.args[0]):
            node.target = add_inplace
        elif node.target is F.hardsigmoid and not node.kwargs.get("inplace") and len(node.args) == 1 \
                and _is_fresh_and_private(node.args[0]):
            node.kwargs = {"inplace": True}
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval()
