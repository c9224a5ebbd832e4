"""Where and how a model's network runs: device, backend and precision, declared and validated here.

- **device**: ``auto`` (CUDA, then Apple MPS, then the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
  The CLI's ``--device`` and the ``GENLAB_DEVICE`` environment variable choose it for every model
  (``resolve_device``); a model's outputs always come back on the CPU.
- **backend**: what runs a network's forward pass. ``torch`` is plain PyTorch; ``onnxruntime`` and
  ``openvino`` run the same network exported once as an ONNX graph (CPU only). ``auto`` lets a short
  probe pick the fastest on this machine, once: the choice is cached under ``GENLAB_CACHE/runtime``
  keyed by the machine and a fingerprint of the weights (``GENLAB_BACKEND`` overrides ``auto``).
- **precision**: ``fp32`` or ``bf16`` (bfloat16: autocast in PyTorch, the inference-precision hint in
  OpenVINO). ``auto`` is fp32, or bf16 where the model declares it harmless to sample quality
  (measured by FID; see each model's ``bf16_harmless``) and the probe finds it clearly faster.

fp32 is IEEE float32 on every device: PyTorch's TF32 (on by default for cuDNN's convolutions) and
oneDNN's reduced-precision float32 are switched off while an fp32 network runs (``exact_fp32``).
Samples from a runtime backend in fp32 match PyTorch's within float rounding (the probe refuses a
backend whose output differs from PyTorch's on its probe batch: seeded noise of the scale sampling
feeds the network); bf16 changes sample trajectories pixel-wise, which is why it is only ever chosen
for models whose FID it leaves unchanged.

Exported graphs are ONNX files (protobuf, never pickle) cached under ``GENLAB_CACHE/graphs`` and keyed
by the weights' fingerprint; OpenVINO's compiled blobs go to ``GENLAB_CACHE/openvino``.

This module imports no torch at import time, so listing plugins stays fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import statistics
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from pydantic import Field

from .errors import GenlabError

DEVICE_ENV = "GENLAB_DEVICE"
BACKEND_ENV = "GENLAB_BACKEND"
DEVICES = "auto, cpu, cuda, cuda:N, mps"
BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS = ("auto", "fp32", "bf16")
# backend -> the package it needs; both run exported graphs on the CPU only
GRAPH_BACKENDS = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
Backend = Literal["auto", "torch", "onnxruntime", "openvino"]
Precision = Literal["auto", "fp32", "bf16"]

# bump when the exported graphs or the probe's choices would differ for the same weights
EXPORT_VERSION = 2  # 2: fingerprints no longer change from process to process (see fingerprint)
PROBE_VERSION = 2  # 2: candidates compared on seeded noise, not zeros, relative to the output's RMS
PROBE_BATCH = 64  # what sampling batches mostly are (the app's largest count, the benchmarks')
PROBE_SEED = 0  # the probe's inputs are the same on every machine and every run
GRAPH_CHUNK = 64  # the most rows a graph runs at once (OpenVINO compiles a static shape per power of two up to it)
BF16_MARGIN = 1.1  # bf16 is chosen only when it is at least this much faster than the best fp32
# An fp32 candidate's largest |difference| from PyTorch fp32 on the probe's noise, relative to the
# output's RMS. Another kernel order rounds float32 differently: ONNX Runtime, OpenVINO and channels-last
# measured 2e-6 to 8e-6 on the bundled DDPM and LDM UNets, so 1e-4 leaves a 10x margin, while a wrong
# graph is off by orders of magnitude more. The RMS, not the largest output, sets the scale: a few
# large outputs would otherwise hide errors in all the others.
FP32_TOLERANCE = 1e-4
BF16_TOLERANCE = 0.1  # relative L2 distance from PyTorch fp32 that a bf16 candidate may show


def backend_field(default: str = "auto"):
    """The ``backend`` option of a model whose sampler runs through ``network_runner``."""
    return Field(default, description=(
        "What runs the network: torch (plain PyTorch), onnxruntime or openvino (an exported graph, CPU "
        "only); auto: the fastest on this machine, found by a short probe the first time"))


def precision_field(default: str = "auto"):
    """The ``precision`` option of a model whose sampler runs through ``network_runner``."""
    return Field(default, description=(
        "fp32, or bf16 (bfloat16; fast on CPUs with AVX512-BF16 or AMX and on GPUs); auto: fp32, or "
        "bf16 where it leaves this model's FID unchanged and is clearly faster here"))


RUNTIME_OPTIONS = ("backend", "precision")  # option names that change speed, not what is sampled


# ----- devices ---------------------------------------------------------------------------------
def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(requested=None):
    """The ``torch.device`` to run on: ``requested`` (a string or device), else ``GENLAB_DEVICE``,
    else ``auto``; a device this machine does not have is one sentence naming the valid choices."""
    import torch

    from_env = requested is None and bool(os.environ.get(DEVICE_ENV, "").strip())
    text = str(requested if requested is not None else os.environ.get(DEVICE_ENV) or "auto").strip().lower()
    where = f" (from {DEVICE_ENV})" if from_env else ""
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise GenlabError(f"unknown device {text!r}{where}: choose one of {DEVICES}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GenlabError(f"device {text!r}{where} is not available: PyTorch sees no CUDA GPU on this "
                              "machine; choose auto or cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise GenlabError(f"device {text!r}{where} does not exist: this machine has {count} CUDA GPU(s), "
                              f"cuda:0 to cuda:{count - 1}")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise GenlabError(f"device {text!r}{where} is not available: it needs an Apple-silicon Mac with "
                              "PyTorch's MPS backend; choose auto or cpu")
        return torch.device("mps")
    raise GenlabError(f"device {text!r}{where} is not one genlab runs on: choose one of {DEVICES}")


def device_name(device) -> str:
    """A person's name for a device: the GPU's model, or the CPU's."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return cpu_model()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def randn(shape, generator=None, *, device=None, dtype=None):
    """Standard normal noise drawn with ``generator`` on the CPU and then moved to ``device``, so the
    same seed gives the same numbers on every device."""
    import torch

    return torch.randn(shape, generator=generator, dtype=dtype).to(device if device is not None else "cpu")


def rand(shape, generator=None, *, device=None, dtype=None):
    """Uniform [0, 1) noise, drawn like ``randn``."""
    import torch

    return torch.rand(shape, generator=generator, dtype=dtype).to(device if device is not None else "cpu")


# ----- float32 that is float32 -------------------------------------------------------------------
# PyTorch may run float32 matmuls and convolutions in TF32 on NVIDIA GPUs (cuDNN's convolutions do by
# default: a 10-bit mantissa, ~1e-3 relative per op) and in bf16 or TF32 through oneDNN on CPUs when a
# process asks for it. precision=fp32 promises float32, so fp32 runs switch those off. Scoped, not set
# once for the process: genlab is also a library, and a notebook's own TF32 training keeps its speed.
# Counted, so that overlapping fp32 calls from several threads restore the settings once, at the end.
_EXACT_LOCK = threading.Lock()
_exact_users = 0
_exact_saved: tuple = ()


def _fp32_leaves() -> list:
    """PyTorch's per-op float32 settings (``fp32_precision``, PyTorch >= 2.9; none before)."""
    import torch

    b = torch.backends
    ops = (b.cuda.matmul, getattr(b.cudnn, "conv", None), getattr(b.cudnn, "rnn", None),
           getattr(b.mkldnn, "matmul", None), getattr(b.mkldnn, "conv", None), getattr(b.mkldnn, "rnn", None))
    return [op for op in ops if op is not None and hasattr(op, "fp32_precision")]


def _set_exact() -> tuple:
    """Switch reduced-precision float32 off; returns what restores the previous settings exactly."""
    import torch

    cudnn = torch.backends.cudnn
    leaves = _fp32_leaves()
    try:
        cudnn_tf32 = cudnn.allow_tf32
    except RuntimeError:  # the process set cuDNN's ops apart (per-op API): their per-op values say it all
        cudnn_tf32 = None
    saved = (torch.get_float32_matmul_precision(), cudnn_tf32, [(leaf, leaf.fp32_precision) for leaf in leaves])
    # the older switches through their setters, which keep the per-op values in step (a matmul's per-op
    # value set alone would contradict the older switch, which PyTorch then refuses to read), then each op
    torch.set_float32_matmul_precision("highest")  # no TF32 in cuBLAS, no bf16/TF32 oneDNN matmuls
    if cudnn_tf32 is not None:
        cudnn.allow_tf32 = False
    for leaf in leaves:
        leaf.fp32_precision = "ieee"
    return saved


def _restore(saved: tuple) -> None:
    import torch

    matmul, cudnn_tf32, leaves = saved
    torch.set_float32_matmul_precision(matmul)
    if cudnn_tf32 is not None:
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
    for leaf, value in leaves:
        leaf.fp32_precision = value


@contextlib.contextmanager
def exact_fp32():
    """IEEE float32 matmuls and convolutions (no TF32, no reduced-precision oneDNN) while the block
    runs, on every device; the process's own settings come back when the last such block ends."""
    global _exact_users, _exact_saved
    with _EXACT_LOCK:
        if _exact_users == 0:
            _exact_saved = _set_exact()
        _exact_users += 1
    try:
        yield
    finally:
        with _EXACT_LOCK:
            _exact_users -= 1
            if _exact_users == 0:
                _restore(_exact_saved)


# ----- backends and precisions -------------------------------------------------------------------
@dataclass(frozen=True)
class Choice:
    """A resolved way to run a network: backend (torch, onnxruntime, openvino), precision (fp32,
    bf16) and a mode: for torch the activations' memory format ("" contiguous, "channels_last"); for
    a graph backend with several threads, "" (one call uses every thread) or "streams" (the batch is cut
    into one slice per thread, run side by side, each on one thread)."""

    backend: str
    precision: str = "fp32"
    mode: str = ""

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}" + (f" {self.mode}" if self.mode else "")


def installed(backend: str) -> bool:
    return backend not in GRAPH_BACKENDS or importlib.util.find_spec(GRAPH_BACKENDS[backend]) is not None


def check_runtime(backend: str, precision: str, device) -> None:
    """One sentence for a backend or precision this device or installation cannot give."""
    if backend not in BACKENDS:
        raise GenlabError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise GenlabError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if backend in GRAPH_BACKENDS:
        if device.type != "cpu":
            raise GenlabError(f"backend {backend} runs on the CPU only, and this model runs on {device}: choose "
                              "backend auto or torch, or --device cpu")
        if not installed(backend):
            raise GenlabError(f"backend {backend} needs the {GRAPH_BACKENDS[backend]} package, which is not "
                              f"installed: pip install {GRAPH_BACKENDS[backend]}, or choose backend auto or torch")
    if backend == "onnxruntime" and precision == "bf16":
        raise GenlabError("precision bf16 is not available on backend onnxruntime: choose precision fp32 or auto, "
                          "or backend torch or openvino")


def _env_backend() -> str | None:
    value = os.environ.get(BACKEND_ENV, "").strip().lower()
    if not value:
        return None
    if value not in BACKENDS:
        raise GenlabError(f"{BACKEND_ENV}={value!r} is not a backend: choose one of {', '.join(BACKENDS)}")
    return value


def candidates(backend: str, precision: str, device, bf16_harmless: bool, threads: int = 1) -> list[Choice]:
    """The ways to run a network that ``backend`` and ``precision`` (either may be ``auto``) allow here,
    with ``threads`` threads."""
    if backend == "auto":
        backend = _env_backend() or "auto"
    check_runtime(backend, precision, device)
    if device.type != "cpu":  # GPUs and MPS: PyTorch, in the precision asked for (fp32 for auto)
        return [Choice("torch", "bf16" if precision == "bf16" else "fp32")]
    if backend != "auto":
        return [Choice(backend, "bf16" if precision == "bf16" else "fp32")]
    precisions = {"auto": ["fp32", "bf16"] if bf16_harmless else ["fp32"], "fp32": ["fp32"], "bf16": ["bf16"]}[precision]
    out = []
    for p in precisions:
        out.append(Choice("torch", p))
        if p == "fp32":
            out.append(Choice("torch", p, "channels_last"))
        for b in GRAPH_BACKENDS:
            if installed(b) and not (b == "onnxruntime" and p == "bf16"):
                out += [Choice(b, p)] + ([Choice(b, p, "streams")] if threads > 1 else [])
    return out


# ----- the weights' fingerprint and the exported graph -------------------------------------------
def fingerprint(module) -> str:
    """A hash of a module's class, config and every weight: exported graphs and probe results are keyed
    by it, so retrained or edited weights are never run through a stale graph."""
    import diffusers
    import torch

    cached = getattr(module, "_genlab_fingerprint", None)
    if cached is not None:
        return cached
    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}|{EXPORT_VERSION}|"
                       f"torch {torch.__version__}|diffusers {diffusers.__version__}".encode())
    for sub in module.modules():  # the architecture (head counts, norm eps) is in configs, not weights
        config = getattr(sub, "config", None)
        if isinstance(config, dict):
            # not diffusers' bookkeeping ("_name_or_path", where it was loaded from; "_use_default_values",
            # listed in set order, which changes from process to process with Python's string hashing):
            # the same weights must give the same key in every process and from every folder
            settings = {k: v for k, v in dict(config).items() if not str(k).startswith("_")}
            h.update(f"{type(sub).__qualname__}:{json.dumps(settings, sort_keys=True, default=str)}".encode())
    for name, tensor in module.state_dict().items():
        h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()[:16]
    try:
        module._genlab_fingerprint = digest
    except AttributeError:
        pass
    return digest


def cache_dir() -> Path:
    from .datasets import CACHE_DIR

    return Path(os.environ.get("GENLAB_CACHE", CACHE_DIR))


def export_graph(module, example: tuple, input_names: list[str], name: str) -> Path:
    """``module`` (tensors in, one tensor out) as an ONNX file with a dynamic batch axis, exported once
    per fingerprint and reused from ``GENLAB_CACHE/graphs``."""
    import torch

    key = fingerprint(module)
    path = cache_dir() / "graphs" / f"{name}-{key}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    axes = {n: {0: "batch"} for n in [*input_names, "out"]}
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            example = tuple(x.detach().cpu().clone() for x in example)  # never inference-mode tensors
            try:  # the TorchScript exporter: seconds, and a graph both runtimes read
                torch.onnx.export(module, example, str(tmp), input_names=input_names, output_names=["out"],
                                  dynamic_axes=axes, opset_version=17, dynamo=False)
            except TypeError:  # a PyTorch without it: the torch.export-based exporter
                batch = torch.export.Dim("batch", min=1, max=65536)
                torch.onnx.export(module, example, str(tmp), input_names=input_names, output_names=["out"],
                                  dynamic_shapes=[{0: batch} for _ in example], dynamo=True, external_data=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ----- runners: one callable per way of running a network ----------------------------------------
def _buckets(batch: int, largest: int = GRAPH_CHUNK) -> list[tuple[int, int]]:
    """(start, padded size) chunks of a batch: chunks of ``largest`` rows, the last one padded to a power
    of two, so that OpenVINO compiles a handful of static shapes whatever the batch."""
    out, start = [], 0
    while start < batch:
        size = min(batch - start, largest)
        out.append((start, 1 << (size - 1).bit_length()))
        start += size
    return out


class TorchRunner:
    """Plain PyTorch: the module on its device, inference mode, bf16 autocast when asked for, and fp32
    as IEEE float32 (``exact_fp32``)."""

    def __init__(self, module, device, choice: Choice):
        import torch

        self.module, self.device, self.choice = module, device, choice
        self.memory_format = torch.channels_last if choice.mode == "channels_last" else torch.contiguous_format

    def __call__(self, *inputs):
        import torch

        inputs = [x.to(self.device) for x in inputs]
        if self.choice.mode == "channels_last":
            inputs = [x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in inputs]
        bf16 = self.choice.precision == "bf16"
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        if getattr(self.module, "_genlab_memory_format", torch.contiguous_format) != self.memory_format:
            self.module.to(memory_format=self.memory_format)  # the weights follow the activations' format
            self.module._genlab_memory_format = self.memory_format
        with torch.inference_mode(), autocast, contextlib.nullcontext() if bf16 else exact_fp32():
            out = self.module(*inputs)
        return out.float().contiguous()


def _slices(batch: int, parts: int) -> list[tuple[int, int]]:
    """(start, stop) of ``parts`` near-equal slices of a batch (fewer when the batch is smaller)."""
    parts = max(1, min(parts, batch))
    edges = [round(i * batch / parts) for i in range(parts + 1)]
    return list(zip(edges, edges[1:]))


class OnnxRuntimeRunner:
    """The exported graph on ONNX Runtime's CPU provider: calls of at most GRAPH_CHUNK rows on
    ``threads`` threads, or with ``streams`` > 1 the batch cut into that many slices run side by side
    on one thread each."""

    def __init__(self, path: Path, input_names: list[str], threads: int, streams: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1 if streams > 1 else threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        used = {i.name for i in self.session.get_inputs()}  # the exporter drops inputs the network ignores
        self.input_names = [n if n in used else None for n in input_names]
        self.streams = streams
        self.pool = None
        if streams > 1:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(streams, thread_name_prefix="genlab-onnxruntime")

    def _run(self, arrays):
        import numpy as np

        # at most GRAPH_CHUNK rows a call: the bundled DDPM's UNet ran 536 images/s in chunks of 64
        # against 471 in one batch of 250 (one thread, medians of 6 interleaved runs)
        outs = [self.session.run(None, {n: a[start:start + GRAPH_CHUNK] for n, a in zip(self.input_names, arrays) if n})[0]
                for start in range(0, len(arrays[0]), GRAPH_CHUNK)]  # run releases the GIL: slices run in parallel
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def __call__(self, *inputs):
        import numpy as np
        import torch

        arrays = [x.detach().cpu().contiguous().numpy() for x in inputs]
        if self.pool is None:
            return torch.from_numpy(self._run(arrays))
        parts = [[a[start:stop] for a in arrays] for start, stop in _slices(len(arrays[0]), self.streams)]
        return torch.from_numpy(np.concatenate(list(self.pool.map(self._run, parts))))


class OpenVinoRunner:
    """The exported graph compiled by OpenVINO for the CPU, one static shape per batch bucket (static
    shapes run about 1.5x faster than a dynamic batch), in f32 or bf16: one stream on ``threads``
    threads, or ``streams`` one-thread streams running slices of the batch side by side."""

    _core = None
    _core_lock = threading.Lock()

    def __init__(self, path: Path, input_names: list[str], threads: int, precision: str, streams: int = 1):
        self.path, self.input_names, self.threads, self.streams = path, input_names, threads, streams
        self.precision = "bf16" if precision == "bf16" else "f32"
        self.compiled: dict = {}
        self.lock = threading.Lock()

    @classmethod
    def core(cls):
        with cls._core_lock:
            if cls._core is None:
                import sys

                if "openvino" not in sys.modules:
                    # a lab tool does not phone home: importing openvino starts its model converter's
                    # usage telemetry (a process forked per event) unless the telemetry package is
                    # absent, in which case OpenVINO uses its own no-op stub
                    sys.modules.setdefault("openvino_telemetry", None)
                import openvino as ov

                core = ov.Core()
                folder = cache_dir() / "openvino"
                folder.mkdir(parents=True, exist_ok=True)
                core.set_property({"CACHE_DIR": str(folder)})  # compiled blobs, reused across processes
                cls._core = core
            return cls._core

    def _queue(self, shapes: tuple):
        """An infer queue (one request per stream) of the network compiled for these input shapes."""
        if shapes not in self.compiled:
            core = self.core()  # first: it imports openvino without its telemetry
            import openvino as ov

            model = core.read_model(str(self.path))
            used = {name for port in model.inputs for name in port.get_names()}
            model.reshape({n: list(s) for n, s in zip(self.input_names, shapes) if n in used})
            self.used = used
            # no CPU pinning: OpenVINO pins its threads to the first cores by default, so two processes
            # (an eval's workers, one thread each) ran on one core: each took 1.8x as long on two cores
            config = {"INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": self.precision,
                      "NUM_STREAMS": self.streams, "PERFORMANCE_HINT": "LATENCY" if self.streams == 1 else "THROUGHPUT",
                      "ENABLE_CPU_PINNING": False}
            self.compiled[shapes] = ov.AsyncInferQueue(core.compile_model(model, "CPU", config), self.streams)
        return self.compiled[shapes]

    def __call__(self, *inputs):
        import torch

        arrays = [x.detach().cpu().contiguous() for x in inputs]
        batch = arrays[0].shape[0]
        # one slice per stream (a power of two, so that few shapes are compiled), at most GRAPH_CHUNK rows
        largest = min(GRAPH_CHUNK, 1 << (-(-batch // self.streams) - 1).bit_length())
        plan = _buckets(batch, largest)
        outs: list = [None] * len(plan)
        groups: dict = {}
        for index, (start, size) in enumerate(plan):
            chunk = [a[start:start + size] for a in arrays]
            real = chunk[0].shape[0]
            if real < size:  # rows are independent: pad with copies of the last row, drop them after
                chunk = [torch.cat([c, c[-1:].expand(size - real, *c.shape[1:])]) for c in chunk]
            groups.setdefault(tuple(tuple(c.shape) for c in chunk), []).append((index, real, chunk))
        with self.lock:  # a queue's requests serve one call at a time
            for shapes, items in groups.items():
                queue = self._queue(shapes)
                rows = {index: real for index, real, _ in items}

                def done(request, index, rows=rows):
                    outs[index] = torch.from_numpy(request.get_output_tensor(0).data[:rows[index]].copy())

                queue.set_callback(done)
                for index, _, chunk in items:
                    queue.start_async({n: c.numpy() for n, c in zip(self.input_names, chunk) if n in self.used},
                                      userdata=index)
                queue.wait_all()
        return torch.cat(outs) if len(outs) > 1 else outs[0]


def make_runner(choice: Choice, module, example: tuple, input_names: list[str], name: str, device):
    import torch

    if choice.backend == "torch":
        return TorchRunner(module, device, choice)
    path = export_graph(module, example, input_names, name)
    threads = torch.get_num_threads()
    streams = threads if choice.mode == "streams" else 1
    if choice.backend == "onnxruntime":
        return OnnxRuntimeRunner(path, input_names, threads, streams)
    return OpenVinoRunner(path, input_names, threads, choice.precision, streams)


# ----- the probe ---------------------------------------------------------------------------------
def machine_key(device) -> dict:
    """What the probe's result depends on besides the weights: the machine, threads and libraries."""
    import torch

    versions = {"torch": torch.__version__}
    for package in GRAPH_BACKENDS.values():
        if importlib.util.find_spec(package) is not None:
            from importlib.metadata import PackageNotFoundError, version

            try:
                versions[package] = version(package)
            except PackageNotFoundError:
                pass
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "device": device_name(device), "versions": versions, "probe": PROBE_VERSION}


def _probe_file() -> Path:
    return cache_dir() / "runtime" / "choices.json"


def _read_probes() -> dict:
    try:
        data = json.loads(_probe_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def probe(options: list[Choice], build: Callable[[Choice], Callable], example: tuple, key: dict,
          *, rounds: int = 3) -> tuple[Choice, dict]:
    """The fastest of ``options`` on ``example`` inputs (medians over ``rounds`` interleaved calls, after
    one warm-up call each), among those whose output matches PyTorch fp32 on them; cached by ``key``.
    ``example`` should be what sampling feeds the network (``network_runner`` makes seeded noise of
    that scale): on all-zero inputs a graph that is wrong for any other input can match exactly.

    Returns the choice and the record behind it: seconds per call of every option, and why any was
    refused."""
    digest = _probe_digest(key)
    labels = {c.label: c for c in options}

    def known():
        record = _read_probes().get(digest)
        return (labels[record["choice"]], record) if isinstance(record, dict) and record.get("choice") in labels else None

    if (found := known()) is not None:
        return found
    # one probe at a time on this machine: processes probing at once (an eval's workers) would time each
    # other, and the second one reads the first one's result instead of probing the same network again
    with _machine_lock():
        if (found := known()) is not None:
            return found
        return _probe(options, build, example, key, digest, rounds)


def _probe_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


@contextlib.contextmanager
def _machine_lock():
    """An OS lock on a file in the genlab cache, held while this process probes (none where the OS or
    the filesystem has no locks, or the cache is read-only); released when the process dies."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = None
    try:
        path = _probe_file().with_name("probe.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        pass
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _probe(options: list[Choice], build: Callable[[Choice], Callable], example: tuple, key: dict, digest: str,
           rounds: int) -> tuple[Choice, dict]:
    import torch

    from .atomic import write_text

    reference = build(Choice("torch", "fp32"))(*example)
    scale = float(reference.double().pow(2).mean().sqrt()) or 1.0  # the output's RMS (see FP32_TOLERANCE)
    runners, refused = {}, {}
    for choice in options:
        try:
            runner = build(choice)
            out = runner(*example)
        except Exception as exc:  # a runtime that cannot run this graph is not a candidate
            refused[choice.label] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            continue
        if out.shape != reference.shape:
            refused[choice.label] = f"output of shape {tuple(out.shape)}, not {tuple(reference.shape)}"
            continue
        if choice.precision == "fp32":
            error = float((out - reference).abs().max()) / scale
            ok = error <= FP32_TOLERANCE
        else:
            error = float(torch.linalg.vector_norm(out - reference) / torch.linalg.vector_norm(reference).clamp_min(1e-12))
            ok = error <= BF16_TOLERANCE
        if not ok or not torch.isfinite(out).all():
            refused[choice.label] = f"output differs from torch fp32 by {error:.2e}"
            continue
        runners[choice] = runner
    times: dict = {c: [] for c in runners}
    for _ in range(rounds):
        for choice, runner in runners.items():
            start = time.perf_counter()
            runner(*example)
            times[choice].append(time.perf_counter() - start)
    seconds = {c: statistics.median(t) for c, t in times.items()}
    if not seconds:  # e.g. precision=bf16 where no backend's bf16 stays close enough to fp32
        from .errors import GenlabError

        reasons = "; ".join(f"{label}: {why}" for label, why in refused.items())
        raise GenlabError(f"no backend can run this network as asked ({reasons}); choose precision fp32 "
                          "or backend torch")
    fp32 = [c for c in seconds if c.precision == "fp32"]
    best = min(seconds, key=seconds.get)
    if best.precision == "bf16" and fp32:
        best_fp32 = min(fp32, key=seconds.get)
        if seconds[best_fp32] < BF16_MARGIN * seconds[best]:  # exact fp32 unless bf16 clearly pays
            best = best_fp32
    record = {"choice": best.label, "seconds": {c.label: round(s, 5) for c, s in seconds.items()},
              "refused": refused, "batch": int(example[0].shape[0]), "key": key,
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "load": _load()}
    data = _read_probes()
    data[digest] = record
    try:
        _probe_file().parent.mkdir(parents=True, exist_ok=True)
        write_text(_probe_file(), json.dumps(data, indent=1))
    except OSError:  # a read-only cache: the choice holds for this process only
        pass
    return best, record


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


# ----- what models call --------------------------------------------------------------------------
_PROBING = threading.RLock()


class NetworkRunner:
    """A network's forward pass run the resolved way: ``runner(*inputs)`` returns a float32 tensor on
    the model's device. ``choice`` says how it runs and ``record`` what the probe measured, if it ran."""

    def __init__(self, run, choice: Choice, record: dict | None = None):
        self._run, self.choice, self.record = run, choice, record

    def __call__(self, *inputs):
        return self._run(*inputs)


def _noise_like(inputs: tuple, generator) -> tuple:
    """The probe's inputs for a network that gives none of its own: the example's floating-point tensors
    as standard normal noise, its integer ones (timesteps, masks, labels) as they are."""
    import torch

    return tuple(torch.randn(x.shape, generator=generator, dtype=x.dtype) if x.is_floating_point() else x
                 for x in inputs)


def network_runner(owner, name: str, module, example: Callable[[int], tuple], input_names: list[str], *,
                   device, backend: str = "auto", precision: str = "auto", bf16_harmless: bool = False,
                   mode: str | None = None, probe_inputs: Callable | None = None) -> NetworkRunner:
    """How ``owner`` (a model) runs ``module``: ``module`` takes the tensors named ``input_names`` (batch
    first) and returns one tensor; ``example(batch)`` makes inputs of that batch size for the export.
    ``probe_inputs(batch, generator)`` makes the probe's: seeded inputs like those sampling feeds the
    network (noise of its scale, timesteps across the schedule, real conditioning); without it the
    probe uses the example with its floating-point tensors replaced by standard normal noise.
    Runners are kept on ``owner``, one per choice and thread count.

    ``mode`` pins one exact way to run, with no probe: backend ``torch``, precision ``fp32`` or ``bf16``
    and that memory format ("" or "channels_last"), for a computation whose float32 rounding must not
    depend on the machine (a published likelihood)."""
    import torch

    threads = torch.get_num_threads()
    if mode is not None:
        if backend != "torch" or precision not in ("fp32", "bf16") or mode not in ("", "channels_last"):
            raise ValueError(f"mode {mode!r} pins a torch runner: give backend 'torch' and precision fp32 or bf16")
        options = [Choice(backend, precision, mode)]
    else:
        options = candidates(backend, precision, device, bf16_harmless, threads)
    cache = owner.__dict__.setdefault("_genlab_runners", {})

    def build(choice: Choice):
        key = (name, id(module), choice, str(device), threads)
        if key not in cache:
            cache[key] = make_runner(choice, module, example(1), input_names, name, device)
        return cache[key]

    if len(options) == 1:
        return NetworkRunner(build(options[0]), options[0])
    memo = (name, id(module), tuple(options), str(device), threads)
    with _PROBING:  # one probe at a time: two at once would time each other
        if memo not in cache:  # the probe (or its cached result on disk), once per process
            probe_key = {"network": fingerprint(module), "name": name, "options": [c.label for c in options],
                         "machine": machine_key(device)}
            generator = torch.Generator().manual_seed(PROBE_SEED)
            inputs = (probe_inputs(PROBE_BATCH, generator) if probe_inputs is not None
                      else _noise_like(example(PROBE_BATCH), generator))
            cache[memo] = probe(options, build, inputs, probe_key)
    choice, record = cache[memo]
    return NetworkRunner(build(choice), choice, record)


def describe_choice(runner: NetworkRunner, device) -> dict:
    """What ran a sampler, for ``Samples.info`` and the benchmarks."""
    return {"device": str(device), "backend": runner.choice.backend, "precision": runner.choice.precision,
            **({"mode": runner.choice.mode} if runner.choice.mode else {})}


__all__ = [
    "BACKENDS", "Backend", "Choice", "DEVICES", "NetworkRunner", "PRECISIONS", "Precision", "RUNTIME_OPTIONS",
    "backend_field", "candidates", "check_runtime", "cpu_model", "device_name", "exact_fp32", "export_graph",
    "fingerprint", "network_runner", "precision_field", "rand", "randn", "resolve_device",
]
