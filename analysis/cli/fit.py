"""``ghostmaps fit``: the paper's Table 1 for one layer (cheap-op error of ghost pairs for each d), held out:
pairs chosen and ops fitted on one part of the images, errors reported on the other."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from analysis._core.errors import GhostmapsError
from analysis._core.io import atomic_write
from analysis.cli.common import (
    add_image_args,
    add_model_args,
    images_batch,
    load_for_cli,
    non_negative_int,
    out_folder,
    positive_int,
)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from analysis.data.batches import images_tensor
    from analysis.data.images import load_images
    from analysis.hooks import capture_maps, list_layers, single_entry
    from analysis.pipeline import suggest_layer
    from analysis.reconstruct import reconstruction_table

    model, preprocess, info = load_for_cli(args)
    source = load_images(args.images, transform=preprocess, limit=args.limit)
    x = images_tensor(source, "--images", GhostmapsError)
    layer = args.layer or suggest_layer(list_layers(model, tuple(x[:1].shape), device=args.device),
                                        min_size=max(1, x.shape[-1] // 4))
    _, fmap = single_entry(capture_maps(model, layer, x, device=args.device), layer, ndim=4)
    held = None
    if args.heldout:
        hx = images_batch(args.heldout, preprocess, args.limit)
        _, held = single_entry(capture_maps(model, layer, hx, device=args.device), layer, ndim=4)
    table = reconstruction_table(fmap, args.pairs, ds=args.d, n_random=args.random, seed=args.seed, heldout=held,
                                 split=args.split, groups=None if held is not None else source.photo_names,
                                 metric=args.metric)
    pairs = [(r["src"], r["dst"], r["sparse"]) for r in table.records if r["kind"] == "pair" and r["d"] == table.ds[0]]
    print(f"{info.name} ({info.weights}) · {layer} · {tuple(fmap.shape)} maps of {x.shape[0]} images")
    print(f"Table 1 protocol, held out: relative error of making map j from map i with a d x d depthwise op; "
          f"pairs = the {len(pairs)} most {args.metric}-similar exclusive pairs on the fit images")
    print(table)
    if args.out:
        out = Path(args.out)
        doc = {"model": info.to_dict(), "layer": layer, "shape": list(fmap.shape), "images": int(x.shape[0]),
               "heldout_images": None if held is None else int(held.shape[0]), "metric": args.metric,
               "pairs": [{"i": i, "j": j, "sparse": sparse} for i, j, sparse in pairs], "table": table.to_dict()}
        print(f"wrote {atomic_write(out / 'table1.json', json.dumps(doc, indent=2) + chr(10))}")
        table.to_csv(out / "table1.csv")
        print(f"wrote {out / 'table1.csv'}")
    return 0


def register(sub: Any) -> None:
    """Add ``fit`` to the ``ghostmaps`` subcommands."""
    p = sub.add_parser("fit", help="GhostNet Table 1 for a layer, held out: cheap-op error of ghost pairs for "
                                   "d = 1, 3, 5, 7",
                       description="Capture one layer's maps, split the images (by photo, seeded) or take "
                                   "--heldout images, choose the most similar exclusive channel pairs on the fit "
                                   "part, fit the d x d depthwise op making one map of each pair from the other "
                                   "in closed form for each d, and report the relative error on the held-out "
                                   "part (in-sample beside it); a random-pair baseline row per d. Offline "
                                   "default: pretrained mobilenet_v2 on the sample photos; the paper used "
                                   "--model resnet50 --layer layer1.")
    add_model_args(p)
    p.add_argument("--layer", "-l", help="layer name (see `ghostmaps layers`); default: an early layer with "
                                          "many channels")
    p.add_argument("--pairs", "-k", type=positive_int, default=3, help="ghost pairs (default: %(default)s)")
    p.add_argument("--d", type=positive_int, nargs="+", default=[1, 3, 5, 7],
                   help="kernel sizes (default: 1 3 5 7)")
    p.add_argument("--random", type=non_negative_int, default=64,
                   help="random pairs in the baseline row (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the random pairs (default: "
                                                       "%(default)s)")
    p.add_argument("--metric", choices=("pearson", "cosine", "r2"), default="pearson",
                   help="similarity that chooses the pairs on the fit images (default: %(default)s)")
    p.add_argument("--split", type=_fraction, default=0.5,
                   help="fraction of the photos held out when no --heldout is given (default: %(default)s)")
    p.add_argument("--heldout", nargs="+", help="images to report on instead of a split (e.g. samples:evaluation)")
    add_image_args(p, "images to fit on")
    p.add_argument("--out", "-o", type=out_folder, help="folder for table1.json and table1.csv (default: print only)")
    p.set_defaults(func=run)

