"""Draws docs/img/align_template.png: clefctl's 5-point alignment template, and scikit-image's
astronaut (upright and rolled by 20 degrees) cut by it. Needs the YuNet file (`clefctl weights get yunet`).

    python docs/img/align_template.py
"""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from skimage import data  # noqa: E402

from clefctl.data.faces import FaceCropper  # noqa: E402
from clefctl.data.faces.template import LANDMARK_NAMES, template_points  # noqa: E402

SIZE = 224


def main() -> None:
    a = data.astronaut()
    rolled = cv2.warpAffine(a, cv2.getRotationMatrix2D((256, 256), 20, 1.0), (512, 512),
                            borderMode=cv2.BORDER_REFLECT)
    cropper = FaceCropper(size=SIZE, detector="yunet")
    crops = [np.asarray(cropper.crop(img).image) for img in (a, rolled)]
    pts = template_points(SIZE)
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    axes[0].imshow(rolled)
    axes[0].set_title("input: a face rolled by 20°", fontsize=10)
    for ax, img, title in ((axes[1], np.full((SIZE, SIZE, 3), 245, np.uint8), "the template (224 px, margin 0.25)"),
                           (axes[2], crops[0], "upright face, aligned"), (axes[3], crops[1], "rolled face, aligned")):
        ax.imshow(img)
        ax.scatter(pts[:, 0], pts[:, 1], s=28, c="#e4572e", edgecolors="white", linewidths=0.8, zorder=3)
        ax.set_title(title, fontsize=10)
    d = pts[1, 0] - pts[0, 0]
    t = axes[1]
    for (x, y), name in zip(pts, LANDMARK_NAMES):
        t.annotate(name.replace("_", " "), (x, y), (x + (8 if x >= SIZE / 2 else -8), y - 6), fontsize=7,
                   ha="left" if x >= SIZE / 2 else "right")
    eye_y = pts[0, 1]
    for y, label in ((eye_y - 0.4 * d, "brows ~0.4 d above the eyes"), (eye_y - 1.4 * d, "forehead / hairline ~1.4 d"),
                     (eye_y + 2.0 * d, "chin ~2 d below the eyes")):
        t.axhline(y, color="#4c72b0", lw=0.8, ls="--")
        t.text(3, y - 3, label, fontsize=7, color="#4c72b0")
    t.text(3, SIZE - 6, f"d (eye distance) = {d:.0f} px = side / 4", fontsize=7)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out = Path(__file__).with_suffix(".png")
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
