"""The eval runner: every model sampled on equal terms, measured with torch-fidelity, written as a report.

What is measured for a model follows from its declared capabilities only:
sample -> FID, KID (and IS, precision/recall where the extractor allows), throughput, latency;
likelihood -> NLL bound in bits/dim on held-out data; reconstruct -> MSE, PSNR, SSIM;
prompt -> prompt (and attribute) accuracy.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from genlab.errors import GenlabError, describe
from genlab.models import MAX_SEED

from . import evals_dir
from .baselines import pixel_histogram_bpd
from .report import write_report


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


class CurveEntry(BaseModel):
    """Quality against training compute: a training run whose ``snapshots/`` (and ``final/``) are each
    sampled and scored like a row, plotted as FID against the CPU-seconds of training that made them."""

    model_config = ConfigDict(extra="forbid")
    id: str
    run: str  # the run folder (genlab train --run-dir) of a config with snapshot_every_cpu_minutes
    label: str | None = None
    options: dict = Field(default_factory=dict)
    # CPU-seconds spent before this run that its model needs (the LDM's first stage)
    extra_cpu_seconds: float = Field(0.0, ge=0)

    @property
    def name(self) -> str:
        return self.label or self.id


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    models: list[ModelEntry] | None = None  # None: every registered model that can sample
    dataset: str = "mnist-5k"
    num_samples: int = Field(1000, ge=2, le=100_000)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    # the train/held-out split the models were trained with (genlab train splits with its config's
    # seed, 0 for every bundled model): held-out digits must be digits no model saw
    split_seed: int = Field(0, ge=0, le=MAX_SEED)
    # independent sample sets (seeds seed, seed+1, ...), each against its own reference draw:
    # quality metrics are reported as mean and standard deviation over them
    repeats: int = Field(1, ge=1, le=20)
    feature_extractor: str = "mnist-classifier"
    extra_feature_extractors: list[str] = Field(default_factory=list)  # FID/KID also reported with these
    batch_size: int = Field(250, ge=1, le=10_000)
    likelihood_images: int = Field(500, ge=1)
    prompt_samples: int = Field(20, ge=1, le=10_000)  # per prompt, for prompt and attribute accuracy
    interpolation_pairs: int = Field(8, ge=0, le=1000)  # held-out pairs per interpolating model
    interpolation_steps: int = Field(16, ge=3, le=64)
    curves: list[CurveEntry] = Field(default_factory=list)

    @field_validator("models", mode="before")
    @classmethod
    def _ids_to_entries(cls, value):
        if value is None or not isinstance(value, list):
            return value
        if not value:
            raise ValueError("selects no model: list model ids, or leave models out to evaluate every model "
                             "that can sample")
        return [{"id": v} if isinstance(v, str) else v for v in value]


def load_suite(path: str | Path) -> EvalConfig:
    import tomllib

    path = Path(path)
    if not path.is_file():
        suites = sorted(p.name for p in evals_dir().glob("*.toml"))
        raise GenlabError(f"no eval suite at {path}; suites in evals/: {', '.join(suites) or 'none'}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise GenlabError(f"{path} is not a text file: give a TOML suite such as evals/bundled.toml") from None
    except OSError as exc:
        raise GenlabError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise GenlabError(f"{path} is not valid TOML: {exc}") from None
    if not data:
        raise GenlabError(f"{path} is empty: a suite names what to evaluate, e.g. models = [\"vae\"] "
                          "(see evals/bundled.toml)")
    data.setdefault("name", path.stem)
    try:
        return EvalConfig(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err["loc"]
        where = ".".join(map(str, loc))
        if err["type"] == "extra_forbidden":
            fields = ModelEntry.model_fields if loc[0] == "models" else EvalConfig.model_fields
            raise GenlabError(f"{path}: unknown setting {where!r}; valid settings: {', '.join(fields)}") from None
        value = repr(err.get("input"))
        value = value if len(value) <= 60 else value[:57] + "..."
        message = err["msg"].removeprefix("Value error, ")
        raise GenlabError(f"{path}: invalid {where} = {value}: {message}") from None


# ----- quality --------------------------------------------------------------------------------
def fidelity_metrics(generated, reference, extractor: str, *, seed: int = 0) -> dict:
    """FID, KID, precision/recall, density/coverage (and IS where the extractor gives logits) of two
    uint8 image sets, each featurized once (see ``quality``)."""
    from .quality import extract_features, quality_from_features

    feature, logits = feature_layers(extractor)
    return quality_from_features(extract_features(generated, extractor), extract_features(reference, extractor),
                                 seed=seed, feature=feature, logits=logits)


def feature_layers(extractor: str) -> tuple[str, str | None]:
    """(the feature layer FID/KID/PR use, the logits layer for IS or None) of a registered extractor."""
    from .quality import _extractor

    _, net = _extractor(extractor)
    provided = net.get_provided_features_list()
    return net.get_default_feature_layer_for_metric("fid"), ("logits" if "logits" in provided else None)


# per seed: every metric at N; at the floor's N (prefix eq_); FID extrapolated to N = infinity
QUALITY = ("fid", "kid", "inception_score", "precision", "recall", "density", "coverage", "fid_inf",
           "eq_fid", "eq_kid", "eq_precision", "eq_recall", "eq_density", "eq_coverage")
# bump when what a cached floor or row holds changes: older cached results are then measured again
# (sample shards are kept: they depend only on the model, its weights, options, N, batch and seed)
CACHE_VERSION = 3  # 2: equal-N metrics and FID at infinity; 3: unbiased DDPM bound, exact continuous-Bernoulli normaliser


def mean_and_spread(runs: list[dict]) -> dict:
    """Per-seed metric dicts -> the mean of each quality metric, its standard deviation over seeds
    (``spread``, None for a single seed) and the runs themselves."""
    import statistics

    out: dict = {"spread": {}, "runs": runs}
    for key in runs[0]:
        values = [r[key] for r in runs if r.get(key) is not None]
        if not values:
            out[key] = None
            continue
        out[key] = statistics.fmean(values)
        if key in QUALITY:
            out["spread"][key] = statistics.stdev(values) if len(values) > 1 else None
    return out


# ----- samples on disk -------------------------------------------------------------------------
def digest(data) -> str:
    """A short stable hash of JSON-able data: names sample folders and cached results."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _write_atomic(path: Path, text: str) -> None:
    from genlab.atomic import write_text

    write_text(path, text)


def sample_shards(model, entry: ModelEntry, n: int, seed: int, batch_size: int, folder: Path):
    """N images as uint8, drawn in seeded batches, each batch saved as a shard the moment it is made.

    A killed eval resumes from the shards on disk and samples only the missing ones; a shard's
    sampling time is stored with it, so throughput survives a resume. Returns (images, seconds,
    nfe, shards sampled by this call).
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from genlab.datasets import to_uint8
    from genlab.registry import guard

    folder.mkdir(parents=True, exist_ok=True)
    options = model.parse_options(entry.options)
    chunks, seconds, nfe, made = [], 0.0, None, 0
    starts = range(0, n, batch_size)
    for index, start in enumerate(tqdm(starts, desc=f"sample {entry.name} (seed {seed})", unit="shard", leave=False)):
        count = min(batch_size, n - start)
        shard = folder / f"shard-{index:05d}.safetensors"
        if shard.is_file():
            try:
                with safe_open(str(shard), "pt") as f:
                    images, meta = f.get_tensor("images"), f.metadata()
            except Exception:  # damaged on disk: drawn again
                images = ()
            if len(images) == count:
                chunks.append(images)
                seconds += float(meta["seconds"])
                nfe = int(meta["nfe"]) if meta.get("nfe") not in (None, "None") else None
                continue
        with guard(entry.id, "sample"):
            result = model.sample(count, seed=seed * 100_003 + index, options=options)
            images = to_uint8(result.images).contiguous()
        tmp = shard.with_suffix(".tmp")
        save_file({"images": images}, str(tmp), metadata={"seconds": repr(result.seconds), "nfe": str(result.nfe)})
        os.replace(tmp, shard)  # a shard is on disk whole or not at all
        chunks.append(images)
        seconds += result.seconds
        nfe = result.nfe
        made += 1
    return torch.cat(chunks), seconds, nfe, made


def _latency(model, entry: ModelEntry, seed: int, repeats: int = 5) -> float:
    from genlab.registry import guard

    options = model.parse_options(entry.options)
    with guard(entry.id, "sample"):
        times = [float(model.sample(1, seed=seed + r, options=options).seconds) for r in range(repeats)]
    return sorted(times)[len(times) // 2]


def best_by_family(rows: list[dict]) -> dict:
    """Per family, the row with the lowest FID (at the floor's N) and its speed: "how fast is each
    family at its best"."""
    from .claims import fid_of

    best: dict = {}
    for row in rows:
        if fid_of(row) is None:
            continue
        current = best.get(row["family"])
        if current is None or fid_of(row) < current["eq_fid"]:
            best[row["family"]] = {k: row.get(k) for k in ("model", "fid", "nfe", "images_per_second", "latency_ms")}
            best[row["family"]]["eq_fid"] = fid_of(row)
    return best


CHART_NAMES = ("fid_vs_nfe", "quality_vs_speed", "kl_per_dim", "fid_vs_compute")


def _slug(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]", "_", name)


# ----- the run ---------------------------------------------------------------------------------
def run_name(config: EvalConfig) -> str:
    """A name that is the same for the same settings, so re-running a command resumes its run."""
    models = ",".join(m.name for m in config.models) if config.models else "all"
    return config.name or f"{config.dataset}-n{config.num_samples}-seed{config.seed}-{digest([models, config.model_dump()])}"


def default_run_dir(config: EvalConfig) -> Path:
    return evals_dir() / "runs" / run_name(config)


def weights_fingerprint(model) -> list:
    """Names, sizes and modification times of a checkpoint's files: retrained weights are new weights."""
    if model.weights is None or not Path(model.weights).is_dir():
        return []
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(model.weights).iterdir() if p.is_file())


class _Run:
    """One eval run in one folder: what it measures, and where its shards and finished rows live."""

    def __init__(self, config: EvalConfig, out: Path):
        import torch

        from genlab.datasets import load_dataset

        self.config, self.out = config, out
        # what this call drew, and what an earlier call of the same run had left on disk
        self.shards = {"made": 0, "reused": 0, "results": 0}
        self.train = load_dataset(config.dataset, "train", seed=config.split_seed)
        self.heldout = load_dataset(config.dataset, "heldout", seed=config.split_seed)
        self.seeds = [config.seed + r for r in range(config.repeats)]
        self.extractors = [config.feature_extractor, *[e for e in config.extra_feature_extractors
                                                       if e != config.feature_extractor]]
        n = config.num_samples
        self.references = {}
        for seed in self.seeds:  # each seed draws its own reference set from the training split
            order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed))
            self.references[seed] = self.train.images[order[:n]]

    @property
    def equal_n(self) -> int:
        """The N at which every row is compared with the floor: as many images as the held-out split has."""
        return min(self.config.num_samples, len(self.heldout))

    def quality(self, images_by_seed: dict, *, floor: bool = False) -> dict:
        """Quality metrics per extractor, mean and spread over seeds.

        Per seed: every metric on all N images against the seed's N reference images (models only);
        the same at the floor's N (the first ``equal_n`` images of both sets, prefix ``eq_``), so
        that rows and the floor are compared at equal N; and FID∞ from subsets of 100 to ``equal_n``.
        """
        from .quality import extract_features, fid_infinity, quality_from_features

        n = self.equal_n
        out = {}
        for extractor in self.extractors:
            feature, logits = feature_layers(extractor)
            runs = []
            for s in self.seeds:
                reference = extract_features(self.references[s], extractor)
                generated = extract_features(images_by_seed[s], extractor)
                run = {} if floor else quality_from_features(generated, reference, seed=s, feature=feature,
                                                             logits=logits)
                at_n = quality_from_features({k: v[:n] for k, v in generated.items()},
                                             {k: v[:n] for k, v in reference.items()}, seed=s, feature=feature)
                run.update({f"eq_{k}": v for k, v in at_n.items() if k != "kid_subset_std"})
                infinity = fid_infinity(generated[feature], reference[feature], n_max=n, seed=s)
                run.update(fid_inf=infinity["fid_inf"], fid_inf_slope=infinity["slope"])
                runs.append(run)
            out[extractor] = mean_and_spread(runs) | {"equal_n": n}
        return out

    def cached(self, kind: str, key, compute):
        """``compute()``, or its result from an earlier (interrupted) run of the same thing, if that
        was stored by code that writes results of the same shape (``CACHE_VERSION``)."""
        path = self.out / "cache" / f"{kind}-{digest(key)}.json"
        if path.is_file():
            try:
                value = json.loads(path.read_text())
            except (OSError, ValueError):  # damaged on disk: measured again
                value = {}
            if isinstance(value, dict) and value.get("cache_version", 1) == CACHE_VERSION:
                self.shards["results"] += 1
                return value
        value = compute() | {"cache_version": CACHE_VERSION}
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, json.dumps(value))
        return value


def _floor(run: _Run) -> dict:
    """The real-data floor: held-out real digits against each seed's reference, same extractors, at
    the held-out split's size (``equal_n``), where the models are compared with it."""
    n = run.equal_n
    quality = run.quality({s: run.heldout.images[:n] for s in run.seeds}, floor=True)
    floor = dict(quality[run.config.feature_extractor])
    floor["num_images"] = n
    floor["extractors"] = {k: {m: v[m] for m in QUALITY if m in v} | {"spread": v["spread"]} for k, v in quality.items()}
    floor["sharpness"] = _sharpness(run.heldout.images[:n])
    return floor


def _snapshots(run_dir: Path) -> list[tuple[Path, dict]]:
    """(weights folder, {"step", "cpu_seconds"}) of a run's snapshots and its final weights, by step."""
    points = []
    for folder in sorted((run_dir / "snapshots").glob("step-*")):
        mark = folder / "snapshot.json"
        if folder.suffix != ".tmp" and mark.is_file():
            points.append((folder, json.loads(mark.read_text())))
    final = run_dir / "final" / "metadata.json"
    if final.is_file():
        meta = json.loads(final.read_text())
        if not points or meta["steps"] > points[-1][1]["step"]:
            points.append((final.parent, {"step": meta["steps"], "cpu_seconds": meta["cpu_seconds"]}))
    return points


def _curve(run: _Run, entry: CurveEntry) -> dict:
    """FID at the floor's N (first seed) of every snapshot of a training run, against CPU-seconds."""
    import torch

    from genlab.datasets import to_uint8
    from genlab.registry import get_model_class

    from .quality import extract_features, frechet_distance

    folder = Path(entry.run).expanduser()
    out = {"label": entry.name, "id": entry.id, "run": entry.run, "options": entry.options}
    points = _snapshots(folder)
    if not points:
        return out | {"unavailable": f"no snapshots in {folder}: train a config with snapshot_every_cpu_minutes "
                                      "into that --run-dir to draw this curve"}
    cls = get_model_class(entry.id)
    out["family"] = cls.family
    n, seed, extractor = run.equal_n, run.seeds[0], run.config.feature_extractor
    feature, _ = feature_layers(extractor)
    reference = extract_features(run.references[seed][:n], extractor)[feature]
    out["points"] = []
    for weights, mark in points:
        def measure(weights=weights):
            model = cls(weights=weights)
            options = model.parse_options(entry.options)
            images = torch.cat([to_uint8(model.sample(count, seed=seed * 100_003 + i, options=options).images)
                                for i, count in enumerate(_batches(n, run.config.batch_size))])
            return {"fid": frechet_distance(extract_features(images, extractor)[feature], reference)}

        key = [str(weights), weights_fingerprint(cls(weights=weights)), entry.options, n, seed, extractor]
        value = run.cached(f"curve-{_slug(entry.name)}", key, measure)
        out["points"].append({"step": mark["step"], "cpu_seconds": mark["cpu_seconds"] + entry.extra_cpu_seconds,
                              "fid": value["fid"]})
    return out


def _batches(n: int, size: int) -> list[int]:
    return [min(size, n - start) for start in range(0, n, size)]


def _sharpness(images) -> float:
    from .measures import sharpness

    return sharpness(images)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _interpolation(model, run: _Run, entry: ModelEntry, strip_path: Path) -> dict:
    """Smoothness of the model's own interpolation between held-out pairs, in classifier features."""
    import torch

    from genlab.datasets import to_unit
    from genlab.features import load_classifier
    from genlab.images import grid

    from .measures import path_smoothness

    c = run.config
    pairs = min(c.interpolation_pairs, len(run.heldout) // 2)
    order = torch.randperm(len(run.heldout), generator=torch.Generator().manual_seed(c.seed))[: 2 * pairs]
    x = to_unit(run.heldout.images[order])
    classifier = load_classifier()
    paths, features = [], []
    for i in range(pairs):
        frames = model.interpolate(x[2 * i], x[2 * i + 1], steps=c.interpolation_steps).float().clamp(0, 1)
        paths.append(frames)
        with torch.inference_mode():
            features.append(classifier.features(frames))
    result = path_smoothness(torch.stack(features))
    strip = torch.cat(paths[:3])
    grid(strip, nrow=c.interpolation_steps, scale=2).save(strip_path)
    result["strip"] = str(strip_path.relative_to(run.out))
    return result


def _latent_usage(model, run: _Run) -> dict | None:
    from genlab.datasets import to_unit

    from .measures import latent_usage

    try:
        mean, logvar = model.posterior(to_unit(run.heldout.images[: run.config.likelihood_images]))
    except NotImplementedError:
        return None
    usage = latent_usage(mean, logvar)
    usage.pop("activity")
    return usage


def _closest_pairs_image(samples, train, pairs: list[dict], path: Path) -> None:
    """Top row: the samples nearest to a training image; bottom row: those training images."""
    import torch

    from genlab.images import grid

    top = samples[[p["sample"] for p in pairs]]
    bottom = train[[p["train"] for p in pairs]]
    grid(torch.cat([top, bottom]).float() / 255, nrow=len(pairs), scale=2).save(path)


def _class_balance(images) -> dict:
    """How the bundled classifier labels the samples: a mode-collapse check (1.0 = all ten digits equally)."""
    import math

    import torch

    from genlab.datasets import to_unit
    from genlab.features import classify

    counts = torch.bincount(classify(to_unit(images)), minlength=10).float()
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum() / math.log(10))
    return {"counts": counts.int().tolist(), "normalized_entropy": entropy,
            "digits_covered": int((p >= 0.02).sum())}


def _measure_model(model, entry: ModelEntry, run: _Run, measured: dict) -> dict:
    import torch

    from genlab.datasets import to_unit
    from genlab.images import grid
    from genlab.metrics import reconstruction_metrics
    from genlab.models import Capability
    from genlab.registry import guard
    from genlab.training import code_version

    from .measures import loss_stability, memorization

    config, out = run.config, run.out
    slug = _slug(entry.name)
    with guard(entry.id, "describe itself"):
        options = model.parse_options(entry.options).model_dump()
        row = {
            "model": entry.name, "id": entry.id, "family": model.family, "options": options,
            "capabilities": sorted(c.value for c in model.capabilities),
            "parameters": model.parameter_count(),
            "code_version": code_version(),
            "training": {k: model.metadata().get(k) for k in ("steps", "wall_seconds", "cpu_seconds", "dataset")},
            "stability": loss_stability(model.training_log()),
            "objective": getattr(model, "training_objective", None),
            "latent_shape": model.latent_shape(),
            "data_shape": tuple(run.train.images.shape[1:]),
        }
    weights_key = (entry.id, str(model.weights), json.dumps(weights_fingerprint(model)))
    if model.can(Capability.SAMPLE):
        images_by_seed, seconds, nfe = {}, 0.0, None
        for seed in run.seeds:
            folder = out / "samples" / f"{slug}-{digest([weights_key, options, config.num_samples, config.batch_size])}" / f"seed-{seed}"
            images, sec, nfe, made = sample_shards(model, entry, config.num_samples, seed, config.batch_size, folder)
            run.shards["made"] += made
            run.shards["reused"] += -(-config.num_samples // config.batch_size) - made
            images_by_seed[seed] = images
            seconds += sec
        quality = run.quality(images_by_seed)
        main = quality[config.feature_extractor]
        first = images_by_seed[run.seeds[0]]
        n_total = config.num_samples * len(run.seeds)
        row.update({
            "nfe": nfe, "images_per_second": n_total / seconds if seconds > 0 else None,
            "latency_ms": 1000 * _latency(model, entry, config.seed),
            **main,
            "seeds": run.seeds,
            "extractors": {k: {m: v.get(m) for m in QUALITY} | {"spread": v["spread"]} for k, v in quality.items()},
            "sharpness": _sharpness(first),
            "class_balance": _class_balance(first),
        })
        grid_path = out / "images" / f"{slug}.png"
        grid(first[:64].float() / 255, nrow=8, scale=2).save(grid_path)
        row["sample_grid"] = str(grid_path.relative_to(out))
        if first.shape[1:] == run.train.images.shape[1:]:
            memo = memorization(first, run.train.images, run.heldout.images[: config.num_samples])
            pairs_path = out / "images" / f"{slug}_closest.png"
            _closest_pairs_image(first, run.train.images, memo["closest_pairs"], pairs_path)
            memo["image"] = str(pairs_path.relative_to(out))
        else:
            memo = {"unavailable": f"samples are {tuple(first.shape[1:])}, the data {tuple(run.train.images.shape[1:])}"}
        row["memorization"] = memo
    # likelihood, reconstruction, latents and interpolation don't depend on sampling options:
    # measured once per set of weights
    if model.can(Capability.LIKELIHOOD):
        key = (*weights_key, json.dumps(entry.likelihood, sort_keys=True))
        if key not in measured:
            subset = run.heldout.images[: config.likelihood_images]
            try:
                with guard(entry.id, "compute bits_per_dim"):
                    value = model.bits_per_dim(subset, seed=config.seed, **entry.likelihood)
                if not isinstance(value, dict) or not _is_number(value.get("bpd")):
                    raise GenlabError(f"bits_per_dim of model {entry.id} returned {type(value).__name__}, not a "
                                      "dict with a numeric 'bpd'")
                measured[key] = {"method": "n/a", "images": len(subset), **value}
            except GenlabError as exc:  # the plugin's own reason, or its bug: the rest of the row stands
                measured[key] = {"unavailable": str(exc)}
        row["likelihood"] = measured[key]
    if model.can(Capability.RECONSTRUCT):
        key = (*weights_key, "reconstruction")
        if key not in measured:
            x = to_unit(run.heldout.images[: config.likelihood_images])
            with torch.inference_mode(), guard(entry.id, "reconstruct"):
                reconstructed = model.reconstruct(x)
            measured[key] = reconstruction_metrics(x, reconstructed)
        row["reconstruction"] = measured[key]
    if model.can(Capability.ENCODE):
        key = (*weights_key, "latents")
        if key not in measured:
            with guard(entry.id, "encode"):
                measured[key] = _latent_usage(model, run)
        if measured[key] is not None:
            row["latents"] = measured[key]
    if model.can(Capability.INTERPOLATE) and config.interpolation_pairs > 0:
        key = (*weights_key, "interpolation")
        if key not in measured:
            with guard(entry.id, "interpolate"):
                measured[key] = _interpolation(model, run, entry, out / "images" / f"{slug}_interpolation.png")
        row["interpolation"] = measured[key]
    if model.can(Capability.PROMPT):
        with guard(entry.id, "follow prompts"):
            prompts = model.prompt_metrics(per_prompt=config.prompt_samples, seed=config.seed,
                                           options=entry.options)
        if not isinstance(prompts, dict) or not _is_number(prompts.get("prompt_accuracy")):
            raise GenlabError(f"prompt_metrics of model {entry.id} returned no numeric 'prompt_accuracy'")
        # what the report's table reads, whatever a plugin leaves out
        row["prompts"] = {"options": entry.options, "samples": None, "attention": None, **prompts,
                          "attribute_accuracy": {"thickness": None, "slant": None,
                                                 **(prompts.get("attribute_accuracy") or {})}}
    return row


IMAGE_INPUTS = ("encode", "reconstruct", "interpolate", "likelihood")  # capabilities fed the dataset's images


def _shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _check_entry(model, entry: ModelEntry, config: EvalConfig, data_shape: tuple) -> None:
    """Before anything runs: the entry's options and likelihood arguments are ones the model takes,
    and a model that is fed the dataset's images takes images of that shape."""
    import inspect

    from genlab.models import Capability, settings_problem
    from genlab.registry import guard

    with guard(entry.id, "parse its options"):
        model.parse_options(entry.options)
    if entry.likelihood:
        if not model.can(Capability.LIKELIHOOD):
            raise GenlabError(f"model {entry.name} has no likelihood capability: remove its likelihood table")
        params = list(inspect.signature(model.bits_per_dim).parameters.values())[1:]  # after the images
        valid = [p.name for p in params if p.name != "seed" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        open_ended = any(p.kind is p.VAR_KEYWORD for p in params)
        for key in entry.likelihood:
            if key not in valid and not open_ended:
                why = "is set by the suite's seed" if key == "seed" else "is not an argument of its bits_per_dim"
                raise GenlabError(f"model {entry.name}: likelihood setting {key!r} {why}; valid settings: "
                                  f"{', '.join(valid) or 'none'}")
        problem = settings_problem([model.bits_per_dim], entry.likelihood, allow_unknown=True)
        if problem:
            raise GenlabError(f"model {entry.name}: likelihood setting {problem}")
    if any(model.can(c) for c in IMAGE_INPUTS):
        with guard(entry.id, "load"):
            shape = model.image_shape()
        if shape is not None and tuple(shape) != tuple(data_shape):
            raise GenlabError(
                f"model {entry.name} takes {_shape(shape)} images but dataset {config.dataset} holds "
                f"{_shape(data_shape)} images: evaluate it on a dataset of its size, or give it weights "
                f"trained on {config.dataset}"
            )


def run_eval(config: EvalConfig, out_dir: str | Path | None = None) -> Path:
    """Run ``config``; returns the path of the written report.md.

    Samples go to ``out/samples`` in shards and each finished model's row to ``out/cache``, so the
    same command after a crash or Ctrl-C picks up where the run stopped.
    """
    import torch
    from tqdm.auto import tqdm

    from genlab.errors import ModelError, UnknownModelError
    from genlab.models import Capability
    from genlab.registry import (
        get_dataset_spec,
        get_feature_extractor,
        get_model,
        get_models,
        plugin_of,
    )
    from genlab.training import code_version

    for extractor in (config.feature_extractor, *config.extra_feature_extractors):
        get_feature_extractor(extractor)  # fail on a typo before any folder or sample is made
    data_shape = tuple(get_dataset_spec(config.dataset).image_shape)
    # models the suite names are the user's choice: a mistake about one stops the run before it
    # starts; models taken from the registry are measured as far as each one allows
    explicit = config.models is not None
    entries = config.models if explicit else [ModelEntry(id=m) for m in get_models(Capability.SAMPLE)]
    if not entries:
        raise GenlabError("the suite selects no model" if explicit else
                          "no model that can sample is registered: install a plugin (see `genlab plugins`)")
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise GenlabError("two models in the suite share a name: give each a distinct label")
    slugs = [_slug(e.name) for e in entries]
    clash = next((e.name for e, s in zip(entries, slugs) if slugs.count(s) > 1 or s in CHART_NAMES), None)
    if clash is not None:
        raise GenlabError(f"the label {clash!r} would share image files with another model or a chart: "
                          "give it a distinct label")
    loaded: dict = {}  # one instance (and one copy of the weights) per model and checkpoint
    models: dict = {}
    failed: dict[str, str] = {}  # entry name -> why it was not measured; the others go on
    for entry in entries:
        try:
            if (entry.id, entry.weights) not in loaded:
                loaded[entry.id, entry.weights] = get_model(entry.id, weights=entry.weights)
            models[entry.name] = loaded[entry.id, entry.weights]
            _check_entry(models[entry.name], entry, config, data_shape)
        except UnknownModelError:
            raise
        except ModelError as exc:  # a plugin's bug
            failed[entry.name] = str(exc)
        except GenlabError as exc:
            if explicit:
                raise
            failed[entry.name] = str(exc)

    from genlab.datasets import load_dataset

    load_dataset(config.dataset, "train", seed=config.split_seed)  # a bad dataset stops the run before its folder is made
    name = config.name or run_name(config)
    out = Path(out_dir) if out_dir else default_run_dir(config)
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GenlabError(f"cannot create report folder {out}: {exc.strerror}") from None

    run = _Run(config, out)
    settings = config.model_dump(exclude={"name", "models"})
    floor = run.cached("floor", settings, lambda: _floor(run))  # held-out digits: the best any model can do
    rows, measured = [], {}
    for entry in tqdm(entries, desc=f"eval {name}", unit="model"):
        if entry.name in failed:
            continue
        model = models[entry.name]
        try:
            # parsed options: a changed default is a changed setting
            key = [settings, entry.model_dump(), model.parse_options(entry.options).model_dump(),
                   str(model.weights), weights_fingerprint(model)]
            rows.append(run.cached(f"row-{_slug(entry.name)}", key,
                                   lambda m=model, e=entry: _measure_model(m, e, run, measured)))
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as exc:  # one model's failure must not cost the others (not cached: retried)
            failed[entry.name] = str(exc) if isinstance(exc, GenlabError) else describe(exc)
    failed_models = [{"model": e.name, "id": e.id, "plugin": plugin_of(e.id), "reason": failed[e.name]}
                     for e in entries if e.name in failed]

    curves = [_curve(run, entry) for entry in tqdm(config.curves, desc="training curves", unit="run")]
    result = {
        "name": name,
        "dataset": config.dataset,
        "num_samples": config.num_samples,
        "seeds": run.seeds,
        "reference": f"{config.num_samples} training images of {config.dataset} drawn with each seed",
        "feature_extractor": config.feature_extractor,
        "extractors": run.extractors,
        "extractor_descriptions": {e: get_feature_extractor(e).description for e in run.extractors},
        "seed": config.seed,
        "config": config.model_dump(),
        "config_hash": digest(config.model_dump()),
        "code_version": code_version(),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "real_data_floor": floor,
        # the "is the model learning anything" line of the likelihood table, on the same held-out images
        "likelihood_baseline": pixel_histogram_bpd(run.train.images, run.heldout.images[: config.likelihood_images]),
        "models": rows,
        "failed_models": failed_models,  # each with the reason it has no row
        "best_by_family": best_by_family(rows),
        "curves": curves,
    }
    from .claims import seed_claims

    try:
        result["claims"] = seed_claims(result)
    except Exception as exc:  # rows from a plugin the claims did not expect: the report still comes
        import warnings

        from genlab.errors import GenlabWarning

        result["claims"] = []
        warnings.warn(GenlabWarning(f"the seed texts' claims could not be judged ({describe(exc)}); "
                                    "the report has every other section"), stacklevel=2)
    if run.shards["reused"] or run.shards["results"]:
        tqdm.write(f"resumed: {run.shards['results']} finished results and {run.shards['reused']} sample "
                   f"shards were read from {out}; {run.shards['made']} shards were drawn now")
    _write_atomic(out / "metrics.json", json.dumps(result, indent=2))
    return write_report(result, out)
