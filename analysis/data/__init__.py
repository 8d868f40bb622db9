"""Where models and images come from: :func:`~analysis.data.models.load_model` (torchvision, the ghostnet
registry, timm's zoo as ``timm:<name>``, ``module:callable``, checkpoints), :func:`~analysis.data.images.load_images` (files, folders,
globs, sample photos, seeded views) and :func:`~analysis.data.batches.as_images`, the one image adapter every
consumer of images goes through (paths, sample photos, tensors, lists, datasets, data loaders, with labels when
they carry them); the sample photos' calibration/evaluation split (:mod:`~analysis.data.samples`), seeded views
(:mod:`~analysis.data.views`), evaluation sets with labels (:mod:`~analysis.data.labelled`) and the overlap
check between image sets (:mod:`~analysis.data.overlap`)."""

from analysis.data.batches import Images, as_images
from analysis.data.images import ImageSkippedWarning, ImageSource, NamedImage, load_images, sample_images
from analysis.data.models import LoadedModel, ModelInfo, load_model
from analysis.data.overlap import OverlapError, check_disjoint, shared_images
from analysis.data.samples import CALIBRATION, EVALUATION

__all__ = ["CALIBRATION", "EVALUATION", "ImageSkippedWarning", "ImageSource", "Images", "LoadedModel", "ModelInfo",
           "NamedImage", "OverlapError", "as_images", "check_disjoint", "load_images", "load_model", "sample_images",
           "shared_images"]
