"""Serving: ``Predictor`` answers questions and embeds images and texts from an export (a
folder or storage URL), for PIL images and strings. The one inference path: evaluation runs
through it too."""

from raymmr.serve.predictor import Predictor

__all__ = ["Predictor"]
