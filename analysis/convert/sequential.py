"""Sequential, asymmetric conversion: each chosen conv is replaced in forward order, fitted on inputs from the
network *already converted up to it* against the *original* network's output (He, Zhang & Sun 2017's
asymmetric solver; Zhang et al. 2015), so earlier layers' errors are absorbed instead of compounded.

Per layer: the intrinsic channels and the ghost assignment are chosen on the original maps of a few images
(:func:`analysis.reconstruct.ghostability`, post-BN units, the Ghost capacity respected); the primary filters
start as the original filters of the intrinsic channels and the cheap kernels as the closed-form fits; then
both halves are refitted by ridge least squares, alternating (:mod:`analysis.convert.refit`), from Gram
matrices streamed over a seeded subset of positions of every calibration image. A seeded part of the
calibration images is held out of the Gram matrices (whole photos where the photos are known), and each
layer's reported error is measured there.
The data flow is one pass of the converted network (:class:`analysis.convert.stepper.LayerStepper`) and one
of the original.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from analysis._core.modes import eval_mode, model_device, model_dtype
from analysis.convert.consumer import find_consumers, refit_consumer
from analysis.convert.ghostify_result import GhostifyError, RefittedConsumer
from analysis.convert.refit import GhostFit, Moments, gather_patches, sample_positions
from analysis.convert.stepper import LayerStepper
from analysis.reconstruct import channel_weights, ghostability
from ghostnet.layers import GhostConv, ghost_conv_like

__all__ = ["PRIORS", "LayerReport", "SequentialSettings", "heldout_split", "sequential_fit"]

#: Below q D fit positions (and up to this many stored values) the refit works on the positions themselves
#: (dual form) instead of the (q D)^2 Gram matrix: the same least squares, far cheaper on small data.
_DIRECT_MAX = 2 * 10**7

#: What the refit's ridge can pull toward (:attr:`SequentialSettings.prior`).
PRIORS = ("zero", "start")


@dataclass(frozen=True)
class SequentialSettings:
    """``positions``: fit positions per layer in all (spread evenly over the fit images, seeded);
    ``holdout``: fraction of the calibration images held out of the fit for the reported errors (with
    ``consumer_refit``, also the fraction of the fit images that decides whether each consumer refit is kept;
    0 turns both off);
    ``choice_images``: images whose original maps choose the intrinsic channels; ``iterations``: alternations
    of primary and cheap refits; ``ridge``: relative ridge of every solve; ``batch_size``: images per forward;
    ``track_bn``: set the BN that consumes each refitted conv to the refitted output's statistics (from the
    fit moments) before the later layers are fitted, so they are fitted on what the network will compute;
    ``consumer_refit``: also re-solve, by ridge least squares on the converted inputs against the original
    outputs, each dense conv that consumes a replaced conv and is not replaced itself
    (:mod:`analysis.convert.consumer`); ``refit_all``: once a layer's held-out errors are measured, fit it
    again, from the same start, on every calibration image, held-out ones included, and keep that module (so
    holding out whole photos costs the conversion no photo; the reported errors are then those of the fit
    without them, a slightly pessimistic estimate for the module kept);
    ``prior``: what the ridge pulls the refit toward, ``"zero"`` or ``"start"`` (the starting point: the
    original filters of the intrinsic channels and the closed-form cheap kernels, and a refitted consumer's
    own original filters; with few calibration images, input directions they do not cover then keep the
    pretrained response instead of being zeroed)."""

    positions: int = 8192
    holdout: float = 0.125
    choice_images: int = 16
    iterations: int = 2
    ridge: float = 1e-3
    seed: int = 0
    batch_size: int = 32
    choice: str = "auto"
    track_bn: bool = False
    consumer_refit: bool = False
    refit_all: bool = True
    prior: str = "zero"

    def __post_init__(self) -> None:
        ints = {"positions": 1, "choice_images": 1, "iterations": 0, "batch_size": 1, "seed": 0}
        for name, low in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise GhostifyError(f"settings.{name} must be an integer >= {low}, got {v!r}")
        for name in ("track_bn", "consumer_refit", "refit_all"):
            if not isinstance(getattr(self, name), bool):
                raise GhostifyError(f"settings.{name} must be True or False, got {getattr(self, name)!r}")
        if self.prior not in PRIORS:
            raise GhostifyError(f"settings.prior must be one of {', '.join(map(repr, PRIORS))}, got {self.prior!r}")
        if not isinstance(self.holdout, (int, float)) or not 0 <= self.holdout < 1:
            raise GhostifyError(f"settings.holdout must be a fraction in [0, 1) (0: no held-out errors), got "
                                f"{self.holdout!r}")
        if not isinstance(self.ridge, (int, float)) or not math.isfinite(self.ridge) or self.ridge < 0:
            raise GhostifyError(f"settings.ridge must be a finite number >= 0 (relative to the Gram trace), got "
                                f"{self.ridge!r}")


@dataclass
class LayerReport:
    """One layer's sequential fit: its module and, on the held-out calibration images (post-BN units where a
    BN follows, inputs from the converted network), the pooled relative error of all channels
    (``heldout_error``), of the ghosts (``ghost_error``; ``ghost_error_max`` the worst ghost channel's) and,
    before the refit, of the original intrinsic filters with the cheap ops fitted on the original maps
    (``start_error``)."""

    module: GhostConv
    intrinsic: list[int]
    heldout_error: float | None
    ghost_error: float | None
    start_error: float | None
    n_fit: int
    n_heldout: int
    ghost_error_max: float | None = None


class _Targets:
    """One pass of the original network: each chosen conv's output at its sampled positions (all images), its
    full maps on the first few images, and the BN that consumes it."""

    def __init__(self, model: nn.Module, names: Sequence[str], batches: Sequence[torch.Tensor], k: int,
                 choice_images: int, seed: int, held: np.ndarray | None = None) -> None:
        self.y: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self.pos: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self.maps: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self.bn: dict[str, nn.Module] = {}
        last: dict[str, torch.Tensor] = {}
        offset = [0]

        def conv_hook(name: str, index: int):
            def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
                if sum(t.shape[0] for t in self.y[name]) > offset[0]:
                    return  # a second call in the same batch
                b, c, h, w = out.shape
                pos = torch.stack([sample_positions(h, w, k, seed, index, offset[0] + i) for i in range(b)])
                flat = out.detach().float().cpu().flatten(2)
                self.y[name].append(torch.gather(flat, 2, pos[:, None, :].expand(b, c, -1)).transpose(1, 2))
                self.pos[name].append(pos)
                have = sum(t.shape[0] for t in self.maps[name])
                if have < choice_images:  # the choice sees fit images only, never held-out ones
                    fit = [i for i in range(b) if held is None or not held[offset[0] + i]]
                    if fit:
                        self.maps[name].append(out.detach().float().cpu()[fit[:choice_images - have]])
                last[name] = out
            return hook

        def bn_hook(module: nn.Module, inputs: Any) -> None:
            for name, t in last.items():
                if inputs[0] is t and name not in self.bn:
                    self.bn[name] = module

        modules = dict(model.named_modules())
        handles = [modules[n].register_forward_hook(conv_hook(n, i)) for i, n in enumerate(names)]
        handles += [m.register_forward_pre_hook(bn_hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        try:
            with eval_mode(model), torch.no_grad():
                for b in batches:
                    model(b)
                    offset[0] += b.shape[0]
                    last.clear()
        finally:
            for h in handles:
                h.remove()


def _alternate(fit: GhostFit, mo: Moments | None, vf: torch.Tensor | None, yf: torch.Tensor | None,
               weights: torch.Tensor, st: SequentialSettings) -> None:
    """``st.iterations`` alternations of the primary and cheap refits, from the Gram moments ``mo`` or, when
    there are few positions, from the positions ``vf``/``yf`` themselves."""
    for _ in range(st.iterations):
        if mo is None:
            fit.primary_step_direct(vf, yf, weights, st.ridge)
            fit.cheap_step_direct(vf, yf, st.ridge)
        else:
            fit.primary_step(mo, weights, st.ridge)
            fit.cheap_step(mo, st.ridge)


def _pooled(err: torch.Tensor, ss: torch.Tensor, idx: Sequence[int], w: torch.Tensor) -> float | None:
    if not len(idx):
        return None
    i = torch.as_tensor(list(idx))
    den = float((w[i] * ss[i]).sum())
    return float((w[i] * err[i]).sum()) / den if den > 0 else None


def _errors(fit: GhostFit, v: torch.Tensor, y: torch.Tensor, w: torch.Tensor
            ) -> tuple[float | None, float | None, float | None]:
    """Pooled post-BN relative error of all channels and of the ghosts on positions ``v``/``y``, and the worst
    ghost channel's own relative error (SSE_j / SS_j: the post-BN weight cancels)."""
    if v.shape[0] < 2:
        return None, None, None
    y = y.double()
    err = ((fit.predict(v, y.shape[1]) - y) ** 2).sum(0)
    ss = ((y - y.mean(0)) ** 2).sum(0)
    ghosts = torch.as_tensor(list(fit.ghosts), dtype=torch.long)
    live = ghosts[ss[ghosts] > 0]
    worst = float((err[live] / ss[live]).max()) if len(live) else None
    return _pooled(err, ss, range(y.shape[1]), w), _pooled(err, ss, fit.ghosts, w), worst


def _start(conv: nn.Conv2d, maps: torch.Tensor, bn: nn.Module | None, ratio: int, d: int,
           choice: str) -> tuple[GhostFit, list[int]]:
    """The intrinsic choice on the original maps and the starting point of the refit."""
    g = ghostability(maps, ratio=ratio, d=d, bn=bn, split=None, choice=choice)
    ghosts = [j for s in g.slots for j in s]
    source = [p for p, s in enumerate(g.slots) for _ in s]
    idx = torch.as_tensor(g.intrinsic)
    weight = conv.weight.detach().double().cpu()[idx].reshape(len(idx), -1)
    if conv.bias is not None:
        weight = torch.cat([weight, conv.bias.detach().double().cpu()[idx, None]], 1)
    kernel = torch.as_tensor(g.kernel[ghosts].reshape(len(ghosts), d * d), dtype=torch.float64)
    bias = torch.as_tensor(g.bias[ghosts], dtype=torch.float64)
    return GhostFit(list(g.intrinsic), ghosts, source, weight, kernel, bias), list(g.module_order)


def _module(conv: nn.Conv2d, fit: GhostFit, module_order: list[int], ratio: int, d: int) -> GhostConv:
    pos = [0] * conv.out_channels
    for k, ch in enumerate(module_order):
        pos[ch] = k
    with torch.inference_mode(False):
        ghost = ghost_conv_like(conv, ratio, d, pos)
    m = len(fit.intrinsic)
    wt = fit.weight[:, :conv.weight[0].numel()].reshape(m, *conv.weight.shape[1:])
    bias = fit.weight[:, -1] if conv.bias is not None else None
    ghost.load_fitted(wt.to(conv.weight), None if bias is None else bias.to(conv.weight),
                      fit.kernel.reshape(-1, 1, d, d).to(conv.weight), fit.bias.to(conv.weight))
    return ghost


def heldout_split(n: int, holdout: float, seed: int = 0, photos: Sequence[str] | None = None, *,
                  label: str = "held out") -> tuple[np.ndarray, str]:
    """Which of ``n`` calibration images are held out of the fit (a bool mask) and, in words, how they were
    chosen. With ``photos`` (the photo each image is a view of) naming two photos or more, *whole photos* are
    held out, seeded, until at least ``holdout``·n images are (never every photo): a held-out error is then
    never measured on a view of a photo the fit saw. Otherwise single images, seeded. ``label`` names the
    split in the words (e.g. ``"for the decision"`` for the consumer refit's validation split)."""
    held = np.zeros(n, dtype=bool)
    if n < 2 or holdout <= 0:
        return held, f"nothing {label}"
    want = min(n - 1, max(1, round(holdout * n)))
    rng = np.random.default_rng([int(seed), 7])
    if photos is not None and len(photos) == n and len(set(photos)) >= 2:
        views = Counter(photos)
        distinct = sorted(views)
        chosen: list[str] = []
        for i in rng.permutation(len(distinct)):
            if sum(views[p] for p in chosen) >= want or len(chosen) == len(distinct) - 1:
                break
            chosen.append(distinct[i])
        held = np.isin(np.asarray(list(photos), dtype=object), chosen)
        return held, (f"whole photos {label}: {', '.join(sorted(chosen))} ({int(held.sum())} of {n} images, "
                      f"{len(chosen)} of {len(distinct)} photos)")
    held[rng.permutation(n)[:want]] = True
    return held, (f"single images {label} ({want} of {n}; the photos are not known, so views of one photo may "
                  "be on both sides)")


def _validation_split(held: np.ndarray, st: SequentialSettings, photos: Sequence[str] | None
                      ) -> tuple[np.ndarray, str]:
    """The fit images (not ``held``) that decide whether a consumer refit is kept, and in words how they were
    chosen: a seeded split of them like :func:`heldout_split` (whole photos where the fit images come from two
    photos or more), so no held-out image decides. Empty with ``holdout=0`` or fewer than two fit images."""
    fit = np.flatnonzero(~held)
    names = [photos[i] for i in fit] if photos is not None and len(photos) == len(held) else None
    inner, how = heldout_split(len(fit), st.holdout, st.seed + 1, names, label="for the decision")
    decide = np.zeros_like(held)
    decide[fit[inner]] = True
    if not decide.any():
        return decide, f"no validation images ({len(fit)} fit images, holdout={st.holdout})"
    if names is not None and len(set(names)) == 1:  # known photos, but the fit images are views of one
        return decide, (f"of the {len(fit)} fit images, all views of {names[0]}, {int(inner.sum())} single views "
                        "for the decision (judged on views of the photo it was fitted on: a weak check)")
    return decide, f"of the {len(fit)} fit images, {how}"


def sequential_fit(model: nn.Module, new: nn.Module, names: Sequence[str], images: torch.Tensor,
                   ratios: Mapping[str, int], d: int, settings: SequentialSettings | None = None,
                   photos: Sequence[str] | None = None) -> tuple[dict[str, LayerReport], list[RefittedConsumer]]:
    """Replace ``names`` (convs of ``new``, a copy of ``model``) in ``new`` in place, in forward order, each
    fitted on ``new``'s own inputs (converted up to it) against ``model``'s outputs; see the module docstring.
    ``ratios``: each name's s. ``photos``: the photo of each image, so that whole photos are held out
    (:func:`heldout_split`); the intrinsic channels are chosen on the fit images only. Returns a
    :class:`LayerReport` per layer, in forward order, and the dense consumers refitted
    (``settings.consumer_refit``; else none)."""
    st = settings or SequentialSettings()
    consumers = find_consumers(model, names, images[:1]) if st.consumer_refit else {}
    names = [*names, *consumers]  # consumers last: the replaced convs keep their position seeds
    device, dtype = model_device(model), model_dtype(model)
    batches = [b.to(device=device, dtype=dtype) for b in images.split(st.batch_size)]
    n = images.shape[0]
    k = max(1, math.ceil(st.positions / max(1, n)))
    held, _ = heldout_split(n, st.holdout, st.seed, photos)
    n_ho = int(held.sum())
    decide, decided_by = _validation_split(held, st, photos) if consumers else (np.zeros_like(held), "")
    targets = _Targets(model, names, batches, k, st.choice_images, st.seed, held)
    never = [n_ for n_ in names if not targets.y[n_]]
    if never:
        raise RuntimeError(f"layers {never} never ran in a forward pass of the calibration images")
    convs = dict(model.named_modules())
    bn_names = {id(m): n_ for n_, m in model.named_modules()}
    reports: dict[str, LayerReport] = {}
    refitted: list[RefittedConsumer] = []
    with eval_mode(new), LayerStepper(new, names, batches) as stepper:
        for name, inputs in stepper.layers():
            conv = convs[name]
            y_all, pos_all = torch.cat(targets.y[name]), torch.cat(targets.pos[name])
            bn = targets.bn.get(name)
            w = channel_weights(bn, conv.out_channels)
            weights = torch.ones(conv.out_channels, dtype=torch.float64) if w is None else torch.as_tensor(w)
            if name in consumers:
                refitted.append(refit_consumer(name, consumers[name], stepper.wrappers[name].current,
                                               None if bn is None else new.get_submodule(bn_names[id(bn)]),
                                               inputs, pos_all, y_all, torch.as_tensor(held), weights, st.ridge,
                                               torch.as_tensor(decide), check=st.holdout > 0,
                                               validation=decided_by, anchored=st.prior == "start"))
                continue
            s_layer = ratios[name]
            fit, module_order = _start(conv, torch.cat(targets.maps[name]), bn, s_layer, d, st.choice)
            if st.prior == "start":
                fit.anchor()
            qd, n_fit_pos = d * d * fit.weight.shape[1], int((~held).sum()) * pos_all.shape[1]
            direct = n_fit_pos < qd and n_fit_pos * qd <= _DIRECT_MAX  # few positions: skip the Gram
            mo = None if direct else Moments(d * d, fit.weight.shape[1], conv.out_channels)
            v_ho, y_ho, v_fit, y_fit = [], [], [], []
            start = 0
            for x in inputs:
                b = x.shape[0]
                v = gather_patches(conv, x.cpu(), pos_all[start:start + b], d)
                y = y_all[start:start + b].reshape(b * pos_all.shape[1], -1)
                keep = torch.as_tensor(np.repeat(held[start:start + b], pos_all.shape[1]))
                if mo is None:
                    v_fit.append(v[~keep])
                    y_fit.append(y[~keep])
                else:
                    mo.add(v[~keep], y[~keep])
                v_ho.append(v[keep])
                y_ho.append(y[keep])
                start += b
            vh, yh = torch.cat(v_ho), torch.cat(y_ho)
            vf, yf = (torch.cat(v_fit), torch.cat(y_fit)) if mo is None else (None, None)
            start_err, _, _ = _errors(fit, vh, yh, weights)
            begin = copy.deepcopy(fit) if st.refit_all and n_ho else None
            _alternate(fit, mo, vf, yf, weights, st)
            err, ghost_err, ghost_max = _errors(fit, vh, yh, weights)
            if begin is not None:  # measured: now the same fit from the same start on every calibration image
                fit = begin
                if mo is None:
                    vf, yf = torch.cat([vf, vh]), torch.cat([yf, yh])
                else:
                    mo.add(vh, yh)
                _alternate(fit, mo, vf, yf, weights, st)
            if st.track_bn and bn is not None:
                if mo is None:
                    pred = fit.predict(vf, conv.out_channels)
                    mean, var, count = pred.mean(0), pred.var(0, unbiased=False), pred.shape[0]
                else:
                    (mean, var), count = fit.output_moments(mo, conv.out_channels), mo.m
                target_bn = new.get_submodule(bn_names[id(bn)])
                with torch.no_grad():
                    target_bn.running_mean.copy_(mean.to(target_bn.running_mean))
                    target_bn.running_var.copy_((var * count / max(1, count - 1)).to(target_bn.running_var))
            ghost = _module(conv, fit, module_order, s_layer, d)
            ghost.train(conv.training)
            stepper.replace(name, ghost)
            reports[name] = LayerReport(ghost, fit.intrinsic, err, ghost_err, start_err, int(n - n_ho), int(n_ho),
                                        ghost_max)
            del mo, v_ho, y_ho, vh, yh, vf, yf
    return reports, refitted
