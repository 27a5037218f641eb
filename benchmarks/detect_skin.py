"""Benchmark: face detection by skin tone, false faces and alignment, YuNet against Haar in one run.

Every figure is measured for both detectors in the same run (issue 21, item 7); the targets are
the issue's. Needs YuNet's file (``clefctl weights get yunet``); it never downloads itself.

* **Synthetic skin bands**: ``--faces`` synthetic identities over the renderer's whole range of
  skin tones, one face per 360x300 photo (:func:`clefctl.data.faces.scenes.skin_tone_photos`, none
  screened out), searched with each detector setting (``photos``, ``video`` key frames, data-set
  ``frames``): recall per band of skin luminance, YuNet vs Haar with its dark-face search off and on
  (on: ``merge`` for photos and video, ``fallback`` for frames, as the product runs it). Target:
  YuNet recall >= 0.95 in every band, every setting. Also ms per image (one core).
* **False faces**: the share of face-free images with any face reported (target <= 1%), on
  ``--backgrounds`` synthetic 640x360 backgrounds and on real face-free photos from scikit-image
  (brick, grass, gravel, coffee, rocket, chelsea (a cat), moon, horse, text, clock,
  hubble_deep_field, immunohistochemistry, colorwheel, retina, cell, logo, page): each whole image
  plus ``--views`` random 640x360 windows of it at random scales; and the 100 non-face 25x25 patches
  of ``lfw_subset`` (backgrounds of LFW photos), upscaled to 120 px on synthetic backgrounds.
* **Real faces**: scikit-image's astronaut (Eileen Collins) and camera (the cameraman), whole, and
  ``--lfw`` of the 100 faces of ``lfw_subset`` (25x25 grey crops; its other 100 images are
  non-faces) upscaled to 120 px on synthetic backgrounds: recall per setting. ``--transform-faces``
  of them (and the two photos) are also darkened and lightened (a gain so the face's mean luminance
  sits at each band's centre): a TRANSFORM of real faces, not real skin tones, reported as such.
* **Alignment**: astronaut, camera and ``--align-lfw`` LFW faces (upscaled to 160 px) rotated by
  +-10 and +-20 degrees; the truth is the unrotated face's YuNet landmarks carried through the
  rotation (as ``tests/test_yunet.py::test_a_rotated_face_gives_a_level_crop``). For YuNet: the eye
  line of the truth in the aligned crop (:func:`align_matrix` of the found landmarks); for Haar: the
  true eye angle less the eye cascade's levelling angle (``FaceCropper(detector="haar")``; an
  unlevelled crop keeps the whole tilt). Target: mean <= 5 degrees from level.

    python benchmarks/detect_skin.py                 # 150 faces, 300 backgrounds, 100 LFW faces
    python benchmarks/detect_skin.py --faces 60 --backgrounds 100 --lfw 60 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from _yunet import yunet_or_exit  # noqa: E402  (benchmarks/ is the script folder)

BANDS = ((0, 110), (110, 140), (140, 170), (170, 200), (200, 256))
SETTINGS = ("photos", "video", "frames")
ANGLES = (-20, -10, 10, 20)
FACE_FREE = ("brick", "grass", "gravel", "coffee", "rocket", "chelsea", "moon", "horse", "text", "clock",
             "hubble_deep_field", "immunohistochemistry", "colorwheel", "retina", "cell", "logo", "page")
# hand-checked face boxes (x, y, w, h) of scikit-image's two real photos with a face
REAL_BOXES = {"astronaut": (176, 62, 94, 112), "camera": (198, 120, 60, 76)}


def rgb_of(im) -> np.ndarray:
    """Any scikit-image sample (grey, bool, RGBA, float) as RGB uint8."""
    a = np.asarray(im)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    return np.ascontiguousarray(a[..., :3])


def found(dets, box) -> bool:
    x, y, w, h = box
    return any(abs(d.box[0] - x) < w / 2 and abs(d.box[1] - y) < h / 2 for d in dets)


def face_free_images(n_synth: int, views: int) -> tuple[list, list]:
    """(synthetic backgrounds, real face-free images with their names: scikit-image's photos and
    windows of them, LFW's non-face patches)."""
    import cv2
    from skimage import data

    from clefctl.data.faces.scenes import background

    synth = [background(640, 360, 100 + s) for s in range(n_synth)]
    rng = np.random.default_rng(7)
    real = []
    for name in FACE_FREE:
        im = rgb_of(getattr(data, name)())
        real.append((name, im))
        for v in range(views):
            s = rng.uniform(1.0, 2.5) * max(640 / im.shape[1], 360 / im.shape[0])
            big = cv2.resize(im, (max(640, round(im.shape[1] * s)), max(360, round(im.shape[0] * s))),
                             interpolation=cv2.INTER_CUBIC)
            x, y = int(rng.integers(0, big.shape[1] - 639)), int(rng.integers(0, big.shape[0] - 359))
            real.append((f"{name}/{v}", np.ascontiguousarray(big[y:y + 360, x:x + 640])))
    real += [(f"lfw-nonface/{k}", rgb) for k, (_, rgb, _) in enumerate(lfw_photos(100, first=LFW_FACES))]
    return synth, real


LFW_FACES = 100      # lfw_subset: the first 100 of its 200 images are faces, the rest non-faces


def lfw_photos(n: int, face: int = 120, width: int = 360, height: int = 300, first: int = 0) -> list:
    """``n`` LFW images from ``first`` (grey 25x25; faces below :data:`LFW_FACES`) upscaled to
    ``face`` px, each centred on its own background."""
    import cv2
    from skimage import data

    from clefctl.data.faces.scenes import background

    lfw = data.lfw_subset()
    out = []
    x, y = (width - face) // 2, (height - face) // 2
    for k in range(first, min(first + n, len(lfw) if first else LFW_FACES)):
        f = cv2.resize((lfw[k] * 255).astype(np.uint8), (face, face), interpolation=cv2.INTER_CUBIC)
        canvas = background(width, height, 500 + k % LFW_FACES)
        canvas[y:y + face, x:x + face] = f[..., None]
        out.append((f"lfw/{k}", canvas, (x, y, face, face)))
    return out


def real_photos(lfw: int) -> list:
    from skimage import data

    return [(n, rgb_of(getattr(data, n)()), REAL_BOXES[n]) for n in ("astronaut", "camera")] + lfw_photos(lfw)


def transformed(real: list) -> list:
    """The real faces with a gain putting the face's mean luminance at each band's centre:
    ``(band, name, rgb, box)``. A transform of real faces, not real skin tones."""
    out = []
    for lo, hi in BANDS:
        target = (lo + min(hi, 235)) / 2.0
        for name, rgb, (x, y, w, h) in real:
            face = rgb[y + h // 4:y + 3 * h // 4, x + w // 4:x + 3 * w // 4].astype(np.float32)
            lum = float((face @ np.array([0.299, 0.587, 0.114], np.float32)).mean())
            out.append((f"{lo}-{hi}", name, np.clip(rgb.astype(np.float32) * (target / max(lum, 1.0)), 0, 255)
                        .astype(np.uint8), (x, y, w, h)))
    return out


def band_table(hits: list[tuple[float, bool]]) -> dict:
    return {f"{lo}-{hi}": ((float(np.mean([h for lum, h in hits if lo <= lum < hi]))
                            if any(lo <= lum < hi for lum, _ in hits) else None),
                           sum(lo <= lum < hi for lum, _ in hits)) for lo, hi in BANDS}


def detectors(yunet, setting: str) -> list[tuple[str, object]]:
    """(label, detector) for one setting: YuNet, Haar with the dark-face search off, and as the product runs it."""
    from clefctl.data.faces.detect import HaarDetector

    off = getattr(HaarDetector, f"for_{setting}")()
    off.dark = "off"
    on = getattr(HaarDetector, f"for_{setting}")()
    return [("yunet", yunet.make(setting)), ("haar", off), ("haar", on)]


def alignment(yunet, lfw: int) -> dict:
    """Eye line of the aligned crop vs level on rotated real faces, YuNet and Haar."""
    import cv2
    from skimage import data

    from clefctl.data.faces import FaceCropper
    from clefctl.data.faces.scenes import background
    from clefctl.data.faces.template import align_matrix, eye_angle, map_points

    faces = [(n, rgb_of(getattr(data, n)())) for n in ("astronaut", "camera")]
    pics = data.lfw_subset()
    for k in range(min(lfw, LFW_FACES)):
        canvas = background(400, 400, 900 + k)
        canvas[120:280, 120:280] = cv2.resize((pics[k] * 255).astype(np.uint8), (160, 160),
                                              interpolation=cv2.INTER_CUBIC)[..., None]
        faces.append((f"lfw/{k}", canvas))
    yc = FaceCropper(size=224, detector=yunet)
    hc = FaceCropper(size=224, detector="haar")
    res = {"yunet": {a: [] for a in ANGLES}, "haar": {a: [] for a in ANGLES}}
    found_n = {"yunet": 0, "haar": 0}
    levelled = 0
    tried = 0
    skipped = []
    for name, img in faces:
        ref = yc.crop(img)
        if not ref.found:
            skipped.append(name)
            continue
        H, W = img.shape[:2]
        for a in ANGLES:
            tried += 1
            centre = tuple(float(v) for v in ref.landmarks.mean(0))
            turn = cv2.getRotationMatrix2D(centre, a, 1.0)
            rotated = cv2.warpAffine(img, turn, (W, H), borderMode=cv2.BORDER_REFLECT)
            truth = map_points(turn, ref.landmarks)
            y = yc.crop(rotated)
            if y.found and _on(y.box, truth):
                found_n["yunet"] += 1
                res["yunet"][a].append(abs(eye_angle(map_points(align_matrix(y.landmarks, 224), truth))))
            h = hc.crop(rotated)
            if h.found and _on(h.box, truth):
                found_n["haar"] += 1
                levelled += bool(h.aligned)
                bx, by, bw, bh = h.box
                level = cv2.getRotationMatrix2D((bx + bw / 2, by + bh / 2), h.angle, 1.0)
                res["haar"][a].append(abs(eye_angle(map_points(level, truth))))
    out = {"faces": len(faces) - len(skipped), "skipped_no_reference": skipped, "rotated_images": tried,
           "haar_levelled": levelled}
    for det in ("yunet", "haar"):
        allv = [v for a in ANGLES for v in res[det][a]]
        out[det] = {"found": found_n[det], "mean_deg": float(np.mean(allv)) if allv else None,
                    "max_deg": float(np.max(allv)) if allv else None,
                    "by_angle": {str(a): (float(np.mean(res[det][a])) if res[det][a] else None, len(res[det][a]))
                                 for a in ANGLES}}
    return out


def _on(box, points) -> bool:
    """True when the found box holds the true eyes (the right face was cropped)."""
    x, y, w, h = box
    return all(x <= px <= x + w and y <= py <= y + h for px, py in points[:2])


def fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=150, help="synthetic faces (skin bands)")
    ap.add_argument("--backgrounds", type=int, default=300, help="synthetic face-free 640x360 backgrounds")
    ap.add_argument("--views", type=int, default=5, help="random 640x360 windows of each real face-free image")
    ap.add_argument("--lfw", type=int, default=LFW_FACES, help="LFW faces (upscaled) for real-face recall "
                    f"(at most {LFW_FACES})")
    ap.add_argument("--transform-faces", type=int, default=40,
                    help="LFW faces darkened/lightened into each band (a transform; 0: skip)")
    ap.add_argument("--align-lfw", type=int, default=20, help="LFW faces in the rotation study")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import cv2

    cv2.setNumThreads(1)
    yunet = yunet_or_exit()
    from clefctl.data.faces.scenes import skin_tone_photos

    photos = skin_tone_photos(args.faces)
    synth_free, real_free = face_free_images(args.backgrounds, args.views)
    real = real_photos(args.lfw)
    moved = transformed([(n, r, b) for n, r, b in real[:2 + args.transform_faces]]) if args.transform_faces else []
    rows = []
    for setting in SETTINGS:
        for label, det in detectors(yunet, setting):
            t0 = time.perf_counter()
            hits = [(lum, found(det.detect(rgb), box)) for lum, rgb, box in photos]
            ms = 1000 * (time.perf_counter() - t0) / len(photos)
            bands = band_table(hits)
            row = {"setting": setting, "detector": label, "dark": getattr(det, "dark", "-"),
                   "recall_by_luminance": bands, "recall": float(np.mean([h for _, h in hits])),
                   "min_band_recall": min(v for v, _ in bands.values() if v is not None), "ms_per_image": ms}
            if label == "yunet" or det.dark != "off":     # the rest: the detector as the product runs it
                fs = [bool(det.detect(bg)) for bg in synth_free]
                fr = [(name, [(round(d.confidence, 2), [round(v) for v in d.box]) for d in det.detect(im)])
                      for name, im in real_free]
                row["fp_synthetic"] = (sum(fs), len(fs))
                row["fp_real"] = (sum(bool(d) for _, d in fr), len(fr))
                row["fp_real_images"] = {n: d for n, d in fr if d}
                n_fp = sum(fs) + row["fp_real"][0]
                row["fp_share"] = n_fp / max(1, len(fs) + len(fr))
                rr = {n: found(det.detect(rgb), box) for n, rgb, box in real}
                lf = [v for n, v in rr.items() if n.startswith("lfw/")]
                row["real"] = {"astronaut": rr.get("astronaut"), "camera": rr.get("camera"),
                               "lfw": (float(np.mean(lf)) if lf else None, len(lf))}
                if moved:
                    tb = {}
                    for band, name, rgb, box in moved:
                        tb.setdefault(band, []).append(found(det.detect(rgb), box))
                    row["transformed_real_by_band"] = {b: (float(np.mean(v)), len(v)) for b, v in tb.items()}
            rows.append(row)
    align = alignment(yunet, args.align_lfw)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average": os.getloadavg(),
              "cores": os.cpu_count(), "faces": args.faces, "backgrounds": args.backgrounds,
              "real_face_free": len(real_free), "lfw": args.lfw, "transform_faces": args.transform_faces,
              "yunet": yunet.describe(), "rows": rows, "alignment": align}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    ok = lambda good: "ok" if good else "MISSED"  # noqa: E731
    print(f"{result['date']}, {os.cpu_count()} cores, one thread, load {result['load_average'][0]:.1f}; "
          f"YuNet {yunet.describe()}")
    print(f"{args.faces} synthetic faces (one per 360x300 photo); face-free: {args.backgrounds} synthetic 640x360 "
          f"backgrounds + {len(real_free)} real scikit-image images ({len(FACE_FREE)} whole + {args.views} "
          f"windows each + {len(real_free) - len(FACE_FREE) * (1 + args.views)} LFW non-face patches)")
    print("recall by skin luminance (faces in the band), target >= 0.95 in every band:")
    print(f"  {'setting':<7} {'detector':<9}{'dark':<9}" + "".join(f"{f'{lo}-{hi}':<11}" for lo, hi in BANDS)
          + "all   ms/img  verdict")
    for r in rows:
        cells = "".join(f"{f'{v:.2f} ({n})' if v is not None else '-':<11}"
                        for v, n in r["recall_by_luminance"].values())
        print(f"  {r['setting']:<7} {r['detector']:<9}{r['dark']:<9}{cells}{r['recall']:.2f}  "
              f"{r['ms_per_image']:6.1f}  {ok(r['min_band_recall'] >= 0.95)}")
    print("false faces (share of face-free images with a face), target <= 1%; real faces found:")
    print(f"  {'setting':<7} {'detector':<9}{'dark':<9}{'synthetic':<12}{'real':<10}{'all':<9}{'verdict':<8}"
          f"astronaut camera  LFW (n)")
    for r in rows:
        if "fp_share" not in r:
            continue
        (fs, ns), (fr, nr) = r["fp_synthetic"], r["fp_real"]
        lf, nl = r["real"]["lfw"]
        print(f"  {r['setting']:<7} {r['detector']:<9}{r['dark']:<9}{f'{fs}/{ns}':<12}{f'{fr}/{nr}':<10}"
              f"{r['fp_share']:<9.1%}{ok(r['fp_share'] <= 0.01):<8}{str(r['real']['astronaut']):<10}"
              f"{str(r['real']['camera']):<8}{fmt(lf)} ({nl})")
        if r["fp_real_images"]:
            print("      real face-free images with a face: " + "; ".join(
                f"{n} {d}" for n, d in list(r["fp_real_images"].items())[:6]))
    if moved:
        print(f"TRANSFORM, not real skin tones: astronaut, camera and {args.transform_faces} LFW faces with a gain "
              "putting the face's mean luminance at each band's centre; recall:")
        for r in rows:
            if "transformed_real_by_band" in r:
                cells = "".join(f"{f'{v:.2f} ({n})':<11}" for v, n in r["transformed_real_by_band"].values())
                print(f"  {r['setting']:<7} {r['detector']:<9}{r['dark']:<9}{cells}")
    a = align
    print(f"alignment: {a['faces']} real faces (astronaut, camera, LFW upscaled) rotated by {ANGLES} degrees "
          f"({a['rotated_images']} images); eye line of the crop vs level, target mean <= 5 degrees:")
    for det in ("yunet", "haar"):
        d = a[det]
        per = ", ".join(f"{k}: {fmt(v, '.1f')} ({n})" for k, (v, n) in d["by_angle"].items())
        extra = f"; eye cascade levelled {a['haar_levelled']} of them" if det == "haar" else ""
        print(f"  {det:<6} found {d['found']}/{a['rotated_images']}{extra}; mean {fmt(d['mean_deg'], '.1f')} deg, "
              f"max {fmt(d['max_deg'], '.1f')} [{ok(d['mean_deg'] is not None and d['mean_deg'] <= 5)}]; "
              f"by angle {per}")
    if a["skipped_no_reference"]:
        print(f"  (no reference landmarks, left out: {', '.join(a['skipped_no_reference'])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
