"""Hostile files and disks around the embedding store (issue 22): files that reach native code are
checked first (HDF5 stores, FAISS side files), nothing is reported done when nothing could be read, a
full disk is one line naming the file, stores name their model, and what the store writes follows the
umask like any other file."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from clefctl import store as S
from clefctl.data.records import Sample
from clefctl.errors import ClefError


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def small_store(path, rows: int = 40, dim: int = 8, fp: str = "m@test", **attrs):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((rows, dim)).astype(np.float32)
    with S.EmbeddingStore.create(path, fp, dim, "set", task="fer", classes=["a", "b"], **attrs) as st:
        st.append(emb, [Sample(id=f"r{i:03d}", subject="s", label=i % 2) for i in range(rows)])
        st.mark_complete()
    return path


# ----------------------------------------------------------------------------------------------
# files follow the umask (item 13)


def test_stores_and_atomic_files_follow_the_umask(tmp_path):
    from clefctl.paths import write_text_atomic

    old = os.umask(0o022)
    try:
        small_store(tmp_path / "s.h5")
        write_text_atomic(tmp_path / "a.csv", "x\n")
        os.umask(0o077)
        write_text_atomic(tmp_path / "b.csv", "x\n")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "s.h5") == 0o644
    assert _mode(tmp_path / "a.csv") == 0o644
    assert _mode(tmp_path / "b.csv") == 0o600
