"""Faces in photos and videos: detection, eye alignment, crops, tracking, video frames.

One home per concept:

* :mod:`~clefctl.data.faces.inputs`: files, folders and globs -> images and videos; decoding;
* :mod:`~clefctl.data.faces.video`: streaming video frames, frame counts, reading one frame back;
* :mod:`~clefctl.data.faces.detect`: the :class:`Detector` interface and :class:`HaarDetector`
  (OpenCV's bundled cascades, offline; on a reduced copy);
* :mod:`~clefctl.data.faces.align`: eye alignment (:class:`EyeAligner`), square crops
  (:func:`crop_square`), :class:`FaceCropper` (the largest face of one image);
* :mod:`~clefctl.data.faces.keyframes`: full detection on key frames, template following between;
* :mod:`~clefctl.data.faces.track`: face ids along a video (:class:`Tracker`: overlap + appearance,
  gaps, re-entry);
* :mod:`~clefctl.data.faces.pipeline`: :func:`iter_faces`, the one pipeline ``predict`` and
  ``embed PATH...`` share (streaming, batched through the model);
* :mod:`~clefctl.data.faces.prepare`: ``clefctl data prepare`` (crops + faces.csv);
* :mod:`~clefctl.data.faces.scenes`: generated group photos and videos with known faces (tests,
  benchmarks).

Everything runs offline on OpenCV's Haar cascades (``cv2.data.haarcascades``).
"""

from clefctl.data.faces.align import Box, CropResult, EyeAligner, FaceCropper, crop_square
from clefctl.data.faces.detect import Detection, Detector, HaarDetector, clip_box, neighbour_confidence
from clefctl.data.faces.inputs import (IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, expand_inputs, is_video, read_image,
                                       to_rgb_uint8)
from clefctl.data.faces.keyframes import KeyframeDetector
from clefctl.data.faces.pipeline import (Face, FrameFaces, PipelineStats, appearance, iter_faces,
                                         keyframe_interval, model_encoder)
from clefctl.data.faces.prepare import CSV_COLUMNS, PrepareReport, prepare
from clefctl.data.faces.track import Track, Tracker, iou_matrix
from clefctl.data.faces.video import (iter_video_frames, open_video, read_frame, video_fps,
                                      video_frame_estimate)

__all__ = [
    "Box", "CropResult", "EyeAligner", "FaceCropper", "crop_square", "Detection", "Detector", "HaarDetector",
    "clip_box", "neighbour_confidence", "IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "expand_inputs", "is_video",
    "read_image", "to_rgb_uint8", "KeyframeDetector", "Face", "FrameFaces", "PipelineStats", "appearance",
    "iter_faces", "keyframe_interval", "model_encoder", "CSV_COLUMNS", "PrepareReport", "prepare", "Track",
    "Tracker", "iou_matrix", "iter_video_frames", "open_video", "read_frame", "video_fps", "video_frame_estimate",
]
