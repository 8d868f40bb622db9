"""Shared fixtures. Tests run on the CPU, single-threaded per worker (pytest -n 2 uses both cores)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import TinyNet

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mobilenet():
    """Pretrained torchvision mobilenet_v2 from the offline weights package."""
    from analysis import load_model

    return load_model("mobilenet_v2")


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TinyNet().eval()
