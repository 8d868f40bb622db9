"""One forward pass of a network over many batches, paused at chosen layers so that each can be replaced
*between* the batches reaching it and the batches going on: the sequential conversion's data flow.

Every batch runs in its own thread, but only one runs at a time (the main thread hands control over), so
there is no oversubscription and the result is deterministic. Each chosen module is wrapped: on its first call
in a batch the wrapper hands its input to the main thread and waits; once the main thread has seen the input
of every batch at that layer (and fitted a replacement), each batch goes on through the layer's *current*
module, i.e. the replacement, up to the next chosen layer. So each image passes through the network once, and
every layer's inputs come from the network already converted up to it. Only the live activations of the
paused batches are held (for a chain such as mobilenet_v2: a layer's input and any residual).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import torch
from torch import nn

__all__ = ["LayerStepper"]


class _Abort(Exception):
    """Raised inside a paused batch's thread when the pass is abandoned."""


class _Slot:
    """One batch's thread and the two events that hand control back and forth."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.arrived = threading.Event()
        self.pending: tuple[str, torch.Tensor] | None = None
        self.seen: set[str] = set()
        self.done = False
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None


class _Pause(nn.Module):
    """Stands in for a chosen module during the pass (see the module docstring)."""

    def __init__(self, name: str, module: nn.Module, stepper: LayerStepper) -> None:
        super().__init__()
        self.layer_name = name
        self.current = module
        self._stepper = [stepper]  # a list: not registered as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slot = self._stepper[0]._local.slot
        if self.layer_name not in slot.seen:
            slot.seen.add(self.layer_name)
            slot.pending = (self.layer_name, x)
            slot.arrived.set()
            slot.go.wait()
            slot.go.clear()
            if self._stepper[0]._abort:
                raise _Abort
        return self.current(x)


class LayerStepper:
    """Run ``model`` over ``batches`` pausing at ``names`` (modules of ``model``, wrapped in place until
    :meth:`close`). Use as a context manager; iterate :meth:`layers` to get, layer after layer in the order
    the forward reaches them, ``(name, inputs)`` with one input tensor per batch (in batch order), and call
    :meth:`replace` before asking for the next layer to make the batches go on through a new module."""

    def __init__(self, model: nn.Module, names: Sequence[str], batches: Sequence[torch.Tensor]) -> None:
        self.model, self.batches = model, list(batches)
        self._local = threading.local()
        self._abort = False
        self.wrappers: dict[str, _Pause] = {}
        for name in names:
            wrapper = _Pause(name, model.get_submodule(name), self)
            _set(model, name, wrapper)
            self.wrappers[name] = wrapper
        self.slots = [_Slot() for _ in self.batches]
        self.outputs: list[torch.Tensor | None] = [None] * len(self.batches)

    def _run(self, i: int) -> None:
        slot = self.slots[i]
        self._local.slot = slot
        try:
            with torch.no_grad():
                self.outputs[i] = self.model(self.batches[i])
        except _Abort:
            pass
        except BaseException as exc:  # handed to the main thread
            slot.error = exc
        slot.done = True
        slot.pending = None
        slot.arrived.set()

    def _resume(self, i: int) -> tuple[str, torch.Tensor] | None:
        slot = self.slots[i]
        slot.arrived.clear()
        if slot.thread is None:
            slot.thread = threading.Thread(target=self._run, args=(i,), daemon=True)
            slot.thread.start()
        else:
            slot.go.set()
        slot.arrived.wait()
        if slot.error is not None:
            raise slot.error
        return slot.pending

    def layers(self) -> Iterator[tuple[str, list[torch.Tensor]]]:
        """``(name, [input of each batch])`` for each chosen layer, in the order the forward reaches them."""
        while True:
            arrivals = [self._resume(i) for i in range(len(self.slots)) if not self.slots[i].done]
            if not arrivals or all(a is None for a in arrivals):
                return
            names = {a[0] for a in arrivals if a is not None}
            if len(names) != 1 or any(a is None for a in arrivals):
                raise RuntimeError(f"the batches reached different layers ({sorted(names)}, or finished): the "
                                   "network's control flow depends on the data, which the sequential fit needs "
                                   "to be the same for every batch; use mode='independent'")
            name = names.pop()
            inputs = [a[1] for a in arrivals if a is not None]
            for slot in self.slots:
                slot.pending = None
            yield name, inputs

    def replace(self, name: str, module: nn.Module) -> None:
        """From now on the batches go through ``module`` at layer ``name``."""
        self.wrappers[name].current = module

    def close(self) -> None:
        """Finish or abandon the paused batches and put each layer's current module in place of its wrapper."""
        self._abort = True
        for slot in self.slots:
            if slot.thread is not None and not slot.done:
                slot.go.set()
                slot.thread.join()
        for name, wrapper in self.wrappers.items():
            _set(self.model, name, wrapper.current)

    def __enter__(self) -> LayerStepper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
