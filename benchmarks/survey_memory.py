"""Peak memory of a survey does not grow with the number of images.

Runs the same survey (every Conv2d output of mobilenet_v2, random weights, random 224×224 images made as they are
loaded, so the input set itself takes no memory) over 16 and over 256 images, each in a fresh subprocess, and
compares the processes' peak resident memory (``resource.getrusage`` max RSS). Target: the 256-image peak within
10% of the 16-image one.

    OMP_NUM_THREADS=1 python benchmarks/survey_memory.py [--model mobilenet_v2] [--images 16 256]
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


def random_images(n: int, batch: int) -> Any:
    """A DataLoader over n random images, each made when it is loaded (the set itself takes no memory)."""
    import torch

    class RandomImages(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return n

        def __getitem__(self, index: int) -> torch.Tensor:
            return torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(index))

    return torch.utils.data.DataLoader(RandomImages(), batch_size=batch)


def child(model_name: str, n: int, batch: int, bootstrap: int) -> None:
    import torch
    import torchvision

    from analysis import survey

    torch.set_num_threads(1)
    model = getattr(torchvision.models, model_name)(weights=None).eval()
    result = survey(model, random_images(n, batch), layers="Conv2d", batch_size=batch, bootstrap=bootstrap,
                    progress=False)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"images": result.meta["images"], "layers": len(result), "peak_mib": peak_kib / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--images", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bootstrap", type=int, default=20)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.model, args.child, args.batch_size, args.bootstrap)
        return
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    # glibc raises its mmap threshold each time a large block is freed, after which big temporaries come from
    # the heap and fragment it; a longer run then shows a higher peak RSS for the same live data. Measure with
    # the default allocator and with the threshold pinned at 1 MiB, to tell fragmentation from retained data.
    for label, extra in (("default malloc", {}), ("MALLOC_MMAP_THRESHOLD_=1048576", {"MALLOC_MMAP_THRESHOLD_": "1048576"})):
        peaks = {}
        for n in args.images:
            out = subprocess.run([sys.executable, __file__, "--model", args.model, "--batch-size",
                                  str(args.batch_size), "--bootstrap", str(args.bootstrap), "--child", str(n)],
                                 check=True, capture_output=True, text=True, env={**env, **extra})
            row = json.loads(out.stdout.strip().splitlines()[-1])
            peaks[n] = row["peak_mib"]
            print(f"[{label}] {args.model}: {row['images']:>5} images, {row['layers']} layers, bootstrap "
                  f"{args.bootstrap}: peak RSS {row['peak_mib']:8.1f} MiB")
        small, large = peaks[min(peaks)], peaks[max(peaks)]
        print(f"[{label}] peak({max(peaks)}) / peak({min(peaks)}) = {large / small:.3f}  (target ≤ 1.10)")


if __name__ == "__main__":
    main()
