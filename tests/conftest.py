"""Shared fixtures: tiny synthetic data sets written in the real BP4D and RAF-DB layouts."""

from __future__ import annotations

import os

import pytest
import torch

# No test waits on a network that is not there: the face detector's `auto` never tries a download,
# and it finds no YuNet file unless a test puts one in its own weights folder (the `yunet` fixture).
os.environ["CLEF_OFFLINE"] = "1"
os.environ["CLEF_WEIGHTS_DIR"] = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"clefctl-test-weights-{os.getpid()}")


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


@pytest.fixture
def image_folder(tmp_path):
    """A maker of class folders of random 36 px PNGs (the ``folder`` data set): ``image_folder(n)`` writes
    tmp_path/imgs/{happy,sad}/0..n-1.png (seed 3) and returns tmp_path/imgs."""
    def make(per_class: int):
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(3)
        for cls in ("happy", "sad"):
            (tmp_path / "imgs" / cls).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(
                    tmp_path / "imgs" / cls / f"{i}.png")
        return tmp_path / "imgs"
    return make
