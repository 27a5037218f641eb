"""The embed job: filling a store (:mod:`clefctl.store`) with a model's image embeddings. It imports the
store, never the other way round.

* :mod:`clefctl.embed.job`: :func:`embed_into_store`, reader -> encoder -> writer over a data set's
  samples (resumable, kill-safe), one shard per rank under torchrun, the parts joined by
  :func:`clefctl.store.merge_parts`;
* :mod:`clefctl.embed.media`: :func:`embed_media_into_store`, one row per face of photos and videos;
* :mod:`clefctl.embed.jobs`: how a job ends (signals, nothing readable, the index step);
* :mod:`clefctl.embed.index`: the index built at the end of ``embed`` and ``clefctl index build``
  (both encode tuning texts with the store's model);
* :mod:`clefctl.embed.run`: :func:`run_embed` (``clefctl embed`` as a library call: data set or
  photos and videos, model, run folder, index, report).

Importing this package does not import torch.

Example::

    >>> from clefctl.model import create
    >>> from clefctl.embed import embed_into_store
    >>> report = embed_into_store(create("clef-tiny"), bundle, "runs/synthetic-fer.h5")   # doctest: +SKIP
"""

from clefctl.embed.index import IndexBuildOptions, index_after_embed, run_index_build
from clefctl.embed.job import EmbedReport, embed_into_store, part_path
from clefctl.embed.media import embed_media_into_store, media_image_set
from clefctl.embed.run import EmbedOptions, EmbedResult, embed_run_dir, run_embed, run_embed_media

__all__ = ["EmbedReport", "embed_into_store", "part_path", "embed_media_into_store", "media_image_set",
           "EmbedOptions", "EmbedResult", "embed_run_dir", "run_embed", "run_embed_media", "IndexBuildOptions",
           "index_after_embed", "run_index_build"]
