"""The optional consumer refit of the sequential fit (ThiNet's "fix the next layer", as plain least squares).

After a conv is replaced, the *dense* conv that consumes its output (through BN, activations, depthwise convs,
residual adds: anything but another dense conv) is re-solved so that its output on the *converted* network's
inputs matches the *original* network's output of that consumer. In mobilenet_v2 the consumer of an expansion
conv is the projection of the same block (through BN, ReLU6, the depthwise conv, BN, ReLU6), and that of a
projection the next block's expansion. A consumer that is itself replaced needs no refit (its own sequential
fit already targets the original output on the converted inputs), so only consumers that stay dense are
refitted: the layer after a contiguous replaced run, or the partner of a conv replaced alone.

Which conv consumes which is found by perturbation, not by names: on one example, the replaced conv's output is
perturbed and the first plain dense ``nn.Conv2d`` (``groups=1``) the forward runs after it whose input changes
is its consumer. The refit is ridge least squares with an intercept (the conv's own bias, or folded into the
running mean of the BN that follows it: ``BN(z + c)`` is ``BN(z)`` with ``running_mean - c``; without either,
no intercept). Each output channel is its own regression, so the post-BN weighting of the errors does not change
the solution; it only sets the units of the reported errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from analysis._core.modes import eval_mode, model_device, model_dtype
from analysis.convert.bn import execution_order
from analysis.convert.ghostify_result import RefittedConsumer
from analysis.convert.refit import _ridge_solve, gather_patches
from analysis.hooks import capture

__all__ = ["DenseMoments", "dense_patches", "find_consumers", "is_dense", "refit_consumer", "refit_dense"]


def is_dense(module: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` (not a subclass) with ``groups=1``: a conv the consumer refit can re-solve."""
    return type(module) is nn.Conv2d and module.groups == 1


def _inputs(model: nn.Module, names: Sequence[str], example: torch.Tensor,
            perturb: str | None) -> dict[str, torch.Tensor]:
    """The first input of each module ``names`` on ``example`` (``capture(..., inputs=True)``), with the output
    of ``perturb`` (a module name) replaced by a seeded random perturbation of it."""
    gen = torch.Generator().manual_seed(0)

    def noisy(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(out.shape, generator=gen).to(out)
        return out + noise * (out.detach().float().std() + 1.0).to(out)

    handle = None if perturb is None else dict(model.named_modules())[perturb].register_forward_hook(noisy)
    try:
        with eval_mode(model), torch.no_grad(), \
                capture(model, [f"{n}#0" for n in names], store=False, inputs=True) as maps:
            model(example)
    finally:
        if handle is not None:
            handle.remove()
    return dict(maps.inputs)


def find_consumers(model: nn.Module, names: Sequence[str], example: torch.Tensor) -> dict[str, list[str]]:
    """Dense consumers to refit: ``{consumer: [replaced convs it consumes]}`` in forward order, for the
    replaced convs ``names`` of ``model`` (see the module docstring). A replaced conv whose first dense consumer
    is itself in ``names``, or that reaches no dense conv, contributes nothing."""
    x = example[:1].to(device=model_device(model), dtype=model_dtype(model))
    order = execution_order(model, x)
    modules = dict(model.named_modules())
    dense = [n for n in order if is_dense(modules[n])]
    clean = _inputs(model, dense, x, None)
    chosen = set(names)
    found: dict[str, list[str]] = {}
    for name in names:
        if name not in order:
            continue  # never runs: the sequential fit reports it
        later = [n for n in dense if order.index(n) > order.index(name)]
        if not later:
            continue
        moved = _inputs(model, later, x, name)
        first = next((n for n in later if n in moved and not torch.equal(moved[n], clean[n])), None)
        if first is not None and first not in chosen:
            found.setdefault(first, []).append(name)
    return {n: found[n] for n in dense if n in found}


@dataclass
class DenseMoments:
    """Streamed sums for one dense conv's least squares: patches ``v`` (N, D) against targets ``y`` (N, C).
    With ``centre`` (a fit with an intercept) the sums are of the data minus the first batch's means (the
    shifted-data algorithm: a constant input channel then sums to exactly 0, instead of leaving cancellation
    noise in the centred Gram for the solve to amplify)."""

    dim: int
    channels: int
    centre: bool = True
    m: int = 0
    v0: torch.Tensor = field(init=False)
    y0: torch.Tensor = field(init=False)
    sv: torch.Tensor = field(init=False)
    sy: torch.Tensor = field(init=False)
    gram: torch.Tensor = field(init=False)
    cross: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        f64 = torch.float64
        self.v0, self.y0 = torch.zeros(self.dim, dtype=f64), torch.zeros(self.channels, dtype=f64)
        self.sv, self.sy = torch.zeros(self.dim, dtype=f64), torch.zeros(self.channels, dtype=f64)
        self.gram = torch.zeros(self.dim, self.dim, dtype=f64)
        self.cross = torch.zeros(self.dim, self.channels, dtype=f64)

    def add(self, v: torch.Tensor, y: torch.Tensor) -> None:
        """Add fit positions: ``v`` (N, D) patch rows and ``y`` (N, C) original outputs."""
        if not v.shape[0]:
            return
        v, y = v.double(), y.double()
        if self.centre and self.m == 0:
            self.v0, self.y0 = v.mean(0), y.mean(0)
        v, y = v - self.v0, y - self.y0
        self.gram += v.T @ v
        self.cross += v.T @ y
        self.sv += v.sum(0)
        self.sy += y.sum(0)
        self.m += int(v.shape[0])


def refit_dense(mo: DenseMoments, ridge: float, start: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ridge least squares ``y ~ W v (+ c)`` from the moments: ``W`` (C, D) and, when ``mo.centre``, the
    intercept ``c`` (C; else None). The ridge is relative, ``lam = ridge * trace(A) / D`` of the (centred, with
    an intercept) normal matrix ``A``; the intercept is not penalised. It pulls ``W`` toward ``start`` (C, D;
    zero when omitted). With ``ridge=0`` the solution nearest ``start`` (a dead or constant input channel keeps
    its ``start`` weight, 0 without one, not an arbitrary one)."""
    if mo.m == 0:
        raise ValueError("refit_dense needs at least one fit position")
    if mo.centre:
        a = mo.gram - torch.outer(mo.sv, mo.sv) / mo.m
        b = mo.cross - torch.outer(mo.sv, mo.sy) / mo.m
    else:
        a, b = mo.gram, mo.cross
    # the start as D x C, like b; the moments are summed in float64, so pinv keeps torch's float64 cut-off
    w = _ridge_solve(a, b, ridge, None if start is None else start.double().T, pinv_rtol=None).T
    c = (mo.sy / mo.m + mo.y0) - w @ (mo.sv / mo.m + mo.v0) if mo.centre else None
    return w, c


def dense_patches(conv: nn.Conv2d, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The patch rows ``(B * k, C_in * kh * kw)`` a dense conv's filters see at the flat output positions
    ``pos`` (B x k) of ``x`` (no bias column)."""
    dim = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    return gather_patches(conv, x, pos, 1)[:, 0, :dim]


def _error(pred: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> float | None:
    """Pooled post-BN relative error ``sum_j w_j SSE_j / sum_j w_j SS_j`` (None without two positions)."""
    if y.shape[0] < 2:
        return None
    den = float((w * ((y - y.mean(0)) ** 2).sum(0)).sum())
    return float((w * ((pred - y) ** 2).sum(0)).sum()) / den if den > 0 else None


def refit_consumer(name: str, producers: list[str], conv: nn.Conv2d, bn: nn.Module | None,
                   inputs: Sequence[torch.Tensor], pos: torch.Tensor, y: torch.Tensor, held: torch.Tensor,
                   weights: torch.Tensor, ridge: float, decide: torch.Tensor | None = None, *,
                   check: bool = True, validation: str | None = None, anchored: bool = False) -> RefittedConsumer:
    """Re-solve the dense ``conv`` (a module of the converted network, changed in place, and ``bn``, the BN of
    the converted network that follows it, whose running mean takes the intercept of a bias-free conv) on its
    ``inputs`` (one tensor per batch, from the converted network) against the original network's outputs ``y``
    (images x k x C) at the flat positions ``pos`` (images x k). ``held`` (bool per image) marks the held-out
    images, which only measure the reported errors; ``weights``: post-BN channel weights.

    Whether the refit is kept is decided on ``decide`` (bool per image, fit images only, disjoint from
    ``held``): the refit on the other fit images must lower the error there, else the conv is left as it was
    (``applied=False``: an overfitted refit, few positions against the conv's inputs). The weights kept are then
    fitted on every fit image, ``decide`` included: the consumer's own weights are neither fitted nor selected
    on the held-out images. Without ``decide`` images (or an error they can measure: fewer than two positions)
    the refit is not applied when ``check`` (an unchecked refit is what overfits small data), and applied
    otherwise (``holdout=0``: the user turned the checks off). ``validation``: how the ``decide`` images were
    chosen, in words, for the record. ``anchored``: the ridge pulls toward the conv's own weights, not zero."""
    dim, channels = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1], conv.out_channels
    intercept = conv.bias is not None or bn is not None
    mo = DenseMoments(dim, channels, centre=intercept)
    decide = torch.zeros_like(held) if decide is None else decide
    if bool((decide & held).any()):
        raise ValueError("refit_consumer: the decision images must not be held-out images")
    rows: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {"held": ([], []), "decide": ([], [])}
    start, k = 0, pos.shape[1]
    for x in inputs:
        b = x.shape[0]
        v = dense_patches(conv, x.cpu(), pos[start:start + b])
        yy = y[start:start + b].reshape(b * k, channels).double()
        ho, dc = held[start:start + b].repeat_interleave(k), decide[start:start + b].repeat_interleave(k)
        mo.add(v[~ho & ~dc], yy[~ho & ~dc])
        for key, keep in (("held", ho), ("decide", dc)):
            rows[key][0].append(v[keep].double())
            rows[key][1].append(yy[keep])
        start += b
    (vh, yh), (vd, yd) = ((torch.cat(rows[key][0]), torch.cat(rows[key][1])) for key in ("held", "decide"))
    old_w = conv.weight.detach().double().cpu().reshape(channels, dim)
    anchor = old_w if anchored else None
    old_c = conv.bias.detach().double().cpu() if conv.bias is not None else torch.zeros(channels, dtype=torch.float64)

    def errors(w: torch.Tensor, c: torch.Tensor | None, v: torch.Tensor, t: torch.Tensor) -> float | None:
        return _error(v @ w.T + (c if c is not None else 0.0), t, weights)

    val_before = val_after = None
    if vd.shape[0]:
        val_before = errors(old_w, old_c, vd, yd)
        val_after = errors(*refit_dense(mo, ridge, anchor), vd, yd) if mo.m else None
        mo.add(vd, yd)
    if val_before is not None and val_after is not None:
        applied = val_after < val_before
    else:  # no validation image, or too few positions to measure an error: unchecked
        applied = not check
    w, c = refit_dense(mo, ridge, anchor)
    before, after = errors(old_w, old_c, vh, yh), errors(w, c, vh, yh)
    if applied:
        with torch.no_grad():
            conv.weight.copy_(w.reshape(conv.weight.shape).to(conv.weight))
            if conv.bias is not None and c is not None:
                conv.bias.copy_(c.to(conv.bias))
            elif c is not None and bn is not None:
                bn.running_mean.sub_(c.to(bn.running_mean))
    return RefittedConsumer(name=name, producers=list(producers), heldout_error_before=before,
                            heldout_error_after=after, n_fit=int(mo.m), n_heldout=int(vh.shape[0]), applied=applied,
                            validation_error_before=val_before, validation_error_after=val_after,
                            n_validation=int(vd.shape[0]), validation=validation)
