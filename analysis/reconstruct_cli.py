"""CLI commands ``ghostmaps fit`` (GhostNet Table 1 for one layer) and ``ghostmaps ghostify`` (training-free
Ghost replacement of a pretrained model, with its verification report and plots)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ghostnet._utils import images_tensor

from ._io import atomic_path, atomic_write
from .cli import positive_int
from .errors import GhostmapsError

GHOSTIFY_JSON = "ghostify.json"
STATE_FILE = "model_state.pt"


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (a count where 0 means none, or off)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _write_text(path: Path, text: str) -> Path:
    """Write atomically: the file appears complete or not at all."""
    return atomic_write(path, text)


def _load(args: argparse.Namespace) -> tuple[nn.Module, Any, Any]:
    from .models import default_preprocess, load_model

    model, preprocess, info = load_model(args.model, weights=args.weights, device=args.device)
    if args.image_size is not None:
        if args.image_size < 16:
            raise GhostmapsError(f"--image-size must be at least 16 pixels, got {args.image_size}")
        preprocess = default_preprocess(resize=round(args.image_size * 256 / 224), crop=args.image_size)
    return model, preprocess, info


def _images(source: list[str], preprocess: Any, limit: int | None) -> torch.Tensor:
    from .images import load_images

    return images_tensor(load_images(source, transform=preprocess, limit=limit), "--images", GhostmapsError)


def _image_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--images", "-i", nargs="+", default=["samples"],
                   help=f"{what}: files, folders, globs or 'samples' (default: %(default)s)")
    p.add_argument("--limit", type=positive_int, help="use at most this many images")
    p.add_argument("--image-size", type=positive_int,
                   help="centre-crop size in pixels (default: the model's own, 224)")


# ----------------------------------------------------------------------------------------------------------
# fit


def cmd_fit(args: argparse.Namespace) -> int:
    from .capture import capture_maps, list_layers, single_entry
    from .pairs import ghost_pairs
    from .pipeline import suggest_layer
    from .reconstruct import reconstruction_table
    from .similarity import channel_similarity

    model, preprocess, info = _load(args)
    x = _images(args.images, preprocess, args.limit)
    layer = args.layer or suggest_layer(list_layers(model, tuple(x[:1].shape), device=args.device),
                                        min_size=max(1, x.shape[-1] // 4))
    maps = capture_maps(model, layer, x, device=args.device)
    _, fmap = single_entry(maps, layer, ndim=4)
    pairs = ghost_pairs(channel_similarity(fmap, layer=layer), k=args.pairs)
    if not len(pairs):
        raise GhostmapsError(f"layer {layer!r} has fewer than two live channels; pick another layer")
    table = reconstruction_table(fmap, pairs, ds=args.d, n_random=args.random, seed=args.seed)
    print(f"{info.name} ({info.weights}) · {layer} · {tuple(fmap.shape)} maps of {x.shape[0]} images")
    print(f"Table 1 protocol: MSE (relative error) of making map j from map i with a d x d depthwise op; "
          f"pairs = the {len(pairs)} most cosine-similar exclusive pairs")
    print(table)
    if args.out:
        out = Path(args.out)
        doc = {"model": info.to_dict(), "layer": layer, "shape": list(fmap.shape), "images": int(x.shape[0]),
               "pairs": [p.to_dict() for p in pairs], "table": table.to_dict()}
        print(f"wrote {_write_text(out / 'table1.json', json.dumps(doc, indent=2) + chr(10))}")
        print(f"wrote {table.to_csv(out / 'table1.csv')}")
    return 0


# ----------------------------------------------------------------------------------------------------------
# ghostify


def load_ghostified(out_dir: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild and load a model written by ``ghostmaps ghostify --out DIR``: the original architecture
    (randomly initialised, from the model spec recorded in ``ghostify.json``), ghostified by the recorded
    spec, then the saved state dict."""
    from ghostnet.convert import GhostifyError, rebuild

    from .models import load_model

    out = Path(out_dir)
    meta_path, state_path = out / GHOSTIFY_JSON, out / STATE_FILE
    if not meta_path.is_file() or not state_path.is_file():
        raise GhostmapsError(f"{out} does not hold {GHOSTIFY_JSON} and {STATE_FILE}; pass the --out folder of "
                             "`ghostmaps ghostify`")
    meta = json.loads(meta_path.read_text())
    base = load_model(meta["model"]["name"], weights=None, device=device).model
    try:
        model = rebuild(base, meta["result"]["spec"])
    except GhostifyError as exc:
        raise GhostmapsError(str(exc)) from exc
    model.load_state_dict(torch.load(state_path, map_location=device, weights_only=True))
    return model.eval()


def cmd_ghostify(args: argparse.Namespace) -> int:
    from ghostnet.convert import GhostifyError, ghostify

    from .plots import save_figure, verification
    from .verify import verify_replacement

    model, preprocess, info = _load(args)
    calib = _images(args.images, preprocess, args.limit)
    same = args.verify_images is None
    check = calib if same else _images(args.verify_images, preprocess, args.limit)
    try:
        new, result = ghostify(model, layers=args.layers, ratio=args.ratio, dw_size=args.d,
                               init=None if args.init == "none" else "fit", calibration_images=calib,
                               min_channels=args.min_channels, calibrate_steps=args.calibrate_steps)
    except GhostifyError as exc:
        raise GhostmapsError(str(exc)) from exc
    print(result)
    if not result.replaced:
        raise GhostmapsError("no conv was replaced (see the skipped list above); choose other --layers")
    note = ("verified on the calibration images (pass --verify-images for held-out ones)" if same
            else "verified on held-out images")
    report = verify_replacement(model, new, check, latency_runs=args.latency_runs, note=note)
    print(report)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / STATE_FILE) as tmp:
        torch.save(new.state_dict(), tmp)
    meta = {
        "model": info.to_dict(), "image_size": args.image_size, "calibration_images": args.images,
        "result": result.to_dict(),
        "rebuild": ("from analysis.reconstruct_cli import load_ghostified; model = load_ghostified(DIR)  # or: "
                    "ghostnet.convert.rebuild(load_model(model.name, weights=None).model, result.spec) then "
                    f"load_state_dict(torch.load(DIR/{STATE_FILE}))"),
    }
    written = [out / STATE_FILE, _write_text(out / GHOSTIFY_JSON, json.dumps(meta, indent=2) + "\n"),
               _write_text(out / "verification.json", report.to_json() + "\n")]
    written.append(_write_text(out / "verification.csv", report.to_csv()))
    fig = verification(report, title=f"ghostify {info.name}: {len(result.replaced)} convs, ratio {args.ratio}, "
                                      f"d {args.d}")
    written += save_figure(fig, out / "verification.png")
    for path in written:
        print(f"wrote {path}")
    return 0


def register(sub: Any) -> None:
    """Add ``fit`` and ``ghostify`` to the ``ghostmaps`` subcommands."""
    from .cli import add_model_args

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
    p.add_argument("--d", type=positive_int, nargs="+", default=[1, 3, 5, 7],
                   help="kernel sizes (default: 1 3 5 7)")
    p.add_argument("--random", type=non_negative_int, default=64,
                   help="random pairs in the baseline row (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random pairs (default: %(default)s)")
    _image_args(p, "images to fit on")
    p.add_argument("--out", "-o", help="folder for table1.json and table1.csv (default: print only)")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("ghostify", help="replace pretrained convs by Ghost convs (training-free) and verify",
                       description="Replace the chosen convs by Ghost convolutions initialised from the "
                                   "pretrained filters (intrinsic channels kept exactly, cheap ops fitted in "
                                   "closed form on the images), verify the result against the original (params, "
                                   "MACs, per-layer error, logits, top-1 agreement, latency) and write the "
                                   "state dict, ghostify.json (how to rebuild), the report and its plot.")
    add_model_args(p)
    p.add_argument("--layers", "-l", nargs="+", help="conv names or globs, e.g. 'features.1[0-4].*' (default: every "
                                                     "dense conv with >= --min-channels outputs but the stem)")
    p.add_argument("--ratio", "-s", type=positive_int, default=2, help="Ghost ratio s (default: %(default)s)")
    p.add_argument("--d", type=positive_int, default=3, help="cheap depthwise kernel size (default: %(default)s)")
    p.add_argument("--init", choices=("fit", "none"), default="fit",
                   help="'fit' from the pretrained conv, 'none' random (default: %(default)s)")
    p.add_argument("--calibrate-steps", type=non_negative_int, default=0,
                   help="Adam steps of layer-wise MSE calibration per layer after the fit (default: off)")
    p.add_argument("--min-channels", type=non_negative_int, default=16,
                   help="default layer choice: convs with at least this many outputs (default: %(default)s)")
    _image_args(p, "calibration images")
    p.add_argument("--verify-images", nargs="+", help="held-out images for the report (default: the calibration "
                                                      "images)")
    p.add_argument("--latency-runs", type=non_negative_int, default=5, help="timed forwards per model, 0 = skip "
                                                               "(default: %(default)s)")
    p.add_argument("--out", "-o", default="ghostify-out", help="output folder (default: %(default)s)")
    p.set_defaults(func=cmd_ghostify)
