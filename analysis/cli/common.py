"""What the ``ghostmaps`` commands share: argument types, the model and image options, and turning them
into a model and an image batch. No library functions live in ``analysis.cli``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from analysis._core.errors import GhostmapsError


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


def _blocking_file(path: Path) -> Path | None:
    """The first existing non-folder among ``path`` and its parents, or None."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def out_folder(text: str) -> str:
    """An output folder: refused before any work when it, or a folder above it, is an existing file."""
    block = _blocking_file(Path(text).expanduser())
    if block is not None:
        raise argparse.ArgumentTypeError(f"{text!r} cannot be an output folder: {str(block)!r} is a file; "
                                         "choose another path")
    return text


def out_file(text: str) -> str:
    """An output file: refused before any work when it is a folder or a folder above it is a file."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file name, e.g. {str(path / 'figure1.png')!r}")
    block = _blocking_file(path.parent)
    if block is not None:
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: {str(block)!r} is a file, not a folder")
    return text


def weights_arg(text: str) -> str | None:
    return None if text.lower() in ("none", "random") else text


def add_model_args(p: argparse.ArgumentParser, weights_default: str = "default") -> None:
    p.add_argument("--model", "-m", default="mobilenet_v2",
                   help="torchvision or ghostnet model name (resnet50, ghostnetv2_100), timm's zoo as "
                        "timm:NAME (timm:resnet50, timm:resnet18.a1_in1k; needs ghostmaps[timm]), or "
                        "'package.module:callable' (default: %(default)s)")
    p.add_argument("--weights", "-w", default=weights_default, type=weights_arg,
                   help="'default' (pretrained: torchvision's, the released ghostnet ones, or timm's from its "
                        "cache), 'none' (random init), a torchvision weights name such as IMAGENET1K_V2, or a "
                        "checkpoint path (default: %(default)s)")
    p.add_argument("--device", default="cpu", type=device_arg, help="torch device, e.g. cpu or cuda (default: %(default)s)")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (a count where 0 means none, or off)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def load_for_cli(args: argparse.Namespace) -> tuple[nn.Module, Any, Any]:
    from analysis.data.models import default_preprocess, load_model

    model, preprocess, info = load_model(args.model, weights=args.weights, device=args.device)
    if args.image_size is not None:
        if args.image_size < 16:
            raise GhostmapsError(f"--image-size must be at least 16 pixels, got {args.image_size}")
        preprocess = default_preprocess(resize=round(args.image_size * 256 / 224), crop=args.image_size)
    return model, preprocess, info


def images_batch(source: list[str], preprocess: Any, limit: int | None, name: str = "--images") -> torch.Tensor:
    """The images of an ``--images`` option as one N×C×H×W tensor (``analysis.data.batches``)."""
    from analysis.data.batches import as_images

    return as_images(source, preprocess, limit=limit, name=name).tensor()


def add_image_args(p: argparse.ArgumentParser, what: str, default: str = "samples") -> None:
    p.add_argument("--images", "-i", nargs="+", default=[default],
                   help=f"{what}: files, folders, globs or 'samples' (default: %(default)s)")
    p.add_argument("--limit", type=positive_int, help="use at most this many images (the first ones; with views, "
                                                       "this many photos, before the views are drawn)")
    p.add_argument("--image-size", type=positive_int,
                   help="centre-crop size in pixels (default: the model's own, 224)")
