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

``init="fit"`` (training-free) initialises each GhostConv from the pretrained conv and calibration images.
The default ``mode="sequential"`` (:mod:`.sequential`) replaces the convs in forward order, each fitted on
inputs from the network already converted up to it against the original network's output, both halves
refitted by ridge least squares in post-BN units; ``reestimate_bn=True`` then re-estimates the BN statistics
after the first replaced conv on the calibration images (:func:`~analysis.convert.bn.reestimate_bn`; off by
default: measured to hurt with the offline photos, see docs/ghostify.md). ``mode="independent"`` (:mod:`.independent`) is the earlier fit: each conv on the original
network's maps, the intrinsic channels exact, with an optional layer-wise calibration (``calibrate_steps``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from analysis._core.validation import check_count, check_odd_size, per_layer_ratios
from analysis.convert.bn import reestimate_bn as _reestimate_bn
from analysis.convert.choose import choose_layers
from analysis.convert.ghostify_result import GhostifyError, GhostifyResult, ReplacedLayer, SkippedLayer
from analysis.convert.independent import independent_fit
from analysis.convert.sequential import SequentialSettings, heldout_split, sequential_fit
from analysis.data.batches import as_images
from analysis.data.models import default_preprocess
from ghostnet.layers import GhostConv, ghost_conv_like

__all__ = ["GhostConv", "GhostifyError", "GhostifyResult", "ReplacedLayer", "SequentialSettings", "SkippedLayer",
           "ghostify"]

MODES = ("sequential", "independent")


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _check(init: Any, mode: Any, calibrate_steps: Any, calibration_images: Any, model: Any) -> int:
    if init not in (None, "fit"):
        raise GhostifyError(f"init must be None (random) or 'fit' (from the pretrained conv), got {init!r}")
    if mode not in MODES:
        raise GhostifyError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    steps = check_count(calibrate_steps, "calibrate_steps", GhostifyError, " (0: no calibration)")
    if steps and init != "fit":
        raise GhostifyError("calibrate_steps > 0 needs init='fit' (calibration refines a fitted module)")
    if steps and mode != "independent":
        raise GhostifyError("calibrate_steps > 0 needs mode='independent': the sequential fit already solves each "
                            "layer's least squares on the converted network's inputs")
    if init == "fit" and calibration_images is None:
        raise GhostifyError("init='fit' needs calibration_images: a few unlabelled images (e.g. 'samples', a "
                            "folder, or an N x C x H x W tensor) to fit the cheap ops on")
    if not isinstance(model, nn.Module):
        raise GhostifyError(f"model must be an nn.Module, got {type(model).__name__}")
    return steps


def _consumer_settings(consumer_refit: Any, settings: Any, init: Any, mode: Any) -> SequentialSettings | None:
    if not isinstance(consumer_refit, bool):
        raise GhostifyError(f"consumer_refit must be True or False, got {consumer_refit!r}")
    if settings is not None and not isinstance(settings, SequentialSettings):
        raise GhostifyError(f"settings must be a SequentialSettings, got {type(settings).__name__}")
    if not (consumer_refit or (settings is not None and settings.consumer_refit)):
        return settings
    if init != "fit" or mode != "sequential":
        raise GhostifyError("consumer_refit=True needs init='fit' and mode='sequential' (the refit runs inside "
                            "the sequential fit, on the converted network's inputs)")
    return dataclasses.replace(settings or SequentialSettings(), consumer_refit=True)


def ghostify(model: nn.Module, layers: str | Sequence[str] | None = None, ratio: int | Mapping[str, int] = 2,
             dw_size: int = 3,
             init: str | None = None, calibration_images: Any = None, *, mode: str = "sequential",
             reestimate_bn: bool = False, settings: SequentialSettings | None = None,
             consumer_refit: bool = False, min_channels: int = 16,
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
            ``"samples:calibration"``, a tensor, a list of tensors, a Dataset or DataLoader,
            ``analysis.load_images(..., views=N)``); required for ``init="fit"``.
        mode: ``"sequential"`` (default; inputs from the converted network, both halves refitted) or
            ``"independent"`` (each conv on the original maps, intrinsic channels exact).
        reestimate_bn: after a fit, re-estimate the running statistics of the BNs that run after the first
            replaced conv on the calibration images. Default False: on mobilenet_v2 with the offline sample
            photos it lowers the agreement (docs/ghostify.md); use it with calibration images that represent
            the training data.
        settings: the sequential fit's positions, held-out fraction, iterations, ridge, seed
            (:class:`~analysis.convert.sequential.SequentialSettings`).
        consumer_refit: with the sequential fit, also re-solve by least squares each dense conv that consumes a
            replaced conv and stays dense, so its output on the converted inputs matches the original's
            (:mod:`analysis.convert.consumer`; same as ``settings.consumer_refit``). Default False.
        calibrate_steps: if > 0 (needs ``init="fit"`` and ``mode="independent"``), Adam steps of layer-wise MSE
            calibration per layer.
        preprocess: how image files become tensors (e.g. ``load_model(...).preprocess``); default ImageNet
            evaluation preprocessing (``analysis.data.models.default_preprocess()``).

    Returns:
        ``(new_model, GhostifyResult)``; the new model is in eval mode.
    """
    ratios, ratio, layers = per_layer_ratios(ratio, layers, GhostifyError)
    dw_size = check_odd_size(dw_size, "dw_size", GhostifyError)
    calibrate_steps = _check(init, mode, calibrate_steps, calibration_images, model)
    settings = _consumer_settings(consumer_refit, settings, init, mode)
    chosen, skipped = choose_layers(model, layers, ratio, min_channels)
    per = {n: ratios.get(n, ratio) for n in chosen}  # each chosen conv's s
    new = copy.deepcopy(model)
    result = GhostifyResult(skipped=skipped, ratio=ratio, dw_size=dw_size, init=init,
                            calibrate_steps=calibrate_steps, mode=None if init is None else mode)
    if not chosen:
        new.eval()
        return new, result
    modules = dict(model.named_modules())
    if init is None:
        for n in chosen:
            with torch.inference_mode(False):
                ghost = ghost_conv_like(modules[n], per[n], dw_size)
            ghost.train(modules[n].training)
            _set_submodule(new, n, ghost)
            result.replaced.append(ReplacedLayer.blank(n, modules[n], ghost, per[n], dw_size))
            result.configs[n] = ghost.config()
        new.eval()
        return new, result
    source = as_images(calibration_images, preprocess or default_preprocess(), name="calibration_images",
                       error=GhostifyError)
    images = source.tensor()
    photos = _photo_names(source, images.shape[0])
    if mode == "independent":
        done = independent_fit(model, chosen, images, per, dw_size, calibrate_steps, calibrate_lr,
                               calibrate_batch)
        for n in chosen:
            ghost, entry = done[n]
            ghost.train(modules[n].training)
            _set_submodule(new, n, ghost)
            result.replaced.append(entry)
            result.configs[n] = ghost.config()
    else:
        try:
            reports, result.consumers = sequential_fit(model, new, chosen, images, per, dw_size, settings, photos)
            st = settings or SequentialSettings()
            result.heldout = heldout_split(images.shape[0], st.holdout, st.seed, photos)[1]
            result.settings = dataclasses.asdict(st)
        except RuntimeError as exc:
            raise GhostifyError(f"{exc}; leave such layers out of layers") from exc
        for n, rep in reports.items():
            entry = ReplacedLayer.blank(n, modules[n], rep.module, per[n], dw_size)
            entry.intrinsic, entry.fit_error = rep.intrinsic, rep.heldout_error
            entry.ghost_error, entry.start_error = rep.ghost_error, rep.start_error
            entry.ghost_error_max = rep.ghost_error_max
            result.replaced.append(entry)
            result.configs[n] = rep.module.config()
    if reestimate_bn and images.shape[0] >= 2:
        batch = (settings or SequentialSettings()).batch_size
        result.bn_images = _reestimate_bn(new, images, after=result.names, batch_size=max(2, batch))
    new.eval()
    return new, result


def _photo_names(source: Any, n: int) -> list[str] | None:
    """The photo each of the ``n`` calibration images is a view of (an image source of files, samples or
    views knows them), else None: then the sequential fit can hold out single images only."""
    names = source.source.photo_names if source.kind == "source" else None  # kind "source": an ImageSource
    return names if names is not None and len(names) == n else None
