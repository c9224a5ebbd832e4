"""Several processes on one run: who they are, and the few things they must agree on.

genlab runs as one process unless a standard launcher starts several (``torchrun``, ``accelerate
launch``, ``python -m torch.distributed.run``), which announce themselves through ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK``. Training then shares each step's batch out over the processes (the
gradients are averaged by DistributedDataParallel), and the eval shares out its sample shards.

Without a GPU, accelerate would start every launched process as a lone "main" process unless
``ACCELERATE_USE_CPU`` is set; ``accelerator()`` asks for the CPU process group (gloo) itself, so a
plain ``torchrun --nproc_per_node 2 -m genlab.cli train CONFIG`` works on a CPU-only machine.
"""

from __future__ import annotations

import os


def launched_processes() -> int:
    """How many processes a launcher started for this job (1 when none did)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def process_rank() -> int:
    """This process's rank among them (0 for the main process, and when no launcher is used)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_main_process() -> bool:
    return process_rank() == 0


def _without_gpu() -> bool:
    """True when the launched processes must meet on the CPU: no CUDA (or the user asked for the CPU)."""
    import torch

    if os.environ.get("GENLAB_DEVICE", "").strip().lower() == "cpu":
        return True
    return not torch.cuda.is_available()


def accelerator(**kwargs):
    """An ``accelerate.Accelerator`` on the CPU when ``genlab.runtime.resolve_device`` says so (``--device``,
    ``GENLAB_DEVICE``, else CUDA, MPS or the CPU), else on accelerate's own pick of accelerator;
    launched processes without a GPU join one gloo process group."""
    from accelerate import Accelerator

    from .runtime import resolve_device

    if launched_processes() > 1 and _without_gpu():
        kwargs.setdefault("cpu", True)
    kwargs.setdefault("cpu", resolve_device().type == "cpu")  # a device this machine lacks: one sentence
    return Accelerator(**kwargs)


def process_state():
    """accelerate's ``PartialState`` (rank, world size, barriers) without an ``Accelerator``: the eval's."""
    from accelerate import PartialState

    return PartialState(cpu=launched_processes() > 1 and _without_gpu())


def broadcast_bytes(data: bytes | None, device) -> bytes:
    """The main process's ``data`` on every process (others pass None): a checkpoint read once, by the
    one process that may touch the run folder, reaches all of them without a shared filesystem."""
    import torch
    import torch.distributed as dist

    size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    if not size.item():
        return b""
    if data is not None:
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    else:
        buffer = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src=0)
    return data if data is not None else buffer.cpu().numpy().tobytes()
