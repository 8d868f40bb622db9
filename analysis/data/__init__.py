"""Where models and images come from: :func:`~analysis.data.models.load_model` (torchvision, the ghostnet
registry, timm's zoo as ``timm:<name>``, ``module:callable``, checkpoints) and
:func:`~analysis.data.images.load_images` (files, folders, globs, sample photos, tensors, datasets)."""

from analysis.data.images import ImageSkippedWarning, ImageSource, NamedImage, load_images, sample_images
from analysis.data.models import LoadedModel, ModelInfo, load_model

__all__ = ["ImageSkippedWarning", "ImageSource", "LoadedModel", "ModelInfo", "NamedImage", "load_images",
           "load_model", "sample_images"]
