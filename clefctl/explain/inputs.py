"""What ``clefctl explain`` needs before any relevancy: the model, its prompt set, the face, and
for pointing the synthetic-au set and the subjects to point on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clefctl.errors import ClefError


@dataclass
class LoadedModel:
    """The model to explain and where it came from (``run``: its fine-tuning run folder, if any)."""

    model: object
    source: str
    run_dir: Path | None = None
    warning: str | None = None


def load_model(checkpoint: str | None = "latest", workspace: str | None = None, arch: str | None = None,
               device: str | None = None, trust_checkpoint: bool = False) -> LoadedModel:
    """The model to explain.

    ``latest``: the model.pt of the workspace's latest fine-tuning run, else a random ``arch``
    (default clef-tiny) model with a warning; ``random``: a random ``arch`` model; a run folder or
    a fine-tuning run name: its model.pt; a file: any weights format :func:`clefctl.model.create`
    reads (a clefctl checkpoint carries its architecture; other files use ``arch``, default
    ViT-B-16).
    """
    from clefctl.workspace import Workspace

    ws = Workspace(workspace)
    choice = ws.resolve_model(checkpoint or "latest", stages=("finetune",), arch=arch, random_fallback=True)
    model = choice.load(device, trust_checkpoint=trust_checkpoint)
    warning = None
    if choice.warning:
        warning = (f"no fine-tuned run in workspace {ws.root}: explaining a randomly initialised "
                   f"{choice.arch} (its maps show no learned facial regions); fine-tune first or "
                   "pass --checkpoint")
    run_dir = choice.run.path if choice.run is not None else None
    return LoadedModel(model, choice.description, run_dir, warning)


def prompt_set_for(model, run_dir: Path | None = None, prompts: str | None = None):
    """The prompt set of the model: ``prompts`` (a name or YAML) when given, else the run folder's
    prompts.yaml, else the shipped set of the checkpoint's data set; restricted to the checkpoint's
    classes. None when nothing says which one."""
    from clefctl.prompts import available_prompt_sets, load_prompts
    from clefctl.weights.hub import model_prompts_file

    meta = getattr(model, "meta", {}) or {}
    if prompts:
        ps = load_prompts(prompts)
    elif run_dir is not None and (Path(run_dir) / "prompts.yaml").is_file():
        ps = load_prompts(Path(run_dir) / "prompts.yaml")
    elif (own := model_prompts_file(getattr(getattr(model, "load_report", None), "path", None))) is not None:
        ps = load_prompts(own)   # an exported model's own set
    elif meta.get("dataset") in available_prompt_sets():
        ps = load_prompts(meta["dataset"])
    else:
        return None
    classes = meta.get("classes")
    if classes and all(c in ps.class_ids for c in classes):
        ps = ps.subset(classes)
    return ps


def class_panels(prompts, max_descriptions: int | None = None) -> list[tuple[str, str]]:
    """(title, text) per class: its label name in the name template, then each description in
    the first description template (at most ``max_descriptions`` per class), as in Fig. 4."""
    if prompts is None or not prompts.classes:
        raise ClefError("--classes needs a prompt set: the model is not a fine-tuned clefctl checkpoint",
                        hint="pass --prompts NAME_OR_YAML or a fine-tuned --checkpoint")
    name_tpl = prompts.templates["name"][0]
    desc_tpl = prompts.templates["description"][0]
    panels = []
    for c in prompts.classes:
        panels.append((f"{c.id}: {c.name}" if c.name != c.id else c.id, name_tpl.format(name=c.name)))
        descs = c.descriptions if max_descriptions is None else c.descriptions[:max_descriptions]
        for j, d in enumerate(descs, start=1):
            panels.append((f"{c.id} description {j}", desc_tpl.format(description=d)))
    return panels


@dataclass
class Face:
    """The image to explain and how it was obtained.

    ``face`` says what the face search did: ``"found"`` (cropped to it), ``"none found"`` (the
    whole image is used; ``warning`` says so), ``"not searched"`` (--no-crop, or an image already
    about the model's input size) or ``"stored box"`` (cut to an embedding store's face box).
    """

    image: object              # PIL RGB image
    source: str
    cropped: bool = False
    box: tuple[int, int, int, int] | None = None
    face: str = "not searched"

    @property
    def warning(self) -> str | None:
        if self.face != "none found":
            return None
        return (f"no face found in {self.source}: explaining the whole image (--crop requires a face, "
                "--no-crop skips the search)")


def _read_image(path: Path):
    from clefctl.data.images import read_rgb

    try:
        return read_rgb(path)
    except FileNotFoundError:
        raise ClefError("image not found", path=path) from None
    except (OSError, ValueError) as exc:
        raise ClefError(f"cannot read the image ({exc})", path=path) from None


def _stored_row(image_id: str, store: str):
    """(file, face box or None, video frame (1-based) or None) of a store row given by its id."""
    from clefctl.data.faces import is_video
    from clefctl.store import EmbeddingStore

    with EmbeddingStore.open(store) as st:
        row = st.row_of(image_id)
        meta = st.metadata([row]).iloc[0]
    if not meta["path"]:
        raise ClefError(f"stored image {image_id!r} has no image file (it was embedded from memory)", path=store)
    path = Path(meta["path"])
    box = None
    if int(meta["box_w"]) > 0:
        box = (int(meta["box_x"]), int(meta["box_y"]), int(meta["box_w"]), int(meta["box_h"]))
    frame = None
    if is_video(path):  # a face of `embed PATH...`: its frame of the video
        if not int(meta["frame"]) >= 1:
            raise ClefError(f"stored face {image_id!r} of a video has no frame number", path=store)
        frame = int(meta["frame"])
    return path, box, frame


def _read_video_frame(path: Path, frame: int):
    from PIL import Image

    from clefctl.data.faces import read_frame

    if not path.exists():
        raise ClefError("video not found", path=path)
    return Image.fromarray(read_frame(path, frame))


def load_face(image: str, model_size: int, crop: bool | None = None, store: str | None = None,
              detector: str = "auto", min_confidence: float | None = None) -> Face:
    """Open ``image`` (a file, or with ``store`` an image id of that embedding store) as RGB.

    ``crop=True``: crop the largest face with :class:`clefctl.data.faces.FaceCropper` (``detector``,
    ``min_confidence``: the ``--detector`` choice; aligned on the landmark template with YuNet; an error
    when none is found); ``False``: never; ``None`` (default): look for a face only when the image
    is larger than twice the model input, and use the whole image when none is found
    (``Face.face`` "none found", with a ``warning``). Stored images (and the frames of stored video faces)
    are cut to their stored face box.
    """
    path = Path(image).expanduser()
    box, frame = None, None
    if not path.is_file() and store:
        path, box, frame = _stored_row(str(image), store)
    elif not path.exists():
        hint = "give an image file" + ("" if store else ", or an image id with --store FILE.h5")
        raise ClefError("image not found", path=path, hint=hint)
    img = _read_image(path) if frame is None else _read_video_frame(path, frame)
    if box is not None:
        from clefctl.data.images import crop_to_box

        face = crop_to_box(img, box)
        if face is None:
            raise ClefError(f"stored face box {box} lies outside the {img.width}x{img.height} image", path=path)
        return Face(face, str(path), True, box, "stored box")
    if crop is False or (crop is None and max(img.size) <= 2 * model_size):
        return Face(img, str(path))
    from clefctl.data.faces import FaceCropper

    result = FaceCropper(size=max(224, model_size), detector=detector, min_confidence=min_confidence).crop(np.asarray(img))
    if not result.found:
        if crop:
            raise ClefError("no face found in the image", path=path, hint="pass --no-crop to use it whole")
        return Face(img, str(path), face="none found")
    return Face(result.image, str(path), True, result.box, "found")


def _run_config(run_dir: Path | None) -> dict:
    """The run folder's config.yaml ({} without a run or a config)."""
    if run_dir is None or not (Path(run_dir) / "config.yaml").is_file():
        return {}
    import yaml

    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8")) or {}


def synthetic_au_root(dataset_root: str | None = None, run_dir: Path | None = None) -> Path:
    """The synthetic-au set to point on: ``dataset_root``, else the run's, else the cached default
    (generated when missing; an existing set is used as it is, whatever its size)."""
    from clefctl.data import synthetic
    from clefctl.paths import cache_dir

    if dataset_root is None:
        cfg = _run_config(run_dir)
        if cfg.get("dataset") == "synthetic-au":
            dataset_root = (cfg.get("options") or {}).get("dataset_root")
    root = Path(dataset_root).expanduser() if dataset_root else cache_dir() / "synthetic-au"
    if (root / synthetic.SIDECAR).is_file():
        return root
    if dataset_root:
        raise ClefError("not a synthetic data set (no synthetic.json)", path=root,
                        hint="generate one with `clefctl data synth` or point --dataset-root at it")
    return synthetic.ensure("synthetic-au", root)


def held_out_subjects(run_dir: Path | None) -> tuple[list[str] | None, str]:
    """The test subjects of a synthetic-au run's fold (folds.json), or (None, "all subjects")."""
    if run_dir is None or not (Path(run_dir) / "folds.json").is_file():
        return None, "all subjects"
    from clefctl.data.folds import load_folds

    cfg = _run_config(run_dir)
    if cfg.get("dataset") != "synthetic-au":
        return None, "all subjects"
    fold_no = int((cfg.get("options") or {}).get("fold") or 1)
    folds = load_folds(Path(run_dir) / "folds.json")
    fold = folds[fold_no - 1]
    return list(fold.test_subjects), f"held-out subjects of fold {fold_no} ({', '.join(fold.test_subjects)})"
