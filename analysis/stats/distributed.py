"""Reducing statistics across processes (torch.distributed): backend from the device, the process group
from torchrun's environment, every process holding the same layers before the all-reduce."""

from __future__ import annotations

import os
from typing import Any

import torch

from analysis._core.errors import GhostmapsError
from analysis.stats import GroupedStats


def _full_device(device: torch.device) -> torch.device:
    """``cuda`` as ``cuda:<current>`` (what a parameter's ``.device`` says), so devices compare whole."""
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def process_group_backend(device: torch.device) -> str:
    """The process-group backend for a survey on ``device``: NCCL for CUDA, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def _distributed_context(distributed: bool, device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether we started the process group); the backend follows the survey's device."""
    if not distributed:
        return 0, 1, False
    import torch.distributed as dist

    if not dist.is_available():
        raise GhostmapsError("distributed=True needs torch.distributed, which this torch build lacks.")
    started = False
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise GhostmapsError("distributed=True: no process group and no RANK/WORLD_SIZE; launch with torchrun "
                                 "or call torch.distributed.init_process_group first.")
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=process_group_backend(device))
        started = True
    return dist.get_rank(), dist.get_world_size(), started


def _sync_layers(found: dict[str, GroupedStats], order: list[str], template: GroupedStats,
                 device: torch.device, error: BaseException | None = None) -> list[str]:
    """Make every process hold the same layers (zero statistics where it saw none), then all-reduce them.

    Every process first shares its layers (with their map sizes) and whether its forward pass failed, so one
    process's error is raised on all of them instead of leaving the others waiting in a collective. ``template``
    gives the settings (groups, chunk, tol, positions, seed) of a layer a process has to create."""
    import torch.distributed as dist

    mine = {"error": None if error is None else f"{type(error).__name__}: {error}",
            "layers": [(name, found[name].channels, found[name].spatial) for name in order]}
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    failed = [(r, e["error"]) for r, e in enumerate(everyone) if e["error"] is not None]
    if failed:
        rank, message = failed[0]
        raise GhostmapsError(f"the survey failed on process {rank} ({message}); every process stops.") from error
    layers: dict[str, tuple[int, tuple[int, ...]]] = {}
    for entries in everyone:
        for name, channels, spatial in entries["layers"]:
            layers.setdefault(name, (channels, tuple(spatial or ())))
    for name, (channels, spatial) in layers.items():
        if name not in found:
            found[name] = GroupedStats(groups=template.groups, chunk=template.chunk, tol=template.tol,
                                       positions=template.positions, seed=template.seed).init(channels, spatial,
                                                                                              device)
    for name in layers:
        found[name].all_reduce()
    return list(layers)


