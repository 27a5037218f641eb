"""What the face benchmarks share: YuNet's file from the weights registry, never a download."""

from __future__ import annotations

import os
import sys


def yunet_or_exit():
    """The resolved YuNet choice, or one line telling how to get its file (exit 2)."""
    os.environ.setdefault("CLEF_OFFLINE", "1")     # a benchmark measures; it never downloads
    from clefctl.data.faces.choice import resolve_detector
    from clefctl.errors import ClefError

    try:
        return resolve_detector("yunet")
    except ClefError as exc:
        print(f"{os.path.basename(sys.argv[0])}: YuNet is not available ({exc.bare_message.rstrip('.')}); "
              "run `clefctl weights get yunet` first", file=sys.stderr)
        raise SystemExit(2)
