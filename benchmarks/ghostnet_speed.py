"""CPU eval latency: our ghostnet_100 (unfused, fused, fused + flat) vs timm's ghostnet_100, timm's model put
through the same deploy transforms (like for like), torchvision's MobileNets, and our fused GhostNetV2 / V3
1.0x beside timm's (timm's V3 re-parameterised with its own ``reparameterize_model``).

Random weights (latency does not depend on them). Each model runs under torch.inference_mode after a
warm-up; the models are measured interleaved (one call of each per round, in a rotating order) so that
machine noise hits them alike, and the median of the rounds is reported with the ratio to the timm
counterpart (``REFERENCE``: timm ghostnet_100 unless listed there). Two clocks: wall time, and the CPU time
of the calling thread (``time.thread_time``; with one intra-op thread all the work runs there), which
leaves out the time other processes hold the core on a shared machine. ``--repeats`` repeats the whole
interleaved measurement, so the spread between repeats shows the noise.

    PYTHONPATH=. python benchmarks/ghostnet_speed.py [--threads 1] [--rounds 40] [--batches 1 16] [--repeats 3]
        [--no-v2v3] [--breakdown]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable

import timm
import torch
import torchvision
from timm.utils import reparameterize_model

from ghostnet import fuse, ghostnet_100, ghostnetv2_100, ghostnetv3_100, load_checkpoint

TIMM = "timm ghostnet_100"
# Row -> the timm row its "vs timm" ratio is taken against (rows not listed: timm ghostnet_100).
REFERENCE = {
    "ours ghostnetv2_100 fused": "timm ghostnetv2_100",
    "ours ghostnetv2_100 fused flat": "timm ghostnetv2_100",
    "ours ghostnetv3_100 fused": "timm ghostnetv3_100 (deploy)",
}


def build_models(v2v3: bool = True) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    reference = timm.create_model("ghostnet_100", pretrained=False).eval()
    ours = ghostnet_100().eval()
    ours.load_state_dict(reference.state_dict())
    models = {
        TIMM: reference,
        "ours ghostnet_100": ours,
        "ours fused": fuse(ours),
        "ours fused flat": fuse(ours, flat=True),
        "ours fused (NCHW)": fuse(ours, channels_last=False),
        # like for like: timm's own model through the same deploy transforms
        "timm + ghostnet.fuse": fuse(reference),
        "timm + ghostnet.fuse flat": fuse(reference, flat=True),
        "tv mobilenet_v2": torchvision.models.mobilenet_v2().eval(),
        "tv mobilenet_v3_large": torchvision.models.mobilenet_v3_large().eval(),
    }
    if not v2v3:
        return models
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
    models.update({
        "timm ghostnetv2_100": v2_reference,
        "ours ghostnetv2_100 fused": fuse(v2),
        "ours ghostnetv2_100 fused flat": fuse(v2, flat=True),
        "timm ghostnetv3_100 (deploy)": reparameterize_model(v3_reference),
        "ours ghostnetv3_100 fused": fuse(v3),
    })
    return models


def measure(models: dict[str, Callable], x: torch.Tensor, rounds: int,
            warmup: int = 3) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and thread-CPU seconds per call of each model, measured interleaved."""
    names = list(models)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                models[n](x)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for n in order:
                start, start_cpu = time.perf_counter(), time.thread_time()
                models[n](x)
                cpu[n].append(time.thread_time() - start_cpu)
                wall[n].append(time.perf_counter() - start)
    return ({n: statistics.median(t) for n, t in wall.items()}, {n: statistics.median(t) for n, t in cpu.items()})


def _stub(gm: torch.fx.GraphModule, targets: set, x: torch.Tensor) -> torch.fx.GraphModule:
    """A copy of the flat model where every call of ``targets`` returns its output for ``x``, precomputed."""
    gm = copy.deepcopy(gm)
    cache: dict[str, torch.Tensor] = {}

    class Record(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> object:
            out = super().run_node(n)
            if n.op == "call_function" and n.target in targets:
                cache[n.name] = out.clone(memory_format=torch.preserve_format)
            return out

    with torch.inference_mode():
        Record(gm).run(x)
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in targets:
            node.target = (lambda out: lambda *args, **kwargs: out)(cache[node.name])
    gm.recompile()
    return gm


def breakdown(models: dict[str, torch.nn.Module], rounds: int) -> None:
    """Where the fused flat ghostnet_100's batch-1 time goes, in context: the same forward with the
    depthwise / dense convs, the 1x1 convs, all convs and linears, or the concatenations replaced by their
    precomputed outputs (what is left is the rest of the work); and the MACs of each kind."""
    from ghostnet.flat import conv1x1

    flat = models["ours fused flat"]
    x = torch.randn(1, 3, 224, 224)
    kinds = {"kxk convs (depthwise, stem)": {torch.conv2d}, "1x1 convs": {conv1x1}, "concatenations": {torch.cat},
             "all convs and the classifier": {torch.conv2d, conv1x1, torch.nn.functional.linear}}
    variants = {"ours fused flat": flat, TIMM: models[TIMM]}
    variants.update({f"without {k}": _stub(flat, t, x) for k, t in kinds.items()})
    _, cpu = measure(variants, x, rounds)
    macs = {"kxk": 0, "1x1": 0, "linear": 0}

    def count(module: torch.nn.Module, _inputs: object, out: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Linear):
            macs["linear"] += out.numel() * module.in_features
        else:
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            macs["1x1" if module.kernel_size == (1, 1) and module.groups == 1 else "kxk"] += out.numel() * k

    unfused = models["ours ghostnet_100"]
    hooks = [m.register_forward_hook(count) for m in unfused.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.inference_mode():
        unfused(x)
    for h in hooks:
        h.remove()
    total = cpu["ours fused flat"]
    print(f"\nbatch 1, thread-CPU time, in context: ours fused flat {total * 1e3:.2f} ms, {TIMM} {cpu[TIMM] * 1e3:.2f} ms "
          f"(x{cpu[TIMM] / total:.2f})")
    for k in kinds:
        left = cpu[f"without {k}"]
        print(f"  {k:30s} {(total - left) * 1e3:6.2f} ms ({(total - left) / total:4.0%}); if they cost nothing: "
              f"x{cpu[TIMM] / left:.2f} vs timm")
    print(f"  MACs: 1x1 convs {macs['1x1'] / 1e6:.1f} M, kxk convs {macs['kxk'] / 1e6:.1f} M, classifier "
          f"{macs['linear'] / 1e6:.1f} M")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--rounds", type=int, default=40, help="measured rounds at batch 1 (default 40)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=1, help="repeat the interleaved measurement (default 1)")
    parser.add_argument("--no-v2v3", action="store_true", help="leave out the GhostNetV2 / V3 rows")
    parser.add_argument("--breakdown", action="store_true",
                        help="also split the fused flat model's batch-1 time into convs, 1x1 convs, cat and the rest")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = build_models(not args.no_v2v3)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        diffs = {row: (models[row](x) - models[REFERENCE.get(row, TIMM)](x)).abs().max().item()
                 for row in models if row.startswith(("ours", "timm +"))}
    print(f"torch {torch.__version__}, timm {timm.__version__}, threads {args.threads}, 224x224, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; max abs diff vs timm "
          f"{max(diffs.values()):.1e} ({len(diffs)} rows)")
    for repeat in range(args.repeats):
        results = {}
        for batch in args.batches:
            rounds = max(8, args.rounds // batch) if batch > 1 else args.rounds
            results[batch] = measure(models, torch.randn(batch, 3, 224, 224), rounds)
        if args.repeats > 1:
            print(f"\nrepeat {repeat + 1}/{args.repeats} (load average {os.getloadavg()[0]:.1f})")
        print("| model | " + " | ".join(f"batch {b} ms | vs timm | CPU ms | vs timm" for b in args.batches) + " |")
        print("|---|" + "---:|---:|---:|---:|" * len(args.batches))
        for name in models:
            cells = []
            ref = REFERENCE.get(name, TIMM)
            for batch in args.batches:
                wall, cpu = results[batch]
                cells.append(f"{wall[name] * 1e3:.2f} | {wall[name] / wall[ref]:.2f} | "
                             f"{cpu[name] * 1e3:.2f} | {cpu[name] / cpu[ref]:.2f}")
            print(f"| {name} | " + " | ".join(cells) + " |")
    if args.breakdown:
        breakdown(models, args.rounds)
    print("vs timm = latency / latency of the timm counterpart (timm ghostnet_100 for v1, its fused forms and the "
          "MobileNets); below 1.00 is faster, speed-up = 1 / ratio. 'timm + ghostnet.fuse' is timm's own model "
          "through our deploy transform: like for like with 'ours fused'.")


if __name__ == "__main__":
    main()
