"""Data as tensors: sources, cache, deterministic batches, batched augmentation."""

from cnnlab.data import sources  # noqa: F401  (registers sources)
from cnnlab.data.augment import Augment, normalize
from cnnlab.data.batches import Batch, BatchLoader
from cnnlab.data.dataset import (ImageDataset, Split, channel_stats, default_root, list_datasets, load_dataset,
                                 register_source, source_info)
from cnnlab.data.errors import ChecksumError, CorruptFileError, DataError, DownloadError, MissingFileError

__all__ = [
    "Augment", "Batch", "BatchLoader", "ChecksumError", "CorruptFileError", "DataError", "DownloadError",
    "ImageDataset", "MissingFileError", "Split", "channel_stats", "default_root", "list_datasets", "load_dataset",
    "normalize", "register_source", "source_info",
]
