"""Recovery by distillation: train a converted network (the student, e.g. ``ghostify``'s output) to match the
original (the teacher) on unlabelled images.

``recover(student, teacher, images, steps)`` runs ``steps`` Adam steps. Each step draws a batch of the images
(``batch_size``, without replacement within a step), augments it with seeded random resized crops and flips
(:mod:`analysis.convert.augment`), optionally mixes each image with another of the batch (``mix="mixup"`` or
``"cutmix"``: teacher and student see the same mixed image, so a few photos give many more distinct inputs),
and minimises

* ``loss="kl"``: ``T² · KL(softmax(teacher / T) ‖ softmax(student / T))`` per image (Hinton's distillation);
* ``loss="features"``: the squared error of the features before global pooling (the output of
  ``model.features`` when the model has one, else the input of its last ``nn.Linear``, or the output of
  the module named by ``features=``), divided by the teacher features' mean square on the first images
  (a constant, so the loss is scale-free);
* ``loss="both"``: their sum, the feature term weighted by ``feature_weight``.

The learning rate follows a cosine decay from ``lr`` to 0 over the steps (a function of the step alone, so
resuming needs no scheduler state).

* **Nothing passed in is changed**: the student is deep-copied and the copy trained and returned (in eval
  mode); the teacher runs in eval mode without gradients and is never written to.
* **BatchNorm** (``bn=``): ``"train"`` (default) trains in train mode: BN normalises with batch statistics
  and its running statistics are re-estimated on the way (Dropout on); ``"freeze"`` keeps the whole student in
  eval mode (running statistics kept as they were, affine weights still trained, Dropout off). Measured on
  ``benchmarks/ghostify_digits.py`` (34 convs ghostified, training-free at chance): 150 steps with ``"train"``
  recovered 71.3 % test accuracy, 200 steps with ``"freeze"`` 10.2 %: a converted network's activations
  are off scale, and frozen statistics cannot follow them.
* **Deterministic**: one ``torch.Generator`` seeded with ``seed`` draws every batch and crop; the global RNG
  (Dropout) is forked and seeded from ``seed`` and the process rank, and restored afterwards.
* **Checkpoints** (``checkpoint=PATH``): the student's and the optimizer's state, the generator's and the
  RNG's state, the step, the loss curve and the time so far, written atomically every ``checkpoint_every``
  steps and at the end. ``resume=True`` continues from it and ends with exactly (bit for bit) the weights of
  an uninterrupted run; a checkpoint made for another student, teacher, image set or settings is refused.
* **Distributed** (``distributed=True``, under ``torchrun`` as the survey): every process draws the same
  global batch and trains on its share (images ``rank, rank + world, ...``) inside
  ``DistributedDataParallel``, whose averaged gradients equal the global batch's; every process ends with the
  same weights (BN running statistics averaged over the processes at the end). Rank 0 writes the checkpoint
  and shows the progress bar.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from analysis._core.errors import GhostmapsError
from analysis._core.modes import model_device, model_dtype
from analysis._core.results import Record, plain
from analysis._core.validation import check_count, check_positive_int
from analysis.convert.augment import MIXES, apply_crops, apply_mix, draw_crops, draw_mix
from analysis.convert.recover_checkpoint import digest, fingerprint, load_state, save_state
from analysis.data.batches import as_images
from analysis.data.models import default_preprocess
from analysis.stats.distributed import _distributed_context

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["BN_MODES", "LOSSES", "RecoverError", "RecoverResult", "recover"]

LOSSES = ("kl", "features", "both")
BN_MODES = ("freeze", "train")


class RecoverError(GhostmapsError):
    """Bad input to :func:`recover`; the message names the input and the fix (CLI exit code 2)."""


@dataclass(eq=False)
class RecoverResult(Record):
    """What :func:`recover` did: ``losses`` (the global batch's loss at each step, before its update),
    ``seconds`` (training time, summed over resumed runs), ``settings``, ``resumed_from`` (the step a resumed
    run started at, else None) and ``world_size``. ``rows()``: one per step."""

    steps: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    resumed_from: int | None = None
    world_size: int = 1

    @property
    def first_loss(self) -> float:
        return self.losses[0] if self.losses else math.nan

    @property
    def final_loss(self) -> float:
        """Mean loss of the last tenth of the steps (at least one), a less noisy end point than the last step."""
        if not self.losses:
            return math.nan
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return sum(tail) / len(tail)

    _COLUMNS = ("step", "loss")

    def rows(self) -> list[dict[str, Any]]:
        return [{"step": i, "loss": plain(v)} for i, v in enumerate(self.losses)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(int(data["steps"]), [math.nan if v is None else float(v) for v in data["losses"]],
                   float(data["seconds"]), dict(data["settings"]),
                   None if data.get("resumed_from") is None else int(data["resumed_from"]),
                   int(data.get("world_size", 1)))

    def __str__(self) -> str:
        s = self.settings
        what = f"loss {s.get('loss')}" + (f", T {s.get('temperature')}" if s.get("loss") != "features" else "")
        resumed = "" if self.resumed_from is None else f", resumed at step {self.resumed_from}"
        return (f"recover: {self.steps} steps ({what}, lr {s.get('lr')}, batch {s.get('batch_size')}, BN "
                f"{s.get('bn')}, augment {s.get('augment')}, mix {s.get('mix')}, seed {s.get('seed')}, {self.world_size} process(es)"
                f"{resumed}) in {self.seconds:.1f} s; loss {self.first_loss:.4g} -> {self.final_loss:.4g} "
                "(mean of the last tenth)")


# ----------------------------------------------------------------------------------------------------------
# features before pooling


def _feature_module(model: nn.Module, name: str | None) -> tuple[nn.Module, bool, str]:
    """(module, whether its *input* is the feature, description) for the features of ``model``."""
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules or not name:
            raise RecoverError(f"features={name!r} is not a submodule of {type(model).__name__}; pass the name of "
                               "the module whose output is the feature map before pooling (e.g. 'features').")
        return modules[name], False, f"output of {name}"
    if isinstance(getattr(model, "features", None), nn.Module):
        return model.features, False, "output of features"
    linears = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear)]
    if not linears:
        raise RecoverError(f"{type(model).__name__} has no .features module and no nn.Linear, so the features "
                           "before pooling cannot be found; pass features='module name', or use loss='kl'.")
    return linears[-1][1], True, f"input of {linears[-1][0]}"


@contextmanager
def _tapped(model: nn.Module, spec: str | None, on: bool) -> Iterator[dict[str, torch.Tensor]]:
    """A dict whose ``"f"`` entry holds the features of the last forward (nothing when ``on`` is False)."""
    box: dict[str, torch.Tensor] = {}
    if not on:
        yield box
        return
    module, use_input, _ = _feature_module(model, spec)
    if use_input:
        handle = module.register_forward_pre_hook(lambda m, args: box.__setitem__("f", args[0]))
    else:
        handle = module.register_forward_hook(lambda m, args, out: box.__setitem__("f", out))
    try:
        yield box
    finally:
        handle.remove()


# ----------------------------------------------------------------------------------------------------------
# recover


def _check_outputs(student: nn.Module, teacher: nn.Module, x: torch.Tensor, t_dev: torch.device,
                   t_dtype: torch.dtype) -> None:
    with torch.no_grad():
        was = [(m, m.training) for m in student.modules()]
        student.eval()
        try:
            s = student(x)
        finally:
            for m, flag in was:
                m.training = flag
        t = teacher(x.to(device=t_dev, dtype=t_dtype))
    for name, out in (("student", s), ("teacher", t)):
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise RecoverError(f"the {name} returned {type(out).__name__} {tuple(getattr(out, 'shape', ()))}; "
                               "recover needs models returning N x classes logits.")
    if s.shape != t.shape:
        raise RecoverError(f"student and teacher outputs differ in shape ({tuple(s.shape)} vs {tuple(t.shape)}); the "
                           "student must be a converted copy of the teacher with the same classes.")


def recover(student: nn.Module, teacher: nn.Module, images: Any, steps: int = 200, *, lr: float = 1e-3,
            batch_size: int = 32, loss: str = "kl", temperature: float = 1.0, feature_weight: float = 1.0,
            features: str | None = None, bn: str = "train", augment: bool = True,
            scale: tuple[float, float] = (0.25, 1.0), mix: str | None = None, seed: int = 0, checkpoint: str | os.PathLike | None = None,
            checkpoint_every: int = 50, resume: bool = False, progress: bool = True, distributed: bool = False,
            device: str | torch.device | None = None,
            preprocess: Callable[[Any], torch.Tensor] | None = None) -> tuple[nn.Module, RecoverResult]:
    """Train a copy of ``student`` to match ``teacher`` on unlabelled ``images`` (see the module docstring).

    Args:
        student: the converted network (e.g. from ``ghostify``); never modified: a trained copy is returned.
        teacher: the original network; never modified.
        images: any image source of ``analysis.data.batches`` (labels, if any, are ignored); all held in memory.
        steps: optimizer steps (0 returns an untrained copy).
        lr: Adam's peak learning rate (cosine decay to 0); batch_size: images per step over all processes.
        loss: ``"kl"``, ``"features"`` or ``"both"``; temperature: T of the KL term;
        feature_weight: weight of the feature term in ``"both"``; features: the module whose output is the
            feature map (default: ``model.features``, else the input of the last ``nn.Linear``).
        bn: ``"train"`` (batch statistics, running ones re-estimated) or ``"freeze"`` (eval mode);
            augment: random resized crops (area in ``scale``) and flips; mix: None, ``"mixup"`` or
            ``"cutmix"`` (each image blended with a seeded partner of the batch, see ``analysis.convert.augment``).
        seed: seeds every random choice; checkpoint, checkpoint_every, resume: see the module docstring.
        progress: a tqdm bar (rank 0); distributed: under torchrun, DistributedDataParallel.
        device: where the student trains (default: the student's device); the teacher stays where it is.
        preprocess: how image files become tensors (default: ImageNet evaluation preprocessing).

    Returns:
        ``(trained copy of the student, RecoverResult)``.
    """
    if not isinstance(student, nn.Module) or not isinstance(teacher, nn.Module):
        raise RecoverError("student and teacher must be nn.Modules (the converted network and the original).")
    if student is teacher:
        raise RecoverError("student and teacher are the same object; pass the converted copy as the student.")
    steps = check_count(steps, "steps", RecoverError, " (0 returns an untrained copy)")
    batch_size = check_positive_int(batch_size, "batch_size", RecoverError)
    checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every", RecoverError)
    for name, v in (("lr", lr), ("temperature", temperature), ("feature_weight", feature_weight)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise RecoverError(f"{name} must be a positive number, got {v!r}.")
    if loss not in LOSSES:
        raise RecoverError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}.")
    if bn not in BN_MODES:
        raise RecoverError(f"bn must be 'freeze' (running statistics kept) or 'train' (batch statistics), got {bn!r}.")
    seed = check_count(seed, "seed", RecoverError, " (an integer >= 0)")
    pair = list(scale) if isinstance(scale, (tuple, list)) else None
    if not (pair is not None and len(pair) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       for v in pair) and 0 < pair[0] <= pair[1] <= 1):
        raise RecoverError(f"scale must be (low, high) area fractions with 0 < low <= high <= 1, got {scale!r}.")
    if mix is not None and mix not in MIXES:
        raise RecoverError(f"mix must be None, {' or '.join(repr(m) for m in MIXES)}, got {mix!r}.")
    if resume and checkpoint is None:
        raise RecoverError("resume=True needs checkpoint=PATH, the file to resume from.")
    x_all = as_images(images, preprocess or default_preprocess(), name="images", error=RecoverError).tensor()
    x_all = x_all.detach().cpu()
    dev = torch.device(device) if device is not None else model_device(student)
    t_dev, t_dtype = model_device(teacher), model_dtype(teacher)

    model = copy.deepcopy(student).to(dev)
    dtype = model_dtype(model)
    teacher_was = [(m, m.training) for m in teacher.modules()]
    teacher.eval()
    try:
        _check_outputs(model, teacher, x_all[:2].to(device=dev, dtype=dtype), t_dev, t_dtype)
        settings = {"steps": steps, "lr": float(lr), "batch_size": batch_size, "loss": loss,
                    "temperature": float(temperature), "feature_weight": float(feature_weight),
                    "features": None if loss == "kl" else _feature_module(model, features)[2], "bn": bn,
                    "augment": bool(augment), "scale": [float(scale[0]), float(scale[1])], "mix": mix, "seed": int(seed),
                    "images": int(x_all.shape[0])}
        if steps == 0:
            model.eval()
            return model, RecoverResult(0, [], 0.0, settings)
        return _train(model, teacher, x_all, settings, features, dev, dtype, t_dev, t_dtype, checkpoint,
                      checkpoint_every, resume, progress, distributed, student)
    finally:
        for m, flag in teacher_was:
            m.training = flag


def _train(model: nn.Module, teacher: nn.Module, x_all: torch.Tensor, s: dict[str, Any], features: str | None,
           dev: torch.device, dtype: torch.dtype, t_dev: torch.device, t_dtype: torch.dtype,
           checkpoint: str | os.PathLike | None, checkpoint_every: int, resume: bool, progress: bool,
           distributed: bool, student: nn.Module) -> tuple[nn.Module, RecoverResult]:
    from tqdm.auto import tqdm

    rank, world, started = _distributed_context(distributed, dev)
    want_features = s["loss"] != "kl"
    n, steps, batch = x_all.shape[0], s["steps"], s["batch_size"]
    gen = torch.Generator().manual_seed(s["seed"])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=s["lr"])
    feat_scale = 1.0
    if want_features:
        with torch.no_grad(), _tapped(teacher, features, True) as tf:
            teacher(x_all[:batch].to(device=t_dev, dtype=t_dtype))
            feat_scale = float(tf["f"].double().pow(2).mean()) or 1.0
    identity = {"student": fingerprint(student), "teacher": fingerprint(teacher), "images": digest(x_all),
                "settings": repr(sorted(s.items())), "world_size": world}
    path = None if checkpoint is None else Path(checkpoint)
    losses: list[float] = []
    start, seconds, resumed_from = 0, 0.0, None
    rng_states: list[Any] = [None] * world
    if resume and path is not None and path.is_file():
        payload = load_state(path, identity, RecoverError)
        model.load_state_dict(payload["model"])
        opt.load_state_dict(payload["optimizer"])
        gen.set_state(payload["generator"])
        rng_states = payload["rng"]
        start, losses, seconds = int(payload["step"]), list(payload["losses"]), float(payload["seconds"])
        resumed_from = start
    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None,
                                      find_unused_parameters=s["loss"] == "features")
    cuda = [dev] if dev.type == "cuda" else []
    bar = tqdm(total=steps, initial=start, desc="recover", unit="step", disable=not progress or rank != 0,
               dynamic_ncols=True)
    try:
        with torch.random.fork_rng(devices=cuda), _tapped(model, features, want_features) as sf, \
                _tapped(teacher, features, want_features) as tf:
            if rng_states[rank] is not None:
                torch.set_rng_state(rng_states[rank]["cpu"])
                if cuda:
                    torch.cuda.set_rng_state(rng_states[rank]["cuda"], dev)
            else:
                torch.manual_seed(s["seed"] * 1009 + rank)
            model.train(s["bn"] == "train")
            t0 = time.perf_counter()
            for step in range(start, steps):
                idx = torch.cat([torch.randperm(n, generator=gen) for _ in range(-(-batch // n))])[:batch]
                crops = draw_crops(batch, gen, tuple(s["scale"])) if s["augment"] else None
                mixing = draw_mix(batch, gen) if s["mix"] else None
                mine = torch.arange(rank, batch, world)
                if mixing is None:
                    xb = _augmented(x_all, idx, mine, crops)
                else:  # partners may be any row of the global batch: augment it once, then pick
                    full = _augmented(x_all, idx, torch.arange(batch), crops)
                    xb = apply_mix(full[mine], full[mixing[mine, 0].long()], mixing[mine], s["mix"])
                with torch.no_grad():
                    t_out = teacher(xb.to(device=t_dev, dtype=t_dtype)).to(device=dev, dtype=torch.float32)
                    t_feat = tf["f"].to(device=dev, dtype=torch.float32) if want_features else None
                s_out = net(xb.to(device=dev, dtype=dtype)).float()
                total = _loss(s_out, t_out, sf.get("f"), t_feat, s, feat_scale) / batch  # this share of the mean
                for group in opt.param_groups:
                    group["lr"] = s["lr"] * 0.5 * (1 + math.cos(math.pi * step / steps))
                opt.zero_grad(set_to_none=True)
                (total * world).backward()  # DDP averages over processes: x world gives the global mean's gradient
                opt.step()
                value = total.detach().double()
                if world > 1:
                    import torch.distributed as dist

                    dist.all_reduce(value)
                losses.append(float(value))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
                done = step + 1
                if path is not None and (done % checkpoint_every == 0 or done == steps):
                    elapsed = seconds + time.perf_counter() - t0
                    save_state(path, model, opt, gen, identity, done, losses, elapsed, rank, world, cuda)
            seconds += time.perf_counter() - t0
        if world > 1:  # BN running statistics of train mode: each process saw its own share; average them
            _average_buffers(model, world)
    finally:
        bar.close()
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    model.eval()
    return model, RecoverResult(steps, losses, seconds, s, resumed_from, world)


def _augmented(x_all: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor, crops: torch.Tensor | None) -> torch.Tensor:
    """Rows ``rows`` of the global batch (``x_all[idx]``), cropped as ``crops`` say when given."""
    xb = x_all[idx[rows]]
    return xb if crops is None else apply_crops(xb, crops[rows])


def _average_buffers(model: nn.Module, world: int) -> None:
    import torch.distributed as dist

    with torch.no_grad():
        for b in model.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b /= world
            else:
                dist.broadcast(b, 0)


def _loss(s_out: torch.Tensor, t_out: torch.Tensor, s_feat: torch.Tensor | None, t_feat: torch.Tensor | None,
          s: dict[str, Any], feat_scale: float) -> torch.Tensor:
    """Sum over this process's images of the per-image loss (divided by the global batch by the caller)."""
    total = s_out.new_zeros(())
    if s["loss"] in ("kl", "both"):
        temp = s["temperature"]
        logp = F.log_softmax(t_out / temp, dim=1)
        logq = F.log_softmax(s_out / temp, dim=1)
        total = total + temp ** 2 * (logp.exp() * (logp - logq)).sum()
    if s["loss"] in ("features", "both"):
        assert s_feat is not None and t_feat is not None
        per_image = (s_feat.float() - t_feat).pow(2).flatten(1).mean(1) / feat_scale
        total = total + (s["feature_weight"] if s["loss"] == "both" else 1.0) * per_image.sum()
    return total
