"""Pins of the synthetic generator's output (a refactor must not move a pixel), the annotated-faces
iterator over the sidecar, and the one thumbnail grid."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import PIL
import pytest
from PIL import Image

from clefctl.data import synthetic as S
from clefctl.errors import ClefError


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


POSE = dict(angle=5.0, scale=1.03, dx=0.01, dy=-0.02, light_angle=1.0, light_amp=0.2, noise=2.0,
            gaze=0.01)
#: (identity name, identity seed, AUs, framing) -> sha256 of the pixels, of the boxes' JSON.
#: Recorded with the single-module generator (before the package split).
RENDER_PINS = [
    ("F001", 3, {"AU12": 0.9, "AU6": 0.8}, "AU",
     "9a2254b14ed627d80cad2a1f0c440b8cdcfa6e4437d48936012033981f4c0036",
     "2bae237846d56cb4bd740d519426cde9f7e3ef99a424566ca24ea7615871f507"),
    ("M002", 5, {a: 1.0 for a in S.AU_IDS}, "FER",   # glasses, short hair, every AU
     "ccafaa0a0412cabc5de641cd11ef0f8ed021859748702ae9f649ae0e525147b2",
     "dba1f879dc7014d7c30e37c859520746dabe5316590a0c1ad3bdd741284da144"),
    ("F003", 8, {"AU25": 0.7, "AU26": 0.9, "AU1": 1, "AU2": 1, "AU5": 1, "AU4": 0.3}, "AU",  # fringe
     "5be17559f00cc0fab463d5ca25244b12f1738f8dba4cb8208f8e71dda9fa46e1",
     "242f4ce3266141a34e19553bfc8ae31c9d0fa1e4c272f6f92c29cda7c9fc2294"),
]


@pytest.mark.parametrize("name,seed,aus,framing,pixels,boxes", RENDER_PINS)
def test_render_face_pixels_and_boxes_are_pinned(name, seed, aus, framing, pixels, boxes):
    ident = S.make_identity(name, np.random.default_rng(seed))
    img, regions = S.render_face(ident, aus, S.Pose(**POSE), size=80, seed=seed,
                                 **(S.AU_FRAMING if framing == "AU" else S.FER_FRAMING))
    assert _sha(img.tobytes()) == pixels
    assert _sha(json.dumps(regions, sort_keys=True).encode()) == boxes


AU_TEXT_PINS = {
    "AUCoding/AU_OCC/F001_T1.csv": "ec51ab4e8f4a62e7ef763a4252c5f1cdf7e74398d21966b27a458b9d7717bc46",
    "AUCoding/AU_OCC/F001_T2.csv": "463e1022971efcc2cd6316a3737b694ef035a087f3de6493b2119b1e65206282",
    "AUCoding/AU_OCC/F002_T1.csv": "c75df4873ec623c1a7134d8c31002ea05a6b6d0b1339d28084fe4154bd2e7c0c",
    "AUCoding/AU_OCC/F002_T2.csv": "ae6e95cc314ad5c1f304d1ed7169c6e93125618b81b3f9f0a187ea4ce6bff4a6",
    "AUCoding/AU_OCC/M001_T1.csv": "c76986ead438ff76875bec62a8e086adab9773bb4a8f8c96651d32c8d2a97470",
    "AUCoding/AU_OCC/M001_T2.csv": "6801d2bdb936317099446315edd002e340102bcf1577e8cafec1a90c609be7bb",
    "synthetic.json": "50c1c3cbcb6684a9c3cbdcc93b669682fd859c2358b01b9a88912b2af21cb958",
}
FER_TEXT_PINS = {
    "EmoLabel/list_patition_label.txt": "c52e6b9cc12348063975e5f68eade7c2ccd38a1918b71f16755fbdf78a8e89f4",
    "synthetic.json": "441508c6e59469c5551c1a2cc22a7dbf78fbdbfa6b48f9077e81c5abb2c23cd3",
}
#: sha256 over the sorted JPEGs' sha256s; JPEG bytes also depend on Pillow's libjpeg, so these are
#: only checked under the Pillow they were recorded with.
JPEG_PINS = {"au": (12, "7d0308c66cbd3e9fbe51a696303a98314b403a59ad53c34356aef4ad4a370a55"),
             "fer": (21, "6578a22019a3692560de26a8ee6cc6b05a951eaa5573f296665b39bc5077a29a")}
JPEG_PILLOW = "13.0.0"


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("pins")
    au = S.write_au(d / "au", subjects=3, tasks=2, frames_per_task=2, size=64, seed=0, workers=1,
                    progress=False)
    fer = S.write_fer(d / "fer", subjects=4, images_per_class=3, size=64, seed=0, workers=1,
                      progress=False)
    return {"au": au, "fer": fer}


@pytest.mark.parametrize("kind,pins", [("au", AU_TEXT_PINS), ("fer", FER_TEXT_PINS)])
def test_label_files_and_sidecars_are_pinned(small_sets, kind, pins):
    root = small_sets[kind]
    got = {str(p.relative_to(root)): _sha(p.read_bytes()) for p in sorted(root.rglob("*"))
           if p.is_file() and p.suffix != ".jpg"}
    assert got == pins


@pytest.mark.parametrize("kind", ["au", "fer"])
def test_jpeg_bytes_are_pinned(small_sets, kind):
    jpgs = sorted(small_sets[kind].rglob("*.jpg"))
    count, digest = JPEG_PINS[kind]
    assert len(jpgs) == count
    if PIL.__version__ != JPEG_PILLOW:
        pytest.skip(f"JPEG bytes depend on the libjpeg inside Pillow; these pins were recorded with Pillow "
                    f"{JPEG_PILLOW}, this is {PIL.__version__} (the pixel and label pins above still run)")
    assert _sha(b"".join(_sha(p.read_bytes()).encode() for p in jpgs)) == digest


# ---------------------------------------------------------------- annotated faces

def test_annotated_faces_read_the_sidecar(small_sets):
    au, fer = small_sets["au"], small_sets["fer"]
    meta = S.read_sidecar(au)
    faces = list(S.annotated_faces(au))
    assert len(faces) == len(meta["images"]) == 3 * 2 * 2
    first, entry = faces[0], meta["images"][0]
    assert first.path == au / entry["path"] and first.path.is_file()
    assert first.rel_path == entry["path"]
    assert first.id == f"{entry['subject']}/{entry['task']}/{entry['frame']}"
    assert (first.subject, first.identity, first.task, first.frame) == (
        entry["subject"], entry["identity"], entry["task"], entry["frame"])
    assert first.regions == entry["regions"] and first.au_intensity == entry["au_intensity"]
    assert first.au_labels == {k: int(v >= 0.5) for k, v in entry["au_intensity"].items()}
    assert first.split is None and first.expression is None
    assert first.au_boxes("AU12") == [b for p in S.au_regions()["AU12"] for b in entry["regions"][p]]
    assert first.boxes(["nose"]) == entry["regions"]["nose"]
    with Image.open(first.path) as im:
        w, h = im.size
    assert all(0 <= b[0] <= b[2] <= w and 0 <= b[1] <= b[3] <= h
               for boxes in first.regions.values() for b in boxes)
    only = list(S.annotated_faces(au, subjects=["M001"], meta=meta))
    assert len(only) == 4 and {f.subject for f in only} == {"M001"}
    # the ids are the ones the BP4D / RAF-DB adapters give the same images
    from clefctl.data import load_dataset

    bundle = load_dataset("bp4d", root=au)
    assert {f.id for f in faces} == {s.id for s in bundle.samples}
    fer_faces = list(S.annotated_faces(fer))
    assert len(fer_faces) == 7 * 3
    f0 = fer_faces[0]
    assert f0.split in ("train", "test") and f0.expression in S.EXPRESSIONS
    assert f0.label == S.EXPRESSIONS.index(f0.expression) + 1 and f0.subject == f0.identity
    assert {f.id for f in fer_faces} == {s.id for s in load_dataset("rafdb", root=fer).samples}


def test_annotated_faces_need_a_sidecar(tmp_path):
    with pytest.raises(ClefError, match="synthetic.json"):
        list(S.annotated_faces(tmp_path))


# ---------------------------------------------------------------- thumbnail grid

def test_thumbnail_grid_layout_and_placeholders(tmp_path):
    from clefctl.plots import Tile, thumbnail_grid

    red = Image.new("RGB", (20, 10), (255, 0, 0))
    tiles = [Tile(red, ("first", "AU 1+2+4+5+6+7+9+10+12")), Tile(None, ("second",), note="gone"),
             Tile(red, ("third",))]
    out = thumbnail_grid([("query one", tiles), (None, tiles[:1])], tmp_path / "g.png", cols=2,
                         tile_px=40, pad=2)
    with Image.open(out) as im:
        arr = np.asarray(im.convert("RGB"))
    cap_h, head_h = 4 + 2 * 15, 18     # font 10 px: 15 px a line
    assert arr.shape[1] == 2 + 2 * (40 + 2)
    assert arr.shape[0] == 2 + head_h + 2 * (40 + cap_h + 2) + 1 * (40 + cap_h + 2)
    y = 2 + head_h
    assert tuple(arr[y + 20, 2 + 20]) == (255, 0, 0)          # fitted, aspect kept
    assert tuple(arr[y + 2, 2 + 20]) == (30, 30, 30)          # the bars around it
    assert tuple(arr[y + 2, 2 + 42 + 2]) == (160, 160, 160)   # the unreadable tile
    wrapped = thumbnail_grid([(None, tiles[:1])], tmp_path / "w.png", cols=1, tile_px=40,
                             wrap=True)
    with Image.open(wrapped) as im:
        assert im.size[1] > 40 + cap_h   # the long AU line wraps into more lines
