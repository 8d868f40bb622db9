"""The ``ghostmaps`` command. Exit codes: 0 success, 2 bad usage or input, 130 interrupted."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import GhostmapsError

DEMO_OUT = Path("ghostmaps-out") / "demo"
# Further subcommands live beside the code they drive: each module has `register(subparsers)`, which adds its
# parser(s) with `set_defaults(func=...)`; the function returns the exit code.
COMMAND_MODULES: tuple[str, ...] = ("reconstruct_cli", "survey_cli")


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def device_arg(text: str) -> str:
    """argparse type: a torch device that exists on this machine."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"device {text!r} asked for, but CUDA is not available here; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"device {text!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return text


def _weights(text: str) -> str | None:
    return None if text.lower() in ("none", "random") else text


def add_model_args(p: argparse.ArgumentParser, weights_default: str = "default") -> None:
    p.add_argument("--model", "-m", default="mobilenet_v2",
                   help="torchvision model name, or 'package.module:callable' (default: %(default)s)")
    p.add_argument("--weights", "-w", default=weights_default, type=_weights,
                   help="'default' (pretrained), 'none' (random init), a torchvision weights name such as "
                        "IMAGENET1K_V2, or a checkpoint path (default: %(default)s)")
    p.add_argument("--device", default="cpu", type=device_arg, help="torch device, e.g. cpu or cuda (default: %(default)s)")


def cmd_layers(args: argparse.Namespace) -> int:
    import fnmatch

    from .capture import list_layers
    from .models import load_model

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


def cmd_info(args: argparse.Namespace) -> int:
    from .macs import count_macs, format_stage_table, stage_table
    from .models import load_model

    model, _, info = load_model(args.model_name or args.model, weights=args.weights, device=args.device)
    size = (1, 3, args.input_size, args.input_size)
    report = count_macs(model, size)
    rows = stage_table(model, report=report)
    if args.json:
        print(json.dumps({"model": info.to_dict(), "macs": report.total_macs, "params": report.params,
                          "registered_params": report.registered_params, "input_size": list(size),
                          "convention": report.convention, "stages": rows}, indent=2))
        return 0
    print(f"{info.name}  (weights: {info.weights})")
    print(f"  params  {report.params:,} used by the forward pass ({report.registered_params:,} registered)")
    print(f"  MACs    {report.total_macs / 1e6:,.2f} M at {args.input_size}×{args.input_size} "
          f"(= {report.total_flops / 1e6:,.2f} M FLOPs counting 2 per multiply-add)")
    print(f"  counted {report.convention}")
    print()
    print(format_stage_table(rows))
    return 0


def cmd_figure1(args: argparse.Namespace) -> int:
    from .models import load_model
    from .pipeline import run_figure1

    loaded = load_model(args.model, weights=args.weights, device=args.device)
    result = run_figure1(loaded, layer=args.layer, image=args.image, k=args.pairs, metric=args.metric,
                         max_channels=args.max_channels, device=args.device)
    written = result.save(args.out, svg=args.svg)
    print(result.pairs)
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .models import load_model
    from .pipeline import run_figure1

    out = Path(args.out)
    print("ghostmaps demo: pretrained mobilenet_v2 (offline weights) on the sample photos")
    loaded = load_model("mobilenet_v2", weights="default")
    print(f"  model   {loaded.info.name}  weights {loaded.info.weights}")
    result = run_figure1(loaded, image="samples:chelsea", k=args.pairs)
    print(f"  layer   {result.layer}  maps {'×'.join(map(str, result.maps.shape))}  image {result.image}")
    print(result.pairs)
    written = result.save(out / "figure1.png")
    print(f"Figure 1 and its pairs are in {out}/:")
    for path in written:
        print(f"  {path}")
    from .survey import survey
    from .survey_cli import write_survey_outputs

    print("survey: every Conv2d output over the sample photos (cross-image baselines, bootstrap intervals)")
    result = survey(loaded, "samples", bootstrap=20, progress=False)
    print(result)
    for path in write_survey_outputs(result, out, model=loaded, images="samples", save=False):
        print(f"  {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ghostmaps",
        description="How redundant are a CNN's feature maps? Find GhostNet-style ghost pairs and draw them.",
        epilog="Start with `ghostmaps demo` (offline). Each command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"ghostmaps {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="Figure 1 and a redundancy survey of pretrained mobilenet_v2, offline",
                       description="Run pretrained mobilenet_v2 (offline weights) on the sample photos, pick an "
                                   "early layer with many channels, and write the Figure 1 PNG and a JSON of the "
                                   "ghost pairs into an output folder; then survey every conv over the photos "
                                   "and write the per-layer scores (CSV, JSON) and the redundancy plots beside it.")
    p.add_argument("--out", "-o", default=str(DEMO_OUT), help="output folder (default: %(default)s)")
    p.add_argument("--pairs", "-k", type=positive_int, default=3, help="ghost pairs to mark (default: %(default)s)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("layers", help="list the layers of a model that can be captured",
                       description="List every module output of MODEL with its type and output shape "
                                   "(one dry forward). Names with #k are later calls of a reused module.")
    p.add_argument("model_name", nargs="?", metavar="MODEL", help="model (default: mobilenet_v2)")
    add_model_args(p, weights_default="none")
    p.add_argument("--input-size", type=positive_int, default=224, help="input height and width (default: %(default)s)")
    p.add_argument("--grep", help="show only layers matching this glob or module type, e.g. 'features.*' or Conv2d")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("info", help="parameters, MACs and a per-stage cost table of a model",
                       description="Count the parameters a forward pass uses and the multiply-accumulates (MACs, "
                                   "the GhostNet paper's 'FLOPs') of MODEL, overall and per stage.")
    p.add_argument("model_name", nargs="?", metavar="MODEL",
                   help="torchvision name, ghostnet_050/100/130, ghost_vgg16/resnet56/resnet50, or "
                        "package.module:callable (default: mobilenet_v2)")
    add_model_args(p, weights_default="none")
    p.add_argument("--input-size", type=positive_int, default=224, help="input height and width (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("figure1", help="draw GhostNet's Figure 1 for a layer and an image",
                       description="Capture one layer's feature maps for one image, find the most similar "
                                   "(mutually exclusive) channel pairs, and draw the maps with the pairs boxed "
                                   "in matching colours. Writes FILE (PNG) and FILE.json with the pair scores.")
    add_model_args(p)
    p.add_argument("--layer", "-l", help="layer name (see `ghostmaps layers`); default: an early layer with "
                                          "many channels")
    p.add_argument("--image", "-i", default="samples:chelsea",
                   help="image file, or samples:NAME for a built-in photo (default: %(default)s)")
    p.add_argument("--pairs", "-k", type=positive_int, default=3, help="ghost pairs to mark (default: %(default)s)")
    p.add_argument("--metric", choices=("cosine", "pearson"), default="cosine",
                   help="channel similarity (default: %(default)s)")
    p.add_argument("--max-channels", type=positive_int, default=64, help="tiles to show (default: %(default)s)")
    p.add_argument("--out", "-o", default="figure1.png", help="output PNG (default: %(default)s)")
    p.add_argument("--svg", action="store_true", help="also write an SVG beside the PNG")
    p.set_defaults(func=cmd_figure1)

    for module_name in COMMAND_MODULES:
        importlib.import_module(f"analysis.{module_name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ghostmaps`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except GhostmapsError as exc:
        print(f"ghostmaps {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
