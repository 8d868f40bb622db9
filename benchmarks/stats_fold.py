"""Time of folding one batch of maps into the statistics (the survey's hot path), best of a few repeats.

Mobilenet-sized maps by default: 16×96×112×112 (mobilenet_v2's largest conv output), 16×96×56×56 (an early
layer) and 16×576×14×14 (a late, wide one), float32, folded by ``GroupedStats.update`` (owned copies, as
``survey`` passes them, and the caller's tensor) and by ``LayerStats.update``. The last columns time
``GroupedStats.update`` with its per-element passes (the scan and the pairs' sums and differences) run over
cache-sized blocks of rows (``SCAN_BYTES``, the default) against whole-batch passes, side by side.

    OMP_NUM_THREADS=1 python benchmarks/stats_fold.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from analysis.stats import GroupedStats, LayerStats, _kernel

SHAPES = ((16, 96, 112, 112), (16, 96, 56, 56), (16, 576, 14, 14))


def best_of(repeats: int, fold, setup=lambda: None) -> float:
    """The fastest of ``repeats`` runs of ``fold(setup())`` (``setup`` is not timed)."""
    times = []
    for _ in range(repeats):
        arg = setup()
        start = time.perf_counter()
        fold(arg)
        times.append(time.perf_counter() - start)
    return min(times)


def time_shape(maps: torch.Tensor, repeats: int) -> tuple[float, float, float]:
    """Seconds per batch: GroupedStats.update of an owned copy, of the caller's tensor, LayerStats.update."""
    grouped = GroupedStats(groups=8, chunk=2).update(maps.clone(), 0, owned=True)  # the shift is set
    layer = LayerStats().update(maps)
    owned = best_of(repeats, lambda x: grouped.update(x, 16, owned=True), maps.clone)
    borrowed = best_of(repeats, lambda _: grouped.update(maps, 16))
    plain = best_of(repeats, lambda _: layer.update(maps))
    return owned, borrowed, plain


def time_blocking(maps: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Seconds per ``GroupedStats.update`` (16 groups, pairs as a survey folds them) with blocked passes and
    with whole-batch passes, interleaved repeat by repeat."""
    blocked, whole = [], []
    default = _kernel.SCAN_BYTES
    for _ in range(repeats):
        for budget, times in ((default, blocked), (1 << 62, whole)):
            _kernel.SCAN_BYTES = budget
            started = GroupedStats(groups=16, chunk=4).update(maps, 0)  # the shift is set
            times.append(best_of(1, lambda s: s.update(maps, 64), lambda s=started: s))
    _kernel.SCAN_BYTES = default
    return min(blocked), min(whole)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), best of {args.repeats} (ms per batch)")
    for shape in SHAPES:
        maps = torch.relu(torch.randn(shape, generator=gen))
        owned, borrowed, plain = time_shape(maps, args.repeats)
        blocked, whole = time_blocking(torch.randn(shape, generator=gen), args.repeats)
        print(f"{'×'.join(map(str, shape)):>16}  GroupedStats owned {owned * 1e3:8.1f}  "
              f"GroupedStats {borrowed * 1e3:8.1f}  LayerStats {plain * 1e3:8.1f}  | signed maps, 16 groups: "
              f"blocked passes {blocked * 1e3:7.1f}, whole-batch {whole * 1e3:7.1f} ({whole / blocked:.2f}×)")


if __name__ == "__main__":
    main()
