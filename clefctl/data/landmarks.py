"""The 5 facial landmarks' names, in the detector's order (YuNet's: the subject's right eye, left eye,
nose tip, right and left mouth corner), and their 10 columns in every table clefctl writes (the
predictions CSV, faces.csv, the store): x of each, then y of each, in source pixels. Imports nothing,
so the store reads its landmark columns without the face pipeline (:mod:`clefctl.data.faces.template`,
the alignment template, uses them too)."""

LANDMARK_NAMES = ("right_eye", "left_eye", "nose_tip", "right_mouth", "left_mouth")
LANDMARK_COLUMNS = tuple(f"lmk_x_{i}" for i in range(5)) + tuple(f"lmk_y_{i}" for i in range(5))

__all__ = ["LANDMARK_NAMES", "LANDMARK_COLUMNS"]
