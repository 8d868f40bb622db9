"""What a replacement (e.g. ``analysis.convert.ghostify``) saves and what it costs, measured on images.

:func:`verify_replacement` compares an original network with a modified copy of it:

* **savings**: parameters used by the forward pass and MACs per image (``analysis.macs.count_macs``), before
  and after;
* **per replaced layer** (modules whose type changed, or the names given): the output error inside the
  network (``rel_error``: the replaced network's layer output against the original's, errors of earlier
  layers included) and in isolation (``isolated_rel_error``: the new module fed the original layer's input),
  both as sum of squared errors / centred sum of squares (per-channel means, as ``analysis.reconstruct``),
  plus the cosine of the flattened outputs;
* **end to end**: mean per-image cosine of the logits, mean KL(softmax(original) || softmax(replaced)) in
  nats, and top-1 agreement with the original;
* **latency** (median of timed forwards of the image batch) before/after and their ratio, measured on the
  device the images ran on (``latency_device``: ``cpu``, ``cuda:0``, ...; CUDA runs are synchronized, so
  they time the kernels, not their launch) on the machine at hand (noisy on shared machines: read it as a
  rough indication).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from analysis._core.errors import GhostmapsError
from analysis._core.modes import eval_mode, model_device, model_dtype
from analysis._core.numerics import relative_error
from analysis._core.results import Result, number, plain
from analysis._core.validation import check_count
from analysis.convert.macs import count_macs
from analysis.data.batches import as_images
from analysis.data.models import default_preprocess
from analysis.hooks import CapturedMaps, capture

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["LayerCheck", "VerificationReport", "verify_replacement"]


@dataclass
class LayerCheck(Result):
    """One replaced layer: output errors in the network and in isolation, cosine, and its own cost (an inf
    error, of a constant original output, is None in ``to_dict`` and read back as NaN)."""

    name: str
    type_before: str
    type_after: str
    rel_error: float
    isolated_rel_error: float
    cosine: float
    params_before: int
    params_after: int

    _COLUMNS = ("name", "type_before", "type_after", "rel_error", "isolated_rel_error", "cosine", "params_before",
                "params_after")
    _FLOATS = ("rel_error", "isolated_rel_error", "cosine")

    def rows(self) -> list[dict[str, Any]]:
        return [self.to_dict()]

    def to_dict(self) -> dict[str, Any]:
        return plain(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(**{k: number(v) if k in cls._FLOATS else v for k, v in data.items()})


@dataclass
class VerificationReport(Result):
    """Result of :func:`verify_replacement` (plain data). MACs are per image at the images' size. ``rows()``:
    one per replaced layer (``LayerCheck``); the whole-model numbers are in ``summary()`` and ``to_dict()``."""

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    logits_cosine: float
    logits_kl: float
    top1_agreement: float
    n_images: int
    input_size: tuple[int, ...]
    layers: list[LayerCheck] = field(default_factory=list)
    latency_before_ms: float | None = None
    latency_after_ms: float | None = None
    latency_device: str | None = None
    note: str = ""

    @property
    def params_ratio(self) -> float:
        """params before / after (the paper's compression ratio r)."""
        return self.params_before / self.params_after if self.params_after else math.inf

    @property
    def macs_ratio(self) -> float:
        """MACs before / after (speed-up ratio in MACs)."""
        return self.macs_before / self.macs_after if self.macs_after else math.inf

    @property
    def latency_ratio(self) -> float | None:
        """Latency after / before (< 1: faster); None when latency was not measured."""
        if self.latency_before_ms is None or self.latency_after_ms is None or not self.latency_before_ms:
            return None
        return self.latency_after_ms / self.latency_before_ms

    def summary(self) -> dict[str, Any]:
        """The whole-model numbers as one flat dict."""
        return {"params_before": self.params_before, "params_after": self.params_after,
                "params_ratio": self.params_ratio, "macs_before": self.macs_before, "macs_after": self.macs_after,
                "macs_ratio": self.macs_ratio, "logits_cosine": self.logits_cosine, "logits_kl": self.logits_kl,
                "top1_agreement": self.top1_agreement, "n_images": self.n_images,
                "latency_before_ms": self.latency_before_ms, "latency_after_ms": self.latency_after_ms,
                "latency_ratio": self.latency_ratio, "latency_device": self.latency_device,
                "replaced_layers": len(self.layers)}

    _COLUMNS = LayerCheck._COLUMNS
    _FIELDS = ("params_before", "params_after", "macs_before", "macs_after", "logits_cosine", "logits_kl",
               "top1_agreement", "n_images", "latency_before_ms", "latency_after_ms", "latency_device", "note")

    def rows(self) -> list[dict[str, Any]]:
        return [layer.to_dict() for layer in self.layers]

    def to_dict(self) -> dict[str, Any]:
        d = self.summary()
        d.update({"input_size": list(self.input_size), "note": self.note,
                  "macs_convention": "MACs = FlopCounterMode FLOPs / 2 (conv/linear/matmul only); params = "
                                     "parameters the forward pass uses",
                  "layers": [layer.to_dict() for layer in self.layers]})
        return plain(d)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The report back; the derived numbers (ratios, counts, the convention) are recomputed, not read."""
        kept = {k: data[k] for k in cls._FIELDS if k in data}
        for k in ("logits_cosine", "logits_kl", "top1_agreement"):
            kept[k] = number(kept[k])
        return cls(**kept, input_size=tuple(int(v) for v in data["input_size"]),
                   layers=[LayerCheck.from_dict(c) for c in data["layers"]])

    def __str__(self) -> str:
        lat = self.latency_ratio
        lines = [
            f"verification on {self.n_images} images {tuple(self.input_size[1:])}: {len(self.layers)} layers replaced",
            f"  params {self.params_before:,} -> {self.params_after:,} (x{self.params_ratio:.2f} smaller)",
            f"  MACs   {self.macs_before / 1e6:.1f}M -> {self.macs_after / 1e6:.1f}M (x{self.macs_ratio:.2f} fewer)",
            f"  logits cosine {self.logits_cosine:.4f}, KL {self.logits_kl:.4g} nats, "
            f"top-1 agreement {self.top1_agreement:.1%}",
            "  latency " + ("not measured" if lat is None else f"({self.latency_device}) {self.latency_before_ms:.1f}"
                                                                f" -> {self.latency_after_ms:.1f} ms (x{lat:.2f})"),
        ]
        lines += [f"  {c.name}: rel error {c.rel_error:.4f} (isolated {c.isolated_rel_error:.4f}), "
                  f"cosine {c.cosine:.4f}" for c in self.layers]
        return "\n".join(lines)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    na, nb = float(a.norm()), float(b.norm())
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b) / (na * nb)


def _changed_layers(original: nn.Module, replaced: nn.Module) -> list[str]:
    """Names present in both models whose module type changed (outermost only)."""
    orig = dict(original.named_modules())
    found: list[str] = []
    for name, m in replaced.named_modules():
        if not name or name not in orig or type(orig[name]) is type(m):
            continue
        if any(name.startswith(f + ".") for f in found):
            continue
        found.append(name)
    return found


def _io(model: nn.Module, names: list[str], x: torch.Tensor, inputs: bool = True
        ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Logits and the first-call inputs (when asked) and outputs of ``names``, copied to the CPU: one eval-mode,
    gradient-free forward under ``capture`` (hooks always removed, train/eval flags restored)."""
    hooks = capture(model, [f"{n}#0" for n in names], to="cpu", inputs=inputs) if names else \
        nullcontext(CapturedMaps())  # nothing replaced: the logits only
    with eval_mode(model), torch.no_grad(), hooks as maps:
        logits = model(x)
    if not isinstance(logits, torch.Tensor):
        raise GhostmapsError(f"{type(model).__name__} returned {type(logits).__name__}; verify_replacement "
                             "needs a model returning a logits tensor (N x classes)")
    outs = {n: maps[n] for n in names if n in maps}  # a tuple or dict output has no plain entry: not recorded
    return logits.detach().cpu(), {n: maps.inputs[n] for n in names if n in maps.inputs}, outs


def _synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so a wall-clock timer measures kernels rather than their launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _latency_ms(model: nn.Module, x: torch.Tensor, runs: int) -> float:
    """Median wall-clock milliseconds of ``runs`` forwards of ``x`` (after one warm-up), on ``x``'s device."""
    with eval_mode(model), torch.no_grad():
        model(x)  # warm-up
        times = []
        for _ in range(runs):
            _synchronize(x.device)
            t0 = time.perf_counter()
            model(x)
            _synchronize(x.device)
            times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def verify_replacement(original: nn.Module, replaced: nn.Module, images: Any, layers: list[str] | None = None,
                       latency_runs: int = 5, device: str | torch.device | None = None, note: str = "",
                       preprocess: Callable[[Any], torch.Tensor] | None = None) -> VerificationReport:
    """Compare ``replaced`` (a modified copy of ``original``) with ``original`` on ``images``.

    Args:
        original, replaced: the two networks (neither is modified; eval mode is used and restored).
        images: any image source of ``analysis.data.batches`` (files, folders, globs, ``"samples"``, an
            N x C x H x W tensor, a list of tensors, a Dataset or DataLoader, ``analysis.load_images(...)``).
        layers: the replaced layers' names; default: every module name whose type differs between the two.
        latency_runs: timed forwards per model (median), on the images' device; 0 skips latency.
        note: free text stored in the report (e.g. whether the images were also the calibration images).
        preprocess: how image files become tensors (e.g. ``load_model(...).preprocess``); default ImageNet
            evaluation preprocessing.
    """
    if not isinstance(original, nn.Module) or not isinstance(replaced, nn.Module):
        raise GhostmapsError("original and replaced must be nn.Modules (the network and its modified copy)")
    latency_runs = check_count(latency_runs, "latency_runs", hint=" (0 skips timing)")
    x = as_images(images, preprocess or default_preprocess()).tensor()
    x = x.to(device=model_device(replaced) if device is None else device, dtype=model_dtype(replaced))
    names = _changed_layers(original, replaced) if layers is None else list(layers)
    o_mods, r_mods = dict(original.named_modules()), dict(replaced.named_modules())
    missing = [n for n in names if n not in o_mods or n not in r_mods]
    if missing:
        raise GhostmapsError(f"layers {missing} are not modules of both models; pass names present in both "
                             "(default: the modules whose type changed)")

    logits_o, ins_o, outs_o = _io(original, names, x)
    logits_r, _, outs_r = _io(replaced, names, x, inputs=False)
    if logits_o.shape != logits_r.shape:
        raise GhostmapsError(f"the models' outputs differ in shape ({tuple(logits_o.shape)} vs "
                             f"{tuple(logits_r.shape)}); a replacement must keep the output shape")

    checks = []
    for n in names:
        if n not in outs_o or n not in outs_r:
            raise GhostmapsError(f"layer {n!r} produced no tensor output in one of the models on these images")
        mod = r_mods[n]
        with eval_mode(mod), torch.no_grad():
            iso = mod(ins_o[n].to(x)).cpu() if n in ins_o else outs_r[n]
        checks.append(LayerCheck(
            name=n, type_before=type(o_mods[n]).__name__, type_after=type(mod).__name__,
            rel_error=relative_error(outs_r[n], outs_o[n]), isolated_rel_error=relative_error(iso, outs_o[n]),
            cosine=_cos(outs_r[n], outs_o[n]),
            params_before=sum(p.numel() for p in o_mods[n].parameters()),
            params_after=sum(p.numel() for p in mod.parameters())))

    lo, lr = logits_o.double().flatten(1), logits_r.double().flatten(1)
    cos = float(F.cosine_similarity(lo, lr, dim=1, eps=1e-12).mean())
    logp, logq = F.log_softmax(lo, dim=1), F.log_softmax(lr, dim=1)
    kl = float((logp.exp() * (logp - logq)).sum(1).mean())
    agree = float((lo.argmax(1) == lr.argmax(1)).double().mean())

    one = x[:1]
    before, after = count_macs(original, one), count_macs(replaced, one)
    lat_b = lat_a = None
    if latency_runs:
        lat_b, lat_a = _latency_ms(original, x, latency_runs), _latency_ms(replaced, x, latency_runs)
    return VerificationReport(
        params_before=before.params, params_after=after.params, macs_before=before.total_macs,
        macs_after=after.total_macs, logits_cosine=cos, logits_kl=kl, top1_agreement=agree,
        n_images=int(x.shape[0]), input_size=tuple(x.shape), layers=checks, latency_before_ms=lat_b,
        latency_after_ms=lat_a, latency_device=str(x.device) if latency_runs else None, note=note)
