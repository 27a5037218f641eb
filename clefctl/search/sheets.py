"""Contact sheets of query hits (thumbnails decoded reduced, cut to the face box)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from clefctl.errors import ClefError

log = logging.getLogger(__name__)



# ----------------------------------------------------------------------------------------------
# contact sheets
# ----------------------------------------------------------------------------------------------


def _thumb(row, size: int):
    from PIL import ImageOps

    path = row.get("path") or ""
    if not path:
        return None, "no image file"
    bw = row.get("box_w", -1)
    box = None
    if bw is not None and not (isinstance(bw, float) and np.isnan(bw)) and int(bw) > 0:
        box = (row["box_x"], row["box_y"], row["box_w"], row["box_h"])
    try:
        img = _hit_image(path, row.get("frame"), box, size)
    except FileNotFoundError:
        return None, "not found"
    except (OSError, ValueError, ClefError):
        return None, "unreadable"
    return ImageOps.pad(img, (size, size), color=(30, 30, 30)), ""


def _hit_image(path: str, frame, box=None, min_side: int | None = None):
    """The face of a hit: the file (decoded reduced while the face keeps ``min_side`` pixels), or for a
    video its frame (1-based) read back, cut to ``box`` (x, y, w, h) when given."""
    import pandas as pd
    from PIL import Image

    from clefctl.data.faces import is_video, read_frame
    from clefctl.data.images import crop_to_box, read_cropped

    if not is_video(path):
        face = read_cropped(path, box, min_side)
        return face if face is not None else read_cropped(path, None, min_side)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    if frame is None or pd.isna(frame) or int(frame) < 1:
        raise ClefError("a video hit without a frame number", path=path)
    img = Image.fromarray(read_frame(path, int(frame)))
    face = crop_to_box(img, box) if box is not None else None
    return img if face is None else face


def contact_sheet_of_hits(hits, out_png: str | os.PathLike, *, cols: int = 5, thumb: int = 128,
                          title: str | None = None) -> Path:
    """Draw search hits as a grid of thumbnails captioned with rank, score, id and labels.

    ``hits`` is a DataFrame from :func:`query_text` / :func:`query_image` (or a list of them:
    one row of the sheet per query). An image that cannot be read gets a grey tile, and how many
    did is logged as a warning (stderr); when no image at all can be read a :class:`ClefError`
    is raised and no sheet written. Written atomically.
    """
    import pandas as pd

    from clefctl.plots import Tile, thumbnail_grid

    frames = hits if isinstance(hits, (list, tuple)) else [hits]
    frames = [f if isinstance(f, pd.DataFrame) else pd.DataFrame(f) for f in frames]
    if not frames or all(len(f) == 0 for f in frames):
        raise ClefError("no hits to draw")
    sections = []
    failed: list[tuple[str, str]] = []   # (path or id, why) of the tiles drawn grey
    for f in frames:
        head = title if (title and len(frames) == 1) else (f.attrs.get("query") or title or "")
        cells = []
        for i, (_, r) in enumerate(f.iterrows()):
            rec = r.to_dict()
            img, why = _thumb(rec, thumb)
            if img is None:
                failed.append((str(rec.get("path") or rec.get("id", "")), why))
            line1 = f"#{int(rec.get('rank', i + 1))} {float(rec.get('score', float('nan'))):.3f} {rec.get('id', '')}"
            cells.append(Tile(img, (line1, str(rec.get("labels", ""))), note=why))
        sections.append((str(head), cells))
    tiles = sum(len(f) for f in frames)
    if failed:
        where, why = failed[0]
        if len(failed) == tiles:
            moved = any(w != "no image file" for _, w in failed)
            raise ClefError(f"none of the {tiles} hit images could be read for the contact sheet "
                            f"(e.g. {where}: {why})", path=frames[0].attrs.get("store"),
                            hint=("the image files were moved or deleted since `clefctl embed`; "
                                  "embed them again from where they are now") if moved else
                                 "the store's images were embedded from memory, not from files")
        log.warning("%d of %d hit images could not be read and are drawn as grey tiles "
                    "(e.g. %s: %s)", len(failed), tiles, where, why)
    return thumbnail_grid(sections, out_png, cols=cols, tile_px=thumb)
