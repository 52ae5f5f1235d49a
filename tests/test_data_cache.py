"""The decoded-dataset cache: a format-tagged torch file; anything else at its path is rebuilt, not trusted."""

import pytest
import torch

from cnnlab.data.cache import CACHE_FORMAT, cache_path, cached, load_cached
from cnnlab.data.dataset import ImageDataset, Split
from cnnlab.utils.tagged import TaggedFileError


def _dataset() -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8, generator=g)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    return ImageDataset("toy", Split(images[:4], labels[:4]), Split(images[4:], labels[4:]), ["a", "b"],
                        (0.5,), (0.25,), {"source": "toy"})


def test_a_cache_entry_round_trips_and_is_tagged(tmp_path):
    builds = []
    first = cached(tmp_path, "toy", {"k": 1}, lambda: builds.append(1) or _dataset())
    again = cached(tmp_path, "toy", {"k": 1}, lambda: builds.append(1) or _dataset())
    assert builds == [1]  # the second call read the entry
    assert torch.equal(again.train.images, first.train.images) and torch.equal(again.test.labels, first.test.labels)
    assert again.classes == ["a", "b"] and again.mean == (0.5,) and again.meta["source"] == "toy"
    path = cache_path(tmp_path, "toy", {"k": 1})
    assert torch.load(path, weights_only=True)["format"] == CACHE_FORMAT


def test_an_untagged_or_foreign_file_is_refused_and_rebuilt(tmp_path):
    path = cache_path(tmp_path, "toy", {"k": 2})
    path.parent.mkdir(parents=True)
    torch.save({"version": 1, "name": "stale"}, path)  # an entry without the format tag
    with pytest.raises(TaggedFileError, match="dataset cache entry"):
        load_cached(path)
    ds = cached(tmp_path, "toy", {"k": 2}, _dataset)
    assert ds.name == "toy" and load_cached(path).name == "toy"
