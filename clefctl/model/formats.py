"""Loading weights into a model: :func:`apply_state_dict` (all of the architecture's tensors or a
refusal) and :func:`check_head` (a fine-tuned model's classes, task, name embeddings and head agree).
Reading weight files by content lives in :mod:`clefctl.weights.files`, architecture shapes in
:mod:`clefctl.weights.archs`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clefctl.errors import ClefError
from clefctl.weights.archs import infer_architectures
from clefctl.weights.files import DERIVED_KEYS, FARL_EXTRA_PREFIXES, OPENAI_META_KEYS, strip_prefix

log = logging.getLogger("clefctl.model")

MIN_KEY_MATCH = 0.5


@dataclass
class LoadReport:
    """What happened when weights were loaded: for the log, ``clefctl info`` and tests."""

    source: str = "random"              # random | farl | openai | openai-torchscript | open_clip |
    #                                       safetensors | clefctl | pretrained-tag
    path: str | None = None
    dropped: list[str] = field(default_factory=list)     # keys removed on purpose (FaRL MIM head)
    missing: list[str] = field(default_factory=list)     # model keys the file did not have
    unexpected: list[str] = field(default_factory=list)  # file keys the model does not have
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)             # clefctl checkpoint metadata
    extras: dict = field(default_factory=dict)           # clefctl checkpoint tensors besides weights



def apply_state_dict(clip: torch.nn.Module, sd: dict, arch: str, path: Path, report: LoadReport) -> None:
    from open_clip.model import resize_pos_embed

    sd = strip_prefix(dict(sd))
    dropped = [k for k in sd if k.startswith(FARL_EXTRA_PREFIXES)]
    for k in dropped:
        del sd[k]
    if dropped:
        report.dropped = sorted(dropped)
        report.notes.append(f"dropped {len(dropped)} FaRL masked-image-modelling keys (not part of CLIP)")
    for k in OPENAI_META_KEYS + DERIVED_KEYS:
        sd.pop(k, None)
    target = clip.state_dict()
    if "logit_scale" in sd and sd["logit_scale"].ndim != target["logit_scale"].ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(target["logit_scale"].shape)
    # A different input size is legitimate (the paper fine-tunes at 224, users may use others).
    if "visual.positional_embedding" in sd and sd["visual.positional_embedding"].shape != target[
            "visual.positional_embedding"].shape and sd["visual.positional_embedding"].shape[-1] == target[
            "visual.positional_embedding"].shape[-1]:
        resize_pos_embed(sd, clip)
        report.notes.append("resized the image position embedding to the model's input size")
    same = [k for k in target if k in sd and tuple(sd[k].shape) == tuple(target[k].shape)]
    wrong_shape = [k for k in target if k in sd and tuple(sd[k].shape) != tuple(target[k].shape)]
    missing = [k for k in target if k not in sd]
    if len(same) < MIN_KEY_MATCH * len(target) or wrong_shape:
        fits = infer_architectures(sd)
        hint = (f"the file looks like architecture {', '.join(fits[:4])}: pass --arch {fits[0]}" if fits
                else "check that the file is a CLIP checkpoint for this architecture")
        detail = (f"{len(wrong_shape)} tensors have other shapes (e.g. {wrong_shape[0]})" if wrong_shape
                  else f"only {len(same)} of {len(target)} model keys are in the file")
        raise ClefError(f"weights do not fit architecture {arch}: {detail}", path=path, hint=hint)
    if missing:  # all or nothing: a model with some tensors left at their initial values is not this model
        raise ClefError(f"incomplete weights for {arch}: {len(missing)} of the {len(target)} tensors the "
                        f"architecture needs are missing from the file (e.g. {', '.join(missing[:3])})",
                        path=path, hint="the file is cut or was saved from part of a model: copy or export it "
                                        "again from the complete checkpoint")
    clip.load_state_dict({k: sd[k] for k in same}, strict=True)
    report.missing = []
    report.unexpected = sorted(k for k in sd if k not in target)
    if report.unexpected:
        import warnings

        warnings.warn(f"{path}: {len(report.unexpected)} tensors in the file are not part of {arch} and were "
                      f"left out (e.g. {report.unexpected[0]})", UserWarning, stacklevel=3)


def check_head(meta: dict, extras: dict, embed_dim: int, path, *, scoring: bool = False) -> None:
    """A fine-tuned checkpoint's class list, task and scoring tensors agree, or one ClefError naming the
    disagreement: ``classes`` distinct non-empty strings, ``task`` au or fer, ``name_embeddings`` one row
    of ``embed_dim`` per class, a linear head (``head_weight``, ``head_bias``) of the same classes.
    ``scoring``: the model is about to score images, so the classes and a way to score them must be there."""
    fix = "the file was edited or damaged: export or save it again from the fine-tuning run"
    if not isinstance(meta, dict) or not isinstance(extras, dict):
        raise ClefError("the checkpoint's metadata or extras are not a mapping", path=path, hint=fix)
    heads = [k for k in ("name_embeddings", "head_weight", "head_bias") if k in extras]
    if "classes" not in meta and not heads and not scoring:
        return
    classes, task = meta.get("classes"), meta.get("task")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes) \
            or len(set(classes)) != len(classes):
        raise ClefError(f"the checkpoint's class list is not a list of distinct names: {str(classes)[:80]}",
                        path=path, hint=fix)
    if task not in ("au", "fer") and (scoring or task is not None):
        raise ClefError(f"the checkpoint's task is {task!r}, not au or fer", path=path, hint=fix)
    shapes = {"name_embeddings": (len(classes), embed_dim)}
    if meta.get("head") == "linear" or "head_weight" in extras or "head_bias" in extras:
        shapes.update(head_weight=(len(classes), embed_dim), head_bias=(len(classes),))
    for name, shape in shapes.items():
        t = extras.get(name)
        if t is None and not scoring and name not in heads:
            continue
        if not isinstance(t, torch.Tensor):
            raise ClefError(f"the checkpoint has no {name} tensor for its {len(classes)} classes", path=path, hint=fix)
        if tuple(t.shape) != shape:
            raise ClefError(f"the checkpoint's {name} has shape {tuple(t.shape)}, but its {len(classes)} classes "
                            f"and {embed_dim}-dimensional features need {shape}", path=path, hint=fix)
        if not torch.isfinite(t.float()).all():
            raise ClefError(f"the checkpoint's {name} holds NaN or infinite values", path=path, hint=fix)
