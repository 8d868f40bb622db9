"""Shared fixtures. Tests run on the CPU, single-threaded per worker (pytest -n 2 uses both cores)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mobilenet():
    """Pretrained torchvision mobilenet_v2 from the offline weights package."""
    from analysis import load_model

    return load_model("mobilenet_v2")


class TinyNet(nn.Module):
    """A small CNN with a reused in-place ReLU, a tuple-returning submodule and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TinyNet().eval()
