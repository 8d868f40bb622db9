"""Which convs :func:`~analysis.convert.ghostify.ghostify` replaces: names and globs resolved, the default
choice (every dense conv but the stem) and the reason each chosen-but-unsuitable conv is skipped."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

from analysis._core.errors import did_you_mean
from analysis.convert.ghostify_result import GhostifyError, SkippedLayer

__all__ = ["choose_layers"]


# ----------------------------------------------------------------------------------------------------------
# choosing layers


def _skip_reason(name: str, conv: nn.Conv2d, ratio: int, min_channels: int) -> str | None:
    """Why ``conv`` cannot (or should not) be ghostified, or None."""
    if type(conv).forward is not nn.Conv2d.forward:
        return f"{type(conv).__name__} subclasses Conv2d with its own forward; only plain convs are replaced"
    if conv.groups > 1:
        if conv.groups == conv.in_channels:
            return (f"depthwise conv (groups={conv.groups}): already as cheap as a Ghost cheap op; "
                    "only dense convs are replaced")
        return (f"grouped conv (groups={conv.groups}): a Ghost module's primary conv is dense, and keeping "
                "the grouping would tie the intrinsic channels to groups; not supported")
    if conv.out_channels < max(ratio, min_channels):
        return (f"only {conv.out_channels} output channels (< {max(ratio, min_channels)}): too few to make "
                "ghosts from; lower min_channels or name it to force")
    return None


def choose_layers(model: nn.Module, layers: str | Sequence[str] | None, ratio: int,
            min_channels: int) -> tuple[list[str], list[SkippedLayer]]:
    convs = {n: m for n, m in model.named_modules() if n and isinstance(m, nn.Conv2d)}
    if not convs:
        raise GhostifyError(f"{type(model).__name__} has no nn.Conv2d layers to ghostify")
    stem = next(iter(convs))
    chosen: list[str] = []
    skipped: list[SkippedLayer] = []
    if layers is None:
        for n, m in convs.items():
            if n == stem:
                skipped.append(SkippedLayer(n, "the stem (first conv) is never replaced by default: it sees the "
                                               "raw image and costs little"))
                continue
            reason = _skip_reason(n, m, ratio, min_channels)
            if reason:
                skipped.append(SkippedLayer(n, reason))
            else:
                chosen.append(n)
        return chosen, skipped
    specs = [layers] if isinstance(layers, str) else list(layers)
    if not specs:
        raise GhostifyError("layers is empty; pass a conv name, a glob such as 'layer1.*', or None for the default")
    modules = dict(model.named_modules())
    for spec in specs:
        if not isinstance(spec, str):
            raise GhostifyError(f"layers must be names or globs (str), got {type(spec).__name__}")
        if any(ch in spec for ch in "*?["):
            hits = [n for n in fnmatch.filter(modules, spec) if n]
            if not hits:
                raise GhostifyError(f"layer pattern {spec!r} matches no module.{did_you_mean(spec, convs)}")
            hit_convs = [n for n in hits if n in convs]
            if not hit_convs:
                raise GhostifyError(f"layer pattern {spec!r} matches {len(hits)} modules but no Conv2d (e.g. "
                                    f"{hits[0]!r} is {type(modules[hits[0]]).__name__}).{did_you_mean(spec, convs)}")
            for n in hit_convs:
                reason = _skip_reason(n, convs[n], ratio, 0)
                if reason:
                    skipped.append(SkippedLayer(n, reason))
                elif n not in chosen:
                    chosen.append(n)
            continue
        if spec not in modules or not spec:
            raise GhostifyError(f"unknown layer {spec!r}.{did_you_mean(spec, convs)} List the convs with "
                                "`ghostmaps layers MODEL --grep Conv2d` or analysis.list_layers(model).")
        if spec not in convs:
            raise GhostifyError(f"layer {spec!r} is a {type(modules[spec]).__name__}, not a Conv2d; only convs can "
                                f"be ghostified.{did_you_mean(spec, convs)}")
        reason = _skip_reason(spec, convs[spec], ratio, 0)
        if reason:  # named explicitly: refuse instead of silently skipping
            raise GhostifyError(f"layer {spec!r} cannot be ghostified: {reason}. Pick a dense conv.")
        if spec not in chosen:
            chosen.append(spec)
    return chosen, skipped
