"""Latency of an original network and its replacement, measured so that the ratio means something.

* **BN folded in both**: each model is timed as it would be deployed, every BatchNorm folded into the conv
  before it (``ghostnet.fuse``, on copies; the inputs are never changed). If either model cannot be folded
  (torch.fx cannot trace it), neither is, and the result says so.
* **threads pinned**: ``torch.set_num_threads(threads)`` for the whole measurement (restored afterwards) and
  recorded, so runs on different machines or settings are not compared unknowingly.
* **interleaved**: repeat ``r`` times the original and the replacement in alternating order (AB, BA, ...),
  one forward each, so drifts of the machine (other jobs, clock, thermal state) hit both alike.
* **batch 1 and a larger batch**: latency (batch 1) and throughput (batch ``b``) behave differently for
  memory-bound ops such as the Ghost module's concatenation.
* **median and interquartile range** of the per-forward times, and of the paired ratio replacement /
  original (one ratio per repeat), not a mean that one hiccup can move.

CUDA runs are synchronised around each forward, so they time the kernels, not their launch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from analysis._core.errors import GhostmapsError
from analysis._core.results import Record, Result

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Latency", "LatencyRow", "measure_latency"]


@dataclass(eq=False)
class LatencyRow(Record):
    """One batch size: per-forward milliseconds of each model (median, first and third quartile) and the
    paired ratio replaced / original (< 1: the replacement is faster)."""

    batch: int
    repeats: int
    original_ms: float
    original_q1_ms: float
    original_q3_ms: float
    replaced_ms: float
    replaced_q1_ms: float
    replaced_q3_ms: float
    ratio: float
    ratio_q1: float
    ratio_q3: float

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(**{k: (int(v) if k in ("batch", "repeats") else float(v)) for k, v in data.items()})


@dataclass(eq=False)
class Latency(Result):
    """Result of :func:`measure_latency`: one :class:`LatencyRow` per batch size (``timings``), and how it was
    measured; ``rows()``: the timings."""

    timings: list[LatencyRow]
    threads: int
    device: str
    fused: bool
    warmup: int
    note: str = ""

    _COLUMNS = tuple(LatencyRow.__dataclass_fields__)

    def row(self, batch: int) -> LatencyRow:
        for r in self.timings:
            if r.batch == batch:
                return r
        raise GhostmapsError(f"no latency measured at batch {batch}; measured: {[r.batch for r in self.timings]}.")

    def rows(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.timings]

    def to_dict(self) -> dict[str, Any]:
        return {"threads": self.threads, "device": self.device, "fused": self.fused, "warmup": self.warmup,
                "note": self.note, "timings": self.rows()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls([LatencyRow.from_dict(r) for r in data["timings"]], int(data["threads"]), str(data["device"]),
                   bool(data["fused"]), int(data["warmup"]), str(data.get("note", "")))

    def __str__(self) -> str:
        how = f"{self.device}, {self.threads} thread(s), BN {'folded' if self.fused else 'NOT folded'}"
        lines = [f"latency ({how}; median [IQR] of interleaved forwards)"]
        for r in self.timings:
            lines.append(f"  batch {r.batch:>3}: original {r.original_ms:.2f} [{r.original_q1_ms:.2f}, "
                         f"{r.original_q3_ms:.2f}] ms, replaced {r.replaced_ms:.2f} [{r.replaced_q1_ms:.2f}, "
                         f"{r.replaced_q3_ms:.2f}] ms, ratio {r.ratio:.3f} [{r.ratio_q1:.3f}, {r.ratio_q3:.3f}]")
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fused_pair(original: nn.Module, replaced: nn.Module) -> tuple[nn.Module, nn.Module, bool, str]:
    from ghostnet.fuse import fuse

    try:
        return fuse(original, channels_last=False), fuse(replaced, channels_last=False), True, ""
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as exc:
        import copy

        return (copy.deepcopy(original).eval(), copy.deepcopy(replaced).eval(), False,
                f"BN not folded (ghostnet.fuse failed: {str(exc)[:120]}); both models timed unfused")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(model: nn.Module, x: torch.Tensor) -> float:
    _sync(x.device)
    t0 = time.perf_counter()
    model(x)
    _sync(x.device)
    return 1000.0 * (time.perf_counter() - t0)


def _quartiles(v: Sequence[float]) -> tuple[float, float, float]:
    q1, med, q3 = np.percentile(np.asarray(v, dtype=np.float64), [25, 50, 75])
    return float(med), float(q1), float(q3)


def measure_latency(original: nn.Module, replaced: nn.Module, example: torch.Tensor,
                    batch_sizes: Sequence[int] = (1, 16), repeats: int = 15, warmup: int = 3,
                    threads: int | None = None, fuse: bool = True) -> Latency:
    """Time ``original`` and ``replaced`` as the module docstring describes.

    Args:
        example: input images (N x C x H x W, on the device to time on); batches of each size are made by
            repeating them. Neither model nor the images are changed.
        batch_sizes: batch sizes to time (default 1 and 16).
        repeats: timed forwards per model and batch size (interleaved); warmup: untimed forwards before.
        threads: CPU threads to pin (default: the current ``torch.get_num_threads()``, recorded).
        fuse: fold BN into convs in both models first (``ghostnet.fuse``).
    """
    for name, v, low in (("repeats", repeats, 2), ("warmup", warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise GhostmapsError(f"{name} must be an int >= {low}, got {v!r}.")
    sizes = [int(b) for b in batch_sizes]
    if not sizes or any(b < 1 for b in sizes):
        raise GhostmapsError(f"batch_sizes must be positive batch sizes, e.g. (1, 16); got {batch_sizes!r}.")
    n_threads = torch.get_num_threads() if threads is None else threads
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
        raise GhostmapsError(f"threads must be a positive int, got {threads!r}.")
    x0 = example.detach()
    x0 = x0.unsqueeze(0) if x0.dim() == 3 else x0
    if fuse:
        a, b, fused, note = _fused_pair(original, replaced)
    else:
        import copy

        a, b, fused, note = copy.deepcopy(original).eval(), copy.deepcopy(replaced).eval(), False, "BN not folded"
    a.to(x0.device)
    b.to(x0.device)
    rows = []
    with _threads(n_threads), torch.inference_mode():
        for size in sizes:
            reps = -(-size // x0.shape[0])
            x = x0.repeat(reps, 1, 1, 1)[:size].contiguous()
            for _ in range(warmup):
                a(x)
                b(x)
            ta, tb = [], []
            for r in range(repeats):
                if r % 2 == 0:
                    ta.append(_time(a, x))
                    tb.append(_time(b, x))
                else:
                    tb.append(_time(b, x))
                    ta.append(_time(a, x))
            ratios = [q / p if p > 0 else float("nan") for p, q in zip(ta, tb, strict=True)]
            (am, a1, a3), (bm, b1, b3), (rm, r1, r3) = _quartiles(ta), _quartiles(tb), _quartiles(ratios)
            rows.append(LatencyRow(size, repeats, am, a1, a3, bm, b1, b3, rm, r1, r3))
    return Latency(rows, n_threads, str(x0.device), fused, warmup, note)
