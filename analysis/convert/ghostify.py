"""Ghostify: replace a network's pretrained ``Conv2d`` layers by Ghost convolutions of the same shape.

``ghostify(model, layers, ratio, dw_size, init)`` returns a *new* model (the input is deep-copied, never
touched) and a :class:`GhostifyResult` listing what was replaced and what was skipped, and why.

The replacement, :class:`GhostConv`, is a Ghost module *without* BN or activation: the conv it replaces keeps
its own BN/activation in the network, so the GhostConv has to produce the conv's raw output, channel for
channel. (``ghostnet.GhostModule`` carries a BN, and optionally a ReLU, inside each half and has no
padding/bias options, so it replaces a conv+BN block of a network built for it, not a pretrained conv in place.)
It composes two plain ``nn.Conv2d``:

* ``primary``: the original conv's geometry (kernel, stride, padding, dilation, padding mode, bias) with
  ``m = ceil(C / ratio)`` output maps, the intrinsic maps;
* ``cheap``: a depthwise ``dw_size x dw_size`` conv (with bias) making the ``C - m`` ghost maps, ghost slot
  ``k`` from intrinsic map ``k // (ratio - 1)``. When ``C`` is a multiple of ``ratio`` this is a conv with
  ``groups = m``; otherwise the last intrinsic map feeds fewer ghosts, and ``cheap`` runs on the intrinsic
  maps gathered per slot (``cheap_index``) with ``groups = C - m``, so no weight is computed and thrown away.

Outputs are ``cat([intrinsic, ghosts])``, re-ordered by the ``order`` buffer when the module was fitted to
a pretrained conv, so output channel ``j`` is the original conv's channel ``j``.

``init="fit"`` (training-free) initialises each GhostConv from the pretrained conv and a few calibration
images: the intrinsic channels are chosen and the cheap ops fitted in closed form by
``analysis.reconstruct.ghostability`` on the conv's real outputs (imported lazily: ``ghostnet`` never imports
``analysis`` at import time). The primary conv takes the original filters of the intrinsic channels, so it
reproduces those channels exactly. An optional layer-wise calibration (``calibrate_steps``) then runs a few
hundred Adam steps of MSE to the original conv's output on the same images.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from analysis._core.errors import GhostmapsError, did_you_mean
from analysis._core.modes import eval_mode, model_device, model_dtype
from analysis._core.numerics import relative_error
from analysis._core.results import Result, plain
from analysis._core.validation import check_count, check_odd_size, per_layer_ratios
from analysis.data.batches import as_images
from analysis.data.models import default_preprocess
from analysis.hooks import capture
from analysis.reconstruct import ghostability
from ghostnet.layers import GhostConv, ghost_conv_like

if TYPE_CHECKING:
    import pandas as pd
    from typing_extensions import Self

__all__ = [
    "GhostConv",
    "GhostifyError",
    "GhostifyResult",
    "ReplacedLayer",
    "SkippedLayer",
    "ghostify",

]


class GhostifyError(GhostmapsError):
    """Bad input to :func:`ghostify` (a layer, ratio, kernel size or calibration set). The message names the
    input and the fix. (CLI exit code 2)."""


# ----------------------------------------------------------------------------------------------------------
# results


@dataclass
class ReplacedLayer(Result):
    """One conv replaced by a GhostConv. ``intrinsic``: original channels the primary conv keeps (in its
    output order; None without a fit). ``fit_error``: relative reconstruction error of the closed-form fit on
    the calibration images (sum of squared errors / centred sum of squares over all channels);
    ``calibrated_error``: the same after calibration (None when not calibrated). In ``rows()`` the kernel size
    is ``"3×3"`` and ``intrinsic`` the channels separated by spaces."""

    name: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    ratio: int
    dw_size: int
    init_channels: int
    params_before: int
    params_after: int
    intrinsic: list[int] | None = None
    fit_error: float | None = None
    calibrated_error: float | None = None

    _COLUMNS = ("name", "in_channels", "out_channels", "kernel_size", "ratio", "dw_size", "init_channels",
                "params_before", "params_after", "intrinsic", "fit_error", "calibrated_error")

    def rows(self) -> list[dict[str, Any]]:
        row = self.to_dict()
        row["kernel_size"] = "×".join(map(str, self.kernel_size))
        row["intrinsic"] = None if self.intrinsic is None else " ".join(map(str, self.intrinsic))
        return [row]

    def to_dict(self) -> dict[str, Any]:
        return plain(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        data = dict(data)
        data["kernel_size"] = tuple(int(k) for k in data["kernel_size"])
        return cls(**data)


@dataclass
class SkippedLayer(Result):
    """A conv that was chosen (by pattern or default) but left as it is, and why."""

    name: str
    reason: str

    _COLUMNS = ("name", "reason")

    def rows(self) -> list[dict[str, Any]]:
        return [self.to_dict()]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(data["name"], data["reason"])


_INT_COLUMNS = ("in_channels", "out_channels", "ratio", "dw_size", "init_channels", "params_before", "params_after")


@dataclass
class GhostifyResult(Result):
    """What :func:`ghostify` did. ``spec()`` + the original architecture rebuild the ghostified model
    (:func:`rebuild`), so a state dict of it can be loaded later. ``rows()``: one per chosen conv, replaced
    (``ReplacedLayer`` columns) or skipped (only name and reason), with its ``status``."""

    replaced: list[ReplacedLayer] = field(default_factory=list)
    skipped: list[SkippedLayer] = field(default_factory=list)
    ratio: int = 2
    dw_size: int = 3
    init: str | None = None
    calibrate_steps: int = 0
    configs: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def names(self) -> list[str]:
        """Names of the replaced convs."""
        return [r.name for r in self.replaced]

    def spec(self) -> dict[str, Any]:
        """JSON-able ``{"format": "ghostmaps-ghostify/1", "layers": {name: GhostConv config}}``."""
        return {"format": "ghostmaps-ghostify/1", "layers": copy.deepcopy(self.configs)}

    _COLUMNS = ("name", "status", "reason", *ReplacedLayer._COLUMNS[1:])

    def rows(self) -> list[dict[str, Any]]:
        empty = dict.fromkeys(self._COLUMNS)
        rows = [{**empty, **r.rows()[0], "status": "replaced", "reason": ""} for r in self.replaced]
        return rows + [{**empty, "name": s.name, "status": "skipped", "reason": s.reason} for s in self.skipped]

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "dw_size": self.dw_size, "init": self.init,
                "calibrate_steps": self.calibrate_steps,
                "replaced": [r.to_dict() for r in self.replaced], "skipped": [s.to_dict() for s in self.skipped],
                "spec": plain(self.spec())}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls([ReplacedLayer.from_dict(r) for r in data["replaced"]],
                   [SkippedLayer.from_dict(s) for s in data["skipped"]], int(data["ratio"]), int(data["dw_size"]),
                   data.get("init"), int(data.get("calibrate_steps", 0)), dict(data["spec"]["layers"]))

    def to_frame(self) -> pd.DataFrame:
        """``rows()`` as a DataFrame, the integer columns as nullable ``Int64`` (skipped convs have none)."""
        return super().to_frame().astype(dict.fromkeys(_INT_COLUMNS, "Int64"))

    def __str__(self) -> str:
        lines = [f"ghostify: {len(self.replaced)} convs replaced (ratio {self.ratio}, d {self.dw_size}, "
                 f"init {self.init}), {len(self.skipped)} skipped"]
        for r in self.replaced:
            err = "" if r.fit_error is None else f"  fit error {r.fit_error:.4f}"
            if r.calibrated_error is not None:
                err += f" -> {r.calibrated_error:.4f} calibrated"
            lines.append(f"  {r.name}: {r.in_channels}->{r.out_channels}, s {r.ratio}, intrinsic {r.init_channels}, "
                         f"params {r.params_before} -> {r.params_after}{err}")
        lines += [f"  skipped {s.name}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# choosing layers


def _skip_reason(name: str, conv: nn.Conv2d, ratio: int, min_channels: int) -> str | None:
    """Why ``conv`` cannot (or should not) be ghostified, or None."""
    if type(conv).forward is not nn.Conv2d.forward:
        return f"{type(conv).__name__} subclasses Conv2d with its own forward; only plain convs are replaced"
    if conv.groups > 1:
        if conv.groups == conv.in_channels:
            return (f"depthwise conv (groups={conv.groups}): already as cheap as a Ghost cheap op; "
                    "only dense convs are replaced")
        return (f"grouped conv (groups={conv.groups}): a Ghost module's primary conv is dense, and keeping "
                "the grouping would tie the intrinsic channels to groups; not supported")
    if conv.out_channels < max(ratio, min_channels):
        return (f"only {conv.out_channels} output channels (< {max(ratio, min_channels)}): too few to make "
                "ghosts from; lower min_channels or name it to force")
    return None


def _choose(model: nn.Module, layers: str | Sequence[str] | None, ratio: int,
            min_channels: int) -> tuple[list[str], list[SkippedLayer]]:
    convs = {n: m for n, m in model.named_modules() if n and isinstance(m, nn.Conv2d)}
    if not convs:
        raise GhostifyError(f"{type(model).__name__} has no nn.Conv2d layers to ghostify")
    stem = next(iter(convs))
    chosen: list[str] = []
    skipped: list[SkippedLayer] = []
    if layers is None:
        for n, m in convs.items():
            if n == stem:
                skipped.append(SkippedLayer(n, "the stem (first conv) is never replaced by default: it sees the "
                                               "raw image and costs little"))
                continue
            reason = _skip_reason(n, m, ratio, min_channels)
            if reason:
                skipped.append(SkippedLayer(n, reason))
            else:
                chosen.append(n)
        return chosen, skipped
    specs = [layers] if isinstance(layers, str) else list(layers)
    if not specs:
        raise GhostifyError("layers is empty; pass a conv name, a glob such as 'layer1.*', or None for the default")
    modules = dict(model.named_modules())
    for spec in specs:
        if not isinstance(spec, str):
            raise GhostifyError(f"layers must be names or globs (str), got {type(spec).__name__}")
        if any(ch in spec for ch in "*?["):
            hits = [n for n in fnmatch.filter(modules, spec) if n]
            if not hits:
                raise GhostifyError(f"layer pattern {spec!r} matches no module.{did_you_mean(spec, convs)}")
            hit_convs = [n for n in hits if n in convs]
            if not hit_convs:
                raise GhostifyError(f"layer pattern {spec!r} matches {len(hits)} modules but no Conv2d (e.g. "
                                    f"{hits[0]!r} is {type(modules[hits[0]]).__name__}).{did_you_mean(spec, convs)}")
            for n in hit_convs:
                reason = _skip_reason(n, convs[n], ratio, 0)
                if reason:
                    skipped.append(SkippedLayer(n, reason))
                elif n not in chosen:
                    chosen.append(n)
            continue
        if spec not in modules or not spec:
            raise GhostifyError(f"unknown layer {spec!r}.{did_you_mean(spec, convs)} List the convs with "
                                f"[n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)].")
        if spec not in convs:
            raise GhostifyError(f"layer {spec!r} is a {type(modules[spec]).__name__}, not a Conv2d; only convs can "
                                f"be ghostified.{did_you_mean(spec, convs)}")
        reason = _skip_reason(spec, convs[spec], ratio, 0)
        if reason:  # named explicitly: refuse instead of silently skipping
            raise GhostifyError(f"layer {spec!r} cannot be ghostified: {reason}. Pick a dense conv.")
        if spec not in chosen:
            chosen.append(spec)
    return chosen, skipped


# ----------------------------------------------------------------------------------------------------------
# fitting


def _record(model: nn.Module, names: list[str], images: torch.Tensor, keep_inputs: bool,
            batch_size: int = 16) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Outputs (and inputs, when asked) of the first call of each named conv, as CPU float32, over the images
    in batches (each batch on the model's device and dtype; eval mode, no gradients; ``capture``'s hooks)."""
    outs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    ins: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    device, dtype = model_device(model), model_dtype(model)
    with eval_mode(model), torch.no_grad(), capture(model, [f"{n}#0" for n in names], to="cpu",
                                                    dtype=torch.float32, inputs=keep_inputs) as maps:
        for b in images.split(batch_size):
            model(b.to(device=device, dtype=dtype))
            for n in names:
                if n in maps:
                    outs[n].append(maps[n])
                if n in maps.inputs:
                    ins[n].append(maps.inputs[n])
    missing = [n for n in names if not outs[n]]
    if missing:
        raise GhostifyError(f"layers {missing} never ran in a forward pass of the calibration images, so they "
                            "cannot be fitted; leave them out of layers")
    return ({n: torch.cat(v) for n, v in outs.items()},
            {n: torch.cat(v) for n, v in ins.items() if v})


def _calibrate(module: GhostConv, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
               batch_size: int) -> None:
    """A few Adam steps of MSE to the original conv's output (layer-wise, unlabelled images).

    Works when called under ``torch.no_grad()`` or ``torch.inference_mode()`` (gradients are switched back on
    here; ``module`` must have been built outside inference mode) and on any device/dtype: the recorded CPU
    float32 maps follow the module's weight.
    """
    weight = module.primary.weight
    scale = float(y.double().var()) or 1.0
    gen = torch.Generator().manual_seed(0)
    module.train()
    with torch.inference_mode(False), torch.enable_grad():
        # maps recorded under inference_mode are inference tensors, which autograd refuses: copy those
        x, y = (t.clone() if t.is_inference() else t for t in (x, y))
        opt = torch.optim.Adam(module.parameters(), lr=lr)
        for _ in range(steps):
            idx = torch.randperm(x.shape[0], generator=gen)[:batch_size]
            xb, yb = x[idx].to(weight), y[idx].to(weight)
            loss = ((module(xb) - yb) ** 2).mean() / scale
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    module.eval()


# ----------------------------------------------------------------------------------------------------------
# ghostify


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def ghostify(model: nn.Module, layers: str | Sequence[str] | None = None, ratio: int | Mapping[str, int] = 2,
             dw_size: int = 3,
             init: str | None = None, calibration_images: Any = None, *, min_channels: int = 16,
             calibrate_steps: int = 0, calibrate_lr: float = 1e-3, calibrate_batch: int = 8,
             preprocess: Callable[[Any], torch.Tensor] | None = None) -> tuple[nn.Module, GhostifyResult]:
    """Replace chosen ``Conv2d`` layers of a copy of ``model`` by :class:`GhostConv` of the same shape.

    Args:
        model: any network whose convs are plain ``nn.Conv2d`` modules; never modified.
        layers: conv names and/or globs (``"layer1.*"``); explicitly named convs that cannot be replaced
            (depthwise, grouped, not a conv) are errors, glob hits are skipped with a reason. Default
            (None): every dense conv with at least ``min_channels`` outputs except the stem (first conv).
        ratio: s (>= 2), or a mapping conv name -> s (a plan's ``ratios``; its keys are the layers when
            ``layers`` is None); dw_size: d (odd).
        init: None keeps PyTorch's random initialisation (train from scratch); ``"fit"`` initialises from
            the pretrained conv with closed-form fits on ``calibration_images`` (see module docstring).
        calibration_images: any image source of ``analysis.data.batches`` (files, folders, globs,
            ``"samples"``, a tensor, a list of tensors, a Dataset or DataLoader, ``analysis.load_images(...)``);
            required for ``init="fit"``. A few dozen images are plenty; all maps of the chosen convs are held
            in memory.
        calibrate_steps: if > 0 (needs ``init="fit"``), Adam steps of layer-wise MSE calibration per layer.
        preprocess: how image files become tensors (e.g. ``load_model(...).preprocess``); default ImageNet
            evaluation preprocessing (``analysis.data.models.default_preprocess()``).

    Returns:
        ``(new_model, GhostifyResult)``; the new model is in eval mode.
    """
    ratios, ratio, layers = per_layer_ratios(ratio, layers, GhostifyError)
    dw_size = check_odd_size(dw_size, "dw_size", GhostifyError)
    if init not in (None, "fit"):
        raise GhostifyError(f"init must be None (random) or 'fit' (from the pretrained conv), got {init!r}")
    calibrate_steps = check_count(calibrate_steps, "calibrate_steps", GhostifyError, " (0: no calibration)")
    if calibrate_steps and init != "fit":
        raise GhostifyError("calibrate_steps > 0 needs init='fit' (calibration refines a fitted module)")
    if init == "fit" and calibration_images is None:
        raise GhostifyError("init='fit' needs calibration_images: a few unlabelled images (e.g. 'samples', a "
                            "folder, or an N x C x H x W tensor) to fit the cheap ops on")
    if not isinstance(model, nn.Module):
        raise GhostifyError(f"model must be an nn.Module, got {type(model).__name__}")
    chosen, skipped = _choose(model, layers, ratio, min_channels)
    new = copy.deepcopy(model)
    result = GhostifyResult(skipped=skipped, ratio=ratio, dw_size=dw_size, init=init,
                            calibrate_steps=calibrate_steps)
    if not chosen:
        new.eval()
        return new, result

    fits: dict[str, Any] = {}
    outs: dict[str, torch.Tensor] = {}
    ins: dict[str, torch.Tensor] = {}
    if init == "fit":

        images = as_images(calibration_images, preprocess or default_preprocess(), name="calibration_images",
                           error=GhostifyError).tensor()
        outs, ins = _record(model, chosen, images, keep_inputs=calibrate_steps > 0)
        for n in chosen:
            fits[n] = ghostability(outs[n], ratio=ratios.get(n, ratio), d=dw_size, split=None)

    modules = dict(model.named_modules())
    for n in chosen:
        conv = modules[n]
        fit = fits.get(n)
        order = None
        if fit is not None:
            pos = [0] * conv.out_channels
            for k, ch in enumerate(fit.module_order):
                pos[ch] = k
            order = pos
        with torch.inference_mode(False):  # normal tensors, so calibration can train them
            ghost = ghost_conv_like(conv, ratios.get(n, ratio), dw_size, order)
        entry = ReplacedLayer(name=n, in_channels=conv.in_channels, out_channels=conv.out_channels,
                              kernel_size=tuple(conv.kernel_size), ratio=ratios.get(n, ratio), dw_size=dw_size,
                              init_channels=ghost.init_channels, params_before=_params(conv),
                              params_after=_params(ghost))
        if fit is not None:
            idx = torch.as_tensor(fit.intrinsic, dtype=torch.long, device=conv.weight.device)
            cw, cb = fit.cheap_weights()
            ghost.load_fitted(conv.weight.detach()[idx],
                              None if conv.bias is None else conv.bias.detach()[idx],
                              cw.to(conv.weight), cb.to(conv.weight))
            entry.intrinsic = [int(c) for c in fit.intrinsic]
            entry.fit_error = float(fit.overall_error)
            if calibrate_steps:
                _calibrate(ghost, ins[n], outs[n], calibrate_steps, calibrate_lr, calibrate_batch)
                with torch.no_grad():
                    pred = ghost(ins[n].to(conv.weight)).cpu()
                # the same measure as fit_error (the reconstruction's rule for a constant output)
                entry.calibrated_error = relative_error(pred, outs[n], constant_target="floor")
        ghost.train(conv.training)
        _set_submodule(new, n, ghost)
        result.replaced.append(entry)
        result.configs[n] = ghost.config()
    new.eval()
    return new, result
