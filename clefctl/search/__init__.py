"""Search and re-scoring over an embedding store (:mod:`clefctl.store`).

Owns text and image queries (:func:`query_text`, :func:`query_image`), the class a free text is
nearest to (:func:`nearest_classes`; precision@k of a query's hits: :func:`nearest_with_precision`),
zero-shot re-scoring of the cached image embeddings against an edited prompt set (:func:`rescore`:
only texts are encoded), and contact sheets of hits (:func:`contact_sheet_of_hits`).

All scores are cosine similarities: stored image embeddings and text embeddings are unit
vectors, so inner product = cosine. Class probabilities follow the paper's heads: softmax over
classes of ``logit_scale * cosine`` for expressions (FER), an independent sigmoid per AU with
"present" when ``sigmoid(logit_scale * cosine) > 0.5``.

Example::

    >>> hits = query_text("runs/rafdb.h5", model, "lip corners pulled up", k=8)   # doctest: +SKIP
    >>> contact_sheet_of_hits(hits, "hits.png")                                  # doctest: +SKIP
    >>> res = rescore("runs/rafdb.h5", model, load_prompts("my-rafdb.yaml"))     # doctest: +SKIP
    >>> res.scores.shape                                                         # doctest: +SKIP
    (15339, 7)
"""

from clefctl.prompts import RESCORE_MODES, class_texts
from clefctl.search.encoding import class_text_embeddings
from clefctl.search.queries import (HIT_COLUMNS, face_store, hits_frame, nearest_classes, nearest_with_precision,
                                    query_image, query_text, query_text_vectors, search_vectors)
from clefctl.search.rescoring import RescoreResult, check_prompts_fit, fitting_prompt_sets, rescore, score_matrix
from clefctl.search.sheets import contact_sheet_of_hits

__all__ = ["query_text", "query_text_vectors", "query_image", "face_store", "search_vectors", "hits_frame",
           "nearest_classes", "nearest_with_precision", "class_texts", "class_text_embeddings", "rescore",
           "RescoreResult", "score_matrix", "check_prompts_fit", "fitting_prompt_sets", "contact_sheet_of_hits",
           "RESCORE_MODES", "HIT_COLUMNS"]
