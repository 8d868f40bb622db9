"""GhostNet Table 4 at small scale: a VGG-style CNN vs. its Ghost version, trained from scratch on real data.

The paper's Table 4 (CIFAR-10) reports that replacing every conv of VGG-16 / ResNet-56 but the first by a
Ghost module (s=2, d=3) keeps the accuracy at about half the parameters and MACs. This script checks that
claim on scikit-learn's digits (1,797 real 8x8 handwritten digits shipped with scikit-learn, so it runs
offline in a couple of minutes on a CPU):

* plain:  conv3x3(1->32)-BN-ReLU, conv(32->32), maxpool, conv(32->64), conv(64->64), maxpool,
  conv(64->128), global average pool, linear(128->10); every conv followed by BN and ReLU;
* ghost:  the same, every conv but the first replaced by ``ghostnet.GhostModule(in, out, 3, ratio=2,
  dw_size=3, relu=True)`` (its own BN and ReLU inside, the drop-in for conv+BN+ReLU).

Both are trained with the same recipe (Adam, cosine schedule, fixed seeds) on the same stratified 70/30
split, for several seeds. Params are those the forward pass uses and MACs come from ``analysis.convert.macs.count_macs``
(multiply-adds, conv/linear only) at 1x1x8x8.

Run:  OMP_NUM_THREADS=1 python benchmarks/paper_table4_digits.py [--seeds 5] [--epochs 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from analysis.convert.macs import count_macs
from ghostnet import GhostModule

WIDTHS = [(1, 32), (32, 32), "pool", (32, 64), (64, 64), "pool", (64, 128)]


def make_net(ghost: bool) -> nn.Sequential:
    """The VGG-style digits CNN; ``ghost`` replaces every conv+BN+ReLU but the first by a GhostModule."""
    layers: list[nn.Module] = []
    first = True
    for w in WIDTHS:
        if w == "pool":
            layers.append(nn.MaxPool2d(2))
            continue
        cin, cout = w
        if ghost and not first:
            layers.append(GhostModule(cin, cout, kernel_size=3, ratio=2, dw_size=3, relu=True))
        else:
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        first = False
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(WIDTHS[-1][1], 10)]
    return nn.Sequential(*layers)


def data(split_seed: int = 0) -> tuple[torch.Tensor, ...]:
    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.as_tensor(digits.target, dtype=torch.long)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.3, stratify=digits.target, random_state=split_seed)
    return x[tr], y[tr], x[te], y[te]


def train_eval(net: nn.Module, xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor,
               epochs: int, seed: int, batch: int = 64, lr: float = 3e-3) -> float:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(ytr) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(ytr), generator=g)
        for i in range(0, len(ytr), batch):
            idx = perm[i:i + batch]
            xb = xtr[idx]
            shift = torch.randint(-1, 2, (2,), generator=g).tolist()  # light augmentation: +-1 pixel shift
            xb = torch.roll(xb, shifts=shift, dims=(2, 3))
            loss = loss_fn(net(xb), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        return float((net(xte).argmax(1) == yte).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    xtr, ytr, xte, yte = data()
    print(f"scikit-learn digits: {len(ytr)} train / {len(yte)} test images (8x8, stratified split, seed 0); "
          f"{args.epochs} epochs, seeds 0..{args.seeds - 1}")
    rows = {}
    for kind in ("plain", "ghost"):
        torch.manual_seed(0)
        rep = count_macs(make_net(kind == "ghost"), (1, 1, 8, 8))
        accs, t0 = [], time.perf_counter()
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            accs.append(train_eval(make_net(kind == "ghost"), xtr, ytr, xte, yte, args.epochs, seed))
        rows[kind] = (rep.params, rep.total_macs, accs, time.perf_counter() - t0)
    print(f"{'model':<8}{'params':>10}{'MACs':>10}{'test acc (mean +- sd)':>26}   per seed")
    for kind, (params, macs, accs, secs) in rows.items():
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{kind:<8}{params:>10,}{macs:>10,}{100 * statistics.mean(accs):>17.2f} +- {100 * sd:.2f} %   "
              + " ".join(f"{100 * a:.2f}" for a in accs) + f"   ({secs:.0f} s)")
    (p0, m0, a0, _), (p1, m1, a1, _) = rows["plain"], rows["ghost"]
    print(f"ghost/plain: params x{p1 / p0:.3f}, MACs x{m1 / m0:.3f}, "
          f"accuracy {100 * (statistics.mean(a1) - statistics.mean(a0)):+.2f} points")


if __name__ == "__main__":
    main()
