"""Predict AUs and expressions on new photos and videos.

Faces are found and aligned with :class:`clefctl.data.faces.FaceCropper`; each image or sampled
video frame becomes one CSV row with OpenFace-style AU columns (``AU12_c`` occurrence 0/1 at 0.5,
``AU12_p`` its probability), expression probabilities (``p_happiness`` ...) and the predicted
expression, the face box and a ``no_face`` flag. A video also gets a timeline PNG of the AU
probabilities. Models: the newest fine-tuned AU run and the newest FER run of the workspace, or
the checkpoints given. An input that cannot be decoded (an image, or a video that does not open
or yields no frame) gets no row: it is skipped, counted and listed in the summary.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clefctl.errors import ClefError
from clefctl.workspace import Run, Workspace


def newest_run_for_task(ws: Workspace, task: str) -> Run | None:
    """The fine-tuning run whose model predicts ``task`` ("au" or "fer"): the workspace's one
    model resolver (LATEST when it is of that task, else the newest finished run that is)."""
    try:
        return ws.resolve_model(None, stages=("finetune",), task=task).run
    except ClefError:
        return None


@dataclass
class Predictor:
    model: object
    task: str
    classes: list[str]

    @classmethod
    def load(cls, checkpoint: str | Path, device=None, trust_checkpoint: bool = False) -> "Predictor":
        from clefctl.model import create

        model = create(weights=str(checkpoint), device=device, trust_checkpoint=trust_checkpoint)
        if model.meta.get("stage") != "finetune":
            raise ClefError("not a fine-tuned clefctl checkpoint", path=checkpoint,
                            hint="use the model.pt of a `clefctl finetune` run")
        return cls(model, model.meta["task"], list(model.meta["classes"]))

    def scores(self, images: list) -> np.ndarray:
        from clefctl.scoring import scores_from_features

        if not images:
            return np.zeros((0, len(self.classes)))
        feats = self.model.encode_images(images)
        return scores_from_features(feats, self.model.load_report.extras, self.task,
                                    float(self.model.logit_scale.detach()))


def _units(inputs: list[str], every: int, max_frames: int | None):
    """Yield (source, frame, timestamp, rgb) for images and sampled video frames; rgb is None
    (once per file) for an unreadable image or a video that does not open or has no frame."""
    import cv2

    from clefctl.data.faces import expand_inputs, is_video, iter_video_frames, read_image

    for path in expand_inputs(inputs):
        if not is_video(path):
            yield str(path), 0, None, read_image(path)
            continue
        frames = 0
        try:
            for idx, ts, rgb in iter_video_frames(path, every=every, max_frames=max_frames):
                frames += 1
                yield str(path), idx, ts, rgb
        except (ClefError, cv2.error) as exc:  # corrupt or unsupported: skip this file, not the job
            if frames:
                warnings.warn(f"{path}: video unreadable after {frames} frames ({exc}); its "
                              "remaining frames are skipped", stacklevel=2)
        if not frames:
            yield str(path), 0, None, None


def predict(inputs: list[str], out_csv: str | Path, au_checkpoint: str | None = None,
            fer_checkpoint: str | None = None, workspace: str | None = None, every: int = 1,
            max_frames: int | None = None, batch_size: int = 32, device=None, progress: bool = True,
            trust_checkpoint: bool = False) -> dict:
    """Write the predictions CSV (and a timeline PNG per video); return a summary.

    Unreadable inputs get no row; the summary counts them (``skipped``) and lists them
    (``unreadable``). ``trust_checkpoint`` allows full unpickling of the checkpoints given.
    """
    import pandas as pd

    from clefctl.data.faces import FaceCropper
    from clefctl.paths import atomic_path

    if every < 1:
        raise ClefError(f"--every must be >= 1, got {every}")
    if max_frames is not None and max_frames < 1:
        raise ClefError(f"--max-frames must be >= 1, got {max_frames}")
    ws = Workspace(workspace)
    predictors = []
    for task, given in (("au", au_checkpoint), ("fer", fer_checkpoint)):
        if given is not None:
            ck = ws.resolve_model(given, stages=("finetune",)).weights
        else:
            run = newest_run_for_task(ws, task)
            ck = str(run.model_path) if run else None
        if ck is not None:
            predictors.append(Predictor.load(ck, device, trust_checkpoint))
    if not predictors:
        raise ClefError(f"no fine-tuned AU or expression model in workspace {ws.root}",
                        hint="run `clefctl finetune` first, or pass --au-checkpoint / --fer-checkpoint")
    size = max(p.model.image_size for p in predictors)
    cropper = FaceCropper(size=max(size, 112))
    rows, crops, crop_rows, unreadable = [], [], [], []
    from clefctl.ui import progress_bar

    with progress_bar("faces", enabled=progress, transient=True) as bar:
        for source, frame, ts, rgb in _units(inputs, every, max_frames):
            bar.advance()
            row = {"source": source, "frame": frame, "timestamp": ts, "no_face": 1,
                   "x": np.nan, "y": np.nan, "w": np.nan, "h": np.nan}
            if rgb is None:
                unreadable.append(source)
                continue
            res = cropper.crop(rgb)
            if res.found:
                row.update(no_face=0, x=res.box[0], y=res.box[1], w=res.box[2], h=res.box[3])
                crops.append(res.image)
                crop_rows.append(len(rows))
            rows.append(row)
    frame = pd.DataFrame(rows)
    for p in predictors:
        scores = np.concatenate([p.scores(crops[i:i + batch_size]) for i in range(0, len(crops), batch_size)]) \
            if crops else np.zeros((0, len(p.classes)))
        full = np.full((len(rows), len(p.classes)), np.nan)
        if crop_rows:
            full[crop_rows] = scores
        if p.task == "au":
            for j, au in enumerate(p.classes):
                frame[f"{au}_p"] = full[:, j]
                frame[f"{au}_c"] = np.where(np.isnan(full[:, j]), np.nan, (full[:, j] > 0.5).astype(float))
        else:
            for j, c in enumerate(p.classes):
                frame[f"p_{c}"] = full[:, j]
            best = np.where(np.isnan(full).all(1), -1, np.nan_to_num(full, nan=-1).argmax(1))
            frame["expression"] = [p.classes[b] if b >= 0 else "" for b in best]
    out_csv = Path(out_csv)
    with atomic_path(out_csv) as tmp:
        frame.to_csv(tmp, index=False)
    timelines = []
    au = next((p for p in predictors if p.task == "au"), None)
    if au is not None and len(frame):
        for source, part in frame.groupby("source"):
            if part["timestamp"].notna().any() and len(part) > 1:
                timelines.append(str(_timeline(part, au.classes, out_csv.with_name(
                    f"{out_csv.stem}_{Path(source).stem}_timeline.png"))))
    return {"csv": str(out_csv), "rows": len(frame), "faces": int((frame["no_face"] == 0).sum()) if len(frame) else 0,
            "no_face": frame.loc[frame["no_face"] == 1, "source"].tolist() if len(frame) else [],
            "skipped": len(unreadable), "unreadable": unreadable, "timelines": timelines,
            "models": {p.task: p.model.fingerprint for p in predictors}}


def _timeline(part, aus: list[str], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from clefctl.paths import atomic_path

    fig = Figure(figsize=(10, 0.45 * len(aus) + 1.5))
    ax = fig.add_subplot(111)
    probs = np.stack([part[f"{a}_p"].to_numpy(dtype=float) for a in aus])
    im = ax.imshow(probs, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest",
                   extent=(float(part["timestamp"].min()), float(part["timestamp"].max()), len(aus) - 0.5, -0.5))
    ax.set_yticks(range(len(aus)), aus)
    ax.set_xlabel("time (s)")
    ax.set_title("AU occurrence probability over time (blank: no face)")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out
