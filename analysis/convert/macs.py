"""Count multiply-accumulates (MACs) and the parameters a forward pass actually uses.

Convention: MACs = ``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2, i.e. only matmul-like ops
(convolutions, linear layers, matmuls) count, one multiply-add each; BatchNorm, activations, pooling,
element-wise adds and conv/linear biases count zero. This is the convention of the GhostNet paper, whose
"FLOPs" are multiply-adds with BN folded (GhostNet 1.0x = 141M at 224x224).

Parameters are counted only when forward touches them (seen as an argument of a torch function), so a
registered tensor that forward never uses (e.g. the official Ghost-ResNet file's ``weight1``) does not
count; shared parameters count once. ``registered_params`` gives the naive ``sum(p.numel())`` beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from analysis._core.errors import GhostmapsError
from analysis._core.modes import eval_mode, model_device, model_dtype
from analysis._core.results import Record, Result

if TYPE_CHECKING:
    from typing_extensions import Self

CONVENTION = (
    "MACs = FlopCounterMode FLOPs / 2 (one multiply-add per MAC); counts conv, linear and matmul ops only; "
    "BN, activations, pooling, adds and biases count zero; params = parameters used by the forward pass"
)


@dataclass
class ModuleCost(Record):
    """Cost of one module, its submodules included: MACs and used parameters."""

    name: str
    type: str
    macs: int
    params: int

    _COLUMNS = ("name", "type", "macs", "params")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(data["name"], data["type"], int(data["macs"]), int(data["params"]))


@dataclass
class MacsReport(Result):
    """Result of ``count_macs``: totals, a per-module breakdown (execution order) and the convention.
    ``rows()``: one per module (``ModuleCost``)."""

    total_macs: int
    params: int
    registered_params: int
    input_size: tuple[int, ...]
    modules: list[ModuleCost] = field(default_factory=list)
    convention: str = CONVENTION

    @property
    def total_flops(self) -> int:
        """FLOPs in the 2-per-MAC convention (what FlopCounterMode reports)."""
        return 2 * self.total_macs

    def module(self, name: str) -> ModuleCost:
        """The entry for module ``name`` (as in ``named_modules()``; ``""`` is the whole model)."""
        for entry in self.modules:
            if entry.name == name:
                return entry
        raise KeyError(f"MacsReport: no module named {name!r} ran in the forward pass.")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "total_macs": self.total_macs,
            "total_flops": self.total_flops,
            "params": self.params,
            "registered_params": self.registered_params,
            "input_size": list(self.input_size),
            "convention": self.convention,
            "modules": [m.to_dict() for m in self.modules],
        }

    _COLUMNS = ModuleCost._COLUMNS

    def rows(self) -> list[dict[str, Any]]:
        return [m.to_dict() for m in self.modules]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The report back (``total_flops`` is derived, not read)."""
        return cls(int(data["total_macs"]), int(data["params"]), int(data["registered_params"]),
                   tuple(int(v) for v in data["input_size"]), [ModuleCost.from_dict(m) for m in data["modules"]],
                   data.get("convention", CONVENTION))

    def __str__(self) -> str:
        return (
            f"{self.total_macs / 1e6:.2f}M MACs, {self.params / 1e6:.3f}M params used "
            f"({self.registered_params / 1e6:.3f}M registered) at input {tuple(self.input_size)}"
        )


class _TensorUseMode(TorchFunctionMode):
    """Records the ids of every tensor passed to a torch function (parameters included)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch protocol
        kwargs = kwargs or {}
        for leaf in tree_leaves((args, kwargs)):
            if isinstance(leaf, torch.Tensor):
                self.seen.add(id(leaf))
        return func(*args, **kwargs)


def _make_input(model: nn.Module, input_size: tuple[int, ...] | torch.Tensor) -> torch.Tensor:
    """The given tensor, or zeros of ``input_size`` on the model's device and dtype (MACs and parameter use do
    not depend on the values, and zeros leave the global RNG alone)."""
    if isinstance(input_size, torch.Tensor):
        return input_size
    try:
        size = tuple(int(s) for s in input_size)
    except (TypeError, ValueError):
        size = ()
    if len(size) == 3:
        size = (1, *size)
    if len(size) != 4 or min(size) < 1:
        raise GhostmapsError(
            f"count_macs: input_size must be (C, H, W) or (N, C, H, W) with positive sizes, got {input_size}; "
            "e.g. (1, 3, 224, 224), or pass an input tensor."
        )
    return torch.zeros(size, device=model_device(model), dtype=model_dtype(model))


def count_macs(model: nn.Module, input_size: tuple[int, ...] | torch.Tensor = (1, 3, 224, 224)) -> MacsReport:
    """MACs and used parameters of one eval-mode forward pass at ``input_size`` (or on a given tensor).

    The model's train/eval flags are restored afterwards; no hooks are left behind.
    """
    x = _make_input(model, input_size)
    names = {id(m): name for name, m in model.named_modules()}
    ran: dict[int, nn.Module] = {}  # modules in the order they were entered (dicts keep order)

    def on_enter(module: nn.Module, args: Any) -> None:
        ran.setdefault(id(module), module)

    handles = [m.register_forward_pre_hook(on_enter) for m in model.modules()]
    uses = _TensorUseMode()
    try:
        with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter, uses:
            model(x)
    finally:
        for h in handles:
            h.remove()

    # Used parameters and their owning module names (each tensor counted once).
    param_owner: dict[int, str] = {}
    param_size: dict[int, int] = {}
    for name, p in model.named_parameters():
        param_owner[id(p)] = name.rpartition(".")[0]
        param_size[id(p)] = p.numel()
    used = [pid for pid in param_owner if pid in uses.seen]

    flops = counter.get_flop_counts()
    root = type(model).__name__

    def module_macs(name: str) -> int:
        key = root if name == "" else f"{root}.{name}"
        return int(sum(flops.get(key, {}).values())) // 2

    def module_params(name: str) -> int:
        prefix = name + "."
        return sum(
            param_size[pid]
            for pid in used
            if name == "" or param_owner[pid] == name or param_owner[pid].startswith(prefix)
        )

    modules = [
        ModuleCost(names[id(m)], type(m).__name__, module_macs(names[id(m)]), module_params(names[id(m)]))
        for m in ran.values()
        if id(m) in names
    ]
    return MacsReport(
        total_macs=int(counter.get_total_flops()) // 2,
        params=sum(param_size[pid] for pid in used),
        registered_params=sum(param_size.values()),
        input_size=tuple(x.shape),
        modules=modules,
    )


def stage_table(
    model: nn.Module,
    input_size: tuple[int, ...] | torch.Tensor = (1, 3, 224, 224),
    expand: list[str] | None = None,
    *,
    report: MacsReport | None = None,
) -> list[dict[str, Any]]:
    """Rows ``{name, type, params, macs, macs_share}``, one per top-level child that costs something.

    Children named in ``expand`` are listed one level deeper instead; by default a top-level
    ``nn.Sequential`` holding more than half of the MACs is expanded (GhostNet's ``blocks`` -> its 10
    stages, a VGG's ``features`` -> its layers). A last ``(rest)`` row holds what no listed child owns
    (ops or parameters of the root itself), so the rows always sum to the totals. Pass ``report``, a
    ``count_macs(model, ...)`` result already at hand, to reuse it instead of counting again (``input_size``
    is then ignored).
    """
    if report is None:
        report = count_macs(model, input_size)
    costs = {m.name: m for m in report.modules}
    children = dict(model.named_children())
    if expand is None:
        expand = [
            n
            for n, c in children.items()
            if isinstance(c, nn.Sequential) and n in costs and costs[n].macs * 2 > report.total_macs
        ]
    unknown = [n for n in expand if n not in children]
    if unknown:
        raise GhostmapsError(f"stage_table: expand names {unknown} are not children of the model; use {list(children)}.")
    names: list[str] = []
    for n, c in children.items():
        names += [f"{n}.{sub}" for sub, _ in c.named_children()] if n in expand else [n]
    rows = []
    for n in names:
        if n in costs and (costs[n].macs or costs[n].params):
            rows.append({"name": n, "type": costs[n].type, "params": costs[n].params, "macs": costs[n].macs})
    rest_macs = report.total_macs - sum(r["macs"] for r in rows)
    rest_params = report.params - sum(r["params"] for r in rows)
    if rest_macs or rest_params:
        rows.append({"name": "(rest)", "type": "", "params": rest_params, "macs": rest_macs})
    for r in rows:
        r["macs_share"] = r["macs"] / report.total_macs if report.total_macs else 0.0
    return rows


def format_stage_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of ``stage_table`` rows with a total line (MACs in millions)."""
    lines = [f"{'stage':<14} {'type':<18} {'params':>12} {'MMACs':>10} {'share':>7}"]
    for r in rows:
        lines.append(
            f"{r['name']:<14} {r['type']:<18} {r['params']:>12,} {r['macs'] / 1e6:>10.2f} {r['macs_share']:>7.1%}"
        )
    lines.append(
        f"{'total':<14} {'':<18} {sum(r['params'] for r in rows):>12,} "
        f"{sum(r['macs'] for r in rows) / 1e6:>10.2f} {'':>7}"
    )
    return "\n".join(lines)
