"""Hostile photos and videos never reach native code unbounded (issue 22, items 1 and 5): strips and
huge images are refused from their header with one warning and the job goes on; a job where nothing
could be read fails in one line and writes nothing; a video cut short is reported.

The commands run in a subprocess: before the bounds, OpenCV segfaulted on a 20000x3 PNG (rc 139),
which would take the test runner down with it."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

ZERO_SHOT = ["--weights", "random", "--arch", "clef-tiny", "--prompts", "rafdb"]


def clefctl(*args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", CLEF_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "clefctl", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    from skimage import data

    d = tmp_path_factory.mktemp("hostile")
    Image.fromarray(data.astronaut()).save(d / "single.jpg")
    Image.fromarray(np.zeros((3, 20000, 3), np.uint8)).save(d / "wide.png")
    Image.fromarray(np.zeros((2, 20000, 3), np.uint8)).save(d / "wide2.png")
    Image.fromarray(np.full((20, 900, 3), 128, np.uint8)).save(d / "strip.png")
    w = cv2.VideoWriter(str(d / "full.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (256, 256))
    face = cv2.cvtColor(cv2.resize(data.astronaut(), (256, 256)), cv2.COLOR_RGB2BGR)
    for _ in range(60):
        w.write(face)
    w.release()
    blob = (d / "full.avi").read_bytes()
    (d / "cut.avi").write_bytes(blob[:len(blob) // 2])
    (d / "zero.mp4").write_bytes(b"")
    return d


@pytest.mark.parametrize("detector", ["haar", "auto"])
def test_predict_skips_strips_and_keeps_the_photo(media, tmp_path, detector):
    res = clefctl("predict", str(media / "single.jpg"), str(media / "wide.png"), str(media / "wide2.png"),
                  str(media / "strip.png"), "--detector", detector, *ZERO_SHOT, "--out", str(tmp_path / "p.csv"))
    assert res.returncode == 0, res.stderr[-2000:]
    import pandas as pd

    df = pd.read_csv(tmp_path / "p.csv")
    assert set(df.source) == {str(media / "single.jpg")} and (df.success == 1).any()
    for name in ("wide.png", "wide2.png", "strip.png"):
        assert f"{media / name}: skipped: it is" in res.stderr


def test_embed_and_data_prepare_skip_strips(media, tmp_path):
    res = clefctl("embed", str(media / "single.jpg"), str(media / "wide.png"), "--weights", "random", "--arch",
                  "clef-tiny", "--out", str(tmp_path / "s.h5"), "--index", "none", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    res = clefctl("data", "prepare", str(media / "single.jpg"), str(media / "wide.png"), "--out", str(tmp_path / "c"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "wide.png" in res.stdout and (tmp_path / "c" / "faces.csv").is_file()


def test_predict_with_nothing_readable_fails_and_writes_nothing(media, tmp_path):
    res = clefctl("predict", str(media / "zero.mp4"), *ZERO_SHOT, "--out", str(tmp_path / "z.csv"))
    assert res.returncode == 2
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "none of the 1 input could be read" in errors[0] and "zero.mp4" in errors[0]
    assert not (tmp_path / "z.csv").exists()


def test_a_video_cut_short_is_reported(media):
    from clefctl.data.faces import iter_video_frames

    with pytest.warns(UserWarning, match="ended after .* of the 60 frames its header declares"):
        frames = list(iter_video_frames(media / "cut.avi"))
    assert 0 < len(frames) < 60
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")       # a whole video: no warning
        assert len(list(iter_video_frames(media / "full.avi"))) == 60


def test_the_bounds():
    from clefctl.data.images import ImageBoundsError, check_size, size_problem

    assert size_problem(640, 360) is None and size_problem(16, 16) is None
    assert "shorter than 16" in size_problem(20000, 3)
    assert "strip" in size_problem(2100, 100)
    assert "megapixels" in size_problem(20000, 10000)
    with pytest.raises(ImageBoundsError):
        check_size(3, 20000)


def test_full_disk_in_data_prepare_is_one_line_and_leaves_no_cut_crop(media, tmp_path, monkeypatch, capsys):
    """The disk fills while the third crop is written: one error line naming that crop, exit 2, and no
    cut JPEG or temporary file behind (every crop is written to a temporary file, then renamed)."""
    import errno

    from clefctl import cli

    real_save = Image.Image.save
    calls = {"n": 0}

    def save(self, fp, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            with open(fp, "wb") as fh:              # half a JPEG, then the disk is full
                fh.write(b"\xff\xd8\xff\xe0" + b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    photos = []
    for k in range(4):
        photos.append(str(tmp_path / f"p{k}.jpg"))
        (tmp_path / f"p{k}.jpg").write_bytes((media / "single.jpg").read_bytes())
    with pytest.raises(SystemExit) as exc:
        cli.main(["data", "prepare", *photos, "--out", str(tmp_path / "c"), "--detector", "haar"])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert exc.value.code == 2 and len(errors) == 1 and "000002_p2.jpg" in errors[0], err
    left = sorted(p.name for p in (tmp_path / "c" / "crops").iterdir())
    assert left == ["000000_p0.jpg", "000001_p1.jpg"]
    for name in left:
        Image.open(tmp_path / "c" / "crops" / name).load()      # whole JPEGs
