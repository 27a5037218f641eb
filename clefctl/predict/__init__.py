"""AUs and expressions of every face in photos and videos, as an OpenFace-compatible CSV.

* :mod:`~clefctl.predict.api`: :func:`run_predict` (:class:`PredictOptions`), ``clefctl predict``
  as a library call, and the keyword form :func:`predict`;
* :mod:`~clefctl.predict.scorers`: fine-tuned checkpoints (:class:`Predictor`, the newest run per
  task) or zero-shot scoring from a prompt set with any weights;
* :mod:`~clefctl.predict.schema`: the CSV columns (OpenFace names: ``frame`` 1-based,
  ``face_id``, ``success``, two-digit ``AU01_c`` / ``AU01_p``) and rows;
* :mod:`~clefctl.predict.smooth`: ``--smooth`` along each face track, streamed;
* :mod:`~clefctl.predict.timeline`: the AU timeline PNG of a video.

Faces come from :func:`clefctl.data.faces.iter_faces` (the pipeline ``embed PATH...`` shares).
"""

from clefctl.predict.api import PredictOptions, predict, run_predict
from clefctl.predict.schema import BASE_COLUMNS, au_column, columns
from clefctl.predict.scorers import Predictor, Scorer, build_scorers, newest_run_for_task, zero_shot

__all__ = ["PredictOptions", "predict", "run_predict", "BASE_COLUMNS", "au_column", "columns", "Predictor",
           "Scorer", "build_scorers", "newest_run_for_task", "zero_shot"]
