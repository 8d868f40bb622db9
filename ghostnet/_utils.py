"""Small helpers shared by ``ghostnet`` and ``analysis`` (``analysis`` may import ``ghostnet``, never the reverse)."""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 when it has none), i.e. what its
    inputs should be."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore every submodule's train/eval flag afterwards,
    so BatchNorm statistics are never updated by an analysis forward."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def close_matches(word: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Up to ``n`` candidates that look like ``word`` (difflib ratio, then substring hits)."""
    candidates = list(dict.fromkeys(candidates))
    found = difflib.get_close_matches(word, candidates, n=n, cutoff=0.6)
    if len(found) < n:
        low = word.lower()
        found += [c for c in candidates if low and low in c.lower() and c not in found][: n - len(found)]
    return found


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A ' Did you mean: a, b?' suffix for an error message, or '' when nothing is close."""
    found = close_matches(word, candidates)
    return f" Did you mean: {', '.join(found)}?" if found else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_ratio(value: Any, name: str = "ratio", error: type[Exception] = ValueError) -> int:
    """``value`` as an int >= 2 (the Ghost ratio s), else ``error`` naming ``name``."""
    if not _is_int(value) or value < 2:
        raise error(f"{name} must be an int >= 2 (s in the paper: a Ghost module makes 1/s of the maps with its "
                    f"primary conv and s-1 ghosts of each; ratio 1 is the plain conv); got {value!r}, use e.g. 2")
    return int(value)


def check_odd_size(value: Any, name: str = "d", error: type[Exception] = ValueError) -> int:
    """``value`` as a positive odd int (the cheap depthwise kernel size d), else ``error`` naming ``name``."""
    if not _is_int(value) or value < 1 or value % 2 == 0:
        raise error(f"{name} must be a positive odd int (the cheap op is a d x d depthwise conv with padding d//2, "
                    f"which keeps the map size only for odd d); got {value!r}, use e.g. 3 (the paper's d), 1, 5 "
                    f"or 7")
    return int(value)


def rel_error(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Relative error of ``pred`` against ``target``: sum of squared errors / centred sum of squares of the
    target (means per channel, dim 1, over the other dims; per column for 2-D), in float64. 0 is exact, 1 is
    as good as predicting each channel's mean; a constant target gives 0 (exact) or inf."""
    t = target.double()
    sse = float(((pred.double() - t) ** 2).sum())
    dims = (0, *range(2, t.dim())) if t.dim() > 2 else (0,)
    ss = float(((t - t.mean(dim=dims, keepdim=True)) ** 2).sum())
    if ss > 0:
        return sse / ss
    return 0.0 if sse == 0 else math.inf


def images_tensor(images: Any, name: str = "images", error: type[Exception] = ValueError) -> torch.Tensor:
    """``images`` as one non-empty N x C x H x W tensor: a tensor (one C x H x W image gets a batch dim), a
    list of image tensors (3-D or 4-D), or an image source with ``.batches(n)`` (``analysis.load_images``).
    Anything else raises ``error`` naming ``name``. The input is never changed."""
    if isinstance(images, torch.Tensor):
        x = images.unsqueeze(0) if images.dim() == 3 else images
    else:
        try:
            if hasattr(images, "batches"):
                parts = [b for _, b in images.batches(16)]
            else:
                parts = [b if b.dim() == 4 else b.unsqueeze(0) for b in images]
            x = torch.cat(parts)
        except (TypeError, AttributeError, RuntimeError) as exc:
            raise error(f"{name} must be an N x C x H x W tensor, a list of image tensors or "
                        f"analysis.load_images(...); got {type(images).__name__} ({exc})") from None
    if x.dim() != 4 or x.shape[0] == 0:
        raise error(f"{name} must be a non-empty N x C x H x W tensor, got shape {tuple(x.shape)}")
    return x


def first_call_io(model: nn.Module, names: Sequence[str], x: torch.Tensor, *, keep_inputs: bool = True,
                  dtype: torch.dtype | None = None) -> tuple[Any, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One eval-mode, gradient-free ``model(x)``: its output, and the first positional input (when
    ``keep_inputs``) and the output of the *first* call of each module in ``names``, as detached copies on
    the CPU (cast to ``dtype`` when given). Non-tensor outputs are not recorded; hooks are always removed
    and train/eval flags restored."""
    modules = dict(model.named_modules())
    ins: dict[str, torch.Tensor] = {}
    outs: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            if name in outs or not isinstance(out, torch.Tensor):
                return
            outs[name] = out.detach().to("cpu", dtype, copy=True)
            if keep_inputs and args and isinstance(args[0], torch.Tensor):
                ins[name] = args[0].detach().to("cpu", dtype, copy=True)
        return hook

    handles = [modules[n].register_forward_hook(hook_for(n)) for n in names]
    try:
        with eval_mode(model), torch.no_grad():
            result = model(x)
    finally:
        for h in handles:
            h.remove()
    return result, ins, outs
