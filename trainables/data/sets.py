"""Every image dataset by name: the image sets (trainables.data.images) and the twin fitted to them
(trainables.data.twin_images)."""

from __future__ import annotations

from trainables.config import DataConfig
from trainables.data import images
from trainables.data.images import ImageData
from trainables.data.twin_images import check_twin, twin_images


def check_images(data_config: DataConfig) -> None:
    """Pre-flight: raise DatasetError if the dataset cannot be loaded (nothing is read in full)."""
    if data_config.name == "twin":
        check_twin(data_config)
    else:
        images.check_images(data_config)


def make_images(data_config: DataConfig, cache_dir: str = "") -> ImageData:
    """Load the image dataset a DataConfig names (cache_dir: where the twin's fit is stored,
    eval.cache_dir; default ~/.cache/sc-guidance)."""
    if data_config.name == "twin":
        return twin_images(data_config, cache_dir)
    return images.make_images(data_config)
