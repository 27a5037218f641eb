""""Why did it match": the relevancy of one stored face for the query text, for the page and the API.

The map is :func:`clefctl.explain.relevancy` (Chefer et al. 2021, the machinery of ``clefctl
explain``) on the row's face crop; the PNG overlays it on the face as the model saw it
(:func:`clefctl.explain.display_image`), jet colours (blue low, red high) as in ``explain``'s figure.
Word relevancy joins the text's BPE pieces into words (a word scores its most relevant piece).
"""

from __future__ import annotations

import io

import numpy as np

from clefctl.errors import ClefError

HEATMAP_PX = 256        # the PNG's side
MAX_TEXT_CHARS = 1000   # longer query texts are refused (the text tower cuts at 77 tokens anyway)


def words_of(tokens: list[str], scores, word_end: list[bool]) -> list[dict]:
    """BPE pieces -> words: ``[{"word", "score"}]``, a word's score the maximum of its pieces'."""
    words: list[dict] = []
    piece, best = "", 0.0
    for i, tok in enumerate(tokens):
        piece += tok
        best = max(best, float(scores[i]))
        if i >= len(word_end) or word_end[i] or i == len(tokens) - 1:
            words.append({"word": piece, "score": round(best, 4)})
            piece, best = "", 0.0
    return words


def heatmap_png(face, image_map: np.ndarray, size: int, alpha: float = 0.5) -> bytes:
    """The face as the model saw it with the relevancy map over it, ``HEATMAP_PX`` square, as PNG."""
    from matplotlib import colormaps
    from PIL import Image

    from clefctl.explain import display_image

    base = display_image(face, size).astype(np.float32) / 255.0
    heat = colormaps["jet"](np.clip(image_map, 0.0, 1.0))[..., :3].astype(np.float32)
    if heat.shape[:2] != base.shape[:2]:
        heat = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize(base.shape[1::-1]),
                          dtype=np.float32) / 255.0
    blend = ((1 - alpha) * base + alpha * heat) * 255.0
    img = Image.fromarray(blend.round().clip(0, 255).astype(np.uint8)).resize((HEATMAP_PX, HEATMAP_PX),
                                                                              Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def explain_face(model, face, text: str) -> tuple[dict, object]:
    """Relevancy of ``face`` (PIL image) for ``text``: the JSON document and the :class:`Relevance`."""
    from clefctl.explain import relevancy

    text = str(text or "").strip()
    if not text:
        raise ClefError("the text to explain is empty", hint="pass q=TEXT, the query the face matched")
    if len(text) > MAX_TEXT_CHARS:
        raise ClefError(f"the text is {len(text)} characters long; at most {MAX_TEXT_CHARS} are explained")
    rel = relevancy(model, face, text)
    doc = rel.to_dict(top=5)
    doc["words"] = words_of(rel.tokens, rel.token_scores, rel.word_end)
    doc["patch_map"] = [[round(float(v), 5) for v in r] for r in rel.patch_map]
    return doc, rel
