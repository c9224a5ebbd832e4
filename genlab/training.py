"""One training loop for every model plugin, on Hugging Face accelerate.

``accelerate launch -m genlab.cli train CONFIG`` spreads it over several GPUs or nodes; plain
``genlab train CONFIG`` runs it on this machine. The loop is seeded and resumable: the batch for
step s is drawn from a generator seeded by (seed, s, process), so a run resumed from a checkpoint
sees exactly the batches an uninterrupted run would have seen. Checkpoints are written atomically
(safetensors for every tensor, JSON for the rest), and an interrupt or an exhausted
``max_minutes`` budget saves one before the loop stops, so nothing is lost.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import tomllib
from contextlib import contextmanager
from copy import deepcopy
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import GenlabError

KEEP_CHECKPOINTS = 2


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
    seed: int = 0
    heldout_fraction: float = Field(0.1, gt=0, lt=1)
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
        data = tomllib.loads(path.read_text())
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


def _load_optimizer(optimizer, path: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path / "optimizer.safetensors"))
    meta = json.loads((path / "optimizer.json").read_text())
    state: dict = {}
    for flat, value in [*tensors.items(), *meta["scalars"].items()]:
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*"))
    return checkpoints[-1] if checkpoints else None


@contextmanager
def _atomic_dir(final: Path):
    """Write into a temporary folder and rename it into place, so a crash never leaves half a checkpoint."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


class _StopRequested(Exception):
    pass


# ----- the loop --------------------------------------------------------------------------------
def train(config: TrainConfig, run_dir: str | Path, *, progress: bool = True, max_steps: int | None = None) -> Path:
    """Train (or resume) ``config`` into ``run_dir``; returns the folder of the final EMA weights.

    ``max_steps`` stops this call early (as an interrupt would), which is how tests simulate one.
    """
    import torch
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel
    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    from .datasets import load_dataset
    from .registry import get_model_class

    run_dir = Path(run_dir)
    model_class = get_model_class(config.model)
    data = load_dataset(config.dataset, "train", seed=config.seed, heldout_fraction=config.heldout_fraction)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GenlabError(f"cannot create run folder {run_dir}: {exc.strerror}") from None

    saved_config = run_dir / "config.json"
    if saved_config.exists():
        previous = json.loads(saved_config.read_text())
        if {k: v for k, v in previous.items() if k != "max_minutes"} != {
            k: v for k, v in config.model_dump().items() if k != "max_minutes"
        }:
            raise GenlabError(
                f"{run_dir} holds a run with a different config: pick a new --run-dir or delete that folder"
            )
    saved_config.write_text(json.dumps(config.model_dump(), indent=2))

    version = code_version()  # at the start: edits made while a long run trains are not part of it
    accelerator = Accelerator()
    torch.manual_seed(config.seed)
    network = model_class.create_network(**config.network)
    model = model_class.from_network(network)
    ema = EMAModel(network.parameters(), decay=config.ema_decay)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)

    from diffusers.optimization import get_scheduler

    # stepped by hand, once per step: accelerate's wrapper would step it once per process
    lr_schedule = get_scheduler({"constant": "constant_with_warmup", "cosine": "cosine"}[config.lr_schedule],
                                optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps)
    step, elapsed, cpu_seconds = 0, 0.0, 0.0
    resume_from = latest_checkpoint(run_dir)
    if resume_from is not None:
        state = json.loads((resume_from / "trainer_state.json").read_text())
        network.load_state_dict(load_file(str(resume_from / "network" / "diffusion_pytorch_model.safetensors")))
        ema_weights = load_file(str(resume_from / "ema" / "diffusion_pytorch_model.safetensors"))
        ema.shadow_params = [ema_weights[name].clone() for name, _ in network.named_parameters()]
        ema.optimization_step = state["ema_optimization_step"]
        _load_optimizer(optimizer, resume_from)
        step, elapsed, cpu_seconds = state["step"], state["wall_seconds"], state["cpu_seconds"]
        for _ in range(step):  # the schedule is a function of the step: replay it
            lr_schedule.step()

    network, optimizer = accelerator.prepare(network, optimizer)
    ema.to(accelerator.device)
    unwrapped = accelerator.unwrap_model(network)

    def ema_network():
        copy = deepcopy(unwrapped)
        ema.copy_to(copy.parameters())
        return copy

    def save_checkpoint():
        if not accelerator.is_main_process:
            return
        target = run_dir / "checkpoints" / f"step-{step:08d}"
        with _atomic_dir(target) as tmp:
            unwrapped.save_pretrained(tmp / "network")
            ema_network().save_pretrained(tmp / "ema")
            _save_optimizer(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, tmp)
            (tmp / "trainer_state.json").write_text(json.dumps({
                "step": step, "wall_seconds": elapsed, "cpu_seconds": cpu_seconds,
                "ema_optimization_step": ema.optimization_step,
            }))
        for old in sorted((run_dir / "checkpoints").glob("step-*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)

    snapshot_every = config.snapshot_every_cpu_minutes * 60 if config.snapshot_every_cpu_minutes else None
    next_snapshot = None if snapshot_every is None else (cpu_seconds // snapshot_every + 1) * snapshot_every

    def save_snapshot():
        if not accelerator.is_main_process:
            return
        with _atomic_dir(run_dir / "snapshots" / f"step-{step:08d}") as tmp:
            ema_network().save_pretrained(tmp)
            (tmp / "snapshot.json").write_text(json.dumps(
                {"step": step, "cpu_seconds": round(cpu_seconds, 1), "wall_seconds": round(elapsed, 1)}))

    def handle_sigterm(signum, frame):
        raise _StopRequested()

    previous_handler = signal.signal(signal.SIGTERM, handle_sigterm) if accelerator.is_main_process else None
    budget = config.max_minutes * 60 if config.max_minutes else None
    local_batch = max(1, config.batch_size // accelerator.num_processes)
    log_path = run_dir / "log.jsonl"
    bar = tqdm(total=config.steps, initial=step, disable=not (progress and accelerator.is_local_main_process),
               desc=f"train {config.model}", unit="step", dynamic_ncols=True)
    stop_reason = "finished"
    session_start, session_cpu = time.perf_counter(), time.process_time()
    base_elapsed, base_cpu = elapsed, cpu_seconds
    last_saved = step
    network.train()
    try:
        with open(log_path, "a") as log:
            while step < config.steps:
                if max_steps is not None and step >= max_steps:
                    stop_reason = "stopped early"
                    break
                if budget is not None and elapsed >= budget:
                    stop_reason = f"time budget of {config.max_minutes} min spent"
                    break
                # (seed, step, process) fixes the batch and the noise: resuming replays the same run
                generator = torch.Generator().manual_seed(
                    (config.seed * 1_000_003 + step) * 1009 + accelerator.process_index
                )
                index = torch.randint(len(data), (local_batch,), generator=generator)
                batch = {"images": data.images[index].to(accelerator.device),
                         "labels": data.labels[index].to(accelerator.device)}
                loss, logs = model.training_loss(network, batch, generator=generator)
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                optimizer.step()
                lr_schedule.step()
                ema.step(network.parameters())
                step += 1
                elapsed = base_elapsed + time.perf_counter() - session_start
                cpu_seconds = base_cpu + time.process_time() - session_cpu
                bar.update(1)
                if step % config.log_every == 0 or step == config.steps:
                    row = {"step": step, "loss": loss.item(), **{k: float(v) for k, v in logs.items()},
                           "wall_seconds": round(elapsed, 2)}
                    bar.set_postfix(loss=f"{row['loss']:.4g}")
                    if accelerator.is_main_process:
                        log.write(json.dumps(row) + "\n")
                        log.flush()
                if step % config.checkpoint_every == 0:
                    save_checkpoint()
                    last_saved = step
                if next_snapshot is not None and cpu_seconds >= next_snapshot:
                    save_snapshot()
                    next_snapshot = (cpu_seconds // snapshot_every + 1) * snapshot_every
    except (KeyboardInterrupt, _StopRequested):
        stop_reason = "interrupted"
    finally:
        bar.close()
        if step != last_saved:
            save_checkpoint()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)

    final = run_dir / "final"
    if accelerator.is_main_process:
        with _atomic_dir(final) as tmp:
            ema_network().save_pretrained(tmp)
            metadata = {
                "model": config.model,
                "dataset": config.dataset,
                "steps": step,
                "target_steps": config.steps,
                "complete": step >= config.steps,
                "stop_reason": stop_reason,
                "wall_seconds": round(elapsed, 1),
                "cpu_seconds": round(cpu_seconds, 1),
                "processes": accelerator.num_processes,
                "device": str(accelerator.device),
                "torch_threads": torch.get_num_threads(),
                "config": config.model_dump(),
                "code_version": version,
                "torch_version": torch.__version__,
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2))
            if log_path.is_file():  # the loss curve travels with the weights (training stability in reports)
                shutil.copyfile(log_path, tmp / "training_log.jsonl")
    accelerator.wait_for_everyone()
    if stop_reason == "interrupted":
        raise KeyboardInterrupt(f"training interrupted at step {step}; run the same command again to resume")
    return final
