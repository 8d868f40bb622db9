"""The redundancy survey: a whole network over a whole image set, streamed.

``survey`` runs the model over the images batch by batch; every captured map is folded into its layer's
``GroupedStats`` inside the forward hook's callback and dropped, so memory is O(C²) per layer whatever the
number of images. At the end each layer gets its similarity matrix, dead/constant channels, ghost pairs,
ghost groups and redundancy scores with null baselines and bootstrap intervals (``analysis.scores``).
``Survey`` is plain data: a table (``to_frame``/``to_csv``), JSON, and ``save``/``load`` of everything
including the statistics, so a survey over thousands of images is computed once and re-scored or re-plotted
later.

Under ``torchrun``, ``survey(..., distributed=True)`` gives every process its share of the images (blocks of
consecutive images, dealt round-robin) and sums the statistics with ``torch.distributed.all_reduce``; every
process ends with the result a single process would get.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from analysis._core.errors import GhostmapsError
from analysis._core.modes import model_dtype
from analysis._core.validation import DEFAULT_LEVEL, DEFAULT_THRESHOLD
from analysis.data.batches import as_images
from analysis.data.models import LoadedModel, as_loaded
from analysis.hooks import LayerSpec, capture, eval_mode
from analysis.stats import DEFAULT_GROUPS, DEFAULT_TOL, GroupedStats, block_size
from analysis.stats.distributed import _distributed_context, _full_device, _sync_layers
from analysis.survey.result import Survey, _score_layer
from analysis.survey.settings import check_settings


# -- the survey ---------------------------------------------------------------------------------------------
def survey(
    model: nn.Module | LoadedModel | str,
    images: Any = "samples",
    layers: LayerSpec = "Conv2d",
    metric: str = "cosine",
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
    bootstrap: int = 100,
    level: float = DEFAULT_LEVEL,
    groups: int = DEFAULT_GROUPS,
    linkage: str = "complete",
    pairs: int = 8,
    tol: float = DEFAULT_TOL,
    seed: int = 0,
    limit: int | None = None,
    distributed: bool = False,
) -> Survey:
    """Stream ``images`` through ``model`` and measure every chosen layer's redundancy.

    Args:
        model: an ``nn.Module`` (ImageNet preprocessing for image files), a ``load_model`` result (its
            preprocessing), or a model name for ``load_model``. It is not modified: train/eval flags are
            restored, hooks removed, BatchNorm statistics untouched. It must already be on ``device``.
        images: any image source of ``analysis.data.batches``: paths, folders, globs, ``"samples"`` (read with
            the model's preprocessing), an ``ImageSource``, an N×C×H×W tensor, a list of image tensors, a
            Dataset, a DataLoader or an iterable of batches (tensors or ``(images, labels)``).
        layers: which outputs to survey (names, globs, a type such as ``"Conv2d"``; see ``capture``).
        metric: ``"cosine"`` or ``"pearson"`` channel similarity.
        threshold: τ, the |similarity| at which channels are ghosts of each other (scores and groups).
        batch_size: images per forward; results do not depend on it.
        device: where the forward runs (default: the model's device).
        progress: show a tqdm bar (images/s).
        bootstrap: replicates for the confidence intervals (0: none); level: their confidence level.
        groups: image groups the bootstrap redraws (memory (8 + 4·groups)·C² bytes per layer).
        linkage: ghost-group linkage; pairs: ghost pairs kept per layer; tol: zero tolerance; seed: bootstrap seed.
        limit: use at most this many images.
        distributed: under ``torchrun`` (or an initialised process group) split the images over the processes
            and all-reduce the statistics; every process returns the full result.

    Returns:
        A ``Survey`` (see the module docstring; formulas of the scores in ``analysis.scores``).
    """
    check_settings(metric=metric, threshold=threshold, bootstrap=bootstrap, level=level, linkage=linkage,
                   pairs=pairs, batch_size=batch_size, groups=groups, tol=tol, limit=limit)
    net, preprocess, info = as_loaded(model)
    param = next(net.parameters(), None)
    model_device = param.device if param is not None else torch.device("cpu")
    device = _full_device(torch.device(device)) if device is not None else model_device
    if param is not None and model_device != device:
        raise GhostmapsError(f"the model is on {model_device} but device={device}; move it first with "
                             f"model.to({str(device)!r}).")
    if distributed and isinstance(getattr(images, "sampler", None), torch.utils.data.DistributedSampler):
        raise GhostmapsError("with distributed=True pass a DataLoader without a DistributedSampler: survey splits "
                             "the images over the processes itself.")
    source = as_images(images, preprocess, limit=limit)
    rank, world, started = _distributed_context(distributed, device)
    total = source.length
    chunk = block_size(total, groups)  # unknown length: one image per block, image i in group i mod K
    found: dict[str, GroupedStats] = {}
    order: list[str] = []
    skipped: set[str] = set()
    current: list[int] = []

    def fold(name: str, maps: torch.Tensor) -> None:
        if maps.dim() not in (2, 4) or not (maps.is_floating_point()):
            skipped.add(name)
            return
        stats = found.get(name)
        if stats is None:
            stats = found[name] = GroupedStats(groups=groups, chunk=chunk, tol=tol)
            order.append(name)
        stats.update(maps, current, owned=True)  # capture's copy, used once

    from tqdm.auto import tqdm

    share = None if total is None else sum(1 for i in range(total) if (i // chunk) % world == rank)
    bar = tqdm(total=share, unit="img", desc="survey", disable=not progress or rank != 0, dynamic_ncols=True)
    dtype = model_dtype(net)  # image files load as float32; an fp16/bf16 model needs its own dtype
    start_time = time.perf_counter()
    n_images = 0
    error: Exception | None = None
    try:
        with eval_mode(net), torch.inference_mode(), capture(net, layers, store=False, callback=fold):
            for positions, batch, *_ in source.batches(batch_size, chunk=chunk, rank=rank, world=world):
                current[:] = positions
                net(batch.to(device=device, dtype=dtype) if batch.is_floating_point() else batch.to(device))
                n_images += len(positions)
                bar.update(len(positions))
    except Exception as exc:
        if world == 1:
            raise
        error = exc  # raised below on every process, after they have all been told
    finally:
        bar.close()
    try:
        if world > 1:
            order = _sync_layers(found, order, groups, chunk, tol, device, error)
        if not order:
            raise GhostmapsError(f"no feature maps were captured from layers {layers!r}"
                                 f"{' (outputs: ' + ', '.join(sorted(skipped)[:4]) + ')' if skipped else ''}; "
                                 "pick convolutional layers, e.g. layers='Conv2d'.")
        seconds = time.perf_counter() - start_time
        settings = {"metric": metric, "threshold": float(threshold), "bootstrap": int(bootstrap),
                    "level": float(level), "linkage": linkage, "pairs": int(pairs), "seed": int(seed)}
        results = {}
        _release_free_memory()
        for name in order:
            stats = found[name]
            shape = (stats.channels, *(stats.spatial or ()))
            results[name] = _score_layer(name, shape, stats, **settings)
            _release_free_memory()
        images_seen = next(iter(results.values())).redundancy.images
        meta = {"model": info.name, "weights": info.weights, "images": images_seen, "layers": layers
                if isinstance(layers, str) else [str(x) for x in layers] if isinstance(layers, Sequence)
                else str(layers), "batch_size": batch_size, "device": str(device), "groups": groups,
                "chunk": chunk, "tol": tol, "world_size": world, "forward_seconds": round(seconds, 3),
                "skipped_outputs": sorted(skipped), **settings}
        return Survey(results, meta)
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()


def _release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    The per-batch temporaries of a long stream leave the heap fragmented (glibc raises its mmap threshold after
    large frees, so later large blocks come from the heap); without this, the scoring's temporaries would push
    the peak memory of a long survey a little above that of a short one."""
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        if name:
            ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        pass


