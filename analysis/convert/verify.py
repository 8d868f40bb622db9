"""Verify a replacement (e.g. ``analysis.convert.ghostify``): does the converted network still work, what does
it save, and how sure are we?

:func:`verify_replacement` compares an original network with a modified copy of it on evaluation images:

* **held out**: given the calibration images (``calibration=``), evaluation images that share a photo with
  them are refused (compared by content, ``analysis.data.overlap``) unless ``allow_calibration=True``;
* **agreement** with the original (top-1, top-5), logits cosine and KL, each with an interval
  (``analysis.convert.evaluate``);
* **accuracy** when labels exist (a folder of class folders, a Dataset/DataLoader of ``(image, label)``, or
  ``labels=``): top-1/top-5 of both models, the paired difference with McNemar's test and its interval, and
  the classes that lose most;
* **per replaced layer**: the output error inside the network (earlier errors included) and in isolation
  (the new module on the original layer's input), SSE / centred SS, and the cosine, on the first
  ``layer_images`` evaluation images;
* **savings**: parameters used by the forward pass and MACs per image (``count_macs``; what that count leaves
  out is stated in the report);
* **latency** at batch 1 and a larger batch, BN folded in both, threads pinned, the two models interleaved,
  median and IQR (``analysis.convert.latency``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from analysis._core.errors import GhostmapsError
from analysis._core.modes import eval_mode, model_device, model_dtype
from analysis._core.numerics import relative_error
from analysis._core.results import Record, Result, number, plain
from analysis.convert.evaluate import Accuracy, Agreement, accuracy, agreement, compare_outputs
from analysis.convert.latency import Latency, measure_latency
from analysis.convert.macs import CONVENTION, count_macs
from analysis.data.labelled import evaluation_set
from analysis.data.overlap import check_disjoint
from analysis.hooks import capture

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["MACS_LEAVE_OUT", "LayerCheck", "VerificationReport", "verify_replacement"]

#: What the MAC count does not include (so a MAC ratio is not read as a speed ratio).
MACS_LEAVE_OUT = ("BatchNorm (folded into the convs at inference), activations, pooling, element-wise adds and "
                  "biases, and the memory-bound data movement of Ghost modules (the concatenation of intrinsic and "
                  "ghost maps, index_select/slicing of channels): these cost time, not multiply-adds")


@dataclass(eq=False)
class LayerCheck(Record):
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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(**{k: number(v) if k in cls._FLOATS else v for k, v in data.items()})


@dataclass(eq=False)
class VerificationReport(Result):
    """Result of :func:`verify_replacement` (plain data); MACs are per image at the images' size.

    ``agreement`` (:class:`~analysis.convert.evaluate.Agreement`), ``accuracy`` (labelled only, else None),
    ``latency`` (None when not measured), ``layers`` (one :class:`LayerCheck` per replaced layer),
    ``calibration``: how the evaluation images relate to the calibration images ("disjoint", "not checked",
    or "overlap allowed"), ``evaluation``: what was evaluated on. ``rows()``: one per replaced layer; the
    whole-model numbers are in ``summary()`` and ``to_dict()``.
    """

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    agreement: Agreement
    n_images: int
    input_size: tuple[int, ...]
    evaluation: str
    calibration: str
    accuracy: Accuracy | None = None
    layers: list[LayerCheck] = field(default_factory=list)
    latency: Latency | None = None
    note: str = ""
    replaced: list[str] | None = None  # the replaced layers' names (``layers`` is empty when not checked)

    @property
    def params_ratio(self) -> float:
        """params before / after (the paper's compression ratio r)."""
        return self.params_before / self.params_after if self.params_after else math.inf

    @property
    def macs_ratio(self) -> float:
        """MACs before / after (the ratio in MACs, not in time: see ``MACS_LEAVE_OUT``)."""
        return self.macs_before / self.macs_after if self.macs_after else math.inf

    @property
    def top1_agreement(self) -> float:
        return self.agreement.top1.value

    @property
    def logits_cosine(self) -> float:
        return self.agreement.logits_cosine.value

    @property
    def logits_kl(self) -> float:
        return self.agreement.logits_kl.value

    @property
    def latency_ratio(self) -> float | None:
        """Median paired latency ratio replaced / original at the first timed batch size (batch 1 by default)."""
        return None if self.latency is None else self.latency.timings[0].ratio

    @property
    def latency_before_ms(self) -> float | None:
        """Median ms of the original at the first timed batch size (None when not measured)."""
        return None if self.latency is None else self.latency.timings[0].original_ms

    @property
    def latency_after_ms(self) -> float | None:
        """Median ms of the replacement at the first timed batch size (None when not measured)."""
        return None if self.latency is None else self.latency.timings[0].replaced_ms

    @property
    def latency_device(self) -> str | None:
        return None if self.latency is None else self.latency.device

    def summary(self) -> dict[str, Any]:
        """The whole-model numbers as one flat dict (values and interval limits)."""
        d: dict[str, Any] = {"params_before": self.params_before, "params_after": self.params_after,
                             "params_ratio": self.params_ratio, "macs_before": self.macs_before,
                             "macs_after": self.macs_after, "macs_ratio": self.macs_ratio, "n_images": self.n_images,
                             "n_photos": self.agreement.n_photos, "calibration": self.calibration,
                             "replaced_layers": self.n_replaced}
        scores = {"top1_agreement": self.agreement.top1, "top5_agreement": self.agreement.top5,
                  "logits_cosine": self.agreement.logits_cosine, "logits_kl": self.agreement.logits_kl}
        if self.accuracy is not None:
            a = self.accuracy
            scores.update({"original_top1": a.original_top1, "replaced_top1": a.replaced_top1,
                           "original_top5": a.original_top5, "replaced_top5": a.replaced_top5,
                           "top1_difference": a.difference_top1, "top5_difference": a.difference_top5})
            d.update({"mcnemar_top1_p": a.mcnemar_top1.p_value, "mcnemar_top5_p": a.mcnemar_top5.p_value})
        for k, e in scores.items():
            d.update({k: e.value, f"{k}_low": e.low, f"{k}_high": e.high})
        if self.latency is not None:
            for r in self.latency.timings:
                d.update({f"latency_b{r.batch}_original_ms": r.original_ms, f"latency_b{r.batch}_replaced_ms":
                          r.replaced_ms, f"latency_b{r.batch}_ratio": r.ratio})
        return plain(d)

    @property
    def n_replaced(self) -> int:
        """How many layers were replaced (also when their per-layer checks were skipped, ``layer_images=0``)."""
        return len(self.replaced) if self.replaced is not None else len(self.layers)

    _COLUMNS = LayerCheck._COLUMNS

    def rows(self) -> list[dict[str, Any]]:
        """One row per replaced layer."""
        return [c.to_dict() for c in self.layers]

    def to_dict(self) -> dict[str, Any]:
        return plain({
            "params_before": self.params_before, "params_after": self.params_after, "macs_before": self.macs_before,
            "macs_after": self.macs_after, "macs_convention": CONVENTION, "macs_leave_out": MACS_LEAVE_OUT,
            "n_images": self.n_images, "input_size": list(self.input_size), "evaluation": self.evaluation,
            "calibration": self.calibration, "note": self.note, "agreement": self.agreement.to_dict(),
            "accuracy": None if self.accuracy is None else self.accuracy.to_dict(),
            "latency": None if self.latency is None else self.latency.to_dict(),
            "layers": [c.to_dict() for c in self.layers], "replaced": self.replaced})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The report back; the derived numbers (ratios, the convention) are recomputed, not read."""
        acc, lat = data.get("accuracy"), data.get("latency")
        return cls(int(data["params_before"]), int(data["params_after"]), int(data["macs_before"]),
                   int(data["macs_after"]), Agreement.from_dict(data["agreement"]), int(data["n_images"]),
                   tuple(int(v) for v in data["input_size"]), str(data["evaluation"]), str(data["calibration"]),
                   None if acc is None else Accuracy.from_dict(acc), [LayerCheck.from_dict(c) for c in data["layers"]],
                   None if lat is None else Latency.from_dict(lat), str(data.get("note", "")),
                   None if data.get("replaced") is None else [str(n) for n in data["replaced"]])

    def __str__(self) -> str:
        ag = self.agreement
        level = f"{ag.top1.level:.0%}"
        lines = [f"verification on {self.n_images} images ({ag.n_photos} photos) of {self.evaluation}; "
                 f"{self.n_replaced} layers replaced"
                 f"{'' if self.layers or not self.n_replaced else ' (per-layer errors not measured)'}; "
                 f"calibration: {self.calibration}",
                 f"  params {self.params_before:,} -> {self.params_after:,} (x{self.params_ratio:.2f} smaller)",
                 f"  MACs   {self.macs_before / 1e6:.1f}M -> {self.macs_after / 1e6:.1f}M (x{self.macs_ratio:.2f} "
                 "fewer; BN, activations, adds and the Ghost concatenation not counted)",
                 f"  top-1 agreement {ag.top1}, top-5 agreement {ag.top5}, logits cosine {ag.logits_cosine}, "
                 f"KL {ag.logits_kl} nats ({level} intervals: agreement {ag.top1.method}; cosine "
                 f"{ag.logits_cosine.method}; KL {ag.logits_kl.method})"]
        if self.accuracy is not None:
            a = self.accuracy
            lines.append(f"  labelled: top-1 original {a.original_top1}, replaced {a.replaced_top1}; "
                         f"difference {a.difference_top1} (McNemar p = {a.mcnemar_top1.p_value:.3g}, "
                         f"{a.mcnemar_top1.method})")
            lines.append(f"            top-5 original {a.original_top5}, replaced {a.replaced_top5}; "
                         f"difference {a.difference_top5} (McNemar p = {a.mcnemar_top5.p_value:.3g})")
            if a.worst_classes:
                lines.append("  classes losing most (top-1): " + ", ".join(
                    f"{c.label} ({c.original:.0%} -> {c.replaced:.0%}, n={c.n})" for c in a.worst_classes))
        lines.append("  " + (str(self.latency).replace("\n", "\n  ") if self.latency else "latency not measured"))
        lines += [f"  {c.name}: rel error {c.rel_error:.4f} (isolated {c.isolated_rel_error:.4f}), "
                  f"cosine {c.cosine:.4f}" for c in self.layers]
        if self.note:
            lines.append(f"  note: {self.note}")
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
    with eval_mode(model), torch.no_grad(), capture(model, [f"{n}#0" for n in names], to="cpu",
                                                    inputs=inputs) as maps:
        logits = model(x)
    if not isinstance(logits, torch.Tensor):
        raise GhostmapsError(f"{type(model).__name__} returned {type(logits).__name__}; verify_replacement "
                             "needs a model returning a logits tensor (N x classes)")
    outs = {n: maps[n] for n in names if n in maps}  # a tuple or dict output has no plain entry: not recorded
    return logits.detach().cpu(), {n: maps.inputs[n] for n in names if n in maps.inputs}, outs


def _layer_checks(original: nn.Module, replaced: nn.Module, names: list[str], x: torch.Tensor) -> list[LayerCheck]:
    o_mods, r_mods = dict(original.named_modules()), dict(replaced.named_modules())
    _, ins_o, outs_o = _io(original, names, x, inputs=True)
    _, _, outs_r = _io(replaced, names, x, inputs=False)
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
            cosine=_cos(outs_r[n], outs_o[n]), params_before=sum(p.numel() for p in o_mods[n].parameters()),
            params_after=sum(p.numel() for p in mod.parameters())))
    return checks


def _check_int(name: str, v: Any, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise GhostmapsError(f"{name} must be an int >= {low}, got {v!r}.")
    return v


def verify_replacement(original: nn.Module, replaced: nn.Module, images: Any, *, calibration: Any = None,
                       allow_calibration: bool = False, labels: Any = None, class_names: Sequence[str] | None = None,
                       transform: Any = None, layers: list[str] | None = None, layer_images: int = 16,
                       level: float = 0.95, latency_repeats: int = 15, latency_batches: Sequence[int] = (1, 16),
                       threads: int | None = None, device: str | torch.device | None = None, batch_size: int = 32,
                       worst_classes: int = 5, progress: bool = False, note: str = "",
                       latency_runs: int | None = None) -> VerificationReport:
    """Compare ``replaced`` (a modified copy of ``original``) with ``original`` on evaluation ``images``.

    Args:
        original, replaced: the two networks (neither is changed; eval mode is used and restored).
        images: evaluation images: a folder (with class folders: labelled), files, globs,
            ``"samples:evaluation"``, ``load_images(...)`` (views too), a tensor (with ``labels=``), or a
            Dataset/DataLoader yielding images or ``(image, label)``.
        calibration: the images the replacement was fitted on; evaluation images sharing a photo with them
            are refused (``OverlapError``) unless ``allow_calibration=True``. Without it nothing is checked, and
            the report says so.
        labels, class_names: class indices for a tensor; the model's class names, to map named class folders.
        transform: preprocessing for files and sample photos (default ImageNet evaluation preprocessing).
        layers: the replaced layers' names; default: every module whose type differs between the two.
        layer_images: evaluation images used for the per-layer errors (their maps are held in memory).
        level: confidence level of every interval.
        latency_repeats: interleaved timed forwards per model and batch size (0 skips latency);
            ``latency_batches``: batch sizes to time; ``threads``: CPU threads to pin (default: current).
        worst_classes: how many of the classes that lose most to list.
        latency_runs: the old name of ``latency_repeats`` (kept for callers).
    """
    if not isinstance(original, nn.Module) or not isinstance(replaced, nn.Module):
        raise GhostmapsError("original and replaced must be nn.Modules (the network and its modified copy)")
    repeats = _check_int("latency_repeats", latency_repeats if latency_runs is None else latency_runs, 0)
    layer_images = _check_int("layer_images", layer_images, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    worst_classes = _check_int("worst_classes", worst_classes, 0)
    evalset = evaluation_set(images, transform, labels)
    if calibration is None:
        status = "not checked (no calibration images given)"
    else:
        shared = check_disjoint(calibration, evalset.source, allow_overlap=allow_calibration)
        status = (f"OVERLAP ALLOWED: {len(shared)} evaluation image(s) or photo(s) are calibration images"
                  if shared else "disjoint from the calibration images (by content)")
    dev = torch.device(device) if device is not None else model_device(replaced)
    dtype = model_dtype(replaced)
    names = _changed_layers(original, replaced) if layers is None else list(layers)
    o_mods, r_mods = dict(original.named_modules()), dict(replaced.named_modules())
    missing = [n for n in names if n not in o_mods or n not in r_mods]
    if missing:
        raise GhostmapsError(f"layers {missing} are not modules of both models; pass names present in both "
                             "(default: the modules whose type changed)")

    out = compare_outputs(original, replaced, evalset, dev, dtype, batch_size, class_names, progress)
    first = evalset.first_images(layer_images)
    first = first.to(device=dev, dtype=dtype)
    checks = _layer_checks(original, replaced, names, first[:layer_images]) if names and layer_images else []
    one = first[:1]
    before, after = count_macs(original, one), count_macs(replaced, one)
    lat = None
    if repeats:
        lat = measure_latency(original, replaced, first, latency_batches, max(2, repeats), threads=threads)
    return VerificationReport(
        params_before=before.params, params_after=after.params, macs_before=before.total_macs,
        macs_after=after.total_macs, agreement=agreement(out, level), n_images=out.n,
        input_size=(out.n, *first.shape[1:]), evaluation=evalset.description, calibration=status,
        accuracy=accuracy(out, level, worst_classes), layers=checks, latency=lat, note=note, replaced=names)
