"""Relevancy maps between a face and a text: which image regions and which words drive the similarity.

``relevancy``: Chefer et al. (ICCV 2021) relevancy on open_clip's ViT and text towers;
``figure``: the Fig. 4-style PNG; ``pointing``: pointing accuracy on synthetic-au faces;
``inputs``: the model, prompt set and face the command explains; ``api``: :func:`run_explain`,
the entry point ``clefctl explain`` calls.

Example::

    >>> from clefctl.model import create
    >>> from clefctl.explain import relevancy, render
    >>> m = create("clef-tiny")
    >>> rel = relevancy(m, face, "a photo of a person with lip corner puller.")  # doctest: +SKIP
    >>> render(face, [("AU12", rel)], "explain.png")                              # doctest: +SKIP

Modules: ``relevance`` (the relevancy computation), ``figure``, ``pointing``, ``inputs`` (model,
prompt set, face) and ``api`` (``run_explain``, what the command calls).
"""

from clefctl.explain.api import ExplainOptions, ExplainResult, run_explain
from clefctl.explain.figure import TITLE_CHARS, display_image, render
from clefctl.explain.inputs import (Face, LoadedModel, class_panels, held_out_subjects, load_face, load_model,
                                    prompt_set_for, synthetic_au_root)
from clefctl.explain.pointing import (NAME_TEMPLATE, POINTING_AUS, eval_geometry, pointing_accuracy,
                                      pointing_summary, pointing_texts, region_mask)
from clefctl.explain.relevance import (Relevance, capture_attention, gae_relevance, model_input, relevancy,
                                       relevancy_many, relevancy_pairs)

__all__ = [
    "ExplainOptions", "ExplainResult", "run_explain",
    "TITLE_CHARS", "display_image", "render",
    "Face", "LoadedModel", "class_panels", "held_out_subjects", "load_face", "load_model", "prompt_set_for",
    "synthetic_au_root",
    "NAME_TEMPLATE", "POINTING_AUS", "eval_geometry", "pointing_accuracy", "pointing_summary", "pointing_texts",
    "region_mask",
    "Relevance", "capture_attention", "gae_relevance", "model_input", "relevancy", "relevancy_many",
    "relevancy_pairs",
]
