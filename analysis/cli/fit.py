"""``ghostmaps fit``: the paper's Table 1 for one layer (cheap-op error of ghost pairs for each d)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from analysis._core.errors import GhostmapsError
from analysis._core.io import atomic_write
from analysis._core.validation import DEFAULT_METRIC, METRICS
from analysis.cli.common import (
    add_image_args,
    add_model_args,
    images_batch,
    load_for_cli,
    non_negative_int,
    positive_int,
)


def run(args: argparse.Namespace) -> int:
    from analysis.hooks import capture_maps, list_layers, single_entry
    from analysis.measure.pairs import ghost_pairs
    from analysis.measure.similarity import channel_similarity
    from analysis.pipeline import suggest_layer
    from analysis.reconstruct import reconstruction_table

    model, preprocess, info = load_for_cli(args)
    x = images_batch(args.images, preprocess, args.limit)
    layer = args.layer or suggest_layer(list_layers(model, tuple(x[:1].shape), device=args.device),
                                        min_size=max(1, x.shape[-1] // 4))
    maps = capture_maps(model, layer, x, device=args.device)
    _, fmap = single_entry(maps, layer, ndim=4)
    sim = channel_similarity(fmap, metric=args.metric, layer=layer)
    pairs = ghost_pairs(sim, k=args.pairs)
    if not len(pairs):
        raise GhostmapsError(f"layer {layer!r} has fewer than two live channels; pick another layer")
    table = reconstruction_table(fmap, pairs, ds=args.d, n_random=args.random, seed=args.seed)
    print(f"{info.name} ({info.weights}) · {layer} · {tuple(fmap.shape)} maps of {x.shape[0]} images")
    print(f"Table 1 protocol: MSE (relative error) of making map j from map i with a d x d depthwise op; "
          f"pairs = the {len(pairs)} most {sim.metric}-similar exclusive pairs"
          f"{' (' + str(sum(p.sparse for p in pairs)) + ' sparse: APoZ ≥ 0.8)' if any(p.sparse for p in pairs) else ''}")
    print(table)
    if args.out:
        out = Path(args.out)
        doc = {"model": info.to_dict(), "layer": layer, "shape": list(fmap.shape), "images": int(x.shape[0]),
               "metric": sim.metric, "pairs": [p.to_dict() for p in pairs], "table": table.to_dict()}
        print(f"wrote {atomic_write(out / 'table1.json', json.dumps(doc, indent=2) + chr(10))}")
        table.to_csv(out / "table1.csv")
        print(f"wrote {out / 'table1.csv'}")
    return 0


def register(sub: Any) -> None:
    """Add ``fit`` to the ``ghostmaps`` subcommands."""
    p = sub.add_parser("fit", help="GhostNet Table 1 for a layer: cheap-op MSE of ghost pairs for d = 1, 3, 5, 7",
                       description="Capture one layer's maps on the images, take the most similar exclusive "
                                   "channel pairs, and fit the d x d depthwise op making one map of each pair "
                                   "from the other in closed form, for each d; a random-pair baseline row per "
                                   "d. Offline default: pretrained mobilenet_v2 on the sample photos; the paper "
                                   "used --model resnet50 --layer layer1.")
    add_model_args(p)
    p.add_argument("--layer", "-l", help="layer name (see `ghostmaps layers`); default: an early layer with "
                                          "many channels")
    p.add_argument("--pairs", "-k", type=positive_int, default=3, help="ghost pairs (default: %(default)s)")
    p.add_argument("--metric", choices=METRICS, default=DEFAULT_METRIC,
                   help="similarity the pairs are chosen by (default: %(default)s)")
    p.add_argument("--d", type=positive_int, nargs="+", default=[1, 3, 5, 7],
                   help="kernel sizes (default: 1 3 5 7)")
    p.add_argument("--random", type=non_negative_int, default=64,
                   help="random pairs in the baseline row (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random pairs (default: %(default)s)")
    add_image_args(p, "images to fit on")
    p.add_argument("--out", "-o", help="folder for table1.json and table1.csv (default: print only)")
    p.set_defaults(func=run)

