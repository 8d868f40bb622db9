"""Seeded augmentation of image tensors for :func:`analysis.convert.recover.recover`: random resized crops and
horizontal flips, drawn from a ``torch.Generator`` and applied to a whole batch at once.

A crop keeps an area fraction drawn uniformly from ``scale`` and a log-uniform aspect ratio from ``ratio``
(both sides clipped to the image), placed uniformly inside the image, and is resized back to the image's own
size by bilinear sampling (``affine_grid`` + ``grid_sample``, ``align_corners=False``: a continuous crop, so
output pixels at the crop's edge may blend in the neighbouring pixel outside it, where crop-then-resize
would repeat the edge pixel); a flip mirrors it
left-right with probability 1/2. The parameters of a batch depend on the generator alone, so the same
generator state gives the same augmented batch on any process.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["CropParams", "apply_crops", "draw_crops"]

CropParams = torch.Tensor  # N x 5: width fraction, height fraction, centre x, centre y (in [-1, 1]), flip (+-1)


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
