"""Which model made a store, recorded in the store itself.

A store is a file people move, share and open from other folders, so ``embed`` records in it (the
root attribute ``model``, JSON) what loads the model that made it: ``weights`` (an absolute path, a
folder, an open_clip tag, or ``random``), ``arch``, ``fingerprint`` and ``sha256`` (the weights
file's digest, when the model came from a file). ``query``, ``rescore``, ``serve`` and ``index build``
use it when no ``--weights`` is given; the model loaded is then checked against the store's
fingerprint, as any model is. Stores written before carry no record and are opened as before (the
embed run's ``config.yaml`` beside them, or ``--weights``). The store reads its record as
:attr:`EmbeddingStore.model_record <clefctl.store.format.EmbeddingStore.model_record>`;
:meth:`clefctl.workspace.Workspace.store_model` loads the model it names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from clefctl.errors import ClefError

MODEL_ATTR = "model"


def model_record(choice, model) -> dict:
    """The record of ``model`` (loaded from :class:`~clefctl.workspace.ModelChoice` ``choice``)."""
    fp = str(model.fingerprint)
    return {"weights": choice.weights or "random", "arch": model.arch, "fingerprint": fp,
            "sha256": fp.split("@sha256:", 1)[1] if "@sha256:" in fp else None,
            "description": choice.description}


def parse_record(value) -> dict | None:
    """The record as stored in the attribute (None when absent or unreadable)."""
    if value is None:
        return None
    try:
        rec = json.loads(value if isinstance(value, str) else bytes(value).decode("utf-8"))
    except (ValueError, TypeError):
        return None
    return rec if isinstance(rec, dict) and rec.get("weights") else None


def recorded_weights(store_path: str | os.PathLike, rec: dict) -> str:
    """The weights reference of ``rec``, checked to exist on this machine when it is a path."""
    w = str(rec["weights"])
    if os.path.isabs(w) and not Path(w).exists():
        digest = f" (sha256 {rec['sha256'][:16]}...)" if rec.get("sha256") else ""
        raise ClefError(f"the store's model, {w}{digest}, recorded when the store was embedded, is not on "
                        "this machine", path=store_path,
                        hint="pass --weights with a copy of that file (the store checks it is the same model)")
    return w


__all__ = ["MODEL_ATTR", "model_record", "parse_record", "recorded_weights"]
