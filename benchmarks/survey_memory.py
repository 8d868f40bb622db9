"""Memory of a whole-network survey: the statistics' exact size, the process's peak, and its growth with images.

Each run is a fresh subprocess surveying every Conv2d output of mobilenet_v2 (random weights; the memory does
not depend on them) over random 224×224 images made as they are loaded (a DataLoader, so the image set itself
takes no memory), with the default settings, without and with ``baseline="untrained"``. Reported per run:

* ``statistics``: the exact bytes of the accumulators the survey keeps (``GroupedStats.nbytes`` summed over
  the layers, observed and untrained), what issue 9 bounds: ≤ 1.5 GB, ≤ 3 GB with the untrained baseline;
* ``peak − model``: the process's peak resident memory (``getrusage`` max RSS) minus its resident memory after
  loading the model, importing everything and one warm-up forward (so: statistics + one batch's forward and
  capture + the scoring's temporaries + the untrained copy of the network);
* the same peak for a second image count (default 256) and the ratio, the statistics' independence of the
  number of images (target ≤ 1.10).

    python benchmarks/survey_memory.py [--model mobilenet_v2] [--images 64 256] [--runs none untrained]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

GB = 1e9


def random_images(n: int, batch: int) -> Any:
    """A DataLoader over n random images, each made when it is loaded (the set itself takes no memory)."""
    import torch

    class RandomImages(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return n

        def __getitem__(self, index: int) -> torch.Tensor:
            return torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(index))

    return torch.utils.data.DataLoader(RandomImages(), batch_size=batch)


def resident_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def child(model_name: str, n: int, batch: int, baseline: str | None, threads: int) -> None:
    import torch
    import torchvision

    from analysis import survey

    torch.set_num_threads(threads)
    model = getattr(torchvision.models, model_name)(weights=None).eval()
    with torch.inference_mode():
        model(torch.randn(batch, 3, 224, 224))  # warm-up: the forward's own allocations are in the base line
    before = resident_bytes()
    result = survey(model, random_images(n, batch), layers="Conv2d", batch_size=batch, progress=False,
                    baseline=baseline)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    stats = sum(layer.stats.nbytes() for layer in result)
    base = sum(layer.baseline_stats.nbytes() for layer in result if layer.baseline_stats is not None)
    print(json.dumps({"images": result.meta["images"], "layers": len(result), "stats": stats, "baseline": base,
                      "model_rss": before, "peak": peak}))


def run(args: argparse.Namespace, n: int, baseline: str | None) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, __file__, "--model", args.model, "--batch-size", str(args.batch_size), "--threads",
           str(args.threads), "--child", str(n)] + (["--baseline", baseline] if baseline else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--images", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", nargs="+", default=["none", "untrained"], choices=["none", "untrained"],
                        help="surveys without and with the untrained baseline (default: both)")
    parser.add_argument("--baseline", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.model, args.child, args.batch_size, args.baseline, args.threads)
        return
    print(f"{args.model}, every Conv2d, default survey settings, batch {args.batch_size}, {args.threads} threads")
    for baseline, bound in ((None, 1.5), ("untrained", 3.0)):
        if (baseline or "none") not in args.runs:
            continue
        peaks = {}
        for n in args.images:
            r = run(args, n, baseline)
            held = (r["stats"] + r["baseline"]) / GB
            peaks[n] = r["peak"] - r["model_rss"]
            print(f"  baseline={baseline!s:<9} {r['images']:>4} images, {r['layers']} layers: statistics "
                  f"{r['stats'] / GB:.3f} GB + untrained {r['baseline'] / GB:.3f} GB = {held:.3f} GB (target ≤ "
                  f"{bound} GB {'met' if held <= bound else 'MISSED'}); peak RSS {r['peak'] / GB:.3f} GB, "
                  f"model and runtime {r['model_rss'] / GB:.3f} GB, peak − model {peaks[n] / GB:.3f} GB", flush=True)
        if len(peaks) > 1:
            small, large = peaks[min(peaks)], peaks[max(peaks)]
            print(f"  baseline={baseline!s:<9} (peak − model) at {max(peaks)} / at {min(peaks)} images = "
                  f"{large / small:.3f} (target ≤ 1.10)")


if __name__ == "__main__":
    main()
