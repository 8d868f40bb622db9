"""CPU eval latency: our ghostnet_100 (unfused, fused) vs timm's ghostnet_100 and torchvision's MobileNets,
and our fused GhostNetV2 / V3 1.0x beside timm's (timm's V3 re-parameterised with its own
``reparameterize_model``).

Random weights (latency does not depend on them). Each model runs under torch.inference_mode after a
warm-up; the models are measured interleaved (one call of each per round, in a rotating order) so that
machine noise hits them alike, and the median of the rounds is reported with the ratio to the timm
counterpart (``REFERENCE``: timm ghostnet_100 unless listed there).

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
from timm.utils import reparameterize_model

from ghostnet import fuse, ghostnet_100, ghostnetv2_100, ghostnetv3_100, load_checkpoint

# Row -> the timm row its "vs timm" ratio is taken against (rows not listed: timm ghostnet_100).
REFERENCE = {
    "ours ghostnetv2_100 fused": "timm ghostnetv2_100",
    "ours ghostnetv3_100 fused": "timm ghostnetv3_100 (deploy)",
}


def build_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    reference = timm.create_model("ghostnet_100", pretrained=False).eval()
    ours = ghostnet_100().eval()
    ours.load_state_dict(reference.state_dict())
    v2_reference = timm.create_model("ghostnetv2_100", pretrained=False).eval()
    v2 = ghostnetv2_100().eval()
    v2.load_state_dict(v2_reference.state_dict())
    v3_reference = timm.create_model("ghostnetv3_100", pretrained=False).eval()
    with torch.no_grad():  # 3-5 summed branches per conv: scale them so activations stay O(1)
        for name, module in v3_reference.named_modules():
            if isinstance(module, torch.nn.BatchNorm2d) and "_rpr_" in name:
                module.weight.fill_(0.25)
    v3 = ghostnetv3_100().eval()
    load_checkpoint(v3, v3_reference.state_dict())  # maps timm's branch norm names
    return {
        "timm ghostnet_100": reference,
        "ours ghostnet_100": ours,
        "ours fused": fuse(ours),
        "ours fused (NCHW)": fuse(ours, channels_last=False),
        "tv mobilenet_v2": torchvision.models.mobilenet_v2().eval(),
        "tv mobilenet_v3_large": torchvision.models.mobilenet_v3_large().eval(),
        "timm ghostnetv2_100": v2_reference,
        "ours ghostnetv2_100 fused": fuse(v2),
        "timm ghostnetv3_100 (deploy)": reparameterize_model(v3_reference),
        "ours ghostnetv3_100 fused": fuse(v3),
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
        diffs = {
            row: (models[row](x) - models[REFERENCE.get(row, "timm ghostnet_100")](x)).abs().max().item()
            for row in ("ours fused", *REFERENCE)
        }
    print(f"torch {torch.__version__}, timm {timm.__version__}, threads {args.threads}, 224x224, "
          "fused vs timm max abs diff " + ", ".join(f"{row}: {d:.1e}" for row, d in diffs.items()))
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
            ratio = results[batch][name] / results[batch][REFERENCE.get(name, "timm ghostnet_100")]
            cells.append(f"{ms:.2f} | {ratio:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("vs timm = latency / latency of the timm counterpart (timm ghostnet_100 for v1 and the MobileNets); "
          "below 1.00 is faster, speed-up = 1 / ratio.")


if __name__ == "__main__":
    main()
