"""What text and image queries (:mod:`.queries`) and re-scoring (:mod:`.rescoring`) share: a store
opened for the model that encodes against it (:func:`open_store`), texts encoded to unit rows
(:func:`encode_texts`), and the prompt classes' text vectors (:func:`class_text_embeddings`; ``names``,
``descriptions`` or ``ensemble``, :data:`clefctl.prompts.RESCORE_MODES`, of the texts
:func:`clefctl.prompts.class_texts` lists).

Example::

    >>> from clefctl.search.encoding import class_text_embeddings
    >>> class_text_embeddings(model, load_prompts("rafdb"), "ensemble").shape    # doctest: +SKIP
    (7, 512)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from clefctl.errors import ClefError
from clefctl.prompts import class_texts
from clefctl.store.format import EmbeddingStore
from clefctl.store.layout import unit_rows

def open_store(store, model=None) -> tuple[EmbeddingStore, bool]:
    """An open store (and whether we opened it); refuses a store of another model."""
    fingerprint = getattr(model, "fingerprint", None)
    if isinstance(store, EmbeddingStore):
        if store.closed:
            raise ClefError("the embedding store is closed", path=store.path)
        if fingerprint is not None and fingerprint != store.fingerprint:
            raise ClefError(f"store was embedded with model {store.fingerprint}, but the model "
                            f"given is {fingerprint}", path=store.path,
                            hint="embed the images again with this model, or load the model "
                                 "that made this store")
        return store, False
    return EmbeddingStore.open(store, fingerprint=fingerprint), True


def encode_texts(model, texts: Sequence[str]) -> np.ndarray:
    """(T, D) unit float32 rows of ``texts`` by ``model`` (a ClefModel, a TextModel or anything with
    ``encode_texts``)."""
    out = model.encode_texts(list(texts))
    out = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
    return unit_rows(out)


def _class_means(emb: np.ndarray, owner: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((n_classes, emb.shape[1]), dtype=np.float32)
    np.add.at(out, owner, unit_rows(emb))
    return unit_rows(out)


def class_text_embeddings(model, prompts, mode: str = "names", *, store: EmbeddingStore | None = None,
                          all_name_templates: bool = False) -> np.ndarray:
    """One unit vector per prompt class (C, D) for ``mode``:

    * ``names``: the label name in the (first) name template;
    * ``descriptions``: the template ensemble of the descriptions: the mean of the normalised
      embeddings of every description in every description template, renormalised;
    * ``ensemble``: the renormalised sum of the name vector (mean over every name template) and
      the description vector.

    With ``store`` the text embeddings come from (and go to) its text cache.
    """
    if not prompts.classes:
        raise ClefError(f"prompt set '{prompts.dataset}' has no classes to score")
    texts, owner = class_texts(prompts, mode, all_name_templates)
    if store is not None:
        emb = store.text_embeddings(prompts.hash, model.fingerprint, texts,
                                    lambda t: model.encode_texts(t))
    else:
        emb = encode_texts(model, texts)
    owner_arr = np.asarray(owner)
    c = len(prompts.classes)
    if mode == "ensemble":
        n_names = len(prompts.templates["name"]) * c
        names = _class_means(emb[:n_names], owner_arr[:n_names], c)
        descs = _class_means(emb[n_names:], owner_arr[n_names:], c)
        return unit_rows(names + descs)
    return _class_means(emb, owner_arr, c)
