"""Checkpoints of :func:`analysis.convert.recover.recover`: the student's and the optimizer's state, the data
generator's and every process's RNG state, the step, the loss curve and the time so far, and what they belong
to (fingerprints of the student, teacher and images, and the settings), written atomically by rank 0."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from analysis._core.io import atomic_write

__all__ = ["FORMAT", "digest", "fingerprint", "load_state", "save_state"]

FORMAT = "ghostmaps-recover-checkpoint"




def digest(*tensors: torch.Tensor | str) -> str:
    """A short hash of strings and tensors (shapes, dtypes and values)."""
    h = hashlib.sha256()
    for t in tensors:
        if isinstance(t, str):
            h.update(t.encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def fingerprint(model: nn.Module) -> str:
    """A hash of the model's state dict (names, shapes, dtypes and values)."""
    return digest(*(x for k, v in model.state_dict().items() for x in (k, v)))


def _save(path: Path, payload: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write(path, buf.getvalue())


def load_state(path: Path, identity: dict[str, Any], error: type[Exception]) -> dict[str, Any]:
    """The checkpoint at ``path``, refused (``error``) when unreadable or made for another ``identity``."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise error(f"checkpoint {path} is not a readable recover checkpoint ({exc}); delete it or pass "
                    "another path.") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise error(f"checkpoint {path} is not a ghostmaps recover checkpoint; delete it or pass another path.")
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
    _save(path, {"format": FORMAT, "identity": identity, "step": done, "losses": losses, "seconds": seconds,
                 "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "optimizer": opt.state_dict(), "generator": gen.get_state(), "rng": states})

