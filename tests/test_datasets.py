import numpy as np
import pytest
import torch
from PIL import Image

from genlab import GenlabError, UnknownDatasetError
from genlab.datasets import DatasetUnavailable, dequantize, load_dataset


def test_mnist_5k_is_real_mnist_split_without_overlap():
    train = load_dataset("mnist-5k", "train", seed=0)
    heldout = load_dataset("mnist-5k", "heldout", seed=0)
    assert len(train) == 4500 and len(heldout) == 500
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (1, 28, 28)
    assert sorted(set(heldout.labels.tolist())) == list(range(10))  # shuffled, not the sorted file order
    seen = {bytes(img.numpy()) for img in train.images}
    assert not any(bytes(img.numpy()) in seen for img in heldout.images)


def test_split_is_seeded():
    a = load_dataset("digits", "heldout", seed=1).images
    b = load_dataset("digits", "heldout", seed=1).images
    c = load_dataset("digits", "heldout", seed=2).images
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_digits_are_scaled_to_8_bits():
    data = load_dataset("digits", "all")
    assert data.images.shape == (1797, 1, 8, 8) and data.images.max() == 255


def test_dequantize_stays_inside_each_pixel_bin():
    x = torch.tensor([[[[0, 1, 254, 255]]]], dtype=torch.uint8).repeat(500, 1, 1, 1)
    y = dequantize(x, torch.Generator().manual_seed(0))
    lower, upper = x.float() / 256, (x.float() + 1) / 256
    assert torch.all(y >= lower) and torch.all(y < upper)
    # uniform within the bin: mean offset 1/2
    assert float(((y - lower) * 256).mean()) == pytest.approx(0.5, abs=0.02)


def test_image_folder_dataset(tmp_path):
    for label in ("cats", "dogs"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(np.full((40, 30, 3), 50 * i, dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    data = load_dataset(f"folder:{tmp_path}", "all")
    assert data.images.shape == (6, 1, 28, 28)
    assert sorted(data.labels.tolist()) == [0, 0, 0, 1, 1, 1]


def test_missing_folder_and_unknown_dataset_are_clear(tmp_path):
    with pytest.raises(DatasetUnavailable, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(UnknownDatasetError, match="registered datasets: digits, fashion-mnist, folder, mnist, mnist-5k"):
        load_dataset("cifar")
    with pytest.raises(GenlabError, match="unknown split"):
        load_dataset("digits", "test")


def test_torchvision_dataset_offline_gives_one_clear_error(monkeypatch, tmp_path):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    monkeypatch.setattr("genlab.datasets.CACHE_DIR", tmp_path)
    with pytest.raises(DatasetUnavailable, match="could not download MNIST .* use mnist-5k"):
        load_dataset("mnist")
