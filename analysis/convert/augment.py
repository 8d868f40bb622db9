"""Seeded augmentation of image tensors for :func:`analysis.convert.recover.recover`: random resized crops and
horizontal flips, drawn from a ``torch.Generator`` and applied to a whole batch at once.

A crop keeps an area fraction drawn uniformly from ``scale`` and a log-uniform aspect ratio from ``ratio``
(both sides clipped to the image), placed uniformly inside the image, and is resized back to the image's own
size by bilinear sampling (``affine_grid`` + ``grid_sample``, ``align_corners=False``: a continuous crop, so
output pixels at the crop's edge may blend in the neighbouring pixel outside it, where crop-then-resize
would repeat the edge pixel); a flip mirrors it
left-right with probability 1/2. The parameters of a batch depend on the generator alone, so the same
generator state gives the same augmented batch on any process.

Mixing (``draw_mix`` / ``apply_mix``) blends each image with a partner from the same batch, so a handful of
photos gives inputs far from any one of them (distillation by "function matching": teacher and student see
the same mixed image, Beyer et al., CVPR 2022). ``"mixup"`` takes ``lam · x + (1 − lam) · partner``;
``"cutmix"`` pastes a box of the partner covering a fraction ``1 − lam`` of the image (clipped to the image)
into it. ``lam`` is uniform on [0, 1] (Beta(1, 1)), one per image; the partner is a seeded permutation of the
batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["MIXES", "CropParams", "MixParams", "apply_crops", "apply_mix", "draw_crops", "draw_mix"]

MIXES = ("mixup", "cutmix")

CropParams = torch.Tensor  # N x 5: width fraction, height fraction, centre x, centre y (in [-1, 1]), flip (+-1)
MixParams = torch.Tensor  # N x 4: partner index, lam, box centre x, box centre y (both fractions in [0, 1])


def draw_crops(n: int, generator: torch.Generator, scale: tuple[float, float] = (0.25, 1.0),
               ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True) -> CropParams:
    """``n`` crops as an ``n x 5`` float64 tensor (see :data:`CropParams`), drawn from ``generator``."""
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1])
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (1 - w) * (2 * u[:, 2] - 1)  # the crop stays inside [-1, 1]
    cy = (1 - h) * (2 * u[:, 3] - 1)
    sign = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if flip else torch.ones(n, dtype=torch.float64)
    return torch.stack([w, h, cx, cy, sign], 1)


def apply_crops(x: torch.Tensor, crops: CropParams) -> torch.Tensor:
    """``x`` (N x C x H x W) cropped, resized back to H x W and flipped as ``crops`` say (one row per image)."""
    if crops.shape != (x.shape[0], 5):
        raise ValueError(f"crops must be {x.shape[0]} x 5 for {x.shape[0]} images, got {tuple(crops.shape)}")
    w, h, cx, cy, sign = crops.T
    theta = torch.zeros(x.shape[0], 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = w * sign  # a negative x scale mirrors the crop
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    dtype = x.dtype if x.is_floating_point() else torch.float32
    grid = F.affine_grid(theta.to(device=x.device, dtype=dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x.to(dtype), grid, mode="bilinear", padding_mode="border", align_corners=False)


def draw_mix(n: int, generator: torch.Generator) -> MixParams:
    """Mixing parameters for a batch of ``n`` as an ``n x 4`` float64 tensor (see :data:`MixParams`)."""
    partner = torch.randperm(n, generator=generator).to(torch.float64)
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    return torch.stack([partner, u[:, 0], u[:, 1], u[:, 2]], 1)


def apply_mix(x: torch.Tensor, partner: torch.Tensor, mix: MixParams, kind: str) -> torch.Tensor:
    """``x`` (N x C x H x W) mixed with ``partner`` (the same shape: each row's partner image) as ``mix`` says.

    ``mixup``: ``lam · x + (1 − lam) · partner``. ``cutmix``: a box of side fractions ``sqrt(1 − lam)``
    centred at ``mix[:, 2:4]`` (of the width and height), clipped to the image, is taken from ``partner``.
    """
    if kind not in MIXES:
        raise ValueError(f"kind must be one of {', '.join(MIXES)}, got {kind!r}")
    if partner.shape != x.shape or mix.shape != (x.shape[0], 4):
        raise ValueError(f"partner must match x {tuple(x.shape)} and mix be {x.shape[0]} x 4, got "
                         f"{tuple(partner.shape)} and {tuple(mix.shape)}")
    lam = mix[:, 1]
    if kind == "mixup":
        w = lam.to(dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
        return w * x + (1 - w) * partner
    height, width = x.shape[-2:]
    side = torch.sqrt(1 - lam)
    out = x.clone()
    for i in range(x.shape[0]):
        (left, right), (top, bottom) = (_span(float(mix[i, 2]) * n, float(side[i]) * n, n) for n in (width, height))
        out[i, :, top:bottom, left:right] = partner[i, :, top:bottom, left:right]
    return out


def _span(centre: float, size: float, n: int) -> tuple[int, int]:
    """Pixel range ``[start, stop)`` of an interval of ``size`` around ``centre`` (rounded half up), inside 0..n."""
    return (min(max(math.floor(centre - size / 2 + 0.5), 0), n), min(max(math.floor(centre + size / 2 + 0.5), 0), n))
