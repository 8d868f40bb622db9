"""Cost of a survey against plain forward passes over the same images, measured side by side.

For each model (random weights), 64 random 224×224 images in batches of 16:

* ``forward``: the plain forward passes (eval mode, inference mode);
* ``survey stream``: the same forwards with every Conv2d output captured and folded into its layer's
  statistics (what grows with the number of images);
* ``survey end``: scoring once at the end (similarity, groups, eigenvalues, baselines; no bootstrap), a
  one-off cost that does not grow with the number of images.

Each measurement is repeated and the fastest run kept (the machine may be shared). Prints the ratio
stream / forward, the target being at most 1.3×.

    OMP_NUM_THREADS=1 python benchmarks/survey_overhead.py [--models mobilenet_v2 resnet50] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

from analysis import survey
from analysis.hooks import eval_mode


def plain_forward(model: torch.nn.Module, x: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    with eval_mode(model), torch.inference_mode():
        for s in range(0, x.shape[0], batch):
            model(x[s:s + batch])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet50"])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.images} images of 224×224, "
          f"batch {args.batch_size}")
    for name in args.models:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        plain_forward(model, x[: args.batch_size], args.batch_size)  # warm-up
        fwd, stream, end = [], [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            fwd.append(plain_forward(model, x, args.batch_size))
            start = time.perf_counter()
            result = survey(model, x, layers="Conv2d", batch_size=args.batch_size, bootstrap=0, pairs=0,
                            progress=False)
            total = time.perf_counter() - start
            stream.append(result.meta["forward_seconds"])
            end.append(total - result.meta["forward_seconds"])
        f, s, e = min(fwd), min(stream), min(end)
        print(f"{name:<14} layers {len(result):>3}  forward {f:6.2f} s  survey stream {s:6.2f} s  "
              f"ratio {s / f:4.2f}×  (target ≤ 1.3×)  one-off scoring {e:5.2f} s")


if __name__ == "__main__":
    main()
