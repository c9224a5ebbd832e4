"""The eval runner: every model sampled on equal terms, measured with torch-fidelity, written as a report.

What is measured for a model follows from its declared capabilities only:
sample -> FID, KID (and IS, precision/recall where the extractor allows), throughput, latency;
likelihood -> NLL bound in bits/dim on held-out data; reconstruct -> MSE, PSNR, SSIM;
prompt -> prompt (and attribute) accuracy.

An eval is cut into jobs (``_plan``): reference features, sample shards with their features, each set
of weights' likelihood, reconstruction, latents and interpolation, each row's prompt metrics, and
each finished row. Every job leaves its result in the run folder, so a crashed eval resumes, and
several processes (spawned by the runner, one per core by default, or started by ``torchrun`` /
``accelerate launch``) can share the jobs out (``parallel``); the main process then writes the
report from the run folder. The numbers do not depend on how many processes computed them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

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


def _read_shard(shard: Path, count: int):
    """(images, seconds, nfe, runtime) of a shard on disk, or None when it is missing, damaged or of
    another size; runtime is what ran the network ("onnxruntime fp32"), None when the model did not say."""
    from safetensors import safe_open

    if not shard.is_file():
        return None
    try:
        with safe_open(str(shard), "pt") as f:
            images, meta = f.get_tensor("images"), f.metadata()
        nfe = int(meta["nfe"]) if meta.get("nfe") not in (None, "None") else None
        seconds = float(meta["seconds"])
    except Exception:  # damaged on disk: drawn again
        return None
    return (images, seconds, nfe, meta.get("runtime")) if len(images) == count else None


def _runtime_label(info: dict) -> str | None:
    """What ran a sampler's network, from its ``Samples.info`` ("openvino fp32"), if it says."""
    if not isinstance(info, dict) or not info.get("backend"):
        return None
    return " ".join(str(info[k]) for k in ("backend", "precision", "mode") if info.get(k))


def draw_shard(model, entry: ModelEntry, options, count: int, seed: int, index: int, shard: Path):
    """Shard ``index`` of a seed's samples, drawn and saved whole (its sampling time with it, so that
    throughput survives a resume); returns (images, seconds, nfe, runtime)."""
    from safetensors.torch import save_file

    from genlab.datasets import to_uint8
    from genlab.registry import guard

    with guard(entry.id, "sample"):
        result = model.sample(count, seed=seed * 100_003 + index, options=options)
        images = to_uint8(result.images).contiguous()
    shard.parent.mkdir(parents=True, exist_ok=True)
    tmp = shard.with_name(f".{shard.name}.{os.getpid()}.tmp")
    runtime = _runtime_label(result.info)
    save_file({"images": images}, str(tmp), metadata={"seconds": repr(result.seconds), "nfe": str(result.nfe),
                                                      **({"runtime": runtime} if runtime else {})})
    os.replace(tmp, shard)  # a shard is on disk whole or not at all
    return images, float(result.seconds), result.nfe, runtime


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}.safetensors"


def sample_shards(model, entry: ModelEntry, n: int, seed: int, batch_size: int, folder: Path):
    """N images as uint8 in seeded batches, each batch a shard on disk (read back, or drawn and saved
    the moment it is made): a killed eval resumes from the shards on disk and samples only the missing
    ones. Returns (the shards' images, seconds, nfe, shards drawn by this call, the runtimes that drew them)."""
    from tqdm.auto import tqdm

    options = model.parse_options(entry.options)
    chunks, seconds, nfe, made, runtimes = [], 0.0, None, 0, set()
    counts = _batches(n, batch_size)
    for index, count in enumerate(tqdm(counts, desc=f"sample {entry.name} (seed {seed})", unit="shard", leave=False)):
        found = _read_shard(shard_path(folder, index), count)
        if found is None:
            found = draw_shard(model, entry, options, count, seed, index, shard_path(folder, index))
            made += 1
        images, sec, nfe, runtime = found
        chunks.append(images)
        seconds += sec
        runtimes.add(runtime)
    return chunks, seconds, nfe, made, runtimes


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


CLASSIFIER = "mnist-classifier"


def weights_fingerprint(model) -> list:
    """Names, sizes and modification times of a checkpoint's files: retrained weights are new weights."""
    return _folder_fingerprint(model.weights)


def _folder_fingerprint(folder) -> list:
    if folder is None or not Path(folder).is_dir():
        return []
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).iterdir() if p.is_file())


class _Run:
    """One eval run in one folder: what it measures, and where its shards and finished rows live."""

    def __init__(self, config: EvalConfig, out: Path):
        import torch

        from genlab.datasets import load_dataset

        self.config, self.out = config, out
        # what every cached result depends on: not the models (each row keys its own), nor the curves (each
        # point keys its own), so adding either to a suite redraws nothing already measured
        self.settings = config.model_dump(exclude={"name", "models", "curves"})
        self.owners: dict = {}  # weights -> the first row of the suite that uses them (names shared images)
        self.train = load_dataset(config.dataset, "train", seed=config.split_seed)
        self.heldout = load_dataset(config.dataset, "heldout", seed=config.split_seed)
        self.seeds = [config.seed + r for r in range(config.repeats)]
        self.extractors = [config.feature_extractor, *[e for e in config.extra_feature_extractors
                                                       if e != config.feature_extractor]]
        # samples also go through the classifier, whose logits give their class balance
        self.sample_extractors = [*self.extractors, *[e for e in [CLASSIFIER] if e not in self.extractors]]
        n = config.num_samples
        self.references = {}
        for seed in self.seeds:  # each seed draws its own reference set from the training split
            order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed))
            self.references[seed] = self.train.images[order[:n]]

    @property
    def equal_n(self) -> int:
        """The N at which every row is compared with the floor: as many images as the held-out split has."""
        return min(self.config.num_samples, len(self.heldout))

    # ----- features: each image set goes through each extractor once, and is kept on disk ---------
    def reference_features(self, seed: int, extractor: str) -> dict:
        """Features of a seed's reference draw (the machine-wide cache: the same for every run)."""
        from .quality import extract_features

        return extract_features(self.references[seed], extractor)

    def heldout_features(self, extractor: str) -> dict:
        """Features of the floor's held-out digits (the machine-wide cache)."""
        from .quality import extract_features

        return extract_features(self.heldout.images[: self.equal_n], extractor)

    def shard_features(self, images, folder: Path) -> dict:
        """{extractor: features} of one sample shard, kept beside the shards in the run folder: a shard
        is featurized once, by whichever process drew it, and the sets of a seed are its shards'."""
        from .quality import extract_features

        return {e: extract_features(images, e, cache_dir=folder / "features") for e in self.sample_extractors}

    def samples_folder(self, entry: ModelEntry, model, seed: int) -> Path:
        options = model.parse_options(entry.options).model_dump()
        name = digest([_weights_key(entry, model), options, self.config.num_samples, self.config.batch_size])
        return self.out / "samples" / f"{_slug(entry.name)}-{name}" / f"seed-{seed}"

    def quality(self, features_by_seed: dict, *, floor: bool = False) -> dict:
        """Quality metrics per extractor, mean and spread over seeds, from {seed: {extractor: features}}.

        Per seed: every metric on all N images against the seed's N reference images (models only);
        the same at the floor's N (the first ``equal_n`` images of both sets, prefix ``eq_``), so
        that rows and the floor are compared at equal N; and FID∞ from subsets of 100 to ``equal_n``.
        """
        from .quality import fid_infinity, quality_from_features

        n = self.equal_n
        out = {}
        for extractor in self.extractors:
            feature, logits = feature_layers(extractor)
            runs = []
            for s in self.seeds:
                reference = self.reference_features(s, extractor)
                generated = features_by_seed[s][extractor]
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

    # ----- results on disk -------------------------------------------------------------------------
    def cache_path(self, kind: str, key) -> Path:
        return self.out / "cache" / f"{kind}-{digest(key)}.json"

    def cached_value(self, kind: str, key) -> dict | None:
        """A result stored by an earlier job or run, if it was written by code that writes results of
        the same shape (``CACHE_VERSION``); None otherwise (damaged ones included)."""
        path = self.cache_path(kind, key)
        if not path.is_file():
            return None
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError):  # damaged on disk: measured again
            return None
        return value if isinstance(value, dict) and value.get("cache_version", 1) == CACHE_VERSION else None

    def cached(self, kind: str, key, compute):
        """``compute()``, or its result from an earlier job or (interrupted) run of the same thing."""
        value = self.cached_value(kind, key)
        if value is not None:
            return value
        value = compute() | {"cache_version": CACHE_VERSION}
        path = self.cache_path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, json.dumps(value))
        return value

    def stored(self, kind: str, key, compute):
        """``compute()`` (any JSON value) once per run folder: kept in cache/ for the row that reads it,
        whichever process computes it, and for a resumed run."""
        return self.cached(kind, [self.settings, key], lambda: {"value": compute()})["value"]

    def row_key(self, entry: ModelEntry, model) -> list:
        # parsed options: a changed default is a changed setting
        return [self.settings, entry.model_dump(), model.parse_options(entry.options).model_dump(),
                str(model.weights), weights_fingerprint(model)]

    def row_is_cached(self, entry: ModelEntry, model) -> bool:
        return self.cached_value(f"row-{_slug(entry.name)}", self.row_key(entry, model)) is not None


def _floor(run: _Run) -> dict:
    """The real-data floor: held-out real digits against each seed's reference, same extractors, at
    the held-out split's size (``equal_n``), where the models are compared with it."""
    n = run.equal_n
    heldout = {e: run.heldout_features(e) for e in run.extractors}  # one pass: the same images for every seed
    quality = run.quality({s: heldout for s in run.seeds}, floor=True)
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


def _curve_points(run: _Run, entry: CurveEntry) -> list[tuple[dict, str, list, Callable[[], dict]]]:
    """(snapshot mark, cache kind, cache key, compute) of each point of a training curve: FID at the
    floor's N (first seed) of one snapshot. Each point is a job of its own, so the processes of an
    eval share a curve's snapshots as they share sample shards."""
    from genlab.registry import get_model_class

    cls = get_model_class(entry.id)
    n, seed, extractor = run.equal_n, run.seeds[0], run.config.feature_extractor
    points = []
    for weights, mark in _snapshots(Path(entry.run).expanduser()):
        def measure(weights=weights):
            import torch

            from genlab.datasets import to_uint8

            from .quality import extract_features, frechet_distance

            feature, _ = feature_layers(extractor)
            # the reference draw's features, not a second pass
            reference = run.reference_features(seed, extractor)[feature][:n]
            model = cls(weights=weights)
            # published numbers too, so float32; but every snapshot is a new network: probed, the bundled
            # curves' 63 points took 705 core-seconds against 797 by plain PyTorch, and left an exported
            # graph and compiled blobs per snapshot in the cache (about 13 MB each, an estimated 0.4 GB): plain PyTorch
            options = model.parse_options(_pinned(model, entry.options, CURVE_RUNTIME))
            images = torch.cat([to_uint8(model.sample(count, seed=seed * 100_003 + i, options=options).images)
                                for i, count in enumerate(_batches(n, run.config.batch_size))])
            return {"fid": frechet_distance(extract_features(images, extractor)[feature], reference)}

        key = [str(weights), _folder_fingerprint(weights), entry.options, n, seed, extractor]
        points.append((mark, f"curve-{_slug(entry.name)}", key, measure))
    return points


def _curve(run: _Run, entry: CurveEntry) -> dict:
    """FID at the floor's N (first seed) of every snapshot of a training run, against CPU-seconds
    (the points' jobs computed them; a point missing from the cache is computed here)."""
    from genlab.registry import get_model_class

    folder = Path(entry.run).expanduser()
    out = {"label": entry.name, "id": entry.id, "run": entry.run, "options": entry.options}
    points = _curve_points(run, entry)
    if not points:
        return out | {"unavailable": f"no snapshots in {folder}: train a config with snapshot_every_cpu_minutes "
                                      "into that --run-dir to draw this curve"}
    out["family"] = get_model_class(entry.id).family
    out["points"] = []
    for mark, kind, key, measure in points:
        try:
            value = run.cached(kind, key, measure)
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as exc:  # a damaged snapshot costs its curve, not the report
            reason = str(exc) if isinstance(exc, GenlabError) else describe(exc)
            return {k: v for k, v in out.items() if k != "points"} | {
                "unavailable": f"the snapshot at step {mark['step']} could not be measured: {reason}"}
        out["points"].append({"step": mark["step"], "cpu_seconds": mark["cpu_seconds"] + entry.extra_cpu_seconds,
                              "fid": value["fid"]})
    return out


def _runtimes(rows: list[dict]) -> dict:
    out: dict = {}
    for row in rows:
        for runtime in row.get("runtime") or []:
            out.setdefault(runtime, []).append(row["model"])
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
    from genlab.features import classifier_run
    from genlab.images import grid

    from .measures import path_smoothness

    c = run.config
    pairs = min(c.interpolation_pairs, len(run.heldout) // 2)
    order = torch.randperm(len(run.heldout), generator=torch.Generator().manual_seed(c.seed))[: 2 * pairs]
    x = to_unit(run.heldout.images[order])
    paths, features = [], []
    for i in range(pairs):
        frames = model.interpolate(x[2 * i], x[2 * i + 1], steps=c.interpolation_steps).float().clamp(0, 1)
        paths.append(frames)
        features.append(classifier_run(frames, "features"))
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


def _class_balance(logits) -> dict:
    """How the bundled classifier labels the samples (from its logits, which the samples' features
    include): a mode-collapse check (1.0 = all ten digits equally)."""
    import math

    import torch

    counts = torch.bincount(logits.argmax(1), minlength=10).float()
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum() / math.log(10))
    return {"counts": counts.int().tolist(), "normalized_entropy": entropy,
            "digits_covered": int((p >= 0.02).sum())}


def _measure_model(model, entry: ModelEntry, run: _Run) -> dict:
    """A suite row, from what the row's jobs left on disk (anything missing is computed here)."""
    import torch

    from genlab.images import grid
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
    if model.can(Capability.SAMPLE):
        features_by_seed, images_by_seed, seconds, nfe, runtimes = {}, {}, 0.0, None, set()
        for seed in run.seeds:
            folder = run.samples_folder(entry, model, seed)
            chunks, sec, nfe, _, used = sample_shards(model, entry, config.num_samples, seed, config.batch_size, folder)
            runtimes |= used
            shards = [run.shard_features(images, folder) for images in chunks]
            features_by_seed[seed] = {e: {k: torch.cat([f[e][k] for f in shards]) for k in shards[0][e]}
                                      for e in run.sample_extractors}
            images_by_seed[seed] = torch.cat(chunks)
            seconds += sec
        quality = run.quality(features_by_seed)
        main = quality[config.feature_extractor]
        first = images_by_seed[run.seeds[0]]
        n_total = config.num_samples * len(run.seeds)
        row.update({
            "nfe": nfe, "images_per_second": n_total / seconds if seconds > 0 else None,
            # what ran the network for these samples (several: shards drawn by processes that probed apart)
            "runtime": sorted(r for r in runtimes if r) or None,
            "latency_ms": 1000 * _latency(model, entry, config.seed),
            **main,
            "seeds": run.seeds,
            "extractors": {k: {m: v.get(m) for m in QUALITY} | {"spread": v["spread"]} for k, v in quality.items()},
            "sharpness": _sharpness(first),
            "class_balance": _class_balance(features_by_seed[run.seeds[0]][CLASSIFIER]["logits"]),
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
    for kind, key, compute in _shared_measures(model, entry, run):
        value = run.stored(kind, key, compute)
        if value is not None:
            row[kind] = value
    if model.can(Capability.PROMPT):
        prompts = run.stored("prompts", run.row_key(entry, model), lambda: _prompt_metrics(model, entry, run))
        # what the report's table reads, whatever a plugin leaves out
        row["prompts"] = {"options": entry.options, "samples": None, "attention": None, **prompts,
                          "attribute_accuracy": {"thickness": None, "slant": None,
                                                 **(prompts.get("attribute_accuracy") or {})}}
    return row


def _weights_key(entry: ModelEntry, model) -> tuple:
    return (entry.id, str(model.weights), json.dumps(weights_fingerprint(model)))


def _shared_measures(model, entry: ModelEntry, run: _Run) -> list[tuple]:
    """(kind, key, compute) of the measures that depend on a model's weights, not its sampling options:
    likelihood, reconstruction, latents and interpolation, as far as it declares them. Each is computed
    once per set of weights (by whichever process takes its job first) and read by every row of them;
    the first such row of the suite names the interpolation strip."""
    from genlab.models import Capability
    from genlab.registry import guard

    config = run.config
    weights = _weights_key(entry, model)
    owner = _slug(run.owners.get(weights, entry.name))
    measures = []
    if model.can(Capability.LIKELIHOOD):
        measures.append(("likelihood", [weights, entry.likelihood], lambda: _likelihood(model, entry, run)))
    if model.can(Capability.RECONSTRUCT):
        def reconstruction():
            import torch

            from genlab.datasets import to_unit
            from genlab.metrics import reconstruction_metrics

            x = to_unit(run.heldout.images[: config.likelihood_images])
            with torch.inference_mode(), guard(entry.id, "reconstruct"):
                reconstructed = model.reconstruct(x)
            return reconstruction_metrics(x, reconstructed)

        measures.append(("reconstruction", [weights], reconstruction))
    if model.can(Capability.ENCODE):
        def latents():
            with guard(entry.id, "encode"):
                return _latent_usage(model, run)

        measures.append(("latents", [weights], latents))
    if model.can(Capability.INTERPOLATE) and config.interpolation_pairs > 0:
        def interpolation():
            with guard(entry.id, "interpolate"):
                return _interpolation(model, run, entry, run.out / "images" / f"{owner}_interpolation.png")

        measures.append(("interpolation", [weights], interpolation))
    return measures


def _likelihood(model, entry: ModelEntry, run: _Run) -> dict:
    from genlab.registry import guard

    subset = run.heldout.images[: run.config.likelihood_images]
    try:
        with guard(entry.id, "compute bits_per_dim"):
            value = model.bits_per_dim(subset, seed=run.config.seed, **entry.likelihood)
        if not isinstance(value, dict) or not _is_number(value.get("bpd")):
            raise GenlabError(f"bits_per_dim of model {entry.id} returned {type(value).__name__}, not a "
                              "dict with a numeric 'bpd'")
        return {"method": "n/a", "images": len(subset), **value}
    except GenlabError as exc:  # the plugin's own reason, or its bug: the rest of the row stands
        return {"unavailable": str(exc)}


def _prompt_metrics(model, entry: ModelEntry, run: _Run) -> dict:
    from genlab.registry import guard

    with guard(entry.id, "follow prompts"):
        prompts = model.prompt_metrics(per_prompt=run.config.prompt_samples, seed=run.config.seed,
                                       options=entry.options)
    if not isinstance(prompts, dict) or not _is_number(prompts.get("prompt_accuracy")):
        raise GenlabError(f"prompt_metrics of model {entry.id} returned no numeric 'prompt_accuracy'")
    return prompts


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


def _select(config: EvalConfig) -> tuple[list, dict, dict]:
    """The suite's entries, a loaded model per entry and {entry name: why it cannot be measured},
    checked before anything runs: a mistake about a model the suite names stops the run, a model
    taken from the registry is measured as far as it allows."""
    from genlab.errors import ModelError, UnknownModelError
    from genlab.models import Capability
    from genlab.registry import get_dataset_spec, get_feature_extractor, get_model, get_models

    for extractor in (config.feature_extractor, *config.extra_feature_extractors):
        get_feature_extractor(extractor)  # fail on a typo before any folder or sample is made
    data_shape = tuple(get_dataset_spec(config.dataset).image_shape)
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
            entry.options = _pinned(models[entry.name], entry.options)
            _check_entry(models[entry.name], entry, config, data_shape)
        except UnknownModelError:
            raise
        except ModelError as exc:  # a plugin's bug
            failed[entry.name] = str(exc)
        except GenlabError as exc:
            if explicit:
                raise
            failed[entry.name] = str(exc)
    return entries, models, failed


# published numbers are float32, whatever this machine's probe would pick for speed: never bf16, and only
# a backend the probe has checked against plain PyTorch fp32 on this machine (within FP32_TOLERANCE of the
# output's RMS). In a redraw of the bundled report ONNX Runtime and OpenVINO drew the DDPM, LDM and flow
# rows, and every FID matched the plain PyTorch draw within 0.002 (at most 0.2% of its seed spread; README).
# A suite may name a model's backend and precision itself.
EVAL_RUNTIME = {"backend": "auto", "precision": "fp32"}


# the compute curves' snapshots (see _curve_points)
CURVE_RUNTIME = {"backend": "torch", "precision": "fp32"}


def _pinned(model, options: dict, runtime: dict = EVAL_RUNTIME) -> dict:
    """``options`` with ``runtime``'s settings added where the model has them and the suite named none."""
    fields = type(model).Options.model_fields
    return {**options, **{k: v for k, v in runtime.items() if k in fields and k not in options}}


# ----- the jobs --------------------------------------------------------------------------------
def _plan(run: _Run, entries: list, models: dict, failed: dict) -> list:
    """The eval as jobs, in the order processes take them: the real data's features, then the big
    indivisible jobs (prompt metrics, the measures of each set of weights), then the sample shards
    (each with its features), the floor, and each row once its jobs are finished. The list depends
    on the suite only, so every process makes the same one."""
    from functools import partial

    from genlab.models import Capability

    from .parallel import Job

    features = []
    for extractor in run.extractors:
        features.append(Job(f"heldout-{extractor}", partial(run.heldout_features, extractor)))
        features += [Job(f"reference-{seed}-{extractor}", partial(run.reference_features, seed, extractor))
                     for seed in run.seeds]
    real = tuple(job.key for job in features)
    prompts, measures, shards, rows = [], [], [], []
    for entry in entries:
        if entry.name in failed:
            continue
        model, slug = models[entry.name], _slug(entry.name)
        run.owners.setdefault(_weights_key(entry, model), entry.name)
        finished = partial(run.row_is_cached, entry, model)  # a finished row needs none of its jobs
        steps = []  # the row's jobs in the order _measure_model computes their results

        def add(queue: list, key: str, compute) -> None:
            job = Job(key, _unless(finished, compute), entry.name, step=len(steps))
            steps.append(job.key)
            if job.key not in (j.key for j in queue):  # weights shared with an earlier row: its job
                queue.append(job)

        if model.can(Capability.SAMPLE):
            for seed in run.seeds:
                folder = run.samples_folder(entry, model, seed)
                for index, count in enumerate(_batches(run.config.num_samples, run.config.batch_size)):
                    add(shards, f"shard-{slug}-{seed}-{index}",
                        partial(_shard_job, run, model, entry, seed, index, count, folder))
        for kind, key, compute in _shared_measures(model, entry, run):
            add(measures, f"{kind}-{digest(key)}", partial(run.stored, kind, key, compute))
        if model.can(Capability.PROMPT):
            add(prompts, f"prompts-{slug}", partial(run.stored, "prompts", run.row_key(entry, model),
                                                    partial(_prompt_metrics, model, entry, run)))
        rows.append(Job(f"row-{slug}", partial(run.cached, f"row-{slug}", run.row_key(entry, model),
                                               partial(_measure_model, model, entry, run)),
                        entry.name, (*real, *steps), step=len(steps)))
    floor = Job("floor", partial(run.cached, "floor", run.settings, partial(_floor, run)), needs=real)
    curves = []
    for entry in run.config.curves:
        try:
            points = _curve_points(run, entry)
        except GenlabError:  # an unknown model id: the report's curve section says so
            continue
        reference = f"reference-{run.seeds[0]}-{run.config.feature_extractor}"
        curves += [Job(f"curve-{_slug(entry.name)}-{i}", partial(run.cached, kind, key, measure), needs=(reference,))
                   for i, (_, kind, key, measure) in enumerate(points)]
    return [*features, *prompts, *measures, *shards, *curves, floor, *rows]


def _unless(finished, compute):
    return lambda: None if finished() else compute()


def _shard_job(run: _Run, model, entry: ModelEntry, seed: int, index: int, count: int, folder: Path) -> None:
    """One sample shard on disk (drawn unless an earlier run left it) and its features."""
    shard = shard_path(folder, index)
    found = _read_shard(shard, count)
    if found is None:
        found = draw_shard(model, entry, model.parse_options(entry.options), count, seed, index, shard)
    run.shard_features(found[0], folder)


def _work_share(config_data: dict, out: str, folder: str, *, rank: int, alive) -> None:
    """A worker process's part of an eval: the same plan, the jobs nobody else has taken."""
    from genlab.runtime import exact_fp32

    from .parallel import WorkFolder, work

    config = EvalConfig(**config_data)
    entries, models, failed = _select(config)
    run = _Run(config, Path(out))
    with exact_fp32():  # as in the main process (see run_eval)
        work(_plan(run, entries, models, failed), WorkFolder(Path(folder)), rank=rank, alive=alive)


def _on_disk(run: _Run, entries: list, models: dict, failed: dict) -> tuple[int, list]:
    """(the finished results an earlier run left for this one: the floor and rows in cache/, and the
    sample folders of the rows still to be measured)."""
    from genlab.models import Capability

    results, folders = int(run.cached_value("floor", run.settings) is not None), []
    for entry in entries:
        model = models.get(entry.name)
        if entry.name in failed:
            continue
        if run.row_is_cached(entry, model):
            results += 1
        elif model.can(Capability.SAMPLE):
            folders += [run.samples_folder(entry, model, seed) for seed in run.seeds]
    return results, folders


def _count_shards(folders: list) -> int:
    return sum(len(list(folder.glob("shard-*.safetensors"))) for folder in folders)


@contextmanager
def _torch_threads(threads: int | None):
    """Each process's share of the cores while several share an eval."""
    import torch

    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


EVAL_LOCK = "eval.lock"  # in the run folder: the PID of the eval writing it


def run_eval(config: EvalConfig, out_dir: str | Path | None = None, *, workers: int = 1) -> Path | None:
    """Run ``config``; returns the path of the written report.md.

    Samples go to ``out/samples`` in shards and each finished model's row to ``out/cache``, so the
    same command after a crash or Ctrl-C picks up where the run stopped. ``workers`` processes
    share the jobs (this one and ``workers - 1`` spawned ones, each with its share of the CPU
    cores); under a launcher (torchrun, accelerate launch) its processes share them instead, and
    only the main process writes the report (the others return None). One eval at a time writes a
    folder: a second one on the same folder stops at once, naming the PID of the first.
    """
    from genlab.atomic import FolderLock
    from genlab.runtime import exact_fp32

    entries, models, failed = _select(config)
    from genlab.datasets import load_dataset

    load_dataset(config.dataset, "train", seed=config.split_seed)  # a bad dataset stops the run before its folder is made
    out = Path(out_dir) if out_dir else default_run_dir(config)
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GenlabError(f"cannot create report folder {out}: {exc.strerror}") from None
    # two evals in one folder would remove each other's claims (a launch's start clears .work) and
    # overwrite each other's report; the main process holds the lock for the launch (_run_in)
    lock = FolderLock(out / EVAL_LOCK, lambda holder: (
        f"{out} is being written by another genlab eval (PID {holder}); wait for it or choose another --out"))
    # published numbers are float32 (EVAL_RUNTIME): no TF32 in any network the eval runs, the plugins'
    # own (a VAE's likelihood bound, its reconstructions) and the feature extractors' included
    with exact_fp32():
        try:
            return _run_in(config, out, entries, models, failed, workers, lock)
        finally:
            lock.release()


def _run_in(config: EvalConfig, out: Path, entries: list, models: dict, failed: dict, workers: int,
            lock) -> Path | None:
    """``run_eval`` once its folder exists: the main process takes ``lock``, every process its share
    of the jobs, then the main process writes the report."""
    import torch
    from tqdm.auto import tqdm

    from genlab.distributed import launched_processes, process_rank
    from genlab.registry import get_feature_extractor, plugin_of
    from genlab.training import code_version

    from .parallel import WorkFolder, Workers, usable_cores, wait_for, work

    main = process_rank() == 0
    refused = None
    if main:
        try:
            lock.acquire()
        except GenlabError as exc:  # raised once the other processes know (below)
            refused = exc
    name = config.name or run_name(config)
    run = _Run(config, out)
    jobs = _plan(run, entries, models, failed)
    if launched_processes() > 1:  # the launcher's processes share the jobs; main creates their work folder
        from genlab.distributed import broadcast_bytes, process_state

        state = process_state()
        made = (b"" if refused else str(WorkFolder.create(out).path).encode()) if main else None
        path = broadcast_bytes(made, state.device).decode()  # "": main could not take the folder
        if refused:
            raise refused
        if not path:  # the main process says why
            return None
        folder, workers, threads = WorkFolder(Path(path)), 1, None
    else:
        if refused:
            raise refused
        folder = WorkFolder.create(out)
        threads = max(1, usable_cores() // workers) if workers > 1 else None
    results_before, pending = _on_disk(run, entries, models, failed) if main else (0, [])
    shards_before = _count_shards(pending)
    try:
        if not main:
            work(jobs, folder, rank=process_rank())
            return None
        bar = tqdm(total=len(jobs), desc=f"eval {name}", unit="job")

        def progress():
            bar.update(folder.finished_count() - bar.n)

        with Workers(workers, _work_share, (config.model_dump(), str(out), str(folder.path)), threads=threads or 1) as pool, \
                _torch_threads(threads):
            work(jobs, folder, alive=pool.alive, progress=progress)
            wait_for(jobs, folder, alive=pool.alive, progress=progress)
        bar.close()
        failures = folder.failures()
        processes = launched_processes() if launched_processes() > 1 else workers
        shared = folder.summary(processes)
    finally:
        if main:
            folder.remove()

    # the report, from what the jobs left on disk
    floor = run.cached("floor", run.settings, lambda: _floor(run))  # held-out digits: the best any model can do
    rows = []
    for entry in entries:
        if entry.name in failed:
            continue
        if entry.name in failures:  # not cached: the same command retries it
            failed[entry.name] = failures[entry.name]
            continue
        model = models[entry.name]
        try:
            row = run.cached(f"row-{_slug(entry.name)}", run.row_key(entry, model),
                             lambda m=model, e=entry: _measure_model(m, e, run))
            # which weights (None: the model's default ones), so a row is never taken for another set's
            rows.append({**row, "weights": entry.weights})
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
                    "torch": torch.__version__, "threads": threads or torch.get_num_threads(),
                    "processes": processes, **shared,
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "real_data_floor": floor,
        # the "is the model learning anything" line of the likelihood table, on the same held-out images
        "likelihood_baseline": pixel_histogram_bpd(run.train.images, run.heldout.images[: config.likelihood_images]),
        "models": rows,
        # {what ran the sampling networks: [the rows it drew]} (rows whose model does not say are left out)
        "runtimes": _runtimes(rows),
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
    if results_before or shards_before:
        tqdm.write(f"resumed: {results_before} finished results and {shards_before} sample shards were read "
                   f"from {out}; {_count_shards(pending) - shards_before} shards were drawn now")
    _write_atomic(out / "metrics.json", json.dumps(result, indent=2))
    return write_report(result, out)
