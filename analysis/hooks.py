"""Capture intermediate feature maps with forward hooks, safely.

Three traps that other tools fall into are handled here:

* **in-place ops**: the hook stores a detached *copy*, so a later in-place ReLU (torchvision ResNet's
  ``bn1`` → ``relu``) cannot change what was captured;
* **reused modules**: a module called several times in one forward (ResNet's ``relu``, three times per
  block) gives one entry per call: ``name``, ``name#1``, ``name#2`` (like FX's ``relu``, ``relu_1``, ...);
* **leftover hooks**: hooks are removed in ``finally``, also when the forward raises.

Layers are chosen by exact module name, by glob (``layer1.*``), by module type (``"Conv2d"`` or
``nn.Conv2d``), or by a single call of a reused module (``layer1.0.relu#2``; ``conv#0`` is its first call
only). Names that match nothing fail before anything runs, listing close matches.

``capture`` is the one hook machinery of ``analysis``: ``list_layers``, ``capture_maps``, the survey and the
conversion (``capture(..., inputs=True)`` also records each call's input, e.g. to fit or check a replacement
layer in isolation) all go through it.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from analysis._core.errors import GhostmapsError, UnknownLayerError, did_you_mean
from analysis._core.modes import eval_mode, model_device, model_dtype
from analysis._core.results import Record

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["CapturedMaps", "LayerInfo", "capture", "capture_maps", "eval_mode", "list_layers", "resolve_layers",
           "single_entry"]

LayerSpec = str | type | Sequence[str | type]


@dataclass(frozen=True)
class LayerInfo(Record):
    """One capturable output: the name to capture it by, the module type, and its output shape (``"1×8×32×32"``
    in ``rows()``)."""

    name: str
    type: str
    shape: tuple[int, ...]

    @property
    def channels(self) -> int | None:
        """Channels of a 4-D (N×C×H×W) output, else None."""
        return self.shape[1] if len(self.shape) == 4 else None

    _COLUMNS = ("name", "type", "shape")

    def rows(self) -> list[dict[str, Any]]:
        return [{"name": self.name, "type": self.type, "shape": "×".join(map(str, self.shape))}]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(data["name"], data["type"], tuple(int(v) for v in data["shape"]))


def _entry_names(base: str, output: Any) -> list[tuple[str, torch.Tensor]]:
    """Split a module output into named tensors: a tensor keeps the name, tuple/list elements get ``[i]``,
    dict values get ``[key]``; anything else is ignored."""
    if isinstance(output, torch.Tensor):
        return [(base, output)]
    if isinstance(output, (tuple, list)):
        found = []
        for i, item in enumerate(output):
            found += _entry_names(f"{base}[{i}]", item)
        return found
    if isinstance(output, dict):
        found = []
        for key, item in output.items():
            found += _entry_names(f"{base}[{key}]", item)
        return found
    return []


class CapturedMaps(dict):
    """What ``capture`` yields: ``{entry name: detached copy of the output}``, and in ``inputs`` (filled with
    ``capture(..., inputs=True)``) ``{call name: detached copy of that call's first positional input}``."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: dict[str, torch.Tensor] = {}


def _call_name(name: str, call: int) -> str:
    return name if call == 0 else f"{name}#{call}"


def resolve_layers(model: nn.Module, layers: LayerSpec) -> dict[str, set[int] | None]:
    """Map layer specs to module names: ``{module_name: None}`` for every call, or a set of call indices.

    Raises ``UnknownLayerError`` (listing close matches) for a spec that matches no module.
    """
    specs: list[str | type] = [layers] if isinstance(layers, (str, type)) else list(layers)
    if not specs:
        raise GhostmapsError("no layers given; pass a name, a glob such as 'layer1.*', or a type such as 'Conv2d'.")
    modules = {name: module for name, module in model.named_modules() if name}
    type_names = {type(m).__name__ for m in modules.values()}
    chosen: dict[str, set[int] | None] = {}

    def add(name: str, call: int | None) -> None:
        if call is None:
            chosen[name] = None
        elif name not in chosen or chosen[name] is not None:
            chosen.setdefault(name, set()).add(call)  # type: ignore[union-attr]

    for spec in specs:
        if isinstance(spec, type):
            hits = [n for n, m in modules.items() if isinstance(m, spec)]
            if not hits:
                raise UnknownLayerError(f"the model has no module of type {spec.__name__}."
                                        f"{did_you_mean(spec.__name__, type_names)}")
            for n in hits:
                add(n, None)
            continue
        if not isinstance(spec, str):
            raise GhostmapsError(f"layer spec must be a string or a module type, got {type(spec).__name__}.")
        base, sep, call_text = spec.partition("#")
        if sep:
            if base not in modules or not call_text.isdigit():
                raise UnknownLayerError(
                    f"unknown layer {spec!r}: 'name#k' needs an exact module name and a call number."
                    f"{did_you_mean(base, modules)}"
                )
            add(base, int(call_text))
        elif spec in modules:
            add(spec, None)
        elif any(ch in spec for ch in "*?["):
            hits = fnmatch.filter(modules, spec)
            if not hits:
                raise UnknownLayerError(f"layer pattern {spec!r} matches no module.{did_you_mean(spec, modules)}")
            for n in hits:
                add(n, None)
        elif spec in type_names:
            for n, m in modules.items():
                if type(m).__name__ == spec:
                    add(n, None)
        else:
            raise UnknownLayerError(
                f"unknown layer {spec!r}.{did_you_mean(spec, list(modules) + sorted(type_names))} "
                "List the layers with `ghostmaps layers MODEL` or analysis.list_layers(model)."
            )
    return chosen


@contextmanager
def capture(
    model: nn.Module,
    layers: LayerSpec,
    *,
    store: bool = True,
    callback: Callable[[str, torch.Tensor], None] | None = None,
    to: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    inputs: bool = False,
    copy: bool = True,
) -> Iterator[CapturedMaps]:
    """Capture the outputs (and, when asked, the inputs) of chosen layers during forward passes run inside
    the ``with`` block.

    Args:
        model: the network; it is not modified (hooks are added and always removed).
        layers: a name, glob, type name, ``nn.Module`` type, ``name#k``, or a list of them.
        store: keep the latest forward's outputs in the yielded dict (turn off when only ``callback`` is used,
            so nothing is held in memory).
        callback: called as ``callback(name, tensor)`` with each captured copy as soon as it is made, e.g. to
            fold it into running statistics.
        to: move the copies to this device (e.g. ``"cpu"``); default: where they were computed.
        dtype: cast the copies to this dtype (e.g. ``torch.float32``); default: as computed.
        inputs: also keep each captured call's first positional input (when it is a tensor) in the yielded
            dict's ``inputs``, under the call's name (``name``, ``name#1``, …), copied like the outputs.
        copy: ``False`` hands ``callback`` the layer's own output tensor (detached) instead of a copy, saving a
            pass over every map; only with ``store=False`` and no ``to``/``dtype``/``inputs``, and only for a
            callback that reads the tensor at once and neither changes nor keeps it (the network goes on to use
            it; an in-place op after the hook would change a kept reference).

    Yields:
        A ``CapturedMaps`` dict ``{entry name: detached copy}`` filled by each forward (reset, with its
        ``inputs``, at the start of each forward of ``model``). A module called k times gives ``name``,
        ``name#1``, …; tuple or dict outputs give ``name[i]`` / ``name[key]`` entries.

    Example:
        >>> with capture(model, ["layer1.0.bn1", "layer1.0.relu"]) as maps:
        ...     model(images)
        >>> maps["layer1.0.bn1"].min() < 0  # the in-place ReLU did not touch the copy
    """
    if not copy and (store or to is not None or dtype is not None or inputs or callback is None):
        raise GhostmapsError("capture(copy=False) hands the callback the layer's own output: it needs a callback, "
                         "store=False, and no to=, dtype= or inputs=.")
    chosen = resolve_layers(model, layers)
    modules = dict(model.named_modules())
    captured = CapturedMaps()
    calls: dict[str, int] = {}
    handles: list[torch.utils.hooks.RemovableHandle] = []

    forwards = [0]

    def reset(_module: nn.Module, _args: Any) -> None:
        captured.clear()
        captured.inputs.clear()
        calls.clear()
        forwards[0] += 1

    def copy_of(tensor: torch.Tensor) -> torch.Tensor:
        if dtype is None:
            copy = tensor.detach().clone()
            return copy if to is None else copy.to(to)
        return tensor.detach().to(device=to, dtype=dtype, copy=True)

    def make_hook(name: str, wanted: set[int] | None) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            call = calls.get(name, 0)
            calls[name] = call + 1
            if wanted is not None and call not in wanted:
                return
            call_name = _call_name(name, call)
            if inputs and args and isinstance(args[0], torch.Tensor):
                captured.inputs[call_name] = copy_of(args[0])
            for entry, tensor in _entry_names(call_name, output):
                if not copy:
                    callback(entry, tensor.detach())
                    continue
                kept = copy_of(tensor)
                if store:
                    captured[entry] = kept
                if callback is not None:
                    callback(entry, kept)

        return hook

    try:
        handles.append(model.register_forward_pre_hook(reset))
        for name, wanted in chosen.items():
            handles.append(modules[name].register_forward_hook(make_hook(name, wanted)))
        yield captured
        missing = [f"{name}#{k} (it ran {calls.get(name, 0)} time(s))" for name, wanted in chosen.items()
                   if wanted is not None for k in sorted(wanted) if k >= calls.get(name, 0)]
        if missing and forwards[0]:
            warnings.warn(f"capture: no output for {', '.join(missing)}; calls count from #0 (the plain name).",
                          stacklevel=3)
    finally:
        for handle in handles:
            handle.remove()


def list_layers(
    model: nn.Module,
    input_size: int | Sequence[int] = 224,
    device: str | torch.device | None = None,
) -> list[LayerInfo]:
    """Every module output that can be captured, in execution order, with type and output shape.

    Runs one dry forward on zeros of shape ``1×3×S×S`` (``input_size=S``) or the given full shape, in eval mode
    and without gradients; the model's train/eval flag is restored afterwards. Reused modules appear once per
    call (``name#k``).
    """
    if isinstance(input_size, int):
        shape: tuple[int, ...] = (1, 3, input_size, input_size)
    else:
        shape = tuple(input_size)
        if len(shape) == 3:
            shape = (1, *shape)
    if min(shape) < 1:
        raise GhostmapsError(f"input_size must be positive, got {input_size}; e.g. 224 or (1, 3, 224, 224).")
    device = model_device(model) if device is None else device
    types = {name: type(m).__name__ for name, m in model.named_modules() if name}
    found: list[LayerInfo] = []

    def record(entry: str, tensor: torch.Tensor) -> None:
        base = entry.split("#")[0].split("[")[0]
        found.append(LayerInfo(entry, types[base], tuple(tensor.shape)))

    with eval_mode(model), torch.no_grad(), capture(model, list(types), store=False, callback=record):
        model(torch.zeros(shape, device=device, dtype=model_dtype(model)))
    return found


def capture_maps(
    model: nn.Module,
    layers: LayerSpec,
    inputs: torch.Tensor,
    device: str | torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """One forward of ``inputs`` (in eval mode, no grad) and the captured maps of ``layers``, on the CPU: plain
    tensors (``torch.no_grad``, not inference mode), so a caller may edit them in place or use them in autograd."""
    device = model_device(model) if device is None else device
    with eval_mode(model), torch.no_grad(), capture(model, layers, to="cpu") as maps:
        model(inputs.to(device=device, dtype=model_dtype(model)))
    return dict(maps)


def single_entry(maps: dict[str, torch.Tensor], layer: str, ndim: int | None = None) -> tuple[str, torch.Tensor]:
    """The one captured entry of ``layer`` in ``maps`` (``layer``, ``layer#k`` or ``layer[i]``) as
    ``(entry name, tensor)``. Raises ``GhostmapsError`` when the layer gave no tensor or several (a reused
    module, a tuple output), or, with ``ndim``, a tensor of another rank (``ndim=4``: N x C x H x W maps)."""
    entries = [name for name in maps if name == layer or name.startswith((f"{layer}#", f"{layer}["))]
    if not entries and maps:  # a glob or a type name captured several layers, none called ``layer`` itself
        found = list(maps)
        raise GhostmapsError(f"layer {layer!r} produced no tensor output of its own; the maps hold {len(found)} "
                             f"other layer(s) ({', '.join(found[:4])}{', …' if len(found) > 4 else ''}): for a glob "
                             f"or a type name, name exactly one layer, e.g. {found[0]!r}.")
    if not entries:
        raise GhostmapsError(f"layer {layer!r} produced no tensor output for the given image(s).")
    if len(entries) > 1:
        raise GhostmapsError(
            f"layer {layer!r} gives {len(entries)} outputs ({', '.join(entries[:4])}…); pick one, e.g. {entries[0]!r}."
        )
    name, tensor = entries[0], maps[entries[0]]
    if ndim is not None and tensor.dim() != ndim:
        raise GhostmapsError(f"layer {layer!r} outputs shape {tuple(tensor.shape)}, not feature maps "
                             "(N×C×H×W); pick a convolutional layer.")
    return name, tensor
