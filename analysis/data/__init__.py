"""Where models and images come from: :func:`~analysis.data.models.load_model` (torchvision, the ghostnet
registry, ``module:callable``, checkpoints), :func:`~analysis.data.images.load_images` (files, folders,
globs, sample photos) and :func:`~analysis.data.batches.as_images`, the one image adapter every consumer of
images goes through (paths, sample photos, tensors, lists, datasets, data loaders)."""

from analysis.data.batches import Images, as_images
from analysis.data.images import ImageSkippedWarning, ImageSource, NamedImage, load_images, sample_images
from analysis.data.models import LoadedModel, ModelInfo, load_model

__all__ = ["ImageSkippedWarning", "ImageSource", "Images", "LoadedModel", "ModelInfo", "NamedImage", "as_images",
           "load_images", "load_model", "sample_images"]
