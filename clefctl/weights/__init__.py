"""Weights you can trust and share: the registry of named weights (:mod:`.registry`), checked and
resumable downloads (:mod:`.download`), Hugging Face Hub loading (:mod:`.hub`) and export of a
trained model as an open_clip Hub folder with a model card (:mod:`.export`). ``docs/weights.md``
is the user's guide.

Example::

    >>> from clefctl.weights import registry
    >>> sorted(registry.names())[:2]
    ['farl-50m-ep16', 'farl-ep16']
"""
