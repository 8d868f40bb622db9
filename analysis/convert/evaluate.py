"""End-to-end comparison of an original network and its replacement on evaluation images: what each image
says (agreement, logits cosine and KL, correctness when labelled) and the scores with their intervals.

Definitions, per image, with ``p`` = softmax(original logits), ``q`` = softmax(replaced logits):

* top-1 agreement: the two models' top-1 classes are equal;
* top-5 agreement: the original's top-1 class is among the replacement's five highest;
* logits cosine: cosine of the two logit vectors; KL: ``KL(p || q)`` in nats;
* with labels: top-1 / top-5 correctness of each model.

Proportions get Clopper–Pearson intervals, means a t interval over images; when the images are views of
fewer photos (``load_images(..., views=)``) both become intervals over photos (``analysis.stats.intervals``),
since views of one photo are not independent. Accuracy differences are paired: McNemar's test and Newcombe's
interval of the difference on the same images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from analysis._core.errors import GhostmapsError
from analysis._core.modes import eval_mode
from analysis._core.results import Result, plain
from analysis.data.labelled import EvaluationSet, LabelError
from analysis.stats.intervals import Estimate, McNemar, mcnemar, mean_interval, paired_difference, proportion

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Accuracy", "Agreement", "ClassLoss", "Outcomes", "accuracy", "agreement", "compare_outputs"]


@dataclass
class Outcomes:
    """Per-image results of running both models (see the module docstring), in evaluation order."""

    agree1: np.ndarray
    agree5: np.ndarray
    cosine: np.ndarray
    kl: np.ndarray
    photos: list[str]
    num_classes: int
    labels: np.ndarray | None = None
    correct1: tuple[np.ndarray, np.ndarray] | None = None  # (original, replaced)
    correct5: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def n(self) -> int:
        return int(self.agree1.size)

    @property
    def groups(self) -> list[str] | None:
        """The photo of each image when some photo gives several images (views), else None."""
        return self.photos if len(set(self.photos)) < len(self.photos) else None


def _topk_hits(logits: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == target[:, None]).any(1)


def compare_outputs(original: nn.Module, replaced: nn.Module, evalset: EvaluationSet, device: torch.device,
                    dtype: torch.dtype, batch_size: int = 32, class_names: Any = None,
                    progress: bool = False) -> Outcomes:
    """Run both models over ``evalset`` batch by batch (eval mode, no gradients) and keep per-image outcomes;
    labels are checked against the model's classes."""
    from tqdm.auto import tqdm

    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("a1", "a5", "cos", "kl", "y", "c1o", "c1r", "c5o", "c5r")}
    photos: list[str] = []
    num_classes = None
    bar = tqdm(desc="verify", unit="img", disable=not progress, dynamic_ncols=True)
    with eval_mode(original), eval_mode(replaced), torch.no_grad():
        if evalset.folder_classes is None:
            batches = evalset.batches(batch_size)
        else:
            batches = _mapped(evalset, original, batch_size, device, dtype, class_names)
        for batch in batches:
            x = batch.images.to(device=device, dtype=dtype)
            lo, lr = original(x), replaced(x)
            for name, out in (("original", lo), ("replaced", lr)):
                if not isinstance(out, torch.Tensor) or out.dim() != 2:
                    raise GhostmapsError(f"the {name} model returned {type(out).__name__} "
                                         f"{tuple(getattr(out, 'shape', ()))}; verification needs N x classes logits.")
            if lo.shape != lr.shape:
                raise GhostmapsError(f"the models' outputs differ in shape ({tuple(lo.shape)} vs {tuple(lr.shape)});"
                                     " a replacement must keep the output shape.")
            lo, lr = lo.detach().double().cpu(), lr.detach().double().cpu()
            num_classes = lo.shape[1]
            top_o = lo.argmax(1)
            parts["a1"].append((lr.argmax(1) == top_o).numpy())
            parts["a5"].append(_topk_hits(lr, top_o, 5).numpy())
            parts["cos"].append(F.cosine_similarity(lo, lr, dim=1, eps=1e-12).numpy())
            logp, logq = F.log_softmax(lo, dim=1), F.log_softmax(lr, dim=1)
            parts["kl"].append((logp.exp() * (logp - logq)).sum(1).clamp_min(0).numpy())
            if batch.labels is not None:
                y = batch.labels.cpu().long()
                bad = y[(y < 0) | (y >= num_classes)]
                if bad.numel():
                    raise LabelError(f"labels {sorted(set(bad.tolist()))[:5]} are outside the model's "
                                     f"{num_classes} classes (0..{num_classes - 1}); pass labels the model predicts.")
                parts["y"].append(y.numpy())
                parts["c1o"].append((top_o == y).numpy())
                parts["c1r"].append((lr.argmax(1) == y).numpy())
                parts["c5o"].append(_topk_hits(lo, y, 5).numpy())
                parts["c5r"].append(_topk_hits(lr, y, 5).numpy())
            photos += batch.photos
            bar.update(x.shape[0])
    bar.close()
    if not photos:
        raise GhostmapsError(f"no images to evaluate in {evalset.description}.")
    cat = {k: np.concatenate(v) if v else None for k, v in parts.items()}
    labelled = cat["y"] is not None
    if labelled and cat["y"].size != len(photos):
        raise LabelError("some evaluation batches have labels and some do not; label every image or none.")
    return Outcomes(cat["a1"], cat["a5"], cat["cos"], cat["kl"], photos, int(num_classes or 0),
                    cat["y"] if labelled else None,
                    (cat["c1o"], cat["c1r"]) if labelled else None, (cat["c5o"], cat["c5r"]) if labelled else None)


def _mapped(evalset: EvaluationSet, model: nn.Module, batch_size: int, device: torch.device, dtype: torch.dtype,
            class_names: Any) -> Any:
    """Class folders: find the model's number of outputs from the first batch, then map folder names."""
    first = next(iter(evalset.batches(batch_size, class_index={c: 0 for c in evalset.folder_classes or []})))
    with torch.no_grad():
        out = model(first.images[:1].to(device=device, dtype=dtype))
    mapping = evalset.class_index(int(out.shape[-1]), class_names)
    return evalset.batches(batch_size, class_index=mapping)


def _score_row(name: str, e: Estimate, p_value: float | None = None) -> dict[str, Any]:
    return plain({"score": name, "value": e.value, "low": e.low, "high": e.high, "level": e.level, "n": e.n,
                  "method": e.method, "p_value": p_value})


_SCORE_COLUMNS = ("score", "value", "low", "high", "level", "n", "method", "p_value")


@dataclass(eq=False)
class Agreement(Result):
    """How closely the replacement follows the original (each an :class:`Estimate` with its interval);
    ``rows()``: one per score."""

    top1: Estimate
    top5: Estimate
    logits_cosine: Estimate
    logits_kl: Estimate
    n_images: int
    n_photos: int

    _COLUMNS = _SCORE_COLUMNS
    _SCORES = ("top1", "top5", "logits_cosine", "logits_kl")

    def rows(self) -> list[dict[str, Any]]:
        return [_score_row(f"{k}_agreement" if k.startswith("top") else k, getattr(self, k)) for k in self._SCORES]

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k).to_dict() for k in self._SCORES}, "n_images": self.n_images,
                "n_photos": self.n_photos}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(*(Estimate.from_dict(data[k]) for k in cls._SCORES), int(data["n_images"]),
                   int(data["n_photos"]))


def agreement(out: Outcomes, level: float = 0.95) -> Agreement:
    """Top-1/top-5 agreement, logits cosine and KL with intervals (over photos when images are views)."""
    g = out.groups
    return Agreement(proportion(out.agree1, level, g), proportion(out.agree5, level, g),
                     mean_interval(out.cosine, level, g), mean_interval(out.kl, level, g, log=True), out.n,
                     len(set(out.photos)))


@dataclass(eq=False)
class ClassLoss(Result):
    """One class: its images, each model's top-1 accuracy on them, and the loss (original - replaced)."""

    label: int
    n: int
    original: float
    replaced: float

    @property
    def loss(self) -> float:
        return self.original - self.replaced

    _COLUMNS = ("label", "n", "original", "replaced", "loss")

    def rows(self) -> list[dict[str, Any]]:
        return [self.to_dict()]

    def to_dict(self) -> dict[str, Any]:
        return plain({"label": self.label, "n": self.n, "original": self.original, "replaced": self.replaced,
                      "loss": self.loss})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(int(data["label"]), int(data["n"]), float(data["original"]), float(data["replaced"]))


@dataclass(eq=False)
class Accuracy(Result):
    """Labelled evaluation: each model's top-1/top-5 accuracy (intervals), the paired differences replaced -
    original (Newcombe) with McNemar's test (its p-value on the difference rows), and the classes that lose
    most; ``rows()``: one per score."""

    original_top1: Estimate
    replaced_top1: Estimate
    original_top5: Estimate
    replaced_top5: Estimate
    difference_top1: Estimate
    difference_top5: Estimate
    mcnemar_top1: McNemar
    mcnemar_top5: McNemar
    worst_classes: list[ClassLoss] = field(default_factory=list)
    n_classes_seen: int = 0

    _ESTIMATES = ("original_top1", "replaced_top1", "original_top5", "replaced_top5", "difference_top1",
                  "difference_top5")

    _COLUMNS = _SCORE_COLUMNS

    def rows(self) -> list[dict[str, Any]]:
        p = {"difference_top1": self.mcnemar_top1.p_value, "difference_top5": self.mcnemar_top5.p_value}
        return [_score_row(k, getattr(self, k), p.get(k)) for k in self._ESTIMATES]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k).to_dict() for k in self._ESTIMATES}
        d.update({"mcnemar_top1": self.mcnemar_top1.to_dict(), "mcnemar_top5": self.mcnemar_top5.to_dict(),
                  "worst_classes": [c.to_dict() for c in self.worst_classes], "n_classes_seen": self.n_classes_seen})
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(*(Estimate.from_dict(data[k]) for k in cls._ESTIMATES), McNemar.from_dict(data["mcnemar_top1"]),
                   McNemar.from_dict(data["mcnemar_top5"]), [ClassLoss.from_dict(c) for c in data["worst_classes"]],
                   int(data["n_classes_seen"]))


def accuracy(out: Outcomes, level: float = 0.95, worst: int = 5) -> Accuracy | None:
    """Labelled scores of :class:`Accuracy`, or None without labels. McNemar and Newcombe treat images as
    independent, which holds for a labelled set of distinct images (not for views of a few photos)."""
    if out.labels is None or out.correct1 is None or out.correct5 is None:
        return None
    (c1o, c1r), (c5o, c5r) = out.correct1, out.correct5
    g = out.groups
    losses = []
    for label in np.unique(out.labels):
        sel = out.labels == label
        losses.append(ClassLoss(int(label), int(sel.sum()), float(c1o[sel].mean()), float(c1r[sel].mean())))
    losses.sort(key=lambda c: (-c.loss, -c.n, c.label))
    return Accuracy(
        proportion(c1o, level, g), proportion(c1r, level, g), proportion(c5o, level, g), proportion(c5r, level, g),
        paired_difference(c1o, c1r, level), paired_difference(c5o, c5r, level),
        mcnemar(int((c1o & ~c1r).sum()), int((~c1o & c1r).sum())),
        mcnemar(int((c5o & ~c5r).sum()), int((~c5o & c5r).sum())),
        [c for c in losses if c.loss > 0][:worst], len(losses))
