"""Which model scores the faces, and how: fine-tuned clefctl checkpoints (their text or linear
head, :mod:`clefctl.scoring`) or zero-shot from a prompt set with any weights ``create()``
accepts (the classes' text embeddings, :func:`clefctl.search.class_text_embeddings`; the
probabilities of :class:`clefctl.search.RescoreResult`, so ``predict`` and ``rescore`` agree)."""

from __future__ import annotations

from collections.abc import Callable
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
    """A fine-tuned clefctl model and its head: ``scores(images)`` for PIL images."""

    model: object
    task: str
    classes: list[str]

    @classmethod
    def load(cls, checkpoint: str | Path, device=None, trust_checkpoint: bool = False) -> "Predictor":
        from clefctl.model import create
        from clefctl.model.formats import check_head

        model = create(weights=str(checkpoint), device=device, trust_checkpoint=trust_checkpoint)
        if model.meta.get("stage") != "finetune":
            raise ClefError("not a fine-tuned clefctl checkpoint", path=checkpoint,
                            hint="use the model.pt of a `clefctl finetune` run, or score zero-shot with "
                                 "--weights and --prompts")
        check_head(model.meta, model.load_report.extras, model.embed_dim, checkpoint, scoring=True)
        return cls(model, model.meta["task"], list(model.meta["classes"]))

    def score_features(self, feats: np.ndarray) -> np.ndarray:
        import torch

        from clefctl.scoring import scores_from_features

        if len(feats) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return scores_from_features(torch.from_numpy(np.asarray(feats, np.float32)), self.model.load_report.extras,
                                    self.task, float(self.model.logit_scale.detach()))

    def scores(self, images: list) -> np.ndarray:
        if not images:
            return np.zeros((0, len(self.classes)))
        return self.score_features(self.model.encode_images(images).numpy())


@dataclass
class Scorer:
    """Scores one task (``au`` or ``fer``) for ``classes`` from the features of ``model``."""

    task: str
    classes: list[str]
    model: object
    score: Callable[[np.ndarray], np.ndarray]     # (n, D) unit features -> (n, C) probabilities
    how: str                                      # for the summary: fine-tuned head or zero-shot


def finetuned(predictor: Predictor, description: str) -> Scorer:
    return Scorer(predictor.task, predictor.classes, predictor.model, predictor.score_features,
                  f"fine-tuned head ({description})")


def zero_shot(model, prompts, mode: str = "names") -> Scorer:
    """Zero-shot scores of ``prompts``' classes: cosine of each face with each class's text
    vector (:func:`~clefctl.search.class_text_embeddings` for ``mode``: names, descriptions or
    ensemble), turned into probabilities as ``rescore`` does (expressions: softmax of
    ``logit_scale * cosine``; AUs: a sigmoid per AU)."""
    from clefctl.search import RescoreResult, class_text_embeddings

    if prompts.task not in ("au", "fer"):
        raise ClefError(f"prompt set '{prompts.dataset}' is for task {prompts.task}; predict scores au or fer",
                        hint="use an AU prompt set (e.g. bp4d) or an expression one (e.g. rafdb)")
    vectors = class_text_embeddings(model, prompts, mode)
    scale = float(model.logit_scale.detach().cpu().item())
    ids, names = list(prompts.class_ids), list(prompts.class_names)

    def score(feats: np.ndarray) -> np.ndarray:
        cos = np.asarray(feats, np.float32) @ vectors.T
        return RescoreResult(ids, names, cos, prompts.task, mode, scale).probabilities

    return Scorer(prompts.task, ids, model, score, f"zero-shot, prompt set {prompts.dataset} ({mode})")


def build_scorers(ws: Workspace, *, au_checkpoint: str | None, fer_checkpoint: str | None,
                  weights: str | None, arch: str | None, prompts: tuple[str, ...], prompt_mode: str,
                  device, trust_checkpoint: bool) -> list[Scorer]:
    """The scorers a ``predict`` call asks for: zero-shot when ``prompts`` are given (with
    ``weights``), else the fine-tuned AU and FER checkpoints given or the newest runs of each."""
    if prompts:
        if au_checkpoint or fer_checkpoint:
            raise ClefError("--prompts scores zero-shot with --weights; it does not combine with "
                            "--au-checkpoint / --fer-checkpoint", hint="run predict twice")
        if not weights:
            raise ClefError("zero-shot prediction needs --weights (e.g. farl-ep64, a weights file, an "
                            "open_clip tag, or random for plumbing)", hint="pass --weights W [--arch A]")
        from clefctl.prompts import load_prompts

        sets = [load_prompts(p) for p in prompts]
        tasks = [p.task for p in sets]
        if len(set(tasks)) != len(tasks):
            raise ClefError(f"give at most one prompt set per task (au, fer), got tasks {tasks}")
        choice = ws.resolve_model(weights, arch=arch)
        model = choice.load(device, trust_checkpoint=trust_checkpoint, default_arch=arch or "ViT-B-16")
        return [zero_shot(model, p, prompt_mode) for p in sorted(sets, key=lambda p: p.task)]
    scorers = []
    if weights:  # a fine-tuned model says what it is (its task, classes and head): it scores as one
        from clefctl.weights.hub import declared_meta

        ck = ws.resolve_model(weights, arch=arch).weights
        meta = declared_meta(ck, trust_checkpoint=trust_checkpoint)
        if meta.get("stage") != "finetune" or meta.get("task") not in ("au", "fer"):
            raise ClefError(f"--weights {weights} is not a fine-tuned model, so it needs --prompts: it scores "
                            "zero-shot from a prompt set",
                            hint="add --prompts bp4d (AUs) or --prompts rafdb (expressions), or give a fine-tuned "
                                 "run, export or hf-hub: model")
        given_for = au_checkpoint if meta["task"] == "au" else fer_checkpoint
        if given_for is not None:
            raise ClefError(f"--weights {weights} is a fine-tuned {meta['task']} model and --{meta['task']}-checkpoint "
                            "names another", hint="give one model per task")
        scorers.append(finetuned(Predictor.load(ck, device, trust_checkpoint), str(weights)))
    for task, given in (("au", au_checkpoint), ("fer", fer_checkpoint)):
        if weights and given is None:
            continue  # --weights names the model: no newest run added for the other task
        if given is not None:
            ck, what = ws.resolve_model(given, stages=("finetune",)).weights, str(given)
        else:
            run = newest_run_for_task(ws, task)
            ck, what = (str(run.model_path), f"run {run.name}") if run else (None, "")
        if ck is not None:
            scorers.append(finetuned(Predictor.load(ck, device, trust_checkpoint), what))
    if not scorers:
        raise ClefError(f"no fine-tuned AU or expression model in workspace {ws.root}",
                        hint="run `clefctl finetune` first, pass --au-checkpoint / --fer-checkpoint, or "
                             "score zero-shot with --weights W --prompts P")
    return scorers
