"""Where models and images come from: :func:`~analysis.data.models.load_model` (torchvision, the ghostnet
registry, ``module:callable``, checkpoints) and :func:`~analysis.data.images.load_images` (files, folders,
globs, sample photos, tensors, datasets); the sample photos' calibration/evaluation split
(:mod:`~analysis.data.samples`), seeded views (:mod:`~analysis.data.views`) and the overlap check between
image sets (:mod:`~analysis.data.overlap`)."""

from analysis.data.images import ImageSkippedWarning, ImageSource, NamedImage, load_images, sample_images
from analysis.data.models import LoadedModel, ModelInfo, load_model
from analysis.data.overlap import OverlapError, check_disjoint, shared_images
from analysis.data.samples import CALIBRATION, EVALUATION

__all__ = ["CALIBRATION", "EVALUATION", "ImageSkippedWarning", "ImageSource", "LoadedModel", "ModelInfo",
           "NamedImage", "OverlapError", "check_disjoint", "load_images", "load_model", "sample_images",
           "shared_images"]
