"""Reliability of the embedding store (issue #11): a full disk never leaves rows counted that are
not on disk and a rerun after freeing space completes the store; stores read from another folder
find their images; chunks commit at multiples of the chunk size asked for; re-scoring refuses a
prompt set that does not fit the store."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clefctl import embed as E
from clefctl import store as S
from clefctl.cli import main
from clefctl.data.records import Sample
from clefctl.errors import ClefError
from clefctl.model import create
from clefctl.prompts import load_prompts

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return create("clef-tiny")


def write_folder_set(root: Path, n: int, size: int = 16, seed: int = 0) -> Path:
    """``n`` small random PNGs in the ``folder`` layout (two class sub-folders)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i:05d}.png")
    return root


def run_cli(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


# ----------------------------------------------------------------------------------------------
# A full disk (defect 1)
# ----------------------------------------------------------------------------------------------

N_FULL = 2302          # the image count: 2048 rows fit in 2 MB, the last 254 do not
FULL_ARGS = ["--weights", "random", "--arch", "clef-tiny", "--chunk-size", "256", "--dtype",
             "float32", "--index", "none", "--workers", "0", "--json"]

# The fallback when this machine does not allow mounting a small tmpfs: the store's lowest-level
# durability call, os.fsync, fails with ENOSPC after FAIL_AFTER calls (two per commit: rows, then
# the committed count), in the embedding process itself.
_INJECTED = r"""
import errno, os, sys
real, calls = os.fsync, [0]
def fsync(fd):
    calls[0] += 1
    if calls[0] > int(os.environ["CLEF_TEST_FAIL_AFTER"]):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(fd)
os.fsync = fsync
from clefctl.cli import main
main(sys.argv[1:])
"""


class SmallDisk:
    """A folder where the store hits a full disk: a 2 MB tmpfs (``kind == "tmpfs"``), or, where
    mounting is not allowed, an ordinary folder plus an ENOSPC injected into os.fsync after the
    8th commit (``kind == "injected"``). :meth:`free` makes room (remount larger / no injection)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.kind = "injected"
        self.full = True
        folder.mkdir(parents=True, exist_ok=True)
        if os.environ.get("CLEF_TEST_NO_MOUNT") or shutil.which("mount") is None:
            return
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                           capture_output=True)
        if r.returncode == 0:
            self.kind = "tmpfs"

    def free(self) -> None:
        if self.kind == "tmpfs":
            subprocess.run(["mount", "-o", "remount,size=16m", str(self.folder)], check=True)
        self.full = False

    def command(self, args: list[str]) -> list[str]:
        if self.kind == "injected" and self.full:
            return [sys.executable, "-c", _INJECTED, *args]
        return [sys.executable, "-m", "clefctl.cli", *args]

    def close(self) -> None:
        if self.kind == "tmpfs":
            if subprocess.run(["umount", str(self.folder)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(self.folder)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    disk = SmallDisk(tmp_path / "small")
    try:
        yield disk
    finally:
        disk.close()


def _embed_process(cmd: list[str]) -> subprocess.CompletedProcess:
    # A real process: on the old code the store crashed the interpreter (segfault) at exit.
    env = {k: v for k, v in os.environ.items() if k != "CLEF_STORE_NO_FSYNC"}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CLEF_TEST_FAIL_AFTER="16")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def test_full_disk_fails_in_one_line_keeps_the_committed_prefix_and_a_rerun_completes(tmp_path, small_disk):
    images = write_folder_set(tmp_path / "imgs", N_FULL)
    data = ["embed", "--dataset", "folder", "--dataset-root", str(images),
            "--workspace", str(tmp_path / "ws"), *FULL_ARGS]
    ref_path = tmp_path / "reference.h5"
    ref = _embed_process([sys.executable, "-m", "clefctl.cli", *data, "--out", str(ref_path)])
    assert ref.returncode == 0, ref.stderr[-2000:]

    path = small_disk.folder / "s.h5"
    failed = _embed_process(small_disk.command([*data, "--out", str(path)]))
    lines = [ln for ln in failed.stderr.splitlines() if ln.strip()]
    assert failed.returncode == 2, (small_disk.kind, failed.returncode, failed.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), failed.stderr[-3000:]
    assert str(path) in lines[0] and "disk is full" in lines[0]
    assert "run the same command again" in lines[0]

    with S.EmbeddingStore.open(ref_path) as r:
        ref_ids, ref_emb = r.ids, r.embeddings()
    with S.EmbeddingStore.open(path) as st:       # readable; a reader repairs the writer's flags
        committed = st.count
        assert not st.complete
        assert 0 < committed < N_FULL and committed % 256 == 0
        e = st.embeddings()
        assert np.all(np.abs(np.linalg.norm(e, axis=1) - 1) < 1e-3)   # no zero rows
        assert st.ids == ref_ids[:committed]
        np.testing.assert_allclose(e, ref_emb[:committed], atol=1e-6)

    small_disk.free()
    again = _embed_process(small_disk.command([*data, "--out", str(path)]))
    assert again.returncode == 0, again.stderr[-2000:]
    report = json.loads(again.stdout)
    assert report["resumed_from"] == committed and report["complete"]
    with S.EmbeddingStore.open(path) as st, S.EmbeddingStore.open(ref_path) as r:
        assert st.complete and st.ids == r.ids and st.skipped_ids == r.skipped_ids
        np.testing.assert_allclose(st.embeddings(), r.embeddings(), atol=1e-6)
        assert st.metadata().equals(r.metadata())


def test_a_failed_fsync_is_never_counted(tmp_path, monkeypatch):
    """The lowest level the store calls (os.fsync) fails: the chunk is not committed, the store
    is closed for writing, and reopening it continues from the previous commit."""
    monkeypatch.delenv("CLEF_STORE_NO_FSYNC", raising=False)
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((30, 8)).astype(np.float32)
    samples = [Sample(id=f"r{i}", subject="s", path=f"/x/{i}.png", label=i % 3) for i in range(30)]
    path = tmp_path / "f.h5"
    st = S.EmbeddingStore.create(path, "m@x", 8, "set", task="fer", classes=["a", "b", "c"])
    st.append(rows[:10], samples[:10])
    real = os.fsync

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(ClefError, match="disk is full") as err:
        st.append(rows[10:20], samples[10:20])
    assert str(path) in str(err.value) and "10 rows committed" in str(err.value)
    assert st.count == 10 and st.closed
    with pytest.raises(ClefError, match="closed for writing"):
        st.mark_complete()
    monkeypatch.setattr(os, "fsync", real)
    with S.EmbeddingStore.open(path) as r:
        assert r.count == 10 and not r.complete and r.ids == [s.id for s in samples[:10]]
    with S.EmbeddingStore.open(path, mode="a") as w:
        w.append(rows[10:30], samples[10:30])
        w.mark_complete()
    with S.EmbeddingStore.open(path) as r:
        assert r.count == 30 and r.complete
        np.testing.assert_allclose(r.embeddings(), rows / np.linalg.norm(rows, axis=1, keepdims=True),
                                   atol=1e-3)


# ----------------------------------------------------------------------------------------------
# Source paths (defect 6)
# ----------------------------------------------------------------------------------------------


def test_store_written_in_one_folder_finds_its_images_from_another(tmp_path, monkeypatch, capsys, model):
    x, y = tmp_path / "x", tmp_path / "y"
    write_folder_set(x / "imgs", 8, size=40)
    y.mkdir()
    monkeypatch.chdir(x)                        # embed with relative folders, as users do
    code, out, err = run_cli(["embed", "--dataset", "folder", "--dataset-root", "imgs", "--workspace",
                              "ws", "--weights", "random", "--arch", "clef-tiny", "--workers", "0",
                              "--batch-size", "4", "--chunk-size", "4", "--json"], capsys)
    assert code == 0, err
    store = x / json.loads(out)["path"]
    monkeypatch.chdir(y)
    with S.EmbeddingStore.open(store) as st:
        assert all(os.path.isabs(p) and os.path.isfile(p) for p in st.paths)
        first = st.ids[0]
    code, out, err = run_cli(["query", "a face", "-k", "4", "--store", str(store), "--json",
                              "--sheet", "sheet.png"], capsys)
    assert code == 0 and "could not be read" not in err, err
    assert all(os.path.isfile(h["path"]) for h in json.loads(out)["hits"])
    with Image.open(y / "sheet.png") as im:
        tiles = np.asarray(im.convert("RGB"))[18:18 + 128, :4 * 128].reshape(128, 4, 128, 3)
    grey = np.all(tiles == 160, axis=-1).mean(axis=(0, 2))           # share of grey fill per tile
    assert np.all(grey < 0.5), grey                                    # real thumbnails
    from clefctl.explain import load_face

    face = load_face(first, model.image_size, crop=False, store=str(store))
    assert os.path.isfile(face.source) and face.image.size == (40, 40)


def _legacy_store(path: Path, paths: list[str], dim: int) -> None:
    """A store as the old code wrote it: paths relative to the folder embed ran in."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((len(paths), dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    k = len(paths)
    cols = S.Columns(emb, {"id": [f"i{j}" for j in range(k)], "path": list(paths),
                           "subject": [""] * k, "activity": [""] * k, "split": [""] * k},
                     np.full(k, -1, np.int64), np.full(k, -1, np.int32), np.full((k, 4), -1, np.int32))
    with S.EmbeddingStore.create(path, "m@x", dim, "old") as st:
        st.append_columns(cols)
        st.mark_complete()


def test_relative_paths_of_old_stores_resolve_and_unreadable_tiles_are_reported(tmp_path, monkeypatch,
                                                                                 caplog):
    from clefctl.search import contact_sheet_of_hits, search_vectors

    x, y = tmp_path / "x", tmp_path / "y"
    write_folder_set(x / "imgs", 4, size=24)
    y.mkdir()
    rel = sorted(str(p.relative_to(x)) for p in (x / "imgs").rglob("*.png"))
    path = x / "ws" / "embed" / "old" / "store.h5"     # the default workspace lies below the cwd
    _legacy_store(path, rel, 8)
    monkeypatch.chdir(y)
    with S.EmbeddingStore.open(path) as st:
        assert st.paths == [str(x / p) for p in rel]
        assert st.metadata()["path"].tolist() == [str(x / p) for p in rel]
        assert st.column("path", [2]) == [str(x / rel[2])]
        assert st.resolve_path("imgs/missing.png") == "imgs/missing.png"   # unchanged when absent
        hits = search_vectors(st, st.embeddings([0]), k=4)[0]
    contact_sheet_of_hits(hits, y / "ok.png")
    (x / rel[0]).unlink()
    (x / rel[3]).unlink()
    with caplog.at_level("WARNING", logger="clefctl.search"):
        contact_sheet_of_hits(hits, y / "some.png")
    assert "2 of 4 hit images could not be read" in caplog.text
    for p in rel:
        (x / p).unlink(missing_ok=True)
    with pytest.raises(ClefError, match="none of the 4 hit images could be read"):
        contact_sheet_of_hits(hits, y / "none.png")
    assert not (y / "none.png").exists()


# ----------------------------------------------------------------------------------------------
# Chunk size (defect 11, part)
# ----------------------------------------------------------------------------------------------


def test_chunks_commit_at_multiples_of_the_chunk_size(tmp_path, model, monkeypatch):
    rng = np.random.default_rng(0)
    samples = [Sample(id=f"p{i:04d}", subject="s", label=i % 2,
                      pixels=rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for i in range(250)]
    commits = []
    real = S.EmbeddingStore.append_columns

    def recording(self, cols, skipped_ids=()):
        out = real(self, cols, skipped_ids)
        commits.append(self.consumed)
        return out

    monkeypatch.setattr(S.EmbeddingStore, "append_columns", recording)
    path = tmp_path / "c.h5"
    kw = dict(batch_size=64, progress=False, image_set="px", task="fer", classes=["a", "b"],
              num_workers=0)
    E.embed_into_store(model, samples[:150], path, chunk_size=150, **kw)
    assert commits == [150]
    commits.clear()
    rep = E.embed_into_store(model, samples, path, chunk_size=100, **kw)    # resumes at 150
    assert commits == [200, 250] and rep.resumed_from == 150 and rep.complete
    commits.clear()
    E.embed_into_store(model, samples, tmp_path / "d.h5", chunk_size=100, **kw)
    assert commits == [100, 200, 250]
    with S.EmbeddingStore.open(path) as a, S.EmbeddingStore.open(tmp_path / "d.h5") as b:
        assert a.ids == b.ids
        np.testing.assert_allclose(a.embeddings(), b.embeddings(), atol=2e-3)


# ----------------------------------------------------------------------------------------------
# Re-scoring with a prompt set that does not fit (defect 7, part)
# ----------------------------------------------------------------------------------------------


def test_rescore_refuses_a_prompt_set_of_another_task(tmp_path, model, capsys):
    from clefctl.search import rescore

    classes = load_prompts("synthetic-fer").class_ids
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((12, model.embed_dim)).astype(np.float32)
    path = tmp_path / "fer.h5"
    with S.EmbeddingStore.create(path, model.fingerprint, model.embed_dim, "toy", task="fer",
                                 classes=classes) as st:
        st.append(emb, [Sample(id=f"f{i}", subject="s", label=i % 7) for i in range(12)])
        st.mark_complete()
    with pytest.raises(ClefError) as err:
        rescore(path, model, load_prompts("bp4d"), "names")
    text = str(err.value)
    assert "task au" in text and "fer labels" in text and "synthetic-fer" in err.value.hint
    other = load_prompts("synthetic-fer").to_dict()
    for c in other["classes"]:
        c["id"] = "x-" + c["id"]
    with pytest.raises(ClefError, match="none of them is among the store's 7 classes"):
        from clefctl.prompts import PromptSet

        rescore(path, model, PromptSet.from_dict(other), "names")
    assert rescore(path, model, load_prompts("rafdb"), "names").scores.shape == (12, 7)

    # through the command line: one line, exit code 2
    write_folder_set(tmp_path / "imgs", 6)
    ws = str(tmp_path / "ws")
    code, _, err = run_cli(["embed", "--dataset", "folder", "--dataset-root", str(tmp_path / "imgs"),
                            "--workspace", ws, "--weights", "random", "--arch", "clef-tiny",
                            "--workers", "0", "--index", "none", "--json"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["rescore", "--prompts", "bp4d", "--workspace", ws], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "task au" in lines[0] and "c0, c1" in lines[0]
