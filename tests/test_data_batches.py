"""BatchLoader: order is a pure function of (seed, epoch); subsets, weights and shards line up with indices."""

import pytest
import torch

from cnnlab.data.augment import Augment
from cnnlab.data.batches import Batch, BatchLoader
from cnnlab.utils.seeding import make_generator

N = 50


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, 3, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (N,), generator=g)
    return images, labels


def _aug():
    return Augment((0.5, 0.4, 0.3), (0.2, 0.2, 0.2), crop_padding=2, flip="random", cutout=3)


def test_order_is_seeded_permutation(data):
    images, labels = data
    loader = BatchLoader(images, labels, 8, seed=3)
    ref = torch.randperm(N, generator=make_generator(3, "order/0"))
    seen = torch.cat([b.index for b in loader.epoch(0)])
    assert torch.equal(seen, ref)
    again = torch.cat([b.index for b in BatchLoader(images, labels, 8, seed=3).epoch(0)])
    assert torch.equal(again, seen)
    assert not torch.equal(torch.cat([b.index for b in loader.epoch(1)]), seen)
    assert not torch.equal(torch.cat([b.index for b in BatchLoader(images, labels, 8, seed=4).epoch(0)]), seen)


def test_examples_line_up_with_indices(data):
    images, labels = data
    subset = torch.tensor([5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41])
    weights = torch.rand(N, generator=torch.Generator().manual_seed(1))
    weights[[7, 31]] = 0.0
    loader = BatchLoader(images, labels, 4, seed=0, indices=subset, weights=weights)
    batches = list(loader.epoch(2))
    assert [len(b) for b in batches] == [4, 4, 3] == [len(loader.batch(2, i)) for i in range(3)]
    seen = torch.cat([b.index for b in batches])
    assert sorted(seen.tolist()) == subset.tolist()  # each subset example exactly once
    assert torch.equal(seen, subset[torch.randperm(11, generator=make_generator(0, "order/2"))])
    for b in batches:
        assert isinstance(b, Batch)
        assert b.y.dtype == torch.int64 and b.w.dtype == torch.float32 and b.index.dtype == torch.int64
        assert torch.equal(b.y, labels[b.index])
        assert torch.equal(b.w, weights[b.index])
        torch.testing.assert_close(b.x, images[b.index].float() / 255.0, rtol=0, atol=1e-7)
    zero_w = torch.cat([b.w for b in batches]) == 0
    assert set(seen[zero_w].tolist()) == {7, 31}  # zero-weight examples stay in the batch layout


def test_weights_default_to_ones_and_shuffle_false_keeps_given_order(data):
    images, labels = data
    subset = [9, 3, 4, 1]
    loader = BatchLoader(images, labels, 3, seed=0, indices=subset, shuffle=False)
    batches = list(loader.epoch(5))
    assert torch.cat([b.index for b in batches]).tolist() == subset
    assert torch.equal(torch.cat([b.w for b in batches]), torch.ones(4))


def test_random_access_equals_iteration(data):
    images, labels = data
    loader = BatchLoader(images, labels, 16, seed=1, augment=_aug(), drop_last=True)
    assert len(loader) == 3
    it = list(loader.epoch(4))
    other = BatchLoader(images, labels, 16, seed=1, augment=_aug(), drop_last=True)
    for i in (2, 0, 1):
        b = other.batch(4, i)
        for field in ("x", "y", "w", "index"):
            assert torch.equal(getattr(b, field), getattr(it[i], field)), (i, field)
    # augmentation randomness comes from make_generator(seed, "augment/{epoch}/{i}")
    b = it[1]
    ref = _aug()(images[b.index], generator=make_generator(1, "augment/4/1"), epoch=4, index=b.index)
    assert torch.equal(b.x, ref)
    assert not torch.equal(loader.batch(5, 1).x, ref)


@pytest.mark.parametrize("n, bs, ws, drop_last, sizes", [
    (10, 4, 1, False, [4, 4, 2]),
    (10, 4, 1, True, [4, 4]),
    (10, 4, 2, False, [4, 4, 2]),
    (9, 4, 2, False, [4, 4]),      # a remainder smaller than world_size is skipped
    (11, 4, 2, False, [4, 4, 2]),  # the remainder is trimmed to a multiple of world_size
    (11, 4, 2, True, [4, 4]),
])
def test_batches_per_epoch(data, n, bs, ws, drop_last, sizes):
    images, labels = data
    loaders = [BatchLoader(images, labels, bs, seed=0, indices=torch.arange(n), drop_last=drop_last, rank=r,
                           world_size=ws) for r in range(ws)]
    assert all(len(ld) == len(sizes) for ld in loaders)
    for i, size in enumerate(sizes):
        assert [len(ld.batch(0, i)) for ld in loaders] == [size // ws] * ws


def test_data_parallel_shards_concatenate_to_the_single_process_batch(data):
    images, labels = data
    weights = torch.linspace(0, 2, N)
    single = BatchLoader(images, labels, 12, seed=2, augment=_aug(), weights=weights)
    ranks = [BatchLoader(images, labels, 12, seed=2, augment=_aug(), weights=weights, rank=r, world_size=3)
             for r in range(3)]
    # 50 = 4 * 12 + 2: one process also gets the partial batch of 2; three ranks cannot share 2 equally
    assert len(single) == 5 and all(len(ld) == 4 for ld in ranks)
    for i in range(4):
        whole = single.batch(1, i)
        shards = [ld.batch(1, i) for ld in ranks]
        assert [len(s) for s in shards] == [4, 4, 4]
        for field in ("x", "y", "w", "index"):
            assert torch.equal(torch.cat([getattr(s, field) for s in shards]), getattr(whole, field)), (i, field)


def test_dtype_and_memory_format(data):
    images, labels = data
    b = BatchLoader(images, labels, 8, seed=0, augment=_aug(), dtype=torch.bfloat16, channels_last=True).batch(0, 0)
    assert b.x.dtype == torch.bfloat16 and b.x.is_contiguous(memory_format=torch.channels_last)
    b = BatchLoader(images, labels, 8, seed=0, dtype=torch.float64, channels_last=True).batch(0, 0)
    assert b.x.dtype == torch.float64 and b.x.is_contiguous(memory_format=torch.channels_last)
    loader = BatchLoader(images, labels, 8, seed=0, device="cpu")
    assert loader.images.device.type == "cpu" and loader.images.dtype == torch.uint8


@pytest.mark.parametrize("kwargs, err, match", [
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
    ({"batch_size": 10, "world_size": 3}, ValueError, "not divisible by world_size 3"),
    ({"rank": 2, "world_size": 2}, ValueError, r"rank must be in \[0, 2\)"),
    ({"indices": [0, 50]}, ValueError, r"indices must be in \[0, 50\).*\[50\]"),
    ({"indices": [0.5]}, ValueError, "indices must hold integers"),
    ({"indices": []}, ValueError, "no examples"),
    ({"weights": torch.ones(49)}, ValueError, r"weights must have shape \(50,\)"),
    ({"weights": torch.tensor([1.0] * 49 + [float("nan")])}, ValueError, r"non-finite at dataset indices \[49\]"),
    ({"dtype": torch.int64}, ValueError, "floating-point"),
    ({"indices": [1, 2], "batch_size": 4, "drop_last": True}, ValueError, "no batches"),
    ({"augment": "flip"}, TypeError, "augment must be"),
])
def test_bad_arguments_are_named(data, kwargs, err, match):
    images, labels = data
    kwargs = {"batch_size": 8, **kwargs}
    bs = kwargs.pop("batch_size")
    with pytest.raises(err, match=match):
        BatchLoader(images, labels, bs, seed=0, **kwargs)


def test_bad_images_labels_epoch_and_index(data):
    images, labels = data
    with pytest.raises(ValueError, match="uint8"):
        BatchLoader(images.float(), labels, 8, seed=0, augment=Augment(0.0, 1.0))
    with pytest.raises(ValueError, match="uint8"):
        BatchLoader(images.int(), labels, 8, seed=0)
    floats = BatchLoader(images.float() / 255, labels, 8, seed=0)  # float images are served as they are
    assert torch.allclose(floats.batch(0, 0).x, BatchLoader(images, labels, 8, seed=0).batch(0, 0).x)
    with pytest.raises(ValueError, match=r"labels must have shape \(50,\)"):
        BatchLoader(images, labels[:10], 8, seed=0)
    with pytest.raises(ValueError, match="reflect padding"):
        BatchLoader(images, labels, 8, seed=0, augment=Augment(0.0, 1.0, crop_padding=8))
    loader = BatchLoader(images, labels, 8, seed=0)
    with pytest.raises(ValueError, match="epoch must be an int >= 0"):
        loader.batch(-1, 0)
    with pytest.raises(IndexError, match=r"batch index must be an int in \[0, 7\)"):
        loader.batch(0, 7)
