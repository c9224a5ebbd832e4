"""One training loop for every model plugin, on Hugging Face accelerate.

``accelerate launch -m genlab.cli train CONFIG`` or ``torchrun ... -m genlab.cli train CONFIG``
spreads it over several processes, GPUs or nodes; plain ``genlab train CONFIG`` runs it in one
process. The loop is seeded and resumable: the global batch of step s is drawn from a generator
seeded by (seed, s) and cut into ``micro_batches`` parts, part j drawing the model's noise from a
generator seeded by (seed, s, j); the processes share the parts out and their gradients are
averaged. So a run resumed from a checkpoint sees exactly the batches an uninterrupted run would
have seen, and a run over P processes is the same run as one process with ``micro_batches = P``. Checkpoints are written atomically
(safetensors for every tensor, JSON for the rest; ``trainer_state.json`` last), and an interrupt or
an exhausted ``max_minutes`` budget saves one before the loop stops, so nothing is lost: a second
Ctrl-C waits for that save, a kill -9 mid-save leaves the previous checkpoint to resume from, and a
lock keeps a second process off a run that is being trained.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import tomllib
from copy import deepcopy
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .atomic import FolderLock, atomic_dir, complete_dirs, recover_dir, remove_leftovers, signals_deferred
from .errors import GenlabError, describe
from .models import MAX_SEED, settings_problem, unwrap

KEEP_CHECKPOINTS = 2
CHECKPOINT_MARKER = "trainer_state.json"  # written last: a checkpoint folder without it is incomplete
LOCK_FILE = "train.lock"


class TrainConfig(BaseModel):
    """A training run. ``network`` is passed to the model's network constructor (and saved in its config.json)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    dataset: str = "mnist-5k"
    network: dict = Field(default_factory=dict)
    steps: int = Field(2000, ge=1, le=10_000_000)
    batch_size: int = Field(64, ge=1, le=65536)
    learning_rate: float = Field(1e-3, gt=0, le=1)
    # diffusers' schedules: "constant", or "cosine" decay to 0 over `steps`, after `warmup_steps`
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    heldout_fraction: float = Field(0.1, gt=0, lt=1)
    # each step's batch is cut into this many parts, each with its own random stream; launched
    # processes share the parts out. None: one part per process (fixed when the run starts)
    micro_batches: int | None = Field(None, ge=1, le=65536)
    checkpoint_every: int = Field(500, ge=1)
    log_every: int = Field(25, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    # keep the EMA weights every this many CPU minutes in snapshots/ (checkpoints are pruned, these
    # are not): the eval runner turns them into a quality-against-training-compute curve
    snapshot_every_cpu_minutes: float | None = Field(None, gt=0)


def load_config(path: str | Path, **overrides) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise GenlabError(f"no training config at {path}: give a TOML file such as configs/vae-mnist-5k.toml")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise GenlabError(f"{path} is not a text file: give a TOML file such as configs/vae-mnist-5k.toml") from None
    except OSError as exc:
        raise GenlabError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise GenlabError(f"{path} is not valid TOML: {exc}") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    return validate_config(data, source=str(path))


def validate_config(data: dict, source: str = "config") -> TrainConfig:
    try:
        return TrainConfig(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise GenlabError(
                f"{source}: unknown setting {name!r}; valid settings: {', '.join(TrainConfig.model_fields)}"
            ) from None
        raise GenlabError(f"{source}: invalid {name}={err.get('input')!r}: {err['msg']}") from None


def build_network(model_class, config: TrainConfig, source: str = "config"):
    """A fresh network from the config's ``[network]`` table, or one sentence naming the key that is
    unknown, ill-typed or out of range and the valid keys."""
    settings = config.network
    if not model_class.has_network():
        raise GenlabError(f"model {model_class.model_id} has no network to train")
    functions = [model_class.create_network, model_class.network_class().__init__]
    valid = ", ".join(_network_keys(functions)) or "none"
    problem = settings_problem(functions, settings)
    if problem:
        raise GenlabError(f"{source}: [network] {problem}" + ("" if "valid settings" in problem else f"; valid settings: {valid}"))
    try:
        return model_class.create_network(**settings)
    except GenlabError:
        raise
    except Exception as exc:
        key = _culprit(model_class, settings, exc)
        where = f"[network] {key} = {settings[key]!r}" if key else "[network]"
        raise GenlabError(f"{source}: invalid {where} for model {model_class.model_id}: {describe(exc)}; "
                          f"valid settings: {valid}") from None


def _network_keys(functions) -> list[str]:
    import inspect

    keys: list[str] = []
    for function in functions:
        params = inspect.signature(function).parameters
        keys += [n for n, p in params.items() if n not in ("self", "cls") and n not in keys
                 and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return keys


def _culprit(model_class, settings: dict, exc: Exception) -> str | None:
    """The [network] key that made the constructor fail: the one its message names, else the one
    whose removal (back to its default) lets the network build."""
    import re

    named = [k for k in settings if re.search(rf"\b{re.escape(k)}\b", str(exc))]
    if len(named) == 1:
        return named[0]
    for key in settings:
        try:
            model_class.create_network(**{k: v for k, v in settings.items() if k != key})
        except Exception:
            continue
        return key
    return None


def code_version() -> str:
    """genlab's version plus the git commit it runs from, when it runs from a checkout."""
    from . import __version__

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    return f"{__version__}+{sha}{'.dirty' if dirty else ''}" if sha else __version__


# ----- checkpoints -----------------------------------------------------------------------------
def _save_optimizer(optimizer, path: Path) -> None:
    """Optimizer state as safetensors (tensors) + JSON (the rest): no pickle anywhere."""
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            if hasattr(value, "shape"):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    save_file(tensors, str(path / "optimizer.safetensors"))
    (path / "optimizer.json").write_text(json.dumps({"param_groups": state["param_groups"], "scalars": scalars}))


def _load_optimizer(optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for flat, value in [*tensors.items(), *meta["scalars"].items()]:
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run: a ``step-N`` folder (not a ``.tmp`` left by a write
    that was cut short) whose ``trainer_state.json``, written last, is there and readable."""
    for checkpoint in reversed(complete_dirs(Path(run_dir) / "checkpoints", "step-*", CHECKPOINT_MARKER)):
        try:
            state = json.loads((checkpoint / CHECKPOINT_MARKER).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and isinstance(state.get("step"), int):
            return checkpoint
    return None


class RunLock(FolderLock):
    """An exclusive lock on a run folder while one process trains it (``train.lock`` holds its PID); a
    lock file left by a killed run never blocks the next one (see ``FolderLock``)."""

    def __init__(self, run_dir: Path):
        super().__init__(run_dir / LOCK_FILE, lambda holder: (
            f"run {run_dir} is being trained by PID {holder}: wait for it to finish, or stop it "
            "(Ctrl-C saves) and run this command again"))


def _prepare_run_folder(run_dir: Path, config: TrainConfig) -> None:
    """Under the lock: clear what an interrupted write left, check and save the run's config."""
    for folder in (run_dir / "checkpoints", run_dir / "snapshots"):
        remove_leftovers(folder)
    recover_dir(run_dir / "final")
    saved_config = run_dir / "config.json"
    if saved_config.exists():
        try:
            previous = json.loads(saved_config.read_text(encoding="utf-8"))
            if not isinstance(previous, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise GenlabError(
                f"{saved_config} is damaged ({describe(exc, 80)}): delete it to resume this run with the "
                "given config, or pick a new --run-dir"
            ) from None
        try:  # settings added to genlab since the run started take their defaults
            previous = TrainConfig(**previous).model_dump()
        except ValidationError:
            pass  # not a config this genlab makes: it differs
        if {k: v for k, v in previous.items() if k != "max_minutes"} != {
            k: v for k, v in config.model_dump().items() if k != "max_minutes"
        }:
            raise GenlabError(
                f"{run_dir} holds a run with a different config: pick a new --run-dir or delete that folder"
            )
    from .atomic import write_text

    write_text(saved_config, json.dumps(config.model_dump(), indent=2))


class _StopRequested(BaseException):
    """SIGTERM in the loop. A BaseException, as KeyboardInterrupt is, so that no ``except Exception``
    on the way (a plugin's, or ``registry.guard`` around model code) mistakes it for an error."""


def _shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


# ----- the loop --------------------------------------------------------------------------------
def train(config: TrainConfig, run_dir: str | Path, *, progress: bool = True, max_steps: int | None = None,
          source: str = "config") -> Path:
    """Train (or resume) ``config`` into ``run_dir``; returns the folder of the final EMA weights.

    ``max_steps`` stops this call early (as an interrupt would), which is how tests simulate one.
    ``source`` names the config in messages (its file). Under a launcher only the main process
    touches the run folder: it holds the lock, writes every file and reads the checkpoint a run
    resumes from, which it hands to the other processes.
    """
    import torch

    from . import distributed
    from .datasets import load_dataset
    from .registry import get_model_class, guard

    run_dir = Path(run_dir)
    model_class = get_model_class(config.model)
    data = load_dataset(config.dataset, "train", seed=config.seed, heldout_fraction=config.heldout_fraction)

    version = code_version()  # at the start: edits made while a long run trains are not part of it
    accelerator = distributed.accelerator()  # on --device / GENLAB_DEVICE, else accelerate's pick
    torch.manual_seed(config.seed)
    network = build_network(model_class, config, source)  # a bad [network] table leaves no folder behind
    with guard(config.model, "start"):
        model = model_class.from_network(network)
        shape = model.image_shape()
    if shape is not None and tuple(shape) != tuple(data.images.shape[1:]):
        raise GenlabError(
            f"{source}: model {config.model}'s network takes {_shape(shape)} images but dataset {config.dataset} "
            f"holds {_shape(data.images.shape[1:])} images: set the image size in [network] to match, or pick "
            "another dataset"
        )
    processes = accelerator.num_processes
    if config.micro_batches is not None and config.micro_batches < processes:
        raise GenlabError(f"{source}: micro_batches = {config.micro_batches} cannot be shared by {processes} "
                          f"processes: set micro_batches to at least {processes}, or launch fewer processes")
    parts = config.micro_batches or processes
    if config.batch_size < parts:
        raise GenlabError(f"{source}: batch_size = {config.batch_size} cannot be cut into {parts} micro-batches "
                          f"(one per process unless micro_batches is set): make batch_size at least {parts}")

    lock = RunLock(run_dir)
    if accelerator.is_main_process:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GenlabError(f"cannot create run folder {run_dir}: {exc.strerror}") from None
        lock.acquire()
    try:
        if accelerator.is_main_process:
            _prepare_run_folder(run_dir, config)
        accelerator.wait_for_everyone()
        return _train_loop(config, run_dir, accelerator, model, network, data, version,
                           progress=progress, max_steps=max_steps)
    finally:
        lock.release()


def _trim_log(log_path: Path, step: int) -> None:
    """Keep the loss log in step with the checkpoint a run resumes from: rows logged after it (the
    run died before saving them) and a line cut short by a kill are dropped."""
    if not log_path.is_file():
        return
    kept = []
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    from .atomic import write_text

    write_text(log_path, "".join(kept))


CHECKPOINT_FILES = ("network/diffusion_pytorch_model.safetensors", "ema/diffusion_pytorch_model.safetensors",
                    "optimizer.safetensors", "optimizer.json", CHECKPOINT_MARKER)
NETWORK_CONFIG = "network/config.json"


def _changed_setting(saved: dict, network) -> str | None:
    """The first network setting a resumed run would build differently from its checkpoint's, as
    "key (was A, now B)", or None. A network's config can hold what the plugin measured or made when
    the run began (a latent scale, the digest of the weights it builds on): if those weights changed
    since, resuming would carry on training on something else. Timings (keys ending in "seconds")
    are how long something took, not what it made, and are not compared."""
    config = getattr(unwrap(network), "config", None)
    if not isinstance(saved, dict) or config is None:
        return None
    return _first_difference(saved, json.loads(json.dumps(dict(config), default=str)))


def _first_difference(was: dict, now: dict, prefix: str = "") -> str | None:
    import math

    for key, old in was.items():
        if key.startswith("_") or key.endswith("seconds") or key not in now:
            continue
        new = now[key]
        if isinstance(old, dict) and isinstance(new, dict):
            inner = _first_difference(old, new, f"{prefix}{key}.")
            if inner:
                return inner
            continue
        floats = isinstance(old, float) and isinstance(new, (int, float))
        if not (math.isclose(old, new, rel_tol=1e-4) if floats else old == new):
            return f"{prefix}{key} (was {json.dumps(old)[:80]}, now {json.dumps(new)[:80]})"
    return None


def _checkpoint_to_resume(run_dir: Path, accelerator) -> tuple[Path | None, dict]:
    """(the checkpoint a run resumes from, {file: bytes} of it) on every process: the main process
    reads it and the others receive it, so only the main process touches the run folder (and the
    processes need no shared filesystem). A checkpoint that cannot be read is one error on all."""
    import torch
    from safetensors.torch import load, save

    from .distributed import broadcast_bytes

    folder, files, problem = None, {}, None
    if accelerator.is_main_process:
        folder = latest_checkpoint(run_dir)
        if folder is not None:
            try:
                files = {name: (folder / name).read_bytes() for name in CHECKPOINT_FILES}
                if (folder / NETWORK_CONFIG).is_file():  # checked, not needed: a checkpoint without one resumes
                    files[NETWORK_CONFIG] = (folder / NETWORK_CONFIG).read_bytes()
            except OSError as exc:
                problem = (f"checkpoint {folder} cannot be resumed ({describe(exc, 120)}): delete that folder to "
                           "resume from the checkpoint before it, or pick a new --run-dir")
    if accelerator.num_processes > 1:  # sent as one safetensors blob of byte tensors: no pickle
        blob = None
        if accelerator.is_main_process:
            fields = {**files, ".folder": str(folder or "").encode(), ".problem": (problem or "").encode()}
            blob = save({name: torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else
                         torch.empty(0, dtype=torch.uint8) for name, data in fields.items()})
        fields = {name: tensor.numpy().tobytes() for name, tensor in load(broadcast_bytes(blob, accelerator.device)).items()}
        folder, problem = fields.pop(".folder").decode(), fields.pop(".problem").decode() or None
        folder, files = (Path(folder) if folder else None), fields
    if problem:
        raise GenlabError(problem)
    return folder, files


def _train_loop(config, run_dir, accelerator, model, network, data, version, *, progress, max_steps) -> Path:
    import threading
    from contextlib import nullcontext

    import torch
    from diffusers.training_utils import EMAModel
    from safetensors.torch import load
    from tqdm.auto import tqdm

    from .registry import guard

    main = accelerator.is_main_process
    processes, rank = accelerator.num_processes, accelerator.process_index
    ema = EMAModel(network.parameters(), decay=config.ema_decay)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)

    from diffusers.optimization import get_scheduler

    # stepped by hand, once per step: accelerate's wrapper would step it once per process
    lr_schedule = get_scheduler({"constant": "constant_with_warmup", "cosine": "cosine"}[config.lr_schedule],
                                optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps)
    step, elapsed, cpu_seconds = 0, 0.0, 0.0
    parts = config.micro_batches or processes
    resume_from, files = _checkpoint_to_resume(run_dir, accelerator)
    changed = None
    if resume_from is not None:
        try:
            state = json.loads(files[CHECKPOINT_MARKER])
            changed = _changed_setting(json.loads(files[NETWORK_CONFIG]), network) if NETWORK_CONFIG in files else None
            network.load_state_dict(load(files["network/diffusion_pytorch_model.safetensors"]))
            ema_weights = load(files["ema/diffusion_pytorch_model.safetensors"])
            ema.shadow_params = [ema_weights[name].clone() for name, _ in network.named_parameters()]
            ema.optimization_step = state["ema_optimization_step"]
            _load_optimizer(optimizer, load(files["optimizer.safetensors"]), json.loads(files["optimizer.json"]))
            step, elapsed, cpu_seconds = state["step"], state["wall_seconds"], state["cpu_seconds"]
            # the run's cut of the batch was fixed when it started (older checkpoints: one part)
            parts = config.micro_batches or state.get("micro_batches", 1)
            for _ in range(step):  # the schedule is a function of the step: replay it
                lr_schedule.step()
        except Exception as exc:
            raise GenlabError(
                f"checkpoint {resume_from} cannot be resumed ({describe(exc, 120)}): delete that folder to resume "
                "from the checkpoint before it, or pick a new --run-dir"
            ) from None
    if changed:
        raise GenlabError(f"run {run_dir} cannot resume: its network would now be built with another {changed}, "
                          "so what it was built on (weights, data) changed since it started; restore that, or "
                          "pick a new --run-dir")
    if parts < processes:
        raise GenlabError(f"run {run_dir} was started with {parts} micro-batch(es) per step and cannot be shared by "
                          f"{processes} processes: resume it with at most {parts} process(es)")
    log_path = run_dir / "log.jsonl"
    if main:
        _trim_log(log_path, step)

    network, optimizer = accelerator.prepare(network, optimizer)
    ema.to(accelerator.device)
    unwrapped = accelerator.unwrap_model(network)

    def ema_network():
        copy = deepcopy(unwrapped)
        ema.copy_to(copy.parameters())
        return copy

    def save_checkpoint():
        if not main:
            return
        checkpoints = run_dir / "checkpoints"
        try:
            with atomic_dir(checkpoints / f"step-{step:08d}") as tmp:
                unwrapped.save_pretrained(tmp / "network")
                ema_network().save_pretrained(tmp / "ema")
                _save_optimizer(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, tmp)
                (tmp / CHECKPOINT_MARKER).write_text(json.dumps({  # last: it marks the checkpoint complete
                    "step": step, "wall_seconds": elapsed, "cpu_seconds": cpu_seconds,
                    "ema_optimization_step": ema.optimization_step, "micro_batches": parts,
                }))
            for old in complete_dirs(checkpoints, "step-*", CHECKPOINT_MARKER)[:-KEEP_CHECKPOINTS]:
                doomed = old.with_name(old.name + ".tmp")  # a kill mid-delete leaves a .tmp, not half a checkpoint
                old.rename(doomed)
                shutil.rmtree(doomed, ignore_errors=True)
        except OSError as exc:
            raise GenlabError(f"could not save the checkpoint of step {step} in {checkpoints}: "
                              f"{exc.strerror or exc}; the checkpoint before it is kept") from None

    snapshot_every = config.snapshot_every_cpu_minutes * 60 if config.snapshot_every_cpu_minutes else None
    next_snapshot = None if snapshot_every is None else (cpu_seconds // snapshot_every + 1) * snapshot_every

    def save_snapshot():
        if not main:
            return
        with atomic_dir(run_dir / "snapshots" / f"step-{step:08d}") as tmp:
            ema_network().save_pretrained(tmp)
            (tmp / "snapshot.json").write_text(json.dumps(  # last: it marks the snapshot complete
                {"step": step, "cpu_seconds": round(cpu_seconds, 1), "wall_seconds": round(elapsed, 1)}))

    final = run_dir / "final"

    def save_final():
        if not main:
            return
        with atomic_dir(final) as tmp:
            ema_network().save_pretrained(tmp)
            if log_path.is_file():  # the loss curve travels with the weights (training stability in reports)
                shutil.copyfile(log_path, tmp / "training_log.jsonl")
            metadata = {
                "model": config.model,
                "dataset": config.dataset,
                "steps": step,
                "target_steps": config.steps,
                "complete": step >= config.steps,
                "stop_reason": stop_reason,
                "wall_seconds": round(elapsed, 1),
                "cpu_seconds": round(cpu_seconds, 1),  # of all processes together
                "processes": processes,
                "micro_batches": parts,
                "device": str(accelerator.device),
                "torch_threads": torch.get_num_threads(),
                "config": config.model_dump(),
                "code_version": version,
                "torch_version": torch.__version__,
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2))  # last

    def handle_sigterm(signum, frame):
        raise _StopRequested()

    # One process stops the moment it is told to. Launched processes must stop at the same step (one
    # that leaves the loop alone would leave the others waiting in the gradient all-reduce), so they
    # hold Ctrl-C and SIGTERM for the whole loop and agree before every step whether to stop.
    together = processes > 1
    handles_sigterm = not together and threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, handle_sigterm) if handles_sigterm else None
    held = signals_deferred("training; every process stops after this step and saves") if together else nullcontext([])
    budget = config.max_minutes * 60 if config.max_minutes else None
    mine = range(rank * parts // processes, (rank + 1) * parts // processes)  # this process's parts
    bar = tqdm(total=config.steps, initial=step, disable=not (progress and accelerator.is_local_main_process),
               desc=f"train {config.model}", unit="step", dynamic_ncols=True)
    stop_reason = "finished"
    session_start, session_cpu = time.perf_counter(), time.process_time()
    base_elapsed, base_cpu = elapsed, cpu_seconds
    last_saved = step
    network.train()
    ended = False  # the loop ended (finished, budget, interrupt) rather than raised

    def agree(stop_requested: bool) -> tuple[bool, bool]:
        """(some process was interrupted, some process spent the time budget), and the CPU-seconds of
        all processes together, in one all-reduce."""
        nonlocal cpu_seconds
        flags = torch.tensor([float(stop_requested), float(budget is not None and elapsed >= budget),
                              time.process_time() - session_cpu], dtype=torch.float64, device=accelerator.device)
        total = accelerator.reduce(flags, "sum").cpu()
        cpu_seconds = base_cpu + float(total[2])
        return bool(total[0] > 0), bool(total[1] > 0)

    def stop_after_save(received: list) -> None:
        if received and together:
            interrupts.extend(received)  # the next agreement stops every process
        elif received:
            raise _StopRequested()

    try:
        with held as interrupts:
            try:
                with open(log_path, "a") if main else nullcontext() as log:
                    while step < config.steps:
                        if max_steps is not None and step >= max_steps:
                            stop_reason = "stopped early"
                            break
                        if together:
                            interrupted, budget_spent = agree(bool(interrupts))
                            if interrupted:
                                raise _StopRequested()
                        else:
                            budget_spent = budget is not None and elapsed >= budget
                        if budget_spent:
                            stop_reason = f"time budget of {config.max_minutes} min spent"
                            break
                        # (seed, step) fixes the global batch; (seed, step, part) the noise of each part:
                        # resuming replays the same run, and so does any number of processes
                        seed = (config.seed * 1_000_003 + step) * 1009
                        generator = torch.Generator().manual_seed(seed)
                        pieces = torch.randint(len(data), (config.batch_size,), generator=generator).tensor_split(parts)
                        optimizer.zero_grad(set_to_none=True)
                        loss, logs = 0.0, {}
                        for n, part in enumerate(mine):
                            index = pieces[part]
                            batch = {"images": data.images[index].to(accelerator.device),
                                     "labels": data.labels[index].to(accelerator.device)}
                            share = len(index) / config.batch_size  # of the global batch's mean loss
                            with guard(config.model, f"train (step {step + 1})"):
                                part_loss, part_logs = model.training_loss(
                                    network, batch, generator=generator if part == 0 else
                                    torch.Generator().manual_seed(seed + part))
                                # the all-reduce averages over processes: scale so that it sums the parts
                                with accelerator.no_sync(network) if n < len(mine) - 1 else nullcontext():
                                    accelerator.backward(part_loss * (share * processes))
                            loss = loss + part_loss.detach() * share
                            for k, v in part_logs.items():
                                logs[k] = logs.get(k, 0.0) + float(v) * share
                        optimizer.step()
                        lr_schedule.step()
                        ema.step(network.parameters())
                        step += 1
                        elapsed = base_elapsed + time.perf_counter() - session_start
                        if not together:
                            cpu_seconds = base_cpu + time.process_time() - session_cpu
                        bar.update(1)
                        if step % config.log_every == 0 or step == config.steps:
                            values = torch.tensor([float(loss), *logs.values()], dtype=torch.float64)
                            if together:  # every process's share of the global batch's mean
                                values = accelerator.reduce(values.to(accelerator.device), "sum").cpu()
                            row = {"step": step, "loss": float(values[0]),
                                   **{k: float(v) for k, v in zip(logs, values[1:])},
                                   "wall_seconds": round(elapsed, 2)}
                            bar.set_postfix(loss=f"{row['loss']:.4g}")
                            if main:
                                log.write(json.dumps(row) + "\n")
                                log.flush()
                        if step % config.checkpoint_every == 0:
                            with signals_deferred(f"saving the checkpoint of step {step}; stopping when it is saved") as received:
                                save_checkpoint()
                            last_saved = step
                            stop_after_save(received)
                        if next_snapshot is not None and cpu_seconds >= next_snapshot:
                            with signals_deferred(f"saving a snapshot at step {step}; stopping when it is saved") as received:
                                save_snapshot()
                            next_snapshot = (cpu_seconds // snapshot_every + 1) * snapshot_every
                            stop_after_save(received)
                    if together:
                        agree(bool(interrupts))  # the CPU time of the last steps, for the final save
            except (KeyboardInterrupt, _StopRequested):
                stop_reason = "interrupted"
            ended = True
    finally:
        # a second Ctrl-C or SIGTERM must not cut the save that keeps the run: it waits for it
        with signals_deferred(f"saving step {step} before stopping; further signals are ignored until it is saved"):
            bar.close()
            if step != last_saved:
                save_checkpoint()
            if ended:
                save_final()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)

    accelerator.wait_for_everyone()  # no process leaves (and no launcher ends the run) while the main one saves
    if stop_reason == "interrupted":
        raise KeyboardInterrupt(f"training interrupted at step {step}; run the same command again to resume")
    return final
