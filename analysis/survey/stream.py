"""The survey's pass over the images: forward, capture, fold into each layer's ``GroupedStats`` (and, with the
untrained baseline, the same for the untrained network on its share of the images), checkpoints on the way."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from analysis._core.errors import GhostmapsError
from analysis.data.batches import Images
from analysis.hooks import LayerSpec, capture, eval_mode
from analysis.stats import GroupedStats
from analysis.stats._kernel import release_scratch
from analysis.survey.checkpoint import one_shot, save_checkpoint


@dataclass
class Folded:
    """What the stream has folded so far: per layer its statistics (network order), and where it stands."""

    template: GroupedStats
    found: dict[str, GroupedStats] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    skipped: set[str] = field(default_factory=set)

    def fold(self, positions: list[int]) -> Callable[[str, torch.Tensor], None]:
        """A ``capture`` callback folding each captured map of the images at ``positions``."""

        def callback(name: str, maps: torch.Tensor) -> None:
            if maps.dim() not in (2, 4) or not maps.is_floating_point():
                self.skipped.add(name)
                return
            stats = self.found.get(name)
            if stats is None:
                t = self.template
                stats = self.found[name] = GroupedStats(groups=t.groups, chunk=t.chunk, tol=t.tol,
                                                        positions=t.positions, seed=t.seed)
                self.order.append(name)
            stats.update(maps, positions)  # the layer's own output (capture copy=False): read, not changed

        return callback


@dataclass
class Stream:
    """One survey pass: the observed network and, optionally, the untrained one on every ``every``-th pair."""

    net: nn.Module
    layers: LayerSpec
    device: torch.device
    dtype: torch.dtype
    observed: Folded
    untrained: nn.Module | None = None
    baseline: Folded | None = None
    every: int = 2
    done: int = 0

    def keeps(self, index: int) -> bool:
        """Whether the untrained network surveys the image at this position (pairs j with j mod every = 0)."""
        return (index // 2) % self.every == 0

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.is_floating_point():
            return batch.to(device=self.device, dtype=self.dtype)
        return batch.to(self.device)

    def run(self, images: Images, batch_size: int, chunk: int, rank: int, world: int, bar: Any,
            checkpoint: str | os.PathLike | None = None, every_batches: int = 0,
            identity: dict[str, Any] | None = None) -> None:
        """Fold every image from position ``done`` on (earlier ones are in the statistics already)."""
        positions: list[int] = []
        base_positions: list[int] = []
        batches = 0
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            stack.enter_context(eval_mode(self.net))
            stack.enter_context(capture(self.net, self.layers, store=False, copy=False,
                                                callback=self.observed.fold(positions)))
            if self.untrained is not None:
                stack.enter_context(eval_mode(self.untrained))
                stack.enter_context(capture(self.untrained, self.layers, store=False, copy=False,
                                            callback=self.baseline.fold(base_positions)))
            for index, batch, *_ in images.batches(batch_size, chunk=chunk, rank=rank, world=world):
                if index[-1] < self.done:
                    continue  # folded before the checkpoint this run resumed from
                if index[0] < self.done:
                    keep = [t for t, i in enumerate(index) if i >= self.done]
                    index, batch = [index[t] for t in keep], batch[keep]
                positions[:] = index
                self.net(self._to_device(batch))
                if self.untrained is not None:
                    keep = [t for t, i in enumerate(index) if self.keeps(i)]
                    if keep:
                        base_positions[:] = [index[t] for t in keep]
                        self.untrained(self._to_device(batch if len(keep) == len(index) else batch[keep]))
                self.done = index[-1] + 1
                bar.update(len(index))
                batches += 1
                if checkpoint is not None and every_batches and batches % every_batches == 0:
                    self.save(checkpoint, identity or {})
        release_scratch()  # the fold's work buffers (as large as the largest batch of maps)
        if checkpoint is not None and batches:
            self.save(checkpoint, identity or {})

    def save(self, path: str | os.PathLike, identity: dict[str, Any]) -> None:
        save_checkpoint(path, identity=identity, done=self.done, order=self.observed.order,
                        found=self.observed.found,
                        baseline=None if self.baseline is None else self.baseline.found,
                        baseline_state=None if self.untrained is None else self.untrained.state_dict())


#: Batch size of the untrained baseline's BatchNorm re-estimation: fixed, so that its running statistics (an
#: equal-weight average of per-batch statistics) do not depend on the survey's ``batch_size``.
BN_BATCH = 16


def bn_batches(images: Images, raw: Any, batch_size: int, chunk: int, keeps: Callable[[int], bool], limit: int,
               to_device: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """The first ``limit`` images the untrained network will survey, re-batched in ``BN_BATCH``s whatever the
    survey's ``batch_size`` (for its BN re-estimation)."""
    if one_shot(raw):
        raise GhostmapsError("baseline='untrained' reads the first images twice (BatchNorm re-estimation, then the "
                             "survey); pass a source that can be read again (files, a tensor, a Dataset or "
                             "DataLoader), not a one-shot iterator.")
    left = limit
    pending: list[torch.Tensor] = []  # kept images not yet yielded, C×H×W each
    for index, batch, *_ in images.batches(batch_size, chunk=chunk):
        keep = [t for t, i in enumerate(index) if keeps(i)][:left]
        pending.extend(batch[keep])
        left -= len(keep)
        while len(pending) >= BN_BATCH or (pending and left <= 0):
            yield to_device(torch.stack(pending[:BN_BATCH]))
            del pending[:BN_BATCH]
        if left <= 0:
            return
    if pending:
        yield to_device(torch.stack(pending))
