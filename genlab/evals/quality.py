"""Sample quality from features: each image set goes through the feature network once, and every
metric is computed from those features.

- FID: the Fréchet distance of Gaussians fitted to two feature sets. With fewer images than feature
  dimensions (Inception's 2048), tr sqrt(S1 S2) is the nuclear norm of A Bᵀ / sqrt((n1-1)(n2-1))
  (A, B the centred features): the non-zero eigenvalues of S1 S2 are the squared singular values of
  that n1 x n2 matrix, so it is exact and small; otherwise a symmetric D x D eigenproblem. Tested
  against torch-fidelity's eigenvalue route.
- FID at equal N and FID∞: FID is biased upward by about c/N, so rows are compared only at the same
  N; ``fid_infinity`` fits FID_N = FID∞ + c/N over random subsets at several N (Chong & Forsyth 2020)
  and extrapolates to N = ∞, removing the bias for every row alike.
- KID, Inception Score, precision/recall (k = 3): torch-fidelity's code on the same features.
- density and coverage (Naeem et al. 2020, k = 5): prdc's reference code. Unlike precision, they do
  not reward a collapsed model: density counts how many real neighbourhoods hold each sample, and
  coverage the share of real neighbourhoods that hold any sample.

Features are cached on disk by the images' content (which fixes the dataset, split, N and seed of a
reference draw) and the extractor's fingerprint (its weights and preprocessing) and device type
(``GENLAB_CACHE/features``), so the real-data reference and floor are featurized once per machine,
not once per run. An eval keeps its samples' features beside its shards, in the run folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
from pathlib import Path

import numpy as np

PRC_NEIGHBOURS = 3  # torch-fidelity's default, as in Kynkäänniemi et al. 2019
PRDC_NEIGHBOURS = 5  # Naeem et al. 2020's choice for density and coverage


def feature_cache_dir() -> Path:
    from genlab.datasets import CACHE_DIR

    return Path(os.environ.get("GENLAB_FEATURE_CACHE", CACHE_DIR / "features"))


def _extractor(name: str):
    """A torch-fidelity feature extractor instance for a registered genlab extractor (one per process)."""
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from genlab.registry import get_feature_extractor
    from genlab.runtime import resolve_device

    spec = get_feature_extractor(name)
    key = f"genlab-{name}"
    if key not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(key, spec.load())
    cls = FEATURE_EXTRACTORS_REGISTRY[key]
    device = resolve_device()  # --device / GENLAB_DEVICE, else CUDA, MPS or the CPU
    instance = _INSTANCES.get((key, str(device)))
    if instance is None:
        instance = _INSTANCES[key, str(device)] = cls(key, list(cls.get_provided_features_list())).eval().to(device)
    return spec, instance


_INSTANCES: dict = {}


def images_digest(images) -> str:
    """Content hash of a uint8 image tensor (shape included)."""
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    h.update(images.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:20]


def extract_features(images, extractor: str, *, batch_size: int = 250, cache: bool = True,
                     cache_dir: Path | None = None) -> dict:
    """{feature name: float tensor [N, D]} of uint8 images [N, C, H, W] through ``extractor``.

    Cached by the images' content and the extractor's fingerprint in ``cache_dir`` (default: the
    machine-wide feature cache, for real data; an eval keeps its samples' features in its run folder).
    """
    import torch
    from safetensors.torch import load_file, save_file
    from torch_fidelity.utils import get_featuresdict_from_dataset

    spec, net = _extractor(extractor)
    path = None
    if cache:
        fingerprint = spec.fingerprint() if spec.fingerprint else ""
        # features made on another kind of device differ in the last digits: kept apart
        device = next(net.parameters(), torch.zeros(0)).device.type
        tag = hashlib.sha256(f"{extractor}|{fingerprint}|{device}".encode()).hexdigest()[:10]
        folder = Path(cache_dir) if cache_dir is not None else feature_cache_dir()
        path = folder / f"{extractor}-{tag}" / f"{images_digest(images)}.safetensors"
        if path.is_file():
            try:
                return load_file(str(path))
            except Exception:  # a damaged cache file is recomputed, never trusted
                path.unlink(missing_ok=True)

    class Images(torch.utils.data.Dataset):  # torch-fidelity takes a Dataset of uint8 [C, H, W]
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return images[i]

    on_cuda = next(net.parameters()).device.type == "cuda"  # torch-fidelity moves batches to CUDA only
    features = get_featuresdict_from_dataset(Images(), net, batch_size, on_cuda, save_cpu_ram=True, verbose=False)
    features = {k: v.float().contiguous() for k, v in features.items()}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file(features, str(tmp))
        os.replace(tmp, path)
    return features


# ----- the metrics -----------------------------------------------------------------------------
def frechet_distance(features_1, features_2) -> float:
    """FID between two feature sets [N, D] (float64 throughout)."""
    a = np.asarray(features_1, dtype=np.float64)
    b = np.asarray(features_2, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    a, b = a - mu_a, b - mu_b
    n_a, n_b = len(a) - 1, len(b) - 1
    trace_a = (a * a).sum() / n_a
    trace_b = (b * b).sum() / n_b
    if min(n_a, n_b) < a.shape[1]:  # fewer images than dimensions: the n_a x n_b route is smaller
        cross = np.linalg.svd(a @ b.T, compute_uv=False).sum() / math.sqrt(n_a * n_b)
    else:  # tr sqrt(S_a S_b) = tr sqrt(S_a^1/2 S_b S_a^1/2), a symmetric D x D eigenproblem
        values, vectors = np.linalg.eigh(a.T @ a / n_a)
        root = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
        cross = np.sqrt(np.linalg.eigvalsh(root @ (b.T @ b / n_b) @ root).clip(min=0)).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + trace_a + trace_b - 2 * cross)


def fid_at(features_1, features_2, n: int, *, draws: int = 1, seed: int = 0) -> dict:
    """Mean FID of ``draws`` random size-``n`` subsets of both sets (each drawn without replacement)."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(features_1), np.asarray(features_2)
    values = [frechet_distance(a[rng.choice(len(a), n, replace=False)], b[rng.choice(len(b), n, replace=False)])
              for _ in range(draws)]
    return {"fid": float(np.mean(values)), "n": n, "draws": draws}


def fid_infinity(features_1, features_2, *, n_min: int = 100, n_max: int | None = None, points: int = 8,
                 draws: int = 3, seed: int = 0) -> dict:
    """FID extrapolated to infinitely many images: FID_N at ``points`` sizes spaced evenly in 1/N between
    ``n_min`` and ``n_max`` (both sets subsampled to N), a least-squares line FID_N = FID∞ + slope / N,
    and its intercept (Chong & Forsyth 2020, who vary N the same way)."""
    n_max = min(len(features_1), len(features_2)) if n_max is None else n_max
    n_min = min(n_min, n_max // 2)
    inverse = np.linspace(1 / n_min, 1 / n_max, points)
    sizes = sorted({int(round(1 / x)) for x in inverse})
    fids = [fid_at(features_1, features_2, n, draws=draws, seed=seed + i)["fid"] for i, n in enumerate(sizes)]
    slope, intercept = np.polyfit([1 / n for n in sizes], fids, 1)
    return {"fid_inf": float(intercept), "slope": float(slope), "sizes": sizes, "fids": [float(f) for f in fids]}


def density_coverage(real, fake, k: int = PRDC_NEIGHBOURS) -> dict:
    """Density and coverage of ``fake`` against ``real`` features (prdc, Naeem et al. 2020)."""
    from prdc import compute_prdc

    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        out = compute_prdc(np.asarray(real, dtype=np.float32), np.asarray(fake, dtype=np.float32), k)
    return {"density": float(out["density"]), "coverage": float(out["coverage"])}


def quality_from_features(generated: dict, reference: dict, *, seed: int = 0, feature: str | None = None,
                          logits: str | None = None) -> dict:
    """FID, KID, precision/recall, density/coverage (and IS given logits) of two feature dicts."""
    import torch
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    feature = feature or next(iter(generated))
    gen, ref = generated[feature], reference[feature]
    n = min(len(gen), len(ref))
    kid = kid_features_to_metric(gen, ref, kid_subsets=100, kid_subset_size=min(1000, max(2, n // 2)),
                                 rng_seed=seed, verbose=False)  # torch-fidelity's cubic polynomial kernel
    prc = prc_features_to_metric(gen, ref, prc_neighborhood=PRC_NEIGHBOURS, prc_batch_size=10000,
                                 save_cpu_ram=True, verbose=False)
    out = {
        "fid": frechet_distance(gen, ref),
        "kid": kid["kernel_inception_distance_mean"],
        "kid_subset_std": kid["kernel_inception_distance_std"],
        "precision": prc["precision"],
        "recall": prc["recall"],
        **density_coverage(ref, gen),
    }
    if logits is not None and logits in generated:
        with torch.random.fork_rng():
            isc = isc_features_to_metric(generated[logits], splits=min(10, max(1, len(gen) // 50)), rng_seed=seed)
        out["inception_score"] = isc["inception_score_mean"]
    return {k: float(v) for k, v in out.items()}
