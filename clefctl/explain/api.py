"""The library entry point of ``clefctl explain``: :func:`run_explain` takes the command's options
and returns what the command prints or writes as JSON.

Example::

    >>> from clefctl.explain import ExplainOptions, run_explain
    >>> res = run_explain(ExplainOptions("face.jpg", texts=["a smiling face"], checkpoint="random"))  # doctest: +SKIP
    >>> res.png, res.panels[0][1].similarity                                                          # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from clefctl.errors import ClefError
from clefctl.explain.figure import render
from clefctl.explain.inputs import (Face, LoadedModel, class_panels, held_out_subjects, load_face, load_model,
                                    prompt_set_for, synthetic_au_root)
from clefctl.explain.pointing import POINTING_AUS, pointing_accuracy, pointing_summary
from clefctl.explain.relevance import Relevance, relevancy_many


@dataclass
class ExplainOptions:
    """What to explain, with what model (the options of ``clefctl explain``).

    Figure mode (default): ``image`` against each of ``texts`` and, with ``classes``, one panel per
    class name and description of the prompt set; the PNG goes to ``out``. ``pointing``: the
    pointing check on ``n_images`` synthetic-au faces per AU of ``aus`` instead. ``warn`` is called
    with each warning (random fallback model, no face found) when it arises.
    """

    image: str | None = None             # a file, or with store an image id (the argument)
    texts: Sequence[str] = field(default=(), metadata={
        "flag": "--text", "help": "A text to explain the image against (repeatable)."})
    classes: bool = field(default=False, metadata={
        "help": "One panel per class name and per description of the model's prompt set (Fig. 4)."})
    max_descriptions: int | None = field(default=None, metadata={
        "help": "With --classes: at most this many descriptions per class (default: all).", "min": 0})
    prompts: str | None = field(default=None, metadata={
        "help": "Prompt set name or YAML (default: the checkpoint run's)."})
    checkpoint: str | None = field(default="latest", metadata={
        "help": "latest (the workspace's latest fine-tuning run), random, a model.pt, a run folder or name, "
                "an exported folder, hf-hub:ORG/NAME or a registry name (clefctl weights list)."})
    arch: str | None = field(default=None, metadata={
        "help": "Architecture for random models (default clef-tiny) and non-clefctl weight files (ViT-B-16)."})
    out: str = field(default="explain.png", metadata={"help": "The PNG to write.", "path": {"dir_okay": False}})
    crop: bool | None = field(default=None, metadata={
        "flag": "--crop/--no-crop",
        "help": "Crop the largest face first (default: only for images over twice the model input)."})
    store: str | None = field(default=None, metadata={
        "help": "An embedding store (.h5): IMAGE is then an image id from `query` results."})
    detector: str = "auto"               # the face detector that crops the image (clefctl.data.faces.choice)
    min_confidence: float | None = None
    start_layer: int = field(default=0, metadata={
        "help": "Leave blocks before this one out of the relevance sum.", "min": 0})
    pointing: bool = field(default=False, metadata={
        "help": "Pointing accuracy on synthetic-au faces instead of a figure: is the hottest patch of "
                "the AU name's map inside the AU's region?"})
    n_images: int = field(default=50, metadata={"flag": "--n", "help": "With --pointing: images per AU.", "min": 1})
    aus: Sequence[str] | None = field(default=None, metadata={
        "help": "With --pointing: comma-separated AUs (default AU12,AU4,AU9,AU26,...).", "type": "str",
        "split": ","})
    dataset_root: str | None = field(default=None, metadata={
        "help": "With --pointing: the synthetic-au set (default: the run's)."})
    all_subjects: bool = field(default=False, metadata={
        "help": "With --pointing: use every subject, not only the run's held-out fold."})
    device: str | None = None
    workspace: str | None = None
    trust_checkpoint: bool = False
    progress: bool = True
    warn: Callable[[str], None] | None = None


@dataclass
class ExplainResult:
    """What one explain run produced.

    Figure mode: ``png``, ``face`` and ``panels`` ((title, Relevance) per panel); pointing mode:
    ``data`` (the synthetic-au set), ``subjects`` (which ones, in words), ``aus`` (per-AU results
    of :func:`pointing_accuracy`) and ``summary`` (:func:`pointing_summary`).
    """

    model: str
    fingerprint: str
    pointing: bool = False
    png: Path | None = None
    face: Face | None = None
    panels: list[tuple[str, Relevance]] = field(default_factory=list)
    data: Path | None = None
    subjects: str | None = None
    aus: dict[str, dict] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The ``--json`` document (NaN becomes null)."""
        if self.pointing:
            return {"model": self.model, "fingerprint": self.fingerprint, "data": str(self.data),
                    "subjects": self.subjects,
                    "aus": {k: {kk: _num(vv) for kk, vv in v.items()} for k, v in self.aus.items()},
                    "summary": {k: _num(v) for k, v in self.summary.items()}}
        face = self.face
        return {"png": str(self.png), "image": face.source, "cropped": face.cropped, "face": face.face,
                "box": list(face.box) if face.box else None, "model": self.model,
                "fingerprint": self.fingerprint,
                "panels": [{"title": name, **r.to_dict()} for name, r in self.panels]}


def _num(x):
    return None if isinstance(x, float) and math.isnan(x) else x


def _check_texts(texts: Sequence[str]) -> None:
    if any(not t.strip() for t in texts):
        raise ClefError("--text is empty: give the text to explain the image against",
                        hint="e.g. --text 'a photo of a person with lip corner puller.'")


def run_explain(opts: ExplainOptions) -> ExplainResult:
    """Explain ``opts.image`` against texts and write the figure, or run the pointing check."""
    warnings: list[str] = []

    def warn(message: str | None) -> None:
        if message:
            warnings.append(message)
            if opts.warn is not None:
                opts.warn(message)

    _check_texts(opts.texts)
    loaded = load_model(opts.checkpoint, opts.workspace, opts.arch, opts.device, opts.trust_checkpoint)
    warn(loaded.warning)
    prompt_set = prompt_set_for(loaded.model, loaded.run_dir, opts.prompts)
    if opts.pointing:
        result = _pointing(opts, loaded, prompt_set)
    else:
        result = _figure(opts, loaded, prompt_set, warn)
    result.warnings = warnings
    return result


def _pointing(opts: ExplainOptions, loaded: LoadedModel, prompt_set) -> ExplainResult:
    root = synthetic_au_root(opts.dataset_root, loaded.run_dir)
    subjects, which = (None, "all subjects") if opts.all_subjects else held_out_subjects(loaded.run_dir)
    results = pointing_accuracy(loaded.model, root, POINTING_AUS if opts.aus is None else opts.aus, opts.n_images, prompts=prompt_set,
                                subjects=subjects, start_layer=opts.start_layer, progress=opts.progress)
    return ExplainResult(loaded.source, loaded.model.fingerprint, pointing=True, data=root, subjects=which,
                         aus=results, summary=pointing_summary(results))


def _figure(opts: ExplainOptions, loaded: LoadedModel, prompt_set, warn: Callable) -> ExplainResult:
    model = loaded.model
    if not opts.image:
        raise ClefError("give an IMAGE to explain (or --pointing)", hint="clefctl explain face.jpg --text '...'")
    panels = [(t, t) for t in opts.texts]
    if opts.classes:
        panels += class_panels(prompt_set, opts.max_descriptions)
    if not panels:
        if prompt_set is None:
            raise ClefError("nothing to explain the image against",
                            hint="pass --text '...', or --classes with a fine-tuned --checkpoint or --prompts")
        panels = class_panels(prompt_set, 0)
    face = load_face(opts.image, model.image_size, opts.crop, opts.store, opts.detector, opts.min_confidence)
    warn(face.warning)
    rels = relevancy_many(model, face.image, [t for _, t in panels], start_layer=opts.start_layer)
    titled = [(name, r) for (name, _), r in zip(panels, rels)]
    title = f"{face.source}{' (face crop)' if face.cropped else ''} - {loaded.source}"
    png = render(face.image, titled, opts.out, title=title)
    return ExplainResult(loaded.source, model.fingerprint, png=png, face=face, panels=titled)
