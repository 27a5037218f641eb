"""How an embedding job ends: stopped by a signal, or finished.

* :func:`stopping`: SIGTERM stops ``embed`` as Ctrl-C (SIGINT) does. Either way the job ends with one
  line, saying which signal stopped it, that the rows committed so far are kept and how to continue
  (run the same command again: it resumes after the last committed chunk), and exit code 130.
* :func:`index_step`: the index built at the end; when that fails (a full disk) the store and its run
  files are kept and the error comes last.
* :func:`finish`: a job that consumed all its inputs marks its store complete, unless it could read
  none of them: then it is an error (one line), the store is not marked complete, and a store left
  with no rows is removed (it held nothing but the list of unreadable inputs; a rerun retries them).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

from clefctl.errors import ClefError, Interrupted
from clefctl.store.format import EmbeddingStore


class _Stop(KeyboardInterrupt):
    """Raised in the main thread by the SIGTERM handler of :func:`stopping`."""


def _committed(store_path: Path) -> int | None:
    try:
        with EmbeddingStore.open(store_path) as st:
            return st.count
    except (ClefError, OSError):
        return None


@contextlib.contextmanager
def stopping(store_path: str | os.PathLike):
    """Run an embedding job into ``store_path`` so that SIGINT and SIGTERM end it with
    :class:`~clefctl.errors.Interrupted` (one line, exit 130) saying what is kept and how to go on."""
    def on_term(signum, frame):
        raise _Stop()

    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, on_term) if main else None
    try:
        yield
    except KeyboardInterrupt as exc:
        name = "SIGTERM" if isinstance(exc, _Stop) else "SIGINT"
        rows = _committed(Path(store_path))
        kept = f"the {rows} rows committed to {store_path} are kept" if rows else \
            f"no rows were committed to {store_path} yet"
        raise Interrupted(f"{name}: embedding stopped; {kept} (run the same command again to continue after "
                          "the last committed chunk)") from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, old)


def finish(store, check: bool = True) -> None:
    """Mark ``store`` complete (its job consumed every input). With ``check``, a job that could read
    none of its inputs is refused instead (see the module docstring); a part file of one rank under
    torchrun is not checked (other ranks may have read theirs)."""
    if check and store.count == 0 and store.skipped_count > 0:
        skipped, path = store.skipped_ids, store.path
        store.close()
        path.unlink(missing_ok=True)
        Path(f"{path}.lock").unlink(missing_ok=True)
        raise ClefError(f"none of the {len(skipped)} inputs could be read (first: {skipped[0]}); nothing was "
                        "embedded and no store was written", path=path,
                        hint="check the files: photos in a common image format, videos that open in a player")
    store.mark_complete()


def index_step(summary: dict, build) -> ClefError | None:
    """``embed``'s last step: ``summary["index"] = build()``. Its error (a full disk while saving the
    index) is returned, to be raised once the run's files are written: the store is complete."""
    try:
        summary["index"] = build()
    except ClefError as exc:
        return exc
    return None


__all__ = ["stopping", "finish", "index_step"]
