"""CPU eval latency: our ghostnet_100 (unfused, fused) vs timm's ghostnet_100 and torchvision's MobileNets.

Random weights (latency does not depend on them). Each model runs under torch.inference_mode after a
warm-up; the models are measured interleaved (one call of each per round, in a rotating order) so that
machine noise hits them alike, and the median of the rounds is reported with the ratio to timm.

    PYTHONPATH=. python benchmarks/ghostnet_speed.py [--threads 1] [--rounds 30] [--batches 1 16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import timm
import torch
import torchvision

from ghostnet import fuse, ghostnet_100


def build_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    reference = timm.create_model("ghostnet_100", pretrained=False).eval()
    ours = ghostnet_100().eval()
    ours.load_state_dict(reference.state_dict())
    return {
        "timm ghostnet_100": reference,
        "ours ghostnet_100": ours,
        "ours fused": fuse(ours),
        "ours fused (NCHW)": fuse(ours, channels_last=False),
        "tv mobilenet_v2": torchvision.models.mobilenet_v2().eval(),
        "tv mobilenet_v3_large": torchvision.models.mobilenet_v3_large().eval(),
    }


def measure(models: dict[str, Callable], x: torch.Tensor, rounds: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each model, measured interleaved."""
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                models[n](x)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for n in order:
                start = time.perf_counter()
                models[n](x)
                times[n].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--rounds", type=int, default=30, help="measured rounds at batch 1")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = build_models()
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        diff = (models["ours fused"](x) - models["timm ghostnet_100"](x)).abs().max().item()
    print(f"torch {torch.__version__}, timm {timm.__version__}, threads {args.threads}, 224x224, "
          f"fused vs timm max abs diff {diff:.1e}")
    results = {}
    for batch in args.batches:
        rounds = max(8, args.rounds // batch) if batch > 1 else args.rounds
        results[batch] = measure(models, torch.randn(batch, 3, 224, 224), rounds)
    header = "| model | " + " | ".join(f"batch {b} ms | vs timm" for b in args.batches) + " |"
    print(header)
    print("|---|" + "---:|---:|" * len(args.batches))
    for name in models:
        cells = []
        for batch in args.batches:
            ms = results[batch][name] * 1e3
            ratio = results[batch][name] / results[batch]["timm ghostnet_100"]
            cells.append(f"{ms:.2f} | {ratio:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("vs timm = latency / timm latency (below 1.00 is faster; speed-up = 1 / ratio).")


if __name__ == "__main__":
    main()
