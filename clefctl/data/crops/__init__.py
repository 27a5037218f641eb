"""The face-crop cache of whole-frame data sets (BP4D, BP4D+, DISFA): each frame's face detected,
levelled and cropped once, read by training, evaluation and embedding instead of the full frame.

* :mod:`~clefctl.data.crops.layout`: where a cache lives, its key, entry files;
* :mod:`~clefctl.data.crops.worker`: cropping a run of frames (worker processes, no torch);
* :mod:`~clefctl.data.crops.build`: ``clefctl data prepare --dataset``, resumable;
* :mod:`~clefctl.data.crops.use`: finding a complete, fresh cache and mapping samples to crops.
"""

from clefctl.data.crops.build import DatasetPrepareReport, prepare_dataset
from clefctl.data.crops.layout import CropSettings, cache_base, cache_folder
from clefctl.data.crops.use import CropCache, crop_cache_for

__all__ = ["CropCache", "CropSettings", "DatasetPrepareReport", "cache_base", "cache_folder", "crop_cache_for",
           "prepare_dataset"]
