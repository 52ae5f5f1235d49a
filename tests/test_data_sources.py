"""Sources decode the official formats (small fakes placed by hand), cache once, and refuse bad files clearly."""

import numpy as np
import pytest
import torch

from cnnlab.data import channel_stats, load_dataset
from cnnlab.data.cache import cache_path
from cnnlab.data.dataset import source_info, stratified_split
from cnnlab.data.errors import ChecksumError, CorruptFileError, DataError
from cnnlab.data.sources.synthetic import make_synthetic

from data_fakes import fake_cifar10, fake_cifar100, fake_emnist_zip, fake_mnist, md5


def _place(root, folder, files):
    d = root / "raw" / folder
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    return {name: md5(data) for name, data in files.items()}


def test_mnist_and_fashion_from_files_placed_by_hand(tmp_path):
    files, arrays = fake_mnist(seed=1)
    for name in ("mnist", "fashion_mnist"):
        sums = _place(tmp_path, name, files)
        ds = load_dataset(name, tmp_path, checksums=sums)
        assert ds.train.images.dtype == torch.uint8 and ds.train.images.shape == (12, 1, 28, 28)
        assert np.array_equal(ds.train.images[:, 0].numpy(), arrays["train_images"])
        assert np.array_equal(ds.train.labels.numpy(), arrays["train_labels"].astype(np.int64))
        assert ds.num_classes == 10
    assert load_dataset("fashion_mnist", tmp_path, checksums=sums).classes[9] == "Ankle boot"


def test_cifar10_tarball(tmp_path):
    data, arrays = fake_cifar10()
    sums = _place(tmp_path, "cifar10", {"cifar-10-python.tar.gz": data})
    ds = load_dataset("cifar10", tmp_path, checksums=sums)
    assert ds.train.images.shape == (20, 3, 32, 32) and ds.test.images.shape == (4, 3, 32, 32)
    assert np.array_equal(ds.train.images.numpy(), arrays["train_images"])  # batches in order 1..5
    assert np.array_equal(ds.test.labels.numpy(), arrays["test_labels"])
    assert ds.classes[:2] == ["airplane", "automobile"]
    # mean/std are the training split's, per channel, by an independent numpy computation
    ref = arrays["train_images"].astype(np.float64) / 255
    np.testing.assert_allclose(ds.mean, ref.mean(axis=(0, 2, 3)), atol=1e-12)
    np.testing.assert_allclose(ds.std, ref.std(axis=(0, 2, 3), ddof=1), atol=1e-12)


@pytest.mark.parametrize("labels, n_classes", [("fine", 100), ("coarse", 20)])
def test_cifar100_fine_and_coarse(tmp_path, labels, n_classes):
    data, arrays = fake_cifar100()
    sums = _place(tmp_path, "cifar100", {"cifar-100-python.tar.gz": data})
    ds = load_dataset("cifar100", tmp_path, labels=labels, checksums=sums)
    assert ds.num_classes == n_classes and ds.classes[1] == f"{labels}1"
    assert np.array_equal(ds.train.labels.numpy(), arrays[f"train_{labels}"])
    assert np.array_equal(ds.test.images.numpy(), arrays["test_images"])


def test_emnist_letters_are_transposed_back_and_zero_based(tmp_path):
    data, arrays = fake_emnist_zip("letters")
    sums = _place(tmp_path, "emnist", {"gzip.zip": data})
    ds = load_dataset("emnist", tmp_path, split="letters", checksums=sums)
    assert ds.name == "emnist_letters" and ds.classes == [chr(ord("A") + i) for i in range(26)]
    assert np.array_equal(ds.train.images[:, 0].numpy(), arrays["train_images"])
    assert np.array_equal(ds.train.labels.numpy(), arrays["train_labels"].astype(np.int64) - 1)
    with pytest.raises(CorruptFileError, match="no member gzip/emnist-digits-train-images"):
        load_dataset("emnist", tmp_path, split="digits", checksums=sums)
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("emnist", tmp_path, split="nope")


def test_cache_is_written_once_atomically_and_reused(tmp_path, monkeypatch):
    data, _ = fake_cifar10()
    sums = _place(tmp_path, "cifar10", {"cifar-10-python.tar.gz": data})
    first = load_dataset("cifar10", tmp_path, checksums=sums)
    entries = list((tmp_path / "cache").iterdir())
    assert [p.name for p in entries] == [first.meta["cache"].split("/")[-1]]
    import cnnlab.data.sources.cifar as cifar

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cifar, "_cifar", boom)
    second = load_dataset("cifar10", tmp_path, checksums=sums)
    assert torch.equal(second.train.images, first.train.images) and second.classes == first.classes
    assert second.mean == first.mean
    # a different expected checksum is a different cache key
    assert cache_path(tmp_path, "cifar10", {"a": 1}) != cache_path(tmp_path, "cifar10", {"a": 2})


def test_corrupt_archive_is_named_and_not_cached(tmp_path):
    data, _ = fake_cifar10()
    cut = data[: len(data) // 2]
    sums = _place(tmp_path, "cifar10", {"cifar-10-python.tar.gz": cut})  # the override matches the broken file
    with pytest.raises(CorruptFileError, match=r"cifar-10-python.tar.gz is not a complete .tar.gz"):
        load_dataset("cifar10", tmp_path, checksums=sums)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    gz_files, _ = fake_mnist()
    gz_files["train-images-idx3-ubyte.gz"] = gz_files["train-images-idx3-ubyte.gz"][:-30]
    sums = _place(tmp_path, "mnist", gz_files)
    with pytest.raises(CorruptFileError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", tmp_path, checksums=sums)


def test_hand_placed_file_with_wrong_checksum(tmp_path):
    data, _ = fake_cifar10()
    _place(tmp_path, "cifar10", {"cifar-10-python.tar.gz": data})
    with pytest.raises(ChecksumError) as err:
        load_dataset("cifar10", tmp_path)
    msg = str(err.value)
    assert "c58f30108f718f92721af3b95e74349a" in msg and md5(data).split(":")[1] in msg
    assert "cifar-10-python.tar.gz" in msg and "place it by hand" in msg
    assert (tmp_path / "raw" / "cifar10" / "cifar-10-python.tar.gz").exists()  # a user's file is never deleted


def test_cifar_pickles_cannot_run_code(tmp_path):
    import io
    import pickle
    import tarfile

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        blob = pickle.dumps({"label_names": Evil()}, protocol=2)
        for name in ["cifar-10-batches-py/batches.meta"] + [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)] \
                + ["cifar-10-batches-py/test_batch"]:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    sums = _place(tmp_path, "cifar10", {"cifar-10-python.tar.gz": buf.getvalue()})
    with pytest.raises(CorruptFileError, match=r"refusing to load (__builtin__|builtins)\.print"):
        load_dataset("cifar10", tmp_path, checksums=sums)


def test_synthetic_is_deterministic_and_configurable(tmp_path):
    a = load_dataset("synthetic", tmp_path, n_train=40, n_test=10, size=12, channels=1, num_classes=4, seed=3)
    b = load_dataset("synthetic", tmp_path, n_train=40, n_test=10, size=12, channels=1, num_classes=4, seed=3)
    c = load_dataset("synthetic", tmp_path, n_train=40, n_test=10, size=12, channels=1, num_classes=4, seed=4)
    assert a.train.images.shape == (40, 1, 12, 12) and a.test.images.shape == (10, 1, 12, 12)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images, c.train.images)
    assert torch.bincount(a.train.labels).tolist() == [10, 10, 10, 10]
    assert not torch.equal(a.train.images[:10], a.test.images)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        make_synthetic(10, num_classes=1)


def test_synthetic_classes_differ_beyond_pixel_templates():
    """Class means differ (learnable), yet a nearest-class-mean template matcher is far from perfect (shifts)."""
    tr = make_synthetic(1000, size=16, num_classes=5, seed=0, stream="train")
    te = make_synthetic(300, size=16, num_classes=5, seed=0, stream="test")
    x, xt = tr.images.float().flatten(1), te.images.float().flatten(1)
    centroids = torch.stack([x[tr.labels == k].mean(0) for k in range(5)])
    acc = (torch.cdist(xt, centroids).argmin(1) == te.labels).float().mean().item()
    assert 0.3 < acc < 0.95


@pytest.mark.slow
def test_synthetic_is_learnable_by_a_small_cnn(tmp_path):
    import torch.nn.functional as F

    from cnnlab.data.augment import Augment
    from cnnlab.data.batches import BatchLoader
    from cnnlab.models import create_deterministic_model

    ds = load_dataset("synthetic", tmp_path, n_train=800, n_test=200, size=12, num_classes=5, seed=1)
    aug = Augment(ds.mean, ds.std)
    loader = BatchLoader(ds.train.images, ds.train.labels, 50, seed=0, augment=aug)
    model = create_deterministic_model(0, "tiny_cnn", "synthetic-test", num_classes=5, in_channels=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    for epoch in range(4):
        model.train()
        for b in loader.epoch(epoch):
            opt.zero_grad()
            F.cross_entropy(model(b.x), b.y).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(aug.eval_transform(ds.test.images)).argmax(1) == ds.test.labels).float().mean().item()
    assert acc >= 0.9


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    expected = {}
    for c in ("cat", "dog"):
        (folder / c).mkdir(parents=True)
        for i in range(5):
            arr = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            Image.fromarray(arr).save(folder / c / f"{i}.png")
            expected[(c, i)] = arr
    ds = load_dataset("image_folder", tmp_path / "data", path=str(folder), size=6, test_fraction=0.4)
    assert ds.classes == ["cat", "dog"] and len(ds.train) == 6 and len(ds.test) == 4
    assert torch.bincount(ds.test.labels).tolist() == [2, 2]  # stratified
    pool = {arr.tobytes() for arr in expected.values()}
    for img in torch.cat([ds.train.images, ds.test.images]):
        assert img.permute(1, 2, 0).numpy().tobytes() in pool  # lossless PNG, no resize at the same size
    gray = load_dataset("image_folder", tmp_path / "data", path=str(folder), size=3, channels=1)
    assert gray.train.images.shape[1:] == (1, 3, 3)
    # adding an image changes the cache key
    Image.fromarray(expected[("cat", 0)]).save(folder / "dog" / "extra.png")
    assert len(load_dataset("image_folder", tmp_path / "data", path=str(folder), size=6, test_fraction=0.4).train) == 7
    (folder / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(CorruptFileError, match="broken.png"):
        load_dataset("image_folder", tmp_path / "data", path=str(folder), size=6)
    with pytest.raises(ValueError, match="needs the option path=DIR"):
        load_dataset("image_folder", tmp_path / "data")
    with pytest.raises(DataError, match="no images found"):
        (tmp_path / "empty" / "a").mkdir(parents=True)
        load_dataset("image_folder", tmp_path / "data", path=str(tmp_path / "empty"))


def test_image_folder_keeps_grayscale_images_gray(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    folder = tmp_path / "gray"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (5, 5), dtype=np.uint8), mode="L").save(folder / c / f"{i}.png")
    ds = load_dataset("image_folder", tmp_path / "data", path=str(folder), size=5, test_fraction=0.34)
    assert ds.train.images.shape[1:] == (1, 5, 5) and len(ds.mean) == 1  # not silently tripled to RGB
    rgb = load_dataset("image_folder", tmp_path / "data", path=str(folder), size=5, channels=3, test_fraction=0.34)
    assert rgb.train.images.shape[1] == 3 and torch.equal(rgb.train.images[:, 0], rgb.train.images[:, 2])
    Image.new("RGB", (5, 5), (9, 0, 0)).save(folder / "a" / "color.png")  # one colour image: the folder is RGB
    assert load_dataset("image_folder", tmp_path / "data", path=str(folder), size=5, test_fraction=0.34).in_channels == 3
    with pytest.raises(ValueError, match="channels must be 1"):
        load_dataset("image_folder", tmp_path / "data", path=str(folder), channels=2)


def test_image_folder_with_train_and_test_folders(tmp_path):
    from PIL import Image

    for part, n in (("train", 3), ("test", 2)):
        for c in ("a", "b"):
            (tmp_path / "f" / part / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (10, 8), (i * 40, 0, 200 if c == "a" else 0)).save(tmp_path / "f" / part / c / f"{i}.jpg")
    ds = load_dataset("image_folder", tmp_path / "data", path=str(tmp_path / "f"), size=4)
    assert len(ds.train) == 6 and len(ds.test) == 4 and ds.train.images.shape[1:] == (3, 4, 4)
    assert torch.equal(ds.test.labels, torch.tensor([0, 0, 1, 1]))


def test_tensor_file_npz_and_pt(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)  # N×H×W×C
    y = np.arange(30) % 3
    np.savez(tmp_path / "d.npz", images=x, labels=y, classes=np.array(["r", "g", "b"]))
    ds = load_dataset("tensor_file", tmp_path / "data", path=str(tmp_path / "d.npz"), test_fraction=0.2)
    assert ds.classes == ["r", "g", "b"] and ds.train.images.shape[1:] == (3, 8, 8)
    assert len(ds.train) == 24 and len(ds.test) == 6
    allx = torch.from_numpy(x).permute(0, 3, 1, 2)
    for img, lab in zip(ds.test.images, ds.test.labels):
        match = (allx == img).flatten(1).all(1).nonzero().flatten()
        assert match.numel() == 1 and int(y[match[0]]) == int(lab)
    torch.save({"train_images": torch.zeros(4, 1, 5, 5, dtype=torch.uint8), "train_labels": torch.tensor([0, 1, 0, 1]),
                "test_images": torch.zeros(2, 1, 5, 5, dtype=torch.uint8), "test_labels": torch.tensor([1, 0])},
               tmp_path / "d.pt")
    pt = load_dataset("tensor_file", tmp_path / "data", path=str(tmp_path / "d.pt"))
    assert len(pt.train) == 4 and pt.classes == ["0", "1"]


@pytest.mark.parametrize("content, match", [
    ({"images": np.zeros((4, 5, 5), np.float32), "labels": np.zeros(4, np.int64)}, "'images' must be uint8"),
    ({"images": np.zeros((4, 5, 5), np.uint8), "labels": np.zeros(3, np.int64)}, r"'labels' must have shape \(4,\)"),
    ({"images": np.zeros((4, 5, 5), np.uint8), "labels": np.zeros(4, np.float32)}, "integer class labels"),
    ({"pixels": np.zeros((4, 5, 5), np.uint8)}, "must contain train_images.*it has: pixels"),
])
def test_tensor_file_validation(tmp_path, content, match):
    np.savez(tmp_path / "bad.npz", **content)
    with pytest.raises(DataError, match=match):
        load_dataset("tensor_file", tmp_path / "data", path=str(tmp_path / "bad.npz"))


def test_registry_kinds_options_and_stats():
    assert source_info("cifar10").kind == "download" and source_info("synthetic").kind == "procedural"
    with pytest.raises(KeyError, match="Did you mean 'cifar10'"):
        load_dataset("cifar01")
    with pytest.raises(ValueError, match="unknown option.*sizes.*accepted: n_train"):
        load_dataset("synthetic", sizes=3)
    x = torch.randint(0, 256, (37, 2, 3, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = channel_stats(x, chunk=5)
    ref = x.double().numpy() / 255
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), atol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3), ddof=1), atol=1e-12)
    labels = torch.tensor([0] * 10 + [1] * 5 + [2])
    tr, te = stratified_split(labels, 0.2, seed=0)
    assert torch.bincount(labels[te], minlength=3).tolist() == [2, 1, 0]
    assert sorted(torch.cat([tr, te]).tolist()) == list(range(16))
    assert torch.equal(te, stratified_split(labels, 0.2, seed=0)[1])


def test_dataset_repr_shows_shapes_not_values():
    from cnnlab.data import load_dataset

    ds = load_dataset("digits")
    text = repr(ds)
    assert text.startswith("ImageDataset('digits', train=1437, test=360, classes=10, image=1x8x8") and len(text) < 200
    assert repr(ds.test) == "Split(images=uint8[360, 1, 8, 8], labels=int64[360])"
