"""The Result protocol every result class follows, and the conversion of numbers to plain JSON-able data.

Every result is plain data in, plain data out (scikit-learn style), with the same methods and signatures:

* ``rows() -> list[dict]``: the result as a table, one flat dict per row whose values are ``str``, ``int``,
  ``float`` (finite), ``bool`` or ``None``; this is what ``to_csv`` and ``to_frame`` show.
* ``to_dict() -> dict``: everything (matrices as nested lists), as JSON-native data: str keys, lists (no
  tuples), str, int, float, bool, None; a NaN or ±inf becomes None (:func:`plain`). So
  ``json.loads(r.to_json()) == r.to_dict()``.
* ``Cls.from_dict(d)``: the result back from ``to_dict()`` or its JSON, so
  ``Cls.from_dict(json.loads(r.to_json())) == r``. A None where the class holds a float (a NaN or inf that went
  through JSON) is read back as NaN (:func:`number`, :func:`floats`), or as the value the class documents for it
  (``inf`` in ``BestSources.error_matrix``); a None where the field is ``float | None`` stays None.
* ``to_json(indent=2) -> str``: ``to_dict()`` as strict JSON.
* ``to_csv(path=None) -> str``: ``rows()`` as CSV text (header row, ``None`` as an empty cell, ``\\n`` line
  ends), returned always; given ``path`` the same text is also written there, atomically, as UTF-8.
* ``to_frame()``: a pandas DataFrame of ``rows()``; without pandas it raises ``MissingDependencyError``
  pointing to ``to_csv``/``rows``, which need no pandas.

Equality: record classes of plain fields (``GhostPair``, ``Score``, ...) compare field by field (dataclass
``==``); classes holding arrays or tensors compare as data, i.e. by ``to_dict()``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from analysis._core.errors import MissingDependencyError
from analysis._core.io import atomic_write

if TYPE_CHECKING:
    import pandas as pd
    from typing_extensions import Self

__all__ = ["Result", "floats", "number", "plain"]


def plain(v: Any) -> Any:
    """Any result data as JSON-native Python data: numpy and torch values become Python numbers and (nested)
    lists, tuples become lists, dict keys become str, and non-finite floats become None."""
    if isinstance(v, dict):
        return {k if isinstance(k, str) else str(k): plain(x) for k, x in v.items()}
    if isinstance(v, torch.Tensor):
        return plain(v.detach().cpu().tolist())
    if isinstance(v, np.ndarray):
        return plain(v.tolist()) if v.ndim else plain(v.item())
    if isinstance(v, (list, tuple)):
        return [plain(a) for a in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.str_):
        return str(v)
    return v


def _filled(v: Any, fill: float) -> Any:
    if v is None:
        return fill
    if isinstance(v, (list, tuple)):
        return [_filled(a, fill) for a in v]
    return v


def floats(v: Any, fill: float = math.nan) -> np.ndarray:
    """A float64 array back from (nested) lists of :func:`plain`, with ``fill`` where a None stands."""
    return np.asarray(_filled(v, fill), dtype=np.float64)


def number(v: Any, fill: float = math.nan) -> float:
    """A float back from :func:`plain`: ``fill`` (NaN by default) for None."""
    return fill if v is None else float(v)


class Result(ABC):
    """The protocol of every result class (see the module docstring). A subclass implements ``rows``,
    ``to_dict`` and ``from_dict``; ``to_json``, ``to_csv`` and ``to_frame`` come from here."""

    #: the table's columns when ``rows()`` is empty (else the first row's keys)
    _COLUMNS: ClassVar[tuple[str, ...]] = ()
    #: the column ``to_frame`` uses as the index, or None for a plain range index
    _INDEX: ClassVar[str | None] = None

    @abstractmethod
    def rows(self) -> list[dict[str, Any]]:
        """The result as a table: one flat dict (str, int, finite float, bool or None values) per row."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Everything, as JSON-native data (``plain``)."""

    @classmethod
    @abstractmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The result back from ``to_dict()`` (or from its JSON)."""

    def __eq__(self, other: object) -> bool:  # dataclasses of plain fields generate their own
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Result)
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def _columns(self, rows: list[dict[str, Any]]) -> list[str]:
        return list(rows[0]) if rows else list(self._COLUMNS)

    def to_json(self, indent: int | None = 2) -> str:
        """``to_dict()`` as strict JSON text (non-finite numbers are already None)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """``rows()`` as CSV text (header row, empty cells for None; no pandas needed). Given ``path``, the same
        text is also written there atomically (UTF-8). Returns the text either way."""
        rows = self.rows()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self._columns(rows), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
        if path is not None:
            atomic_write(path, text)
        return text

    def to_frame(self) -> pd.DataFrame:
        """``rows()`` as a pandas DataFrame (needs pandas; ``to_csv`` and ``rows`` do not)."""
        try:
            import pandas as pd
        except ImportError:
            raise MissingDependencyError(f"{type(self).__name__}.to_frame() needs pandas (pip install pandas); "
                                         "use to_csv() or rows() instead, which need no pandas.") from None
        rows = self.rows()
        frame = pd.DataFrame(rows, columns=self._columns(rows))
        return frame.set_index(self._INDEX) if self._INDEX else frame


class Record(Result):
    """A :class:`Result` that is one flat dataclass: ``to_dict()`` is its fields as plain data and ``rows()``
    that one dict; a subclass adds ``from_dict`` (and overrides ``rows`` where a cell needs formatting)."""

    def rows(self) -> list[dict[str, Any]]:
        return [self.to_dict()]

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))  # type: ignore[call-overload]
