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

import csv
import io
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ghostnet._utils import model_dtype

from ._io import atomic_write as _atomic_write
from .capture import LayerSpec, capture, eval_mode
from .errors import GhostmapsError
from .groups import GhostGroups, ghost_groups
from .images import ImageSource, load_images
from .models import LoadedModel, as_loaded
from .pairs import GhostPairs, ghost_pairs
from .scores import DEFAULT_THRESHOLD, Redundancy, redundancy
from .similarity import METRICS, ChannelSimilarity, channel_similarity
from .stats import DEFAULT_GROUPS, DEFAULT_TOL, GroupedStats, block_size

FORMAT = "ghostmaps-survey"
FORMAT_VERSION = 1


@dataclass
class LayerSurvey:
    """One layer of a survey: its output shape (C, H, W), scores, ghost groups and pairs, and statistics."""

    name: str
    shape: tuple[int, ...]
    redundancy: Redundancy
    groups: GhostGroups
    pairs: GhostPairs
    stats: GroupedStats | None = None
    _similarity: ChannelSimilarity | None = field(default=None, repr=False)

    @property
    def channels(self) -> int:
        return self.redundancy.channels

    @property
    def similarity(self) -> ChannelSimilarity:
        """The C×C similarity over all images (recomputed from the statistics, then cached)."""
        if self._similarity is None:
            if self.stats is None:
                raise GhostmapsError(f"layer {self.name!r} was saved without statistics; save with stats=True to "
                                     "keep the similarity matrices.")
            self._similarity = channel_similarity(self.stats.total(), self.redundancy.metric, layer=self.name)
        return self._similarity

    @property
    def dead(self) -> list[int]:
        return self.redundancy.dead

    @property
    def constant(self) -> list[int]:
        return self.redundancy.constant

    def row(self) -> dict[str, Any]:
        row = self.redundancy.row()
        row["shape"] = "×".join(map(str, self.shape))
        row["top_pair"] = f"{self.pairs[0].i}~{self.pairs[0].j}" if len(self.pairs) else ""
        row["top_pair_score"] = self.pairs[0].score if len(self.pairs) else None
        return row

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "redundancy": self.redundancy.to_dict(),
                "groups": self.groups.to_dict(), "pairs": self.pairs.to_dict()}

    def __str__(self) -> str:
        return f"{self.redundancy}\n  {self.groups}\n{self.pairs}"


@dataclass
class Survey:
    """A survey's per-layer results in network order, with what produced them in ``meta``."""

    layers: dict[str, LayerSurvey]
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, layer: str) -> LayerSurvey:
        try:
            return self.layers[layer]
        except KeyError:
            from .errors import UnknownLayerError, did_you_mean

            raise UnknownLayerError(f"the survey has no layer {layer!r}.{did_you_mean(layer, self.layers)}") from None

    def __iter__(self) -> Iterator[LayerSurvey]:
        return iter(self.layers.values())

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def names(self) -> list[str]:
        return list(self.layers)

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per layer (depth order): every score with its baseline and interval."""
        return [{"depth": d, **layer.row()} for d, layer in enumerate(self)]

    def to_frame(self) -> Any:
        """A pandas DataFrame of ``rows()`` (needs pandas; ``to_csv`` does not)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - pandas is a dev dependency
            raise GhostmapsError("to_frame needs pandas; use to_csv() or rows() instead.") from exc
        return pd.DataFrame(self.rows()).set_index("layer")

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """The per-layer table as CSV text; also written (atomically) to ``path`` when given."""
        rows = self.rows()
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        text = buf.getvalue()
        if path is not None:
            _atomic_write(Path(path), text.encode())
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "meta": self.meta,
                "layers": [layer.to_dict() for layer in self]}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def save(self, path: str | os.PathLike, stats: bool = True, groups: bool = True) -> Path:
        """Write the survey to one file (``torch.save`` of plain data), atomically. With ``stats`` the per-layer
        statistics come along, so ``load`` can give similarity matrices and ``rescore``; ``groups=False`` leaves
        out the per-group matrices (a file of 8·C² instead of (8 + 4K)·C² bytes per layer; a rescore then has
        no intervals)."""
        payload = self.to_dict()
        for entry, layer in zip(payload["layers"], self, strict=True):
            kept = None
            if stats and layer.stats is not None:
                kept = (layer.stats if groups else layer.stats.collapsed()).state_dict()
            entry["stats"] = kept
        buf = io.BytesIO()
        torch.save(payload, buf)
        path = Path(path)
        _atomic_write(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Survey:
        """Read a file written by ``save``."""
        path = Path(path)
        if not path.is_file():
            raise GhostmapsError(f"no survey file at {path}; run `ghostmaps survey` or analysis.survey first.")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
            raise GhostmapsError(f"{path} is not a readable survey file ({exc}).") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise GhostmapsError(f"{path} is not a ghostmaps survey file.")
        layers = {}
        for entry in payload["layers"]:
            stats = GroupedStats.from_state_dict(entry["stats"]) if entry.get("stats") else None
            pairs_d = entry["pairs"]
            pairs = GhostPairs([_pair(p) for p in pairs_d["pairs"]], pairs_d.get("metric"), pairs_d.get("layer"),
                               pairs_d.get("exclusive", True))
            layers[entry["name"]] = LayerSurvey(entry["name"], tuple(entry["shape"]),
                                                Redundancy.from_dict(entry["redundancy"]),
                                                GhostGroups.from_dict(entry["groups"]), pairs, stats)
        return cls(layers, payload.get("meta", {}))

    def rescore(self, threshold: float | None = None, metric: str | None = None, bootstrap: int | None = None,
                level: float | None = None, linkage: str | None = None, pairs: int | None = None,
                seed: int | None = None, layers: Sequence[str] | None = None) -> Survey:
        """The same survey scored with other settings, from the kept statistics (no forward pass); ``layers``
        keeps only those layers."""
        settings = {k: self.meta.get(k) for k in ("threshold", "metric", "bootstrap", "level", "linkage", "pairs",
                                                  "seed")}
        for k, v in {"threshold": threshold, "metric": metric, "bootstrap": bootstrap, "level": level,
                     "linkage": linkage, "pairs": pairs, "seed": seed}.items():
            if v is not None:
                settings[k] = v
        check_settings(**{k: v for k, v in settings.items() if k != "seed" and v is not None})
        chosen = [self[name] for name in layers] if layers is not None else list(self)
        missing = [layer.name for layer in chosen if layer.stats is None]
        if missing:
            raise GhostmapsError(f"layers {missing[:3]} have no statistics (saved with stats=False); survey again.")
        done = {layer.name: _score_layer(layer.name, layer.shape, layer.stats, **settings) for layer in chosen}
        return Survey(done, {**self.meta, **settings})

    def __str__(self) -> str:
        m = self.meta
        head = (f"survey of {m.get('model', 'a model')} over {m.get('images', '?')} images, {len(self)} layers, "
                f"{m.get('metric')} similarity, τ = {m.get('threshold')}")
        lines = [head, f"{'layer':<28} {'C':>5} {'dead':>4}  {'ghost frac [CI] (null)':<30} {'s':>3}"]
        for layer in self:
            r = layer.redundancy
            lines.append(f"{layer.name:<28} {r.channels:>5} {len(r.dead):>4}  {str(r.scores['ghost_fraction']):<30} "
                         f"{r.suggested_ratio:>3}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Survey({len(self)} layers, images={self.meta.get('images')}, model={self.meta.get('model')!r})"


def _pair(d: dict[str, Any]) -> Any:
    from .pairs import GhostPair

    return GhostPair(int(d["i"]), int(d["j"]), float(d["score"]))


# -- scoring one layer --------------------------------------------------------------------------------------
def _score_layer(name: str, shape: tuple[int, ...], stats: GroupedStats, *, metric: str, threshold: float,
                 bootstrap: int, level: float, linkage: str, pairs: int, seed: int) -> LayerSurvey:
    sim = channel_similarity(stats.total(), metric, layer=name)
    found = ghost_groups(sim, threshold, linkage)
    red = redundancy(stats, metric=metric, threshold=threshold, bootstrap=bootstrap, level=level,
                     linkage=linkage, seed=seed, layer=name, observed_groups=found)
    out = LayerSurvey(name, tuple(shape), red, None, None, stats, sim)  # type: ignore[arg-type]
    out.groups = found
    out.pairs = ghost_pairs(sim, k=pairs, absolute=True) if pairs else GhostPairs([], metric, name)
    return out


# -- image sources ------------------------------------------------------------------------------------------
def _tensor_of(item: Any) -> torch.Tensor:
    if isinstance(item, torch.Tensor):
        return item
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        return item[0]
    if isinstance(item, dict):
        for key in ("image", "images", "pixel_values", "input"):
            if isinstance(item.get(key), torch.Tensor):
                return item[key]
    raise GhostmapsError(f"the image source yielded {type(item).__name__}; yield N×C×H×W tensors or "
                         "(images, labels) pairs.")


def _source_length(images: Any) -> int | None:
    if isinstance(images, torch.Tensor):
        return 1 if images.dim() == 3 else int(images.shape[0])
    if isinstance(images, ImageSource):
        return len(images)
    for attr in ("sampler", "dataset"):  # a DataLoader: the sampler says how many images it yields
        part = getattr(images, attr, None)
        if part is not None:
            try:
                n = len(part)
            except TypeError:
                continue
            size = getattr(images, "batch_size", None)
            if getattr(images, "drop_last", False) and isinstance(size, int) and size > 0:
                n -= n % size  # the last, partial batch is never yielded
            return n
    return None


def _batches(images: Any, batch_size: int, chunk: int, rank: int, world: int
             ) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield (image positions in the whole set, batch) for this process's share: block b = position // chunk
    belongs to process b mod world."""

    def mine(i: int) -> bool:
        return (i // chunk) % world == rank

    if isinstance(images, torch.Tensor):
        x = images.unsqueeze(0) if images.dim() == 3 else images
        if x.dim() != 4:
            raise GhostmapsError(f"an image tensor must be N×C×H×W (or C×H×W), got shape {tuple(images.shape)}.")
        idx = [i for i in range(x.shape[0]) if mine(i)]
        for s in range(0, len(idx), batch_size):
            part = idx[s:s + batch_size]
            yield part, x[part]
        return
    if isinstance(images, ImageSource):
        position = {name: i for i, name in enumerate(images.names)}
        src = images
        if world > 1:
            share = [it for i, it in enumerate(images._items) if mine(i)]
            if not share:  # fewer blocks than processes: this one has nothing to do (not an error)
                return
            src = ImageSource(share, images.transform, images.description)
        for names, batch in src.batches(batch_size):
            yield [position[n] for n in names], batch
        return
    if not isinstance(images, Iterable):
        raise GhostmapsError(f"cannot read images from {type(images).__name__}; pass a path, 'samples', a list of "
                             "paths, an ImageSource, an N×C×H×W tensor or a DataLoader.")
    seen = 0
    for item in images:  # a DataLoader or any iterable of batches; with several processes each keeps its share
        x = _tensor_of(item)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        n = x.shape[0]
        keep = [k for k in range(n) if mine(seen + k)]
        if keep:
            yield [seen + k for k in keep], (x if len(keep) == n else x[keep])
        seen += n


def _full_device(device: torch.device) -> torch.device:
    """``cuda`` as ``cuda:<current>`` (what a parameter's ``.device`` says), so devices compare whole."""
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _backend(device: torch.device) -> str:
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
        dist.init_process_group(backend=_backend(device))
        started = True
    return dist.get_rank(), dist.get_world_size(), started


def _sync_layers(found: dict[str, GroupedStats], order: list[str], groups: int, chunk: int, tol: float,
                 device: torch.device, error: BaseException | None = None) -> list[str]:
    """Make every process hold the same layers (zero statistics where it saw none), then all-reduce them.

    Every process first shares its layers (with their map sizes) and whether its forward pass failed, so one
    process's error is raised on all of them instead of leaving the others waiting in a collective. A layer whose
    map size differs between processes keeps no position sums (no null baseline), as in one process."""
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
    sizes: dict[str, set[tuple[int, ...]]] = {}
    for entries in everyone:
        for name, channels, spatial in entries["layers"]:
            layers.setdefault(name, (channels, tuple(spatial)))
            sizes.setdefault(name, set()).add(tuple(spatial))
    for name, (channels, spatial) in layers.items():
        if name not in found:
            found[name] = GroupedStats(groups=groups, chunk=chunk, tol=tol).init(channels, spatial, device)
        if len(sizes[name]) > 1:
            found[name].position_sums = None  # maps of different sizes: no position-aligned baseline
    for name in layers:
        found[name].all_reduce()
    return list(layers)


# -- the survey ---------------------------------------------------------------------------------------------
def check_settings(*, metric: str = "cosine", threshold: float = DEFAULT_THRESHOLD, bootstrap: int = 0,
                   level: float = 0.95, linkage: str = "complete", pairs: int = 0, batch_size: int = 1,
                   groups: int = DEFAULT_GROUPS, tol: float = DEFAULT_TOL, limit: int | None = None) -> None:
    """Refuse bad survey settings before any forward pass (each error names the setting and what it takes)."""
    from .groups import LINKAGES

    if metric not in METRICS:
        raise GhostmapsError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}.")
    if not isinstance(threshold, (int, float)) or not 0.0 < float(threshold) <= 1.0:
        raise GhostmapsError(f"threshold must be a |similarity| in (0, 1], got {threshold!r}; e.g. 0.9.")
    if not isinstance(bootstrap, int) or bootstrap < 0:
        raise GhostmapsError(f"bootstrap must be 0 (no intervals) or a number of replicates, got {bootstrap!r}.")
    if not isinstance(level, (int, float)) or not 0.0 < float(level) < 1.0:
        raise GhostmapsError(f"level must be a confidence level in (0, 1), got {level!r}; e.g. 0.95.")
    if linkage not in LINKAGES:
        raise GhostmapsError(f"unknown linkage {linkage!r}; use one of {', '.join(LINKAGES)}.")
    if not isinstance(pairs, int) or pairs < 0:
        raise GhostmapsError(f"pairs must be 0 or more ghost pairs per layer, got {pairs!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise GhostmapsError(f"batch_size must be at least 1, got {batch_size!r}.")
    if not isinstance(groups, int) or groups < 1:
        raise GhostmapsError(f"groups must be at least 1, got {groups!r}.")
    if not isinstance(tol, (int, float)) or not float(tol) >= 0.0:
        raise GhostmapsError(f"tol must be a tolerance ≥ 0, got {tol!r}.")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise GhostmapsError(f"limit must be a number of images ≥ 1 (or None for all), got {limit!r}.")


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
    level: float = 0.95,
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
        images: anything ``load_images`` takes (paths, folders, globs, ``"samples"``), an ``ImageSource``, an
            N×C×H×W tensor, or a DataLoader / iterable of batches (tensors or ``(images, labels)``).
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
    known = None if isinstance(images, (str, os.PathLike)) else _source_length(images)  # before any wrapping
    if isinstance(images, (str, os.PathLike)) or (isinstance(images, Sequence) and images
                                                  and all(isinstance(s, (str, os.PathLike)) for s in images)):
        images = load_images(images, transform=preprocess, limit=limit)
    elif limit is not None and isinstance(images, ImageSource):
        images = ImageSource(images._items[:limit], images.transform, images.description)
    elif limit is not None:
        images = images[:limit] if isinstance(images, torch.Tensor) else _limited(images, limit)
    if distributed and isinstance(getattr(images, "sampler", None), torch.utils.data.DistributedSampler):
        raise GhostmapsError("with distributed=True pass a DataLoader without a DistributedSampler: survey splits "
                             "the images over the processes itself.")
    rank, world, started = _distributed_context(distributed, device)
    total = _source_length(images)
    if total is None and known is not None:
        total = known if limit is None else min(limit, known)
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
            for positions, batch in _batches(images, batch_size, chunk, rank, world):
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


def _limited(images: Iterable[Any], limit: int) -> Iterator[torch.Tensor]:
    left = limit
    for item in images:
        if left <= 0:
            return
        x = _tensor_of(item)
        x = x.unsqueeze(0) if x.dim() == 3 else x
        yield x[:left]
        left -= x.shape[0]
