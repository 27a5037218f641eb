"""Compact sample lists: :class:`SampleTable`, a list of :class:`~clefctl.data.records.Sample` held
as a few numpy arrays, one encoding per field.

A list of ``Sample`` objects costs ~660 bytes a sample, and a DataLoader worker forked from a
training process copies it bit by bit as it reads it (each read touches the objects' reference
counts, so every page is copied): BP4D+'s 1.5M frames make ~1 GB per worker, 8 ranks x 8 workers
make 64. A ``SampleTable`` keeps the same records in arrays, ~130 bytes a BP4D frame, which workers
share with their parent untouched. ``table[i]`` gives back an equal ``Sample`` (a few us).

Encodings, chosen per field from its values: strings with few distinct values (subjects,
activities, splits) as codes into a list, other strings (ids, paths) as one UTF-8 buffer with
offsets, integers and floats as arrays, same-shape arrays (``aus``, ``au_mask``) stacked (as uint8
when every value is 0 or 1, given back in their own dtype), arrays of varying shapes (``pixels``)
as one flat buffer with offsets and shapes, and anything else as a plain list. ``None`` is kept
(a mask per field). :meth:`SampleTable.save` / :meth:`SampleTable.load` write and read it as one
``.npz`` without pickles (the data set index cache, :mod:`clefctl.data.sample_index`).

Example::

    >>> from clefctl.data.records import Sample
    >>> t = SampleTable.from_samples([Sample(id="a", subject="s1", path="/d/a.jpg", frame=3)])
    >>> t[0].frame, len(t)
    (3, 1)
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from clefctl.data.records import Sample

_FIELDS = [f.name for f in dataclasses.fields(Sample)]


@contextlib.contextmanager
def no_gc():
    """Python's cyclic garbage collector paused while millions of small objects are made (it would
    scan them again and again: ~8x slower); restored afterwards."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _Column:
    """One field's values; ``get(i)`` gives value i back. Subclasses hold numpy arrays only,
    except :class:`_ObjectColumn`."""

    kind = ""

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, np.ndarray)}

    def meta(self) -> dict:
        return {}

    def all_values(self, n: int) -> list:
        """Every value, faster than ``get`` one by one."""
        return [self.get(i) for i in range(n)]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays().values())


def _with_nones(values: list, none: np.ndarray) -> list:
    """``values`` with None where the field's ``none`` mask is set."""
    if not none.any():
        return values
    return [None if flag else v for v, flag in zip(values, none.tolist())]


class _NoneColumn(_Column):
    kind = "none"

    def get(self, i: int):
        return None

    def all_values(self, n: int) -> list:
        return [None] * n


class _Categories(_Column):
    """Strings with few distinct values: int32 codes (-1 = None) into ``names``."""

    kind = "categories"

    def __init__(self, codes: np.ndarray, names: np.ndarray):
        self.codes, self.names = codes, names
        self._names = names.tolist()

    @classmethod
    def of(cls, values: list) -> "_Categories":
        index: dict[str, int] = {}
        codes = np.fromiter((-1 if v is None else index.setdefault(v, len(index)) for v in values),
                            dtype=np.int32, count=len(values))
        return cls(codes, np.array(list(index), dtype=str) if index else np.zeros(0, dtype="<U1"))

    def get(self, i: int):
        c = int(self.codes[i])
        return None if c < 0 else self._names[c]

    def all_values(self, n: int) -> list:
        names = self._names + [None]  # code -1 -> None
        return [names[c] for c in self.codes.tolist()]


class _Strings(_Column):
    """Many distinct strings: one UTF-8 buffer, int64 ``offsets`` (n + 1), a None mask."""

    kind = "strings"

    def __init__(self, data: np.ndarray, offsets: np.ndarray, none: np.ndarray):
        self._bytes = data.tobytes()  # the one copy; ``data`` is a view of it
        self.offsets, self.none = offsets, none

    @property
    def data(self) -> np.ndarray:
        return np.frombuffer(self._bytes, dtype=np.uint8)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"data": self.data, "offsets": self.offsets, "none": self.none}

    @classmethod
    def of(cls, values: list) -> "_Strings":
        encoded = [b"" if v is None else v.encode("utf-8", "surrogateescape") for v in values]
        offsets = np.zeros(len(values) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets,
                   np.array([v is None for v in values], dtype=bool))

    def get(self, i: int):
        if self.none[i]:
            return None
        return self._bytes[self.offsets[i]:self.offsets[i + 1]].decode("utf-8", "surrogateescape")

    def all_values(self, n: int) -> list:
        o = self.offsets.tolist()
        if self._bytes.isascii():  # one decode, then str slices at the same offsets
            text = self._bytes.decode("ascii")
            out = [text[o[i]:o[i + 1]] for i in range(n)]
        else:
            out = [self._bytes[o[i]:o[i + 1]].decode("utf-8", "surrogateescape") for i in range(n)]
        return _with_nones(out, self.none)


class _Numbers(_Column):
    """ints or floats (one kind per field), a None mask; ``shape`` > 1 for tuples (face boxes)."""

    kind = "numbers"

    def __init__(self, values: np.ndarray, none: np.ndarray, python: str):
        self.values, self.none, self.python = values, none, python

    @classmethod
    def of(cls, values: list, python: str) -> "_Numbers | None":
        dtype = np.int64 if python in ("int", "tuple") else np.float64
        present = [v for v in values if v is not None]
        if python == "tuple" and len({len(v) for v in present}) != 1:
            return None
        fill = tuple([0] * len(present[0])) if python == "tuple" else 0
        try:
            arr = np.array([fill if v is None else v for v in values], dtype=dtype)
        except (TypeError, ValueError, OverflowError):
            return None
        return cls(arr, np.array([v is None for v in values], dtype=bool), python)

    def meta(self) -> dict:
        return {"python": self.python}

    def get(self, i: int):
        if self.none[i]:
            return None
        if self.python == "tuple":
            return tuple(int(x) for x in self.values[i])
        return int(self.values[i]) if self.python == "int" else float(self.values[i])

    def all_values(self, n: int) -> list:
        out = self.values.tolist()  # Python ints / floats already
        if self.python == "tuple":
            out = [tuple(v) for v in out]
        return _with_nones(out, self.none)


class _Stacked(_Column):
    """Arrays of one shape and dtype, stacked; uint8 when all values are 0/1 (given back as ``dtype``)."""

    kind = "stacked"

    def __init__(self, values: np.ndarray, none: np.ndarray, dtype: str):
        self.values, self.none, self.dtype = values, none, dtype

    @classmethod
    def of(cls, values: list) -> "_Stacked | None":
        present = [v for v in values if v is not None]
        shapes, dtypes = {v.shape for v in present}, {v.dtype.str for v in present}
        if len(shapes) != 1 or len(dtypes) != 1:
            return None
        zero = np.zeros_like(present[0])
        stacked = np.stack([zero if v is None else v for v in values])
        small = stacked.astype(np.uint8)
        if np.array_equal(small, stacked):
            stacked = small
        return cls(stacked, np.array([v is None for v in values], dtype=bool), dtypes.pop())

    def meta(self) -> dict:
        return {"dtype": self.dtype}

    def get(self, i: int):
        return None if self.none[i] else self.values[i].astype(self.dtype)

    def all_values(self, n: int) -> list:
        """Equal rows share one read-only array (an AU code pattern recurs in thousands of frames)."""
        if n == 0:
            return []
        flat = np.ascontiguousarray(self.values.reshape(n, -1))
        rows = flat.view(np.dtype((np.void, flat.dtype.itemsize * flat.shape[1])))[:, 0]
        uniq, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
        shared = []
        for k in first.tolist():
            arr = flat[k].reshape(self.values.shape[1:]).astype(self.dtype)
            arr.flags.writeable = False
            shared.append(arr)
        out = [shared[k] for k in inverse.reshape(-1).tolist()]
        return _with_nones(out, self.none)


class _Ragged(_Column):
    """Arrays of one dtype and varying shapes (in-memory pixels, grey or RGB): one flat buffer,
    offsets, and each row's shape (``ndims`` of its entries, the rest padding)."""

    kind = "ragged"

    def __init__(self, data: np.ndarray, offsets: np.ndarray, shapes: np.ndarray, ndims: np.ndarray,
                 none: np.ndarray):
        self.data, self.offsets, self.shapes, self.ndims, self.none = data, offsets, shapes, ndims, none

    @classmethod
    def of(cls, values: list) -> "_Ragged | None":
        present = [v for v in values if v is not None]
        if len({v.dtype.str for v in present}) != 1:
            return None
        width = max(v.ndim for v in present)
        shapes = np.zeros((len(values), width), dtype=np.int64)
        ndims = np.zeros(len(values), dtype=np.int64)
        for i, v in enumerate(values):
            if v is not None:
                shapes[i, :v.ndim], ndims[i] = v.shape, v.ndim
        offsets = np.zeros(len(values) + 1, dtype=np.int64)
        np.cumsum([0 if v is None else v.size for v in values], out=offsets[1:])
        data = np.concatenate([v.reshape(-1) for v in present])
        return cls(data, offsets, shapes, ndims, np.array([v is None for v in values], dtype=bool))

    def get(self, i: int):
        if self.none[i]:
            return None
        shape = tuple(int(x) for x in self.shapes[i, :self.ndims[i]])
        return self.data[self.offsets[i]:self.offsets[i + 1]].reshape(shape).copy()


class _ObjectColumn(_Column):
    """Anything else: a plain list (not shared with workers without copies; not saved)."""

    kind = "objects"

    def __init__(self, values: list):
        self.values = values

    def get(self, i: int):
        return self.values[i]

    @property
    def nbytes(self) -> int:
        return 8 * len(self.values)


def _encode(values: list) -> _Column:
    """The compact column for one field's values (see the module docstring)."""
    present = [v for v in values if v is not None]
    if not present:
        return _NoneColumn()
    kinds = {type(v) for v in present}
    col: _Column | None = None
    if kinds == {str}:
        distinct = len(set(present))
        return _Categories.of(values) if distinct <= max(256, len(values) // 8) else _Strings.of(values)
    if kinds <= {int, np.int64, np.int32} and bool not in kinds:
        col = _Numbers.of(values, "int")
    elif kinds <= {float, np.float32, np.float64}:
        col = _Numbers.of(values, "float")
    elif kinds == {tuple} and all(isinstance(x, (int, np.integer)) for v in present for x in v):
        col = _Numbers.of(values, "tuple")
    elif kinds == {np.ndarray}:
        col = _Stacked.of(values) or _Ragged.of(values)
    return col if col is not None else _ObjectColumn(list(values))


_KINDS = {c.kind: c for c in (_NoneColumn, _Categories, _Strings, _Numbers, _Stacked, _Ragged)}


class SampleTable(Sequence):
    """A read-only, compact sequence of samples (see the module docstring); ``table[i]`` -> Sample."""

    def __init__(self, n: int, columns: dict[str, _Column]):
        self._n, self.columns = int(n), columns

    @classmethod
    def from_samples(cls, samples: Sequence[Sample]) -> "SampleTable":
        """The table of ``samples`` (a SampleTable is returned as it is)."""
        if isinstance(samples, SampleTable):
            return samples
        samples = list(samples)
        return cls(len(samples), {name: _encode([getattr(s, name) for s in samples]) for name in _FIELDS})

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        i = int(i)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"sample {i} out of range ({self._n} samples)")
        return Sample(**{name: col.get(i) for name, col in self.columns.items()})

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(self._n))

    def values(self, name: str) -> list:
        """Every sample's ``name`` field, without building the samples."""
        return self.columns[name].all_values(self._n)

    def to_samples(self) -> list[Sample]:
        """Every sample, built column by column (~1-2 us a sample). Equal ``aus`` / ``au_mask``
        arrays are shared and read-only, which makes a million-frame list ~300 MB smaller."""
        columns = [self.columns[name].all_values(self._n) for name in _FIELDS]
        with no_gc():
            return [Sample(*row) for row in zip(*columns)]

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns."""
        return sum(c.nbytes for c in self.columns.values())

    # -- files ------------------------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict | None = None) -> None:
        """Write the table (and ``extra``, JSON) to ``path`` as an uncompressed ``.npz`` without
        pickles. ValueError when a field holds values only a pickle could store."""
        arrays: dict[str, np.ndarray] = {}
        layout = {}
        for name, col in self.columns.items():
            if isinstance(col, _ObjectColumn):
                raise ValueError(f"field {name!r} holds values a table file cannot store")
            layout[name] = {"kind": col.kind, **col.meta()}
            for key, arr in col.arrays().items():
                arrays[f"{name}.{key}"] = arr
        head = {"n": self._n, "layout": layout, "extra": extra or {}}
        arrays["__head__"] = np.frombuffer(json.dumps(head).encode("utf-8"), dtype=np.uint8)
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> tuple["SampleTable", dict]:
        """(table, extra) from a file :meth:`save` wrote; ValueError/OSError for anything else."""
        with np.load(path, allow_pickle=False) as z:
            head = json.loads(z["__head__"].tobytes().decode("utf-8"))
            columns: dict[str, _Column] = {}
            for name, spec in head["layout"].items():
                kind = _KINDS[spec["kind"]]
                parts = {k.split(".", 1)[1]: z[k] for k in z.files if k.startswith(name + ".")}
                columns[name] = kind(**parts, **{k: v for k, v in spec.items() if k != "kind"})
        if set(columns) != set(_FIELDS):
            raise ValueError(f"the table's fields {sorted(columns)} are not Sample's")
        return cls(head["n"], columns), head["extra"]

