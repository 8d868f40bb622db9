"""The redundancy survey: a whole network over a whole image set, streamed.

``survey`` runs the model over the images batch by batch; every captured map is folded into its layer's
``GroupedStats`` inside the forward hook's callback and dropped, so memory is O(C²) per layer whatever the
number of images. At the end each layer gets its similarity matrix, dead/constant/sparse channels, ghost
pairs, ghost groups and redundancy scores with the noise-matched null, optionally the untrained baseline, and
jackknife intervals (``analysis.measure.scores``). ``Survey`` is plain data: a table, JSON, and
``save``/``load``/``rescore`` of everything including the statistics.

Under ``torchrun``, ``survey(..., distributed=True)`` gives every process its share of the images (blocks of
an even number of consecutive images, dealt round-robin) and sums the statistics with ``all_reduce``; every
process ends with the result a single process would get. ``checkpoint=`` writes the accumulators every
``checkpoint_every`` batches; ``resume=True`` continues from there and gives exactly the uninterrupted result.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from analysis._core.errors import GhostmapsError
from analysis._core.modes import model_dtype
from analysis._core.validation import DEFAULT_LEVEL, DEFAULT_METRIC, DEFAULT_THRESHOLD
from analysis.data.batches import as_images
from analysis.data.models import LoadedModel, as_loaded
from analysis.hooks import LayerSpec, resolve_layers
from analysis.stats import DEFAULT_GROUPS, DEFAULT_TOL, GroupedStats, block_size
from analysis.stats.distributed import _distributed_context, _full_device, _sync_layers
from analysis.survey.baseline import reestimate_batchnorm, untrained_copy
from analysis.survey.checkpoint import load_checkpoint, model_fingerprint, source_fingerprint
from analysis.survey.result import Survey, _score_layer
from analysis.survey.settings import check_settings
from analysis.survey.stream import Folded, Stream, bn_batches


def survey(
    model: nn.Module | LoadedModel | str,
    images: Any = "samples",
    layers: LayerSpec = "Conv2d",
    metric: str = DEFAULT_METRIC,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
    level: float = DEFAULT_LEVEL,
    groups: int = DEFAULT_GROUPS,
    linkage: str = "complete",
    pairs: int = 8,
    tol: float = DEFAULT_TOL,
    seed: int = 0,
    limit: int | None = None,
    distributed: bool = False,
    positions: int | None = None,
    baseline: str | None = None,
    baseline_every: int = 2,
    baseline_positions: int | None = 256,
    baseline_bn_images: int = 16,
    rank99: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
) -> Survey:
    """Stream ``images`` through ``model`` and measure every chosen layer's redundancy.

    Args:
        model: an ``nn.Module`` (ImageNet preprocessing for image files), a ``load_model`` result (its
            preprocessing), or a model name for ``load_model``. It is not modified. It must be on ``device``.
        images: any image source of ``analysis.data.batches``: paths, folders, globs, ``"samples"`` (read with
            the model's preprocessing), an ``ImageSource``, an N×C×H×W tensor, a list of image tensors, a
            Dataset, a DataLoader or an iterable of batches (tensors or ``(images, labels)``).
        layers: which outputs to survey (names, globs, a type such as ``"Conv2d"``; see ``capture``).
        metric: ``"pearson"`` (default; invariant to the per-channel scale and offset a following BN removes)
            or ``"cosine"`` (biased upwards for non-negative maps).
        threshold: τ, the |similarity| at which channels are ghosts of each other.
        batch_size: images per forward; results do not depend on it.
        device: where the forward runs (default: the model's device).
        progress: show a tqdm bar (images/s).
        level: confidence level of the jackknife intervals.
        groups: K, the image groups the jackknife leaves out one at a time (memory 16·C² + 5–8·K·C² bytes per
            layer; K = 16 keeps every Conv2d of mobilenet_v2 at 1.1 GB).
        linkage: ghost-group linkage; pairs: ghost pairs kept per layer; tol: zero tolerance.
        seed: seed of the untrained network and of ``positions`` subsets.
        limit: use at most this many images.
        distributed: under ``torchrun`` split the images over the processes and all-reduce the statistics.
        positions: fold only this many seeded random positions of each image (per pair; an unbiased estimate
            of every moment, faster on large maps; the result's ``estimated`` says so). None: all positions.
        baseline: ``"untrained"``: also survey the same architecture re-initialised (``seed``), its BatchNorm
            statistics re-estimated on the first ``baseline_bn_images`` images it sees, on every
            ``baseline_every``-th image pair (``baseline_positions`` positions per image; None: all), in the
            same pass; every score gets its untrained value and the excess with a paired interval.
        rank99: also compute rank99 (cross-validated eigendecompositions, O(C³) per layer).
        checkpoint: a file for the accumulators, written atomically every ``checkpoint_every`` batches and at
            the end of the stream; ``resume=True`` continues from it (refused if it was made for another model,
            layer set, image source or settings).

    Returns:
        A ``Survey`` (formulas of the scores in ``analysis.measure.scores``).
    """
    check_settings(metric=metric, threshold=threshold, level=level, linkage=linkage, pairs=pairs,
                   batch_size=batch_size, groups=groups, tol=tol, limit=limit, positions=positions,
                   baseline=baseline, baseline_every=baseline_every, baseline_positions=baseline_positions,
                   baseline_bn_images=baseline_bn_images, checkpoint_every=checkpoint_every, rank99=rank99)
    if (checkpoint is not None or baseline is not None) and distributed:
        raise GhostmapsError("checkpoint= and baseline= are not supported with distributed=True yet; run them in "
                             "one process, or survey without them.")
    if resume and checkpoint is None:
        raise GhostmapsError("resume=True needs checkpoint=PATH, the file to resume from.")
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
    raw = images
    images = as_images(images, preprocess, limit=limit)  # the one image adapter
    rank, world, started = _distributed_context(distributed, device)
    total = images.length
    chunk = block_size(total, groups)
    dtype = model_dtype(net)  # image files load as float32; an fp16/bf16 model needs its own dtype
    template = GroupedStats(groups=groups, chunk=chunk, tol=tol, positions=positions, seed=seed)
    stream = Stream(net, layers, device, dtype, Folded(template), every=baseline_every)
    settings = {"groups": groups, "chunk": chunk, "tol": tol, "positions": positions, "seed": seed,
                "baseline": baseline, "baseline_every": baseline_every, "baseline_positions": baseline_positions,
                "baseline_bn_images": baseline_bn_images}
    identity = {} if checkpoint is None else {
        "model": model_fingerprint(net), "layers": sorted(resolve_layers(net, layers)),
        "source": source_fingerprint(images, raw), "settings": settings}
    restored = None
    if resume and Path(checkpoint).is_file():
        restored = load_checkpoint(checkpoint, identity)
        stream.observed.found, stream.observed.order = restored["stats"], list(restored["order"])
        stream.done = int(restored["done"])
    if baseline is not None:
        stream.untrained = untrained_copy(net, seed)
        stream.baseline = Folded(GroupedStats(groups=groups, chunk=chunk, tol=tol, positions=baseline_positions,
                                              seed=seed))
        if restored is not None:
            stream.untrained.load_state_dict(restored["baseline_state"])
            stream.baseline.found = restored["baseline"]
            stream.baseline.order = [n for n in stream.observed.order if n in stream.baseline.found]
        else:
            reestimate_batchnorm(stream.untrained, bn_batches(images, raw, batch_size, chunk, stream.keeps,
                                                              baseline_bn_images, stream._to_device))
    from tqdm.auto import tqdm

    share = None if total is None else sum(1 for i in range(total) if (i // chunk) % world == rank)
    bar = tqdm(total=share, initial=stream.done, unit="img", desc="survey", disable=not progress or rank != 0,
               dynamic_ncols=True)
    start_time = time.perf_counter()
    error: Exception | None = None
    try:
        stream.run(images, batch_size, chunk, rank, world, bar, checkpoint, checkpoint_every, identity)
    except Exception as exc:
        if world == 1:
            raise
        error = exc  # raised below on every process, after they have all been told
    finally:
        bar.close()
    try:
        found, order = stream.observed.found, stream.observed.order
        if world > 1:
            order = _sync_layers(found, order, template, device, error)
        if not order:
            skipped = stream.observed.skipped
            raise GhostmapsError(f"no feature maps were captured from layers {layers!r}"
                                 f"{' (outputs: ' + ', '.join(sorted(skipped)[:4]) + ')' if skipped else ''}; "
                                 "pick convolutional layers, e.g. layers='Conv2d'.")
        seconds = time.perf_counter() - start_time
        scoring = {"metric": metric, "threshold": float(threshold), "level": float(level), "linkage": linkage,
                   "pairs": int(pairs), "rank99": bool(rank99)}
        results = {}
        _release_free_memory()
        base_found = {} if stream.baseline is None else stream.baseline.found
        for name in order:
            stats = found[name].finish(recentre=True)  # about their own mean: Pearson's centre, the float32
            base = base_found.get(name)  # group vectors then hold the smallest numbers and scores read them as is
            if base is not None:
                base.finish(recentre=True)
            shape = (stats.channels, *(stats.spatial or ()))
            results[name] = _score_layer(name, shape, stats, base, **scoring)
            if stats.channels >= TRIM_CHANNELS:  # a wide layer's temporaries: give them back before the next
                _release_free_memory()
        images_seen = next(iter(results.values())).redundancy.images
        meta = {"model": info.name, "weights": info.weights, "images": images_seen, "layers": layers
                if isinstance(layers, str) else [str(x) for x in layers] if isinstance(layers, Sequence)
                else str(layers), "batch_size": batch_size, "device": str(device), "world_size": world,
                "forward_seconds": round(seconds, 3), "skipped_outputs": sorted(stream.observed.skipped),
                "resumed_from": None if restored is None else int(restored["done"]), **settings, **scoring}
        return Survey(results, meta)
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()


#: Layers at least this wide are followed by a trim of the heap while scoring (a narrower layer's temporaries
#: are reused by the next layer's; trimming after every layer costs its page faults again, ~0.1 s a network).
TRIM_CHANNELS = 512


def _release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    The per-batch temporaries of a long stream leave the heap fragmented (glibc raises its mmap threshold after
    large frees, so later large blocks come from the heap); without this, the scoring's temporaries would push
    the peak memory of a long survey a little above that of a short one."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None (looked up once: ``find_library`` runs a subprocess)."""
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
