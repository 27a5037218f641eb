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


# ----------------------------------------------------------------------------------------------
# a cut or damaged store is refused in one line, never waited on (item 2)


def _cli(args, timeout=90):
    """``clefctl ARGS`` in a process of its own (a hang must fail the test, not stall the suite)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "clefctl.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_a_cut_store_is_refused_in_one_line_before_hdf5_reads_it(tmp_path):
    path = small_store(tmp_path / "s.h5", rows=3000, dim=32)
    cut = tmp_path / "t.h5"
    cut.write_bytes(path.read_bytes()[:100_000])
    r = _cli(["query", "smile", "--store", cut, "--weights", "random", "--arch", "clef-tiny"])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert str(cut) in lines[0] and "cut short" in lines[0] and "embed again" in lines[0]
    with pytest.raises(ClefError, match="cut short"):
        S.EmbeddingStore.open(cut)
    with pytest.raises(ClefError, match="cut short"):
        S.EmbeddingStore.open(cut, mode="a")


_DAMAGE = r"""
import sys
from clefctl import store as S
from clefctl.errors import ClefError
path, out = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
found = []
for off in range(512, 20_000, 256):            # damage 64 bytes at a time, from the start of the file
    bad = f"{out}/bad{off}.h5"
    open(bad, "wb").write(data[:off] + b"\xff" * 64 + data[off + 64:])
    try:
        with S.EmbeddingStore.open(bad) as st:
            st.metadata(range(0, st.count, 97)), st.embeddings()
    except ClefError as exc:
        assert bad in str(exc) and "damaged" in str(exc), exc
        found.append(bad)
    except (OSError, RuntimeError):            # a damaged chunk index noticed in a later read: no hang either
        found.append(bad)
    if len(found) >= 3:
        break
print(found[-1] if len(found) >= 3 else "")
"""


def test_damaged_store_metadata_fails_fast_in_one_line(tmp_path):
    """A damaged metadata block: HDF5's SWMR reader retried it for hours (doubling its sleep)."""
    import subprocess
    import sys

    path = small_store(tmp_path / "s.h5", rows=3000, dim=32)
    r = subprocess.run([sys.executable, "-c", _DAMAGE, str(path), str(tmp_path)], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    bad = r.stdout.strip()
    assert r.returncode == 0 and bad, r.stderr[-2000:]
    r = _cli(["query", "smile", "--store", bad, "--weights", "random", "--arch", "clef-tiny"], timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]


# ----------------------------------------------------------------------------------------------
# the index's files are checked before FAISS opens them (item 1)

TINY = "clef-tiny@random:0"     # the fingerprint of `--weights random --arch clef-tiny`


def test_a_cut_or_changed_index_file_is_stale_never_a_crash(tmp_path):
    from clefctl.store import index as I

    path = small_store(tmp_path / "s.h5", rows=3000, dim=128, fp=TINY)
    I.build_index(path, "ivf-ondisk", I.IndexParams(nlist=16, nprobe=16))
    lists = I.ondisk_path(path)
    with S.EmbeddingStore.open(path) as st:
        assert I.index_status(st) == (True, "fresh")
    lists.write_bytes(lists.read_bytes()[:1000])                  # truncate -s 1000 s.h5.faiss.ivfdata
    with S.EmbeddingStore.open(path) as st:
        fresh, reason = I.index_status(st)
    assert not fresh and lists.name in reason and "cut" in reason
    r = _cli(["index", "status", "--store", path])
    assert r.returncode == 0 and "stale" in r.stdout and lists.name in r.stdout, r.stdout + r.stderr
    r = _cli(["query", "a happy face", "--store", path, "--weights", "random", "--arch", "clef-tiny", "--json"])
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])       # the old code: 135, a bus error
    assert "damaged" in r.stderr and lists.name in r.stderr and "clefctl index build" in r.stderr
    assert len(__import__("json").loads(r.stdout)["hits"]) == 10     # searched exactly instead

    I.build_index(path, "flat")                                      # same size, other bytes: the checksum
    faiss_file = I.index_paths(path)[0]
    data = bytearray(faiss_file.read_bytes())
    data[-100] ^= 0xFF
    faiss_file.write_bytes(bytes(data))
    with S.EmbeddingStore.open(path) as st:
        fresh, reason = I.index_status(st)
        assert not fresh and "checksum" in reason and faiss_file.name in reason
        rebuilt = I.load_index(st)                                   # serve and embed: rebuilt, not trusted
    assert rebuilt.kind == "flat"
    with S.EmbeddingStore.open(path) as st:
        assert I.index_status(st) == (True, "fresh")


# ----------------------------------------------------------------------------------------------
# a store names the model that made it (item 10) and a missing store is said to be missing (item 13)


def _run(args, capsys):
    from clefctl.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_a_store_records_its_model_and_opens_from_any_folder(tmp_path, monkeypatch, capsys, image_folder):
    import json

    import torch

    from clefctl.model import create
    from clefctl.workspace import Workspace

    weights = tmp_path / "w" / "W.pt"
    weights.parent.mkdir()
    torch.save(create("clef-tiny", seed=5).clip.state_dict(), weights)      # open_clip weights, no run around
    imgs = image_folder(3)
    out = tmp_path / "x" / "s.h5"
    code, _, err = _run(["embed", "--dataset", "folder", "--dataset-root", imgs, "--weights", weights, "--arch",
                         "clef-tiny", "--out", out, "--index", "none", "--workers", "0", "--json"], capsys)
    assert code == 0, err
    with S.EmbeddingStore.open(out) as st:
        rec, fp = st.model_record, st.fingerprint
    assert rec["weights"] == str(weights.resolve()) and rec["arch"] == "clef-tiny" and fp.endswith(rec["sha256"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, stdout, err = _run(["query", "a happy face", "--store", out, "-k", "2", "--json"], capsys)
    assert code == 0, err                                   # the old code: "the store's model is unknown"
    assert len(json.loads(stdout)["hits"]) == 2
    assert Workspace().store_model(out, {}).fingerprint == fp             # what serve and rescore load
    code, _, err = _run(["query", "a happy face", "--store", "missing.h5"], capsys)
    assert code == 2 and "missing.h5: embedding store not found" in err and "model" not in err
    weights.rename(tmp_path / "w" / "moved.pt")
    code, _, err = _run(["query", "another face", "--store", out], capsys)
    assert code == 2 and str(weights.resolve()) in err and "--weights" in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------------------------
# nothing readable is not "complete" (item 5); SIGTERM stops embed as Ctrl-C does (item 13)


def test_embed_of_nothing_readable_fails_and_leaves_no_complete_store(tmp_path, capsys):
    (tmp_path / "zero.mp4").write_bytes(b"")
    out = tmp_path / "z.h5"
    code, _, err = _run(["embed", tmp_path / "zero.mp4", "--weights", "random", "--arch", "clef-tiny",
                         "--out", out, "--index", "none"], capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "none of the 1 inputs could be read" in lines[0], err
    assert str(tmp_path / "zero.mp4") in lines[0] and not out.exists()


_SLOW_EMBED = r"""
import sys, time
from clefctl import store as S
real = S.EmbeddingStore.append_columns
def slow(self, *a, **k):
    out = real(self, *a, **k)
    print(f"committed {self.count}", file=sys.stderr, flush=True)
    time.sleep(0.3)
    return out
S.EmbeddingStore.append_columns = slow
from clefctl.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stopped_embed_says_what_is_kept_and_how_to_continue(tmp_path, image_folder, sig):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    imgs = image_folder(40)
    out = tmp_path / "s.h5"
    args = ["embed", "--dataset", "folder", "--dataset-root", str(imgs), "--weights", "random", "--arch",
            "clef-tiny", "--out", str(out), "--index", "none", "--workers", "0", "--chunk-size", "8",
            "--batch-size", "8"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_EMBED, *args], stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if line.startswith("committed 16"):
            break
    proc.send_signal(getattr(signal, sig))
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    last = rest.strip().splitlines()[-1]
    assert proc.returncode == 130, (proc.returncode, rest[-2000:])     # the old code: 143 and nothing said
    assert sig in last and "rows committed" in last and str(out) in last and "run the same command again" in last
    with S.EmbeddingStore.open(out) as st:
        assert 16 <= st.count < 80 and st.count % 8 == 0 and not st.complete
    from clefctl.cli import main

    with pytest.raises(SystemExit) as exc:
        main([*args, "--json"])
    assert exc.value.code in (0, None)
    with S.EmbeddingStore.open(out) as st:
        assert st.count == 80 and st.complete


# ----------------------------------------------------------------------------------------------
# a full disk is one line naming the file, wherever it strikes (item 6)

_FAISS_FULL = ("Error in void faiss::write_index(const Index*, IOWriter*, int) at index_write.cpp:499: Error: "
               "'ret == (size * 4)' failed: write error in x.faiss: 262099 != 512000 (No space left on device)")


def _faiss_full(real):
    def write_index(index, where, *a):
        if isinstance(where, str):                   # a file (serialize_index writes to memory)
            raise RuntimeError(_FAISS_FULL)
        return real(index, where, *a)
    return write_index


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def test_full_disk_while_embed_saves_the_index_keeps_the_store_and_its_run(tmp_path, capsys, monkeypatch,
                                                                           image_folder):
    import faiss

    monkeypatch.setattr(faiss, "write_index", _faiss_full(faiss.write_index))
    ws = tmp_path / "ws"
    code, _, err = _run(["embed", "--dataset", "folder", "--dataset-root", image_folder(3), "--weights", "random",
                         "--arch", "clef-tiny", "--workspace", ws, "--index", "flat", "--workers", "0"], capsys)
    line = _one_error_line(err)
    assert code == 2 and "store.h5.faiss: the disk is full" in line and "clefctl index build" in line
    run = ws / "embed" / (ws / "embed" / "LATEST").read_text().strip()
    with S.EmbeddingStore.open(run / "store.h5") as st:
        assert st.complete and st.count == 6
    assert (run / "config.yaml").is_file() and not list(run.glob(".*.tmp"))


def test_full_disk_in_index_build_is_one_line_and_leaves_no_shards(tmp_path, capsys, monkeypatch):
    import faiss

    from clefctl.store.index import build as B

    path = small_store(tmp_path / "s.h5", rows=3000, dim=128, fp=TINY)
    args = ["index", "build", "--store", path, "--kind", "ivf-ondisk", "--nlist", "16", "--nprobe", "4"]
    real = faiss.write_index
    monkeypatch.setattr(faiss, "write_index", _faiss_full(real))     # the shards' writes
    code, _, err = _run(args, capsys)
    assert code == 2 and "s.h5.faiss.ivfdata: the disk is full" in _one_error_line(err)
    assert not list(tmp_path.glob(".faiss-shards-*"))
    monkeypatch.setattr(faiss, "write_index", real)
    monkeypatch.setattr(B, "free_bytes", lambda folder: 1000)        # the merge writes through a memory map
    code, _, err = _run(args, capsys)
    line = _one_error_line(err)
    assert code == 2 and "s.h5.faiss.ivfdata: the disk is full" in line and "is free" in line
    assert not list(tmp_path.glob(".faiss-shards-*")) and not B.ondisk_path(path).exists()


@pytest.fixture
def checkpoint(tmp_path):
    """A fine-tuned-looking clefctl checkpoint of clef-tiny (what export takes)."""
    import torch

    from clefctl.model import create, save_checkpoint

    path = tmp_path / "ck" / "model.pt"
    path.parent.mkdir()
    save_checkpoint(path, create("clef-tiny"), {"stage": "finetune", "task": "fer", "classes": ["happy", "sad"]},
                    extras={"name_embeddings": torch.nn.functional.normalize(torch.randn(2, 128), dim=-1)})
    return path


def test_full_disk_in_export_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, checkpoint):
    import safetensors.torch

    class SafetensorError(Exception):
        pass

    def full(*_a, **_k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "exp"
    code, _, err = _run(["export", checkpoint, "--out", out], capsys)
    assert code == 2 and f"{out}: the disk is full" in _one_error_line(err)
    assert not out.exists() and not list(tmp_path.glob(".exp.*"))


def _tmpfs(folder, size: str) -> bool:
    import shutil
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    if os.environ.get("CLEF_TEST_NO_MOUNT") or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def test_full_disk_in_finetune_marks_the_run_failed_and_says_resume(tmp_path, capsys, monkeypatch):
    """On a real 20 MB tmpfs where the machine allows a mount (the checkpoint does not fit), else with the
    checkpoint's write failing as torch's does on a full disk (no errno) and no space left."""
    import json
    import subprocess

    import torch

    disk = tmp_path / "small"
    mounted = _tmpfs(disk, "20m")
    try:
        if not mounted:
            from clefctl import paths

            monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(
                RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")))
            monkeypatch.setattr(paths, "free_bytes", lambda folder: 0)
        ws = disk / "ws"
        args = ["finetune", "--dataset", "synthetic-fer", "--weights", "random", "--arch", "clef-tiny",
                "--max-steps", "2", "--workspace", ws]
        code, _, err = _run(args, capsys)
        line = _one_error_line(err)
        run = next((ws / "finetune").iterdir())
        assert code == 2 and "the disk is full" in line and "last.pt" in line, line
        assert f"--resume {run.name}" in line and "run the same command again" not in line
        status = json.loads((run / "status.json").read_text())
        assert status["state"] == "failed"                                   # the old code: "running"
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)
        else:
            monkeypatch.undo()
        code, _, err = _run(["finetune", "--resume", run.name, "--workspace", ws], capsys)
        assert code == 0, err
        assert json.loads((run / "status.json").read_text())["state"] == "finished"
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# ----------------------------------------------------------------------------------------------
# embed PATH... commits at multiples of --chunk-size, also inside a frame (item 13)


def test_media_chunks_are_exact_and_a_resume_inside_a_frame_matches(tmp_path, monkeypatch):
    from PIL import Image

    import clefctl.data.faces as pipeline
    from clefctl.data.faces.scenes import group_photo, write_scene_video
    from clefctl.model import create
    from clefctl.embed.media import embed_media_into_store

    write_scene_video(tmp_path / "talk.avi", frames=20, width=480, height=270, face=96, people=3, seed=4)
    Image.fromarray(group_photo(3, width=480, height=240, face=110, seed=5)[0]).save(tmp_path / "group.png")
    inputs, model = [tmp_path / "group.png", tmp_path / "talk.avi"], create("clef-tiny")
    commits, real_append = [], S.EmbeddingStore.append_columns

    def recording(self, cols, skipped_ids=()):
        out = real_append(self, cols, skipped_ids)
        commits.append(self.count)
        return out

    monkeypatch.setattr(S.EmbeddingStore, "append_columns", recording)
    whole, _ = embed_media_into_store(model, inputs, tmp_path / "whole.h5", chunk_size=8, progress=False)
    assert whole.rows > 16 and all(c % 8 == 0 for c in commits[:-1]), commits   # the old code: 9, 18, 27, ...
    real = pipeline.iter_faces

    def dies_after_6_frames(*args, **kwargs):
        for i, ff in enumerate(real(*args, **kwargs)):
            if i == 6:                        # 3 + 5 x 3 = 18 faces seen: 16 committed, inside a frame
                raise KeyboardInterrupt
            yield ff

    monkeypatch.setattr(pipeline, "iter_faces", dies_after_6_frames)
    with pytest.raises(KeyboardInterrupt):
        embed_media_into_store(model, inputs, tmp_path / "part.h5", chunk_size=8, progress=False)
    with S.EmbeddingStore.open(tmp_path / "part.h5") as st:
        assert st.count == 16
    monkeypatch.setattr(pipeline, "iter_faces", real)
    again, _ = embed_media_into_store(model, inputs, tmp_path / "part.h5", chunk_size=8, progress=False)
    assert again.resumed_from == 16 and again.rows == whole.rows
    with S.EmbeddingStore.open(tmp_path / "whole.h5") as a, S.EmbeddingStore.open(tmp_path / "part.h5") as b:
        assert a.ids == b.ids and np.allclose(a.embeddings(), b.embeddings(), atol=2e-3)


# ----------------------------------------------------------------------------------------------
# the library's log warnings print as the one warning line (item 13); a file where a folder must be


def test_log_warnings_print_as_the_one_warning_line(tmp_path, image_folder):
    imgs = image_folder(2)
    (imgs / "happy" / "bad.png").write_bytes(b"not a png")
    r = _cli(["embed", "--dataset", "folder", "--dataset-root", imgs, "--weights", "random", "--arch", "clef-tiny",
              "--out", tmp_path / "s.h5", "--index", "none", "--workers", "0", "--json"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "warning: 1 unreadable images skipped" in r.stderr and "WARNING:" not in r.stderr, r.stderr


def test_out_below_a_file_says_what_is_in_the_way(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = _run(["embed", "--dataset", "synthetic-fer", "--weights", "random", "--arch", "clef-tiny",
                         "--out", tmp_path / "file" / "x.h5"], capsys)
    line = _one_error_line(err)
    assert code == 2 and str(tmp_path / "file") in line and "not a folder" in line, line   # old: "File exists: file"
