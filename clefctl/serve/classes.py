"""The prompt classes of ``clefctl serve``: the store's prompt set, live re-scoring and class filters.

The page shows the store's prompt set as classes. Editing one (or adding one) posts the whole set
to ``/api/rescore``, which validates it as ``clefctl.prompts`` validates a YAML file and re-scores
every stored row with :func:`clefctl.search.rescore` (only the text encoder runs). The resulting
per-row class probabilities rank the rows by a class (``/api/rank``) and filter results by a class
combination: for AU sets every class named must be present (AU6 and AU12: a Duchenne smile), for
expression sets the face's expression must be one of those named.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from clefctl.errors import ClefError

MAX_PROMPT_BYTES = 1 << 20   # the largest prompt set /api/rescore takes


def default_prompts(store, model, config: dict | None = None, prompts: str | None = None):
    """The prompt set the explorer starts with.

    ``prompts`` (a name or YAML) when given; else the ``prompts.yaml`` of the run the store's model
    came from (the embed run's ``weights``), else the shipped set of the model's or the store's data
    set, else a shipped set holding the store's classes. None when nothing fits (no classes shown).
    """
    from clefctl.prompts import available_prompt_sets, load_prompts
    from clefctl.search import fitting_prompt_sets, check_prompts_fit
    from clefctl.weights.hub import model_prompts_file

    if prompts:
        ps = load_prompts(prompts)
        check_prompts_fit(store, model, ps)
        return ps
    cfg = config or {}
    candidates: list[str] = []
    own = model_prompts_file(cfg.get("weights"))   # the run's, or an exported model's own
    if own is not None:
        candidates.append(str(own))
    meta = getattr(model, "meta", None) or {}
    shipped = available_prompt_sets()
    candidates += [n for n in (meta.get("dataset"), cfg.get("dataset"), store.image_set) if n in shipped]
    if store.task in ("au", "fer"):
        candidates += fitting_prompt_sets(store.task, store.classes)
    for name in dict.fromkeys(candidates):
        try:
            ps = load_prompts(name)
            check_prompts_fit(store, model, ps)
        except ClefError:
            continue
        if ps.classes:
            return ps
    return None


def parse_edited(body: bytes, content_type: str) -> tuple[object, str | None]:
    """An edited prompt set posted to ``/api/rescore`` -> ``(PromptSet, mode or None)``.

    JSON: the set itself in schema form (``dataset``, ``task``, ``templates``, ``classes``), or
    ``{"prompts": <that object, or YAML text>, "mode": "names"}``; any other content type: YAML text.
    Validation errors name the line (YAML) and say what is wrong.
    """
    source = "POST /api/rescore"
    if len(body) > MAX_PROMPT_BYTES:
        raise ClefError(f"the prompt set is {len(body)} bytes; at most {MAX_PROMPT_BYTES} are taken")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ClefError(f"the prompt set is not UTF-8 text ({exc})") from None
    if not text.strip():
        raise ClefError("the request has no prompt set", hint="post the edited set as JSON or YAML")
    try:
        return _parse(text, content_type, source)
    except RecursionError:
        raise ClefError("the prompt set is nested too deeply", path=source,
                        hint="post the set in its schema form (dataset, task, templates, classes)") from None
    except ClefError:
        raise
    except ValueError as exc:  # e.g. an integer of thousands of digits
        raise ClefError(f"the prompt set holds a value that cannot be read ({str(exc)[:120]})", path=source) \
            from None


def _parse(text: str, content_type: str, source: str) -> tuple[object, str | None]:
    import json

    from clefctl.prompts import PromptSet, parse_prompts

    if "json" not in (content_type or ""):
        return parse_prompts(text, source), None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClefError(f"invalid JSON: {exc.msg}", path=source, line=exc.lineno) from None
    if not isinstance(doc, dict):
        raise ClefError("the JSON body must be an object: the prompt set, or {\"prompts\": ..., \"mode\": ...}")
    mode = None
    if "prompts" in doc:
        mode = doc.get("mode")
        doc = doc["prompts"]
    if isinstance(doc, str):
        return parse_prompts(doc, source), mode
    if not isinstance(doc, dict):
        raise ClefError("\"prompts\" must be a prompt set object or its YAML text")
    return PromptSet.from_dict(doc, source), mode


@dataclass
class ClassScores:
    """One prompt set's scores of every stored row (from :func:`clefctl.search.rescore`)."""

    prompts: object                    # PromptSet
    mode: str
    probabilities: np.ndarray          # (N, C): sigmoid per AU, softmax over expressions
    present: np.ndarray                # (N, C) bool: AU present / the face's expression
    agreement: dict
    seconds: float

    @classmethod
    def compute(cls, store, model, prompts, mode: str = "names") -> "ClassScores":
        from clefctl.search import rescore

        res = rescore(store, model, prompts, mode)
        probs = res.probabilities.astype(np.float32)
        pred = res.predictions
        if res.task != "au":
            onehot = np.zeros(probs.shape, dtype=bool)
            onehot[np.arange(len(pred)), pred] = True
            pred = onehot
        return cls(prompts, mode, probs, pred, res.agreement(store), res.seconds)

    @property
    def task(self) -> str:
        return self.prompts.task

    @property
    def class_ids(self) -> list[str]:
        return list(self.prompts.class_ids)

    def column(self, class_id: str) -> int:
        try:
            return self.class_ids.index(class_id)
        except ValueError:
            raise ClefError(f"the prompt set has no class {class_id!r}",
                            hint=f"use one of {', '.join(self.class_ids)}") from None

    def summary(self) -> dict:
        """What the page shows: the set (editable), the mode, agreement with stored labels, timing."""
        return {"prompts": self.prompts.to_dict(), "prompt_hash": self.prompts.hash, "mode": self.mode,
                "task": self.task, "classes": [{"id": c.id, "name": c.name, "descriptions": list(c.descriptions)}
                                               for c in self.prompts.classes],
                "agreement": _json_numbers(self.agreement), "seconds": round(self.seconds, 4)}


def _json_numbers(obj):
    """NaN -> None, numpy numbers -> Python numbers (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _json_numbers(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_numbers(v) for v in obj]
    if hasattr(obj, "item"):
        obj = obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def parse_class_list(value: str | None) -> list[str]:
    """``"AU6,AU12"`` -> ``["AU6", "AU12"]`` (also spaces or ``+`` between them)."""
    if not value:
        return []
    return [c for c in value.replace("+", ",").replace(" ", ",").split(",") if c]


def class_mask(classes: Sequence[str], by: str, scores: ClassScores | None, store_labels: dict | None,
               store_classes: Sequence[str], task: str) -> np.ndarray | None:
    """Rows matching a class combination: AU sets all of ``classes`` present, expression sets one of
    them. ``by="predicted"`` uses the prompt classes' scores, ``by="labels"`` the stored ground truth.
    None when ``classes`` is empty."""
    classes = list(classes)
    if not classes:
        return None
    if by == "predicted":
        if scores is None:
            raise ClefError("the store has no prompt classes to filter by",
                            hint="post a prompt set to /api/rescore first, or filter by=labels")
        cols = [scores.column(c) for c in classes]
        present, au = scores.present, scores.task == "au"
    elif by == "labels":
        if not store_labels or task not in ("au", "fer"):
            raise ClefError("the store has no labels to filter by", hint="filter by=predicted")
        missing = [c for c in classes if c not in store_classes]
        if missing:
            raise ClefError(f"the store's labels have no class {', '.join(missing)}",
                            hint=f"use one of {', '.join(store_classes)}")
        cols = [list(store_classes).index(c) for c in classes]
        if task == "au":
            present, au = (store_labels["aus"] > 0) & (store_labels["au_mask"] > 0), True
        else:
            lab = store_labels["label"]
            present = np.zeros((len(lab), len(store_classes)), dtype=bool)
            ok = (lab >= 0) & (lab < len(store_classes))
            present[np.nonzero(ok)[0], lab[ok]] = True
            au = False
    else:
        raise ClefError(f"unknown filter source {by!r}", hint="use by=predicted or by=labels")
    sub = present[:, cols]
    return sub.all(axis=1) if au else sub.any(axis=1)
