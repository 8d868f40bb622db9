"""The independent fit (``ghostify(init="fit", mode="independent")``): every conv fitted on the *original*
network's maps, the intrinsic channels keeping their original filters (exact on any input), the cheap ops
from :func:`analysis.reconstruct.ghostability`; optionally a layer-wise Adam calibration towards the original
conv's output on its original inputs. Layers stay independent (any subset can be assembled from one result)
but their errors compound through the network; the sequential fit (:mod:`.sequential`) is the default."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from analysis._core.modes import eval_mode, model_device, model_dtype
from analysis._core.numerics import relative_error
from analysis.convert.ghostify_result import GhostifyError, ReplacedLayer
from analysis.hooks import capture
from analysis.reconstruct import ghostability
from ghostnet.layers import GhostConv, ghost_conv_like

__all__ = ["independent_fit"]


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


def independent_fit(model: nn.Module, names: Sequence[str], images: torch.Tensor, ratios: Mapping[str, int],
                    dw_size: int,
                    calibrate_steps: int, calibrate_lr: float, calibrate_batch: int
                    ) -> dict[str, tuple[GhostConv, ReplacedLayer]]:
    """A fitted GhostConv and its (partly filled) :class:`ReplacedLayer` for each conv in ``names`` (``ratios``:
    each name's s)."""
    outs, ins = _record(model, list(names), images, keep_inputs=calibrate_steps > 0)
    modules = dict(model.named_modules())
    done: dict[str, tuple[GhostConv, ReplacedLayer]] = {}
    for n in names:
        conv = modules[n]
        s = ratios[n]
        fit = ghostability(outs[n], ratio=s, d=dw_size, split=None)
        pos = [0] * conv.out_channels
        for k, ch in enumerate(fit.module_order):
            pos[ch] = k
        with torch.inference_mode(False):  # normal tensors, so calibration can train them
            ghost = ghost_conv_like(conv, s, dw_size, pos)
        idx = torch.as_tensor(fit.intrinsic, dtype=torch.long, device=conv.weight.device)
        cw, cb = fit.cheap_weights()
        ghost.load_fitted(conv.weight.detach()[idx], None if conv.bias is None else conv.bias.detach()[idx],
                          cw.to(conv.weight), cb.to(conv.weight))
        entry = ReplacedLayer.blank(n, conv, ghost, s, dw_size)
        entry.intrinsic = [int(c) for c in fit.intrinsic]
        entry.fit_error = float(fit.overall_error)
        if calibrate_steps:
            _calibrate(ghost, ins[n], outs[n], calibrate_steps, calibrate_lr, calibrate_batch)
            with torch.no_grad():
                pred = ghost(ins[n].to(conv.weight)).cpu()
            # the same measure as fit_error (the reconstruction's rule for a constant output)
            entry.calibrated_error = relative_error(pred, outs[n], constant_target="floor")
        done[n] = (ghost, entry)
    return done
