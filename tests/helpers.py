"""Helpers shared by several test modules."""

from __future__ import annotations

import socket

import torch
from torch import nn


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics of a sane scale (so outputs stay O(1) through 16 blocks)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model


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


class PlanNet(nn.Module):
    """A stem and four dense convs (BN + ReLU after each; one strided), pooling and a 10-class head: small
    enough to plan and ghostify in a fraction of a second. ``PlanNet()`` has fixed random weights (seed 0)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        widths = [3, 16, 32, 32, 48, 48]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, stride=2 if i == 2 else 1, bias=False)
                                   for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False)))
        self.bns = nn.ModuleList(nn.BatchNorm2d(b) for b in widths[1:])
        self.fc = nn.Linear(widths[-1], 10)
        randomize_(self, seed)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn in zip(self.convs, self.bns, strict=True):
            x = torch.relu(bn(conv(x)))
        return self.fc(x.mean((2, 3)))


def free_port() -> int:
    """A free TCP port on localhost, for the process group of a 2-process gloo test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def onnx_and_torch_outputs(model: nn.Module, path: str) -> tuple[object, object]:
    """Export ``model`` (eval mode) to ONNX at ``path`` and run a seeded 1×3×96×96 image through onnxruntime
    and through PyTorch: ``(onnx output, PyTorch output)`` as numpy arrays. Needs onnxruntime."""
    import warnings

    import onnxruntime as ort

    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=False, input_names=["image"], opset_version=17)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    return onnx_out, expected
