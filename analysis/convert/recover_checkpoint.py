"""Checkpoints of :func:`analysis.convert.recover.recover`: the student's and the optimizer's state, the data
generator's and every process's RNG state, the step, the loss curve and the time so far, and what they belong
to (fingerprints of the student, teacher and images, and the settings), written atomically by rank 0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from analysis._core.payload import digest, read_payload, state_fingerprint, write_payload

__all__ = ["FORMAT", "digest", "fingerprint", "load_state", "save_state"]

FORMAT = "ghostmaps-recover-checkpoint"

fingerprint = state_fingerprint  # the student's and teacher's identity


def load_state(path: Path, identity: dict[str, Any], error: type[Exception]) -> dict[str, Any]:
    """The checkpoint at ``path``, refused (``error``) when unreadable or made for another ``identity``."""
    payload = read_payload(path, FORMAT, "recover checkpoint", "; delete it or pass another path", error)
    for key, value in identity.items():
        if payload["identity"].get(key) != value:
            raise error(f"checkpoint {path} was made for another {key} ({payload['identity'].get(key)!r}, "
                        f"now {value!r}); resume with the same student, teacher, images and settings, or "
                        "delete it to start afresh.")
    return payload


def save_state(path: Path, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
               identity: dict[str, Any], done: int, losses: list[float], seconds: float, rank: int, world: int,
               cuda: list[torch.device]) -> None:
    """Every process's RNG state is gathered; rank 0 writes the checkpoint atomically."""
    mine = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(cuda[0]) if cuda else None}
    states: list[Any] = [mine]
    if world > 1:
        import torch.distributed as dist

        states = [None] * world
        dist.all_gather_object(states, mine)
    if rank != 0:
        return
    write_payload(path, {"format": FORMAT, "identity": identity, "step": done, "losses": losses, "seconds": seconds,
                 "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "optimizer": opt.state_dict(), "generator": gen.get_state(), "rng": states})

