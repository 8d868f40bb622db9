"""What :func:`~analysis.convert.ghostify.ghostify` returns: the replaced and skipped layers and the spec that
rebuilds the ghostified model, with the Result protocol (``to_dict``/``to_json``/``to_csv``/``to_frame``)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from analysis._core.errors import GhostmapsError
from analysis._core.results import Record, Result, plain

if TYPE_CHECKING:
    import pandas as pd
    from typing_extensions import Self

__all__ = ["GhostifyError", "GhostifyResult", "RefittedConsumer", "ReplacedLayer", "SkippedLayer"]


class GhostifyError(GhostmapsError):
    """Bad input to :func:`ghostify` (a layer, ratio, kernel size or calibration set). The message names the
    input and the fix. (CLI exit code 2)."""


# ----------------------------------------------------------------------------------------------------------
# results


@dataclass
class ReplacedLayer(Record):
    """One conv replaced by a GhostConv. ``intrinsic``: original channels the primary conv keeps (in its
    output order; None without a fit).

    ``fit_error``: with the sequential fit (the default), the pooled relative error of *all* channels on the
    held-out calibration images, in post-BN units where a BN follows, with the layer's inputs taken from the
    network converted up to it (sum_j w_j SSE_j / sum_j w_j SS_j); ``ghost_error``: the same over the ghost
    channels only (``ghost_error_max``: the worst ghost channel's own SSE_j / SS_j); ``start_error``:
    ``fit_error`` before the refit (original intrinsic filters, cheap ops fitted
    on the original maps). With ``mode="independent"``: the ghost channels' relative error of the closed-form
    fit on the calibration images (the intrinsic channels are exact); ``calibrated_error``: all channels after
    calibration (None when not calibrated). In ``rows()`` the kernel size is ``"3×3"`` and ``intrinsic`` the
    channels separated by spaces."""

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
    ghost_error: float | None = None
    start_error: float | None = None
    ghost_error_max: float | None = None

    _COLUMNS = ("name", "in_channels", "out_channels", "kernel_size", "ratio", "dw_size", "init_channels",
                "params_before", "params_after", "intrinsic", "fit_error", "calibrated_error", "ghost_error",
                "start_error", "ghost_error_max")

    @classmethod
    def blank(cls, name: str, conv: Any, ghost: Any, ratio: int, dw_size: int) -> ReplacedLayer:
        """The entry for ``conv`` replaced by ``ghost`` (sizes and parameter counts; no errors yet)."""
        return cls(name=name, in_channels=conv.in_channels, out_channels=conv.out_channels,
                   kernel_size=tuple(conv.kernel_size), ratio=ratio, dw_size=dw_size,
                   init_channels=ghost.init_channels, params_before=sum(p.numel() for p in conv.parameters()),
                   params_after=sum(p.numel() for p in ghost.parameters()))

    def rows(self) -> list[dict[str, Any]]:
        row = self.to_dict()
        row["kernel_size"] = "×".join(map(str, self.kernel_size))
        row["intrinsic"] = None if self.intrinsic is None else " ".join(map(str, self.intrinsic))
        return [row]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        data = dict(data)
        data["kernel_size"] = tuple(int(k) for k in data["kernel_size"])
        return cls(**data)


@dataclass
class RefittedConsumer(Record):
    """A dense conv kept, but re-solved by least squares because it consumes replaced convs (``producers``):
    the consumer refit (``consumer_refit=True``). ``heldout_error_before``/``_after``: the pooled relative error
    of its output against the original network's, on the held-out calibration images, post-BN units, inputs
    from the converted network, with the original weights and with the refitted ones (fitted on every fit
    image); ``n_fit``/``n_heldout``: positions in the fit
    and in the held-out error. ``applied``: False when the original weights were kept because a refit on the
    other fit images did not lower the error on a seeded validation split of the fit images (whole photos
    where known; ``validation`` says how they were chosen), ``validation_error_before``/``_after`` on
    ``n_validation`` positions; without validation images the refit is not applied (unless ``holdout=0`` turned
    the checks off). The consumer's own weights are neither fitted nor chosen on the held-out images; with
    ``refit_all`` (the default) the replaced convs before it were refitted on them, so its held-out errors
    share the optimism of every later layer's. Records written before 2026-12-02 (``validation`` None) were
    kept or not by their held-out errors."""

    name: str
    producers: list[str]
    heldout_error_before: float | None
    heldout_error_after: float | None
    n_fit: int
    n_heldout: int
    applied: bool = True
    validation_error_before: float | None = None
    validation_error_after: float | None = None
    n_validation: int = 0
    validation: str | None = None

    _COLUMNS = ("name", "producers", "heldout_error_before", "heldout_error_after", "n_fit", "n_heldout", "applied",
                "validation_error_before", "validation_error_after", "n_validation", "validation")

    def rows(self) -> list[dict[str, Any]]:
        row = self.to_dict()
        row["producers"] = " ".join(self.producers)
        return [row]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        data = dict(data)
        data["producers"] = list(data["producers"])
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
    (``ReplacedLayer`` columns) or skipped (only name and reason), with its ``status``. ``mode``: how the fit
    was made (``"sequential"``, ``"independent"``, None without a fit); ``bn_images``: images the BN statistics
    after the first replaced conv were re-estimated on (0: not re-estimated); ``consumers``: the dense convs
    re-solved by the consumer refit (empty unless ``consumer_refit=True``), not in ``rows()``; ``heldout``: which
    calibration images the sequential fit held out for its reported errors (whole photos where known);
    ``settings``: the sequential fit's :class:`~analysis.convert.sequential.SequentialSettings` as a plain dict
    (None for other fits and for records written before 2026-12-03)."""

    replaced: list[ReplacedLayer] = field(default_factory=list)
    skipped: list[SkippedLayer] = field(default_factory=list)
    ratio: int = 2
    dw_size: int = 3
    init: str | None = None
    calibrate_steps: int = 0
    configs: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    mode: str | None = None
    bn_images: int = 0
    consumers: list[RefittedConsumer] = field(default_factory=list)
    heldout: str | None = None
    settings: dict[str, Any] | None = None

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
                "calibrate_steps": self.calibrate_steps, "mode": self.mode, "bn_images": self.bn_images,
                "replaced": [r.to_dict() for r in self.replaced], "skipped": [s.to_dict() for s in self.skipped],
                "consumers": [c.to_dict() for c in self.consumers], "heldout": self.heldout,
                "settings": plain(self.settings), "spec": plain(self.spec())}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls([ReplacedLayer.from_dict(r) for r in data["replaced"]],
                   [SkippedLayer.from_dict(s) for s in data["skipped"]], int(data["ratio"]), int(data["dw_size"]),
                   data.get("init"), int(data.get("calibrate_steps", 0)), dict(data["spec"]["layers"]),
                   data.get("mode"), int(data.get("bn_images", 0)),
                   [RefittedConsumer.from_dict(c) for c in data.get("consumers", [])], data.get("heldout"),
                   None if data.get("settings") is None else dict(data["settings"]))

    def to_frame(self) -> pd.DataFrame:
        """``rows()`` as a DataFrame, the integer columns as nullable ``Int64`` (skipped convs have none)."""
        return super().to_frame().astype(dict.fromkeys(_INT_COLUMNS, "Int64"))

    def __str__(self) -> str:
        lines = [f"ghostify: {len(self.replaced)} convs replaced (ratio {self.ratio}, d {self.dw_size}, "
                 f"init {self.init}{'' if self.mode is None else ', ' + self.mode}), {len(self.skipped)} skipped"
                 + (f"; BN statistics re-estimated on {self.bn_images} images" if self.bn_images else "")]
        if self.settings is not None:
            st = self.settings
            lines.append(f"  sequential fit: {st.get('positions')} positions per layer, {st.get('iterations')} "
                         f"alternations, ridge {st.get('ridge')} toward {st.get('prior', 'zero')}, holdout "
                         f"{st.get('holdout')}, seed {st.get('seed')}")
        if self.heldout is not None:
            lines.append(f"  fit errors on calibration images held out of the fit: {self.heldout}")
        for r in self.replaced:
            err = "" if r.fit_error is None else f"  fit error {r.fit_error:.4f}"
            if r.start_error is not None:
                err = (f"  held-out error {r.start_error:.4f} -> {_num(r.fit_error)} refitted (ghosts "
                       f"{_num(r.ghost_error)}, worst ghost {_num(r.ghost_error_max)})")
            if r.calibrated_error is not None:
                err += f" -> {r.calibrated_error:.4f} calibrated"
            lines.append(f"  {r.name}: {r.in_channels}->{r.out_channels}, s {r.ratio}, intrinsic {r.init_channels}, "
                         f"params {r.params_before} -> {r.params_after}{err}")
        lines += [f"  consumer {c.name} (of {', '.join(c.producers)}) {_decision(c)}: held-out error "
                  f"{_num(c.heldout_error_before)} -> {_num(c.heldout_error_after)}" for c in self.consumers]
        lines += [f"  skipped {s.name}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


def _decision(c: RefittedConsumer) -> str:
    """What happened to a consumer, in words (records from before the validation split say so)."""
    if c.validation is None and c.n_validation == 0 and c.validation_error_before is None:  # an older record
        return "refitted" if c.applied else "kept (the refit did not lower its held-out error)"
    if c.validation_error_before is None or c.validation_error_after is None:
        how = c.validation or f"{c.n_validation} validation positions, no error to measure"
        return f"{'refitted, unchecked' if c.applied else 'kept, not refitted'} ({how})"
    val = f"validation error {_num(c.validation_error_before)} -> {_num(c.validation_error_after)}"
    return f"refitted ({val})" if c.applied else f"kept (a refit did not lower its {val})"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
