"""predict on real photos (scikit-image) and a short video."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clefctl.engine import TrainConfig
from clefctl.finetune import FinetuneOptions, run_finetune


@pytest.fixture(scope="module")
def workspace(synth, tmp_path_factory):
    ws = str(tmp_path_factory.mktemp("ws"))
    cfg = dict(epochs=1, batch_size=16, max_steps=1, num_workers=0, progress=False)
    run_finetune(FinetuneOptions(dataset="bp4d", dataset_root=synth["au"], workspace=ws, init=None, folds=3,
                                 train=TrainConfig(**cfg)))
    run_finetune(FinetuneOptions(dataset="rafdb", dataset_root=synth["fer"], workspace=ws, init=None,
                                 train=TrainConfig(**cfg)))
    return ws


def test_predict_astronaut_and_no_face(workspace, tmp_path):
    from skimage import data

    from clefctl.predict import predict

    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    (tmp_path / "broken.jpg").write_bytes(b"")
    out = predict([str(tmp_path / "astronaut.png"), str(tmp_path / "grey.png"), str(tmp_path / "broken.jpg")],
                  tmp_path / "pred.csv", workspace=workspace, progress=False)
    df = pd.read_csv(out["csv"])
    astro = df[df.source.str.endswith("astronaut.png")].iloc[0]
    assert astro.no_face == 0 and astro.w > 50 and 150 < astro.x + astro.w / 2 < 300
    assert 0 <= astro.AU12_p <= 1 and astro.AU12_c in (0, 1)
    assert abs(sum(astro[f"p_{c}"] for c in ("surprise", "fear", "disgust", "happiness", "sadness", "anger",
                                              "neutral")) - 1) < 1e-4
    assert astro.expression in ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
    grey = df[df.source.str.endswith("grey.png")].iloc[0]
    assert grey.no_face == 1 and np.isnan(grey.AU12_p)
    assert out["unreadable"] == [str(tmp_path / "broken.jpg")]


def test_predict_video_writes_timeline(workspace, tmp_path):
    from click.testing import CliRunner
    from skimage import data

    from clefctl.cli import cli

    frame = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    path = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (512, 512))
    for i in range(6):
        vw.write(np.roll(frame, 3 * i, axis=1))
    vw.release()
    r = CliRunner().invoke(cli, ["predict", str(path), "--every", "2", "--out", str(tmp_path / "v.csv"),
                                 "--workspace", workspace, "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["rows"] == 3 and len(summary["timelines"]) == 1
    assert (tmp_path / "v_clip_timeline.png").is_file()


def test_scoring_needs_no_training_module():
    """Scoring a photo (clefctl.scoring, predict) does not import the stage-2 training module."""
    import subprocess
    import sys

    code = ("import sys, clefctl.scoring, clefctl.predict; "
            "assert not {'clefctl.finetune', 'clefctl.pretrain', 'clefctl.engine'} & set(sys.modules), sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
