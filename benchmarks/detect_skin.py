"""Benchmark: face detection recall by skin tone, with and without the dark-face search, same run.

OpenCV's Haar cascades miss darker-skinned faces far more often than lighter ones (docs/predict.md).
:class:`clefctl.data.faces.detect.HaarDetector` has a second search of a gamma-brightened copy
(``dark="merge"`` for photos and video key frames, ``"fallback"`` for data-set frames). This script
renders ``--faces`` synthetic identities over the renderer's whole range of skin tones, one face per
360x300 photo (:func:`clefctl.data.faces.scenes.skin_tone_photos`; none screened out), and prints for
each detector setting the recall per band of skin luminance, the false positives on ``--backgrounds``
face-free images, and the milliseconds per image, with the dark-face search off and on.

    python benchmarks/detect_skin.py                 # 150 faces, 300 backgrounds
    python benchmarks/detect_skin.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

BANDS = ((0, 110), (110, 140), (140, 170), (170, 200), (200, 256))


def found(det, rgb, box) -> bool:
    x, y, w, h = box
    return any(abs(d.box[0] - x) < w / 2 and abs(d.box[1] - y) < h / 2 for d in det.detect(rgb))


def main() -> None:
    from clefctl.data.faces.detect import HaarDetector
    from clefctl.data.faces.scenes import background, skin_tone_photos

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=150)
    ap.add_argument("--backgrounds", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import cv2

    cv2.setNumThreads(1)
    photos = skin_tone_photos(args.faces)
    empty = [background(640, 360, 100 + s) for s in range(args.backgrounds)]
    rows = []
    for name in ("photos", "video", "frames"):
        for dark in (False, True):
            det = getattr(HaarDetector, f"for_{name}")()
            if not dark:
                det.dark = "off"
            t0 = time.perf_counter()
            hits = [(lum, found(det, rgb, box)) for lum, rgb, box in photos]
            ms = 1000 * (time.perf_counter() - t0) / len(photos)
            bands = {f"{lo}-{hi}": (float(np.mean([h for lum, h in hits if lo <= lum < hi])) if
                                    any(lo <= lum < hi for lum, _ in hits) else None,
                                    sum(lo <= lum < hi for lum, _ in hits)) for lo, hi in BANDS}
            fp = sum(len(det.detect(bg)) for bg in empty)
            rows.append({"setting": name, "dark": det.dark, "recall_by_luminance": bands,
                         "recall": float(np.mean([h for _, h in hits])), "false_positives": fp,
                         "ms_per_image": ms})
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_average": os.getloadavg(), "faces": args.faces,
              "backgrounds": args.backgrounds, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.faces} synthetic faces (one per 360x300 photo), {args.backgrounds} face-free 640x360 "
          f"backgrounds; load {result['load_average'][0]:.1f}")
    print("recall by skin luminance (faces in the band):")
    print(f"  {'setting':<8} {'dark search':<12}" + "".join(f"{f'{lo}-{hi}':<12}" for lo, hi in BANDS)
          + "all   false pos.  ms/image")
    for r in rows:
        cells = "".join(f"{f'{v:.2f} ({n})' if v is not None else '-':<12}" for v, n in r["recall_by_luminance"].values())
        print(f"  {r['setting']:<8} {r['dark']:<12}{cells}{r['recall']:.2f}  {r['false_positives']:<11} "
              f"{r['ms_per_image']:.1f}")


if __name__ == "__main__":
    main()
