"""Data as tensors: sources, cache, deterministic batches, batched augmentation."""

from cnnlab.data import sources  # noqa: F401  (registers sources)
from cnnlab.data.dataset import ImageDataset, Split, channel_stats, default_root, list_datasets, load_dataset, register_source

__all__ = ["ImageDataset", "Split", "channel_stats", "default_root", "list_datasets", "load_dataset", "register_source"]
