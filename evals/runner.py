"""The eval runner: every model sampled on equal terms, measured with torch-fidelity, written as a report.

What is measured for a model follows from its declared capabilities only:
sample -> FID, KID (and IS, precision/recall where the extractor allows), throughput, latency;
likelihood -> NLL bound in bits/dim on held-out data; reconstruct -> MSE, PSNR, SSIM;
prompt -> prompt (and attribute) accuracy.
"""

from __future__ import annotations

import json
import platform
import re
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from genlab.errors import GenlabError

from .report import write_report

EVALS_DIR = Path(__file__).parent


class ModelEntry(BaseModel):
    """One model in a suite: a registered id, optional weights and sampling options."""

    model_config = ConfigDict(extra="forbid")
    id: str
    label: str | None = None
    weights: str | None = None
    options: dict = Field(default_factory=dict)
    likelihood: dict = Field(default_factory=dict)  # keyword arguments for the model's bits_per_dim

    @property
    def name(self) -> str:
        return self.label or self.id


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    models: list[ModelEntry] | None = None  # None: every registered model that can sample
    dataset: str = "mnist-5k"
    num_samples: int = Field(1000, ge=2, le=100_000)
    seed: int = 0
    feature_extractor: str = "mnist-classifier"
    batch_size: int = Field(250, ge=1, le=10_000)
    likelihood_images: int = Field(500, ge=1)
    prompt_samples: int = Field(20, ge=1, le=10_000)  # per prompt, for prompt and attribute accuracy

    @field_validator("models", mode="before")
    @classmethod
    def _ids_to_entries(cls, value):
        if value is None:
            return None
        return [{"id": v} if isinstance(v, str) else v for v in value]


def load_suite(path: str | Path) -> EvalConfig:
    import tomllib

    path = Path(path)
    if not path.is_file():
        suites = sorted(p.name for p in EVALS_DIR.glob("*.toml"))
        raise GenlabError(f"no eval suite at {path}; suites in evals/: {', '.join(suites) or 'none'}")
    try:
        data = tomllib.loads(path.read_text())
        data.setdefault("name", path.stem)
        return EvalConfig(**data)
    except tomllib.TOMLDecodeError as exc:
        raise GenlabError(f"{path} is not valid TOML: {exc}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        raise GenlabError(f"{path}: invalid {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


# ----- torch-fidelity plumbing -----------------------------------------------------------------
def fidelity_metrics(generated, reference, extractor: str, *, seed: int = 0) -> dict:
    """FID, KID (and IS, precision/recall where the extractor provides them) of two uint8 image sets."""
    import torch
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from genlab.registry import get_feature_extractor

    spec = get_feature_extractor(extractor)
    name = f"genlab-{extractor}"
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(name, spec.load())
    cls = FEATURE_EXTRACTORS_REGISTRY[name]
    with_isc = "logits" in cls.get_provided_features_list()

    class Images(torch.utils.data.Dataset):  # torch-fidelity takes a Dataset of uint8 [C, H, W]
        def __init__(self, images):
            self.images = images

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i]

    n = min(len(generated), len(reference))
    torch.manual_seed(seed)
    metrics = torch_fidelity.calculate_metrics(
        input1=Images(generated), input2=Images(reference),
        feature_extractor=name, fid=True, kid=True, isc=with_isc, prc=True,
        # subsets smaller than N, or every subset is the whole set and the spread says nothing
        kid_subset_size=min(1000, max(2, n // 2)), kid_subsets=100, isc_splits=min(10, max(1, n // 50)),
        cuda=torch.cuda.is_available(), cache=False, batch_size=250, save_cpu_ram=True,
        verbose=False, rng_seed=seed,
    )
    renamed = {
        "fid": metrics["frechet_inception_distance"],
        "kid": metrics["kernel_inception_distance_mean"],
        "kid_std": metrics["kernel_inception_distance_std"],
        "precision": metrics.get("precision"),
        "recall": metrics.get("recall"),
    }
    if with_isc:
        renamed["inception_score"] = metrics["inception_score_mean"]
    return {k: (None if v is None else float(v)) for k, v in renamed.items()}


# ----- the run ---------------------------------------------------------------------------------
def _sample_all(model, entry: ModelEntry, n: int, seed: int, batch_size: int):
    """N images as uint8, drawn in seeded batches; returns (images, seconds spent sampling, nfe)."""
    import torch
    from tqdm.auto import tqdm

    from genlab.datasets import to_uint8

    options = model.parse_options(entry.options)
    chunks, seconds, nfe = [], 0.0, None
    batches = range(0, n, batch_size)
    for index, start in enumerate(tqdm(batches, desc=f"sample {entry.name}", unit="batch", leave=False)):
        result = model.sample(min(batch_size, n - start), seed=seed * 100_003 + index, options=options)
        chunks.append(to_uint8(result.images))
        seconds += result.seconds
        nfe = result.nfe
    return torch.cat(chunks), seconds, nfe


def _latency(model, entry: ModelEntry, seed: int, repeats: int = 5) -> float:
    options = model.parse_options(entry.options)
    times = [model.sample(1, seed=seed + r, options=options).seconds for r in range(repeats)]
    return sorted(times)[len(times) // 2]


def best_by_family(rows: list[dict]) -> dict:
    """Per family, the row with the lowest FID and its speed: "how fast is each family at its best"."""
    best: dict = {}
    for row in rows:
        if row.get("fid") is None:
            continue
        current = best.get(row["family"])
        if current is None or row["fid"] < current["fid"]:
            best[row["family"]] = {k: row.get(k) for k in ("model", "fid", "nfe", "images_per_second", "latency_ms")}
    return best


def run_eval(config: EvalConfig, out_dir: str | Path | None = None) -> Path:
    """Run ``config``; returns the path of the written report.md."""
    import torch

    from genlab.datasets import load_dataset, to_unit
    from genlab.images import grid
    from genlab.metrics import reconstruction_metrics
    from genlab.models import Capability
    from genlab.registry import get_dataset_spec, get_feature_extractor, get_model, get_models
    from genlab.training import code_version

    get_feature_extractor(config.feature_extractor)  # fail on a typo before any folder or sample is made
    get_dataset_spec(config.dataset)
    entries = config.models or [ModelEntry(id=m) for m in get_models(Capability.SAMPLE)]
    if not entries:
        raise GenlabError("no model that can sample is registered: install a plugin (see `genlab plugins`)")
    loaded: dict = {}  # one instance (and one copy of the weights) per model and checkpoint
    models = {e.name: loaded.setdefault((e.id, e.weights), get_model(e.id, weights=e.weights)) for e in entries}
    if len(models) != len(entries):
        raise GenlabError("two models in the suite share a name: give each a distinct label")
    for entry in entries:
        models[entry.name].parse_options(entry.options)

    name = config.name or f"{config.dataset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out = Path(out_dir) if out_dir else EVALS_DIR / "runs" / name
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GenlabError(f"cannot create report folder {out}: {exc.strerror}") from None

    train = load_dataset(config.dataset, "train", seed=config.seed)
    heldout = load_dataset(config.dataset, "heldout", seed=config.seed)
    n = config.num_samples
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))
    reference = train.images[order[:n]]

    # the real-data floor: held-out real digits against the same reference, same extractor
    floor = fidelity_metrics(heldout.images[:n], reference, config.feature_extractor, seed=config.seed)
    floor["num_images"] = min(n, len(heldout))

    rows, measured = [], {}
    for entry in entries:
        model = models[entry.name]
        row = {
            "model": entry.name, "id": entry.id, "family": model.family,
            "options": model.parse_options(entry.options).model_dump(),
            "capabilities": sorted(c.value for c in model.capabilities),
            "parameters": model.parameter_count(),
            "training": {k: model.metadata().get(k) for k in ("steps", "wall_seconds", "cpu_seconds", "dataset")},
        }
        if model.can(Capability.SAMPLE):
            images, seconds, nfe = _sample_all(model, entry, n, config.seed, config.batch_size)
            row.update({
                "nfe": nfe, "images_per_second": n / seconds if seconds > 0 else None,
                "latency_ms": 1000 * _latency(model, entry, config.seed),
                **fidelity_metrics(images, reference, config.feature_extractor, seed=config.seed),
            })
            grid_path = out / "images" / f"{re.sub(r'[^0-9A-Za-z_.-]', '_', entry.name)}.png"
            grid(images[:64].float() / 255, nrow=8, scale=2).save(grid_path)
            row["sample_grid"] = str(grid_path.relative_to(out))
        # likelihood and reconstruction don't depend on sampling options: once per set of weights
        weights_key = (entry.id, entry.weights)
        if model.can(Capability.LIKELIHOOD):
            key = (*weights_key, json.dumps(entry.likelihood, sort_keys=True))
            if key not in measured:
                subset = heldout.images[: config.likelihood_images]
                try:
                    measured[key] = model.bits_per_dim(subset, seed=config.seed, **entry.likelihood)
                except GenlabError as exc:
                    measured[key] = {"unavailable": str(exc)}
            row["likelihood"] = measured[key]
        if model.can(Capability.RECONSTRUCT):
            key = (*weights_key, "reconstruction")
            if key not in measured:
                x = to_unit(heldout.images[: config.likelihood_images])
                with torch.inference_mode():
                    measured[key] = reconstruction_metrics(x, model.reconstruct(x))
            row["reconstruction"] = measured[key]
        if model.can(Capability.PROMPT):
            row["prompts"] = model.prompt_metrics(per_prompt=config.prompt_samples, seed=config.seed,
                                                  options=entry.options)
        rows.append(row)

    result = {
        "name": name,
        "dataset": config.dataset,
        "num_samples": n,
        "reference": f"{n} training images of {config.dataset} (seeded split, seed {config.seed})",
        "feature_extractor": config.feature_extractor,
        "seed": config.seed,
        "config": config.model_dump(),
        "code_version": code_version(),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "real_data_floor": floor,
        "models": rows,
        "best_by_family": best_by_family(rows),
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    return write_report(result, out)
