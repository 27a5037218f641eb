"""``clefctl export``: a trained model as an open_clip Hub folder with a model card, ready for
``huggingface-cli upload``. It needs a run (the workspace finds it), so it sits above the workspace:
:mod:`.folder` (``export_model``: the folder, built beside its target and renamed whole) and
:mod:`.card` (the model card). Reading such a folder back is :mod:`clefctl.weights.hub`'s.

Example::

    >>> from clefctl.export import export_model
    >>> export_model(None, "exported/clef-au")           # doctest: +SKIP
"""

from clefctl.export.folder import ExportResult, export_model  # noqa: F401
