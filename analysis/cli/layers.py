"""``ghostmaps layers``: every capturable module output of a model, with its type and shape."""

from __future__ import annotations

import argparse
import json
from typing import Any

from analysis.cli.common import add_model_args, positive_int


def run(args: argparse.Namespace) -> int:
    import fnmatch

    from analysis.data.models import load_model
    from analysis.hooks import list_layers

    model, _, info = load_model(args.model_name or args.model, weights=args.weights, device=args.device)
    layers = list_layers(model, args.input_size)
    if args.grep:
        layers = [info_ for info_ in layers if fnmatch.fnmatch(info_.name, args.grep) or args.grep == info_.type]
    if args.json:
        print(json.dumps([layer.to_dict() for layer in layers], indent=2))
        return 0
    width = max([len(layer.name) for layer in layers] + [5])
    tw = max([len(layer.type) for layer in layers] + [4])
    print(f"{info.name} ({info.weights}), input 3×{args.input_size}×{args.input_size}: {len(layers)} outputs")
    print(f"{'layer':<{width}}  {'type':<{tw}}  output shape")
    for layer in layers:
        print(f"{layer.name:<{width}}  {layer.type:<{tw}}  {'×'.join(map(str, layer.shape))}")
    return 0


def register(sub: Any) -> None:
    """Add ``layers`` to the ``ghostmaps`` subcommands."""
    p = sub.add_parser("layers", help="list the layers of a model that can be captured",
                       description="List every module output of MODEL with its type and output shape "
                                   "(one dry forward). Names with #k are later calls of a reused module.")
    p.add_argument("model_name", nargs="?", metavar="MODEL", help="model: as --model, e.g. resnet50, ghostnetv2_100 or "
                                                                 "timm:resnet50 (default: mobilenet_v2)")
    add_model_args(p, weights_default="none")
    p.add_argument("--input-size", type=positive_int, default=224, help="input height and width (default: %(default)s)")
    p.add_argument("--grep", help="show only layers matching this glob or module type, e.g. 'features.*' or Conv2d")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
