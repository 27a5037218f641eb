"""Index families, their memory, and the automatic choice (by row count and a memory budget).

Rows are unit vectors, so inner product = cosine in every family.

=============  ===============================================================  ===============
kind           FAISS index                                                      bytes per row
=============  ===============================================================  ===============
flat           ``IndexFlatIP``: exact                                           4 d
ivf            ``IndexIVFFlat``: float32 lists (the default before issue 16)    4 d + 8
ivf-sq8        ``IndexIVFScalarQuantizer`` 8-bit, by residual                   d + 8
ivf-pq         ``IndexIVFPQFastScan`` (d/4 x 4-bit codes) + ``Refine(SQ8)``     d + d/8 + 8
hnsw           ``IndexHNSWFlat``                                                4 d + 8 m
ivf-ondisk     ``IndexIVFScalarQuantizer`` 8-bit, lists in ``<store>.faiss.ivfdata``  (memory-mapped)
=============  ===============================================================  ===============

``auto`` (:func:`resolve_index_kind`): exact ``flat`` below :data:`FLAT_LIMIT` rows (unless a
budget given explicitly is smaller than it); from there
the most accurate in-memory family whose size fits the budget (default: the float16 embeddings'
size, 2 d bytes per row): ``ivf-sq8``; ``ivf-ondisk`` from :data:`ONDISK_LIMIT` rows or when the
in-memory index would not fit in the memory available. ``ivf-pq`` adds a PQ fast-scan stage
whose short codes are cheap to scan but, on text-like queries, rank poorly enough that it is not
chosen automatically (docs/store.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from clefctl.errors import ClefError

FLAT_LIMIT = 100_000           # auto: exact search below this many rows
ONDISK_LIMIT = 10_000_000      # auto: lists on disk from this many rows
KINDS = ("flat", "ivf", "ivf-sq8", "ivf-pq", "hnsw", "ivf-ondisk")
INDEX_KINDS = ("auto",) + KINDS
IVF_KINDS = ("ivf", "ivf-sq8", "ivf-pq", "ivf-ondisk")
AUTO_PREFERENCE = ("ivf-sq8",)          # in-memory families auto picks from, most accurate first


@dataclass
class IndexParams:
    """Index construction and search settings.

    IVF: ``nlist`` (None: :func:`default_nlist`), ``nprobe`` (None: tuned at build time for
    ``target_recall`` on text-like queries, see :mod:`clefctl.store.index.tuning`; saved with the
    index), ``train_per_list`` sample rows per list for k-means, ``kmeans_iterations``;
    ``k_factor``: ivf-pq candidates re-ranked per result; HNSW: ``hnsw_m``, ``ef_construction``,
    ``ef_search``. ``budget_bytes``: the most memory auto may give the index (None: the float16
    embeddings' size). ``gpu``: auto | yes | no."""

    nlist: int | None = None
    nprobe: int | None = None
    train_per_list: int = 32
    kmeans_iterations: int = 10
    target_recall: float = 0.95
    k_factor: int = 16
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 96
    budget_bytes: int | None = None
    gpu: str = "auto"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def default_nlist(n: int) -> int:
    """IVF lists: ~4*sqrt(n) rounded to a power of two (1024 for 100k, 4096 for 1M), 16-65536.
    Text-like queries need the fine partition: with half as many lists they needed far more probes
    for the same recall on the benchmark (docs/performance.md)."""
    if n <= 0:
        return 16
    return int(min(65536, max(16, 2 ** round(math.log2(4 * math.sqrt(n))))))


def default_nprobe(n: int, nlist: int) -> int:
    """The untuned starting point (IVF lists probed per query): enough lists to scan ~4000 rows,
    16-128. Builds replace it by the tuned value (:func:`clefctl.store.index.tuning.tune_nprobe`)."""
    if n <= 0:
        return 16
    return int(min(nlist, max(16, min(128, math.ceil(4000 * nlist / n)))))


def bytes_per_row(kind: str, d: int, params: IndexParams | None = None) -> float:
    """Memory of one row in an index of ``kind`` (codes + the 8-byte id of IVF lists)."""
    p = params or IndexParams()
    return {"flat": 4 * d, "ivf": 4 * d + 8, "ivf-sq8": d + 8, "ivf-pq": d + d / 8 + 8,
            "hnsw": 4 * d + 8 * p.hnsw_m, "ivf-ondisk": d + 8}[kind]


def estimate_bytes(kind: str, n: int, d: int, params: IndexParams | None = None) -> int:
    """The index's size in memory (on disk for ivf-ondisk): rows plus the coarse centroids."""
    p = params or IndexParams()
    fixed = 4 * d * (p.nlist or default_nlist(n)) if kind in IVF_KINDS else 0
    return int(n * bytes_per_row(kind, d, p) + fixed)


def resident_bytes(kind: str, n: int, d: int, params: IndexParams | None = None) -> int:
    """What the index needs in RAM: its size, except on-disk lists (only the centroids and ids)."""
    p = params or IndexParams()
    if kind == "ivf-ondisk":
        return int(4 * d * (p.nlist or default_nlist(n)) + 8 * n)
    return estimate_bytes(kind, n, d, p)


def float16_bytes(n: int, d: int) -> int:
    """The float16 embeddings' size: the default budget of ``auto``."""
    return int(2 * n * d)


def resolve_index_kind(kind: str, n: int, d: int = 512, params: IndexParams | None = None,
                       available: int | None = None) -> str:
    """The family ``kind`` names, with ``auto`` chosen as the module docstring says.

    ``available``: memory free for the index (bytes; None: not checked). A budget that no
    in-memory family fits is refused here, before anything is built."""
    if kind not in INDEX_KINDS:
        raise ClefError(f"unknown index kind {kind!r}", hint=f"use {', '.join(INDEX_KINDS)}")
    if kind != "auto":
        return kind
    p = params or IndexParams()
    if n < FLAT_LIMIT and (p.budget_bytes is None or estimate_bytes("flat", n, d, p) <= p.budget_bytes):
        return "flat"
    if n >= ONDISK_LIMIT:
        return "ivf-ondisk"
    budget = p.budget_bytes if p.budget_bytes is not None else float16_bytes(n, d)
    fits = [k for k in AUTO_PREFERENCE if estimate_bytes(k, n, d, p) <= budget]
    if not fits:
        smallest = min(AUTO_PREFERENCE, key=lambda k: estimate_bytes(k, n, d, p))
        raise ClefError(f"no index family fits {n:,} rows of {d} dimensions in a budget of {_size(budget)}: "
                        f"the smallest ({smallest}) needs {_size(estimate_bytes(smallest, n, d, p))}",
                        hint="raise --budget, or choose --kind ivf-ondisk (lists on disk)")
    if available is not None and estimate_bytes(fits[0], n, d, p) > available:
        return "ivf-ondisk"
    return fits[0]


def _size(nbytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{int(nbytes)} B"


def parse_size(text: str | int | None) -> int | None:
    """``"512MB"``, ``"1.5GB"``, ``"2TB"``, ``"800000000"`` -> bytes (decimal units, binary with ``i``; None
    stays None). A size that is not a finite positive number below 2**63 bytes is refused."""
    if text is None or isinstance(text, int):
        return text
    t = str(text).strip().upper().replace(" ", "")
    for unit, scale in (("TIB", 2**40), ("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10), ("TB", 10**12),
                        ("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("T", 10**12), ("G", 10**9), ("M", 10**6),
                        ("K", 10**3), ("B", 1)):
        if t.endswith(unit):
            t, mult = t[: -len(unit)], scale
            break
    else:
        mult = 1
    try:
        value = float(t) * mult
    except ValueError:
        raise ClefError(f"not a size: {text!r}", hint="write it like 512MB, 1.5GB or 2TB") from None
    if not math.isfinite(value) or value >= 2**63:
        raise ClefError(f"not a size: {text!r} (not a finite number of bytes below 8 EiB)",
                        hint="write it like 512MB, 1.5GB or 2TB")
    if value < 1:
        raise ClefError(f"a memory budget must be positive, got {text!r}")
    return int(value)


def make_index(kind: str, d: int, nlist: int, params: IndexParams):
    """An empty FAISS index of ``kind`` (IVF kinds with a flat inner-product coarse quantizer)."""
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        return faiss.IndexFlatIP(d)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(params.hnsw_m), ip)
        index.hnsw.efConstruction = int(params.ef_construction)
        return index
    quantizer = faiss.IndexFlatIP(d)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, d, nlist, ip)
    elif kind in ("ivf-sq8", "ivf-ondisk"):
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, ip, True)
    elif kind == "ivf-pq":
        m = max(1, d // 4)
        while d % m:
            m -= 1
        base = faiss.IndexIVFPQFastScan(quantizer, d, nlist, m, 4, ip)
        refine = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, ip)
        index = faiss.IndexRefine(base, refine)     # FAISS's wrappers keep base, refine and quantizer alive
        index.k_factor = float(params.k_factor)
    else:
        raise ClefError(f"unknown index kind {kind!r}")
    return index


def ivf_of(index):
    """The IVF part of an index (None for flat and HNSW)."""
    import faiss

    return faiss.try_extract_index_ivf(index)
