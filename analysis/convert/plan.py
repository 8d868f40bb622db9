"""A replacement plan under a budget: which convs to ghostify, at which ratio, to keep at most a given fraction
of the network's MACs (and/or parameters) at the least measured damage.

:func:`plan_replacement` measures, for every candidate conv and every ratio s, the **end-to-end sensitivity**
of replacing that conv alone: ``ghostify(init="fit")`` on the calibration images, then the mean
``KL(softmax(original) || softmax(replaced))`` (nats) over *held-out* evaluation images, with an interval
(t over images, or cluster-robust over photos when the images are views). Its saving is measured by
``count_macs`` (MACs and used parameters at one evaluation image's size). Savings of different convs add up
exactly; losses are *assumed* to (the sum of single-layer KLs predicts, it does not measure, the damage of
replacing them together: verify the converted network). The layers and ratios are then picked by the exact
multiple-choice knapsack of :mod:`analysis.convert.knapsack` over discretised savings; the plan states the
gap to the optimum that the discretisation allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from analysis._core.errors import GhostmapsError
from analysis._core.modes import eval_mode, model_device, model_dtype
from analysis._core.results import Result, number, plain
from analysis._core.validation import check_level, check_odd_size, check_positive_int, check_ratio, is_int
from analysis.convert.ghostify import GhostifyError, ghostify
from analysis.convert.knapsack import BudgetError, solve_knapsack
from analysis.convert.macs import count_macs
from analysis.data.batches import as_images
from analysis.data.images import ImageSource, load_images
from analysis.data.models import default_preprocess
from analysis.data.overlap import check_disjoint
from analysis.stats.intervals import mean_interval

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["BudgetError", "LayerOption", "ReplacementPlan", "check_budget", "choose_plan", "plan_replacement"]


def check_budget(value: Any, name: str = "macs") -> float | None:
    """A budget as a float fraction in (0, 1] of the original's cost (None: no budget)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) <= 1:
        raise BudgetError(f"{name} must be the fraction of the original's cost to keep, in (0, 1], got {value!r}; "
                          f"e.g. {name}=0.7 keeps at most 70%.")
    return float(value)


@dataclass(eq=False)
class LayerOption(Result):
    """One candidate: conv ``name`` replaced alone at ratio ``ratio``. ``kl``: mean KL (nats) over the held-out
    images, in [``kl_low``, ``kl_high``] (``method``), with the per-image ``kl_std`` and ``kl_max``;
    ``macs_saved`` / ``params_saved``: what the replacement saves (``count_macs``); ``chosen``: in the plan."""

    name: str
    ratio: int
    kl: float
    kl_low: float
    kl_high: float
    kl_std: float
    kl_max: float
    n: int
    method: str
    macs_saved: int
    params_saved: int
    chosen: bool = False

    _COLUMNS = ("name", "ratio", "kl", "kl_low", "kl_high", "kl_std", "kl_max", "n", "method", "macs_saved",
                "params_saved", "chosen")

    def rows(self) -> list[dict[str, Any]]:
        return [self.to_dict()]

    def to_dict(self) -> dict[str, Any]:
        return plain({k: getattr(self, k) for k in self._COLUMNS})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(str(data["name"]), int(data["ratio"]), *(number(data[k]) for k in
                                                              ("kl", "kl_low", "kl_high", "kl_std", "kl_max")),
                   int(data["n"]), str(data["method"]), int(data["macs_saved"]), int(data["params_saved"]),
                   bool(data.get("chosen", False)))


@dataclass(eq=False)
class ReplacementPlan(Result):
    """What :func:`plan_replacement` measured and chose. ``options``: the sensitivity table (one
    :class:`LayerOption` per candidate conv and ratio); ``ratios``: the plan, conv name -> s, in forward order
    (``ghostify(model, ratio=plan.ratios, ...)`` converts it); ``predicted_loss``: the sum of the chosen
    options' KLs, within ``gap`` of the least possible; ``macs_fraction`` / ``params_fraction``: the converted
    network's cost over the original's (exact: savings add up). ``rows()``: the table."""

    options: list[LayerOption]
    ratios: dict[str, int]
    macs_budget: float | None
    params_budget: float | None
    macs_before: int
    params_before: int
    macs_after: int
    params_after: int
    predicted_loss: float
    loss_lower_bound: float
    input_size: tuple[int, ...]
    dw_size: int = 3
    calibration: str = ""
    evaluation: str = ""
    n_calibration: int = 0
    n_evaluation: int = 0
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        """The convs the plan replaces (forward order)."""
        return list(self.ratios)

    @property
    def macs_fraction(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else math.nan

    @property
    def params_fraction(self) -> float:
        return self.params_after / self.params_before if self.params_before else math.nan

    @property
    def gap(self) -> float:
        """How much the predicted loss can exceed the least possible one (0: the exact optimum)."""
        return max(0.0, self.predicted_loss - self.loss_lower_bound)

    _COLUMNS = LayerOption._COLUMNS

    def rows(self) -> list[dict[str, Any]]:
        return [o.to_dict() for o in self.options]

    def to_dict(self) -> dict[str, Any]:
        return plain({"options": [o.to_dict() for o in self.options], "ratios": dict(self.ratios),
                      "macs_budget": self.macs_budget, "params_budget": self.params_budget,
                      "macs_before": self.macs_before, "params_before": self.params_before,
                      "macs_after": self.macs_after, "params_after": self.params_after,
                      "macs_fraction": self.macs_fraction, "params_fraction": self.params_fraction,
                      "predicted_loss": self.predicted_loss, "loss_lower_bound": self.loss_lower_bound,
                      "input_size": list(self.input_size), "dw_size": self.dw_size, "calibration": self.calibration,
                      "evaluation": self.evaluation, "n_calibration": self.n_calibration,
                      "n_evaluation": self.n_evaluation, "skipped": dict(self.skipped)})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The plan back (the fractions are derived, not read)."""
        b = {k: None if data.get(k) is None else float(data[k]) for k in ("macs_budget", "params_budget")}
        return cls([LayerOption.from_dict(o) for o in data["options"]], {str(k): int(v) for k, v in
                                                                         data["ratios"].items()},
                   b["macs_budget"], b["params_budget"], *(int(data[k]) for k in
                                                           ("macs_before", "params_before", "macs_after",
                                                            "params_after")),
                   number(data["predicted_loss"]), number(data["loss_lower_bound"]),
                   tuple(int(v) for v in data["input_size"]), int(data["dw_size"]), str(data["calibration"]),
                   str(data["evaluation"]), int(data["n_calibration"]), int(data["n_evaluation"]),
                   dict(data.get("skipped", {})))

    def __str__(self) -> str:
        budget = ", ".join(f"{k} <= {v:.0%}" for k, v in (("MACs", self.macs_budget), ("params", self.params_budget))
                           if v is not None)
        lines = [f"plan under {budget}: {len(self.ratios)} of {len({o.name for o in self.options})} candidate convs "
                 f"replaced; MACs {self.macs_fraction:.1%}, params {self.params_fraction:.1%} of the original; "
                 f"predicted loss (sum of single-layer KL) {self.predicted_loss:.4g} nats "
                 f"(optimum >= {self.loss_lower_bound:.4g})",
                 f"sensitivity: KL on {self.n_evaluation} held-out images ({self.evaluation}); fits on "
                 f"{self.n_calibration} calibration images ({self.calibration})",
                 f"  {'layer':<24} {'s':>2} {'KL':>9} {'interval':>21} {'max':>8} {'MMACs saved':>11} "
                 f"{'params saved':>12}"]
        for o in self.options:
            lines.append(f"{'*' if o.chosen else ' '} {o.name:<24} {o.ratio:>2} {o.kl:>9.4g} "
                         f"[{o.kl_low:>9.3g}, {o.kl_high:>9.3g}] {o.kl_max:>8.3g} {o.macs_saved / 1e6:>11.3f} "
                         f"{o.params_saved:>12,}")
        lines += [f"  skipped {n}: {r}" for n, r in self.skipped.items()]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------


def _source(images: Any, preprocess: Callable) -> Any:
    """Paths and sample names as an ``ImageSource`` (compared by photo), anything else as it is."""
    if isinstance(images, str) or (isinstance(images, (list, tuple)) and images and
                                   all(isinstance(s, str) for s in images)):
        return load_images(images, transform=preprocess)
    return images


def _split(images: Any, preprocess: Callable, seed: int) -> tuple[torch.Tensor, torch.Tensor, Any, str, str]:
    """No evaluation images given: a seeded split of ``images`` (by photo for an ImageSource) in two halves."""
    adapted = as_images(images, preprocess, name="images")
    x = adapted.tensor()
    photos = list(adapted.source.photo_names) if isinstance(adapted.source, ImageSource) else \
        [str(i) for i in range(x.shape[0])]
    unique = sorted(set(photos))
    if len(unique) < 2:
        raise GhostmapsError("images: a plan needs held-out images; pass eval_images= (e.g. "
                             "load_images('samples:evaluation', views=64)) or at least two photos to split.")
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(unique)[: len(unique) // 2].tolist())
    ev = [i for i, p in enumerate(photos) if p in held]
    cal = [i for i, p in enumerate(photos) if p not in held]
    groups = [photos[i] for i in ev] if len(held) < len(ev) else None
    return (x[cal], x[ev], groups, f"seeded split (seed {seed}): {len(unique) - len(held)} photos",
            f"seeded split (seed {seed}): {len(held)} photos")


def _logits(model: nn.Module, x: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    device, dtype = model_device(model), model_dtype(model)
    with eval_mode(model), torch.no_grad():
        out = [model(b.to(device=device, dtype=dtype)).double().cpu() for b in x.split(batch_size)]
    logits = torch.cat(out)
    if logits.dim() != 2:
        raise GhostmapsError(f"{type(model).__name__} returned {tuple(logits.shape)}; a plan needs N x classes "
                             "logits.")
    return torch.log_softmax(logits, dim=1)


def plan_replacement(model: nn.Module, images: Any, macs: float | None = 0.7, params: float | None = None, *,
                     ratios: Sequence[int] = (2, 3, 4), layers: str | Sequence[str] | None = None,
                     eval_images: Any = None, dw_size: int = 3, seed: int = 0, progress: bool = True,
                     preprocess: Callable | None = None, min_channels: int = 16, level: float = 0.95,
                     resolution: int | None = None) -> ReplacementPlan:
    """Measure each candidate conv's sensitivity at each ratio and choose the replacement meeting the budget.

    Args:
        model: the pretrained network (never modified).
        images: calibration images the ghosts are fitted on (any source of ``analysis.data.batches``).
        macs, params: budgets, the fraction of the original's MACs / used parameters the converted network
            may keep, in (0, 1]; either may be None (not both).
        ratios: the Ghost ratios s to consider per conv.
        layers: candidate convs (names or globs, as ``ghostify``); default: ``ghostify``'s default choice.
        eval_images: held-out images for the sensitivities (refused when they share a photo with ``images``);
            default: a seeded split of ``images`` in two halves (by photo).
        dw_size: the cheap op's kernel size d. seed: the split's seed. progress: a tqdm bar.
        preprocess: for image files and sample photos (default ImageNet evaluation preprocessing).
        level: the intervals' confidence level.
        resolution: the knapsack's discretisation, in units per whole-network cost (default 100,000 with one
            budget, 2,000 per budget with two; the tables hold only the required savings); the plan reports
            the gap this allows.

    Raises:
        BudgetError: a budget outside (0, 1], or one the candidates cannot reach (with the best reachable
            fraction).
    """
    from tqdm.auto import tqdm

    budgets = (check_budget(macs, "macs"), check_budget(params, "params"))
    if budgets == (None, None):
        raise BudgetError("give a budget: macs= and/or params=, the fraction of the original's cost to keep, "
                          "e.g. macs=0.7.")
    if isinstance(ratios, int) or not ratios:
        raise GhostmapsError(f"ratios must be a non-empty sequence of Ghost ratios, e.g. (2, 3, 4); got {ratios!r}.")
    svals = sorted({check_ratio(s, "ratios", GhostmapsError) for s in ratios})
    dw_size = check_odd_size(dw_size, "dw_size")
    level = check_level(level)
    if not is_int(seed) or seed < 0:
        raise GhostmapsError(f"seed must be an int >= 0, got {seed!r}.")
    pre = preprocess or default_preprocess()
    if eval_images is None:
        calib, held, groups, cal_desc, ev_desc = _split(images, pre, seed)
    else:
        csrc, esrc = _source(images, pre), _source(eval_images, pre)
        check_disjoint(csrc, esrc)
        calib = as_images(csrc, pre, name="images").tensor()
        ev_adapted = as_images(esrc, pre, name="eval_images")
        held = ev_adapted.tensor()
        groups = ev_adapted.source.photo_names if isinstance(ev_adapted.source, ImageSource) else None
        groups = groups if groups is not None and len(set(groups)) < len(groups) else None
        cal_desc = getattr(csrc, "description", type(csrc).__name__)
        ev_desc = getattr(esrc, "description", type(esrc).__name__)

    _, probe = ghostify(model, layers, ratio=svals[0], init=None, min_channels=min_channels)
    candidates = probe.names
    skipped = {s.name: s.reason for s in probe.skipped}
    if not candidates:
        raise GhostmapsError("no candidate conv to replace (see skipped); pass other layers= or a lower "
                             "min_channels.")
    one = held[:1]
    before = count_macs(model, one)
    teacher = _logits(model, held)
    p = teacher.exp()
    options: list[LayerOption] = []
    bar = tqdm(total=len(candidates) * len(svals), desc="plan", unit="fit", disable=not progress,
               dynamic_ncols=True)
    for name in candidates:
        for s in svals:
            bar.set_postfix_str(f"{name} s={s}")
            try:
                new, _ = ghostify(model, [name], ratio=s, dw_size=dw_size, init="fit", calibration_images=calib)
            except GhostifyError as exc:  # e.g. fewer outputs than s
                skipped[f"{name} (s={s})"] = str(exc)
                bar.update(1)
                continue
            kl = (p * (teacher - _logits(new, held))).sum(1).clamp_min(0).numpy()
            est = mean_interval(kl, level, groups, log=True)
            after = count_macs(new, one)
            options.append(LayerOption(name, s, est.value, est.low, est.high,
                                       float(kl.std(ddof=1)) if kl.size > 1 else math.nan, float(kl.max()),
                                       int(kl.size), est.method, before.total_macs - after.total_macs,
                                       before.params - after.params))
            bar.update(1)
    bar.close()
    return _choose(options, budgets, before.total_macs, before.params, resolution, ReplacementPlan(
        options, {}, *budgets, before.total_macs, before.params, before.total_macs, before.params, 0.0, 0.0,
        tuple(one.shape), dw_size, cal_desc, ev_desc, int(calib.shape[0]), int(held.shape[0]), skipped))


def choose_plan(plan: ReplacementPlan, macs: float | None = None, params: float | None = None, *,
                resolution: int | None = None) -> ReplacementPlan:
    """The same measured table (``plan.options``) under another budget: a new plan, nothing re-measured."""
    import copy

    budgets = (check_budget(macs, "macs"), check_budget(params, "params"))
    if budgets == (None, None):
        raise BudgetError("give a budget: macs= and/or params=, e.g. macs=0.7.")
    new = copy.deepcopy(plan)
    for o in new.options:
        o.chosen = False
    new.macs_budget, new.params_budget = budgets
    return _choose(new.options, budgets, new.macs_before, new.params_before, resolution, new)


#: The budget dimensions, in the order of ``(macs, params)``.
_DIM_NAMES = ("MACs", "params")


def _saving(option: LayerOption, dim: int) -> int:
    """What ``option`` saves in budget dimension ``dim`` (0: MACs, 1: parameters); negative when it costs more."""
    return (option.macs_saved, option.params_saved)[dim]


def _choose(options: list[LayerOption], budgets: tuple[float | None, float | None], macs0: int, params0: int,
            resolution: int | None, plan: ReplacementPlan) -> ReplacementPlan:
    """Solve the knapsack over ``options`` and fill ``plan`` with the choice. An option that costs more than the
    conv in a budgeted dimension (a Ghost module of a small 1×1 conv can) is never chosen; it is listed in
    ``plan.skipped``. The budget is read exactly as written (0.29 keeps at most 29 % of the MACs)."""
    dims = [(d, total, b) for d, (total, b) in enumerate(((macs0, budgets[0]), (params0, budgets[1])))
            if b is not None]
    usable = []
    for o in options:
        worse = [f"{_DIM_NAMES[d]} {-_saving(o, d):,} more" for d, _, _ in dims if _saving(o, d) < 0]
        if worse:
            plan.skipped[f"{o.name} (s={o.ratio})"] = (f"its Ghost replacement costs more than the conv "
                                                       f"({', '.join(worse)}): never chosen")
        else:
            usable.append(o)
    names = list(dict.fromkeys(o.name for o in usable))
    groups = [[o for o in usable if o.name == n] for n in names]
    res = check_positive_int(resolution, "resolution") if resolution is not None else (100_000 if len(dims) == 1
                                                                                       else 2000)
    required = [total - math.floor(Fraction(repr(b)) * total) for _, total, b in dims]
    saved = [[[_saving(o, d) for d, _, _ in dims] for o in g] for g in groups]
    losses = [[o.kl for o in g] for g in groups]
    reach = [sum(max(_saving(o, d) for o in g) for g in groups) for d, _, _ in dims]
    sol = None
    # one budget: once 10x finer when only the rounding stops it (two budgets: the table would be 100x larger)
    tries = [res, res * 10] if resolution is None and len(dims) == 1 else [res]
    for r in tries:
        try:
            sol = solve_knapsack(losses, saved, required, [max(1, total // r) for _, total, _ in dims])
            break
        except BudgetError as exc:
            last = exc
            if any(got < need for got, need in zip(reach, required, strict=True)):
                break
    if sol is None:
        if all(got >= need for got, need in zip(reach, required, strict=True)):
            raise BudgetError(f"the budget is within reach of these candidates, but only finer than the "
                              f"resolution {tries[-1]:,} resolves; pass resolution= a larger number. ({last})")
        kept = [f"{_DIM_NAMES[d]} {(total - got) / total:.1%} (budget {b:.0%})"
                for (d, total, b), got in zip(dims, reach, strict=True)]
        raise BudgetError(f"the budget cannot be met with these candidates ({len(names)} convs, ratios "
                          f"{sorted({o.ratio for o in usable})}): replacing every one at its largest saving keeps "
                          f"{', '.join(kept)} of the original. Raise the budget, add ratios or layers. "
                          f"({last})") from None
    chosen = {names[g]: groups[g][k] for g, k in enumerate(sol.picks) if k >= 0}
    for o in chosen.values():
        o.chosen = True
    plan.ratios = {n: o.ratio for n, o in chosen.items()}
    plan.macs_after = macs0 - sum(o.macs_saved for o in chosen.values())
    plan.params_after = params0 - sum(o.params_saved for o in chosen.values())
    plan.predicted_loss, plan.loss_lower_bound = sol.loss, sol.lower_bound
    return plan
