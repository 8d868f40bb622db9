"""Files of plain data written with ``torch.save`` (surveys, survey and recover checkpoints): written atomically,
read back with ``weights_only=True`` and refused when they are not the expected kind; and the short content
hashes that tie a checkpoint to the model and images it was made for."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from analysis._core.errors import GhostmapsError
from analysis._core.io import atomic_write

__all__ = ["digest", "read_payload", "state_fingerprint", "write_payload"]


def digest(*parts: Any) -> str:
    """A short hash of tensors (shapes, dtypes and values) and other values (their ``repr``)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            t = part.detach().cpu().contiguous()
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(part).encode())
    return h.hexdigest()[:32]


def state_fingerprint(model: nn.Module) -> str:
    """A hash of the model's parameters and buffers (names, shapes, dtypes and values)."""
    return digest(*(x for name, t in model.state_dict().items() for x in (name, t)))


def write_payload(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """``torch.save`` of ``payload`` to ``path``, atomically (a crash mid-write leaves the previous file whole)."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write(Path(path), buf.getvalue())


def read_payload(path: str | os.PathLike, fmt: str, what: str, fix: str = "",
                 error: type[Exception] = GhostmapsError) -> dict[str, Any]:
    """The dict saved at ``path`` whose ``"format"`` is ``fmt``; ``error`` naming ``what`` was expected (and
    ``fix``, appended to the message) when the file is unreadable or of another kind."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise error(f"{path} is not a readable {what} ({exc}){fix}.") from exc
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise error(f"{path} is not a ghostmaps {what}{fix}.")
    return payload
