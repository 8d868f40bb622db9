"""Cost of a survey against plain forward passes over the same images, measured side by side (issue 9, Speed).

For each model (random weights: the cost does not depend on them), every Conv2d output, 64 random 224×224
images in batches of 16, ``--threads`` threads (default 2). Each repeat runs, interleaved so that all of them
see the same machine load:

* ``forward``: the plain forward passes (eval mode, inference mode), the unit of every ratio;
* ``survey()``: the default call end to end (Pearson, noise-matched null, jackknife intervals, pairs, groups);
  its ``stream`` (forward + capture + statistics, ``meta["forward_seconds"]``) and its ``scoring`` (the rest:
  one-off, it does not grow with the number of images);
* ``positions=M``: the same call folding M seeded random positions per image; its stream, and how far its
  similarity is from the exact one (largest difference of a layer's mean |S| and mean S², and the RMS
  difference of the similarity entries over all layers);
* ``baseline="untrained"``: the default call with the untrained baseline; what it adds end to end.

The fastest of ``--repeats`` runs of each is kept. Targets (issue 9): survey() ≤ 4×, scoring ≤ 1×, stream ≤ 3×,
positions= stream ≤ 1.5× with its similarity within 0.02, the untrained baseline adds ≤ 1.2×.

    python benchmarks/survey_overhead.py [--models mobilenet_v2 resnet50] [--threads 2] [--positions 64] [--cpu]
        [--huge-pages on|off|inherit]

On a machine that other jobs load, ``--cpu`` times CPU seconds of this process instead of wall-clock seconds
(the ratios then do not count the time the process waits for a core).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import torch
import torchvision

from analysis import survey
from analysis.cli.main import thp_mode
from analysis.hooks import eval_mode
from analysis.survey.stream import Stream

CLOCK = time.perf_counter  # --cpu: time.process_time, this process's CPU seconds (all threads)
_stream_seconds: list[float] = []


def _timed_run(run: Any) -> Any:
    """``Stream.run`` timed with ``CLOCK`` (the survey's own ``forward_seconds`` is wall-clock)."""
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = CLOCK()
        try:
            return run(*args, **kwargs)
        finally:
            _stream_seconds.append(CLOCK() - start)
    return timed


Stream.run = _timed_run(Stream.run)  # type: ignore[method-assign]


def plain_forward(model: torch.nn.Module, x: torch.Tensor, batch: int) -> float:
    start = CLOCK()
    with eval_mode(model), torch.inference_mode():
        for s in range(0, x.shape[0], batch):
            model(x[s:s + batch])
    return CLOCK() - start


def timed_survey(model: torch.nn.Module, x: torch.Tensor, batch: int, **kwargs: Any) -> tuple[float, float, Any]:
    """(end-to-end seconds, stream seconds, result) of one survey call."""
    start = CLOCK()
    result = survey(model, x, layers="Conv2d", batch_size=batch, progress=False, **kwargs)
    return CLOCK() - start, _stream_seconds[-1], result


def similarity_gap(exact: Any, estimate: Any) -> tuple[float, float, float]:
    """(max over layers of |Δ mean |S||, of |Δ mean S²|, RMS difference of all similarity entries)."""
    d_abs = d_sq = 0.0
    sq, n = 0.0, 0
    for layer in exact:
        other = estimate[layer.name]
        a, b = layer.redundancy.scores, other.redundancy.scores
        d_abs = max(d_abs, abs(a["mean_abs_similarity"].observed - b["mean_abs_similarity"].observed))
        d_sq = max(d_sq, abs(a["mean_sq_similarity"].observed - b["mean_sq_similarity"].observed))
        diff = layer.similarity.matrix - other.similarity.matrix
        sq += float(diff.double().square().sum())
        n += diff.numel()
    return d_abs, d_sq, (sq / max(n, 1)) ** 0.5


def _keeper(times: dict[str, list[float]]) -> Any:
    def keep(key: str, seconds: float) -> None:
        times.setdefault(key, []).append(seconds)
    return keep


def row(label: str, seconds: float, forward: float, target: float | None) -> str:
    ratio = seconds / forward
    verdict = "" if target is None else f"target ≤ {target:.1f}×  {'met' if ratio <= target else 'MISSED'}"
    return f"  {label:<34} {seconds:7.2f} s  {ratio:5.2f}×  {verdict}"


def _huge_pages(want: str) -> None:
    """Re-execute this script with ``THP_MEM_ALLOC_ENABLE`` set as asked (torch reads it once, at its first
    allocation, so it cannot be changed in a running process)."""
    have = os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"
    if want == "inherit" or have == (want == "on"):
        return
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1" if want == "on" else "0")
    os.execve(sys.executable, list(sys.orig_argv), env)  # orig_argv: interpreter flags (-X, -W) kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet50"])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--positions", type=int, default=64)
    parser.add_argument("--skip", nargs="*", default=[], choices=["positions", "baseline"],
                        help="leave these runs out (quicker profiling)")
    parser.add_argument("--cpu", action="store_true",
                        help="time in CPU seconds of this process (steadier than wall-clock on a shared machine)")
    parser.add_argument("--huge-pages", choices=("on", "off", "inherit"), default="inherit",
                        help="run with PyTorch's transparent huge pages on or off (THP_MEM_ALLOC_ENABLE; the script "
                             "re-executes itself to set it) or as the environment says (default). The plain "
                             "forward's page faults move every ratio: docs/survey.md, 'Huge pages'")
    args = parser.parse_args()
    _huge_pages(args.huge_pages)
    global CLOCK
    if args.cpu:
        CLOCK = time.process_time
    torch.set_num_threads(args.threads)
    x = torch.randn(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.images} images of 224×224, "
          f"batch {args.batch_size}, fastest of {args.repeats}, {'CPU' if args.cpu else 'wall-clock'} seconds, "
          f"huge pages {'on' if os.environ.get('THP_MEM_ALLOC_ENABLE') == '1' else 'off'} "
          f"(kernel THP mode: {thp_mode()})")
    for name in args.models:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        plain_forward(model, x[: args.batch_size], args.batch_size)  # warm-up: first-call costs (imports of
        timed_survey(model, x[:4], 2, baseline="untrained", positions=args.positions)  # scoring, allocator) out
        times: dict[str, list[float]] = {}
        keep = _keeper(times)
        exact = estimate = None
        for _ in range(args.repeats):  # interleaved, so that all runs see the same machine load
            keep("forward", plain_forward(model, x, args.batch_size))
            total, stream, exact = timed_survey(model, x, args.batch_size)
            keep("survey", total)
            keep("stream", stream)
            keep("scoring", total - stream)
            if "positions" not in args.skip:
                total, stream, estimate = timed_survey(model, x, args.batch_size, positions=args.positions)
                keep("positions stream", stream)
                keep("positions survey", total)
            if "baseline" not in args.skip:
                total, _, _ = timed_survey(model, x, args.batch_size, baseline="untrained")
                keep("baseline survey", total)
        best = {k: min(v) for k, v in times.items()}
        f = best["forward"]
        print(f"\n{name}: {len(exact)} Conv2d layers")
        print(row("plain forwards", f, f, None))
        print(row("survey() end to end (default)", best["survey"], f, 4.0))
        print(row("  its stream", best["stream"], f, 3.0))
        print(row("  its scoring", best["scoring"], f, 1.0))
        if "positions stream" in best:
            print(row(f"positions={args.positions}: stream", best["positions stream"], f, 1.5))
            print(row(f"positions={args.positions}: end to end", best["positions survey"], f, None))
            d_abs, d_sq, rms = similarity_gap(exact, estimate)
            print(f"  positions={args.positions} vs exact: max |Δ mean |S|| {d_abs:.4f}, max |Δ mean S²| "
                  f"{d_sq:.4f} (target ≤ 0.02 {'met' if max(d_abs, d_sq) <= 0.02 else 'MISSED'}), RMS Δ S_ij "
                  f"{rms:.4f}")
        if "baseline survey" in best:
            print(row("baseline='untrained' end to end", best["baseline survey"], f, None))
            print(row("  added by the baseline", best["baseline survey"] - best["survey"], f, 1.2))


if __name__ == "__main__":
    main()
