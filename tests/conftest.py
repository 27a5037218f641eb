"""Shared fixtures: tiny synthetic data sets written in the real BP4D and RAF-DB layouts."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """6 subjects (F001-F003, M001-M003: one in each canonical BP4D part) x 8 tasks x 3 frames,
    and 7 expressions x 24 images of 12 identities, all at 64 px."""
    from clefctl.data import synthetic

    root = tmp_path_factory.mktemp("synth")
    au = synthetic.write_au(root / "au", subjects=6, tasks=8, frames_per_task=3, size=64, seed=0, workers=1,
                            progress=False)
    fer = synthetic.write_fer(root / "fer", subjects=12, images_per_class=24, size=64, seed=0, workers=1,
                              progress=False)
    return {"au": str(au), "fer": str(fer)}


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a 2-core machine shared with other jobs, two OpenMP threads spin-wait
    badly and a single thread is many times faster. Modules opt in with usefixtures."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
